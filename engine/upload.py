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
from engine.convert import config_arguments, from_hugging_face
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
    _refuse_arguments_beside(architecture, model_args)
    if _is_timm_hub(hf_config):
        return _read_timm_hub(path, hf_config, limits)
    architecture, model_args, state = from_hugging_face(read_weights(path), hf_config)
    spec, expected, preprocessing = _inspect_converted(architecture, model_args, limits)
    check_weights(state, expected, architecture)
    return Upload(architecture, model_args, state, spec, preprocessing, str(hf_config["model_type"]))


def check_arguments(architecture: str, model_args: dict[str, Any], limits: SpecLimits = SpecLimits(),
                    hf_config: dict[str, Any] | None = None) -> None:
    """Everything :func:`read_upload` checks before it reads the weights (the architecture and its arguments, or
    what the config.json says), so that an upload can be refused before its file is stored."""
    if hf_config is None:
        inspect_architecture(architecture, model_args, limits)
        return
    _refuse_arguments_beside(architecture, model_args)
    if _is_timm_hub(hf_config):
        _inspect_hub(*_hub_arguments(hf_config), limits)
    else:
        _inspect_converted(*config_arguments(hf_config), limits)


def _refuse_arguments_beside(architecture: str, model_args: dict[str, Any]) -> None:
    if architecture or model_args:
        raise AncestryError("with a config.json, the architecture and model_args come from it: give neither",
                            "architecture" if architecture else "model_args")


def _is_timm_hub(config: dict[str, Any]) -> bool:
    return "model_type" not in config and isinstance(config.get("architecture"), str)


def _inspect_converted(architecture: str, model_args: dict[str, Any],
                       limits: SpecLimits) -> tuple[ViTSpec, dict[str, str | tuple[int, ...]], dict[str, Any]]:
    try:
        return inspect_architecture(architecture, model_args, limits)
    except AncestryError as exc:
        raise AncestryError(f"the Hugging Face config gives {architecture} with {model_args}: {exc}",
                            exc.field.replace("model_args", "config", 1)) from exc


def _hub_arguments(config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(architecture, model_args) of a timm Hub snapshot's ``config.json``, as timm's ``save_for_hf`` writes it
    (architecture, num_classes, model_args, pretrained_cfg)."""
    model_args = config.get("model_args") or {}
    if not isinstance(model_args, dict):
        raise AncestryError("config.model_args must be an object", "config.model_args")
    model_args = dict(model_args)
    for key in ("img_size", "patch_size"):  # timm writes sizes as [h, w]
        if key in model_args:
            model_args[key] = square_side(model_args[key])
    if "num_classes" in config:
        model_args.setdefault("num_classes", config["num_classes"])
    return config["architecture"], model_args


def _inspect_hub(architecture: str, model_args: dict[str, Any],
                 limits: SpecLimits) -> tuple[ViTSpec, dict[str, str | tuple[int, ...]], dict[str, Any]]:
    try:
        return inspect_architecture(architecture, model_args, limits)
    except AncestryError as exc:  # what the config says is named config.<key>
        field = "config.architecture" if exc.field == "architecture" else exc.field.replace(
            "model_args", "config.model_args", 1)
        raise AncestryError(str(exc), field) from exc


def _read_timm_hub(path: Path, config: dict[str, Any], limits: SpecLimits) -> Upload:
    """A timm Hub snapshot: weights in timm's layout, and its ``pretrained_cfg`` for their preprocessing."""
    architecture, model_args = _hub_arguments(config)
    spec, expected, preprocessing = _inspect_hub(architecture, model_args, limits)
    state = read_weights(path)
    check_weights(state, expected, architecture)
    given = config.get("pretrained_cfg") or {}
    if isinstance(given, dict) and len(given.get("mean") or ()) == spec.in_chans == len(given.get("std") or ()):
        preprocessing = {**preprocessing, **{k: given[k] for k in ("mean", "std", "interpolation", "crop_pct",
                                                                   "crop_mode") if given.get(k) is not None}}
    return Upload(architecture, model_args, state, spec, preprocessing, None)
