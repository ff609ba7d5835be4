"""Condensing hyperparameters: every knob a job accepts, its default and its range, per method.

``DEFAULT_PARAMS[method]`` is what a job runs with when a request names nothing; :func:`validate_params` refuses
unknown names and out-of-range values with a :class:`ParamError` naming the parameter (the API answers 422).
Each method's knobs belong to one mode or both (:data:`MODE_PARAMS`): the data-free ``fit`` takes the methods'
own fit parameters, ``train`` adds the shared training knobs and the trainer's own; WAVE's ``refine`` (scalers of
new sizes trained on an existing learngene) takes the training knobs and ``sizes``.

Defaults follow the papers where they fit a small run: TLEG's auxiliary depth 12 and soft distillation at
temperature 1 with weight 1 and no cross-entropy (Xia et al.); WAVE's KL plus cross-entropy; the Pool's two
students at half and full width (the paper pairs narrow and wide students), half the ancestry's depth.
Step counts and learning rates are sized for the digits seed on a 2-core CPU; on real data raise ``steps``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from engine.train.loop import TrainConfig


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


def _integer(low: int, high: int) -> Check:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, got {value!r}")
        if not low <= value <= high:
            raise ValueError(f"must be in [{low}, {high}], got {value}")
        return value
    return check


def _real(low: float, high: float, low_open: bool = False) -> Check:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value!r}")
        if value < low or value > high or (low_open and value == low):
            raise ValueError(f"must be in {'(' if low_open else '['}{low}, {high}], got {value}")
        return float(value)
    return check


def _choice(*options: str) -> Check:
    def check(value: Any) -> str:
        if value not in options:
            raise ValueError(f"must be one of {list(options)}, got {value!r}")
        return value
    return check


def _optional(check: Check) -> Check:
    """None means "let the method choose from the ancestry" (e.g. half its depth)."""
    return lambda value: None if value is None else check(value)


def _int_list(low: int, high: int, min_len: int, max_len: int) -> Check:
    item = _integer(low, high)

    def check(value: Any) -> list[int]:
        if not isinstance(value, list) or not min_len <= len(value) <= max_len:
            raise ValueError(f"must be a list of {min_len} to {max_len} integers, got {value!r}")
        return [item(v) for v in value]
    return check


def _wave_counts(value: Any) -> int | dict[str, int]:
    count = _integer(1, 65_536)
    if isinstance(value, dict):
        unknown = set(value) - {"qkv", "proj", "fc1", "fc2"}
        if unknown:
            raise ValueError(f"kinds are qkv, proj, fc1, fc2; got {sorted(unknown)}")
        return {k: count(v) for k, v in value.items()}
    return count(value)


def _spec_list(what: str, required: set[str], min_depth: int) -> Check:
    """A list of 1 to 4 partial ViT specs ({embed_dim, num_heads, depth, mlp_ratio}) that name ``required``."""
    fields = {"embed_dim": _integer(1, 65_536), "num_heads": _integer(1, 1024), "depth": _integer(min_depth, 256),
              "mlp_ratio": _real(0.0, 64.0, low_open=True)}
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


#: Pool students name their whole size; WAVE refine sizes leave out what stays the learngene's.
_students = _spec_list("student", {"embed_dim", "num_heads", "depth"}, min_depth=2)
_sizes = _spec_list("size", set(), min_depth=1)


TRAINING: dict[str, Param] = {
    "steps": Param(600, _integer(1, 10_000_000), "optimizer steps"),
    "batch_size": Param(64, _integer(1, 65_536), "images per step"),
    "lr": Param(5e-4, _real(0.0, 1.0, low_open=True), "peak AdamW learning rate"),
    "min_lr": Param(1e-5, _real(0.0, 1.0), "learning rate at the end of the cosine"),
    "warmup_steps": Param(None, _optional(_integer(0, 10_000_000)), "linear warmup steps; None: 5% of steps"),
    "weight_decay": Param(0.05, _real(0.0, 10.0), "AdamW decay on matrices"),
    "grad_clip": Param(1.0, _real(0.0, 1e6), "max gradient norm, 0: off"),
    "seed": Param(0, _integer(0, 2**31 - 1), "initialization and batch order"),
    "checkpoint_every_s": Param(60.0, _real(0.0, 86_400.0), "seconds between checkpoints, 0: off"),
}
DISTILLATION: dict[str, Param] = {
    "temperature": Param(1.0, _real(0.0, 100.0, low_open=True), "softmax temperature of the KL term"),
    "kl_weight": Param(1.0, _real(0.0, 1000.0), "weight of the distillation (KL) term"),
    "ce_weight": Param(0.0, _real(0.0, 1000.0), "weight of the cross-entropy on labels"),
}
SCHEMAS: dict[str, dict[str, Param]] = {
    "tleg": {
        **TRAINING, **DISTILLATION,
        "aux_depth": Param(12, _integer(1, 256), "depth of the auxiliary network (reference: 12)"),
        "init": Param("fit", _choice("fit", "random"),
                      "start (A, B) from the data-free fit or from METHODS.md's random init"),
    },
    "wave": {
        **TRAINING, **DISTILLATION,
        "ce_weight": Param(1.0, _real(0.0, 1000.0), "weight of the cross-entropy on labels"),
        "tile": Param(None, _optional(_int_list(1, 4096, 2, 2)), "[w1, w2]; None: the fit's default"),
        "counts": Param(None, _optional(_wave_counts), "templates per kind (int or {kind: N}); None: fit default"),
        "sizes": Param(None, _optional(_sizes),
                       "refine: [{embed_dim, num_heads, depth, mlp_ratio}, ...] (1-4 sizes, one per width; fields "
                       "left out are the learngene's) whose scalers train, templates frozen"),
    },
    "pool": {
        **TRAINING, **DISTILLATION,
        "students": Param(None, _optional(_students),
                          "[{embed_dim, num_heads, depth[, mlp_ratio]}, ...]; None: half the ancestry's depth "
                          "at half and at full width"),
        "stitch_images": Param(256, _integer(1, 65_536), "train: images for the least-squares stitch init"),
        "batch": Param(8, _integer(1, 4096), "fit: synthetic images for the least-squares stitch fit"),
    },
    "layers": {
        "count": Param(None, _optional(_integer(1, 256)), "blocks kept; None: half the ancestry"),
        "position": Param("first", _choice("first", "last"), "descendant end the blocks go to"),
        "indices": Param(None, _optional(_int_list(0, 255, 1, 256)), "fit only: exactly these blocks"),
        "selection": Param("window", _choice("window", "score", "end"),
                           "train: the contiguous run of blocks with the largest total score, the top-scoring "
                           "blocks wherever they are, or the blocks at `position`'s end (scores recorded)"),
        "sample_size": Param(512, _integer(8, 1_000_000), "train: images the blocks are scored on"),
        "batch_size": Param(128, _integer(1, 65_536), "train: images per scoring batch"),
    },
    "weight-selection": {},
    "random": {},
}
#: Which knobs each mode reads; a knob of the other mode is refused when the mode is known.
MODE_PARAMS: dict[str, dict[str, set[str]]] = {
    "tleg": {"fit": set(), "train": set(SCHEMAS["tleg"])},
    "wave": {"fit": {"tile", "counts"}, "train": set(SCHEMAS["wave"]) - {"sizes"},
             "refine": set(SCHEMAS["wave"]) - {"tile", "counts"}},
    "pool": {"fit": {"students", "batch", "seed"}, "train": set(SCHEMAS["pool"]) - {"batch"}},
    "layers": {"fit": {"count", "position", "indices"},
               "train": {"count", "position", "selection", "sample_size", "batch_size"}},
    "weight-selection": {"fit": set(), "train": set()},
    "random": {"fit": set(), "train": set()},
}
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    method: {name: param.default for name, param in schema.items()} for method, schema in SCHEMAS.items()
}


def validate_params(method: str, params: dict[str, Any], mode: str | None = None) -> dict[str, Any]:
    """The full parameter set (defaults filled in) for ``method``, restricted to ``mode``'s knobs when given.

    Raises :class:`ParamError` for an unknown method, mode or name, or a value out of range."""
    if method not in SCHEMAS:
        raise ParamError("method", f"unknown method {method!r}; known: {sorted(SCHEMAS)}")
    if mode is not None and mode not in MODE_PARAMS[method]:
        raise ParamError("mode", f"{method} has modes {sorted(MODE_PARAMS[method])}, not {mode!r}")
    if not isinstance(params, dict):
        raise ParamError("params", "must be an object")
    schema = SCHEMAS[method]
    allowed = set(schema) if mode is None else MODE_PARAMS[method][mode]
    for name in sorted(set(params) - allowed):
        raise ParamError(name, f"unknown parameter for {method}{'' if mode is None else f' {mode}'}; "
                               f"known: {sorted(allowed)}")
    resolved = {}
    for name in sorted(allowed):
        try:
            resolved[name] = schema[name].check(params.get(name, schema[name].default))
        except ValueError as exc:
            raise ParamError(name, str(exc)) from None
    if mode == "refine" and resolved.get("sizes") is None:
        raise ParamError("sizes", "refine needs the sizes whose scalers to train")
    if resolved.get("warmup_steps") is not None and resolved["warmup_steps"] >= resolved["steps"]:
        raise ParamError("warmup_steps", f"must be below steps ({resolved['steps']}), got {resolved['warmup_steps']}")
    if "lr" in resolved and resolved["min_lr"] > resolved["lr"]:
        raise ParamError("min_lr", f"must not exceed lr ({resolved['lr']}), got {resolved['min_lr']}")
    return resolved


def train_config(params: dict[str, Any]) -> TrainConfig:
    """The loop's configuration from validated train-mode parameters."""
    warmup = params["warmup_steps"] if params["warmup_steps"] is not None else params["steps"] // 20
    return TrainConfig(steps=params["steps"], batch_size=params["batch_size"], lr=params["lr"],
                       min_lr=params["min_lr"], warmup_steps=warmup,
                       weight_decay=params["weight_decay"], grad_clip=params["grad_clip"], seed=params["seed"],
                       checkpoint_every_s=params["checkpoint_every_s"])
