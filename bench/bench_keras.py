"""xaiscope's Keras adapter against tf-keras-vis on VGG16 (random weights).

    python bench/bench_keras.py --threads 1     # prints the rows; run_bench.py --keras adds
                                                # them to docs/benchmarks.md

Same Keras model object on both sides, same images, same targets, same layer. tf-keras-vis
gets the preprocessed NHWC batch (``model.preprocess`` of the images, transposed: the tensor
xaiscope builds itself) and its ``ReplaceToLinear`` model modifier; xaiscope leaves out the
final softmax the same way (``logits=True``). Both are timed at their defaults, end to end:
tf-keras-vis resizes and normalises its maps, xaiscope resizes its maps to the images.

Checks, before any time is reported (untimed calls; tf-keras-vis with ``expand_cam=False,
normalize_cam=False`` for its raw layer-resolution maps, ``normalize_map=False`` for saliency):

- Gradcam: raw maps equal (max relative error < 1e-4).
- Saliency: max |gradient| over channels equal (< 1e-4).
- GradcamPlusPlus: tf-keras-vis implements a different Grad-CAM++ (scores through exp, alphas
  normalised over positions) from the paper's formula that xaiscope and pytorch-grad-cam
  use; its formula evaluated on xaiscope's activations and gradients must give its output
  (< 1e-3), which checks that both see the same activations and gradients.
- Scorecam: tf-keras-vis weights each channel by the softmax probability of the target for
  the masked input (no softmax over channels); its formula evaluated with xaiscope's masks
  and ``model.forward`` must give its output (< 1e-3).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import xaiscope as xs  # noqa: E402
from bench_common import Row, rel_max_err, time_interleaved  # noqa: E402

LAYER = "block5_conv3"
#: workloads: images per call, repeats, Score-CAM input size (VGG16 rebuilt at that size:
#: tf-keras-vis runs 512 masked forwards per image at block5_conv3)
FULL = {"n": 2, "repeats": 2, "score_size": 64, "score_n": 1, "score_repeats": 1}
QUICK = {"n": 1, "repeats": 1, "score_size": 64, "score_n": 1, "score_repeats": 1}
TITLE = "keras:VGG16 (Keras 3, TensorFlow backend, random weights)"


def set_threads(threads: int) -> None:
    """One thread count for torch and TensorFlow (before TensorFlow's runtime starts)."""
    torch.set_num_threads(threads)
    from xaiscope.models.keras_model import import_keras

    import_keras()
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # pragma: no cover - the runtime had already started
        pass


def versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {}
    for pkg in ("tensorflow", "keras", "tf-keras-vis"):
        try:
            out[pkg] = version(pkg)
        except Exception:  # pragma: no cover
            out[pkg] = "?"
    return out


def _inputs(model: Any, n: int) -> tuple[list[np.ndarray], torch.Tensor, np.ndarray, list[int]]:
    samples = xs.sample_images()
    names = ("chelsea", "coffee", "astronaut", "rocket")
    x01 = model.pixels([samples[k] for k in names[:n]])
    images = [
        (x01[i].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        for i in range(x01.shape[0])
    ]
    x = model.preprocess(images)
    x_nhwc = np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())
    classes = model.forward(x).argmax(1).tolist()
    return images, x, x_nhwc, classes


def _tkv_gradcampp(a: np.ndarray, g: np.ndarray, logit: np.ndarray) -> np.ndarray:
    """tf-keras-vis's GradcamPlusPlus on (N, c, h, w) activations/gradients, raw (N, h, w)."""
    s = np.exp(logit.astype(np.float64))[:, None, None, None]
    a, g = a.astype(np.float64), g.astype(np.float64)
    d1 = s * g
    d2 = d1 * g
    d3 = d2 * g
    total = a.sum(axis=(2, 3), keepdims=True)
    denom = 2.0 * d2 + d3 * total
    denom = denom + (d2 == 0.0)
    alphas = d2 / denom
    norm = alphas.sum(axis=(2, 3), keepdims=True)
    alphas = alphas / (norm + (norm == 0.0))
    w = (np.maximum(d1, 0) * alphas).sum(axis=(2, 3), keepdims=True)
    return np.maximum((w * a).sum(axis=1), 0)


def _tkv_scorecam(model: Any, x: torch.Tensor, classes: list[int], layer: str) -> np.ndarray:
    """tf-keras-vis's Scorecam recomputed with xaiscope's masks and ``model.forward``."""
    from xaiscope.methods.scorecam import score_masks

    a = model.activations(x, layer).float()
    cams = []
    for i in range(x.shape[0]):
        masks = score_masks(a[i], tuple(x.shape[-2:]))
        probs = []
        for start in range(0, masks.shape[0], 32):
            out = model.forward(x[i : i + 1] * masks[start : start + 32])
            probs.append(torch.softmax(out.double(), 1)[:, classes[i]])
        w = torch.cat(probs).float()
        cams.append(torch.einsum("c,chw->hw", w, a[i]).clamp(min=0))
    return torch.stack(cams).numpy()


def _row(
    method: str,
    workload: str,
    t: Any,
    ours: str,
    peer: str,
    name: str,
    setting: str,
    check: str,
    ok: bool,
    model: str = "keras:VGG16",
) -> Row:
    return Row(
        model=model,
        method=method,
        workload=workload,
        ours_s=t.median(ours),
        peer="tf-keras-vis " + name,
        peer_setting=setting,
        peer_s=t.median(peer),
        check=check,
        check_ok=ok,
        ours_cpu=t.median_cpu(ours),
        peer_cpu=t.median_cpu(peer),
        spread=max(t.spread(ours), t.spread(peer)),
    )


def bench_keras(cfg: dict[str, Any], log: Any = print) -> list[Row]:
    """Gradcam, GradcamPlusPlus, Saliency (224 x 224) and Scorecam against tf-keras-vis."""
    import keras
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.saliency import Saliency
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    rows: list[Row] = []
    keras.utils.set_random_seed(0)
    model = xs.load_model("keras:VGG16")
    km = model.keras_model
    images, x, x_nhwc, classes = _inputs(model, cfg["n"])
    n = len(images)
    score = CategoricalScore(classes)
    workload = f"{n} image(s) 224x224, given classes, layer {LAYER}"
    # tf-keras-vis clones the model once per visualizer (ReplaceToLinear): built outside timing
    gc = Gradcam(km, model_modifier=ReplaceToLinear(), clone=True)
    gcpp = GradcamPlusPlus(km, model_modifier=ReplaceToLinear(), clone=True)
    sal = Saliency(km, model_modifier=ReplaceToLinear(), clone=True)

    def ours(method: str) -> Any:
        kw = {"layer": LAYER} if method != "saliency" else {}
        return lambda: xs.explain(model, images, method=method, target=classes, **kw)

    contenders = {
        "ours_gradcam": ours("gradcam"),
        "gradcam": lambda: gc(score, x_nhwc, penultimate_layer=LAYER),
        "ours_gradcam++": ours("gradcam++"),
        "gradcam++": lambda: gcpp(score, x_nhwc, penultimate_layer=LAYER),
        "ours_saliency": ours("saliency"),
        "saliency": lambda: sal(score, x_nhwc),
    }
    log(f"  VGG16 224: {workload}, {cfg['repeats']} repeat(s)")
    t, last = time_interleaved(contenders, cfg["repeats"], warmup=1)

    # ---- checks (untimed)
    raw_gc = np.asarray(
        gc(score, x_nhwc, penultimate_layer=LAYER, expand_cam=False, normalize_cam=False)
    )
    err = rel_max_err(last["ours_gradcam"].raw, raw_gc)
    rows.append(
        _row(
            "gradcam",
            workload,
            t,
            "ours_gradcam",
            "gradcam",
            "Gradcam",
            "ReplaceToLinear, defaults (resize + normalise)",
            f"raw maps max rel err {err:.1e}",
            err < 1e-4,
        )
    )
    gp = model.grad_pass(x, torch.tensor(classes), layer=LAYER, need_input=False)
    assert gp.activation is not None and gp.layer_grads is not None
    logit = gp.logits[torch.arange(n), torch.tensor(classes)].numpy()
    mine = _tkv_gradcampp(gp.activation.numpy(), gp.layer_grads[0].numpy(), logit)
    raw_pp = np.asarray(
        gcpp(score, x_nhwc, penultimate_layer=LAYER, expand_cam=False, normalize_cam=False)
    )
    finite = bool(np.isfinite(raw_pp).all())
    err = rel_max_err(mine, raw_pp) if finite else float("nan")
    rows.append(
        _row(
            "gradcam++",
            workload,
            t,
            "ours_gradcam++",
            "gradcam++",
            "GradcamPlusPlus",
            "ReplaceToLinear, defaults (resize + normalise)",
            f"its formula on xaiscope's activations and gradients: max rel err "
            f"{err:.1e} (a different Grad-CAM++ variant from xaiscope's)",
            finite and err < 1e-3,
        )
    )
    raw_sal = np.asarray(sal(score, x_nhwc, normalize_map=False))
    err = rel_max_err(last["ours_saliency"].maps, raw_sal)
    rows.append(
        _row(
            "saliency",
            workload.replace(f", layer {LAYER}", ""),
            t,
            "ours_saliency",
            "saliency",
            "Saliency",
            "ReplaceToLinear, defaults (normalise)",
            f"max |grad| over channels: max rel err {err:.1e}",
            err < 1e-4,
        )
    )

    # ---- Score-CAM on a smaller VGG16
    size = cfg["score_size"]
    keras.utils.set_random_seed(0)
    small = xs.load_model("keras:VGG16", input_size=size)
    s_images, s_x, s_nhwc, s_classes = _inputs(small, cfg["score_n"])
    s_score = CategoricalScore(s_classes)
    sc = Scorecam(small.keras_model, model_modifier=ReplaceToLinear(), clone=True)
    s_work = f"{len(s_images)} image(s) {size}x{size} (VGG16 built at that size), layer {LAYER}"
    log(f"  VGG16 {size}: Score-CAM, {cfg['score_repeats']} repeat(s)")
    ts, _ = time_interleaved(
        {
            "ours_scorecam": lambda: xs.explain(
                small, s_images, method="scorecam", target=s_classes, layer=LAYER
            ),
            "scorecam": lambda: sc(s_score, s_nhwc, penultimate_layer=LAYER),
        },
        cfg["score_repeats"],
        warmup=0,
    )
    raw_sc = np.asarray(
        sc(s_score, s_nhwc, penultimate_layer=LAYER, expand_cam=False, normalize_cam=False)
    )
    err = rel_max_err(_tkv_scorecam(small, s_x, s_classes, LAYER), raw_sc)
    rows.append(
        _row(
            "scorecam",
            s_work,
            ts,
            "ours_scorecam",
            "scorecam",
            "Scorecam",
            "ReplaceToLinear, defaults (batch_size=32, resize + normalise)",
            f"its formula with xaiscope's masks and forwards: max rel err {err:.1e} "
            "(it weights channels by the target's softmax probability; xaiscope, "
            "like pytorch-grad-cam, by a softmax over channels)",
            err < 1e-3,
        )
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    t0 = time.perf_counter()
    rows = bench_keras(QUICK if args.quick else FULL)
    print(f"threads {args.threads}; {versions()}; {time.perf_counter() - t0:.0f}s")
    for r in rows:
        print(
            f"| {r.method} | {r.workload} | {r.ours_s:.3f} | {r.peer} | {r.peer_setting} | "
            f"{r.peer_s:.3f} | **{r.ratio:.2f}** | {r.ratio_cpu:.2f} | "
            f"{'yes' if r.check_ok else '**NO**'}: {r.check} |"
        )
    return 0 if all(r.check_ok for r in rows) else 1


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    raise SystemExit(main())
