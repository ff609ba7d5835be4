"""Learngene Pool (Shi et al., AAAI 2024), METHODS.md section 3.

A pool holds a few small students of different widths/depths and stitch layers between them. A descendant is
``(f, j, b, k)``: patch embedding and blocks 0..j of front student f, the stitch ``Linear(d_f -> d_b)`` on every
token (identity when the widths are equal), blocks k.. of back student b, then b's final norm and head. It is
built by :class:`engine.stitched.StitchedViT` (or is a plain timm ViT when nothing differs between the parts).

Learngene tensors (float32):

- ``students.{s}.<timm key>``: the whole state dict of student s (a plain timm ViT), s = 0..S-1;
- ``stitches.{f}.{b}.weight`` (d_b, d_f) and ``stitches.{f}.{b}.bias`` (d_b): for every ordered pair of students
  of different widths.

``meta``: ``spec`` (the ancestry's), ``students`` (each student's spec dict, in order), ``stitches`` ([[f, b], ...])
and ``fit`` (how the data-free pool was made) when made by :func:`fit`. A trainer with distilled students and
stitches packs the same format with :func:`build_pool`.

Catalogue (what :func:`candidate_specs` lists and :func:`resolve_spec` chooses from): every student as it is, and
for every ordered pair f != b and every j in 0..n_f-2 the back part starting at the same relative depth,
``k = round((j + 1) * n_b / n_f)`` clamped to [1, n_b - 1] (**our choice**: a stitch maps features between matching
depths, which is also what its least-squares initialization fits). Any entry is served at any image size that
its patches tile: the position embedding is resampled (:func:`engine.vit.resample_pos_embed`, timm's filter in a
fixed order), as timm adapts pretrained weights to another resolution.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from engine.costs import preference_key, state_shapes
from engine.methods import weight_selection
from engine.methods.base import Descendant, Learngene, LearngeneError, StateDict
from engine.spec import STITCHED_FEATURES, FrontSpec, SpecError, ViTSpec, require_features, validate_structure
from engine.vit import (STEM_TENSORS, as_float32, assemble, block_key, block_tensors, build_model, check_layout,
                        resample_pos_embed)

name = "pool"
#: Layer scale only: a stitched descendant (engine.stitched) is built of timm blocks with or without layer scale,
#: and nothing else of the family.
FEATURES: frozenset[str] = STITCHED_FEATURES

#: Fields every student shares, so that any front fits any back.
SHARED_FIELDS = ("img_size", "patch_size", "in_chans", "class_token", "global_pool", "num_classes")
#: {(front student, back student): (weight (d_back, d_front), bias (d_back,))}
Stitches = dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Entry:
    """One catalogue entry: the choice (front student, last front block, back student, first back block)."""

    front: int
    last_front_block: int
    back: int
    first_back_block: int
    spec: ViTSpec

    @property
    def choice(self) -> list[int]:
        return [self.front, self.last_front_block, self.back, self.first_back_block]


def student_specs(learngene: Learngene) -> list[ViTSpec]:
    return [ViTSpec.from_dict(s) for s in learngene.meta["students"]]


def stitch_positions(front_depth: int, back_depth: int) -> list[tuple[int, int]]:
    """(j, k) pairs stitching front block j to back block k at the same relative depth."""
    return [(j, min(max(round((j + 1) * back_depth / front_depth), 1), back_depth - 1))
            for j in range(front_depth - 1) if back_depth > 1]


def _entry_spec(front: ViTSpec, j: int, back: ViTSpec, k: int) -> ViTSpec:
    spec = back.replace(depth=(j + 1) + (back.depth - k))
    if (front.embed_dim, front.num_heads, front.mlp_ratio) != (back.embed_dim, back.num_heads, back.mlp_ratio):
        spec = spec.replace(front=FrontSpec(j + 1, front.embed_dim, front.num_heads, front.mlp_ratio))
    return spec


def catalogue(learngene: Learngene) -> list[Entry]:
    """Every descendant the pool offers, students first; later entries with an identical spec are dropped."""
    specs = student_specs(learngene)
    entries = [Entry(s, spec.depth - 1, s, spec.depth, spec) for s, spec in enumerate(specs)]
    for f, front in enumerate(specs):
        for b, back in enumerate(specs):
            if f != b:
                entries.extend(Entry(f, j, b, k, _entry_spec(front, j, back, k))
                               for j, k in stitch_positions(front.depth, back.depth))
    unique: dict[ViTSpec, Entry] = {}
    for entry in entries:
        unique.setdefault(entry.spec, entry)
    return list(unique.values())


def build_pool(students: list[tuple[StateDict, ViTSpec]], stitches: Stitches, meta: dict[str, Any]) -> Learngene:
    """A pool learngene from students (state dict, spec) and stitches {(f, b): (weight, bias)}.

    Every ordered pair of students of different widths needs its stitch; ``meta`` may carry ``spec`` (the
    ancestry's; the widest student's otherwise) and anything else worth recording.
    """
    if not students:
        raise LearngeneError("a pool needs at least one student")
    specs = [spec for _, spec in students]
    for field in SHARED_FIELDS:
        if len({getattr(spec, field) for spec in specs}) > 1:
            raise LearngeneError(f"every student must share {field}")
    tensors: StateDict = {}
    for s, (state, spec) in enumerate(students):
        check_layout(state, state_shapes(spec), f"student {s}")
        tensors.update({f"students.{s}.{k}": v for k, v in as_float32(state).items()})
    pairs = [[f, b] for f in range(len(specs)) for b in range(len(specs))
             if specs[f].embed_dim != specs[b].embed_dim]
    for f, b in pairs:
        if (f, b) not in stitches:
            raise LearngeneError(f"missing the stitch from student {f} to student {b}")
        weight, bias = stitches[(f, b)]
        d_front, d_back = specs[f].embed_dim, specs[b].embed_dim
        if tuple(weight.shape) != (d_back, d_front) or tuple(bias.shape) != (d_back,):
            raise LearngeneError(f"stitch {f}->{b} must be Linear({d_front} -> {d_back})")
        tensors[f"stitches.{f}.{b}.weight"] = weight.float()
        tensors[f"stitches.{f}.{b}.bias"] = bias.float()
    widest = max(specs, key=lambda spec: (spec.embed_dim, spec.depth))
    return Learngene(method=name, tensors=tensors, meta={
        "spec": widest.to_dict(), **meta, "students": [spec.to_dict() for spec in specs], "stitches": pairs})


def student_states(learngene: Learngene) -> list[tuple[StateDict, ViTSpec]]:
    """The pool's students as (state dict, spec), e.g. to start distilling from a data-free pool."""
    return [({k.removeprefix(f"students.{s}."): v for k, v in learngene.tensors.items()
              if k.startswith(f"students.{s}.")}, spec) for s, spec in enumerate(student_specs(learngene))]


