"""Shared pieces of the benchmark: inputs, interleaved timing, agreement statistics, machine info.

Every case gives xaiscope and its peers the same model object, the same images and the same
preprocessed tensor: xaiscope receives 224 x 224 uint8 images (so its own preprocessing is a
plain normalisation) and the peers receive ``model.preprocess(images)`` of those images,
which is bit-for-bit the tensor xaiscope builds internally.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import xaiscope as xs

#: Order of the sample photos; the eighth image is the first one mirrored.
SAMPLE_ORDER = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle", "coins", "camera")


def quiet() -> None:
    """Silence the peers' chatty warnings (Captum: 'required_grads has been set automatically')."""
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


@dataclass
class Inputs:
    """Everything a case needs: the model, the images, the shared tensor and the top-3 classes."""

    name: str
    model: Any  # xs Model
    images: list[np.ndarray]  # (224, 224, 3) uint8, what xaiscope receives
    x: torch.Tensor  # (N, 3, 224, 224) model.preprocess(images), what the peers receive
    top: torch.Tensor  # (N, 3) top-3 classes of each image (long)
    layer: str  # CAM layer (module attribute path)

    def black(self, n: int) -> torch.Tensor:
        """The preprocessed black baseline (the image of zeros, normalised) for n images."""
        return self.model.normalize(torch.zeros(n, 3, *self.model.input_size))


def make_inputs(
    spec: str, n_images: int = 8, layer: str | None = None, size: int | None = None
) -> Inputs:
    """Load ``spec`` and build ``n_images`` images at the model's input size (or ``size``)."""
    model = xs.load_model(spec)
    if size is not None:
        model.input_size = (size, size)
    samples = xs.sample_images()
    photos = [samples[k] for k in SAMPLE_ORDER if k in samples]
    photos += [p[:, ::-1].copy() for p in photos]  # mirrored copies if more are needed
    photos = photos[:n_images]
    # resize once, outside the timing, so that both sides start from model-size images
    x01 = model.pixels(photos)
    images = [
        (x01[i].permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
        for i in range(x01.shape[0])
    ]
    x = model.preprocess(images)
    with torch.inference_mode():
        logits = model.module(x)
    top = logits.float().topk(3, dim=1).indices.clone()
    return Inputs(
        name=spec,
        model=model,
        images=images,
        x=x.clone(),
        top=top,
        layer=layer or model.default_layer,
    )


# ---------------------------------------------------------------------------- timing
@dataclass
class Timings:
    """Wall-clock (and process CPU) seconds per contender, one entry per repeat."""

    runs: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)  # process CPU seconds

    def median(self, name: str) -> float:
        return statistics.median(self.runs[name])

    def median_cpu(self, name: str) -> float:
        return statistics.median(self.cpu[name])

    def spread(self, name: str) -> float:
        """(max - min) / median of the repeats: the run-to-run noise of one contender."""
        runs = self.runs[name]
        return (max(runs) - min(runs)) / statistics.median(runs)

    def paired_ratio(self, peer: str, ours: str, cpu: bool = False) -> float:
        """Median over rounds of peer time / ours time, each pair from the same round.

        The rounds of :func:`time_interleaved` run every contender back to back, so a
        slow phase of the machine that lasts a round or longer scales both times of a
        pair alike and cancels in its ratio; a ratio of medians would keep it whenever
        such phases fall unevenly on the two contenders' repeats. NaN when the two were
        not timed in the same rounds.
        """
        src = self.cpu if cpu else self.runs
        a, b = src.get(peer, []), src.get(ours, [])
        if not a or len(a) != len(b):
            return float("nan")
        return statistics.median(p / o for p, o in zip(a, b, strict=True))

    def add(self, name: str, seconds: float, cpu: float) -> None:
        self.runs.setdefault(name, []).append(seconds)
        self.cpu.setdefault(name, []).append(cpu)


