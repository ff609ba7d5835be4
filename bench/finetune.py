"""Fine-tuning an initialized model on a target task: the one place the quality reports do it. Model in, data in,
recipe in, metrics out.

    from bench.finetune import Recipe, descendant_model, finetune

    model, details = descendant_model(spec, num_classes=task.num_classes, seed=seed, learngene_path=path)
    metrics = finetune(model, task.train, val, Recipe(steps=100, lr=1e-3, seed=seed), test=task.test)
    metrics["test_accuracy"], metrics["curve"]   # [(0, acc), (10, acc), ...] on ``val``

- **Model**: any ``torch.nn.Module`` that maps a batch of images to class logits. :func:`descendant_model` builds
  the usual one: the descendant architecture of ``spec`` with timm's seeded init (head included), then every
  tensor but the head replaced by the learngene's descendant (:func:`inherit`); without a learngene it is the
  random-init baseline, so the two differ in the body only.
- **Data**: ``engine.data.Split``s (normalized images, labels); ``val`` gives the curve and the final validation
  accuracy, ``test`` (optional) the accuracy a report shows, never used to choose anything.
- **Recipe**: the whole fine-tuning recipe (:class:`Recipe`), the same for every initialization of a report:
  AdamW through the engine's own loop (``engine.train.loop.train``), linear warmup then cosine, batch order
  and every random draw from ``seed``, on ``device``.
- **Metrics**: a plain dict (JSON-ready): ``curve``, ``val_accuracy``, ``test_accuracy`` (with ``test``),
  ``params`` and ``cpu_s``.

Determinism: on the CPU a report runs each fine-tune in a single-threaded worker process
(:func:`single_threaded`, the pools' initializer), so numbers do not depend on how many run at once.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from engine.data import Split
    from engine.methods.base import Learngene
    from engine.spec import ViTSpec


@dataclass(frozen=True)
class Recipe:
    steps: int
    lr: float
    seed: int = 0
    batch_size: int = 25
    #: The learning rate at the end of the cosine; None: a hundredth of ``lr``.
    min_lr: float | None = None
    weight_decay: float = 0.05
    #: Validation accuracy is measured every this many steps (and before the first).
    eval_every: int = 10
    device: str = "cpu"

    @property
    def warmup_steps(self) -> int:
        return max(1, self.steps // 10)


def single_threaded() -> None:
    """The worker processes' initializer: one torch thread each, so results do not depend on how many workers
    share the machine (and several single-threaded workers use a small CPU better than one multi-threaded one)."""
    import torch

    torch.set_num_threads(1)


def resolve(method: str, learngene: Learngene, depth: int, width: int) -> ViTSpec | None:
    """The headless descendant spec of ``method``'s learngene at (depth, width), or None where it cannot make
    that size (a :class:`engine.spec.SpecError`, or another refusal of the method)."""
    from engine.methods import get_method

    try:
        return get_method(method).resolve_spec(learngene, {"depth": depth, "embed_dim": width, "num_classes": 0})
    except ValueError:
        return None


@functools.lru_cache(maxsize=8)
def _learngene(path: str) -> Learngene:
    from engine.artifacts import load_learngene

    return load_learngene(Path(path))


def inherit(model: nn.Module, learngene_path: str, spec: ViTSpec, seed: int) -> dict[str, Any]:
    """Load the descendant of the learngene at ``learngene_path`` into ``model``, every tensor but the head (kept
    as it is: fresh for the target task); returns the descendant's details."""
    from engine.methods import get_method

    learngene = _learngene(learngene_path)
    descendant = get_method(learngene.method).expand(learngene, spec, seed)
    missing, unexpected = model.load_state_dict(descendant.state_dict, strict=False)
    if set(missing) != {"head.weight", "head.bias"} or unexpected:
        raise RuntimeError(f"{learngene_path}: descendant does not match its model: {missing} {unexpected}")
    return descendant.details


