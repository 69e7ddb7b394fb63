"""Pixel-gradient methods against Captum: saliency, SmoothGrad, integrated gradients."""

from __future__ import annotations

import time
from typing import Any

import torch

import xaiscope as xs
from bench_common import Inputs, Row, make_row, rel_max_err, spearman, time_interleaved
from xaiscope.batching import default_batch_size


def _exact_check(
    ours: torch.Tensor, peer: torch.Tensor, peer_chunk: Any, n: int, bs: int
) -> tuple[str, bool]:
    """Bitwise comparison, and where the batch sizes differ, also against the peer run on
    xaiscope's chunks: float32 kernels may round differently for another batch size."""
    if torch.equal(ours, peer):
        return "bit-identical", True
    err = rel_max_err(ours, peer)
    if bs >= n:
        return f"max rel err {err:.1e}", err < 1e-5
    chunked = torch.cat([peer_chunk(a, min(n, a + bs)) for a in range(0, n, bs)])
    cerr = rel_max_err(ours, chunked)
    same = torch.equal(ours, chunked)
    peer_self = rel_max_err(chunked, peer)
    return (
        ("bit-identical" if same else f"max rel err {cerr:.1e}")
        + f" to the peer on the same chunks of {bs}; {err:.1e} to its batch of {n} "
        f"(the peer against itself across the two batch sizes: {peer_self:.1e})",
        same or cerr < 1e-5,
    )


def _sweep(
    make: Any, candidates: list[int | None], log: Any
) -> tuple[int | None, dict[int | None, Any]]:
    """One timed call per candidate batch size (after the warm-up done by the caller).

    Returns the fastest candidate and each candidate's output.
    """
    seen: dict[int | None, float] = {}
    outs: dict[int | None, Any] = {}
    for c in dict.fromkeys(candidates):
        t0 = time.perf_counter()
        outs[c] = make(c)()
        seen[c] = time.perf_counter() - t0
    best = min(seen, key=lambda c: seen[c])
    log(
        "    sweep: "
        + ", ".join(f"{'default' if c is None else c}: {t:.2f}s" for c, t in seen.items())
    )
    return best, outs


# ----------------------------------------------------------------------------- saliency
def bench_saliency(inp: Inputs, n: int, repeats: int, log: Any) -> list[Row]:
    from captum.attr import Saliency

    m, images, x, tgt = inp.model, inp.images[:n], inp.x[:n], inp.top[:n, 0].clone()
    sal = Saliency(m.module)

    def ours() -> Any:
        return xs.explain(m, images, method="saliency", target="top1")

    def captum() -> torch.Tensor:
        return sal.attribute(x, target=tgt, abs=True)

    def captum_e2e() -> torch.Tensor:
        # what a Captum user runs to explain the top-1 class: find it, then attribute
        with torch.no_grad():
            t = m.module(x).argmax(1)
        return sal.attribute(x, target=t, abs=True)

    timings, last = time_interleaved(
        {"ours": ours, "captum": captum, "captum_e2e": captum_e2e}, repeats
    )
    e = last["ours"]
    assert (torch.as_tensor(e.targets) == tgt).all(), "targets differ"
    check, ok = _exact_check(
        e.raw,
        last["captum"],
        lambda a, b: sal.attribute(x[a:b], target=tgt[a:b], abs=True),
        n,
        default_batch_size(m.device),
    )
    work = f"{n} images, top-1, abs=True"
    return [
        make_row(
            inp,
            "saliency",
            work,
            timings,
            "ours",
            "Captum Saliency",
            "attribute(x, target, abs=True); classes given",
            "captum",
            check,
            ok,
        ),
        make_row(
            inp,
            "saliency",
            work,
            timings,
            "ours",
            "Captum Saliency",
            "same, plus the forward that finds the top-1 class",
            "captum_e2e",
            check,
            ok,
            note="end-to-end",
        ),
    ]


