"""Condensing TLEG on data (METHODS.md section 1): an auxiliary network of depth L_aux whose block i uses
``A + (i / L_aux) * B``, distilled from the ancestry; its (A, B) and shared tensors are the learngene.

Initialization: the data-free least-squares fit (:func:`engine.methods.tleg.fit`) by default, so training refines
the line through the ancestry's blocks; or METHODS.md's init (``init="random"``): linear weights truncated
normal 0.02 and biases 0 in A and B, norm weights 1 in A and 0 in B (so B starts as no change at all).
"""
from __future__ import annotations

from typing import Any

import torch
from timm.models import named_apply
from timm.models.vision_transformer import init_weights_vit_timm
from torch import nn

from engine.blocks import vit_block
from engine.data import Dataset
from engine.methods import tleg, weight_selection
from engine.methods.base import Learngene, StateDict
from engine.spec import ViTSpec
from engine.train.auxiliary import AuxiliaryViT
from engine.train.distill import distil, distillation, feature_student
from engine.train.loop import Hooks, LossHistory, TrainConfig


class LinearExpansionViT(AuxiliaryViT):
    """TLEG's auxiliary network. ``state_dict()`` is the learngene's tensors: ``blocks.A.*``, ``blocks.B.*`` and
    the shared ``patch_embed.*``, ``pos_embed``, ``fc_norm.*``, ``head.*``."""

    def __init__(self, spec: ViTSpec) -> None:
        super().__init__(spec)
        self.blocks = nn.ModuleDict({part: vit_block(spec.embed_dim, spec.num_heads, spec.mlp_ratio, spec)
                                     for part in ("A", "B")})
        named_apply(init_weights_vit_timm, self.blocks)  # trunc normal 0.02 linear weights, zero biases
        for name, p in self.blocks["B"].named_parameters():
            if name.startswith(("norm", "ls")):  # B adds nothing to A's norms and layer scale at first
                nn.init.zeros_(p)
        # The expansion's own coefficients, so expanding to depth L_aux reproduces this network exactly.
        self.register_buffer("coefficients", tleg.coefficients(spec.depth), persistent=False)

    def block_weights(self) -> list[dict[str, torch.Tensor]]:
        a = dict(self.blocks["A"].named_parameters())
        b = dict(self.blocks["B"].named_parameters())
        stacks = {k: a[k] + self.coefficients.view((-1,) + (1,) * a[k].ndim) * b[k] for k in a}
        return [{k: stack[i] for k, stack in stacks.items()} for i in range(len(self.coefficients))]


def aux_width(params: dict[str, Any]) -> dict[str, int]:
    """The auxiliary network's width fields a request names (none: the ancestry's width)."""
    return {field: params[f"aux_{field}"] for field in ("embed_dim", "num_heads") if params.get(f"aux_{field}")}


def narrowed_spec(ancestry_spec: ViTSpec, params: dict[str, Any]) -> ViTSpec:
    """The spec of the ancestry cut to the auxiliary width (weight selection's rules: it only shrinks; a width
    without heads keeps the head dimension). Raises ``SpecError`` naming the field for a width it cannot cut."""
    source = Learngene(method=weight_selection.name, tensors={}, meta={"spec": ancestry_spec.to_dict()})
    return weight_selection.resolve_spec(source, aux_width(params))


def narrowed(ancestry: StateDict, ancestry_spec: ViTSpec, params: dict[str, Any]) -> tuple[StateDict, ViTSpec]:
    """The ancestry cut to the auxiliary width by weight selection (same depth, classes and family), or the
    ancestry itself when no other width is asked."""
    spec = narrowed_spec(ancestry_spec, params)
    if spec == ancestry_spec:
        return ancestry, ancestry_spec
    return weight_selection.expand(weight_selection.fit(ancestry, ancestry_spec, {}), spec, seed=0).state_dict, spec


def train_tleg(ancestry: StateDict, ancestry_spec: ViTSpec, dataset: Dataset, params: dict[str, Any],
               hooks: Hooks | None) -> tuple[Learngene, dict[str, Any], LossHistory]:
    source, source_spec = narrowed(ancestry, ancestry_spec, params)
    spec = tleg.aux_spec(source_spec).replace(depth=params["aux_depth"])
    torch.manual_seed(params["seed"])
    model = LinearExpansionViT(spec)
    meta: dict[str, Any] = {"init": params["init"]}
    if source_spec != ancestry_spec:
        meta["narrowed"] = (f"the ancestry cut to width {source_spec.embed_dim} ({source_spec.num_heads} heads) by "
                            "weight selection, then distilled from the whole ancestry")
    if params["init"] == "fit":
        fitted = tleg.fit(source, source_spec, {})
        model.load_state_dict(fitted.tensors, strict=True)
        meta["fit"] = fitted.meta["fit"]
    loss = distillation(ancestry, ancestry_spec, params)
    student = feature_student(model, loss, [spec.embed_dim])
    history, metrics = distil(student, loss, dataset, TrainConfig.from_params(params), hooks)
    tensors = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return tleg.make_learngene(tensors, spec, **meta), metrics, history
