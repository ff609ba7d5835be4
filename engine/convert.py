"""Foreign checkpoint layouts become timm's at the edge, as timm's own ``checkpoint_filter_fn`` does.

Hugging Face ``transformers`` checkpoints of ViT, DeiT and DINOv2 (with or without registers), in both naming
generations, are mapped to a timm architecture, its ``model_args`` and a timm state dict:

==============================================================  ===========================================
Hugging Face (before transformers 5 / transformers 5)           timm
==============================================================  ===========================================
``embeddings.cls_token``                                        ``cls_token``
``embeddings.distillation_token`` (DeiT)                        ``dist_token``
``embeddings.register_tokens`` (DINOv2 with registers)          ``reg_token``
``embeddings.position_embeddings``                              ``pos_embed``
``embeddings.patch_embeddings.projection.*``                    ``patch_embed.proj.*``
``encoder.layer.N.`` / ``layers.N.``                            ``blocks.N.``
``attention.attention.{query,key,value}`` / ``attention.{q,k,v}_proj``  ``attn.qkv`` (fused q|k|v, row-wise)
``attention.output.dense`` / ``attention.o_proj``               ``attn.proj``
``intermediate.dense`` / ``mlp.fc1``                            ``mlp.fc1``
``output.dense`` / ``mlp.fc2``                                  ``mlp.fc2``
``layernorm_before`` / ``norm1``; ``layernorm_after`` / ``norm2``  ``norm1``; ``norm2``
``layer_scale1.lambda1``, ``layer_scale2.lambda1`` (DINOv2)     ``ls1.gamma``, ``ls2.gamma``
``layernorm``                                                   ``norm``
``classifier`` (ViT); ``cls_classifier``, ``distillation_classifier`` (DeiT with teacher)  ``head``; ``head``, ``head_dist``
==============================================================  ===========================================

Each key may carry the model prefix (``vit.``, ``deit.``, ``dinov2.``, ``dinov2_with_registers.``) or none (a
base model saved on its own). Dropped, as timm's ViT has no such module: ``embeddings.mask_token`` (masked image
modelling only) and ``pooler.*`` (ViTModel's tanh pooler, unused by classification). Refused, naming why:
DINOv2's SwiGLU MLP, DINOv2's classification head (it reads the class token and the patch mean together), and
DeiT's single-head classifier (timm's distilled DeiT averages two heads).

Numerics: DINOv2 with registers adds no position to its class token in timm (``no_embed_class``), so the class
token's position is folded into it (exact: a constant added to a constant). Hugging Face ViT and DeiT configs say
``layer_norm_eps`` 1e-12; timm's ViT family uses 1e-6, so such checkpoints become 1e-6 models (the same
choice as timm's own pretrained ViT and DeiT weights converted from those checkpoints).
"""
from __future__ import annotations

import math
import re
from typing import Any

import torch

from engine.ancestry import AncestryError, square_side
from engine.methods.base import StateDict
from engine.spec import PLAIN_ARCHITECTURES

#: Hugging Face ``model_type`` -> the timm architecture whose constructor builds it (sizes come as model_args).
ARCHITECTURES = {
    "vit": "vit_base_patch16_224",
    "deit": "deit_base_distilled_patch16_224",
    "dinov2": "vit_base_patch14_dinov2",
    "dinov2_with_registers": "vit_base_patch14_reg4_dinov2",
}
_PREFIXES = ("vit.", "deit.", "dinov2_with_registers.", "dinov2.")
_ACTIVATIONS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh",
                "quick_gelu": "quick_gelu"}
_LAYER = re.compile(r"^(?:encoder\.layers?|layers)\.(\d+)\.(.+)$")
_IN_LAYER = {
    "attention.attention.query.": "q.", "attention.q_proj.": "q.",
    "attention.attention.key.": "k.", "attention.k_proj.": "k.",
    "attention.attention.value.": "v.", "attention.v_proj.": "v.",
    "attention.output.dense.": "attn.proj.", "attention.o_proj.": "attn.proj.",
    "intermediate.dense.": "mlp.fc1.", "mlp.fc1.": "mlp.fc1.",
    "output.dense.": "mlp.fc2.", "mlp.fc2.": "mlp.fc2.",
    "layernorm_before.": "norm1.", "norm1.": "norm1.",
    "layernorm_after.": "norm2.", "norm2.": "norm2.",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
}
_OUTSIDE = {
    "embeddings.cls_token": "cls_token",
    "embeddings.distillation_token": "dist_token",
    "embeddings.register_tokens": "reg_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.": "patch_embed.proj.",
    "layernorm.": "norm.",
    "classifier.": "head.",
    "cls_classifier.": "head.",
    "distillation_classifier.": "head_dist.",
}
_DROPPED = ("embeddings.mask_token", "pooler.")


def _config_int(config: dict[str, Any], key: str, default: int | None = None) -> int:
    value = square_side(config.get(key, default))  # image_size / patch_size as [h, w]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise AncestryError(f"config.{key} must be a non-negative integer, got {value!r}", f"config.{key}")
    return value


def _config_number(config: dict[str, Any], key: str, default: float) -> float:
    value = config.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise AncestryError(f"config.{key} must be a positive number, got {value!r}", f"config.{key}")
    return float(value)


