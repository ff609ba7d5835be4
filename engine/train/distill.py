"""Distillation from a frozen ancestry, shared by every condensing trainer.

The soft-distillation term is the KL divergence between the teacher's and the student's softened class
distributions, times tau^2 (so its gradient scale does not shrink with the temperature), averaged over the
batch ("batchmean": the true KL per image). DeiT's reference divides the summed KL by batch x classes instead,
a constant factor 1/classes that only rescales the loss; we keep the per-image KL so the recorded loss reads as
nats. TLEG's reference setting is temperature 1 and weight 1 on the KL term; WAVE adds cross-entropy.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.data import Dataset, Split
from engine.methods.base import StateDict
from engine.spec import ViTSpec
from engine.train.loop import Hooks, LossHistory, TrainConfig, pick_device, predict_logits, predict_many, train
from engine.vit import build_model


def load_teacher(state: StateDict, spec: ViTSpec) -> nn.Module:
    """The ancestry as a frozen timm model (loaded strictly): read, never trained."""
    model = build_model(spec)
    model.load_state_dict(state, strict=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def per_path(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
             labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A network with several output paths (the pool: logits (batch, paths, classes)) is scored path by path
    against the same teacher and labels, each path with equal weight: flatten the paths into the batch."""
    if student_logits.ndim == 2:
        return student_logits, teacher_logits, labels
    paths = student_logits.shape[1]
    return (student_logits.flatten(0, 1), teacher_logits.repeat_interleave(paths, dim=0),
            labels.repeat_interleave(paths, dim=0))


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    # In fp32 even under autocast: log-softmax differences of bf16 logits lose the small probabilities.
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(s, t, reduction="batchmean", log_target=True) * temperature ** 2


class Distillation(nn.Module):
    """loss = kl_weight * KL(teacher || student) at ``temperature`` + ce_weight * CE(student, labels).

    Holds the teacher as a submodule so the loop moves it to the training device with the student; the
    teacher runs without gradients and in eval mode."""

    def __init__(self, teacher: nn.Module, temperature: float = 1.0, kl_weight: float = 1.0,
                 ce_weight: float = 0.0) -> None:
        super().__init__()
        self.teacher = teacher
        self.temperature = temperature
        self.kl_weight = kl_weight
        self.ce_weight = ce_weight

    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        self.teacher.eval()
        with torch.no_grad():
            return self.teacher(images)

    def forward(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        student_logits, teacher_logits, labels = per_path(model(images), self.teacher_logits(images), labels)
        loss = self.kl_weight * soft_kl(student_logits, teacher_logits, self.temperature)
        if self.ce_weight:
            loss = loss + self.ce_weight * F.cross_entropy(student_logits.float(), labels)
        return loss


def distillation_metrics(student: nn.Module, teacher: nn.Module, data: Split, temperature: float,
                         hooks: Hooks | None = None, precision: str = "auto") -> dict[str, float]:
    """On held-out images: the KL to the teacher, the student's accuracy, how often it agrees with the teacher's
    top class, and the teacher's own accuracy. Batch by batch (each batch preprocessed once for both models);
    raises :class:`Cancelled` between batches when ``hooks`` ask to stop."""
    return _compare(student, teacher, data, temperature, hooks, precision)[0]


def _compare(student: nn.Module, teacher: nn.Module, data: Split, temperature: float, hooks: Hooks | None,
             precision: str, teacher_logits: torch.Tensor | None = None) -> tuple[dict[str, float], torch.Tensor]:
    """:func:`distillation_metrics` and the teacher's logits; given ``teacher_logits`` (of an earlier call on the
    same images), the frozen teacher is not run again."""
    if teacher_logits is None:
        student_out, teacher_logits = predict_many([student, teacher], data, hooks=hooks, precision=precision)
    else:
        student_out = predict_logits(student, data, hooks=hooks, precision=precision)
    student_flat, teacher_flat, labels = per_path(student_out, teacher_logits, data.labels)
    return {
        "kl": soft_kl(student_flat, teacher_flat, temperature).item(),
        "accuracy": (student_flat.argmax(-1) == labels).float().mean().item(),
        "agreement": (student_flat.argmax(-1) == teacher_flat.argmax(-1)).float().mean().item(),
        "teacher_accuracy": (teacher_logits.argmax(-1) == data.labels).float().mean().item(),
    }, teacher_logits


def evaluation_split(dataset: Dataset, config: TrainConfig) -> Split | None:
    """The validation images a run's before/after metrics use: none with ``evaluate: false``, else the fixed
    stratified ``eval_images`` subset of the fixed validation split (the same images in every job)."""
    if not config.evaluate:
        return None
    return dataset.val.fixed_subset(config.eval_images)


def distil(student: nn.Module, loss: Distillation, dataset: Dataset, config: TrainConfig,
           hooks: Hooks | None) -> tuple[LossHistory, dict[str, Any]]:
    """Train ``student`` against ``loss`` on the training split; metrics compare it with the teacher before and
    after on the validation subset of :func:`evaluation_split` (``config.evaluate``, ``config.eval_images``).
    With ``evaluate: false`` no metrics pass runs at all, not even the teacher's accuracy."""
    device = pick_device(config.device)
    loss.to(device)
    student.to(device)
    val = evaluation_split(dataset, config)
    if val is None:
        return train(student, loss, dataset.train, config, hooks), {"evaluated": False}
    before, teacher_logits = _compare(student, loss.teacher, val, loss.temperature, hooks, config.precision)
    history = train(student, loss, dataset.train, config, hooks)
    after, _ = _compare(student, loss.teacher, val, loss.temperature, hooks, config.precision, teacher_logits)
    return history, {
        "val_kl_before": before["kl"], "val_kl_after": after["kl"],
        "val_accuracy_before": before["accuracy"], "val_accuracy": after["accuracy"],
        "teacher_val_accuracy": after["teacher_accuracy"], "teacher_agreement": after["agreement"],
        "val_images": len(val),
    }
