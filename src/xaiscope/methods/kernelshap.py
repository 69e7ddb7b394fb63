"""KernelSHAP on superpixels: Shapley values from a Shapley-kernel weighted regression.

Lundberg, Lee (2017), "A Unified Approach to Interpreting Model Predictions", NeurIPS
(arXiv:1705.07874). Players are the M superpixels of each image (SLIC by default, quick
shift, a grid; see :mod:`xaiscope.methods._segmentation`); a coalition z in {0, 1}^M keeps
the superpixels it switches on and replaces the others with ``fill`` (default: each
superpixel's mean colour). v(z) is the model's raw output for the target (logits for torch
models, a black-box function's output as it is); the baseline is v(0), all superpixels filled.

- M <= ``exact_limit``, or n_samples >= 2^M - 2: all 2^M - 2 proper coalitions are
  enumerated with Shapley kernel weights (M - 1) / (C(M, |z|) |z| (M - |z|)); the regression
  then gives the exact Shapley values of v.
- otherwise ``n_samples`` coalitions as shap's KernelExplainer draws them: subset sizes whose
  coalitions fit in the budget are enumerated completely, the rest are sampled by size with
  the kernel's weight per size, each sample paired with its complement, repeats counted.
- the fit enforces efficiency, sum_j phi_j = v(1) - v(0), by eliminating the last variable
  (as shap does), and solves the weighted least squares in torch (float64, minimum-norm).
- ``l1_reg`` selects the superpixels that get a value before that fit, with shap's rules
  (Lundberg & Lee's L1 option): ``None`` (default), ``False`` or 0 none;
  ``"num_features(k)"`` the first k features on the LARS path; ``"aic"``/``"bic"`` a
  LassoLars fit by that information criterion; a number the nonzero coefficients of a Lasso
  with that alpha;
  ``"auto"`` AIC when fewer than 20 % of the 2^M - 2 coalitions were evaluated, else none.
  The selection runs on the samples augmented as ``(z, y)`` with weight w (M - |z|) and
  ``(z - 1, y - (v(1) - v(0)))`` with weight w |z|, so that it respects efficiency;
  unselected superpixels get exactly 0, and the selected ones still sum to v(1) - v(0).
  When a rule keeps none (a flat score, a large alpha) every value is 0, as in shap, and an
  image whose v(1) - v(0) is not 0 is flagged in ``warnings``.

Raw: (N, C, H, W), each pixel carrying its superpixel's value (broadcast over channels);
map: (N, H, W) the same. ``delta``: sum of values minus (f(x) - f(baseline)) (0 up to
rounding). ``extras``: ``segments`` (N, H, W), ``values`` (N, M_max) with NaN beyond each
image's M_i, ``n_superpixels`` (N,), ``base_value`` f(baseline) (N,), ``fx`` f(x) (N,),
``exact`` (N,) bool, ``selected`` (N,) superpixels with a value (M_i without ``l1_reg``).
Cost: n_samples + 1 forward passes per image and target (2^M - 1 when
enumerated), plus an M x M solve. Limits: values depend on the segmentation and the fill;
fewer samples than superpixels leave the fit under-determined (flagged in ``warnings``;
``l1_reg="num_features(k)"`` with k below the number of samples is the remedy); an L1
selection trades exactness for sparsity (``extras["selected"]`` counts the survivors).
"""

from __future__ import annotations

import itertools
import math
import numbers
import re
from typing import Any

import numpy as np
import torch

from xaiscope import settings
from xaiscope._keywords import Rule
from xaiscope.errors import ParameterError
from xaiscope.methods._segmentation import (
    MAX_SEGMENTS,
    Segmentation,
    degenerate_warnings,
    expand_values,
    flat_score_warnings,
    score_coalitions,
    segment_batch,
    segment_counts,
    superpixel_fill,
)
from xaiscope.methods.lime import fit_dtype
from xaiscope.methods.registry import MethodContext, MethodOutput, register

#: Largest exact_limit accepted: 2^20 forward passes per image is already far too many.
MAX_EXACT = 20


def shapley_kernel(m: int, sizes: torch.Tensor) -> torch.Tensor:
    """Shapley kernel weight (M - 1) / (C(M, s) s (M - s)) of coalitions of size ``sizes``."""
    comb = torch.tensor([math.comb(m, s) for s in range(m + 1)], dtype=torch.float64)
    comb = comb.to(sizes.device)
    s = sizes.to(torch.float64)
    return (m - 1) / (comb[sizes] * s * (m - s))


