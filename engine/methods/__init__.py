"""The method registry: one entry per method, and everything else reads it.

An entry names the engine module that implements :class:`engine.methods.base.Method` (``fit``,
``resolve_spec``, ``candidate_specs``, ``expand``), the condensing modes it offers with one parameter schema
each, the trainer behind each data-driven mode, and its capabilities. The API's enums, ``GET /v1/methods``, the
``/hub`` route, parameter validation, the planner and the condensing entry point all read this table, so adding a
method is one module plus one entry here.

Modules and trainers are imported on first use: listing methods and validating parameters cost no torch import.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, cast

from engine.methods.params import (
    DISTILLATION,
    SIZES,
    STUDENTS,
    STUDENT_BLOCKS,
    TRAINING,
    Param,
    ParamError,
    choice,
    int_list,
    integer,
    optional,
    real,
    wave_counts,
)

if TYPE_CHECKING:
    from engine.methods.base import Descendant, Learngene, Method
    from engine.spec import ViTSpec

FIT, TRAIN, REFINE = "fit", "train", "refine"
MODES = (FIT, TRAIN, REFINE)
#: What each condensing mode does, in a line (the API's documentation of ``mode`` is made of these).
MODE_SUMMARIES = {
    FIT: "data-free, seconds on a CPU",
    TRAIN: "distillation on the dataset",
    REFINE: "the learngene's latest version gains parameters trained for `params.sizes` (what it holds stays "
            "frozen), as a new version",
}
#: What a descendant's head is when its classes are the learngene's: kept, or drawn fresh (a new task).
HEADS = ("inherit", "fresh")


@dataclass(frozen=True)
class Mode:
    """One way of condensing: its knobs, and for data-driven modes the ``"module:function"`` that runs it.

    A ``train`` runner is ``(ancestry_state, ancestry_spec, dataset, params, hooks) -> (learngene, metrics,
    history)``; a ``refine`` runner takes the learngene to refine first and the resolved sizes after the
    dataset. ``fit`` runs the method module's own ``fit``."""

    params: Mapping[str, Param] = field(default_factory=dict)
    runner: str | None = None


@dataclass(frozen=True)
class MethodEntry:
    name: str
    module: str
    summary: str
    #: Condensing modes; empty for a baseline, which expands straight from an ancestry and is never condensed.
    modes: Mapping[str, Mode] = field(default_factory=dict)

    def __post_init__(self) -> None:
        assert set(self.modes) <= set(MODES), self.modes
        seen: dict[str, Param] = {}
        for mode in self.modes.values():
            for key, param in mode.params.items():
                # One knob, one meaning: a name shared by two modes must be the same Param.
                assert seen.setdefault(key, param) is param, (self.name, key)
            assert (mode.runner is None) == (mode is self.modes.get(FIT)), (self.name, mode)

    @property
    def baseline(self) -> bool:
        return not self.modes

    def offers(self, mode: str) -> bool:
        return mode in self.modes

    def load(self) -> Method:
        return cast("Method", importlib.import_module(self.module))

    def expand(self, learngene: Learngene, spec: ViTSpec, seed: int, head: str = "inherit") -> Descendant:
        """The method's expansion; ``head="fresh"`` draws a new head even where the learngene's would fit."""
        descendant = self.load().expand(learngene, spec, seed)
        if head == "fresh":
            from engine.vit import refresh_head

            refresh_head(descendant, spec, seed)
        return descendant

    def runner(self, mode: str) -> Callable[..., Any]:
        target = self.modes[mode].runner
        assert target is not None, f"{self.name} {mode} runs the module's fit"
        module, function = target.split(":")
        return cast(Callable[..., Any], getattr(importlib.import_module(module), function))

    def params(self, mode: str | None = None) -> dict[str, Param]:
        """The knobs of ``mode``, or of every mode together."""
        modes = self.modes.values() if mode is None else [self.modes[mode]]
        return {key: param for m in modes for key, param in m.params.items()}

    def param_modes(self, key: str) -> list[str]:
        return [name for name, mode in self.modes.items() if key in mode.params]

    def default_params(self) -> dict[str, Any]:
        return {key: param.default for key, param in sorted(self.params().items())}

    def validate_params(self, params: Any, mode: str | None = None) -> dict[str, Any]:
        """The full parameter set (defaults filled in) of ``mode``, or of every mode when None.

        Raises :class:`ParamError` for a mode this method lacks, an unknown name or a value out of range."""
        if mode is not None and mode not in self.modes:
            raise ParamError("mode", f"{self.name} has modes {list(self.modes)}, not {mode!r}")
        if not isinstance(params, dict):
            raise ParamError("params", "must be an object")
        schema = self.params(mode)
        for key in sorted(set(params) - set(schema)):
            raise ParamError(key, f"unknown parameter for {self.name}{'' if mode is None else f' {mode}'}; "
                                  f"known: {sorted(schema)}")
        resolved = {}
        for key in sorted(schema):
            try:
                resolved[key] = schema[key].check(params.get(key, schema[key].default))
            except ValueError as exc:
                raise ParamError(key, str(exc)) from None
        if mode == REFINE and resolved.get("sizes") is None:
            raise ParamError("sizes", "refine needs the sizes whose scalers to train")
        if resolved.get("warmup_steps") is not None and resolved["warmup_steps"] >= resolved["steps"]:
            raise ParamError("warmup_steps",
                             f"must be below steps ({resolved['steps']}), got {resolved['warmup_steps']}")
        if "lr" in resolved and resolved["min_lr"] > resolved["lr"]:
            raise ParamError("min_lr", f"must not exceed lr ({resolved['lr']}), got {resolved['min_lr']}")
        return resolved


