"""The one entry point of condensing jobs: an ancestry (+ a dataset) -> a learngene, its metrics, its loss curve.

``mode="fit"`` is the method's own data-free condensing (:mod:`engine.methods`); ``mode="train"`` distils on data
with the method's trainer in this package. Both return the learngene in the method's tensor format.
:func:`refine` is WAVE's third mode: an existing learngene gains scalers trained for given sizes. Which method
offers which mode, with which knobs and trainer, is the registry's (:mod:`engine.methods`).
"""
from __future__ import annotations

from typing import Any

from engine.data import Dataset, load_dataset, normalization
from engine.methods import FIT, MODES, REFINE, TRAIN, get_entry
from engine.methods.base import Learngene, StateDict
from engine.methods.params import ParamError, check_img_size
from engine.spec import SpecError, ViTSpec, require_features
from engine.train.distill import resolve_objective
from engine.train.loop import Hooks, LossHistory, stop_check


class RequestError(ValueError):
    """A condensing request that cannot run; ``field`` names what to change (``mode``, ``ancestry.<field>``...).
    A bad parameter is a :class:`ParamError` (``params.<name>``), also a ``ValueError`` with a ``field``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def check_request(method: str, mode: str, ancestry_spec: ViTSpec, params: dict[str, Any],
                  learngene: Learngene | None = None, dataset_classes: int | None = None) -> None:
    """Refuse, before any work, a request that could never run: a mode the method lacks, an ancestry whose
    family the method does not carry, parameters that do not fit this ancestry (a logits objective without a
    head, more blocks than it has, pool students it cannot select, a WAVE tile that does not divide its widths),
    refine sizes the learngene cannot make, a cross-entropy on more classes than the ancestry's head has. ``params``
    are already validated (:meth:`MethodEntry.validate_params`); ``learngene`` is the version a refine starts from,
    ``dataset_classes`` the dataset's class count where known. Raises :class:`RequestError` or
    :class:`ParamError`.

    The service calls this at submission and :func:`condense` / :func:`refine` again when the job runs: one set of
    rules, so a request the API accepts is one the worker can run."""
    if mode not in MODES:
        raise RequestError("mode", f"must be one of {list(MODES)}, got {mode!r}")
    entry = get_entry(method)
    if not entry.offers(mode):
        raise RequestError("mode", f"{method} has no {mode} mode; it offers {list(entry.modes)}")
    module = entry.load()
    try:
        require_features(ancestry_spec, module.FEATURES, method)
    except SpecError as exc:
        raise RequestError(f"ancestry.{exc.field}", f"the ancestry cannot be condensed by {method}: {exc}") from None
    if mode != FIT and "objective" in params:
        resolve_objective(params["objective"], ancestry_spec.num_classes)
    if mode != FIT and dataset_classes is not None:
        check_labels(ancestry_spec, params, dataset_classes)
    if method == "tleg" and mode == TRAIN:
        from engine.train.tleg import narrowed_spec

        try:
            narrowed_spec(ancestry_spec, params)
        except SpecError as exc:
            field = "aux_num_heads" if exc.field == "num_heads" else "aux_embed_dim"
            raise ParamError(field, f"the auxiliary network is cut from the ancestry by weight selection: {exc}") \
                from None
    if method == "layers":
        _check_layers(ancestry_spec, params)
    elif method == "pool":
        _check_pool(ancestry_spec, params)
    elif method == "wave" and params.get("tile") is not None:
        from engine.methods import wave

        try:
            wave.check_tile(ancestry_spec, tuple(params["tile"]))
        except SpecError as exc:
            raise ParamError("tile", f"{exc} of the ancestry") from None
    if mode == REFINE:
        if learngene is None:
            raise RequestError("learngene", "refine adds to an existing learngene")
        if learngene.base_spec.num_classes != ancestry_spec.num_classes:
            raise RequestError("ancestry", f"the learngene has {learngene.base_spec.num_classes} classes, the "
                                           f"ancestry {ancestry_spec.num_classes}: refine against the ancestry it "
                                           "was condensed from")
        refine_sizes(method, learngene, params["sizes"], params.get("img_size"))


def check_labels(ancestry_spec: ViTSpec, params: dict[str, Any], dataset_classes: int) -> None:
    """A cross-entropy term (logits objective, ``ce_weight`` > 0) needs the dataset's labels among the ancestry's
    classes."""
    logits = "objective" not in params or resolve_objective(params["objective"], ancestry_spec.num_classes)[0]
    if logits and params.get("ce_weight") and dataset_classes > ancestry_spec.num_classes:
        raise ParamError("ce_weight", f"cross-entropy needs the dataset's {dataset_classes} classes within the "
                                      f"ancestry's {ancestry_spec.num_classes}; set ce_weight 0")


def _check_layers(ancestry_spec: ViTSpec, params: dict[str, Any]) -> None:
    depth = ancestry_spec.depth
    if params.get("count") is not None and params["count"] > depth:
        raise ParamError("count", f"the ancestry has {depth} blocks: count must be in [1, {depth}], got "
                                  f"{params['count']}")
    if params.get("indices") is not None:
        bad = [i for i in params["indices"] if i >= depth]
        if bad or sorted(set(params["indices"])) != list(params["indices"]):
            raise ParamError("indices", f"must be increasing blocks of the ancestry, in [0, {depth - 1}]; got "
                                        f"{params['indices']}")


def _check_pool(ancestry_spec: ViTSpec, params: dict[str, Any]) -> None:
    """Each student is selected from the ancestry (weight selection): it can only shrink it. The hidden term is
    part of the features objective."""
    if params.get("hidden_weight") and not resolve_objective(params.get("objective", "auto"),
                                                             ancestry_spec.num_classes)[1]:
        raise ParamError("hidden_weight", "the hidden term matches the ancestry's tokens, a part of the features "
                                          "objective: set objective to 'features' or 'both' (auto distils the "
                                          "class predictions of an ancestry with a head)")
    if params.get("students") is None:
        return
    from engine.methods import weight_selection

    source = Learngene(method=weight_selection.name, tensors={}, meta={"spec": ancestry_spec.to_dict()})
    for number, fields in enumerate(params["students"]):
        try:
            weight_selection.resolve_spec(source, dict(fields))
        except SpecError as exc:
            raise ParamError("students", f"student {number} {fields}: {exc}") from None


def condense(method: str, mode: str, ancestry_state: StateDict, ancestry_spec: ViTSpec, dataset_uri: str | None,
             params: dict[str, Any], hooks: Hooks | None = None, preprocessing: dict[str, Any] | None = None,
             ) -> tuple[Learngene, dict[str, Any], LossHistory]:
    """Condense ``ancestry_state`` with ``method``. ``params`` may hold both modes' knobs (as
    :func:`validate_params` without a mode returns them); only ``mode``'s are read. Images are normalized with
    the ancestry's ``preprocessing`` (mean, std), which the learngene records for its descendants.

    Raises ``ValueError`` (its subclass :class:`ParamError` names a parameter) for what cannot run, and
    :class:`engine.train.loop.Cancelled` when the hooks stop a training run."""
    if mode not in (FIT, TRAIN):
        raise RequestError("mode", f"must be 'fit' or 'train', got {mode!r}")
    entry = get_entry(method)
    if not entry.offers(mode):
        raise RequestError("mode", f"{method} has no {mode} mode; it offers {list(entry.modes)}")
    resolved = entry.validate_params(params)
    chosen = {k: v for k, v in resolved.items() if k in entry.params(mode)}
    check_request(method, mode, ancestry_spec, chosen)
    if mode == FIT:
        # None means "the method's default", which the methods express by the key being absent.
        learngene = entry.load().fit(ancestry_state, ancestry_spec, {k: v for k, v in chosen.items() if v is not None})
        _record(learngene, preprocessing)
        return learngene, {"mode": "fit", **({"fit": learngene.meta["fit"]} if "fit" in learngene.meta else {})}, []
    if dataset_uri is None:
        raise RequestError("dataset", "mode 'train' needs a dataset")
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
    check_labels(ancestry_spec, chosen, dataset.num_classes)
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
        raise RequestError("mode", f"{method} has no refine mode")
    chosen = entry.validate_params(params, REFINE)
    check_request(method, REFINE, ancestry_spec, chosen, learngene)
    specs = refine_sizes(method, learngene, chosen["sizes"], chosen.get("img_size"))
    # Refinement trains at the size the learngene was condensed at (the ancestry resampled to it if need be).
    ancestry_state, ancestry_spec = at_img_size(ancestry_state, ancestry_spec, learngene.base_spec.img_size)
    dataset = _distillation_data(dataset_uri, ancestry_spec, chosen, preprocessing, hooks)
    learngene, metrics, history = entry.runner(REFINE)(learngene, ancestry_state, ancestry_spec, dataset, specs, chosen,
                                                       hooks)
    _record(learngene, preprocessing)
    return learngene, {"mode": "refine", **metrics}, history
