"""The one entry point of condensing jobs: an ancestry (+ a dataset) -> a learngene, its metrics, its loss curve.

``mode="fit"`` is the method's own data-free condensing (:mod:`engine.methods`); ``mode="train"`` distils on data
with the method's trainer in this package. Both return the learngene in the method's tensor format.
:func:`refine` is WAVE's third mode: an existing learngene gains scalers trained for given sizes. Which method
offers which mode, with which knobs and trainer, is the registry's (:mod:`engine.methods`).
"""
from __future__ import annotations

from typing import Any

from engine.data import Dataset, load_dataset, normalization
from engine.methods import FIT, REFINE, TRAIN, get_entry
from engine.methods.base import Learngene, StateDict
from engine.methods.params import ParamError, check_img_size
from engine.spec import ViTSpec
from engine.train.loop import Hooks, LossHistory, stop_check


def condense(method: str, mode: str, ancestry_state: StateDict, ancestry_spec: ViTSpec, dataset_uri: str | None,
             params: dict[str, Any], hooks: Hooks | None = None, preprocessing: dict[str, Any] | None = None,
             ) -> tuple[Learngene, dict[str, Any], LossHistory]:
    """Condense ``ancestry_state`` with ``method``. ``params`` may hold both modes' knobs (as
    :func:`validate_params` without a mode returns them); only ``mode``'s are read. Images are normalized with
    the ancestry's ``preprocessing`` (mean, std), which the learngene records for its descendants.

    Raises ``ValueError`` (its subclass :class:`ParamError` names a parameter) for what cannot run, and
    :class:`engine.train.loop.Cancelled` when the hooks stop a training run."""
    if mode not in (FIT, TRAIN):
        raise ValueError(f"mode must be 'fit' or 'train', got {mode!r}")
    entry = get_entry(method)
    if not entry.offers(mode):
        raise ValueError(f"{method} has no {mode} mode")
    resolved = entry.validate_params(params)
    chosen = {k: v for k, v in resolved.items() if k in entry.params(mode)}
    if mode == FIT:
        # None means "the method's default", which the methods express by the key being absent.
        learngene = entry.load().fit(ancestry_state, ancestry_spec, {k: v for k, v in chosen.items() if v is not None})
        _record(learngene, preprocessing)
        return learngene, {"mode": "fit", **({"fit": learngene.meta["fit"]} if "fit" in learngene.meta else {})}, []
    if dataset_uri is None:
        raise ValueError("mode 'train' needs a dataset")
    if ancestry_spec.num_classes == 0:
        raise ValueError("training distils the ancestry's class predictions: the ancestry needs a head")
    ancestry_state, ancestry_spec = at_img_size(ancestry_state, ancestry_spec, chosen.get("img_size"))
    dataset = _distillation_data(dataset_uri, ancestry_spec, chosen, preprocessing, hooks)
    learngene, metrics, history = entry.runner(TRAIN)(ancestry_state, ancestry_spec, dataset, chosen, hooks)
    _record(learngene, preprocessing)
    return learngene, {"mode": "train", **metrics}, history


def at_img_size(state: StateDict, spec: ViTSpec, img_size: int | None) -> tuple[StateDict, ViTSpec]:
    """The ancestry as a model of ``img_size`` px (None: unchanged): its position embedding resampled to the
    new patch grid (:func:`engine.vit.resample_pos_embed`), as timm adapts pretrained weights to another size.
    A training run then condenses at that size, and its learngene records it (descendants choose their own)."""
    if img_size is None or img_size == spec.img_size:
        return state, spec
    check_img_size(img_size, spec.patch_size)
    resized = spec.replace(img_size=img_size)
    if "pos_embed" not in state:
        return state, resized
    from engine.vit import resample_pos_embed

    return {**state, "pos_embed": resample_pos_embed(state["pos_embed"], resized)}, resized


