"""A small report shared by the report tests: a tiny ViT, two images, every section."""

from __future__ import annotations

from collections.abc import Iterator

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

import xaiscope as xs  # noqa: E402
from tests.conftest import rand_images  # noqa: E402
from xaiscope.report import Report, build_report  # noqa: E402


@pytest.fixture(scope="session")
def vit_model() -> xs.Model:
    from xaiscope.models.torch_model import TorchModel
    from xaiscope.train.archs import TinyViT

    torch.manual_seed(0)
    labels = ["circle <b>", "square & co", "triangle", "cross", "star"]  # escaped in HTML
    return TorchModel(TinyViT(5, (32, 32)).eval(), input_size=32, labels=labels, name="tiny-vit")


@pytest.fixture(scope="session")
def report(vit_model: xs.Model) -> Iterator[Report]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        images = [rand_images(1, size=32, seed=1)[0], rand_images(1, size=48, seed=2)[0]]
        yield build_report(
            vit_model,
            images,
            methods=["gradcam", "attention_rollout", "integrated_gradients"],
            params={"n_steps": 8, "attention_rollout": {"discard_ratio": 0.5}},
            seed=3,
            topk=[1, 2, 5],
            activations=["patch_embed", "token_grid"],
            attention=True,
            metrics_table=[
                {"method": "gradcam", "deletion": 0.25},
                {"method": "ig", "deletion": 0.5},
            ],
            image_names=["first.png", "<second>.png"],
        )
    finally:
        torch.set_num_threads(before)
