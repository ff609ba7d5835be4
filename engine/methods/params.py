"""Condensing hyperparameters: the vocabulary each method's registry entry declares its knobs with.

A :class:`Param` is a default, a check and a line of help. The registry (:mod:`engine.methods`) gives every
method one parameter schema per condensing mode; :meth:`engine.methods.MethodEntry.validate_params` refuses
unknown names and out-of-range values with a :class:`ParamError` naming the parameter (the API answers 422).
Imports no torch, so the API validates a request before anything heavy loads.

Defaults follow the papers where they fit a small run; step counts and learning rates are sized for a small seed
on a 2-core CPU; on real data raise ``steps``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable


class ParamError(ValueError):
    """An unknown or invalid condensing parameter; ``field`` is ``params.<name>``."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"params.{name}: {message}")
        self.field = f"params.{name}"


Check = Callable[[Any], Any]  # returns the value (normalized) or raises ValueError with the reason


@dataclass(frozen=True)
class Param:
    default: Any
    check: Check
    help: str


def integer(low: int, high: int) -> Check:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, got {value!r}")
        if not low <= value <= high:
            raise ValueError(f"must be in [{low}, {high}], got {value}")
        return value
    return check


def real(low: float, high: float, low_open: bool = False) -> Check:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value!r}")
        if value < low or value > high or (low_open and value == low):
            raise ValueError(f"must be in {'(' if low_open else '['}{low}, {high}], got {value}")
        return float(value)
    return check


def choice(*options: str) -> Check:
    def check(value: Any) -> str:
        if value not in options:
            raise ValueError(f"must be one of {list(options)}, got {value!r}")
        return value
    return check


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def optional(check: Check) -> Check:
    """None means "let the method choose from the ancestry" (e.g. half its depth)."""
    return lambda value: None if value is None else check(value)


def int_list(low: int, high: int, min_len: int, max_len: int) -> Check:
    item = integer(low, high)

    def check(value: Any) -> list[int]:
        if not isinstance(value, list) or not min_len <= len(value) <= max_len:
            raise ValueError(f"must be a list of {min_len} to {max_len} integers, got {value!r}")
        return [item(v) for v in value]
    return check


def wave_counts(value: Any) -> int | dict[str, int]:
    count = integer(1, 65_536)
    if isinstance(value, dict):
        unknown = set(value) - {"qkv", "proj", "fc1", "fc2"}
        if unknown:
            raise ValueError(f"kinds are qkv, proj, fc1, fc2; got {sorted(unknown)}")
        return {k: count(v) for k, v in value.items()}
    return count(value)


def spec_list(what: str, required: set[str], min_depth: int) -> Check:
    """A list of 1 to 4 partial ViT specs ({embed_dim, num_heads, depth, mlp_ratio}) that name ``required``."""
    fields = {"embed_dim": integer(1, 65_536), "num_heads": integer(1, 1024), "depth": integer(min_depth, 256),
              "mlp_ratio": real(0.0, 64.0, low_open=True)}
    shape = ", ".join(sorted(required, key=list(fields).index)) or "any of embed_dim, num_heads, depth, mlp_ratio"

    def check(value: Any) -> list[dict[str, Any]]:
        if not isinstance(value, list) or not 1 <= len(value) <= 4:
            raise ValueError(f"must be a list of 1 to 4 {what}s, got {value!r}")
        for item in value:
            if not isinstance(item, dict) or not item or not required <= set(item) <= set(fields):
                raise ValueError(f"each {what} is {{{shape}}} (with optional {sorted(set(fields) - required)}), "
                                 f"got {item!r}")
        return [{k: fields[k](v) for k, v in item.items()} for item in value]
    return check


def check_img_size(img_size: Any, patch_size: int) -> None:
    """Refuse (``ParamError`` on ``img_size``) a training image size that is not a multiple of the ancestry's
    patch size: the position embedding is resampled to a whole grid of patches. Called where the ancestry is known
    (the API at submission, the engine before a run)."""
    if img_size is not None and img_size % patch_size:
        below = img_size // patch_size * patch_size
        raise ParamError("img_size", f"must be a multiple of the ancestry's patch size {patch_size}, got {img_size}"
                                     f" (e.g. {max(below, patch_size)} or {below + patch_size})")


