"""Chunked work: chunk sizes per input size, halving on out-of-memory, progress listeners."""

from __future__ import annotations

import threading

import pytest
import torch

import xaiscope as xs
from xaiscope.batching import default_batch_size, progress_listener, run_batched


def test_cpu_chunks_sized_to_the_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    cpu = torch.device("cpu")
    assert default_batch_size(cpu, None, (224, 224)) == 4
    assert default_batch_size(cpu, None, (112, 112)) == 16
    assert default_batch_size(cpu, None, (64, 64)) == 49
    assert default_batch_size(cpu, None, (8, 8)) == 64
    assert default_batch_size(cpu, 7, (224, 224)) == 7
    with pytest.raises(xs.ParameterError, match="batch_size must be >= 1"):
        default_batch_size(cpu, 0)


def test_out_of_memory_halves_the_chunk() -> None:
    sizes: list[int] = []

    def fn(a: int, b: int) -> list[int]:
        if b - a > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")
        sizes.append(b - a)
        return list(range(a, b))

    out = run_batched(fn, 7, 8, progress=False)
    assert [i for part in out for i in part] == list(range(7))
    assert max(sizes) == 2
    with pytest.raises(ValueError):
        run_batched(lambda a, b: (_ for _ in ()).throw(ValueError("bad")), 3, 2, progress=False)


def test_progress_listener_sees_every_chunk_in_its_thread_only() -> None:
    seen: list[tuple[int, int, str | None]] = []
    with progress_listener(lambda d, t, desc: seen.append((d, t, desc))):
        run_batched(lambda a, b: b - a, 10, 4, desc="work", progress=False)
        other = threading.Thread(target=run_batched, args=(lambda a, b: 0, 10, 4))
        other.start()
        other.join()
    assert seen == [(4, 10, "work"), (8, 10, "work"), (10, 10, "work")]
    run_batched(lambda a, b: 0, 10, 4, progress=False)  # outside the block: not called
    assert len(seen) == 3
