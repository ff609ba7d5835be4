"""A tiny digits ancestry (8x8 images, 4x4 patches, width 32, 4 blocks) trained once per session in seconds,
and quick training settings, so the whole training suite runs in a few minutes on a 2-core CPU."""
from __future__ import annotations

from typing import Any

import pytest

from engine.data import DIGITS_URI, Dataset, load_dataset
from engine.methods.base import StateDict
from engine.spec import ViTSpec
from engine.train.ancestry import train_ancestry
from engine.train.loop import TrainConfig

TINY = ViTSpec(depth=4, embed_dim=32, num_heads=2, mlp_ratio=2.0, num_classes=10, img_size=8, patch_size=4,
               in_chans=1, class_token=False, global_pool="avg")
TINY_TRAINING = TrainConfig(steps=300, batch_size=64, lr=3e-3, min_lr=1e-4, warmup_steps=10)
#: Few steps, small auxiliary networks and students: each trainer runs in a few seconds on TINY.
QUICK: dict[str, dict[str, Any]] = {
    "tleg": {"steps": 40, "warmup_steps": 4, "lr": 2e-3, "aux_depth": 4, "checkpoint_every_s": 0},
    "wave": {"steps": 40, "warmup_steps": 4, "lr": 2e-3, "tile": [8, 8], "counts": 4, "checkpoint_every_s": 0},
    "pool": {"steps": 40, "warmup_steps": 4, "lr": 2e-3, "stitch_images": 64, "checkpoint_every_s": 0,
             "students": [{"embed_dim": 16, "num_heads": 1, "depth": 2}, {"embed_dim": 32, "num_heads": 2, "depth": 2}]},
    "layers": {"count": 2, "sample_size": 128},
}


@pytest.fixture(scope="session")
def trained_ancestry() -> tuple[StateDict, ViTSpec, dict[str, Any]]:
    return train_ancestry(DIGITS_URI, TINY, TINY_TRAINING)


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_dataset(DIGITS_URI, TINY.img_size, TINY.in_chans)
