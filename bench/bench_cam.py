"""Gradient CAMs against pytorch-grad-cam and Captum's LayerGradCam.

The workload of the issue: five CAM methods (Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM,
HiResCAM) for the top-3 classes of 8 images. pytorch-grad-cam does it in 15 calls, one per
(method, target rank), each ``cam(input_tensor=batch_of_8, targets=[ClassifierOutputTarget(c_i)
for each image])`` (its batch is the input batch: there is no other batch setting); xaiscope
in one ``xs.explain(model, images, methods=[...5], targets="top3")``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

import xaiscope as xs
from bench_common import Inputs, Row, make_row, rel_max_err, time_interleaved

CAMS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam")


def _gradcam_classes() -> dict[str, Any]:
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM

    return {
        "gradcam": GradCAM,
        "gradcam++": GradCAMPlusPlus,
        "xgradcam": XGradCAM,
        "layercam": LayerCAM,
        "hirescam": HiResCAM,
    }


PEER_NAMES = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "hirescam": "HiResCAM",
}


def _gcpp_raw(a: np.ndarray, g: np.ndarray, eps: float) -> np.ndarray:
    """pytorch-grad-cam 1.5's Grad-CAM++ (weights, weighted sum, ReLU) with a chosen eps."""
    g2 = g**2
    g3 = g2 * g
    s = a.sum(axis=(2, 3))[:, :, None, None]
    aij = np.where(g != 0, g2 / (2 * g2 + s * g3 + eps), 0)
    w = (np.maximum(g, 0) * aij).sum(axis=(2, 3))
    return np.maximum((w[:, :, None, None] * a).sum(axis=1), 0)


def _gradcampp_eps_diagnosis(
    cases: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], cam_cls: Any
) -> str:
    """Whether a Grad-CAM++ difference is only the stabilising epsilon of the denominator.

    ``cases``: (activations, gradients, pytorch-grad-cam raw map, xaiscope raw map) per rank.
    """
    import inspect

    src = inspect.getsource(cam_cls.get_cam_weights)
    their_eps = 1e-6 if ("0.000001" in src or "1e-6" in src) else float("nan")
    own = max(rel_max_err(_gcpp_raw(a, g, their_eps), theirs) for a, g, theirs, _ in cases)
    ours = max(rel_max_err(o, _gcpp_raw(a, g, 1e-7)) for a, g, _, o in cases)
    return (
        f"the difference is the denominator's eps ({their_eps:g} in pytorch-grad-cam, 1e-7 in "
        f"xaiscope): its formula with eps=1e-7 gives max rel err {ours:.1e} to xaiscope "
        f"(with eps={their_eps:g}: {own:.1e} to its own output)"
    )


