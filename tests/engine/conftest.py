"""Small ViTs (16 px images, 4 px patches, width 32-64) so the whole engine suite runs in seconds on a CPU."""
from __future__ import annotations

from collections.abc import Callable

import pytest
import timm
import torch

import engine.stitched  # noqa: F401  (registers the stitched architecture)
from engine.methods import get_method
from engine.methods.base import Descendant, Learngene, StateDict
from engine.spec import ViTSpec
from engine.vit import build_model, seeded

TINY = ViTSpec(depth=4, embed_dim=64, num_heads=4, num_classes=10, img_size=16, patch_size=4)

#: Fit parameters that keep every method's learngene small and quick on TINY.
FIT_PARAMS: dict[str, dict] = {
    "tleg": {},
    "layers": {"count": 2},
    "pool": {"students": [{"embed_dim": 32, "num_heads": 2, "depth": 3},
                          {"embed_dim": 64, "num_heads": 4, "depth": 4}]},
    "wave": {"tile": [8, 8], "counts": 6},
    "front": {"keep_ratio": 0.5},
    "weight-selection": {},
    "random": {},
}


def random_state(spec: ViTSpec, seed: int = 0) -> StateDict:
    with seeded(seed):
        return build_model(spec).state_dict()


@pytest.fixture(scope="session")
def ancestry() -> StateDict:
    return random_state(TINY)


@pytest.fixture(scope="session")
def learngenes(ancestry: StateDict) -> dict[str, Learngene]:
    return {name: get_method(name).fit(ancestry, TINY, params) for name, params in FIT_PARAMS.items()}


def load_into_timm(descendant: Descendant) -> torch.nn.Module:
    """Rebuild the descendant from its architecture and model_args and load it strictly."""
    model = timm.create_model(descendant.architecture, pretrained=False, **descendant.model_args)
    model.load_state_dict(descendant.state_dict, strict=True)
    return model.eval()


@pytest.fixture
def run_forward() -> Callable[[Descendant, ViTSpec], torch.Tensor]:
    def run(descendant: Descendant, spec: ViTSpec) -> torch.Tensor:
        model = load_into_timm(descendant)
        with torch.inference_mode():
            return model(torch.randn(2, spec.in_chans, spec.img_size, spec.img_size))
    return run


@pytest.fixture(scope="session")
def tiny() -> ViTSpec:
    return TINY
