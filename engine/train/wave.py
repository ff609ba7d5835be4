"""Condensing WAVE on data (METHODS.md section 4): templates and the auxiliary size's scalers trained together,
distilling from the ancestry with KL plus cross-entropy, starting from the data-free SVD fit
(:func:`engine.methods.wave.fit`). The auxiliary network has the ancestry's size; the tensors outside the
template scheme (norms, biases, embeddings, head) train with it.

Refinement (METHODS.md: "optional refinement trains only the scalers, templates frozen, on a small sample, as a
job"): :func:`refine_wave` trains, for each requested size of an existing WAVE learngene, that size's scalers
only, starting from the data-free resampled ones, with the same distillation loss; all sizes train together in
one loop (one forward per size on the same batch), so progress, checkpoints and cancellation work as for any
condensing job. Everything else (templates, norms, biases, embeddings, head) stays exactly the learngene's.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from engine.data import Dataset, Split
from engine.methods import wave
from engine.methods.base import Learngene, StateDict
from engine.spec import ViTSpec
from engine.train.auxiliary import AuxiliaryViT, parameter_tree
from engine.train.distill import PathOutputs, distil, distillation, evaluation_split, feature_student, vit_outputs
from engine.train.loop import Hooks, LossHistory, TrainConfig, predict_logits


class TemplateViT(AuxiliaryViT):
    """WAVE's auxiliary network, built from a WAVE learngene; ``state_dict()`` has the learngene's key names
    (``templates.{k}``, ``scalers.{k}``, ``blocks.{i}.<outside tensor>`` and timm's shared tensors)."""

    def __init__(self, learngene: Learngene) -> None:
        learngene.require(wave.name)
        super().__init__(learngene.base_spec)
        tensors = learngene.tensors
        self.templates = parameter_tree({k: tensors[f"templates.{k}"] for k in wave.KINDS})
        self.scalers = parameter_tree({k: tensors[f"scalers.{k}"] for k in wave.KINDS})
        self.blocks = parameter_tree({k.removeprefix("blocks."): v for k, v in tensors.items()
                                      if k.startswith("blocks.")})
        self.load_state_dict(tensors, strict=True)

    def block_weights(self) -> list[dict[str, torch.Tensor]]:
        stacks = {key: wave.compose(getattr(self.scalers, kind), getattr(self.templates, kind))
                  for kind, key in wave.KINDS.items()}
        return [{**{key: stack[i] for key, stack in stacks.items()},
                 **dict(self.blocks.get_submodule(str(i)).named_parameters())}
                for i in range(self.aux_spec.depth)]


def train_wave(ancestry: StateDict, ancestry_spec: ViTSpec, dataset: Dataset, params: dict[str, Any],
               hooks: Hooks | None) -> tuple[Learngene, dict[str, Any], LossHistory]:
    # Left out, the tile and counts are sized to the ancestry (wave.train_defaults), not the fit's.
    tile = None if params["tile"] is None else tuple(params["tile"])
    fit_params = {k: v for k, v in wave.train_defaults(ancestry_spec, tile).items() if params[k] is None}
    fit_params |= {k: params[k] for k in ("tile", "counts") if params[k] is not None}
    fitted = wave.fit(ancestry, ancestry_spec, fit_params)
    model = TemplateViT(fitted)
    loss = distillation(ancestry, ancestry_spec, params)
    student = feature_student(model, loss, [fitted.base_spec.embed_dim])
    history, metrics = distil(student, loss, dataset, TrainConfig.from_params(params), hooks)
    tensors = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    learngene = wave.make_learngene(tensors, fitted.base_spec, tuple(fitted.meta["tile"]), fitted.meta["counts"],
                                    init="fit", fit=fitted.meta["fit"])
    return learngene, metrics, history


class ScalerRefinement(nn.Module):
    """One :class:`TemplateViT` per size of a WAVE learngene, of which only the scalers train; ``forward`` gives
    (batch, sizes, classes) logits, which the distillation loss scores size by size."""

    def __init__(self, learngene: Learngene, specs: list[ViTSpec]) -> None:
        super().__init__()
        self.members = nn.ModuleList(TemplateViT(wave.at_size(learngene, spec)) for spec in specs)
        for member in self.members:
            for param_name, param in member.named_parameters():
                param.requires_grad_(param_name.startswith("scalers."))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(images) for member in self.members], dim=1)

    def path_outputs(self, images: torch.Tensor) -> list[PathOutputs]:
        return [vit_outputs(member, member.forward_features(images)) for member in self.members]


def refine_wave(learngene: Learngene, ancestry: StateDict, ancestry_spec: ViTSpec, dataset: Dataset,
                specs: list[ViTSpec], params: dict[str, Any],
                hooks: Hooks | None) -> tuple[Learngene, dict[str, Any], LossHistory]:
    """A new WAVE learngene: ``learngene`` plus scalers trained for each of ``specs`` (resolved sizes with the
    learngene's classes; one per width), distilled from the ancestry on ``dataset``."""
    learngene.require(wave.name)
    keys = [wave.width_key(spec) for spec in specs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"refine one size per width, got widths {keys}")
    model = ScalerRefinement(learngene, specs)
    loss = distillation(ancestry, ancestry_spec, params)
    student = feature_student(model, loss, [spec.embed_dim for spec in specs])
    config = TrainConfig.from_params(params)
    val = evaluation_split(dataset, config) if loss.logits else None  # bounded, and none with evaluate: false
    before = _accuracies(model, val, hooks)
    history, metrics = distil(student, loss, dataset, config, hooks)
    after = _accuracies(model, val, hooks)
    tensors = dict(learngene.tensors)
    refined = dict(learngene.meta.get("refined", {}))
    for key, spec, member in zip(keys, specs, model.members):
        for kind in wave.KINDS:
            tensors[f"refined.{key}.scalers.{kind}"] = getattr(member.scalers, kind).detach().cpu().float()
        refined[key] = {"depth": spec.depth, "embed_dim": spec.embed_dim, "num_heads": spec.num_heads,
                        "mlp_ratio": spec.mlp_ratio}
    meta = {k: v for k, v in learngene.meta.items() if k not in ("spec", "tile", "counts", "refined")}
    refined_learngene = wave.make_learngene(tensors, learngene.base_spec, tuple(learngene.meta["tile"]),
                                            learngene.meta["counts"], **meta, refined=refined)
    if before is not None and after is not None:
        metrics["sizes"] = {key: {"val_accuracy_before": b, "val_accuracy": a}
                            for key, b, a in zip(keys, before, after)}
    return refined_learngene, metrics, history


def _accuracies(model: ScalerRefinement, val: Split | None, hooks: Hooks | None) -> list[float] | None:
    """Validation accuracy of each size on the source task (None without validation images)."""
    if val is None:
        return None
    logits = predict_logits(model, val, hooks=hooks)  # (images, sizes, classes)
    return [(logits[:, i].argmax(-1) == val.labels).float().mean().item() for i in range(logits.shape[1])]
