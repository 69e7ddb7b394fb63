"""Perturbation and black-box methods against Captum, pytorch-grad-cam and ``lime``.

- occlusion against Captum ``Occlusion`` (same window, stride and fill, the fill given to
  Captum as the preprocessed fill image);
- Score-CAM, Ablation-CAM and Eigen-CAM against pytorch-grad-cam at the same layer;
- LIME against ``lime``'s ``LimeImageExplainer`` and Captum ``Lime`` (same superpixels, same
  number of samples, each superpixel's mean colour as fill, lime's kernel and Ridge(alpha=1)
  surrogate), KernelSHAP against Captum ``KernelShap`` (same superpixels, samples and fill);
  both also against the raw cost of their forward passes: the same number of perturbed
  images pushed through the user's module in xaiscope's chunk size under
  ``torch.inference_mode``, the images built beforehand (untimed).

Random methods (LIME, KernelSHAP) draw different samples in each library, so their outputs
agree statistically: the Pearson correlation of the per-superpixel weights against the
peer's, next to the correlation between two xaiscope runs with different seeds.
"""

from __future__ import annotations

import contextlib
import io
import time
from typing import Any

import numpy as np
import torch

import xaiscope as xs
from bench_common import Inputs, Row, make_row, rel_max_err, spearman, time_interleaved
from xaiscope.batching import default_batch_size

#: per model: the arithmetic behind the LIME rows (see :func:`forward_compute`)
FORWARD_COMPUTE: dict[str, dict[str, float]] = {}
#: per model: (layer, forwards xaiscope ran, forwards pytorch-grad-cam ran) for Score-CAM
SCORECAM_FORWARDS: dict[str, tuple[str, int, int]] = {}


def forward_compute(module: torch.nn.Module, x: torch.Tensor) -> float:
    """GFLOP of one forward of one image ``x`` (1, C, H, W), as torch's FLOP counter counts
    them (a multiply-add is 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        module(x)
    return counter.get_total_flops() / 1e9


def sgemm_rate() -> float:
    """GFLOP/s of a large float32 matrix product on this machine (best of 5): about the
    most a convolution can get out of the core."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * 2048**3 / best / 1e9


def _top1(inp: Inputs, n: int) -> torch.Tensor:
    return inp.top[:n, 0].clone()


def _best(timings: Any, names: list[str]) -> str:
    return min(names, key=timings.median)


# --------------------------------------------------------------------------- occlusion
def bench_occlusion(
    inp: Inputs, n: int, window: int, stride: int, repeats: int, sweep: list[int], log: Any
) -> list[Row]:
    from captum.attr import Occlusion

    m, images, x, top = inp.model, inp.images[:n], inp.x[:n], _top1(inp, n)
    fill = 0.0
    baseline = m.normalize(torch.full((n, 3, *m.input_size), fill))
    occ = Occlusion(m.module)

    def ours() -> Any:
        return xs.explain(m, images, "occlusion", window=window, stride=stride, fill=fill)

    def captum(ppe: int) -> Any:
        def run() -> torch.Tensor:
            return occ.attribute(
                x,
                sliding_window_shapes=(3, window, window),
                strides=(3, stride, stride),
                baselines=baseline,
                target=top,
                perturbations_per_eval=ppe,
            )

        return run

    contenders = {"ours": ours, "captum_1": captum(1)}
    for b in sweep:
        contenders[f"captum_{b}"] = captum(b)
    timings, last = time_interleaved(contenders, repeats)
    e = last["ours"]
    assert (torch.as_tensor(e.targets) == top).all()
    best = _best(timings, [k for k in contenders if k.startswith("captum")])
    errs = {k: rel_max_err(e.raw, last[k]) for k in contenders if k.startswith("captum")}
    err = max(errs.values())
    per_batch = ", ".join(f"{v:.1e}" for v in errs.values())
    check = f"max rel err {err:.1e} (per Captum batch size timed: {per_batch})"
    n_win = e.extras["n_windows"]
    work = f"{n} images, top-1, window {window}, stride {stride} ({n_win} windows), black fill"
    return [
        make_row(
            inp, "occlusion", work, timings, "ours", "Captum Occlusion",
            f"perturbations_per_eval={k.split('_')[1]}"
            + (" (default)" if k == "captum_1" else "")
            + (" (best of the sweep)" if k == best else ""),
            k, check, err < 1e-3,
        )
        for k in (["captum_1", best] if best != "captum_1" else ["captum_1"])
    ]  # fmt: skip


