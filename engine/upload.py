"""What an uploaded ancestry may be, read into timm's layout: a timm checkpoint with its architecture and
``model_args``, a timm Hub snapshot (its ``config.json`` names the architecture), or a Hugging Face transformers
checkpoint, converted at the edge by :mod:`engine.convert`.

Above both :mod:`engine.ancestry` (reading and checking a timm-layout checkpoint) and :mod:`engine.convert`
(which raises the ancestry's errors), so that neither imports the other.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.ancestry import (AncestryError, check_weights, inspect_architecture, read_checked, read_weights,
                             square_side)
from engine.convert import from_hugging_face
from engine.spec import SpecLimits, ViTSpec


@dataclass
class Upload:
    """An uploaded ancestry, checked and in timm's layout."""

    architecture: str
    model_args: dict[str, Any]
    state: dict[str, torch.Tensor]
    spec: ViTSpec
    preprocessing: dict[str, Any]
    converted_from: str | None  # the Hugging Face model_type it was converted from, if it was


def read_upload(path: Path, architecture: str, model_args: dict[str, Any], limits: SpecLimits = SpecLimits(),
                hf_config: dict[str, Any] | None = None) -> Upload:
    """Check an upload: a timm checkpoint with its architecture and ``model_args``, a timm Hub snapshot (its
    ``config.json`` names the architecture), or a Hugging Face transformers checkpoint with its ``config.json``
    (converted by :mod:`engine.convert`). Raises :class:`AncestryError` naming the field (``config.<key>`` for
    what the config says)."""
    if hf_config is None:
        state, spec, preprocessing = read_checked(path, architecture, model_args, limits)
        return Upload(architecture, model_args, state, spec, preprocessing, None)
    if architecture or model_args:
        raise AncestryError("with a config.json, the architecture and model_args come from it: give neither",
                            "architecture" if architecture else "model_args")
    if "model_type" not in hf_config and isinstance(hf_config.get("architecture"), str):
        return _read_timm_hub(path, hf_config, limits)
    architecture, model_args, state = from_hugging_face(read_weights(path), hf_config)
    try:
        spec, expected, preprocessing = inspect_architecture(architecture, model_args, limits)
    except AncestryError as exc:
        raise AncestryError(f"the Hugging Face config gives {architecture} with {model_args}: {exc}",
                            exc.field.replace("model_args", "config", 1)) from exc
    check_weights(state, expected, architecture)
    return Upload(architecture, model_args, state, spec, preprocessing, str(hf_config["model_type"]))


def _read_timm_hub(path: Path, config: dict[str, Any], limits: SpecLimits) -> Upload:
    """A timm Hub snapshot: ``config.json`` as timm's ``save_for_hf`` writes it (architecture, num_classes,
    model_args, pretrained_cfg), weights in timm's layout."""
    architecture = config["architecture"]
    model_args = config.get("model_args") or {}
    if not isinstance(model_args, dict):
        raise AncestryError("config.model_args must be an object", "config.model_args")
    model_args = dict(model_args)
    for key in ("img_size", "patch_size"):  # timm writes sizes as [h, w]
        if key in model_args:
            model_args[key] = square_side(model_args[key])
    if "num_classes" in config:
        model_args.setdefault("num_classes", config["num_classes"])
    try:
        state, spec, preprocessing = read_checked(path, architecture, model_args, limits)
    except AncestryError as exc:  # what the config says is named config.<key>; the weights stay "file"
        field = exc.field if exc.field == "architecture" else exc.field.replace("model_args", "config.model_args", 1)
        raise AncestryError(str(exc), "config." + field if field == "architecture" else field) from exc
    given = config.get("pretrained_cfg") or {}
    if isinstance(given, dict) and len(given.get("mean") or ()) == spec.in_chans == len(given.get("std") or ()):
        preprocessing = {**preprocessing, **{k: given[k] for k in ("mean", "std", "interpolation", "crop_pct",
                                                                   "crop_mode") if given.get(k) is not None}}
    return Upload(architecture, model_args, state, spec, preprocessing, None)
