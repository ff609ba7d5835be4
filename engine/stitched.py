"""The stitched ViT of Learngene Pool descendants, registered with timm as ``learngene_stitched_vit``.

A front part (patch embedding, class token, position embedding and the first ``front_depth`` blocks at width
``front_embed_dim``), a stitch ``Linear(front_embed_dim -> embed_dim)`` applied to every token (absent when the
widths are equal), the remaining ``depth - front_depth`` blocks at ``embed_dim``, then the final norm and head
exactly as timm's ``VisionTransformer`` places them. Blocks are numbered straight through (``blocks.0`` ..
``blocks.{depth-1}``), so every key is a timm key except ``stitch.*``.

Importing this module registers the architecture, so ``timm.create_model("learngene_stitched_vit", **model_args)``
and ``timm.create_model("hf-hub:...")`` of a stitched descendant work once ``engine.stitched`` is imported.
"""
from __future__ import annotations

from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import LayerNorm, PatchEmbed
from timm.models import build_model_with_cfg, generate_default_cfgs, named_apply, register_model
from timm.models.vision_transformer import init_weights_vit_timm
from torch import nn

from engine.blocks import vit_block
from engine.numerics import normal_
from engine.spec import STITCHED_ARCHITECTURE, ViTSpec


class StitchedViT(nn.Module):
    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        class_token: bool = True,
        global_pool: str = "token",
        front_depth: int = 6,
        front_embed_dim: int = 384,
        front_num_heads: int = 6,
        front_mlp_ratio: float = 4.0,
        pool_choice: list[int] | None = None,
        init_values: float | None = None,
    ) -> None:
        super().__init__()
        if global_pool not in ("token", "avg") or (global_pool == "token" and not class_token):
            raise ValueError(f"unsupported pooling {global_pool!r} with class_token={class_token}")
        if not 0 < front_depth < depth:
            raise ValueError(f"front_depth must be in [1, {depth - 1}], got {front_depth}")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_prefix_tokens = 1 if class_token else 0
        self.front_depth = front_depth
        self.num_features = self.embed_dim = embed_dim
        #: Provenance only: (front student, last front block, back student, first back block) in the pool.
        self.pool_choice = pool_choice

        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                      embed_dim=front_embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, front_embed_dim)) if class_token else None
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.patch_embed.num_patches + self.num_prefix_tokens, front_embed_dim))
        # Layer scale (init_values) is the one family feature a pool carries into its stitched descendants.
        front_family = ViTSpec(depth=1, embed_dim=front_embed_dim, num_heads=front_num_heads, init_values=init_values)
        back_family = ViTSpec(depth=1, embed_dim=embed_dim, num_heads=num_heads, init_values=init_values)
        self.blocks = nn.Sequential(
            *[vit_block(front_embed_dim, front_num_heads, front_mlp_ratio, front_family) for _ in range(front_depth)],
            *[vit_block(embed_dim, num_heads, mlp_ratio, back_family) for _ in range(depth - front_depth)],
        )
        self.stitch = nn.Linear(front_embed_dim, embed_dim) if front_embed_dim != embed_dim else nn.Identity()
        self.norm = LayerNorm(embed_dim) if global_pool == "token" else nn.Identity()
        self.fc_norm = LayerNorm(embed_dim) if global_pool == "avg" else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        # timm's ViT defaults, so a fresh stitched model starts like a fresh timm ViT.
        normal_(self.pos_embed.data, std=0.02, cut=2.0)  # timm's trunc_normal_, the same bits on every CPU
        if self.cls_token is not None:
            normal_(self.cls_token.data, std=1e-6)  # torch's normal_ differs between CPUs
        named_apply(init_weights_vit_timm, self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        for index, block in enumerate(self.blocks):
            if index == self.front_depth:
                x = self.stitch(x)
            x = block(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0] if self.global_pool == "token" else x[:, self.num_prefix_tokens:].mean(dim=1)
        x = self.fc_norm(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


default_cfgs = generate_default_cfgs({
    STITCHED_ARCHITECTURE: {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
    },
})


@register_model
def learngene_stitched_vit(pretrained: bool = False, **kwargs: Any) -> StitchedViT:
    return build_model_with_cfg(StitchedViT, STITCHED_ARCHITECTURE, pretrained, **kwargs)