def synthetic_batch(spec: ViTSpec, batch: int, seed: int) -> torch.Tensor:
    """The fixed batch the data-free stitches are fitted on: standard-normal pixels (the normalized input range
    the stem expects) from a generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, spec.in_chans, spec.img_size, spec.img_size, generator=generator)


#: Images per forward pass while the stitches' normal equations are accumulated.
STITCH_BATCH = 32


def _student(state: StateDict, spec: ViTSpec) -> torch.nn.Module:
    model = build_model(spec)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _features(model: torch.nn.Module, spec: ViTSpec, images: torch.Tensor) -> list[torch.Tensor]:
    with torch.inference_mode():
        outputs = model.forward_intermediates(images, indices=spec.depth, output_fmt="NLC", intermediates_only=True)
    return [x.reshape(-1, x.shape[-1]).double() for x in outputs]


def hidden_states(state: StateDict, spec: ViTSpec, images: torch.Tensor) -> list[torch.Tensor]:
    """Patch-token features after every block of a student, as (batch * patches, width) float64 matrices."""
    return _features(_student(state, spec), spec, images)


def fit_stitches(students: list[tuple[StateDict, ViTSpec]], images: torch.Tensor | Iterable[torch.Tensor]) -> Stitches:
    """Least-squares stitches: for each ordered pair of widths, ``[F, 1] @ theta ~ G`` over every catalogue
    position (j, k), F = front features after block j, G = back features entering block k, on ``images`` (a
    tensor, or batches of images as they are loaded).

    The problem is accumulated batch by batch as its normal equations (``[F, 1]^T [F, 1]`` and ``[F, 1]^T G``, in
    float64), then solved by least squares (rank-deficient features included): memory is one batch's features and
    a (d_front + 1)-square matrix per pair, whatever the number of images or their size. (Holding every feature
    of 256 images at 518 px, 1,369 tokens each, at every block of two students took gigabytes.)"""
    batches = images.split(STITCH_BATCH) if isinstance(images, torch.Tensor) else images
    models = [_student(state, spec) for state, spec in students]
    pairs = []
    for f, (_, front) in enumerate(students):
        for b, (_, back) in enumerate(students):
            if front.embed_dim == back.embed_dim:
                continue
            positions = stitch_positions(front.depth, back.depth)
            if not positions:
                raise LearngeneError(f"students {f} and {b} leave no stitch position (back depth 1)")
            pairs.append((f, b, positions))
    # The normal equations of each pair, from zeros: [F, 1]^T [F, 1] and [F, 1]^T G.
    normal = {(f, b): (torch.zeros(students[f][1].embed_dim + 1, students[f][1].embed_dim + 1, dtype=torch.float64),
                       torch.zeros(students[f][1].embed_dim + 1, students[b][1].embed_dim, dtype=torch.float64))
              for f, b, _ in pairs}
    seen = 0
    for batch in batches:
        seen += len(batch)
        hidden = [_features(model, spec, batch) for model, (_, spec) in zip(models, students)]
        for f, b, positions in pairs:
            source = torch.cat([hidden[f][j] for j, _ in positions])
            target = torch.cat([hidden[b][k - 1] for _, k in positions])
            design = torch.cat([source, torch.ones(len(source), 1, dtype=source.dtype)], dim=1)
            gram, cross = normal[(f, b)]
            gram += design.T @ design
            cross += design.T @ target
    if pairs and not seen:
        raise LearngeneError("no images to fit the stitches on")
    stitches = {}
    for (f, b), (gram, cross) in normal.items():
        theta = torch.linalg.lstsq(gram, cross).solution
        stitches[(f, b)] = (theta[:-1].T.float().contiguous(), theta[-1].float().contiguous())
    return stitches


def _students_note(ancestry_spec: ViTSpec, students: list[tuple[StateDict, ViTSpec]], blocks: str) -> str:
    """How the students were made, for the learngene's record: the ancestry blocks each took when not its first."""
    if blocks == "first":
        return "weight selection"
    taken = [weight_selection.block_indices(ancestry_spec.depth, spec.depth, blocks) for _, spec in students]
    return f"weight selection, {blocks} blocks {taken}"


