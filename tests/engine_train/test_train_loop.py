"""The shared loop: learning-rate schedule, progress, cancellation at the next step, exact resume."""
from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
from typing import Any

import pytest
import torch
from torch import nn

from engine.data import Split
from engine.train.ancestry import classification_loss
from engine.train.loop import Cancelled, NoHooks, TrainConfig, lr_at, train

CONFIG = TrainConfig(steps=20, batch_size=16, lr=1e-2, min_lr=1e-4, warmup_steps=3, log_every=1,
                     checkpoint_every_s=0)


def _data() -> Split:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(100, 1, 4, 4, generator=generator)
    return Split(images, (images.sum(dim=(1, 2, 3)) > 0).long())


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    # Dropout draws from the RNG, so an exact resume also needs the RNG state back.
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.GELU(), nn.Dropout(0.2), nn.Linear(32, 2))


class Recorder(NoHooks):
    def __init__(self, stop_after_calls: int | None = None, checkpoint: bytes | None = None) -> None:
        self.stop_after_calls = stop_after_calls
        self.calls = 0
        self.progress: list[dict[str, Any]] = []
        self.checkpoints: list[bytes] = []
        self.checkpoint = checkpoint

    def should_stop(self) -> bool:
        self.calls += 1
        return self.stop_after_calls is not None and self.calls > self.stop_after_calls

    def on_progress(self, progress: dict[str, Any]) -> None:
        self.progress.append(progress)

    def save_checkpoint(self, blob: bytes) -> None:
        self.checkpoints.append(blob)

    def load_checkpoint(self) -> bytes | None:
        return self.checkpoint


def test_schedule_warms_up_then_decays_to_min_lr() -> None:
    lrs = [lr_at(s, CONFIG) for s in range(CONFIG.steps)]
    assert lrs[0] == pytest.approx(CONFIG.lr / 3) and lrs[2] == pytest.approx(CONFIG.lr)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    assert lr_at(CONFIG.steps, CONFIG) == pytest.approx(CONFIG.min_lr)


def test_training_lowers_the_loss_and_reports_progress() -> None:
    hooks = Recorder()
    history = train(_model(0), classification_loss, _data(), CONFIG, hooks)
    assert [s for s, _ in history] == list(range(1, 21))
    assert sum(v for _, v in history[-5:]) < sum(v for _, v in history[:5])
    last = hooks.progress[-1]
    assert set(last) == {"step", "total_steps", "epoch", "loss", "images_per_s", "eta_s"}
    assert (last["step"], last["total_steps"], last["epoch"], last["eta_s"]) == (20, 20, 3, 0)  # 6 batches/epoch
    assert last["images_per_s"] > 0


def test_cancellation_stops_before_the_next_step() -> None:
    hooks = Recorder(stop_after_calls=7)
    with pytest.raises(Cancelled) as raised:
        train(_model(0), classification_loss, _data(), CONFIG, hooks)
    assert raised.value.step == 7
    assert hooks.progress[-1]["step"] == 7


