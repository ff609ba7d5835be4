"""The seed ancestry trains well above chance, deterministically; the evaluation card compares inheriting with
random init on the same footing."""
from __future__ import annotations

from typing import Any

import torch

from engine.data import DIGITS_URI
from engine.methods import tleg
from engine.methods.base import StateDict
from engine.spec import ViTSpec
from engine.train import evaluate_card, train_ancestry
from engine.train.loop import NoHooks, TrainConfig
from tests.engine_train.conftest import TINY


def test_ancestry_training_learns_digits(trained_ancestry: tuple[StateDict, ViTSpec, dict[str, Any]]) -> None:
    state, spec, metrics = trained_ancestry
    assert spec == TINY
    assert metrics["val_accuracy"] > 0.6  # chance is 0.1
    assert metrics["loss_history"][-1][1] < metrics["loss_history"][0][1] / 2
    assert all(v.device.type == "cpu" for v in state.values())


def test_ancestry_training_is_deterministic_in_the_seed() -> None:
    config = TrainConfig(steps=5, batch_size=32, lr=1e-3, warmup_steps=1, seed=3)
    a, _, _ = train_ancestry(DIGITS_URI, TINY, config)
    b, _, _ = train_ancestry(DIGITS_URI, TINY, config)
    c, _, _ = train_ancestry(DIGITS_URI, TINY, TrainConfig(steps=5, batch_size=32, lr=1e-3, warmup_steps=1, seed=4))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["head.weight"], c["head.weight"])


def test_evaluation_card_compares_learngene_and_random_init(
        trained_ancestry: tuple[StateDict, ViTSpec, dict[str, Any]]) -> None:
    state, spec, metrics = trained_ancestry
    learngene = tleg.fit(state, spec, {})
    card = evaluate_card(learngene, DIGITS_URI, sizes=[{"depth": 2}, {"depth": 4}], steps=30, shots=10)
    assert card["task"] == {"dataset": DIGITS_URI, "classes": 10, "shots": 10, "img_size": spec.img_size,
                            "train_images": 100, "val_images": 359}
    assert [row["spec"]["depth"] for row in card["sizes"]] == [2, 4]
    full = card["sizes"][1]
    # The full-depth expansion of the fit starts near the ancestry; 30 steps from random init on 100 images do not.
    assert full["learngene_accuracy"] > full["random_accuracy"] + 0.1
    hooks = JobHooks()
    again = evaluate_card(learngene, DIGITS_URI, sizes=[{"depth": 4}], steps=30, shots=10, hooks=hooks)
    assert again["sizes"][0] == full  # same seed, same data, same result
    assert hooks.phases == {"evaluation card: learngene depth 4 width 32", "evaluation card: random depth 4 width 32"}


def test_the_card_runs_at_the_condensing_size_on_a_bounded_validation_subset(
        trained_ancestry: tuple[StateDict, ViTSpec, dict[str, Any]]) -> None:
    """Issue 19 item 2: the card fine-tuned at the learngene's own image size (518 px for a DINOv2 backbone, even
    after a 112 px condensing run) and measured on the task's whole validation split, whatever ``eval_images``."""
    state, spec, _ = trained_ancestry
    learngene = tleg.fit(state, spec, {})
    smaller = spec.img_size // 2 - (spec.img_size // 2) % spec.patch_size
    card = evaluate_card(learngene, DIGITS_URI, sizes=[{"depth": 2}], steps=5, shots=10, img_size=smaller,
                         eval_images=50)
    assert card["task"]["img_size"] == smaller and card["task"]["val_images"] == 50
    assert card["sizes"][0]["spec"]["img_size"] == smaller


class JobHooks(NoHooks):
    """A job's hooks, holding the condensing run's checkpoint: the card's fine-tunes must neither resume from
    it nor overwrite it."""

    def __init__(self) -> None:
        self.phases: set[str] = set()

    def on_progress(self, progress: dict[str, Any]) -> None:
        self.phases.add(progress["phase"])

    def load_checkpoint(self) -> bytes | None:
        return b"the condensing run's checkpoint"

    def save_checkpoint(self, blob: bytes) -> None:
        raise AssertionError("the card must not checkpoint over the condensing run")
