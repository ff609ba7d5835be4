"""The auxiliary networks that TLEG and WAVE train: timm ViTs whose block weights are computed, not stored.

An :class:`AuxiliaryViT` is a timm ``VisionTransformer`` built with no blocks (so its patch embedding, position
embedding, class token, final norm, pooling and head are timm's own) plus ``spec.depth`` blocks that share one
architecture and get their weights from :meth:`AuxiliaryViT.block_weights` at every forward. Each block runs
through ``torch.func.functional_call`` on a template timm block that owns no parameters (it lives on the meta
device and is not registered), so the module's ``state_dict()`` holds exactly the method's learngene tensors, and
gradients flow straight into them.
"""
from __future__ import annotations

from functools import partial

import torch
from timm.layers import LayerNorm
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.func import functional_call

from engine.blocks import vit_block
from engine.methods.base import StateDict
from engine.spec import ViTSpec


class AuxiliaryViT(VisionTransformer):
    def __init__(self, spec: ViTSpec) -> None:
        if spec.distilled:
            raise ValueError("an auxiliary network has no distillation token")
        super().__init__(**spec.replace(depth=0).timm_model_args(), norm_layer=partial(LayerNorm, eps=spec.norm_eps))
        self.aux_spec = spec
        # A list hides the template from nn.Module registration: it must not appear in state_dict or parameters().
        self._template = [vit_block(spec.embed_dim, spec.num_heads, spec.mlp_ratio, spec, device="meta")]

    def block_weights(self) -> list[dict[str, torch.Tensor]]:
        """For every block, each of its tensors by its timm name inside the block (``attn.qkv.weight``...);
        all blocks at once, so a method can build them with a few batched ops per forward."""
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                         is_causal: bool = False) -> torch.Tensor:
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        for weights in self.block_weights():
            x = functional_call(self._template[0], weights, (x,))
        return self.norm(x)


def parameter_tree(tensors: StateDict) -> nn.Module:
    """A module holding each tensor as a trainable parameter at its dotted name, so ``{"0.norm1.weight": t}``
    becomes ``module.0.norm1.weight`` and a parent's ``state_dict()`` keeps the learngene's own key names."""
    root = nn.Module()
    for name, tensor in tensors.items():
        *path, leaf = name.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, nn.Module())
            module = getattr(module, part)
        module.register_parameter(leaf, nn.Parameter(tensor.detach().clone()))
    return root