_TLEG_TRAIN = {
    **TRAINING, **DISTILLATION,
    "aux_depth": Param(12, integer(1, 256), "depth of the auxiliary network (reference: 12)"),
    "init": Param("fit", choice("fit", "random"), "start (A, B) from the data-free fit or from METHODS.md's random init"),
    "aux_embed_dim": Param(None, optional(integer(1, 65_536)),
                           "width of the auxiliary network (and of the learngene's descendants); None: the ancestry's. "
                           "A narrower one starts from the ancestry cut to that width by weight selection, so "
                           "condensing a wide ancestry costs what the narrow network does"),
    "aux_num_heads": Param(None, optional(integer(1, 1024)),
                           "heads of the auxiliary network; None: the ancestry's head dimension kept"),
}
_WAVE_CE = Param(1.0, real(0.0, 1000.0), "weight of the cross-entropy on labels")
_WAVE_DISTILLATION = {**TRAINING, **DISTILLATION, "ce_weight": _WAVE_CE}
_WAVE_FIT = {
    "tile": Param(None, optional(int_list(1, 4096, 2, 2)),
                  "[w1, w2]; None: 32x32 (or the widths' largest power-of-two divisor below it); train, on an "
                  "ancestry where that would keep over a quarter of its block weights: at most a quarter of the width"),
    "counts": Param(None, optional(wave_counts),
                    "templates per kind (int or {kind: N}); None: 64 (capped at the kind's rank); train, where that "
                    "would keep over a quarter of the ancestry's block weights: 8"),
}
_POOL_STUDENTS = {
    "students": Param(None, optional(STUDENTS), "[{embed_dim, num_heads, depth[, mlp_ratio]}, ...]; None: half the "
                      "ancestry's depth at half and at full width"),
    "student_blocks": Param("first", choice(*STUDENT_BLOCKS),
                            "which ancestry blocks each student is weight-selected from: its first `depth` "
                            "(the paper's rule), or `depth` evenly spaced from the first to the last"),
}
_LAYERS_COMMON = {
    "count": Param(None, optional(integer(1, 256)), "blocks kept; None: half the ancestry"),
    "position": Param("first", choice("first", "last"), "descendant end the blocks go to"),
}