def all_coalitions(m: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Every proper coalition of ``m`` players (2^m - 2, m >= 2) and its kernel weight."""
    codes = torch.arange(1, 2**m - 1, device=device)
    z = (codes[:, None] >> torch.arange(m, device=device)) & 1
    return z.to(torch.uint8), shapley_kernel(m, z.sum(1))


def sampled_coalitions(
    m: int, n_samples: int, gen: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """At most ``n_samples`` coalitions of ``m`` players and their weights, as shap draws them.

    Sizes s and m - s share one weight (m - 1) / (s (m - s)) (doubled when distinct). Sizes
    whose coalitions (and complements) all fit in the remaining budget are enumerated; the
    rest are drawn at random by size, each draw with its complement, repeats adding weight.
    """
    n_sizes = math.ceil((m - 1) / 2)
    n_paired = (m - 1) // 2
    size_w = np.array([(m - 1) / (s * (m - s)) for s in range(1, n_sizes + 1)])
    size_w[:n_paired] *= 2
    size_w /= size_w.sum()

    parts: list[torch.Tensor] = []
    weights: list[torch.Tensor] = []
    left = n_samples
    remaining = size_w.copy()
    n_full = 0
    for s in range(1, n_sizes + 1):
        paired = s <= n_paired
        n_sub = math.comb(m, s) * (2 if paired else 1)
        if left * remaining[s - 1] / n_sub < 1.0 - 1e-8:
            break
        n_full += 1
        left -= n_sub
        if remaining[s - 1] < 1.0:
            remaining /= 1 - remaining[s - 1]
        # host enumeration of the index sets only; at most n_samples rows
        idx = torch.tensor(list(itertools.combinations(range(m), s)), device=device)
        z = torch.zeros(idx.shape[0], m, dtype=torch.uint8, device=device)
        z.scatter_(1, idx, 1)
        w = size_w[s - 1] / math.comb(m, s) / (2 if paired else 1)
        parts += [z, 1 - z] if paired else [z]
        weights.append(torch.full((n_sub,), w, dtype=torch.float64, device=device))

    if n_full < n_sizes and left > 0:
        probs = size_w.copy()
        probs[:n_paired] /= 2  # each draw of a paired size yields two samples
        probs = probs[n_full:] / probs[n_full:].sum()
        n_draw = 4 * left  # as shap: enough draws to find `left` distinct coalitions
        pick = torch.multinomial(
            torch.tensor(probs, device=device), n_draw, replacement=True, generator=gen
        )
        sizes = pick + n_full + 1
        keys = torch.rand(n_draw, m, generator=gen, device=device)
        ranks = keys.argsort(1).argsort(1)
        draws = (ranks < sizes[:, None]).to(torch.uint8)
        uniq, inv = torch.unique(draws, dim=0, return_inverse=True)
        order = torch.arange(n_draw, device=device)
        first = torch.full((uniq.shape[0],), n_draw, device=device).scatter_reduce(
            0, inv, order, "amin"
        )
        is_new = first[inv] == order
        paired_d = sizes <= n_paired
        cost = is_new.long() * (1 + paired_d.long())
        cum = cost.cumsum(0)
        # keep draws until the budget is reached (repeats before then add weight)
        keep = int(((cum <= left) & (cum - cost < left)).sum())
        counts = torch.bincount(inv[:keep], minlength=uniq.shape[0]).to(torch.float64)
        new_idx = order[:keep][is_new[:keep]]  # first occurrences, in drawing order
        z = draws[new_idx]
        w = counts[inv[new_idx]]
        pair = paired_d[new_idx]
        zc, wc = (1 - z)[pair], w[pair]
        rand_z = torch.cat([z, zc])
        rand_w = torch.cat([w, wc])
        rand_w *= size_w[n_full:].sum() / rand_w.sum()
        parts.append(rand_z)
        weights.append(rand_w)
    return torch.cat(parts), torch.cat(weights)


def efficient_wls(
    z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, total: torch.Tensor
) -> torch.Tensor:
    """Values phi (M,) minimising sum_s w_s (y_s - z_s . phi)^2 subject to sum(phi) = total.

    The last value is eliminated (phi_M = total - sum of the others), as shap does; the
    rest is a weighted least squares, minimum-norm where under-determined.
    """
    m = z.shape[1]
    if m == 1:
        return total.reshape(1)
    x = z[:, :-1] - z[:, -1:]
    y2 = y - z[:, -1] * total
    root = w.sqrt()
    rest = torch.linalg.pinv(x * root[:, None]) @ (y2 * root)
    return torch.cat([rest, (total - rest.sum()).reshape(1)])


def parse_l1_reg(l1_reg: Any) -> tuple[str, float]:
    """(rule, parameter) of an ``l1_reg`` value; :class:`ParameterError` if it is none.

    As in shap: a number is a Lasso alpha (0: no selection); a count of features is only
    ``"num_features(k)"``.
    """
    if l1_reg is None or l1_reg is False:
        return "none", 0.0
    if isinstance(l1_reg, str):
        text = l1_reg.strip().lower()
        if text in ("auto", "aic", "bic"):
            return text, 0.0
        if text in ("false", "none", "off", "0"):
            return "none", 0.0
        match = re.fullmatch(r"num_features\(\s*(\d+)\s*\)", text)
        if match and int(match.group(1)) >= 1:
            return "num", float(match.group(1))
    elif isinstance(l1_reg, numbers.Real) and not isinstance(l1_reg, (bool, np.bool_)):
        alpha = float(l1_reg)
        if alpha == 0:
            return "none", 0.0
        if math.isfinite(alpha) and alpha > 0:
            return "alpha", alpha
    raise ParameterError(
        "l1_reg must be None/False, 'auto', 'aic', 'bic', 'num_features(k)' with k >= 1, or a "
        f"Lasso alpha >= 0; got {l1_reg!r}"
    )


def l1_select(
    z: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    total: float,
    rule: str,
    param: float,
    fraction: float,
) -> np.ndarray | None:
    """Indices of the features an L1 rule keeps, or None for all of them.

    ``z`` (S, M) coalitions, ``y`` (S,) v(z) - v(0), ``w`` (S,) kernel weights, ``total``
    v(1) - v(0), ``fraction`` of the 2^M - 2 coalitions evaluated (for ``"auto"``).
    """
    if rule == "none" or (rule == "auto" and fraction >= 0.2):
        return None
    from sklearn.linear_model import Lasso, LassoLarsIC, lars_path
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    zn = z.double().cpu().numpy()
    yn = y.double().cpu().numpy()
    wn = w.double().cpu().numpy()
    wn = wn / wn.sum()  # as shap's weights: a Lasso alpha means the same on both
    m = zn.shape[1]
    size = zn.sum(1)
    # each sample twice: as it is, and seen from the full coalition (efficiency)
    root = np.sqrt(np.concatenate([wn * (m - size), wn * size]))
    xa = np.concatenate([zn, zn - 1]) * root[:, None]
    ya = np.concatenate([yn, yn - total]) * root
    if not np.any(ya):
        return np.zeros(0, dtype=np.int64)  # a flat score: nothing to select
    if rule == "num":
        keep = np.asarray(lars_path(xa, ya, max_iter=int(param))[1], dtype=np.int64)
    elif rule in ("auto", "aic", "bic"):
        crit = "aic" if rule == "auto" else rule
        if xa.shape[0] <= m + 1:
            # its noise estimate needs more rows than columns plus the intercept
            raise ParameterError(
                f"l1_reg={crit!r} needs at least {(m + 1) // 2 + 1} coalitions for "
                f"{m} superpixels, got {zn.shape[0]}; raise n_samples or use "
                "l1_reg='num_features(k)'"
            )
        fit = make_pipeline(StandardScaler(with_mean=False), LassoLarsIC(criterion=crit))
        keep = np.flatnonzero(fit.fit(xa, ya)[1].coef_)
    else:
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():
            # an alpha so large that every coefficient is 0 "does not converge": the empty
            # selection that follows is already flagged, and stderr stays one line per issue
            warnings.simplefilter("ignore", ConvergenceWarning)
            keep = np.flatnonzero(Lasso(alpha=param).fit(xa, ya).coef_)
    return np.sort(keep)


@register(
    "kernelshap",
    family="perturbation",
    paper="Lundberg & Lee 2017, SHAP / KernelSHAP (NeurIPS; arXiv:1705.07874)",
    summary="Shapley values of superpixels from a Shapley-kernel weighted regression",
    aliases=("kernel_shap",),
    needs_gradients=False,
    stochastic=True,
    rules={
        "n_segments": Rule(low=1, high=MAX_SEGMENTS, integer=True),
        "exact_limit": Rule(low=0, high=MAX_EXACT, integer=True),
    },
)
def kernelshap(
    ctx: MethodContext,
    *,
    n_samples: int = 1000,
    segmentation: Segmentation = "slic",
    n_segments: int = 50,
    fill: Any = "mean",
    exact_limit: int = 10,
    l1_reg: Any = None,
) -> MethodOutput:
    if n_samples < 1:
        raise ParameterError(f"kernelshap needs n_samples >= 1, got {n_samples}")
    rule, rule_param = parse_l1_reg(l1_reg)
    if not 0 <= exact_limit <= MAX_EXACT:
        raise ParameterError(f"exact_limit must lie in [0, {MAX_EXACT}], got {exact_limit}")
    device = ctx.x.device
    n = ctx.x.shape[0]
    segments = segment_batch(ctx, segmentation, n_segments)
    counts = segment_counts(segments).tolist()
    m_max = max(counts)
    fill_pix = superpixel_fill(ctx, segments, fill)
    # each image draws from the seed alone, so its values do not depend on the other images
    fresh = ctx.image_generators()

    # coalitions of every image, stacked: row 0 of each block is v(0), the baseline
    blocks, kernel_w, exact = [], [], []
    for m in counts:
        full = m == 1 or m <= exact_limit or 2**m - 2 <= n_samples
        if full and 2**m - 2 > settings.get("max_samples"):
            raise ParameterError(
                f"kernelshap: exact_limit={exact_limit} enumerates 2^{m} - 2 = {2**m - 2:,} "
                "coalitions per image, more than allowed; lower exact_limit or "
                f"{settings.limit_hint('max_samples')}"
            )
        if m == 1:
            z = torch.zeros(0, 1, dtype=torch.uint8, device=device)
            w = torch.zeros(0, dtype=torch.float64, device=device)
        elif full:
            z, w = all_coalitions(m, device)
        else:
            z, w = sampled_coalitions(m, n_samples, fresh(), device)
        z = torch.cat([torch.zeros(1, m, dtype=torch.uint8, device=device), z])
        blocks.append(torch.nn.functional.pad(z, (0, m_max - m)))
        kernel_w.append(w)
        exact.append(full)
    sizes = [b.shape[0] for b in blocks]
    rows = torch.repeat_interleave(
        torch.arange(n, device=device), torch.tensor(sizes, device=device)
    )
    scores = score_coalitions(ctx, torch.cat(blocks), rows, segments, fill_pix, desc="kernelshap")
    notes = degenerate_warnings(
        ctx,
        segments,
        fill_pix,
        None if all(exact) else n_samples,
        name="kernelshap",
    )
    dt = fit_dtype(device)
    fx = ctx.target_scores().to(dt)
    # f(x) joins the perturbed scores: with one superpixel only v(0) was computed
    every = torch.cat([scores, fx.float()])
    notes += flat_score_warnings(
        every, torch.cat([rows, torch.arange(n, device=device)]), n, "kernelshap"
    )
    values = torch.full((n, m_max), float("nan"), dtype=dt, device=device)
    base = torch.zeros(n, dtype=dt, device=device)
    selected = []
    for i, (block, m) in enumerate(zip(scores.to(dt).split(sizes), counts)):
        base[i] = block[0]
        z = blocks[i][1:, :m].to(dt)
        y, w, total = block[1:] - block[0], kernel_w[i].to(dt), fx[i] - block[0]
        keep = None
        if m > 1:
            fraction = z.shape[0] / (2**m - 2)
            keep = l1_select(z, y, w, float(total), rule, rule_param, fraction)
        if keep is None:
            values[i, :m] = efficient_wls(z, y, w, total)
            selected.append(m)
        else:
            values[i, :m] = 0.0
            selected.append(len(keep))
            if len(keep):
                idx = torch.as_tensor(keep, device=device)
                values[i, idx] = efficient_wls(z[:, idx], y, w, total)
            elif abs(float(total)) > 1e-7 * max(abs(float(fx[i])), 1.0):
                # as shap: every value 0; the gap shows in delta
                notes.append(
                    (
                        i,
                        f"l1_reg={l1_reg!r} kept no superpixel, so every value is 0 although "
                        f"f(x) - f(baseline) = {float(total):.4g}; use a weaker rule",
                    )
                )
    map_ = expand_values(torch.nan_to_num(values, nan=0.0), segments).float()
    raw = map_[:, None].expand(-1, ctx.x.shape[1], -1, -1).contiguous()
    delta = torch.nansum(values, dim=1) - (fx - base)
    extras: dict[str, Any] = {
        "segments": segments,
        "values": values.float(),
        "n_superpixels": torch.tensor(counts, device=device),
        "base_value": base.float(),
        "fx": fx.float(),
        "exact": torch.tensor(exact, device=device),
        "selected": torch.tensor(selected, device=device),
    }
    return MethodOutput(raw=raw, map=map_, delta=delta.float(), extras=extras, warnings=notes)