def time_interleaved(
    contenders: dict[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    warm: frozenset[str] | set[str] = frozenset(),
) -> tuple[Timings, dict[str, Any]]:
    """Time each contender ``repeats`` times after ``warmup`` untimed calls.

    Contenders named in ``warm`` were already called (e.g. by a batch-size sweep) and get
    no further warm-up.

    The repeats are interleaved (A B C, B C A, C A B, ...) so that a slow phase of the
    machine hits every contender alike; the result of each contender's last call is kept
    for the agreement checks.
    """
    last: dict[str, Any] = {}
    for name, fn in contenders.items():
        for _ in range(0 if name in warm else warmup):
            last[name] = fn()
    names = list(contenders)
    timings = Timings()
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            c0, t0 = time.process_time(), time.perf_counter()
            last[name] = contenders[name]()
            timings.add(name, time.perf_counter() - t0, time.process_time() - c0)
    return timings, last


# ------------------------------------------------------------------------ statistics
def spearman(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Spearman rank correlation of two arrays, flattened (ties get average ranks)."""
    from scipy.stats import spearmanr

    a = np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    b = np.asarray(b.detach().cpu() if isinstance(b, torch.Tensor) else b, dtype=np.float64)
    return float(spearmanr(a.ravel(), b.ravel()).statistic)


def rel_max_err(ours: torch.Tensor | np.ndarray, ref: torch.Tensor | np.ndarray) -> float:
    """max |ours - ref| / max |ref| (0 when both are all zero)."""
    o = torch.as_tensor(np.asarray(ours.detach().cpu() if isinstance(ours, torch.Tensor) else ours))
    r = torch.as_tensor(np.asarray(ref.detach().cpu() if isinstance(ref, torch.Tensor) else ref))
    o, r = o.double(), r.double()
    scale = r.abs().max().item()
    diff = (o - r).abs().max().item()
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / scale


# ----------------------------------------------------------------------- machine info
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int) -> dict[str, str]:
    import captum
    import timm
    import torchvision

    try:
        from importlib.metadata import version

        gradcam_version = version("grad-cam")
    except Exception:  # pragma: no cover - metadata missing
        gradcam_version = "?"
    try:
        load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover
        load = "?"
    return {
        "cpu": f"{cpu_name()} ({os.cpu_count()} logical CPUs visible)",
        "threads": f"torch.set_num_threads({threads}), interop {torch.get_num_interop_threads()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "captum": captum.__version__,
        "grad-cam": gradcam_version,
        "xaiscope": getattr(xs, "__version__", "?"),
        "platform": platform.platform(),
        "load average at start (1, 5, 15 min)": load,
    }


def loadavg() -> str:
    try:
        return ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover
        return "?"


@dataclass
class Row:
    """One line of the results table: xaiscope against one peer configuration."""

    model: str
    method: str
    workload: str
    ours_s: float
    peer: str
    peer_setting: str
    peer_s: float
    check: str
    check_ok: bool
    target: float = 1.0  # required peer/ours ratio
    target_text: str = ""  # how the target reads in the table, when not ">= {target}x"
    note: str = ""
    ours_cpu: float = float("nan")  # median process CPU seconds
    peer_cpu: float = float("nan")
    spread: float = 0.0  # largest (max - min) / median of the two contenders' repeats
    # median of the per-round ratios (see Timings.paired_ratio); NaN: ratio of medians
    paired: float = float("nan")
    paired_cpu: float = float("nan")

    @property
    def ratio(self) -> float:
        if not math.isnan(self.paired):
            return self.paired
        return self.peer_s / self.ours_s

    @property
    def ratio_cpu(self) -> float:
        if not math.isnan(self.paired_cpu):
            return self.paired_cpu
        return self.peer_cpu / self.ours_cpu

    @property
    def meets(self) -> bool:
        return self.ratio >= self.target


def make_row(
    inp: Inputs,
    method: str,
    workload: str,
    timings: Timings,
    ours: str,
    peer: str,
    setting: str,
    peer_key: str,
    check: str,
    ok: bool,
    **kw: Any,
) -> Row:
    """A :class:`Row` with the medians of contenders ``ours`` and ``peer_key``."""
    return Row(
        model=inp.name,
        method=method,
        workload=workload,
        ours_s=timings.median(ours),
        peer=peer,
        peer_setting=setting,
        peer_s=timings.median(peer_key),
        check=check,
        check_ok=ok,
        ours_cpu=timings.median_cpu(ours),
        peer_cpu=timings.median_cpu(peer_key),
        spread=max(timings.spread(ours), timings.spread(peer_key)),
        paired=timings.paired_ratio(peer_key, ours),
        paired_cpu=timings.paired_ratio(peer_key, ours, cpu=True),
        **kw,
    )
