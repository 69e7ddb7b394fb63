"""Automatic batch sizes that halve on out-of-memory, with progress for long work."""

from __future__ import annotations

import functools
import os
import sysconfig
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

import torch

from xaiscope.errors import ModelRunError, XaiscopeError

T = TypeVar("T")
P = ParamSpec("P")

#: Largest batch tried by default on a GPU.
GPU_BATCH = 256
#: Bounds of the default chunk on a CPU.
CPU_MIN_BATCH = 4
CPU_BATCH = 64
#: Input pixels per CPU chunk. Per-row cost grows with the batch once the activations
#: outgrow the caches (EfficientNet-Lite0 / ResNet-50 at 224 px, 1-2 threads: chunks of 4
#: cost 20-40 % less per row than chunks of 32), while small inputs need large chunks to
#: amortise the per-call overhead (ResNet-50 at 64 px: 23 ms per row in chunks of 4,
#: 12-13 ms in chunks of 16-64; at 112 px lime's batches of 50 ran ResNet-50 forwards at
#: 33 ms per row against 49 ms in chunks of 8: from 16 rows up PyTorch runs 1x1
#: convolutions through oneDNN). So a CPU chunk holds about this many input pixels: 4 rows
#: at 224 px, 16 at 112 px, 49 at 64 px, within [CPU_MIN_BATCH, CPU_BATCH] and at least one
#: row per thread.
CPU_CHUNK_PIXELS = 4 * 224 * 224


def default_batch_size(
    device: torch.device, requested: int | None = None, input_hw: tuple[int, int] | None = None
) -> int:
    """The starting batch size: ``requested`` if given, else a per-device default.

    ``input_hw`` (the model's input height and width) sizes CPU chunks to the input: see
    :data:`CPU_CHUNK_PIXELS`.
    """
    if requested is not None:
        if requested < 1:
            from xaiscope.errors import ParameterError

            raise ParameterError(f"batch_size must be >= 1, got {requested}")
        return int(requested)
    if device.type == "cuda":
        return GPU_BATCH
    rows = CPU_MIN_BATCH
    if input_hw is not None:
        rows = CPU_CHUNK_PIXELS // max(1, int(input_hw[0]) * int(input_hw[1]))
    rows = max(rows, torch.get_num_threads())
    return max(CPU_MIN_BATCH, min(CPU_BATCH, rows))


#: (done, total, desc) after every chunk of :func:`run_batched`, for the current thread/task
ProgressListener = Callable[[int, int, "str | None"], None]
_LISTENER: ContextVar[ProgressListener | None] = ContextVar("xaiscope_progress", default=None)


@contextmanager
def progress_listener(fn: ProgressListener) -> Iterator[None]:
    """Call ``fn(done, total, desc)`` after each chunk of batched work run inside the block
    (in this thread or task only): how the web app moves its progress bar within a method."""
    token = _LISTENER.set(fn)
    try:
        yield
    finally:
        _LISTENER.reset(token)


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error of torch (CUDA or host)."""
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


_XAISCOPE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_SKIPPED_DIRS = tuple(
    os.path.abspath(d) + os.sep
    for d in (os.path.dirname(torch.__file__), sysconfig.get_paths()["stdlib"])
)


def _raised_by_xaiscope(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc`` outside torch and the standard library is
    xaiscope's own code (a patched layer, a hook): a bug of ours, not the model's."""
    innermost = None
    tb = exc.__traceback__
    while tb is not None:
        name = os.path.abspath(tb.tb_frame.f_code.co_filename)
        if not name.startswith(_SKIPPED_DIRS):
            innermost = name
        tb = tb.tb_next
    return innermost is not None and innermost.startswith(_XAISCOPE_DIR)


@contextmanager
def model_errors(what: str = "forward") -> Iterator[None]:
    """Turn an exception raised by the model's own code into one-line :class:`ModelRunError`.

    Out-of-memory errors keep their type (:func:`run_batched` retries smaller chunks), as do
    xaiscope's own errors and exceptions whose innermost frame is xaiscope's code.
    """
    try:
        yield
    except Exception as exc:
        if isinstance(exc, XaiscopeError) or is_oom(exc) or _raised_by_xaiscope(exc):
            raise
        text = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ModelRunError(f"the model's {what} failed: {type(exc).__name__}: {text}") from exc


def runs_model(fn: Callable[P, T]) -> Callable[P, T]:
    """Decorator: run ``fn`` (an adapter method that calls the model) in :func:`model_errors`."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        with model_errors():
            return fn(*args, **kwargs)

    return wrapper


def checked_output(out: Any, n: int) -> torch.Tensor:
    """``out`` if it is a (n, classes) tensor, else :class:`ModelRunError` saying what it is."""
    if isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[0] == n:
        return out
    got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
    raise ModelRunError(
        f"the model's output is {got} for {n} image(s); xaiscope needs (N, classes) scores, "
        "one row per image (a model with one score per image must return it as (N, 1))"
    )


def run_batched(
    fn: Callable[[int, int], T],
    total: int,
    batch_size: int,
    *,
    desc: str | None = None,
    progress: bool | None = None,
) -> list[T]:
    """Call ``fn(start, stop)`` over ``range(total)`` in chunks of ``batch_size``.

    On out-of-memory the chunk is retried at half the size (down to 1, then re-raised).
    ``progress=None`` shows a bar only when there are more than 4 chunks and a terminal.
    """
    results: list[T] = []
    size = max(1, int(batch_size))
    start = 0
    bar = _bar(total, desc, progress, size)
    listener = _LISTENER.get()
    try:
        while start < total:
            stop = min(total, start + size)
            try:
                results.append(fn(start, stop))
            except Exception as exc:
                if not is_oom(exc) or size == 1:
                    raise
                size = max(1, size // 2)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            if bar is not None:
                bar.update(stop - start)
            if listener is not None:
                listener(stop, total, desc)
            start = stop
    finally:
        if bar is not None:
            bar.close()
    return results


def chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, stop) pairs covering ``range(total)``."""
    for start in range(0, total, size):
        yield start, min(total, start + size)


def _bar(total: int, desc: str | None, progress: bool | None, size: int) -> Any:
    if progress is False or (progress is None and total <= 4 * size):
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="sample",
        leave=False,
        disable=None if progress is None else False,
    )