def _rename(key: str) -> str | None:
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    if key.startswith(_DROPPED):
        return None
    match = _LAYER.match(key)
    if match:
        index, rest = match.groups()
        for old, new in _IN_LAYER.items():
            if rest.startswith(old):
                return f"blocks.{index}.{new}{rest[len(old):]}"
        raise AncestryError(f"unknown tensor {key!r} in a transformer layer", "file")
    for old, new in _OUTSIDE.items():
        if key == old or (old.endswith(".") and key.startswith(old)):
            return new + key[len(old):]
    raise AncestryError(f"unknown tensor {key!r} for a Hugging Face ViT-family checkpoint", "file")


def config_arguments(config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(timm architecture, model_args) of a Hugging Face ViT, DeiT or DINOv2 ``config.json``, all but the head's
    class count (the weights tell it: 0 here): everything the config says, checked before any weight is read.

    Raises :class:`AncestryError` naming ``config.<key>``."""
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in ARCHITECTURES:
        raise AncestryError(f"config.model_type {model_type!r} is outside the ViT family; supported: "
                            f"{sorted(ARCHITECTURES)}", "config.model_type")
    if config.get("use_swiglu_ffn"):
        raise AncestryError("DINOv2's SwiGLU MLP is not a timm ViT MLP; no method supports it",
                            "config.use_swiglu_ffn")
    hidden_act = config.get("hidden_act", "gelu")
    if not isinstance(hidden_act, str) or hidden_act not in _ACTIVATIONS:
        raise AncestryError(f"config.hidden_act {hidden_act!r} is not one of {sorted(_ACTIVATIONS)}",
                            "config.hidden_act")
    eps = config.get("layer_norm_eps", 1e-12)
    if eps not in (1e-12, *PLAIN_ARCHITECTURES):
        raise AncestryError(f"config.layer_norm_eps {eps!r} is not 1e-12, 1e-6 or 1e-5", "config.layer_norm_eps")
    dim = _config_int(config, "hidden_size")
    if model_type.startswith("dinov2"):
        mlp_ratio = _config_number(config, "mlp_ratio", 4)
    else:
        mlp_ratio = _config_int(config, "intermediate_size") / max(dim, 1)
    qkv_bias = config.get("qkv_bias", True)
    if not isinstance(qkv_bias, bool):
        raise AncestryError(f"config.qkv_bias must be true or false, got {qkv_bias!r}", "config.qkv_bias")
    model_args: dict[str, Any] = {
        "img_size": _config_int(config, "image_size"),
        "patch_size": _config_int(config, "patch_size"),
        "in_chans": _config_int(config, "num_channels", 3),
        "embed_dim": dim,
        "depth": _config_int(config, "num_hidden_layers"),
        "num_heads": _config_int(config, "num_attention_heads"),
        "mlp_ratio": mlp_ratio,
        "num_classes": 0,
        "qkv_bias": qkv_bias,
        "act_layer": _ACTIVATIONS[hidden_act],
    }
    if model_type.startswith("dinov2"):
        model_args["init_values"] = _config_number(config, "layerscale_value", 1.0)
    if model_type == "dinov2_with_registers":
        model_args["reg_tokens"] = _config_int(config, "num_register_tokens", 4)
        model_args["no_embed_class"] = True
    architecture = ARCHITECTURES[model_type]
    if eps == 1e-5 and model_type == "vit":
        architecture = PLAIN_ARCHITECTURES[1e-5]
        model_args["pre_norm"] = False  # that constructor's default is CLIP's pre-norm
    elif eps == 1e-5:
        raise AncestryError(f"config.layer_norm_eps 1e-5 with model_type {model_type!r} has no timm constructor",
                            "config.layer_norm_eps")
    return architecture, model_args


def from_hugging_face(state: StateDict, config: dict[str, Any]) -> tuple[str, dict[str, Any], StateDict]:
    """(timm architecture, model_args, timm state dict) of a Hugging Face ViT, DeiT or DINOv2 checkpoint.

    Raises :class:`AncestryError` naming ``config.<key>`` or ``file``."""
    architecture, model_args = config_arguments(config)
    model_type = config["model_type"]
    renamed: StateDict = {}
    for key, tensor in state.items():
        new = _rename(key)
        if new is not None:
            renamed[new] = tensor
    if model_type.startswith("dinov2") and "head.weight" in renamed:
        raise AncestryError("DINOv2's classification head reads the class token and the patch mean together; "
                            "upload the backbone (Dinov2Model)", "file")
    if model_type == "deit" and "head.weight" in renamed and "head_dist.weight" not in renamed:
        raise AncestryError("DeiTForImageClassification has one head on the class token; timm's distilled DeiT "
                            "averages two (upload DeiTForImageClassificationWithTeacher or DeiTModel)", "file")
    blocks = sorted({int(k.split(".")[1]) for k in renamed if k.startswith("blocks.")})
    for i in blocks:
        for part in ("weight", "bias"):
            qkv = [renamed.pop(f"blocks.{i}.{p}.{part}", None) for p in "qkv"]
            if all(t is not None for t in qkv):
                renamed[f"blocks.{i}.attn.qkv.{part}"] = torch.cat(qkv)  # type: ignore[arg-type]
            elif any(t is not None for t in qkv):
                raise AncestryError(f"block {i} has only some of query/key/value {part}", "file")
    if model_type == "dinov2_with_registers" and "pos_embed" in renamed and "cls_token" in renamed:
        pos = renamed["pos_embed"]
        renamed["cls_token"] = renamed["cls_token"] + pos[:, :1]
        renamed["pos_embed"] = pos[:, 1:]
    if "head.weight" in renamed:
        model_args["num_classes"] = int(renamed["head.weight"].shape[0])
    return architecture, model_args, renamed
