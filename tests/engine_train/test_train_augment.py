"""Augmented condensing data (engine.augment): transforms drawn from (seed, step) alone, so micro-batching and
resuming see the same images; they are applied (a run differs from the plain one) and keep what they promise."""
from __future__ import annotations

import dataclasses
import io

import pytest
import torch

from engine.augment import AUGMENTS, Augment
from engine.data import DIGITS_URI, load_dataset
from engine.methods import get_method, validate_params
from engine.train import condense
from engine.train.ancestry import classification_loss
from engine.train.loop import Cancelled, TrainConfig, train
from tests.engine_train.conftest import QUICK
from tests.engine_train.test_train_headless import _load, headless
from tests.engine_train.test_train_loop import Recorder, _data, _plain_model as _model

CONFIG = TrainConfig(steps=12, batch_size=16, lr=1e-2, min_lr=1e-4, warmup_steps=2, log_every=1,
                     checkpoint_every_s=0, precision="fp32", augment="strong")


def _digits(count: int = 32) -> torch.Tensor:
    return load_dataset(DIGITS_URI, 28, 3).train.batch(torch.arange(count))[0]


def test_augment_levels_are_the_params_choices() -> None:
    assert AUGMENTS == ("none", "light", "strong")
    for method in ("pool", "tleg", "wave"):
        assert validate_params(method, {})["augment"] == "none"  # the default keeps every recorded result
        assert validate_params(method, {"augment": "strong"})["augment"] == "strong"
    assert TrainConfig.from_params(validate_params("pool", {"augment": "light"})).augment == "light"
    assert Augment.of("none") is None
    with pytest.raises(ValueError, match="augment must be one of"):
        Augment("heavy")


@pytest.mark.parametrize("level", ["light", "strong"])
def test_a_batch_s_transforms_are_a_pure_function_of_seed_and_step(level: str) -> None:
    augment, images = Augment(level), _digits()
    first = augment.apply(images, augment.draw(len(images), seed=3, step=5))
    assert torch.equal(first, augment.apply(images, augment.draw(len(images), seed=3, step=5)))
    assert not torch.equal(first, augment.apply(images, augment.draw(len(images), seed=3, step=6)))
    assert not torch.equal(first, augment.apply(images, augment.draw(len(images), seed=4, step=5)))
    assert not torch.equal(first, images) and first.shape == images.shape


def test_a_micro_batch_sees_its_rows_of_the_whole_batch_s_transforms() -> None:
    augment, images = Augment("strong"), _digits(20)
    draw = augment.draw(20, seed=0, step=0)
    whole = augment.apply(images, draw)
    parts = [augment.apply(images[a:b], draw.rows(a, b)) for a, b in [(0, 7), (7, 14), (14, 20)]]
    assert torch.equal(torch.cat(parts), whole)


def test_light_crops_and_flips_stay_within_each_image_s_values() -> None:
    augment, images = Augment("light"), _digits()
    out = augment.apply(images, augment.draw(len(images), seed=0, step=0))
    low, high = images.amin(dim=(1, 2, 3)), images.amax(dim=(1, 2, 3))
    assert (out.amin(dim=(1, 2, 3)) >= low - 1e-5).all() and (out.amax(dim=(1, 2, 3)) <= high + 1e-5).all()


def test_an_inversion_turns_dark_to_light_within_the_image_s_range() -> None:
    augment = Augment("strong")
    draw = augment.draw(1, seed=0, step=0)
    identity = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    inverted = dataclasses.replace(draw, theta=identity, gain=torch.ones(1), invert=torch.tensor([True]))
    image = torch.linspace(-1.0, 0.5, 64).reshape(1, 1, 8, 8)
    out = augment.apply(image, inverted)
    assert torch.allclose(out, -0.5 - image, atol=1e-5)  # lowest + highest - x


def test_an_augmented_run_differs_from_the_plain_one() -> None:
    plain, augmented = _model(0), _model(0)
    train(plain, classification_loss, _data(), dataclasses.replace(CONFIG, augment="none"))
    train(augmented, classification_loss, _data(), CONFIG)
    assert not torch.equal(plain[1].weight, augmented[1].weight)


def test_an_augmented_run_resumed_from_a_checkpoint_matches_an_uninterrupted_one() -> None:
    uninterrupted = _model(0)
    train(uninterrupted, classification_loss, _data(), CONFIG)
    stopped = Recorder(stop_after_calls=7)
    with pytest.raises(Cancelled):
        train(_model(0), classification_loss, _data(), CONFIG, stopped)
    assert torch.load(io.BytesIO(stopped.checkpoints[-1]), weights_only=True)["step"] == 7
    resumed = _model(99)
    train(resumed, classification_loss, _data(), CONFIG, Recorder(checkpoint=stopped.checkpoints[-1]))
    for a, b in zip(uninterrupted.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_a_headless_ancestry_condenses_with_augmented_data() -> None:
    state, spec = headless()
    plain, _, _ = condense("pool", "train", state, spec, DIGITS_URI, QUICK["pool"])
    learngene, metrics, _ = condense("pool", "train", state, spec, DIGITS_URI, {**QUICK["pool"], "augment": "strong"})
    assert metrics["val_feature_loss_after"] < metrics["val_feature_loss_before"]
    assert any(not torch.equal(a, plain.tensors[k]) for k, a in learngene.tensors.items())
    module = get_method("pool")
    for student in module.candidate_specs(learngene):
        model = _load(learngene, module.resolve_spec(learngene, {**student.to_dict(), "num_classes": 5}))
        with torch.no_grad():
            assert model(torch.randn(2, 3, 28, 28)).shape == (2, 5)
