"""Random draws that methods consume chunk by chunk, with the values of one large draw.

A method that needs ``n_samples`` noise images would draw ``torch.randn((n_samples, ...))``
at once: n_samples x image in memory. :class:`NormalStream` hands out the same values piece
by piece, so memory follows the chunk, not the count, and results stay those of the single
draw for a given seed.

On a CPU this is exact (tested against ``torch.randn`` for every length up to a few hundred
and for large ones): PyTorch fills a tensor of 16 or more values with one uniform draw per
value, turns each block of 16 into normals (Box-Muller), and when the length is not a
multiple of 16 redraws the last 16 values from 16 more uniforms. Drawing whole blocks of 16
in sequence, then the leftover uniforms and that last block, consumes the generator exactly
as the single call does. Other devices (CUDA's counter-based Philox generator) give values
that depend on how a draw is split, so there the stream draws fixed blocks of
:data:`BLOCK_VALUES`: reproducible for a seed, whatever the batch size, but not equal to
one large draw.
"""

from __future__ import annotations

import torch

#: Values per draw off the CPU (16 MiB of float32), independent of the batch size.
BLOCK_VALUES = 1 << 22


class NormalStream:
    """The values of ``torch.randn(total, generator=gen)``, handed out in order by
    :meth:`take`, never more than one chunk (plus 31 values) held at once."""

    def __init__(
        self, total: int, gen: torch.Generator, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.total = int(total)
        self.gen, self.device, self.dtype = gen, device, dtype
        self._exact = device.type == "cpu"
        self._pos = 0  # values handed out
        self._drawn = 0  # values drawn so far: [pos, drawn) are in _ready
        self._known = 0  # of those, the ones that are final (the last block may be redrawn)
        self._ready = torch.empty(0, device=device, dtype=dtype)

    def _randn(self, k: int) -> torch.Tensor:
        return torch.randn(k, generator=self.gen, device=self.device, dtype=self.dtype)

    def take(self, k: int) -> torch.Tensor:
        """The next ``k`` values, (k,)."""
        need = self._pos + int(k)
        if need > self.total:
            raise ValueError(f"asked for {need} values of a stream of {self.total}")
        if need > self._known:
            self._draw(need)
        out, self._ready = self._ready[:k], self._ready[k:]
        self._pos = need
        return out

    def _draw(self, need: int) -> None:
        t = self.total
        if not self._exact:
            while self._drawn < need:
                self._append(self._randn(min(BLOCK_VALUES, t - self._drawn)))
            return
        if t < 16:  # the scalar path: tiny, drawn whole
            self._append(self._randn(t))
            return
        full = t - t % 16
        if t % 16 == 0 or need <= t - 16:
            stop = min(full, -(-need // 16) * 16)
            self._append(self._randn(stop - self._drawn))
            # values from t - 16 on are replaced by the redrawn last block
            self._known = self._drawn if t % 16 == 0 else min(self._drawn, t - 16)
            return
        # the last 16 values come from 16 uniforms drawn after all t: consume the rest of the
        # blocks and the leftover uniforms first, as torch.randn(t) does
        rest = self._randn(full - self._drawn)
        torch.rand(t - full, generator=self.gen, device=self.device, dtype=self.dtype)
        tail = self._randn(16)
        pad = torch.empty(t - full, device=self.device, dtype=self.dtype)
        ready = torch.cat([self._ready, rest, pad])
        # positions t-16 .. t-1 of the large draw; every earlier one is not handed out yet
        ready[t - 16 - self._pos :] = tail
        self._ready, self._drawn, self._known = ready, t, t

    def _append(self, values: torch.Tensor) -> None:
        self._ready = torch.cat([self._ready, values])
        self._drawn += int(values.numel())
        self._known = self._drawn


class SampleNoise:
    """Gaussian noise samples of ``shape``, the rows of ``torch.randn((n, *shape))`` drawn
    from ``gen``, read by ranges of sample indices that only move forward (a range may
    start again where the previous one started, as a chunk retried after out-of-memory)."""

    def __init__(
        self,
        n: int,
        shape: tuple[int, ...],
        gen: torch.Generator,
        device: torch.device,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.size = 1
        for s in self.shape:
            self.size *= s
        dt = dtype if dtype is not None else torch.get_default_dtype()
        self._stream = NormalStream(n * self.size, gen, device, dt)
        self._first = 0  # sample index of _held[0]
        self._held = torch.empty((0, *self.shape), device=device, dtype=dt)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Samples ``start`` to ``stop`` (exclusive), (stop - start, *shape)."""
        if start < self._first:
            raise ValueError(f"sample {start} was already released (held from {self._first})")
        self._held = self._held[start - self._first :]
        self._first = start
        have = self._first + self._held.shape[0]
        if stop > have:
            more = self._stream.take((stop - have) * self.size).view(-1, *self.shape)
            self._held = torch.cat([self._held, more])
        return self._held[: stop - start]


class UniformRows:
    """Rows of ``torch.rand((n, *shape), generator=gen)`` read by ranges of row indices,
    drawn in blocks of a fixed number of rows and never all held at once.

    On a CPU each uniform value is one draw of the generator, so blocks drawn in sequence
    are exactly the single large draw; elsewhere they are reproducible for a seed (the
    blocks do not depend on the ranges asked) but not equal to it. A range that starts
    before the held block replays the generator from the start (ranges that go round
    again, one pass per image, cost one replay each). :meth:`skip` consumes the draws of
    all ``n`` rows from ``gen``, so that what the caller draws next from it is what it
    would draw after the single large draw.
    """

    def __init__(
        self,
        n: int,
        shape: tuple[int, ...],
        gen: torch.Generator,
        device: torch.device,
        dtype: torch.dtype | None = None,
        block_values: int = BLOCK_VALUES,
    ) -> None:
        self.n, self.shape = int(n), tuple(int(s) for s in shape)
        size = 1
        for s in self.shape:
            size *= s
        self.block = max(1, block_values // max(1, size))
        self.device = device
        self.dtype = dtype if dtype is not None else torch.get_default_dtype()
        self._gen = torch.Generator(device=device)
        self._state = gen.get_state()
        self._gen.set_state(self._state)
        self._next = 0  # the block the private generator draws next
        self._held: dict[int, torch.Tensor] = {}

    def _draw(self, gen: torch.Generator, b: int) -> torch.Tensor:
        rows = min(self.block, self.n - b * self.block)
        return torch.rand((rows, *self.shape), generator=gen, device=self.device, dtype=self.dtype)

    def skip(self, gen: torch.Generator) -> None:
        """Advance ``gen`` past the draws of all rows, block by block."""
        for b in range(-(-self.n // self.block)):
            self._draw(gen, b)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start`` to ``stop`` (exclusive), (stop - start, *shape)."""
        first, last = start // self.block, (stop - 1) // self.block
        if first < self._next and first not in self._held:
            self._gen.set_state(self._state)  # gone: replay from the start
            self._next, self._held = 0, {}
        self._held = {b: v for b, v in self._held.items() if b >= first}
        while self._next <= last:
            block = self._draw(self._gen, self._next)
            if self._next >= first:
                self._held[self._next] = block
            self._next += 1
        parts = torch.cat([self._held[b] for b in range(first, last + 1)])
        return parts[start - first * self.block : stop - first * self.block]
