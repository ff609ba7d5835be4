"""Condensing WAVE on data (METHODS.md section 4): templates and the auxiliary size's scalers trained together,
distilling from the ancestry with KL plus cross-entropy, starting from the data-free SVD fit
(:func:`engine.methods.wave.fit`). The auxiliary network has the ancestry's size; the tensors outside the
template scheme (norms, biases, embeddings, head) train with it.
"""
from __future__ import annotations

from typing import Any

import torch

from engine.data import Dataset
from engine.methods import wave
from engine.methods.base import Learngene, StateDict
from engine.spec import ViTSpec
from engine.train.auxiliary import AuxiliaryViT, parameter_tree
from engine.train.distill import Distillation, distil, load_teacher
from engine.train.loop import Hooks, LossHistory
from engine.train.params import train_config


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
    fit_params = {k: params[k] for k in ("tile", "counts") if params[k] is not None}
    fitted = wave.fit(ancestry, ancestry_spec, fit_params)
    model = TemplateViT(fitted)
    loss = Distillation(load_teacher(ancestry, ancestry_spec), params["temperature"], params["kl_weight"],
                        params["ce_weight"])
    history, metrics = distil(model, loss, dataset, train_config(params), hooks)
    tensors = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    learngene = wave.make_learngene(tensors, fitted.base_spec, tuple(fitted.meta["tile"]), fitted.meta["counts"],
                                    init="fit", fit=fitted.meta["fit"])
    return learngene, metrics, history
