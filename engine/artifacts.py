"""Files the engine writes and reads: descendant weights and config, learngene files, their sha256.

Safetensors files are written here rather than by ``safetensors.torch.save_file`` for two reasons: its header
lists ``__metadata__`` in hash-map order, which differs from run to run (same inputs must give byte-identical
files), and a writer of our own streams each tensor's memory straight to the file, with no intermediate copy
and no refusal of tensors that share storage (a descendant's blocks may be views of one stacked tensor). The
format is the published one (8-byte little-endian header length, JSON header padded with spaces to a multiple of
8, then the tensors back to back), read back by the ``safetensors`` library in the tests.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from engine.methods.base import Descendant, Learngene, LearngeneError, StateDict
from engine.spec import ViTSpec

_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
#: Keys a descendant's ``__metadata__`` must carry (provenance keys, learngene or ancestry, come on top).
DESCENDANT_METADATA_KEYS = ("method", "spec", "seed")
LEARNGENE_FORMAT = "learngene/1"


def write_safetensors(tensors: StateDict, metadata: dict[str, str], path: Path) -> str:
    """Write a safetensors file deterministically: tensors by (alignment, name), metadata keys sorted; the file
    appears atomically (written beside, then renamed). Returns the file's sha256 (hex), computed from the very
    buffers being written, on a second thread while the first writes (both release the GIL on large buffers), so
    that registering the file costs no second pass over it."""
    if any(not isinstance(k, str) or not isinstance(v, str) for k, v in metadata.items()):
        raise ValueError("safetensors metadata must map strings to strings")
    # Tensors made contiguous once; widest dtypes first keeps every tensor aligned to its item size.
    ordered = sorted(((name, t.detach().cpu().contiguous()) for name, t in tensors.items()),
                     key=lambda item: (-item[1].element_size(), item[0]))
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
    offset = 0
    for tensor_name, tensor in ordered:
        size = tensor.numel() * tensor.element_size()
        header[tensor_name] = {"dtype": _DTYPES[tensor.dtype], "shape": list(tensor.shape),
                               "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    encoded += b" " * (-len(encoded) % 8)
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    parts: list[bytes | memoryview] = [struct.pack("<Q", len(encoded)), encoded]
    parts += [memoryview(t.reshape(-1).view(torch.uint8).numpy()) for _, t in ordered if t.numel()]
    digest = hashlib.sha256()
    hasher = threading.Thread(target=lambda: [digest.update(part) for part in parts], name="safetensors-sha256")
    hasher.start()
    try:
        with open(partial, "wb") as f:
            for part in parts:
                f.write(part)
            f.flush()
            os.fsync(f.fileno())  # durable before it gets its final name: a registry row may point at it next
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        hasher.join()
    os.replace(partial, path)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def descendant_metadata(method: str, spec: ViTSpec, seed: int, **provenance: str) -> dict[str, str]:
    """The ``__metadata__`` of a descendant: method, spec (canonical JSON), seed, plus provenance strings such as
    ``learngene``, ``version``, ``learngene_sha256``."""
    return {"method": method, "spec": json.dumps(spec.to_dict(), sort_keys=True), "seed": str(seed),
            **{k: str(v) for k, v in provenance.items()}}


def save_descendant(descendant: Descendant, metadata: dict[str, str], path: Path) -> str:
    """Write ``model.safetensors``: same descendant and metadata give a byte-identical file. Returns its sha256."""
    missing = [k for k in DESCENDANT_METADATA_KEYS if k not in metadata]
    if missing:
        raise ValueError(f"descendant metadata lacks {missing}")
    return write_safetensors(descendant.state_dict, metadata, path)


def default_preprocessing(in_chans: int) -> dict[str, Any]:
    """The preprocessing of an ancestry that recorded none: engine.data's per-channel 0.5 normalization (what the
    seeded ancestries were trained with), bicubic, no crop."""
    return {"mean": [0.5] * in_chans, "std": [0.5] * in_chans, "interpolation": "bicubic", "crop_pct": 1.0,
            "crop_mode": "center"}


def descendant_config(descendant: Descendant, spec: ViTSpec,
                      preprocessing: dict[str, Any] | None = None) -> dict[str, Any]:
    """timm hub ``config.json``, laid out as timm's ``save_for_hf`` writes it: ``timm.create_model("hf-hub:<repo>")``
    (or ``"local-dir:<folder>"``) rebuilds the architecture from it and loads ``model.safetensors``, and
    ``timm.create_model(config["architecture"], num_classes=N, **config["model_args"])`` builds it for N classes
    (``num_classes`` is at the top level and in ``pretrained_cfg``, never in ``model_args``). Stitched descendants
    need ``import engine.stitched`` first, which registers their architecture. ``preprocessing`` (mean, std,
    interpolation, crop) is the ancestry's, which every learngene carries on."""
    pre = {**default_preprocessing(spec.in_chans), **(preprocessing or {})}
    heads = ["head", "head_dist"] if spec.distilled else ["head"]
    return {
        "architecture": descendant.architecture,
        "num_classes": spec.num_classes,
        "num_features": spec.embed_dim,
        "global_pool": spec.global_pool,
        "model_args": {k: v for k, v in descendant.model_args.items() if k != "num_classes"},
        "pretrained_cfg": {
            "tag": "learngene",
            "custom_load": False,
            "input_size": [spec.in_chans, spec.img_size, spec.img_size],
            "fixed_input_size": not spec.dynamic_img_size,
            "interpolation": pre["interpolation"],
            "crop_pct": pre["crop_pct"],
            "crop_mode": pre["crop_mode"],
            "mean": list(pre["mean"]),
            "std": list(pre["std"]),
            "num_classes": spec.num_classes,
            "pool_size": None,
            "first_conv": "patch_embed.proj",
            "classifier": heads[0] if len(heads) == 1 else heads,
        },
    }


def save_learngene(learngene: Learngene, path: Path) -> str:
    """One safetensors file: the tensors, and ``method`` and ``meta`` (JSON) in ``__metadata__``. Returns its
    sha256."""
    return write_safetensors(learngene.tensors, {
        "format": LEARNGENE_FORMAT,
        "method": learngene.method,
        "meta": json.dumps(learngene.meta, sort_keys=True, separators=(",", ":")),
    }, path)


def load_learngene(path: Path) -> Learngene:
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != LEARNGENE_FORMAT:
        raise LearngeneError(f"{path} is not a learngene file (format {metadata.get('format')!r})")
    return Learngene(method=metadata["method"], tensors=load_file(str(path)), meta=json.loads(metadata["meta"]))
