"""Baselines (references) for path methods, defined in pixel space and preprocessed like the image.

Named baselines follow Sturmfels, Lundberg, Lee (2020), "Visualizing the Impact of Feature
Attribution Baselines", Distill: ``black``, ``white``, ``uniform`` (uniform noise image),
``noise`` (the image plus Gaussian noise, sigma 0.2, clipped), ``blur`` (the image blurred with
a Gaussian of sigma = 10 % of its size), and ``adversarial``: an image found by gradient
steps from uniform noise that the model scores 50/50 between the target and the runner-up.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from xaiscope.errors import ParameterError
from xaiscope.methods.registry import MethodContext

BASELINES = ("black", "white", "noise", "blur", "uniform", "adversarial")


def make_baseline(ctx: MethodContext, baseline: Any) -> torch.Tensor:
    """The preprocessed baseline for each image, (N, C, H, W) like ``ctx.x``.

    ``baseline`` is a name from :data:`BASELINES`, a gray level in [0, 1], or an image
    array ((H, W, 3) for all images, (N, H, W, 3) one per image) in pixel space.
    """
    x01 = ctx.images01
    n = x01.shape[0]
    if isinstance(baseline, str):
        name = baseline.lower()
        if name == "black":
            pix = torch.zeros_like(x01)
        elif name == "white":
            pix = torch.ones_like(x01)
        elif name == "uniform":
            # one draw for all images: an image's baseline does not depend on the others
            one = torch.rand((1, *x01.shape[1:]), generator=ctx.generator(), device=x01.device)
            pix = one.expand(x01.shape).contiguous()
        elif name == "noise":
            one = torch.randn((1, *x01.shape[1:]), generator=ctx.generator(), device=x01.device)
            pix = (x01 + 0.2 * one).clamp(0, 1)
        elif name == "blur":
            pix = gaussian_blur(x01, sigma=0.1 * max(x01.shape[-2:]))
        elif name == "adversarial":
            return adversarial_baseline(ctx)
        else:
            raise ParameterError(
                f"unknown baseline {baseline!r}; use one of {', '.join(BASELINES)}, "
                "a gray level in [0, 1] or an image array"
            )
        return ctx.model.normalize(pix)
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        if not 0 <= float(baseline) <= 1:
            raise ParameterError(f"a gray-level baseline must lie in [0, 1], got {baseline}")
        return ctx.model.normalize(torch.full_like(x01, float(baseline)))
    if isinstance(baseline, torch.Tensor):
        baseline = baseline.detach().cpu().numpy()
    if isinstance(baseline, np.ndarray):
        arr = baseline
        m = ctx.n_images
        if arr.ndim == 3 or arr.ndim == 4 and arr.shape[0] == 1:
            out = ctx.model.preprocess(arr).expand(n, -1, -1, -1)
        elif arr.ndim == 4 and arr.shape[0] == m:
            out = ctx.rows_of_images(ctx.model.preprocess(arr))
        else:
            raise ParameterError(
                f"baseline array must be (H, W, 3) or ({m}, H, W, 3), got {arr.shape}"
            )
        return out.to(ctx.x.device, ctx.x.dtype).contiguous()
    raise ParameterError(f"unsupported baseline of type {type(baseline).__name__}")


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) with reflection padding."""
    radius = max(1, min(int(3 * sigma), min(x.shape[-2:]) - 1))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    out = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def adversarial_baseline(
    ctx: MethodContext, steps: int = 300, lr: float = 0.01, tol: float = 0.02
) -> torch.Tensor:
    """An image the model scores 50/50 between the target and the runner-up class.

    Starts from uniform noise (the same for every image) and takes Adam steps in pixel
    space (clipped to [0, 1]) on (log p_t - log p_r)^2 - log(p_t + p_r): equal odds for the
    two classes, which together also dominate the others. The runner-up is the best class
    other than the target on the original image. Each image stops, and is kept as it is,
    once |p_t - p_r| < tol (p_t + p_r) and p_t + p_r > 1/2 (so its baseline does not depend
    on the rest of the batch); after ``steps`` steps of one forward and one backward, images
    still short of that are returned as they are and flagged in ``ctx.notes``.
    """
    model = ctx.model
    logits = ctx.logits if ctx.logits is not None else model.forward(ctx.x)
    masked = logits.float().clone()
    masked.scatter_(1, ctx.targets[:, None].to(masked.device), float("-inf"))
    pair = torch.stack([ctx.targets.to(masked.device), masked.argmax(1)], 1)
    shape = ctx.images01.shape
    start = torch.rand((1, *shape[1:]), generator=ctx.generator(), device=ctx.x.device)
    pix = start.expand(shape).clone().requires_grad_(True)
    result = torch.empty_like(pix, requires_grad=False)
    done = torch.zeros(shape[0], dtype=torch.bool, device=pix.device)
    opt = torch.optim.Adam([pix], lr=lr)
    for step in range(steps + 1):
        active = (~done).nonzero()[:, 0]
        if active.numel() == 0:
            break
        with torch.enable_grad():
            x = model.normalize(pix[active])
            # the loss is a function of the logits: get dL/dz at this point, then one
            # backward of sum_j (dL/dz_j) z_j through the model gives dL/dx
            z = model.forward(x.detach()).float().clone().requires_grad_(True)
            logp = torch.log_softmax(z, 1)
            pa = pair[active.to(pair.device)]
            lt, lr_ = logp.gather(1, pa[:, :1])[:, 0], logp.gather(1, pa[:, 1:])[:, 0]
            pt, pr = lt.detach().exp(), lr_.detach().exp()
            ok = (((pt - pr).abs() < tol * (pt + pr)) & (pt + pr > 0.5)).to(done.device)
            if bool(ok.any()):
                hit = active[ok]
                result[hit] = pix.detach()[hit]
                done[hit] = True
            if step == steps or bool(ok.all()):
                continue
            loss = ((lt - lr_) ** 2 - torch.logaddexp(lt, lr_)).sum()
            (w,) = torch.autograd.grad(loss, z)
            gp = model.grad_pass(x.detach(), w, need_input=True)
            assert gp.input_grads is not None
            (grad,) = torch.autograd.grad(x, pix, gp.input_grads[0].to(x.dtype))
        pix.grad = grad
        opt.step()
        with torch.no_grad():
            pix.clamp_(0, 1)
    if not bool(done.all()):
        left = (~done).nonzero()[:, 0]
        result[left] = pix.detach()[left]
        for i in left.tolist():
            ctx.notes.append(
                (
                    i,
                    f"the adversarial baseline did not reach 50/50 odds in {steps} steps: "
                    "the integration starts from an image the model does not score evenly",
                )
            )
    return model.normalize(result)
