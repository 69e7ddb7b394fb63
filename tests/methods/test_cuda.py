"""On a CUDA machine, every method stays on the GPU and agrees with the CPU result."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import xaiscope as xs
from xaiscope.methods.registry import all_methods

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("name", [m.name for m in all_methods() if not m.needs_attention])
def test_cuda_matches_cpu(name, chelsea):
    cpu = xs.load_model("efficientnet_lite0")
    gpu = xs.load_model("efficientnet_lite0", device="cuda")
    params = {
        k: v for k, v in {"n_steps": 8, "n_samples": 4}.items() if k in xs.get_method(name).defaults
    }
    a = xs.explain(cpu, chelsea, method=name, seed=0, **params)
    b = xs.explain(gpu, chelsea, method=name, seed=0, **params)
    assert b.raw.device.type == "cuda"
    if not xs.get_method(name).stochastic:  # random draws differ between devices
        scale = float(np.abs(a.maps).max()) or 1.0
        np.testing.assert_allclose(b.maps / scale, a.maps / scale, atol=2e-3)
