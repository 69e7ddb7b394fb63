"""Input gradients of 1x1 convolutions as matrix products, for CPU gradient passes.

For a 1x1 convolution the input gradient is ``W^T @ dY``. torch's own CPU backward for a
contiguous (N, C, H, W) float32 tensor runs that product image by image, which is fine on
large maps but thin on small ones (ResNet-50's ``layer4``, 7x7: 32-38 GFLOP/s on one core
here), and for a strided 1x1 convolution (ResNet's downsampling shortcuts) goes through a
column buffer and layout copies (18-32 GFLOP/s). Here small maps are laid side by side
into one product over the batch (52-64 GFLOP/s), and strided convolutions multiply at the
output resolution and scatter into every s-th pixel (44-53 GFLOP/s): 2-7 % of a
ResNet-50 gradient pass at 224 px. On large stride-1 maps torch's backward is kept.

The stride-1 products are bit-identical to torch's backward on the MKL build here, the
strided ones differ by float rounding (about 1e-6 of the largest value). Only the backward
changes, so every ReLU's kink stays where the module's own forward put it.
"""

from __future__ import annotations

import torch

#: Feature maps with fewer pixels than this are multiplied as one product over the batch.
BATCHED_BELOW_PIXELS = 128


def plain_cpu_conv(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    padding: tuple[int, ...] | str,
    dilation: tuple[int, ...],
    groups: int,
) -> bool:
    """Whether a 2-D convolution's backward is one these CPU rewrites cover: float32 CPU
    tensors of 4 dimensions, numeric padding, no dilation, one group, an NCHW ``grad``."""
    return (
        x.device.type == "cpu"
        and x.ndim == 4
        and grad.ndim == 4
        and x.dtype == torch.float32
        and grad.dtype == torch.float32
        and weight.dtype == torch.float32
        and groups == 1
        and not isinstance(padding, str)
        and all(d == 1 for d in dilation)
        and grad.is_contiguous()
    )


def pointwise_input_grad(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: tuple[int, ...],
    padding: tuple[int, ...] | str,
    dilation: tuple[int, ...],
    groups: int,
) -> torch.Tensor | None:
    """dL/dx of ``conv2d(x, weight)`` for a 1x1 kernel, or None where this does not apply.

    ``grad`` (N, C_out, H_out, W_out), ``x`` (N, C_in, H, W), ``weight`` (C_out, C_in, 1, 1).
    Applies to contiguous float32 CPU tensors, no padding, one group; anything else (a
    channels-last input, CUDA, another dtype) returns None for the native backward.
    """
    if (
        not plain_cpu_conv(grad, x, weight, padding, dilation, groups)
        or tuple(weight.shape[2:]) != (1, 1)
        or any(p != 0 for p in padding)
        or not x.is_contiguous()
    ):
        return None
    n, c_out, h_out, w_out = grad.shape
    c_in = x.shape[1]
    sh, sw = int(stride[0]), int(stride[1])
    if (x.shape[2] + sh - 1) // sh != h_out or (x.shape[3] + sw - 1) // sw != w_out:
        return None
    pixels = h_out * w_out
    small = pixels < BATCHED_BELOW_PIXELS and n > 1
    if (sh, sw) == (1, 1) and not small:
        return None  # torch's own per-image products are as fast here
    wt = weight.reshape(c_out, c_in).t()
    flat = grad.reshape(n, c_out, pixels)
    if small:
        # (C_out, N * pixels): one product over the batch, then back to (N, C_in, ...)
        wide = flat.transpose(0, 1).reshape(c_out, n * pixels)
        out = (wt @ wide).view(c_in, n, h_out, w_out).transpose(0, 1).contiguous()
    else:
        out = torch.empty((n, c_in, pixels), dtype=grad.dtype)
        for i in range(n):
            torch.mm(wt, flat[i], out=out[i])
        out = out.view(n, c_in, h_out, w_out)
    if (sh, sw) == (1, 1):
        return out
    # a strided 1x1 convolution reads every s-th pixel: the rest get no gradient
    gx = x.new_zeros(x.shape)
    gx[:, :, ::sh, ::sw] = out
    return gx
