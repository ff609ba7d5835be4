"""The evaluation card of a learngene version: does inheriting from it beat timm's random init?

On a target task carved from the dataset (:func:`engine.data.target_task`: by default every class with
``shots`` training images each, the low-data regime where initialization matters most), descendants of a few
sizes are fine-tuned for ``steps`` steps twice, once expanded from the learngene and once from timm's random
init, with the same steps, data, batch order, optimizer and seed, and scored on the task's validation images
(the dataset's fixed validation split).

Default sizes: from the method's own catalogue (``candidate_specs``, up to twice the learngene's depth and heads:
:func:`catalogue`) sorted by parameter count, the entries at the 25th and 50th percentiles: a small and a middle
descendant of what the learngene offers, for any method.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch.nn as nn

from engine.costs import param_count
from engine.data import load_dataset, normalization, target_task
from engine.methods import get_method
from engine.methods.base import Learngene
from engine.spec import ViTSpec
from engine.train.ancestry import classification_loss
from engine.train.loop import Hooks, NoHooks, TrainConfig, accuracy, train
from engine.vit import build_model, seeded, seeded_state

CARD_TRAINING = TrainConfig(steps=100, batch_size=64, lr=1e-3, min_lr=1e-5, warmup_steps=10, weight_decay=0.05,
                            checkpoint_every_s=0.0)


class _CardHooks(NoHooks):
    """The job's cancellation and progress reach the card's short runs; its checkpoints must not (they belong
    to the condensing run, and a fine-tune would resume from them)."""

    def __init__(self, hooks: Hooks, label: str) -> None:
        self.hooks, self.label = hooks, label

    def should_stop(self) -> bool:
        return self.hooks.should_stop()

    def on_progress(self, progress: dict[str, Any]) -> None:
        self.hooks.on_progress({**progress, "phase": f"evaluation card: {self.label}"})


def catalogue(learngene: Learngene) -> list[ViTSpec]:
    """The method's candidate sizes by parameter count, up to a model of twice the learngene's depth and heads.

    That bound is where the growing methods' catalogues end (TLEG, WAVE); FRONT offers every size the limits
    allow, and percentiles of that would have the card train models of hundreds of millions of parameters."""
    base = learngene.base_spec
    ceiling = param_count(base.replace(depth=2 * base.depth, embed_dim=2 * base.embed_dim,
                                       num_heads=2 * base.num_heads))
    candidates = sorted(get_method(learngene.method).candidate_specs(learngene), key=param_count)
    return [spec for spec in candidates if param_count(spec) <= ceiling] or candidates


def default_sizes(learngene: Learngene) -> list[ViTSpec]:
    candidates = catalogue(learngene)
    picks = [candidates[round(q * (len(candidates) - 1))] for q in (0.25, 0.5)]
    return list(dict.fromkeys(picks))


def evaluate_card(learngene: Learngene, dataset_uri: str, sizes: Sequence[dict[str, Any]] | None = None,
                  steps: int = CARD_TRAINING.steps, shots: int | None = 20, classes: Sequence[int] | None = None,
                  seed: int = 0, hooks: Hooks | None = None, img_size: int | None = None,
                  eval_images: int | None = None) -> dict[str, Any]:
    """Accuracies after ``steps`` fine-tuning steps, learngene vs random init, for each size (partial spec
    dicts resolved by the learngene's method; default :func:`default_sizes`), at ``img_size`` (the condensing
    run's; None: the learngene's own, e.g. 518 px for a DINOv2 backbone), measured on ``eval_images`` of the
    task's validation split (a fixed stratified subset; None: all of it)."""
    method = get_method(learngene.method)
    base = learngene.base_spec
    size = img_size or base.img_size
    images = load_dataset(dataset_uri, size, base.in_chans, **normalization(learngene.meta.get("preprocessing")))
    task = target_task(images, classes, shots, seed)
    val = task.val if eval_images is None else task.val.fixed_subset(eval_images)
    partials = [dict(size) for size in sizes] if sizes is not None else [s.to_dict() for s in default_sizes(learngene)]
    at_size = {} if size == base.img_size else {"img_size": size}
    specs = [method.resolve_spec(learngene, {**partial, **at_size, "num_classes": task.num_classes})
             for partial in partials]
    config = dataclasses.replace(CARD_TRAINING, steps=steps, seed=seed,
                                 warmup_steps=min(CARD_TRAINING.warmup_steps, steps - 1))
    results = []
    for spec in specs:
        row: dict[str, Any] = {"spec": spec.to_dict(), "params": param_count(spec)}
        for init in ("learngene", "random"):
            model = _descendant(learngene, spec, seed, init)
            train(model, classification_loss, task.train, config,
                  _CardHooks(hooks or NoHooks(), f"{init} depth {spec.depth} width {spec.embed_dim}"))
            row[f"{init}_accuracy"] = accuracy(model, val, hooks=hooks)  # a cancel stops between batches
        results.append(row)
    return {
        "task": {"dataset": dataset_uri, "classes": len(task.classes), "shots": shots, "img_size": size,
                 "train_images": len(task.train), "val_images": len(val)},
        "training": {"steps": steps, "batch_size": config.batch_size, "lr": config.lr, "seed": seed},
        "sizes": results,
    }


def _descendant(learngene: Learngene, spec: ViTSpec, seed: int, init: str) -> nn.Module:
    # Random init is the service's own `random` method (timm's distributions, drawn the same on every CPU).
    state = get_method(learngene.method).expand(learngene, spec, seed).state_dict if init == "learngene" \
        else seeded_state(spec, seed)
    with seeded(seed):  # the caller's RNG untouched; every tensor is replaced next
        model = build_model(spec)
    model.load_state_dict(state, strict=True)
    return model
