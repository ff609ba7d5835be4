"""Augmented condensing data (engine.augment): transforms and blends drawn from (seed, step) alone, so
micro-batching and resuming see the same images; they are applied (a run differs from the plain one) and keep what
they promise."""
from __future__ import annotations

import dataclasses
import io

import pytest
import torch

from engine.augment import AUGMENTS, Augment, Blend, Mix
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
    for a, b in zip(uninterrupted.parameters(), _stopped_at_7_and_resumed(CONFIG).parameters()):
        assert torch.equal(a, b)


def _stopped_at_7_and_resumed(config: TrainConfig) -> torch.nn.Module:
    """A run of ``config`` cancelled after step 7, then resumed from its checkpoint into another model."""
    stopped = Recorder(stop_after_calls=7)
    with pytest.raises(Cancelled):
        train(_model(0), classification_loss, _data(), config, stopped)
    assert torch.load(io.BytesIO(stopped.checkpoints[-1]), weights_only=True)["step"] == 7
    resumed = _model(99)
    train(resumed, classification_loss, _data(), config, Recorder(checkpoint=stopped.checkpoints[-1]))
    return resumed


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


def test_mix_is_a_param_of_every_trained_mode_off_by_default() -> None:
    for method in ("pool", "tleg", "wave"):
        assert validate_params(method, {})["mix"] == 0.0  # the default keeps every recorded result
    assert TrainConfig.from_params(validate_params("pool", {"mix": 0.5})).mix == 0.5
    assert Mix.of(0.0) is None
    for bad in (1.5, -0.1, "half"):
        with pytest.raises(ValueError, match="mix"):
            validate_params("pool", {"mix": bad})


def test_a_batch_s_blends_are_a_pure_function_of_seed_and_step_and_their_share_is_mix() -> None:
    mix = Mix(0.5)
    blend = mix.draw(4000, 100, seed=3, step=5)
    again = mix.draw(4000, 100, seed=3, step=5)
    assert torch.equal(blend.partner, again.partner) and torch.equal(blend.lam, again.lam)
    assert not torch.equal(blend.lam, mix.draw(4000, 100, seed=3, step=6).lam)
    assert not torch.equal(blend.lam, mix.draw(4000, 100, seed=4, step=5).lam)
    blended = blend.lam < 1.0
    assert 0.45 < blended.float().mean() < 0.55  # about half the images, the rest untouched (lam 1)
    assert 0.4 < blend.lam[blended].mean() < 0.6  # own weight uniform in 0-1
    assert blend.partner.min() >= 0 and blend.partner.max() < 100 and len(blend.partner.unique()) == 100
    assert bool((Mix(1.0).draw(500, 100, seed=0, step=0).lam < 1.0).all())
    rows = blend.rows(10, 20)
    assert torch.equal(rows.partner, blend.partner[10:20]) and torch.equal(rows.lam, blend.lam[10:20])


def test_a_blend_weights_the_two_images_and_keeps_the_heavier_one_s_label() -> None:
    images, partners = torch.zeros(3, 1, 2, 2), torch.ones(2, 1, 2, 2)  # the partners of the blended two only
    blend = Blend(partner=torch.tensor([7, 8, 9]), lam=torch.tensor([1.0, 0.75, 0.25]))
    assert blend.blended.tolist() == [1, 2]
    out, labels = Mix.apply(images, torch.tensor([0, 1, 2]), partners, torch.tensor([6, 7]), blend)
    assert torch.allclose(out[:, 0, 0, 0], torch.tensor([0.0, 0.25, 0.75]))
    assert labels.tolist() == [0, 1, 7]


def test_the_transforms_of_a_mixed_run_s_own_images_are_the_unmixed_run_s() -> None:
    # Mixing draws from streams of its own: adding it leaves each image's own transforms (and so every run
    # recorded before mixing) as they were.
    augment = Augment("strong")
    images = _digits(8)
    own = augment.apply(images, augment.draw(8, seed=0, step=3))
    partners = augment.apply(images, augment.draw(8, seed=0, step=3, stream=2))
    assert not torch.equal(own, partners)
    assert torch.equal(own, augment.apply(images, augment.draw(8, seed=0, step=3, stream=0)))


def test_a_mixed_run_differs_from_the_unmixed_one_and_resumes_exactly() -> None:
    config = dataclasses.replace(CONFIG, mix=0.5)
    unmixed, mixed = _model(0), _model(0)
    train(unmixed, classification_loss, _data(), CONFIG)
    train(mixed, classification_loss, _data(), config)
    assert not torch.equal(unmixed[1].weight, mixed[1].weight)
    for a, b in zip(mixed.parameters(), _stopped_at_7_and_resumed(config).parameters()):
        assert torch.equal(a, b)


def test_a_headless_ancestry_condenses_with_blended_data() -> None:
    state, spec = headless()
    plain, _, _ = condense("pool", "train", state, spec, DIGITS_URI, {**QUICK["pool"], "augment": "strong"})
    learngene, metrics, _ = condense("pool", "train", state, spec, DIGITS_URI,
                                     {**QUICK["pool"], "augment": "strong", "mix": 1.0})
    assert metrics["val_feature_loss_after"] < metrics["val_feature_loss_before"]
    assert any(not torch.equal(a, plain.tensors[k]) for k, a in learngene.tensors.items())


def test_a_run_whose_draws_blend_no_image_is_the_unblended_run() -> None:
    # A share so small no draw blends: every micro-batch has no partner to load (an empty batch through the
    # transforms), and the run equals the one without mixing, weight for weight.
    config = dataclasses.replace(CONFIG, micro_batch=5)
    unmixed, barely = _model(0), _model(0)
    train(unmixed, classification_loss, _data(), config)
    train(barely, classification_loss, _data(), dataclasses.replace(config, mix=1e-9))
    for a, b in zip(unmixed.parameters(), barely.parameters()):
        assert torch.equal(a, b)
