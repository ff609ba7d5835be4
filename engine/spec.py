"""Descendant architecture specs: what a user asks for, validated and costed without building a model.

A spec is everything needed to rebuild a plain timm ``VisionTransformer``. Image size, patch size and input
channels normally come from the learngene; a request names depth, width, heads, MLP ratio and classes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

#: The timm architecture name written into every plain descendant's ``config.json``. Every field of the spec is
#: passed as a ``model_args`` override, so the name only picks the ``VisionTransformer`` constructor.
TIMM_ARCHITECTURE = "vit_base_patch16_224"


class SpecError(ValueError):
    """A spec that cannot be built or does not fit the limits. ``field`` names the offending field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class ViTSpec:
    depth: int
    embed_dim: int
    num_heads: int
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    class_token: bool = True
    global_pool: str = "token"  # "token" (class token) or "avg" (mean of patch tokens, with fc_norm)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ViTSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise SpecError(f"unknown spec fields: {sorted(unknown)}", field=sorted(unknown)[0])
        return cls(**data)

    def replace(self, **changes: Any) -> "ViTSpec":
        return dataclasses.replace(self, **changes)

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        return self.num_patches + (1 if self.class_token else 0)

    def timm_model_args(self) -> dict[str, Any]:
        """Keyword arguments for ``timm.create_model(TIMM_ARCHITECTURE, **args)`` that rebuild this spec."""
        return {
            "img_size": self.img_size,
            "patch_size": self.patch_size,
            "in_chans": self.in_chans,
            "num_classes": self.num_classes,
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "class_token": self.class_token,
            "global_pool": self.global_pool,
        }