def bench_cams(inp: Inputs, n: int, repeats: int, log: Any) -> list[Row]:
    from captum.attr import LayerGradCam
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    m, images, x, top = inp.model, inp.images[:n], inp.x[:n], inp.top[:n].clone()
    k_sets = top.shape[1]
    layer_name = inp.layer
    layer = m.module.get_submodule(layer_name)
    classes = _gradcam_classes()
    target_lists = [[ClassifierOutputTarget(int(c)) for c in top[:, k]] for k in range(k_sets)]
    kept: dict[str, list[tuple[np.ndarray, Any, Any]]] = {}

    def ours_suite() -> Any:
        return xs.explain(m, images, methods=list(CAMS), targets="top3", layer=layer_name)

    def make_ours(method: str) -> Any:
        def run() -> Any:
            return xs.explain(m, images, method=method, targets="top3", layer=layer_name)

        return run

    def make_peer(method: str, ranks: range) -> Any:
        cls = classes[method]

        def run() -> list[np.ndarray]:
            outs = []
            store = []
            with cls(model=m.module, target_layers=[layer]) as cam:
                for k in ranks:
                    outs.append(cam(input_tensor=x, targets=target_lists[k]))
                    ag = cam.activations_and_grads
                    # keep references only (no copy) for the agreement check after timing
                    store.append((outs[-1], list(ag.activations), list(ag.gradients)))
            kept[method] = store
            return outs

        return run

    lgc = LayerGradCam(m.module, layer)

    def captum_lgc() -> list[torch.Tensor]:
        return [lgc.attribute(x, target=top[:, k], relu_attributions=True) for k in range(k_sets)]

    contenders: dict[str, Any] = {"ours_suite": ours_suite}
    for meth in CAMS:
        contenders[f"ours_{meth}"] = make_ours(meth)
    for meth in CAMS:
        contenders[f"peer_{meth}"] = make_peer(meth, range(k_sets))
    contenders["captum_lgc"] = captum_lgc
    # warm-up: the suite (it runs every code path of the single-method calls), one peer
    # call with one target rank, and Captum
    ours_suite()
    make_peer(CAMS[0], range(1))()
    captum_lgc()
    timings, last = time_interleaved(contenders, repeats, warmup=0)
    # the 15 calls of one repeat, summed repeat by repeat
    for r in range(repeats):
        timings.add(
            "peer_suite",
            sum(timings.runs[f"peer_{meth}"][r] for meth in CAMS),
            sum(timings.cpu[f"peer_{meth}"][r] for meth in CAMS),
        )

    # ---------------------------------------------------------------- agreement checks
    suite = last["ours_suite"]
    by_method = {meth: suite[i * k_sets : (i + 1) * k_sets] for i, meth in enumerate(CAMS)}
    for meth in CAMS:
        single = last[f"ours_{meth}"]
        for k in range(k_sets):
            assert torch.equal(single[k].raw, by_method[meth][k].raw), f"{meth}: suite differs"
            assert (torch.as_tensor(single[k].targets) == top[:, k]).all(), "targets differ"
    size = (x.shape[-1], x.shape[-2])
    checks: dict[str, tuple[str, bool]] = {}
    for meth in CAMS:
        raw_errs, norm_errs, cases = [], [], []
        with classes[meth](model=m.module, target_layers=[layer]) as cam:
            for k, (out, acts, grads) in enumerate(kept[meth]):
                a_np, g_np = acts[0].numpy(), grads[0].numpy()
                theirs_raw = np.maximum(
                    cam.get_cam_image(x, layer, target_lists[k], a_np, g_np, False), 0
                )
                ours_raw = by_method[meth][k].raw.float().cpu().numpy()
                raw_errs.append(rel_max_err(ours_raw, theirs_raw))
                cases.append((a_np, g_np, theirs_raw, ours_raw))
                ours_norm = scale_cam_image(scale_cam_image(ours_raw, size))
                norm_errs.append(float(np.abs(ours_norm - out).max()))
        raw_e, norm_e = max(raw_errs), max(norm_errs)
        text = (
            f"raw max rel err {raw_e:.1e}; min-max-normalised, resized: max abs diff {norm_e:.1e}"
        )
        ok = raw_e < 1e-4 and norm_e < 1e-3
        if meth == "gradcam++" and not ok:
            text += "; " + _gradcampp_eps_diagnosis(cases, classes[meth])
        checks[meth] = (text, ok)
    lgc_errs = [
        rel_max_err(by_method["gradcam"][k].raw, last["captum_lgc"][k][:, 0]) for k in range(k_sets)
    ]
    lgc_check = (f"raw max rel err {max(lgc_errs):.1e}", max(lgc_errs) < 1e-4)

    # ------------------------------------------------------------------------ rows
    work = f"{n} images, top-3, layer {layer_name}"
    rows = [
        make_row(
            inp,
            "gradcam",
            work,
            timings,
            "ours_gradcam",
            "Captum LayerGradCam",
            "3 calls (one per rank), relu_attributions=True",
            "captum_lgc",
            *lgc_check,
        ),
    ]
    for meth in CAMS:
        rows.append(
            make_row(
                inp,
                meth,
                work,
                timings,
                f"ours_{meth}",
                f"pytorch-grad-cam {PEER_NAMES[meth]}",
                f"3 calls cam(input_tensor=batch of {n}, targets=[ClassifierOutputTarget])",
                f"peer_{meth}",
                *checks[meth],
            )
        )
    all_ok = all(ok for _, ok in checks.values())
    rows.append(
        make_row(
            inp,
            "5 CAMs x top-3 (one explain call)",
            work,
            timings,
            "ours_suite",
            "pytorch-grad-cam, the 5 classes above",
            f"15 calls (5 methods x 3 ranks), batch of {n} each",
            "peer_suite",
            "the five checks above " + ("pass" if all_ok else "FAIL"),
            all_ok,
            target=3.0,
        )
    )
    return rows
