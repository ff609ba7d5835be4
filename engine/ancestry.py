"""Checking an ancestry checkpoint: a safetensors file that must load strictly into a timm ViT.

Only safetensors is ever read (no pickle). The descendant-facing spec is read off the built model, so an
ancestry is described in the same terms as every descendant.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer

from engine.spec import ViTSpec

MAX_HEADER_BYTES = 100 * 1024 * 1024


class AncestryError(ValueError):
    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, checked for shape without reading any tensor."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise AncestryError("file is too short to be safetensors", "file")
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise AncestryError("not a safetensors file (bad header length)", "file")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AncestryError("not a safetensors file (header is not JSON)", "file") from exc
    if not isinstance(header, dict):
        raise AncestryError("not a safetensors file (header is not an object)", "file")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise AncestryError(f"not a safetensors file (tensor {name!r} has no offsets)", "file") from exc
    if 8 + n + end != size:
        raise AncestryError("safetensors file is truncated or has trailing bytes", "file")
    return header


def spec_of(model: VisionTransformer) -> ViTSpec:
    block = model.blocks[0]
    embed_dim = int(model.embed_dim)
    return ViTSpec(
        depth=len(model.blocks),
        embed_dim=embed_dim,
        num_heads=int(block.attn.num_heads),
        mlp_ratio=block.mlp.fc1.out_features / embed_dim,
        num_classes=int(model.num_classes),
        img_size=int(model.patch_embed.img_size[0]),
        patch_size=int(model.patch_embed.patch_size[0]),
        in_chans=int(model.patch_embed.proj.in_channels),
        class_token=model.cls_token is not None,
        global_pool=str(model.global_pool),
    )


def build_model(architecture: str, model_args: dict[str, Any]) -> VisionTransformer:
    if not timm.is_model(architecture):
        raise AncestryError(f"unknown timm architecture {architecture!r}", "architecture")
    try:
        with torch.device("meta"):
            model = timm.create_model(architecture, pretrained=False, **model_args)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise AncestryError(f"cannot build {architecture} with these model_args: {exc}", "model_args") from exc
    if not isinstance(model, VisionTransformer) or type(model) is not VisionTransformer:
        raise AncestryError(f"{architecture} is not a plain timm VisionTransformer", "architecture")
    return model


def load_ancestry(path: Path, architecture: str, model_args: dict[str, Any]) -> tuple[dict[str, torch.Tensor], ViTSpec]:
    """Read and check an ancestry: returns its state dict (as stored) and its spec.

    Raises :class:`AncestryError` naming the field at fault (file, architecture, model_args).
    """
    read_safetensors_header(path)
    model = build_model(architecture, model_args)
    spec = spec_of(model)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise AncestryError(f"unreadable safetensors file: {exc}", "file") from exc
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}")
        if wrong:
            parts.append(f"wrong shape {[(k, tuple(state[k].shape), expected[k]) for k in wrong[:3]]}")
        raise AncestryError(
            f"weights do not match {architecture} with these model_args (strict load): " + "; ".join(parts),
            "file",
        )
    if any(not t.is_floating_point() for t in state.values()):
        raise AncestryError("every ancestry tensor must be floating point", "file")
    return state, spec