def test_resume_from_a_mid_run_checkpoint_matches_an_uninterrupted_run() -> None:
    uninterrupted = _model(0)
    full_history = train(uninterrupted, classification_loss, _data(), CONFIG)

    every_5 = dataclasses.replace(CONFIG, checkpoint_every_steps=5)
    # Checkpoints after steps 5 and 10, then cancelled after step 12: the stop saves one more (a stopping
    # worker hands its job on from where it is), and either may be resumed from.
    first = Recorder(stop_after_calls=12)
    with pytest.raises(Cancelled):
        train(_model(0), classification_loss, _data(), every_5, first)
    assert [torch.load(io.BytesIO(c), weights_only=True)["step"] for c in first.checkpoints] == [5, 10, 12]

    at_12 = _model(7)
    train(at_12, classification_loss, _data(), every_5, Recorder(checkpoint=first.checkpoints[-1]))
    for (name, a), b in zip(uninterrupted.state_dict().items(), at_12.state_dict().values()):
        assert torch.equal(a, b), name

    # A fresh process would build the model with a different init; the checkpoint must override all of it.
    resumed = _model(123)
    second = Recorder(checkpoint=first.checkpoints[1])
    resumed_history = train(resumed, classification_loss, _data(), every_5, second)
    assert second.progress[0]["step"] == 11  # continues, not from zero
    assert resumed_history == full_history
    for (name, a), b in zip(uninterrupted.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_importing_the_training_engine_leaves_cuda_alone() -> None:
    # Workers fork after importing the engine; a CUDA context created at import would not survive the fork.
    code = ("import torch, engine.train, engine.train.loop, engine.data; "
            "import engine.train.tleg, engine.train.wave, engine.train.pool, engine.train.layers; "
            "print(torch.cuda.is_initialized())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


class CountingModel(nn.Module):
    """A real model that counts the batches it has been given."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _model(0)
        self.batches = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.batches += 1
        return self.inner(images)


class StopWhen(NoHooks):
    def __init__(self, condition: Any) -> None:
        self.condition = condition

    def should_stop(self) -> bool:
        return self.condition()


def test_a_cancel_during_evaluation_stops_at_the_next_batch() -> None:
    from engine.train.loop import predict_logits

    model = CountingModel()
    with pytest.raises(Cancelled):
        predict_logits(model, _data(), batch_size=10, hooks=StopWhen(lambda: model.batches >= 3))
    assert model.batches == 3  # 10 batches to go; not one more once the flag was up
    assert model.inner.training  # the model's mode is restored even when cancelled


def test_a_cancel_during_distillation_metrics_stops_both_models_at_the_next_batch() -> None:
    from engine.train.distill import distillation_metrics

    images = torch.randn(600, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    data = Split(images, (images.sum(dim=(1, 2, 3)) > 0).long())  # 3 evaluation batches of 256
    student, teacher = CountingModel(), CountingModel()
    metrics = distillation_metrics(student, teacher, data, 1.0)  # still callable with a split alone
    assert set(metrics) >= {"kl", "accuracy", "agreement"} and student.batches == teacher.batches == 3
    student.batches = teacher.batches = 0
    with pytest.raises(Cancelled):
        distillation_metrics(student, teacher, data, 1.0, StopWhen(lambda: teacher.batches >= 1))
    assert (student.batches, teacher.batches) == (1, 1)


def test_precision_is_a_choice_and_auto_follows_native_bf16() -> None:
    from engine.train.loop import autocast, native_bf16

    cpu = torch.device("cpu")
    with autocast(cpu, "bf16"):
        assert torch.is_autocast_enabled("cpu")
    with autocast(cpu, "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(cpu, "auto"):
        assert torch.is_autocast_enabled("cpu") == native_bf16(cpu)
    with pytest.raises(ValueError, match="precision"):
        autocast(cpu, "fp16")
    assert TrainConfig.from_params({"steps": 5, "batch_size": 4, "lr": 1e-3, "min_lr": 0.0, "warmup_steps": None,
                                    "weight_decay": 0.0, "grad_clip": 1.0, "seed": 0, "checkpoint_every_s": 0,
                                    "precision": "bf16", "evaluate": False, "eval_images": 7}) == \
        TrainConfig(steps=5, batch_size=4, lr=1e-3, min_lr=0.0, warmup_steps=0, weight_decay=0.0, seed=0,
                    checkpoint_every_s=0, precision="bf16", evaluate=False, eval_images=7)


def test_training_in_bf16_on_the_cpu_lowers_the_loss_too() -> None:
    history = train(_model(0), classification_loss, _data(), dataclasses.replace(CONFIG, precision="bf16"))
    assert history[-1][1] < history[0][1]


def _plain_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 2))


# Augmented or blended: each micro-batch takes its rows' transforms, blends and partners.
@pytest.mark.parametrize("augment,mix", [("none", 0.0), ("strong", 0.0), ("none", 1.0), ("strong", 0.5)])
def test_micro_batches_accumulate_to_the_whole_batch_step(augment: str, mix: float) -> None:
    config = dataclasses.replace(CONFIG, steps=4, precision="fp32", augment=augment, mix=mix)
    whole, chunked = _plain_model(0), _plain_model(0)
    train(whole, classification_loss, _data(), config)
    train(chunked, classification_loss, _data(), dataclasses.replace(config, micro_batch=5))  # 16 = 5+5+5+1
    for a, b in zip(whole.parameters(), chunked.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_a_cancel_stops_between_the_micro_batches_of_a_step() -> None:
    model = CountingModel()
    with pytest.raises(Cancelled) as raised:
        train(model, classification_loss, _data(), dataclasses.replace(CONFIG, micro_batch=4),
              StopWhen(lambda: model.batches >= 2))
    assert model.batches == 2 and raised.value.step == 0  # 2 of the first step's 4 micro-batches, then stopped


def test_a_cpu_step_at_dinov2_size_runs_in_small_micro_batches() -> None:
    import numpy as np

    from engine.data import ArraySource, Preprocess
    from engine.train.loop import micro_batch

    pixels = np.zeros((100, 28, 28), dtype=np.uint8)
    cpu = torch.device("cpu")
    for size, expected in [(518, 2), (224, 16), (112, 64)]:
        split = Split(ArraySource(pixels, 255.0, Preprocess(size, 3)), torch.zeros(100, dtype=torch.long))
        assert micro_batch(split, TrainConfig(steps=1, batch_size=64), cpu) == expected
    assert micro_batch(_data(), TrainConfig(steps=1, batch_size=64, micro_batch=7), cpu) == 7