#: Pool students name their whole size; WAVE refine sizes leave out what stays the learngene's.
STUDENTS = spec_list("student", {"embed_dim", "num_heads", "depth"}, min_depth=2)
SIZES = spec_list("size", set(), min_depth=1)


#: What a trained mode's ``augment`` may be (engine.augment applies them; named here, where no torch is imported).
AUGMENTS = ("none", "light", "strong")

#: Which ancestry blocks a weight-selected student takes (engine.methods.weight_selection.block_indices applies
#: them; named here, where no torch is imported).
STUDENT_BLOCKS = ("first", "spread")

#: Bounds of the training-mode image size and of the validation subset of a condensing run's metrics.
MAX_IMG_SIZE = 1024
DEFAULT_EVAL_IMAGES = 1000
MAX_EVAL_IMAGES = 20_000

TRAINING: dict[str, Param] = {
    "steps": Param(600, integer(1, 10_000_000), "optimizer steps"),
    "batch_size": Param(64, integer(1, 65_536), "images per step"),
    "lr": Param(5e-4, real(0.0, 1.0, low_open=True), "peak AdamW learning rate"),
    "min_lr": Param(1e-5, real(0.0, 1.0), "learning rate at the end of the cosine"),
    "warmup_steps": Param(None, optional(integer(0, 10_000_000)), "linear warmup steps; None: 5% of steps"),
    "weight_decay": Param(0.05, real(0.0, 10.0), "AdamW decay on matrices"),
    "grad_clip": Param(1.0, real(0.0, 1e6), "max gradient norm, 0: off"),
    "seed": Param(0, integer(0, 2**31 - 1), "initialization and batch order"),
    "checkpoint_every_s": Param(60.0, real(0.0, 86_400.0), "seconds between checkpoints, 0: off"),
    "img_size": Param(None, optional(integer(8, MAX_IMG_SIZE)),
                      "image size the run trains at, a multiple of the ancestry's patch size (its position "
                      "embedding is resampled to it); None: the ancestry's. Descendants are built at any size"),
    "precision": Param("auto", choice("auto", "fp32", "bf16"),
                       "autocast: auto is bf16 on CUDA and on CPUs with native bf16 (AMX, AVX512-BF16), else fp32"),
    "evaluate": Param(True, boolean, "validation metrics before and after training; false: none at all"),
    "eval_images": Param(DEFAULT_EVAL_IMAGES, integer(1, MAX_EVAL_IMAGES),
                         "size of the fixed (stratified) validation subset the metrics use"),
    "augment": Param("none", choice(*AUGMENTS),
                     "transforms of the training images (engine.augment): light is random resized crops (50-100 % "
                     "of the area) and flips; strong adds crops down to 20 %, turns of up to 30 degrees, contrast "
                     "0.6-1.4 and inversions (p 0.2); none: the images as they are"),
    "mix": Param(0.0, real(0.0, 1.0),
                 "share of the training images blended with another image of the condensing data (mixup, own weight "
                 "uniform in 0-1, the partner seen through its own `augment` transforms); ancestry and student see "
                 "the same blend; 0: none"),
}
DISTILLATION: dict[str, Param] = {
    "temperature": Param(1.0, real(0.0, 100.0, low_open=True), "softmax temperature of the KL term"),
    "kl_weight": Param(1.0, real(0.0, 1000.0), "weight of the distillation (KL) term"),
    "ce_weight": Param(0.0, real(0.0, 1000.0), "weight of the cross-entropy on labels"),
    "objective": Param("auto", choice("auto", "logits", "features", "both"),
                       "what is distilled: the ancestry's class predictions (logits: KL at `temperature` plus "
                       "cross-entropy), its tokens (features: 1 - cosine on the pooled token and on the normalized "
                       "patch tokens, through a training-only projection where widths differ), or both; auto: "
                       "features for an ancestry without a head (num_classes 0), logits otherwise"),
    "feature_weight": Param(1.0, real(0.0, 1000.0), "weight of the feature term (objective features or both)"),
    "patch_weight": Param(1.0, real(0.0, 1000.0),
                          "weight of the patch-token term within the feature term, the pooled token's being 1; "
                          "0: the pooled token only"),
}