#: Every method, in the order the API lists them.
REGISTRY: dict[str, MethodEntry] = {entry.name: entry for entry in (
    MethodEntry(
        "tleg", "engine.methods.tleg",
        "TLEG (Xia et al., AAAI 2024): blocks A + (i/L) B, any depth",
        {FIT: Mode(), TRAIN: Mode(_TLEG_TRAIN, "engine.train.tleg:train_tleg")},
    ),
    MethodEntry(
        "layers", "engine.methods.layers",
        "Learngene layers (Wang et al.): a few of the ancestry's blocks inherited, the rest initialized",
        {
            FIT: Mode({**_LAYERS_COMMON,
                       "indices": Param(None, optional(int_list(0, 255, 1, 256)), "fit only: exactly these blocks")}),
            TRAIN: Mode({
                **_LAYERS_COMMON,
                "selection": Param("window", choice("window", "score", "end"),
                                   "train: the contiguous run of blocks with the largest total score, the "
                                   "top-scoring blocks wherever they are, or the blocks at `position`'s end "
                                   "(scores recorded)"),
                "sample_size": Param(512, integer(8, 1_000_000), "train: images the blocks are scored on"),
                "batch_size": Param(128, integer(1, 65_536), "train: images per scoring batch"),
            }, "engine.train.layers:train_layers"),
        },
    ),
    MethodEntry(
        "pool", "engine.methods.pool",
        "Learngene Pool (Shi et al., AAAI 2024): small students stitched into descendants",
        {
            FIT: Mode({**_POOL_STUDENTS,
                       "batch": Param(8, integer(1, 4096), "fit: synthetic images for the least-squares stitch fit"),
                       "seed": TRAINING["seed"]}),
            TRAIN: Mode({**TRAINING, **DISTILLATION, **_POOL_STUDENTS,
                         "stitch_images": Param(256, integer(1, 65_536),
                                                "train: images for the least-squares stitch init"),
                         "paths": Param("all", choice("all", "students"),
                                        "train: distil every student and every stitched path (all), or the "
                                        "students alone (their stitches keep the least-squares fit): with "
                                        "several students of one width, stitched paths multiply the cost"),
                         "keep_start": Param(0.0, real(0.0, 1.0),
                                             "train: share of the start kept after training; each weight becomes "
                                             "keep_start * start + (1 - keep_start) * trained (students: weight "
                                             "selection, stitches: the least-squares fit); 0: the trained weights"),
                         "hidden_weight": Param(0.0, real(0.0, 1000.0),
                                                "train, features objective: weight of a hidden term; each student "
                                                "block but the last matches the ancestry's tokens at the same "
                                                "relative depth (block round((i + 1) * depth / student depth) - 1), "
                                                "through a training-only projection, both standardized per channel "
                                                "with the ancestry's statistics, 1 - cosine per token; 0: off")},
                        "engine.train.pool:train_pool"),
        },
    ),
    MethodEntry(
        "wave", "engine.methods.wave",
        "WAVE (Feng et al., CVPR 2025): Kronecker weight templates with per-width scalers",
        {
            FIT: Mode(_WAVE_FIT),
            TRAIN: Mode({**_WAVE_DISTILLATION, **_WAVE_FIT}, "engine.train.wave:train_wave"),
            REFINE: Mode({
                **_WAVE_DISTILLATION,
                "sizes": Param(None, optional(SIZES),
                               "refine: [{embed_dim, num_heads, depth, mlp_ratio}, ...] (1-4 sizes, one per width; "
                               "fields left out are the learngene's) whose scalers train, templates frozen"),
            }, "engine.train.wave:refine_wave"),
        },
    ),
    MethodEntry(
        "front", "engine.methods.front",
        "FRONT (ICML 2026): the low-frequency DCT corner of the ancestry's weights, any depth and width, no data",
        {FIT: Mode({
            "keep_ratio": Param(1.0, real(0.0, 1.0, low_open=True),
                                "share of each weight dimension's DCT coefficients kept (1: the whole spectrum)"),
            "keep_depth": Param(None, optional(integer(1, 4096)),
                                "DCT coefficients kept along depth; None (or more than the ancestry's depth): all"),
        })},
    ),
    MethodEntry("weight-selection", "engine.methods.weight_selection",
                "Weight selection (Xu et al., ICLR 2024): a smaller descendant copied out of the ancestry"),
    MethodEntry("random", "engine.methods.random", "timm's own random initialization"),
)}
METHOD_NAMES: tuple[str, ...] = tuple(REGISTRY)
#: Methods a descendant may use straight from an ancestry.
BASELINE_NAMES: tuple[str, ...] = tuple(name for name, entry in REGISTRY.items() if entry.baseline)
#: Methods a condensing job may use.
CONDENSING_NAMES: tuple[str, ...] = tuple(name for name, entry in REGISTRY.items() if not entry.baseline)


def offering(mode: str) -> tuple[str, ...]:
    """The methods that condense in ``mode``, in the registry's order."""
    return tuple(name for name, entry in REGISTRY.items() if entry.offers(mode))


def get_entry(name: str) -> MethodEntry:
    """The entry called ``name``; ``KeyError`` naming the known ones otherwise."""
    if name not in REGISTRY:
        raise KeyError(f"unknown method {name!r}; known: {list(METHOD_NAMES)}")
    return REGISTRY[name]


def get_method(name: str) -> Method:
    """The engine module of the method called ``name``."""
    return get_entry(name).load()


def validate_params(method: str, params: Any, mode: str | None = None) -> dict[str, Any]:
    """:meth:`MethodEntry.validate_params` of ``method``; an unknown method is a :class:`ParamError` too."""
    if method not in REGISTRY:
        raise ParamError("method", f"unknown method {method!r}; known: {list(METHOD_NAMES)}")
    return REGISTRY[method].validate_params(params, mode)