# --------------------------------------------------------------------------- smoothgrad
def bench_smoothgrad(
    inp: Inputs,
    n: int,
    n_samples: int,
    stdev: float,
    repeats: int,
    sweep: list[int],
    log: Any,
) -> list[Row]:
    from captum.attr import NoiseTunnel, Saliency

    m, images, x, tgt = inp.model, inp.images[:n], inp.x[:n], inp.top[:n, 0].clone()
    nt = NoiseTunnel(Saliency(m.module))

    def ours(seed: int = 0) -> Any:
        return xs.explain(
            m,
            images,
            method="smoothgrad",
            target="top1",
            n_samples=n_samples,
            stdev=stdev,
            seed=seed,
        )

    def make_captum(bs: int | None) -> Any:
        def run() -> torch.Tensor:
            return nt.attribute(
                x,
                nt_type="smoothgrad",
                nt_samples=n_samples,
                stdevs=stdev,
                target=tgt,
                nt_samples_batch_size=bs,
            )

        return run

    ours()  # warm-up (the same kernels and allocator as the sweep)
    bs = default_batch_size(m.device)
    cands = [None, *[c for c in sweep if c < n_samples]]
    if bs < n_samples * n and bs % n == 0:
        cands.append(bs // n)  # the same rows per batch as xaiscope's chunk
    best, _ = _sweep(make_captum, cands, log)
    contenders = {"ours": ours, "captum": make_captum(None)}
    if best is not None:
        contenders["captum_best"] = make_captum(best)
    timings, last = time_interleaved(contenders, repeats, warm={"ours", "captum", "captum_best"})

    e = last["ours"]
    ref = last["captum"]
    other = ours(seed=1).raw
    rho = min(spearman(e.raw[i], ref[i]) for i in range(n))
    rho_self = min(spearman(e.raw[i], other[i]) for i in range(n))
    check = f"Spearman vs Captum min {rho:.3f} (ours vs ours, other seed: {rho_self:.3f})"
    # same distribution: ours agrees with Captum as well as with itself under another seed
    ok = rho > 0.9 or rho >= rho_self - 0.02
    work = f"{n} images, top-1, {n_samples} samples, stdev {stdev}, abs"
    peer = "Captum NoiseTunnel(Saliency)"
    rows = [
        make_row(
            inp,
            "smoothgrad",
            work,
            timings,
            "ours",
            peer,
            "nt_samples_batch_size=None (default: all at once)"
            + (", also the best of the sweep" if best is None else ""),
            "captum",
            check,
            ok,
        ),
    ]
    if best is not None:
        rows.append(
            make_row(
                inp,
                "smoothgrad",
                work,
                timings,
                "ours",
                peer,
                f"nt_samples_batch_size={best} (best of the sweep)",
                "captum_best",
                check,
                ok,
            )
        )
    return rows


# ------------------------------------------------------------------ integrated gradients
def bench_ig(
    inp: Inputs, n: int, n_steps: int, repeats: int, sweep: list[int], log: Any
) -> list[Row]:
    from captum.attr import IntegratedGradients

    m, images, x, tgt = inp.model, inp.images[:n], inp.x[:n], inp.top[:n, 0].clone()
    base = inp.black(n)
    ig = IntegratedGradients(m.module)

    def ours() -> Any:
        return xs.explain(
            m,
            images,
            method="integrated_gradients",
            target="top1",
            n_steps=n_steps,
            rule="gausslegendre",
            baseline="black",
        )

    def make_captum(bs: int | None, delta: bool = False) -> Any:
        def run() -> Any:
            return ig.attribute(
                x,
                baselines=base,
                target=tgt,
                n_steps=n_steps,
                method="gausslegendre",
                internal_batch_size=bs,
                return_convergence_delta=delta,
            )

        return run

    rows_total = n * n_steps
    bs = default_batch_size(m.device)
    ours()  # warm-up (the same kernels and allocator as the sweep)
    cands = [None, *[c for c in sweep if c < rows_total]] + ([bs] if bs < rows_total else [])
    best, outs = _sweep(make_captum, cands, log)
    # the same outputs as xaiscope's call: attributions and the completeness gap, which
    # costs Captum a forward of the images and of the baselines (xaiscope: the forward that
    # finds the top-1 class gives f(x), plus one of the baselines)
    contenders = {
        "ours": ours,
        "captum_delta": make_captum(None, delta=True),
        "captum": make_captum(None),
    }
    if best is not None:
        contenders["captum_best_delta"] = make_captum(best, delta=True)
        contenders["captum_best"] = make_captum(best)
    make_captum(best, delta=True)()  # warm-up of the delta path
    timings, last = time_interleaved(contenders, repeats, warmup=0)

    e = last["ours"]
    ref = last["captum"]
    err = rel_max_err(e.raw, ref)
    if bs < rows_total:
        matched = outs[bs]
        merr = rel_max_err(e.raw, matched)
        check = (
            f"max rel err {merr:.1e} to Captum at internal_batch_size={bs} (xaiscope's chunk); "
            f"{err:.1e} to Captum's default (Captum against itself across the two: "
            f"{rel_max_err(matched, ref):.1e})"
        )
        ok = merr < 1e-3
    else:
        check = f"max rel err {err:.1e}"
        ok = err < 1e-3
    # completeness gaps: sum(attr) - (f(x) - f(b)) on both sides
    _, cap_delta = last["captum_delta"]
    ours_delta = torch.as_tensor(e.delta).double()
    scale = float((torch.as_tensor(e.raw).double().flatten(1).sum(1) - ours_delta).abs().max())
    derr = float((ours_delta - cap_delta.double()).abs().max()) / max(scale, 1e-12)
    dcheck = f"{check}; delta: max difference {derr:.1e} of |f(x) - f(b)|"
    dok = ok and derr < 1e-3
    work = f"{n} images, top-1, {n_steps} steps, Gauss-Legendre, black baseline"
    peer = "Captum IntegratedGradients"
    default = "internal_batch_size=None (default: all at once)" + (
        ", also the best of the sweep" if best is None else ""
    )
    rows = [
        make_row(
            inp, "integrated_gradients", work, timings, "ours", peer,
            default + ", return_convergence_delta=True (the same outputs: attributions and gap)",
            "captum_delta", dcheck, dok,
        ),
        make_row(
            inp, "integrated_gradients", work, timings, "ours", peer,
            default + ", attributions only (xaiscope also computes the gap)",
            "captum", check, ok, note="info",
        ),
    ]  # fmt: skip
    if best is not None:
        rows += [
            make_row(
                inp, "integrated_gradients", work, timings, "ours", peer,
                f"internal_batch_size={best} (best of the sweep), return_convergence_delta=True "
                "(the same outputs)",
                "captum_best_delta", dcheck, dok,
            ),
            make_row(
                inp, "integrated_gradients", work, timings, "ours", peer,
                f"internal_batch_size={best} (best of the sweep), attributions only (xaiscope "
                "also computes the gap)",
                "captum_best", check, ok, note="info",
            ),
        ]  # fmt: skip
    return rows
