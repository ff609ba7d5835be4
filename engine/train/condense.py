"""The one entry point of condensing jobs: an ancestry (+ a dataset) -> a learngene, its metrics, its loss curve.

``mode="fit"`` is the method's own data-free condensing (:mod:`engine.methods`); ``mode="train"`` distils on data
with the method's trainer in this package. Both return the learngene in the method's tensor format.
:func:`refine` is WAVE's third mode: an existing learngene gains scalers trained for given sizes.
"""
from __future__ import annotations

from typing import Any, Callable

from engine.data import Dataset, load_dataset
from engine.methods import get_method
from engine.methods.base import Learngene, StateDict
from engine.spec import ViTSpec
from engine.train.layers import train_layers
from engine.train.loop import Hooks, LossHistory
from engine.train.params import MODE_PARAMS, ParamError, validate_params
from engine.train.pool import train_pool
from engine.train.tleg import train_tleg
from engine.train.wave import refine_wave, train_wave

Trainer = Callable[[StateDict, ViTSpec, Dataset, dict[str, Any], Hooks | None],
                   tuple[Learngene, dict[str, Any], LossHistory]]
TRAINERS: dict[str, Trainer] = {"tleg": train_tleg, "wave": train_wave, "pool": train_pool, "layers": train_layers}


def supports_fit(method: str) -> bool:
    return get_method(method).supports_fit


def supports_train(method: str) -> bool:
    return method in TRAINERS


def condense(method: str, mode: str, ancestry_state: StateDict, ancestry_spec: ViTSpec, dataset_uri: str | None,
             params: dict[str, Any], hooks: Hooks | None = None) -> tuple[Learngene, dict[str, Any], LossHistory]:
    """Condense ``ancestry_state`` with ``method``. ``params`` may hold both modes' knobs (as
    :func:`validate_params` without a mode returns them); only ``mode``'s are read.

    Raises ``ValueError`` (its subclass :class:`ParamError` names a parameter) for what cannot run, and
    :class:`engine.train.loop.Cancelled` when the hooks stop a training run."""
    if mode not in ("fit", "train"):
        raise ValueError(f"mode must be 'fit' or 'train', got {mode!r}")
    resolved = validate_params(method, params)
    chosen = {k: v for k, v in resolved.items() if k in MODE_PARAMS[method][mode]}
    if mode == "fit":
        if not supports_fit(method):
            raise ValueError(f"{method} has no data-free fit")
        # None means "the method's default", which the methods express by the key being absent.
        learngene = get_method(method).fit(ancestry_state, ancestry_spec,
                                           {k: v for k, v in chosen.items() if v is not None})
        return learngene, {"mode": "fit", **({"fit": learngene.meta["fit"]} if "fit" in learngene.meta else {})}, []
    if not supports_train(method):
        raise ValueError(f"{method} has no training; use mode 'fit'")
    if dataset_uri is None:
        raise ValueError("mode 'train' needs a dataset")
    if ancestry_spec.num_classes == 0:
        raise ValueError("training distils the ancestry's class predictions: the ancestry needs a head")
    dataset = load_dataset(dataset_uri, ancestry_spec.img_size, ancestry_spec.in_chans)
    if chosen.get("ce_weight") and dataset.num_classes > ancestry_spec.num_classes:
        raise ParamError("ce_weight", f"cross-entropy needs the dataset's {dataset.num_classes} classes within the "
                                      f"ancestry's {ancestry_spec.num_classes}; set ce_weight 0")
    learngene, metrics, history = TRAINERS[method](ancestry_state, ancestry_spec, dataset, chosen, hooks)
    return learngene, {"mode": "train", **metrics}, history


def supports_refine(method: str) -> bool:
    return method == "wave"


def refine_sizes(method: str, learngene: Learngene, sizes: list[dict[str, Any]]) -> list[ViTSpec]:
    """The sizes of a refine request resolved against the learngene (its classes kept). Raises
    :class:`ParamError` on ``sizes`` for one the learngene cannot make, or two of one width."""
    resolved = []
    for size in sizes:
        try:
            spec = get_method(method).resolve_spec(learngene, size)
        except ValueError as exc:
            raise ParamError("sizes", f"{size}: {exc}") from None
        resolved.append(spec.replace(num_classes=learngene.base_spec.num_classes))
    widths = [(s.embed_dim, s.mlp_hidden) for s in resolved]
    if len(set(widths)) != len(widths):
        raise ParamError("sizes", "one size per width (embed_dim and MLP hidden size): a width's scalers serve "
                                  "every depth")
    return resolved


def refine(method: str, learngene: Learngene, ancestry_state: StateDict, ancestry_spec: ViTSpec, dataset_uri: str,
           params: dict[str, Any], hooks: Hooks | None = None) -> tuple[Learngene, dict[str, Any], LossHistory]:
    """``learngene`` plus scalers trained for ``params["sizes"]``, distilled from the ancestry on the dataset."""
    if not supports_refine(method):
        raise ValueError(f"{method} has no refine mode")
    chosen = validate_params(method, params, "refine")
    specs = refine_sizes(method, learngene, chosen["sizes"])
    if ancestry_spec.num_classes == 0:
        raise ValueError("refinement distils the ancestry's class predictions: the ancestry needs a head")
    if learngene.base_spec.num_classes != ancestry_spec.num_classes:
        raise ValueError(f"the learngene has {learngene.base_spec.num_classes} classes, the ancestry "
                         f"{ancestry_spec.num_classes}: refine against the ancestry it was condensed from")
    dataset = load_dataset(dataset_uri, ancestry_spec.img_size, ancestry_spec.in_chans)
    if chosen.get("ce_weight") and dataset.num_classes > ancestry_spec.num_classes:
        raise ParamError("ce_weight", f"cross-entropy needs the dataset's {dataset.num_classes} classes within the "
                                      f"ancestry's {ancestry_spec.num_classes}; set ce_weight 0")
    learngene, metrics, history = refine_wave(learngene, ancestry_state, ancestry_spec, dataset, specs, chosen, hooks)
    return learngene, {"mode": "refine", **metrics}, history
