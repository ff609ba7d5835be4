"""Checking an ancestry checkpoint: a safetensors file that must load strictly into a timm ViT of the family.

Only safetensors is ever read (no pickle). ``model_args`` are checked field by field against the spec's own
fields and limits before timm builds anything (timm's constructors take many more keyword arguments, some of
which read files); the model is then built on the meta device and its spec, family features included, read off
the built module, so an ancestry is described in the same terms as every descendant. A module using something
outside the family (another MLP, attention pooling, q/k norms...) is refused, naming what.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.layers import Attention, GELUTanh, LayerScale, Mlp, PatchEmbed, QuickGELU
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from engine.costs import validate_spec
from engine.spec import ACTIVATIONS, GLOBAL_POOLS, PLAIN_ARCHITECTURES, SpecError, SpecLimits, ViTSpec

MAX_HEADER_BYTES = 100 * 1024 * 1024
#: timm modules whose architectures build the ViT family (``VisionTransformer`` and DeiT's distilled one).
FAMILY_MODULES = ("timm.models.vision_transformer", "timm.models.deit")
SUPPORTED_FAMILIES = ("ViT (vit_*)", "DeiT (deit_*, distilled too)", "DINOv2 (vit_*_dinov2, with registers)",
                      "CLIP image towers (vit_*_clip_*)")
#: The ``model_args`` an upload may give: exactly the spec fields that are ``VisionTransformer`` arguments.
MODEL_ARGS = ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads", "mlp_ratio",
              "class_token", "global_pool", "qkv_bias", "init_values", "reg_tokens", "no_embed_class", "pre_norm",
              "fc_norm", "act_layer", "dynamic_img_size")
_BOOLS = ("class_token", "qkv_bias", "no_embed_class", "pre_norm", "dynamic_img_size")


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


def check_model_args(model_args: dict[str, Any], limits: SpecLimits) -> None:
    """Refuse unknown keys and out-of-range values before timm sees them; ``field`` is ``model_args.<key>``."""
    int_limits = {"img_size": (1, limits.max_img_size), "patch_size": (1, limits.max_img_size),
                  "in_chans": (1, limits.max_in_chans), "num_classes": (0, limits.max_num_classes),
                  "embed_dim": (1, limits.max_embed_dim), "depth": (1, limits.max_depth),
                  "num_heads": (1, limits.max_num_heads), "reg_tokens": (0, limits.max_reg_tokens)}
    for key, value in model_args.items():
        field = f"model_args.{key}"
        if key not in MODEL_ARGS:
            raise AncestryError(f"model_args may hold only {list(MODEL_ARGS)}; {key!r} is not one of them", field)
        if key in int_limits:
            low, high = int_limits[key]
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise AncestryError(f"{key} must be an integer in [{low}, {high}], got {value!r}", field)
        elif key in _BOOLS or key == "fc_norm":
            if not isinstance(value, bool) and not (key == "fc_norm" and value is None):
                raise AncestryError(f"{key} must be true or false, got {value!r}", field)
        elif key in ("mlp_ratio", "init_values"):
            high = limits.max_mlp_ratio if key == "mlp_ratio" else 1e3
            if key == "init_values" and value is None:
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                    or not 0 < value <= high:
                raise AncestryError(f"{key} must be a number in (0, {high}], got {value!r}", field)
        elif key == "global_pool" and value not in GLOBAL_POOLS:
            raise AncestryError(f"global_pool must be one of {list(GLOBAL_POOLS)}, got {value!r}", field)
        elif key == "act_layer" and value not in ACTIVATIONS:
            raise AncestryError(f"act_layer must be one of {list(ACTIVATIONS)}, got {value!r}", field)


def check_architecture(architecture: str) -> None:
    if not isinstance(architecture, str) or not timm.is_model(architecture):
        raise AncestryError(f"unknown timm architecture {architecture!r}", "architecture")
    module = timm.models.model_entrypoint(architecture).__module__
    if module not in FAMILY_MODULES:
        family = module.rsplit(".", 1)[-1]
        raise AncestryError(f"{architecture} is a {family} model, outside the ViT family; supported: "
                            f"{', '.join(SUPPORTED_FAMILIES)}", "architecture")


def _activation(act: nn.Module) -> str:
    if isinstance(act, QuickGELU):
        return "quick_gelu"
    if isinstance(act, GELUTanh) or getattr(act, "approximate", "none") == "tanh":
        return "gelu_tanh"
    if isinstance(act, (nn.GELU, timm.layers.GELU)):
        return "gelu"
    raise AncestryError(f"MLP activation {type(act).__name__} is not one of {list(ACTIVATIONS)}", "architecture")


def _refuse(condition: bool, what: str) -> None:
    if condition:
        raise AncestryError(f"the model uses {what}, which no method supports; supported: "
                            f"{', '.join(SUPPORTED_FAMILIES)} with standard blocks", "architecture")


def _square(value: Any, what: str) -> int:
    first, second = (value, value) if isinstance(value, int) else tuple(value)
    _refuse(first != second, f"a non-square {what} {tuple(value)}")
    return int(first)


def spec_of(model: VisionTransformer, architecture: str) -> ViTSpec:
    """The spec of a built timm ViT, refusing what the spec cannot describe (field ``architecture``)."""
    _refuse(type(model) not in (VisionTransformer, VisionTransformerDistilled), f"the class {type(model).__name__}")
    _refuse(len(model.blocks) == 0, "no blocks")
    _refuse(type(model.patch_embed) is not PatchEmbed or not isinstance(model.patch_embed.norm, nn.Identity)
            or model.patch_embed.dynamic_img_pad, "a non-standard patch embedding")
    _refuse(model.pos_embed is None, "no position embedding")
    _refuse(model.attn_pool is not None or model.global_pool not in GLOBAL_POOLS,
            f"global_pool {model.global_pool!r}")
    _refuse(not isinstance(model.patch_drop, nn.Identity), "patch dropout")
    _refuse(model.pool_include_prefix, "pooling over prefix tokens")
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    _refuse(any(not isinstance(m, nn.LayerNorm) for m in model.modules() if "Norm" in type(m).__name__),
            "a norm other than LayerNorm")
    eps = {float(m.eps) for m in norms}
    _refuse(len(eps) != 1 or next(iter(eps)) not in PLAIN_ARCHITECTURES, f"LayerNorm eps {sorted(eps)}")
    first = model.blocks[0]
    for block in model.blocks:
        _refuse(type(block) is not Block or type(block.attn) is not Attention or type(block.mlp) is not Mlp,
                f"the block {type(block).__name__} with {type(block.attn).__name__} and {type(block.mlp).__name__}")
        _refuse(not all(isinstance(m, nn.Identity) for m in (block.attn.q_norm, block.attn.k_norm, block.attn.norm,
                                                             block.mlp.norm)), "q/k or inner norms")
        _refuse(block.attn.proj.bias is None or block.mlp.fc1.bias is None or block.mlp.fc2.bias is None,
                "projections without bias")
        _refuse(type(block.ls1) is not type(first.ls1), "layer scale in some blocks only")
    has_norm, has_fc_norm = isinstance(model.norm, nn.LayerNorm), isinstance(model.fc_norm, nn.LayerNorm)
    _refuse(has_norm == has_fc_norm, "no final norm")
    embed_dim = int(model.embed_dim)
    hidden = int(first.mlp.fc1.out_features)
    distilled = isinstance(model, VisionTransformerDistilled)
    _refuse(distilled != ("distilled" in architecture), "a distillation token under a name that hides it")
    global_pool = str(model.global_pool)
    return ViTSpec(
        depth=len(model.blocks),
        embed_dim=embed_dim,
        num_heads=int(first.attn.num_heads),
        mlp_ratio=hidden / embed_dim,
        num_classes=int(model.num_classes),
        img_size=_square(model.patch_embed.img_size, "image size"),
        patch_size=_square(model.patch_embed.patch_size, "patch size"),
        in_chans=int(model.patch_embed.proj.in_channels),
        class_token=model.cls_token is not None,
        global_pool=global_pool,
        base_architecture=architecture,
        init_values=float(first.ls1.init_values) if isinstance(first.ls1, LayerScale) else None,
        reg_tokens=int(model.num_reg_tokens),
        no_embed_class=bool(model.no_embed_class),
        qkv_bias=first.attn.qkv.bias is not None,
        pre_norm=isinstance(model.norm_pre, nn.LayerNorm),
        fc_norm=None if has_fc_norm == (global_pool == "avg") else has_fc_norm,
        act_layer=_activation(first.mlp.act),
        norm_eps=next(iter(eps)),
        dynamic_img_size=bool(model.dynamic_img_size),
        distilled=distilled,
    )


def preprocessing_of(model: nn.Module, in_chans: int) -> dict[str, Any]:
    """The architecture's input preprocessing (timm's ``pretrained_cfg``): mean, std, interpolation, crop. A mean
    with another channel count than the model's (ImageNet's three for a one-channel model) is not the model's:
    the per-channel 0.5 convention (engine.data's default) stands in."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    mean, std = list(cfg.get("mean") or ()), list(cfg.get("std") or ())
    if len(mean) != in_chans or len(std) != in_chans:
        mean, std = [0.5] * in_chans, [0.5] * in_chans
    return {"mean": [float(m) for m in mean], "std": [float(s) for s in std],
            "interpolation": str(cfg.get("interpolation") or "bicubic"),
            "crop_pct": float(cfg.get("crop_pct") or 1.0), "crop_mode": str(cfg.get("crop_mode") or "center")}


def inspect_architecture(architecture: str, model_args: dict[str, Any],
                         limits: SpecLimits = SpecLimits()) -> tuple[ViTSpec, dict[str, str | tuple[int, ...]],
                                                                     dict[str, Any]]:
    """Check ``architecture`` and ``model_args`` (before building), build on the meta device and read back the
    spec, the expected tensor shapes and the preprocessing. Raises :class:`AncestryError` naming the field."""
    check_model_args(model_args, limits)
    check_architecture(architecture)
    try:
        with torch.device("meta"):
            model = timm.create_model(architecture, pretrained=False, **model_args)
    except (TypeError, ValueError, AssertionError, RuntimeError, KeyError) as exc:
        raise AncestryError(f"cannot build {architecture} with these model_args: {exc}", "model_args") from exc
    spec = spec_of(model, architecture)
    try:
        validate_spec(spec, limits)
    except SpecError as exc:
        field = f"model_args.{exc.field}" if exc.field in model_args else "architecture"
        raise AncestryError(f"{architecture} with these model_args: {exc}", field) from exc
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return spec, shapes, preprocessing_of(model, spec.in_chans)


def check_weights(state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], architecture: str) -> None:
    """Strict-load check (same keys, same shapes), floating point, and finite values."""
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
    bad = sorted(k for k, t in state.items() if not bool(torch.isfinite(t).all()))
    if bad:
        raise AncestryError(f"tensors with NaN or infinite values: {bad[:5]}", "file")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    read_safetensors_header(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise AncestryError(f"unreadable safetensors file: {exc}", "file") from exc


def read_checked(path: Path, architecture: str, model_args: dict[str, Any],
                 limits: SpecLimits) -> tuple[dict[str, torch.Tensor], ViTSpec, dict[str, Any]]:
    """A checkpoint in timm's layout: its state dict, spec and the architecture's preprocessing."""
    spec, expected, preprocessing = inspect_architecture(architecture, model_args, limits)
    state = read_weights(path)
    check_weights(state, expected, architecture)
    return state, spec, preprocessing


def load_ancestry(path: Path, architecture: str, model_args: dict[str, Any],
                  limits: SpecLimits = SpecLimits()) -> tuple[dict[str, torch.Tensor], ViTSpec]:
    """Read and check an ancestry: returns its state dict (as stored) and its spec.

    Raises :class:`AncestryError` naming the field at fault (file, architecture, model_args.<key>).
    """
    state, spec, _ = read_checked(path, architecture, model_args, limits)
    return state, spec


def square_side(value: Any) -> Any:
    """A size given as [h, w] (as timm and transformers configs may write it) with h == w, as one number;
    anything else as it is."""
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
        return value[0]
    return value