def descendant_model(spec: ViTSpec, num_classes: int, seed: int,
                     learngene_path: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The model of headless ``spec`` with a seeded head for ``num_classes``: random init, or the learngene's
    body (see :func:`inherit`); and the descendant's details (empty for random init)."""
    from engine.vit import build_model, seeded

    with seeded(seed):
        model = build_model(spec.replace(num_classes=num_classes))
    details = {} if learngene_path is None else inherit(model, learngene_path, spec, seed)
    return model, details


def finetune(model: nn.Module, train: Split, val: Split, recipe: Recipe, test: Split | None = None) -> dict[str, Any]:
    """Train ``model`` in place on ``train`` with ``recipe``; accuracy on ``val`` before the first step and every
    ``recipe.eval_every`` steps (``curve``), and on ``test`` at the end when given."""
    from engine.train.ancestry import classification_loss
    from engine.train.loop import NoHooks, TrainConfig, accuracy
    from engine.train.loop import train as train_loop

    curve = [(0, accuracy(model, val))]

    class EvalHooks(NoHooks):
        def on_progress(self, progress: dict[str, Any]) -> None:
            curve.append((progress["step"], accuracy(model, val)))

    config = TrainConfig(steps=recipe.steps, batch_size=recipe.batch_size, lr=recipe.lr,
                         min_lr=recipe.lr / 100 if recipe.min_lr is None else recipe.min_lr,
                         warmup_steps=recipe.warmup_steps, weight_decay=recipe.weight_decay, seed=recipe.seed,
                         log_every=recipe.eval_every, checkpoint_every_s=0.0, device=recipe.device)
    started = time.process_time()
    train_loop(model, classification_loss, train, config, EvalHooks())
    metrics: dict[str, Any] = {"curve": curve, "val_accuracy": curve[-1][1],
                               "params": sum(p.numel() for p in model.parameters())}
    if test is not None:
        metrics["test_accuracy"] = accuracy(model, test)
    metrics["cpu_s"] = time.process_time() - started
    return metrics


def features(model: nn.Module, split: Split, batch_size: int = 250) -> Any:
    """The model's pooled pre-logit features of every image of ``split`` (float64 numpy, for a linear probe)."""
    import torch

    model.eval()
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(split), batch_size):
            images = split.images[start:start + batch_size]
            chunks.append(model.forward_head(model.forward_features(images), pre_logits=True).double())
    return torch.cat(chunks).numpy()


def linear_probe(model: nn.Module, train: Split, val: Split, test: Split | None = None,
                 strengths: tuple[float, ...] = (0.1, 1.0, 10.0), known: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """A linear probe on the frozen body: logistic regression on standardized pooled features, its inverse
    regularization chosen from ``strengths`` on ``val``; ``test`` scored at that choice. The probe is written
    into ``model.head`` (standardization folded in), so a fine-tune can start from it (LP-FT: a fresh head on a
    good body otherwise spends its first steps undoing the body). ``known`` may hold the features of ``val`` and
    ``test`` ("val", "test") already computed with this same frozen body."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    known = known or {}
    train_x = features(model, train)
    val_x = known["val"] if "val" in known else features(model, val)
    scaler = StandardScaler().fit(train_x)
    best: tuple[float, float, Any] | None = None
    for strength in strengths:
        probe = LogisticRegression(C=strength, max_iter=1000).fit(scaler.transform(train_x), train.labels.numpy())
        accuracy = float((probe.predict(scaler.transform(val_x)) == val.labels.numpy()).mean())
        if best is None or accuracy > best[0]:
            best = (accuracy, strength, probe)
    assert best is not None
    val_accuracy, strength, probe = best
    weight = probe.coef_ / scaler.scale_
    bias = probe.intercept_ - (probe.coef_ * scaler.mean_ / scaler.scale_).sum(axis=1)
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)).float())
        model.head.bias.copy_(torch.from_numpy(bias).float())
    metrics: dict[str, Any] = {"val_accuracy": val_accuracy, "strength": strength}
    if test is not None:
        test_x = known["test"] if "test" in known else features(model, test)
        metrics["test_accuracy"] = float((probe.predict(scaler.transform(test_x))
                                          == test.labels.numpy()).mean())
    return metrics
