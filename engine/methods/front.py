"""FRONT: a frequency-domain learngene (ICML 2026, "Breaking the Scale Barrier: One-Shot Knowledge Transfer via
Frequency Transform"), METHODS.md section 5. Training-free and data-free; any depth and width, larger or smaller.

For each block tensor kind k (a table entry below: q, k and v apart, the attention projection, fc1, fc2, the
biases and norms), the ancestry's blocks W_0..W_{L_a-1} are standardized one by one (Z_i = (W_i - mu_i) / sigma_i),
stacked along depth and taken to the orthonormal DCT-II domain over all axes (float64). The learngene keeps the
low-frequency corner [0:l, 0:ceil(r m), 0:ceil(r n)] (r = ``keep_ratio``, l = ``keep_depth``) and every block's
(mu_i, sigma_i). Expanding to depth L and width D zero-pads or truncates the corner to the target shape, inverts
the transform, re-standardizes each block and gives it the ancestry's stats at the same relative depth.

Learngene tensors:

- ``coeffs.{kind}``: float32, (l, ceil(r m), ceil(r n)) for a matrix kind, (l, ceil(r m)) for a vector kind;
- ``mean.{kind}``, ``std.{kind}``: float64, (L_a,): each ancestry block's stats (population std);
- the ancestry's tensors outside the blocks, whole, under their timm names (float32).

``meta``: ``spec`` (the ancestry's), ``keep_ratio``, ``keep_depth``, and ``fit``: the same two, the stored bytes
(all tensors, and the block coefficients alone, beside the ancestry's block bytes) and the relative reconstruction
error of each kind at the ancestry's own size.

Kinds are table-driven: a kind is a timm block tensor (or one row block of a fused tensor) and what sets each of
its axes, so a new tensor of the family is one line in :data:`KINDS` (or :data:`OUTSIDE` outside the blocks).
An ancestry or descendant with a tensor no table knows is refused, naming it.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.fft
import torch

from engine.costs import state_shapes
from engine.methods.base import Descendant, Learngene, LearngeneError, StateDict
from engine.numerics import fixed_sum, fixed_sum_into, resample_grid
from engine.spec import FAMILY_DEFAULTS, FREE_FIELDS, SpecError, SpecLimits, ViTSpec, merge_request, require_features
from engine.vit import (as_float32, assemble, block_key, block_tensors, check_layout, head_state, pos_prefix,
                        stack_blocks)

name = "front"
supports_fit = True

DIM, HIDDEN = "dim", "hidden"


@dataclass(frozen=True)
class Kind:
    """One block tensor kind: the timm block tensor holding it, what sets the size of each of its axes
    (``DIM``: the embedding width, ``HIDDEN``: the MLP's), and its row block when the tensor fuses ``parts`` kinds
    (q|k|v: the transform never runs across their boundary)."""

    tensor: str
    axes: tuple[str, ...]
    part: int = 0
    parts: int = 1


KINDS: dict[str, Kind] = {
    "norm1.weight": Kind("norm1.weight", (DIM,)),
    "norm1.bias": Kind("norm1.bias", (DIM,)),
    "attn.q.weight": Kind("attn.qkv.weight", (DIM, DIM), 0, 3),
    "attn.k.weight": Kind("attn.qkv.weight", (DIM, DIM), 1, 3),
    "attn.v.weight": Kind("attn.qkv.weight", (DIM, DIM), 2, 3),
    "attn.q.bias": Kind("attn.qkv.bias", (DIM,), 0, 3),
    "attn.k.bias": Kind("attn.qkv.bias", (DIM,), 1, 3),
    "attn.v.bias": Kind("attn.qkv.bias", (DIM,), 2, 3),
    "attn.proj.weight": Kind("attn.proj.weight", (DIM, DIM)),
    "attn.proj.bias": Kind("attn.proj.bias", (DIM,)),
    "norm2.weight": Kind("norm2.weight", (DIM,)),
    "norm2.bias": Kind("norm2.bias", (DIM,)),
    "mlp.fc1.weight": Kind("mlp.fc1.weight", (HIDDEN, DIM)),
    "mlp.fc1.bias": Kind("mlp.fc1.bias", (HIDDEN,)),
    "mlp.fc2.weight": Kind("mlp.fc2.weight", (DIM, HIDDEN)),
    "mlp.fc2.bias": Kind("mlp.fc2.bias", (DIM,)),
    "ls1.gamma": Kind("ls1.gamma", (DIM,)),
    "ls2.gamma": Kind("ls2.gamma", (DIM,)),
}
#: Tensors outside the blocks, stored whole: what sets each axis (None: fixed by the family or the classes).
#: The position embedding's token axis is resampled to the descendant's grid by timm, not here.
OUTSIDE: dict[str, tuple[str | None, ...]] = {
    "cls_token": (None, None, DIM),
    "reg_token": (None, None, DIM),
    "dist_token": (None, None, DIM),
    "pos_embed": (None, None, DIM),
    "patch_embed.proj.weight": (DIM, None, None, None),
    "patch_embed.proj.bias": (DIM,),
    "norm_pre.weight": (DIM,),
    "norm_pre.bias": (DIM,),
    "norm.weight": (DIM,),
    "norm.bias": (DIM,),
    "fc_norm.weight": (DIM,),
    "fc_norm.bias": (DIM,),
    "head.weight": (None, DIM),
    "head.bias": (None,),
    "head_dist.weight": (None, DIM),
    "head_dist.bias": (None,),
}
#: Every ViT family feature: its tensors are in the tables above, the rest (activation, norm eps, pooling
#: placement, position layout) only changes how timm builds the descendant.
FEATURES = frozenset(FAMILY_DEFAULTS)
#: A block whose reconstruction has a smaller std than this (Z blocks have std 1) is constant: it gets its mean.
_FLAT = 1e-9


def _size(spec: ViTSpec, axis: str) -> int:
    return spec.embed_dim if axis == DIM else spec.mlp_hidden


def _kept(size: int, ratio: float) -> int:
    """ceil(ratio * size), at least 1; rounded first so that 0.3 * 10 keeps 3, not 4."""
    return max(1, math.ceil(round(ratio * size, 9)))


def kinds(spec: ViTSpec) -> dict[str, Kind]:
    """The kinds of ``spec``'s blocks; a block tensor no kind covers is refused, naming it."""
    block = block_tensors(spec)
    unknown = sorted(set(block) - {kind.tensor for kind in KINDS.values()})
    if unknown:
        raise SpecError(f"FRONT has no transform for the block tensor {unknown[0]!r}", unknown[0])
    return {k: kind for k, kind in KINDS.items() if kind.tensor in block}


def _check_outside(spec: ViTSpec) -> None:
    outside = [k for k in state_shapes(spec.replace(depth=0)) if not k.startswith("blocks.")]
    unknown = [k for k in outside if k not in OUTSIDE]
    if unknown:
        raise SpecError(f"FRONT has no transform for {unknown[0]!r}", unknown[0])


def _by_tensor(table: dict[str, Kind]) -> Iterator[tuple[str, dict[str, Kind]]]:
    """Kinds grouped by the block tensor they live in (q, k, v share qkv), in table order."""
    tensors = dict.fromkeys(kind.tensor for kind in table.values())
    for tensor in tensors:
        yield tensor, {k: kind for k, kind in table.items() if kind.tensor == tensor}


def _workers() -> int:
    # The job's thread budget (torch's) also bounds the transforms.
    return max(1, torch.get_num_threads())


def layout(learngene_spec: ViTSpec, keep_ratio: float, keep_depth: int) -> dict[str, tuple[int, ...]]:
    """Learngene tensor names and shapes for an ancestry of ``learngene_spec``."""
    shapes = {k: v for k, v in state_shapes(learngene_spec).items() if not k.startswith("blocks.")}
    depth = learngene_spec.depth
    for kind_name, kind in kinds(learngene_spec).items():
        corner = tuple(_kept(_size(learngene_spec, axis), keep_ratio) for axis in kind.axes)
        shapes[f"coeffs.{kind_name}"] = (keep_depth, *corner)
        shapes[f"mean.{kind_name}"] = (depth,)
        shapes[f"std.{kind_name}"] = (depth,)
    return shapes


def _learngene_layout(learngene: Learngene) -> dict[str, tuple[int, ...]]:
    return layout(learngene.base_spec, float(learngene.meta["keep_ratio"]), int(learngene.meta["keep_depth"]))


def _read_kind(stack: torch.Tensor, kind: Kind) -> np.ndarray:
    """A kind's (L, ...) float64 stack out of its tensor's (L, ...) stack of blocks."""
    rows = stack.shape[1] // kind.parts
    return stack[:, kind.part * rows:(kind.part + 1) * rows].double().numpy()


def _stats(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    axes = tuple(range(1, stack.ndim))
    return stack.mean(axis=axes), stack.std(axis=axes)


def _spectrum(stack: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """DCT-II (orthonormal) over every axis of the standardized stack; a constant block standardizes to 0."""
    shape = (-1,) + (1,) * (stack.ndim - 1)
    scale = np.divide(1.0, std, out=np.zeros_like(std), where=std > 0).reshape(shape)
    return scipy.fft.dctn((stack - mean.reshape(shape)) * scale, norm="ortho", workers=_workers())


def _stats_at(values: np.ndarray, depth: int) -> np.ndarray:
    """Per-block stats read at the same relative depth: block i of ``depth`` reads position i/(L-1)*(L_a-1),
    linearly interpolated (depth 1 reads block 0; equal depths give the values back)."""
    if depth == len(values):
        return values
    positions = np.arange(depth) * ((len(values) - 1) / (depth - 1)) if depth > 1 else np.zeros(1)
    return np.interp(positions, np.arange(len(values)), values)


def reconstruct(coeffs: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, depth: int,
                shape: tuple[int, ...]) -> np.ndarray:
    """A kind's (depth, *shape) float32 stack from its kept corner and its ancestry stats (METHODS.md steps 1-2).

    The re-standardization happens on each block's spatial coefficients, before the large inverse transform: an
    orthonormal DCT keeps the mean in the first coefficient (times sqrt(size)) and the energy (Parseval), so each
    block's mean and std are read off its coefficients, and setting the first coefficient and scaling the rest
    gives exactly (X_i - mean_i) / std_i * sigma_i + mu_i without a pass over the descendant's weights.

    Same bits on every machine (the same request must give the same bytes on every worker): the transforms are
    pocketfft's (scipy), whose result per line depends only on the line's length, never on the thread split; each
    block's energy is a float64 sum in a fixed order (:func:`engine.numerics.fixed_sum`), not a library reduction
    whose order follows the thread count or vector width. (A BLAS matmul with the inverse basis and torch's float32
    sum did: threads 1 and 2 gave other bytes on AMD EPYC.)

    Precision: the fit runs in float64; here the stored coefficients are float32 already, so the two transforms
    run in float32 too (float64 would buy no accuracy the learngene has, at three times the time and twice the
    memory); the statistics are combined in float64.
    """
    kept = coeffs[(slice(0, depth),) + tuple(slice(0, n) for n in shape)]
    # Along depth first, on the (small) corner: each block's own spatial coefficients, zero-padded to `depth`.
    flat = scipy.fft.idct(kept.reshape(kept.shape[0], -1).numpy(), n=depth, axis=0, norm="ortho",
                          workers=_workers())
    size = math.prod(shape)
    first = flat[:, 0].astype(np.float64)
    # Block by block: a float64 copy of one block at a time, not of the stack (which would double the peak memory).
    squares = np.empty(flat.shape[1])  # one float64 row, reused
    energy = np.array([fixed_sum_into(np.square(row, out=squares, dtype=np.float64)) for row in flat])
    # The energy of everything but the mean; the zero padding to `shape` adds none.
    spread = np.sqrt(np.maximum(energy - first * first, 0.0) / size)
    target_mean = _stats_at(mean.double().numpy(), depth)
    target_std = _stats_at(std.double().numpy(), depth)
    scale = np.where(spread > _FLAT, target_std / np.maximum(spread, _FLAT), 0.0)
    flat *= scale.astype(np.float32)[:, None]
    flat[:, 0] = (target_mean * math.sqrt(size)).astype(np.float32)
    spatial = flat.reshape(depth, *kept.shape[1:])
    # In place when no padding is needed (the coefficients are ours to overwrite): no second stack-sized buffer.
    return scipy.fft.idctn(spatial, s=shape, axes=tuple(range(1, len(shape) + 1)), norm="ortho", workers=_workers(),
                           overwrite_x=True)


def _moments(values: np.ndarray) -> tuple[float, float]:
    """Mean and (population) std of every element, summed in a fixed order."""
    flat = values.reshape(-1).astype(np.float64)
    mean = float(fixed_sum(flat)) / flat.size
    return mean, math.sqrt(float(fixed_sum(np.square(flat - mean))) / flat.size)


def _resize_whole(tensor: torch.Tensor, sizes: dict[int, int]) -> torch.Tensor:
    """A tensor outside the blocks at new sizes along some axes: the same standardized DCT pad-or-truncate as the
    blocks (the tensor's own mean and std kept), along those axes only. Unchanged sizes return the tensor."""
    sizes = {axis: size for axis, size in sizes.items() if tensor.shape[axis] != size}
    if not sizes:
        return tensor
    values = tensor.double().numpy()
    mean, std = _moments(values)
    if std == 0:
        shape = list(values.shape)
        for axis, size in sizes.items():
            shape[axis] = size
        return torch.full(shape, float(mean), dtype=torch.float32)
    axes = list(sizes)
    spectrum = scipy.fft.dctn((values - mean) / std, axes=axes, norm="ortho", workers=_workers())
    resized = scipy.fft.idctn(spectrum, s=[sizes[a] for a in axes], axes=axes, norm="ortho", workers=_workers())
    resized_mean, spread = _moments(resized)
    resized = (resized - resized_mean) * (std / spread if spread > _FLAT else 0.0) + mean
    return torch.from_numpy(resized).float()


def _outside_sizes(axes: tuple[str | None, ...], spec: ViTSpec) -> dict[int, int]:
    return {i: _size(spec, axis) for i, axis in enumerate(axes) if axis is not None}


def fit(ancestry: StateDict, ancestry_spec: ViTSpec, params: dict[str, Any]) -> Learngene:
    """The low-frequency corner of every block kind (params ``keep_ratio`` in (0, 1], default 1: the whole
    spectrum; ``keep_depth`` >= 1, default and at most the ancestry's depth) and the tensors outside the blocks."""
    unknown = set(params) - {"keep_ratio", "keep_depth"}
    if unknown:
        raise LearngeneError(f"front fit takes keep_ratio, keep_depth; got {sorted(unknown)}")
    keep_ratio = float(params.get("keep_ratio", 1.0))
    if not 0 < keep_ratio <= 1:
        raise LearngeneError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    keep_depth = int(params.get("keep_depth", ancestry_spec.depth))
    if keep_depth < 1:
        raise LearngeneError(f"keep_depth must be at least 1, got {keep_depth}")
    # More depth coefficients than blocks do not exist: the whole depth spectrum is kept (as the reference does).
    keep_depth = min(keep_depth, ancestry_spec.depth)
    require_features(ancestry_spec, FEATURES, name)
    block_kinds = kinds(ancestry_spec)
    _check_outside(ancestry_spec)
    check_layout(ancestry, state_shapes(ancestry_spec), "ancestry")
    state = as_float32(ancestry)
    tensors: StateDict = {k: v for k, v in state.items() if not k.startswith("blocks.")}
    depth = ancestry_spec.depth
    errors: dict[str, float] = {}
    for tensor_name, group in _by_tensor(block_kinds):
        stack = stack_blocks(state, depth, tensor_name)
        for kind_name, kind in group.items():
            values = _read_kind(stack, kind)
            mean, std = _stats(values)
            corner = tuple(slice(0, _kept(n, keep_ratio)) for n in values.shape[1:])
            spectrum = _spectrum(values, mean, std)[(slice(0, keep_depth),) + corner]
            coeffs = torch.from_numpy(np.ascontiguousarray(spectrum)).float()
            tensors[f"coeffs.{kind_name}"] = coeffs
            tensors[f"mean.{kind_name}"] = torch.from_numpy(mean)
            tensors[f"std.{kind_name}"] = torch.from_numpy(std)
            rebuilt = reconstruct(coeffs, tensors[f"mean.{kind_name}"], tensors[f"std.{kind_name}"], depth,
                                  values.shape[1:])
            errors[kind_name] = float(np.linalg.norm(rebuilt - values) / max(np.linalg.norm(values), 1e-30))
    block_bytes = sum(t.numel() * t.element_size() for k, t in state.items() if k.startswith("blocks."))
    coeff_bytes = sum(t.numel() * t.element_size() for k, t in tensors.items() if k.startswith("coeffs."))
    summary = {
        "keep_ratio": keep_ratio,
        "keep_depth": keep_depth,
        "stored_bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
        "coefficient_bytes": coeff_bytes,
        "ancestry_block_bytes": block_bytes,
        "relative_error": errors,
    }
    learngene = Learngene(method=name, tensors=tensors, meta={"spec": ancestry_spec.to_dict(), "keep_ratio": keep_ratio,
                                                               "keep_depth": keep_depth, "fit": summary})
    check_layout(tensors, _learngene_layout(learngene), "FRONT learngene")
    return learngene


def resolve_spec(learngene: Learngene, partial: dict[str, Any]) -> ViTSpec:
    """Depth, width, heads, MLP ratio, classes, image size and pooling are free; a class token only if the
    ancestry has one."""
    base = learngene.base_spec
    spec = merge_request(base, partial, FREE_FIELDS, name)
    if spec.class_token and not base.class_token:
        raise SpecError("the ancestry has no class token to inherit", "class_token")
    return spec


def candidate_specs(learngene: Learngene) -> list[ViTSpec]:
    """Every depth and every head count (at the learngene's head dimension) within the default limits: FRONT
    makes any size. The planner narrows this to the service's own limits and the budget."""
    base = learngene.base_spec
    limits = SpecLimits()
    heads = range(1, min(limits.max_num_heads, limits.max_embed_dim // base.head_dim) + 1)
    return [base.replace(depth=depth, embed_dim=count * base.head_dim, num_heads=count)
            for count in heads for depth in range(1, limits.max_depth + 1)]


def _outside(learngene: Learngene, spec: ViTSpec) -> StateDict:
    """The descendant's tensors outside the blocks (heads included): resized to its width, the position grid
    resampled."""
    base = learngene.base_spec
    renamed = {f"{base.final_norm}.weight": f"{spec.final_norm}.weight",
               f"{base.final_norm}.bias": f"{spec.final_norm}.bias"}
    wanted = set(state_shapes(spec.replace(depth=0)))
    heads = head_state(learngene.tensors)
    state: StateDict = {}
    for key, tensor in learngene.tensors.items():
        target = renamed.get(key, key)
        if key in heads:
            target = key  # kept whole or replaced by a fresh head: the caller's (assemble's) decision
        elif target not in wanted:
            continue  # coefficients, stats, a class token the descendant drops
        if key == "pos_embed":
            tensor = _resample_positions(tensor, base, spec)
        state[target] = _resize_whole(tensor, _outside_sizes(OUTSIDE[key], spec))
    return state


def _resample_positions(pos_embed: torch.Tensor, base: ViTSpec, spec: ViTSpec) -> torch.Tensor:
    """The ancestry's positions on the descendant's grid, with the positions of the prefix tokens it keeps."""
    prefix = pos_prefix(base)
    if spec.img_size != base.img_size:
        grid = spec.img_size // spec.patch_size
        pos_embed = resample_grid(pos_embed, len(prefix), (grid, grid))
    kept = [prefix.index(token) for token in pos_prefix(spec)]
    if len(kept) == len(prefix):
        return pos_embed
    return torch.cat([pos_embed[:, kept], pos_embed[:, len(prefix):]], dim=1)


def _fuse(made: Iterator[tuple[Kind, torch.Tensor]]) -> torch.Tensor:
    """A block tensor's (L, ...) stack from its kinds' stacks: an unfused kind's stack is the tensor's; a fused
    tensor's (qkv) row blocks are written into one stack as each is made, so the transient is one row block, not a
    second copy of the tensor."""
    kind, first = next(made)
    if kind.parts == 1:
        return first
    rows = first.shape[1]
    stack = torch.empty((first.shape[0], rows * kind.parts, *first.shape[2:]))
    for kind, part in itertools.chain([(kind, first)], made):
        stack[:, kind.part * rows:(kind.part + 1) * rows] = part
    return stack


def expand(learngene: Learngene, spec: ViTSpec, seed: int) -> Descendant:
    learngene.require(name)
    spec = resolve_spec(learngene, spec.to_dict())
    tensors = learngene.tensors
    check_layout(tensors, _learngene_layout(learngene), "FRONT learngene")
    state = _outside(learngene, spec)
    head = {key: state.pop(key) for key in list(head_state(state))}
    for tensor_name, group in _by_tensor(kinds(spec)):
        # A generator: each kind's stack is made only when the previous one is stored.
        made = ((kind, torch.from_numpy(reconstruct(tensors[f"coeffs.{k}"], tensors[f"mean.{k}"],
                                                    tensors[f"std.{k}"], spec.depth,
                                                    tuple(_size(spec, axis) for axis in kind.axes))))
                for k, kind in group.items())
        stack = _fuse(made)
        for i in range(spec.depth):
            state[block_key(i, tensor_name)] = stack[i]
    return assemble(state, spec, seed, head, keep_ratio=learngene.meta["keep_ratio"],
                    keep_depth=learngene.meta["keep_depth"])