# --------------------------------------------------------------------------- CAMs
def _scale(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from pytorch_grad_cam.utils.image import scale_cam_image

    return scale_cam_image(scale_cam_image(np.maximum(raw, 0), size))


def _cam_case(inp: Inputs, n: int, layer: str | None) -> tuple[Any, ...]:
    """Model, images, tensor, layer name, layer module and top-1 targets of a CAM case."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    m, images, x, top = inp.model, inp.images[:n], inp.x[:n], _top1(inp, n)
    layer_name = layer or inp.layer
    module = m.module.get_submodule(layer_name)
    return m, images, x, layer_name, module, [ClassifierOutputTarget(int(c)) for c in top]


def bench_scorecam(
    inp: Inputs, n: int, repeats: int, sweep: list[int], log: Any, layer: str | None = None
) -> list[Row]:
    from pytorch_grad_cam import ScoreCAM

    m, images, x, layer_name, module, targets = _cam_case(inp, n, layer)

    def ours() -> Any:
        return xs.explain(m, images, "scorecam", layer=layer_name)

    def peer(bs: int) -> Any:
        def run() -> np.ndarray:
            with (
                contextlib.redirect_stderr(io.StringIO()),  # its progress bars
                ScoreCAM(model=m.module, target_layers=[module]) as cam,
            ):
                cam.batch_size = bs
                return cam(input_tensor=x, targets=targets)

        return run

    names = [f"peer_{b}" for b in sweep]
    # the sweep's calls are the peers' warm-up; the timed repeats then run the best only
    sweep_t, sweep_last = time_interleaved({k: peer(b) for k, b in zip(names, sweep)}, 1)
    best = _best(sweep_t, names)
    log("    Score-CAM sweep: " + ", ".join(f"{k} {sweep_t.median(k):.1f}s" for k in names))
    timings, last = time_interleaved(
        {"ours": ours, best: peer(int(best.split("_")[1]))}, repeats, warm={best}
    )
    e = last["ours"]
    size = (x.shape[-1], x.shape[-2])
    ours_scaled = _scale(e.raw.float().numpy(), size)
    theirs = last[best]
    diff = float(np.abs(ours_scaled - theirs).max())
    rho = min(spearman(ours_scaled[i], theirs[i]) for i in range(n))
    channels = int(m.activations(x[:1], layer_name).shape[1])
    forwards = int(e.extras["forwards"])
    SCORECAM_FORWARDS[inp.name] = (layer_name, forwards, n * channels)
    check = (
        f"Spearman {rho:.4f}, normalised maps max abs diff {diff:.1e}; forwards: xaiscope "
        f"{forwards}, pytorch-grad-cam {n * channels} ({channels} channels per image)"
    )
    work = f"{n} image(s), top-1, layer {layer_name}"
    default = " (default)" if best == "peer_16" else ""
    return [
        make_row(
            inp, "scorecam", work, timings, "ours", "pytorch-grad-cam ScoreCAM",
            f"batch_size={best.split('_')[1]}{default} (best of {sweep})", best,
            check, rho > 0.95 and diff < 1e-2, target=2.0,
        )
    ]  # fmt: skip


def bench_ablationcam(
    inp: Inputs, n: int, repeats: int, log: Any, layer: str | None = None
) -> list[Row]:
    from pytorch_grad_cam import AblationCAM

    m, images, x, layer_name, module, targets = _cam_case(inp, n, layer)

    def ours() -> Any:
        return xs.explain(m, images, "ablationcam", layer=layer_name)

    def peer() -> np.ndarray:
        with (
            contextlib.redirect_stderr(io.StringIO()),  # its progress bars
            AblationCAM(model=m.module, target_layers=[module]) as cam,
        ):
            return cam(input_tensor=x, targets=targets)

    timings, last = time_interleaved({"ours": ours, "peer": peer}, repeats, warm={"peer"})
    e = last["ours"]
    ours_scaled = _scale(e.raw.float().numpy(), (x.shape[-1], x.shape[-2]))
    diff = float(np.abs(ours_scaled - last["peer"]).max())
    rho = min(spearman(ours_scaled[i], last["peer"][i]) for i in range(n))
    check = f"normalised maps max abs diff {diff:.1e}, Spearman {rho:.4f}"
    work = f"{n} image(s), top-1, layer {layer_name}"
    return [
        make_row(
            inp, "ablationcam", work, timings, "ours", "pytorch-grad-cam AblationCAM",
            "batch_size=32 (default)", "peer", check, diff < 1e-3, target=10.0,
        )
    ]  # fmt: skip


def bench_eigencam(inp: Inputs, n: int, repeats: int, log: Any) -> list[Row]:
    from pytorch_grad_cam import EigenCAM

    from xaiscope.methods.eigencam import first_component_projection

    m, images, x = inp.model, inp.images[:n], inp.x[:n]
    module = m.module.get_submodule(inp.layer)

    def ours() -> Any:
        return xs.explain(m, images, "eigencam", layer=inp.layer)

    def peer() -> np.ndarray:
        with EigenCAM(model=m.module, target_layers=[module]) as cam:
            return cam(input_tensor=x, targets=None)

    timings, last = time_interleaved({"ours": ours, "peer": peer}, repeats)
    # pytorch-grad-cam's sign of the component is arbitrary (SVD): compare both signs
    signed = first_component_projection(m.activations(x, inp.layer)).numpy()
    size = (x.shape[-1], x.shape[-2])
    diff = max(
        min(
            float(np.abs(_scale(s * signed[i : i + 1], size) - last["peer"][i]).max())
            for s in (1, -1)
        )
        for i in range(n)
    )
    ours_scaled = _scale(last["ours"].raw.float().numpy(), size)
    same = float(np.abs(ours_scaled - _scale(np.maximum(signed, 0), size)).max())
    check = (
        f"normalised maps max abs diff {diff:.1e} (up to the SVD's sign); xaiscope vs its own "
        f"projection {same:.1e}"
    )
    return [
        make_row(
            inp, "eigencam", f"{n} images, layer {inp.layer}", timings, "ours",
            "pytorch-grad-cam EigenCAM", "targets=None", "peer", check, diff < 1e-3 and same < 1e-6,
        )
    ]  # fmt: skip


# --------------------------------------------------------------------------- LIME / SHAP
def _superpixel_values(attr: torch.Tensor, segments: np.ndarray) -> np.ndarray:
    """Per-superpixel value of a (1, C, H, W) attribution that is constant on superpixels."""
    a = attr[0, 0].detach().cpu().numpy()
    ids = np.arange(int(segments.max()) + 1)
    return np.array([a[segments == j].mean() for j in ids])


def bench_lime_shap(
    inp: Inputs, n_samples: int, n_segments: int, repeats: int, sweep: list[int], log: Any
) -> list[Row]:
    from captum._utils.models.linear_model import SkLearnRidge
    from captum.attr import KernelShap, Lime
    from lime.lime_image import LimeImageExplainer

    from xaiscope.methods._segmentation import segment

    m, image, x = inp.model, inp.images[0], inp.x[:1]
    t = int(inp.top[0, 0])
    img01 = image.astype(np.float64) / 255.0
    segments = segment(img01, "slic", n_segments=n_segments)
    n_seg = int(segments.max()) + 1
    seg_t = torch.as_tensor(segments, dtype=torch.long)
    # each superpixel's mean colour: lime's hide_color=None and xaiscope's fill="mean"
    x01 = torch.as_tensor(img01, dtype=torch.float32).permute(2, 0, 1)
    means = torch.stack([x01[:, seg_t == j].mean(1) for j in range(n_seg)], 1)  # (3, M)
    fill01 = means[:, seg_t]  # (3, H, W)
    fill_x = m.normalize(fill01[None])
    mask = seg_t[None, None]

    def forward_np(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            xb = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
            return m.module(m.normalize(xb)).numpy()

    def ours(method: str, seed: int = 0) -> Any:
        def run() -> Any:
            return xs.explain(
                m, image, method, target=t, segmentation=segments, n_samples=n_samples, seed=seed
            )

        return run

    def lime_pkg(bs: int, seed: int = 0) -> Any:
        def run() -> np.ndarray:
            exp = LimeImageExplainer(random_state=seed).explain_instance(
                img01, forward_np, labels=(t,), top_labels=None, hide_color=None,
                num_samples=n_samples, batch_size=bs, segmentation_fn=lambda _i: segments,
            )  # fmt: skip
            w = np.zeros(n_seg)
            for j, v in exp.local_exp[t]:
                w[j] = v
            return w

        return run

    def lime_kernel(_o: Any, _p: Any, z: torch.Tensor, **_kw: Any) -> torch.Tensor:
        # lime's kernel: sqrt(exp(-d^2 / w^2)), d the cosine distance of z to all ones
        zf = z.float().flatten()
        d = 1 - zf.sum() / (zf.norm() * zf.numel() ** 0.5 + 1e-12)
        return torch.sqrt(torch.exp(-(d**2) / 0.25**2))

    captum_lime = Lime(
        m.module, interpretable_model=SkLearnRidge(alpha=1.0), similarity_func=lime_kernel
    )
    captum_ks = KernelShap(m.module)

    def captum(expl: Any, ppe: int, seed: int = 0) -> Any:
        def run() -> np.ndarray:
            torch.manual_seed(seed)  # Captum samples from torch's global generator
            a = expl.attribute(
                x, baselines=fill_x, target=t, feature_mask=mask, n_samples=n_samples,
                perturbations_per_eval=ppe,
            )  # fmt: skip
            return _superpixel_values(a, segments)

        return run

    # the raw forward cost: the perturbed images built beforehand, then the user's module
    # (not xaiscope's batch-norm-folded copy) on them in xaiscope's chunk size
    chunk = default_batch_size(m.device, None, tuple(x.shape[-2:]))
    gen = torch.Generator().manual_seed(0)
    z = (torch.rand(n_samples, n_seg, generator=gen) < 0.5).float()
    keep = z[:, seg_t][:, None]  # (S, 1, H, W)
    perturbed = m.normalize(x01[None] * keep + fill01[None] * (1 - keep))

    def raw_forwards() -> None:
        with torch.inference_mode():
            for part in perturbed.split(chunk):
                m.module(part)

    swept: dict[str, Any] = {}
    for b in sweep:
        swept[f"lime_{b}"] = lime_pkg(b)
        swept[f"clime_{b}"] = captum(captum_lime, b)
        swept[f"cks_{b}"] = captum(captum_ks, b)
    # the sweep: one timed call per batch size (it also warms each peer up); the rounds
    # then time each peer at its best batch size
    sweep_s: dict[str, float] = {}
    for name, fn in swept.items():
        t0 = time.perf_counter()
        fn()
        sweep_s[name] = time.perf_counter() - t0
    best_of = {
        p: min((f"{p}_{b}" for b in sweep), key=sweep_s.__getitem__)
        for p in ("lime", "clime", "cks")
    }
    log("    sweep: " + ", ".join(f"{k}: {v:.2f}s" for k, v in sweep_s.items()))
    contenders = {
        "ours_lime": ours("lime"),
        "ours_ks": ours("kernelshap"),
        "raw": raw_forwards,
        **{name: swept[name] for name in best_of.values()},
    }
    timings, last = time_interleaved(contenders, repeats, warm=set(best_of.values()))
    other_lime = ours("lime", seed=1)().extras["weights"][0].double().numpy()
    other_ks = ours("kernelshap", seed=1)().extras["values"][0].double().numpy()
    w_lime = last["ours_lime"].extras["weights"][0].double().numpy()
    v_ks = last["ours_ks"].extras["values"][0].double().numpy()

    def agree(
        ours_v: np.ndarray, theirs: np.ndarray, floor_v: np.ndarray, peer_floor_v: np.ndarray
    ) -> tuple[str, bool]:
        r = float(np.corrcoef(ours_v, theirs)[0, 1])
        floor = float(np.corrcoef(ours_v, floor_v)[0, 1])
        peer_floor = float(np.corrcoef(theirs, peer_floor_v)[0, 1])
        return (
            f"Pearson of the {n_seg} superpixel weights vs peer {r:.3f} (other seed: xaiscope "
            f"vs xaiscope {floor:.3f}, peer vs peer {peer_floor:.3f})",
            r > 0.9 or r >= min(floor, peer_floor) - 0.05,
        )

    gflop = forward_compute(m.module, x)
    FORWARD_COMPUTE[inp.name] = {
        "gflop": gflop,
        "ours": n_samples * gflop / timings.median("ours_lime"),
        "raw": n_samples * gflop / timings.median("raw"),
        "lime": n_samples * gflop / timings.median(best_of["lime"]),
        "sgemm": sgemm_rate(),
    }
    rows = []
    work = f"1 image, top-1, {n_samples} samples, {n_seg} SLIC superpixels, mean-colour fill"
    for method, key, peer_prefix, peer_name, floor, ours_v in (
        ("lime", "ours_lime", "lime", "lime LimeImageExplainer", other_lime, w_lime),
        ("lime", "ours_lime", "clime", "Captum Lime (Ridge, lime's kernel)", other_lime, w_lime),
        ("kernelshap", "ours_ks", "cks", "Captum KernelShap", other_ks, v_ks),
    ):
        best = best_of[peer_prefix]
        setting = "batch_size" if peer_prefix == "lime" else "perturbations_per_eval"
        bs = int(best.split("_")[1])
        again = (
            lime_pkg(bs, seed=1)
            if peer_prefix == "lime"
            else captum(captum_lime if peer_prefix == "clime" else captum_ks, bs, seed=1)
        )
        check, ok = agree(ours_v, last[best], floor, again())
        rows.append(
            make_row(
                inp, method, work, timings, key, peer_name,
                f"{setting}={best.split('_')[1]} (best of {sweep})", best, check, ok,
                target=1.5 if peer_prefix == "lime" else 1.0,
            )
        )  # fmt: skip
    for method, key in (("lime", "ours_lime"), ("kernelshap", "ours_ks")):
        rows.append(
            make_row(
                inp, method, work, timings, key, "raw forward passes (lower bound)",
                f"{n_samples} pre-built perturbed images through the module, chunks of {chunk} "
                "(xaiscope's), inference_mode",
                "raw",
                "(timing reference)", True, target=1 / 1.15,
                target_text="ours <= 1.15x raw",
            )
        )  # fmt: skip
    return rows