def _distillation_data(dataset_uri: str, ancestry_spec: ViTSpec, chosen: dict[str, Any],
                       preprocessing: dict[str, Any] | None, hooks: Hooks | None = None) -> Dataset:
    """The dataset a training run distils on, at the run's image size and normalized as the ancestry was trained
    (images preprocessed batch by batch; a cancellation is noticed while loading); a cross-entropy term needs
    its labels among the ancestry's classes."""
    dataset = load_dataset(dataset_uri, ancestry_spec.img_size, ancestry_spec.in_chans, **normalization(preprocessing),
                           check=stop_check(hooks))
    if chosen.get("ce_weight") and dataset.num_classes > ancestry_spec.num_classes:
        raise ParamError("ce_weight", f"cross-entropy needs the dataset's {dataset.num_classes} classes within the "
                                      f"ancestry's {ancestry_spec.num_classes}; set ce_weight 0")
    return dataset


def _record(learngene: Learngene, preprocessing: dict[str, Any] | None) -> None:
    """The ancestry's preprocessing travels with the learngene, into every descendant's config.json."""
    if preprocessing:
        learngene.meta["preprocessing"] = dict(preprocessing)


def refine_sizes(method: str, learngene: Learngene, sizes: list[dict[str, Any]],
                 img_size: int | None = None) -> list[ViTSpec]:
    """The sizes of a refine request resolved against the learngene (its classes kept). Raises
    :class:`ParamError` on ``sizes`` for one the learngene cannot make, or two of one width, and on ``img_size``
    for another than the learngene's own: its scalers train on the position grid the learngene holds."""
    if img_size is not None and img_size != learngene.base_spec.img_size:
        raise ParamError("img_size", f"refinement trains at the learngene's own size, "
                                     f"{learngene.base_spec.img_size} px; leave img_size out, got {img_size}")
    resolved = []
    for size in sizes:
        try:
            spec = get_entry(method).load().resolve_spec(learngene, size)
        except ValueError as exc:
            raise ParamError("sizes", f"{size}: {exc}") from None
        resolved.append(spec.replace(num_classes=learngene.base_spec.num_classes))
    widths = [(s.embed_dim, s.mlp_hidden) for s in resolved]
    if len(set(widths)) != len(widths):
        raise ParamError("sizes", "one size per width (embed_dim and MLP hidden size): a width's scalers serve "
                                  "every depth")
    return resolved


def refine(method: str, learngene: Learngene, ancestry_state: StateDict, ancestry_spec: ViTSpec, dataset_uri: str,
           params: dict[str, Any], hooks: Hooks | None = None, preprocessing: dict[str, Any] | None = None,
           ) -> tuple[Learngene, dict[str, Any], LossHistory]:
    """``learngene`` plus scalers trained for ``params["sizes"]``, distilled from the ancestry on the dataset
    (normalized with the ancestry's ``preprocessing``)."""
    entry = get_entry(method)
    if not entry.offers(REFINE):
        raise ValueError(f"{method} has no refine mode")
    chosen = entry.validate_params(params, REFINE)
    specs = refine_sizes(method, learngene, chosen["sizes"], chosen.get("img_size"))
    if ancestry_spec.num_classes == 0:
        raise ValueError("refinement distils the ancestry's class predictions: the ancestry needs a head")
    if learngene.base_spec.num_classes != ancestry_spec.num_classes:
        raise ValueError(f"the learngene has {learngene.base_spec.num_classes} classes, the ancestry "
                         f"{ancestry_spec.num_classes}: refine against the ancestry it was condensed from")
    # Refinement trains at the size the learngene was condensed at (the ancestry resampled to it if need be).
    ancestry_state, ancestry_spec = at_img_size(ancestry_state, ancestry_spec, learngene.base_spec.img_size)
    dataset = _distillation_data(dataset_uri, ancestry_spec, chosen, preprocessing, hooks)
    learngene, metrics, history = entry.runner(REFINE)(learngene, ancestry_state, ancestry_spec, dataset, specs, chosen,
                                                       hooks)
    _record(learngene, preprocessing)
    return learngene, {"mode": "refine", **metrics}, history
