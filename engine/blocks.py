"""One transformer block exactly as timm's ``VisionTransformer`` builds it for a spec's family.

Below both :mod:`engine.vit` (whose ``build_model`` needs the stitched architecture registered) and
:mod:`engine.stitched` (built of these blocks), so neither has to import the other's module for it.
"""
from __future__ import annotations

from functools import partial
from typing import Any

from timm.layers import LayerNorm, get_act_layer
from timm.models.vision_transformer import Block

from engine.spec import ViTSpec


def vit_block(dim: int, num_heads: int, mlp_ratio: float, family: ViTSpec | None = None, **factory: Any) -> Block:
    """The block exactly as timm's ``VisionTransformer`` builds it for ``family`` (default: the plain ViT's qkv
    bias, timm LayerNorm with eps 1e-6, GELU, no layer scale)."""
    family = family or ViTSpec(depth=1, embed_dim=dim, num_heads=num_heads)
    return Block(dim=dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=family.qkv_bias,
                 init_values=family.init_values, norm_layer=partial(LayerNorm, eps=family.norm_eps),
                 act_layer=get_act_layer(family.act_layer), **factory)