def fit(ancestry: StateDict, ancestry_spec: ViTSpec, params: dict[str, Any]) -> Learngene:
    """Data-free pool: students made from the ancestry by weight selection, stitches by least squares on a
    fixed synthetic batch.

    params: ``students`` (list of {embed_dim, num_heads, depth[, mlp_ratio]}; default two students of half the
    ancestry's depth, at half and at full width), ``student_blocks`` (which ancestry blocks each student takes:
    ``"first"``, the default, or ``"spread"``; :func:`engine.methods.weight_selection.block_indices`), ``batch``
    (default 8 images) and ``seed`` (default 0) of the :func:`synthetic_batch`.
    """
    unknown = set(params) - {"students", "student_blocks", "batch", "seed"}
    if unknown:
        raise LearngeneError(f"pool fit takes students, student_blocks, batch, seed; got {sorted(unknown)}")
    require_features(ancestry_spec, FEATURES, name)
    a = ancestry_spec
    wanted = params.get("students", [
        {"embed_dim": a.embed_dim // 2, "num_heads": max(a.num_heads // 2, 1), "depth": max(a.depth // 2, 2)},
        {"embed_dim": a.embed_dim, "num_heads": a.num_heads, "depth": max(a.depth // 2, 2)},
    ])
    blocks = params.get("student_blocks", "first")
    source = weight_selection.fit(ancestry, ancestry_spec, {})
    made = []
    for fields in wanted:
        try:
            spec = weight_selection.resolve_spec(source, dict(fields))
        except SpecError as exc:
            raise LearngeneError(f"student {fields}: {exc}") from exc
        # Same classes as the ancestry, so the head is selected, not drawn: the seed is never used.
        made.append((weight_selection.expand(source, spec, seed=0, blocks=blocks).state_dict, spec))
    batch, seed = int(params.get("batch", 8)), int(params.get("seed", 0))
    stitches = fit_stitches(made, synthetic_batch(a, batch, seed))
    return build_pool(made, stitches, {
        "spec": a.to_dict(),
        "fit": {"students": _students_note(a, made, blocks), "stitches": "least squares", "batch": batch,
                "seed": seed},
    })


#: Fields that, named without ``front``, describe the whole network: a stitched entry whose front part is of
#: another width would be a different network than the one asked for.
_WIDTH_FIELDS = ("embed_dim", "num_heads", "mlp_ratio")
#: Fields any entry serves: the classes (a new head when they differ) and the image size (the positions
#: resampled to the new grid, as timm adapts pretrained weights; the patch size stays the students').
_FREE_FIELDS = ("num_classes", "img_size")


def _matches(spec: ViTSpec, field: str, value: Any, front_named: bool) -> bool:
    if getattr(spec, field) != value:
        return False
    return front_named or field not in _WIDTH_FIELDS or spec.front is None or getattr(spec.front, field) == value


def _sizes(entries: list[Entry]) -> str:
    return "; ".join(sorted({
        f"depth {e.spec.depth} width {e.spec.embed_dim}" + (
            f" (first {e.spec.front.depth} blocks at width {e.spec.front.embed_dim})" if e.spec.front else "")
        for e in entries}))


def _choose(learngene: Learngene, partial: dict[str, Any]) -> tuple[Entry, ViTSpec]:
    """The preferred catalogue entry matching every field of ``partial`` (the most parameters, then the fewest
    GFLOPs), and its spec with the requested classes. A width named without ``front`` holds for every block: the
    pool answers what was asked or refuses with its catalogue, never a stitched stand-in of other widths."""
    known = set(ViTSpec.__dataclass_fields__)
    unknown = set(partial) - known
    if unknown:
        raise SpecError(f"unknown spec fields: {sorted(unknown)}", sorted(unknown)[0])
    entries = catalogue(learngene)
    front_named = "front" in partial
    for field, value in partial.items():
        if field in _FREE_FIELDS:
            continue
        if field == "front" and isinstance(value, dict):
            value = FrontSpec(**value)
        narrowed = [e for e in entries if _matches(e.spec, field, value, front_named)]
        if not narrowed:
            raise SpecError(f"the pool has no descendant with {field}={value!r} matching the request; it offers: "
                            f"{_sizes(catalogue(learngene))}", field)
        entries = narrowed
    entry = min(entries, key=lambda e: preference_key(e.spec))
    spec = entry.spec.replace(**{field: partial[field] for field in _FREE_FIELDS if field in partial})
    validate_structure(spec)
    return entry, spec


def resolve_spec(learngene: Learngene, partial: dict[str, Any]) -> ViTSpec:
    """The catalogue entry matching the request; classes are free (a new head when they differ), and so is the
    image size (the positions resampled to the new grid)."""
    return _choose(learngene, partial)[1]


def candidate_specs(learngene: Learngene) -> list[ViTSpec]:
    return [entry.spec for entry in catalogue(learngene)]


def expand(learngene: Learngene, spec: ViTSpec, seed: int) -> Descendant:
    learngene.require(name)
    entry, spec = _choose(learngene, spec.to_dict())
    tensors = learngene.tensors
    specs = student_specs(learngene)
    front, back = specs[entry.front], specs[entry.back]
    f, b = f"students.{entry.front}.", f"students.{entry.back}."
    state: StateDict = {key: tensors[f + key] for key in STEM_TENSORS if f + key in tensors}
    for i in range(entry.last_front_block + 1):
        state.update({block_key(i, t): tensors[f + block_key(i, t)] for t in block_tensors(front)})
    if front.embed_dim != back.embed_dim:
        stitch = f"stitches.{entry.front}.{entry.back}."
        state["stitch.weight"], state["stitch.bias"] = tensors[stitch + "weight"], tensors[stitch + "bias"]
    for offset, i in enumerate(range(entry.first_back_block, back.depth), start=entry.last_front_block + 1):
        state.update({block_key(offset, t): tensors[b + block_key(i, t)] for t in block_tensors(back)})
    for part in ("weight", "bias"):
        state[f"{back.final_norm}.{part}"] = tensors[f"{b}{back.final_norm}.{part}"]
    if "pos_embed" in state:
        state["pos_embed"] = resample_pos_embed(state["pos_embed"], spec)
    head = (tensors[b + "head.weight"], tensors[b + "head.bias"]) if back.num_classes else None
    descendant = assemble(state, spec, seed, head, pool_choice=entry.choice)
    if spec.front is not None:
        descendant.model_args["pool_choice"] = entry.choice
    return descendant
