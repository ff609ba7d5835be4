"""Learngene layers (Wang et al., "Learngene: inheriting condensed knowledge..."), METHODS.md section 2.

The learngene is a few whole ancestry blocks; a descendant of depth L gets them, unchanged, at one end
(``position``: ``"first"`` = blocks 0..n-1, ``"last"`` = blocks L-n..L-1), every other block timm's default
random initialization (seeded).

Learngene tensors (float32, timm names): ``blocks.{j}.<name>`` for the j-th kept block (j = 0..n-1, in ancestry
order), ``patch_embed.proj.*``, ``pos_embed``, ``cls_token`` (when the ancestry has one), the final norm
(``norm.*`` or ``fc_norm.*`` as the ancestry pools) and ``head.*`` (when it has classes).

``meta``: ``spec`` (the ancestry's), ``indices`` (ancestry block of each kept block), ``position``,
``criterion`` (how the blocks were chosen) and ``scores`` (the criterion's score per ancestry block, empty for
a data-free rule). :func:`fit` chooses by a data-free rule; a data-driven choice (made by the trainer) packs the
same format with :func:`make_learngene`.
"""
from __future__ import annotations

from typing import Any

from engine.costs import state_shapes
from engine.methods.base import Descendant, Learngene, LearngeneError, StateDict
from engine.spec import FAMILY_DEFAULTS, SpecError, ViTSpec, merge_request, require_features
from engine.vit import as_float32, assemble, block_key, block_tensors, check_layout, head_state

name = "layers"
POSITIONS = ("first", "last")
#: Whole blocks and the ancestry's own stem and heads are kept, fresh blocks drawn in the family: every feature.
FEATURES = frozenset(FAMILY_DEFAULTS)


def make_learngene(ancestry: StateDict, ancestry_spec: ViTSpec, indices: list[int], position: str,
                   criterion: str, scores: list[float]) -> Learngene:
    """Keep ancestry blocks ``indices`` (plus embeddings, final norm and head) as a layers learngene."""
    require_features(ancestry_spec, FEATURES, name)
    check_layout(ancestry, state_shapes(ancestry_spec), "ancestry")
    if position not in POSITIONS:
        raise LearngeneError(f"position must be one of {list(POSITIONS)}, got {position!r}")
    if not indices or sorted(set(indices)) != list(indices) or not 0 <= indices[0] <= indices[-1] < ancestry_spec.depth:
        raise LearngeneError(f"indices must be increasing ancestry blocks in [0, {ancestry_spec.depth}), "
                             f"got {indices}")
    state = as_float32(ancestry)
    tensors = {k: v for k, v in state.items() if not k.startswith("blocks.")}
    for j, i in enumerate(indices):
        tensors.update({block_key(j, t): state[block_key(i, t)] for t in block_tensors(ancestry_spec)})
    meta = {"spec": ancestry_spec.to_dict(), "indices": list(indices), "position": position,
            "criterion": criterion, "scores": list(scores)}
    return Learngene(method=name, tensors=tensors, meta=meta)


def fit(ancestry: StateDict, ancestry_spec: ViTSpec, params: dict[str, Any]) -> Learngene:
    """Data-free choice: ``count`` blocks (default half the ancestry, as the paper's "first 6 of 12") taken from
    the ``position`` end (default ``"first"``), or exactly ``indices`` when given."""
    unknown = set(params) - {"count", "position", "indices"}
    if unknown:
        raise LearngeneError(f"layers fit takes count, position, indices; got {sorted(unknown)}")
    position = params.get("position", "first")
    if "indices" in params:
        indices, criterion = [int(i) for i in params["indices"]], "given indices"
    else:
        count = int(params.get("count", max(1, ancestry_spec.depth // 2)))
        if not 0 < count <= ancestry_spec.depth:
            raise LearngeneError(f"count must be in [1, {ancestry_spec.depth}], got {count}")
        start = 0 if position == "first" else ancestry_spec.depth - count
        indices, criterion = list(range(start, start + count)), f"data-free: the {position} {count} blocks"
    return make_learngene(ancestry, ancestry_spec, indices, position, criterion, [])


def resolve_spec(learngene: Learngene, partial: dict[str, Any]) -> ViTSpec:
    """Depth (at least the number of kept blocks), classes and image size (positions resampled) are free;
    everything else is the ancestry's."""
    base = learngene.base_spec
    kept = len(learngene.meta["indices"])
    try:
        spec = merge_request(base, partial, {"depth", "num_classes", "img_size"}, name)
    except SpecError as exc:
        if exc.field in ("embed_dim", "num_heads", "mlp_ratio"):
            raise SpecError(f"{exc}: Learngene layers keeps whole ancestry blocks, so every descendant has the "
                            f"ancestry's width {base.embed_dim} ({base.num_heads} heads, MLP ratio {base.mlp_ratio}) "
                            f"whatever its count; weight-selection, front and wave make other widths",
                            exc.field) from None
        raise
    if spec.depth < kept:
        raise SpecError(f"depth {spec.depth} is below the {kept} blocks this learngene inherits (it offers depths "
                        f"{kept} to {2 * base.depth}); a learngene condensed with count in [1, {spec.depth}] "
                        f"makes depth {spec.depth}", "depth")
    return spec


def candidate_specs(learngene: Learngene) -> list[ViTSpec]:
    base = learngene.base_spec
    kept = len(learngene.meta["indices"])
    return [base.replace(depth=depth) for depth in range(kept, 2 * base.depth + 1)]


def layout(learngene: Learngene) -> dict[str, tuple[int, ...]]:
    base = learngene.base_spec
    return state_shapes(base.replace(depth=len(learngene.meta["indices"])))


def expand(learngene: Learngene, spec: ViTSpec, seed: int) -> Descendant:
    learngene.require(name)
    spec = resolve_spec(learngene, spec.to_dict())
    tensors = learngene.tensors
    check_layout(tensors, layout(learngene), "layers learngene")
    kept = len(learngene.meta["indices"])
    offset = 0 if learngene.meta["position"] == "first" else spec.depth - kept
    inherited = list(range(offset, offset + kept))
    fresh = [f"blocks.{i}" for i in range(spec.depth) if i not in inherited]
    head = head_state(tensors)
    state: StateDict = {k: v for k, v in tensors.items() if not k.startswith("blocks.") and k not in head}
    for j, i in enumerate(inherited):
        state.update({block_key(i, t): tensors[block_key(j, t)] for t in block_tensors(spec)})
    return assemble(state, spec, seed, head, fresh, inherited_blocks=inherited,
                    ancestry_blocks=list(learngene.meta["indices"]))
