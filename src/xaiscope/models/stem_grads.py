"""Input gradients of a strided stem convolution as one forward convolution, for CPU
gradient passes.

The first convolution of most CNNs (ResNet's 7x7/2 ``conv1``, EfficientNet's 3x3/2 stem)
reads the RGB image, so its input gradient has only 3 channels. torch's CPU backward
(oneDNN's backward-data) is poorly vectorised for so few output channels: on ResNet-50 at
224 px it costs 4-6 times the convolution's forward, about 5 % of a whole gradient pass.

A transposed convolution with stride ``s`` is ``s * s`` ordinary convolutions, one per
output phase (the pixels ``(s*i + a, s*j + b)``), each with the sub-kernel of taps that
land on that phase (flipped, in and out channels swapped). Stacking the phases as output
channels makes them one stride-1 convolution with ``3 * s * s`` output channels and a
``ceil(k / s)`` kernel, run in channels-last layout, followed by a pixel shuffle that
interleaves the phases: 35-50 % less time than the native backward here. The result
differs from torch's by float rounding only (about 1e-6 of the largest value), and only
the backward changes, so every ReLU's kink stays where the module's own forward put it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xaiscope.models.pointwise_grads import plain_cpu_conv

#: Inputs with at most this many channels (an image) take the phase convolution.
MAX_INPUT_CHANNELS = 4


def _phase_taps(a: int, s: int, p: int, k: int, o_min: int, size: int) -> list[int]:
    """Kernel tap for each window offset of phase ``a`` along one axis; ``k`` = none."""
    taps = []
    for u in range(size):
        tap = a + p - s * (u + o_min)
        taps.append(tap if 0 <= tap < k else k)
    return taps


def phase_weight(
    weight: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int]
) -> tuple[torch.Tensor, tuple[int, int]]:
    """The stacked phase kernels of ``weight`` (C_out, C_in, kh, kw) and their offsets.

    Returns ``(w, (o_min_h, o_min_w))`` with ``w`` of shape (C_in * sh * sw, C_out, Kh, Kw):
    output channel ``c * sh * sw + a * sw + b`` is input channel ``c`` at phase (a, b), as
    :func:`torch.nn.functional.pixel_shuffle` expects (for ``sh == sw``).
    """
    c_out, c_in, kh, kw = weight.shape
    # a zero tap at index k stands for "no tap lands here"
    ext = F.pad(weight, (0, 1, 0, 1))
    idx, o_mins = [], []
    for s, p, k in ((stride[0], padding[0], kh), (stride[1], padding[1], kw)):
        offsets = [o for a in range(s) for o in range(-((k - 1 - a - p) // s), (a + p) // s + 1)]
        o_min, o_max = min(offsets), max(offsets)
        size = o_max - o_min + 1
        idx.append(torch.tensor([_phase_taps(a, s, p, k, o_min, size) for a in range(s)]))
        o_mins.append(o_min)
    sh, sw = stride
    rows, cols = idx
    # ext[:, :, rows] -> (C_out, C_in, sh, Kh, kw + 1); then the columns -> (..., sw, Kw)
    w = ext[:, :, rows][..., cols]
    # (C_out, C_in, a, u, b, v) -> (C_in, a, b, C_out, u, v)
    w = w.permute(1, 2, 4, 0, 3, 5).reshape(c_in * sh * sw, c_out, rows.shape[1], cols.shape[1])
    return w.contiguous(), (o_mins[0], o_mins[1])


def stem_input_grad(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: tuple[int, ...],
    padding: tuple[int, ...] | str,
    dilation: tuple[int, ...],
    groups: int,
) -> torch.Tensor | None:
    """dL/dx of ``conv2d(x, weight, stride, padding)`` for a strided stem, or None.

    ``grad`` (N, C_out, H_out, W_out), ``x`` (N, C_in, H, W) with C_in <=
    :data:`MAX_INPUT_CHANNELS`, ``weight`` (C_out, C_in, kh, kw), equal strides of 2 or more,
    numeric padding, no dilation, one group, float32 on the CPU, an NCHW-contiguous
    ``grad``; anything else returns None for the native backward. The result is a
    contiguous (N, C_in, H, W) tensor.
    """
    # (an NCHW grad only: a channels-last pass, EfficientNet-Lite0, already gets oneDNN's
    # fast kernels)
    if (
        not plain_cpu_conv(grad, x, weight, padding, dilation, groups)
        or x.shape[1] > MAX_INPUT_CHANNELS
        or len(stride) != 2
        or stride[0] != stride[1]
        or stride[0] < 2
    ):
        return None
    assert not isinstance(padding, str)
    s = int(stride[0])
    n, _, h_out, w_out = grad.shape
    h, w = x.shape[2], x.shape[3]
    pad = (int(padding[0]), int(padding[1]))
    wp, (oh, ow) = phase_weight(weight, (s, s), pad)
    rows, cols = -(-h // s), -(-w // s)  # pixels of each phase (the first phase is largest)
    kh, kw = wp.shape[2], wp.shape[3]
    # phase pixel i reads grad rows i + o_min ... i + o_min + kh - 1 (zero outside the map);
    # negative padding crops
    g = F.pad(
        grad,
        (-ow, (cols - 1 + ow + kw - 1) - (w_out - 1), -oh, (rows - 1 + oh + kh - 1) - (h_out - 1)),
    )
    out = F.conv2d(g.contiguous(memory_format=torch.channels_last), wp)
    gx = F.pixel_shuffle(out, s)[:, :, :h, :w]
    return gx.contiguous()
