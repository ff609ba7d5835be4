"""WAVE: weight templates (Feng et al., CVPR 2025), METHODS.md section 4. The paper's code is not public; the
choices marked there as ours are implemented as written, with the rest documented in docs/methods.md.

For each weight kind k (``qkv``, ``proj``, ``fc1``, ``fc2``) a weight of shape (a*w1, b*w2) in block i is

    W = sum over t of kron(S_{i,t}, T_{k,t})        S_{i,t}: (a, b) scalers, T_{k,t}: (w1, w2) template

i.e. tile (r, c) of the weight is ``sum_t S_{i,t}[r, c] * T_{k,t}``.

Learngene tensors (float32):

- ``templates.{k}``: (N_k, w1, w2), shared by every block and every size;
- ``scalers.{k}``: (L_aux, N_k, a_k, b_k), the auxiliary size's scalers (a_k, b_k = the weight's grid of tiles);
- timm names, at the auxiliary size, for every tensor outside the scheme: ``patch_embed.proj.*``, ``pos_embed``,
  ``cls_token`` (if any), ``blocks.{i}.norm1.*``, ``blocks.{i}.attn.qkv.bias``, ``blocks.{i}.attn.proj.bias``,
  ``blocks.{i}.norm2.*``, ``blocks.{i}.mlp.fc1.bias``, ``blocks.{i}.mlp.fc2.bias``, ``norm.*``/``fc_norm.*``,
  ``head.*`` (if it has classes).

``meta``: ``spec`` (the auxiliary network's), ``tile`` ([w1, w2]), ``counts`` ({k: N_k}), and ``fit``
(``relative_residual`` per kind) when made by :func:`fit`. A trainer holding templates and scalers as parameters
under these names packs its state with :func:`make_learngene`.

A new size gets new scalers (:func:`resample_scalers`): resampled along depth by relative position i/L, then the
(a, b) grid resized (evenly spaced selection when shrinking, linear interpolation when growing; qkv's q, k and v
row blocks resized apart). Tensors outside the scheme are resampled the same way along depth and width.

Refined widths (METHODS.md's optional refinement, :func:`engine.train.wave.refine_wave`): a learngene may also
hold ``refined.{width}x{hidden}.scalers.{k}`` of shape (L_r, N_k, a, b), scalers trained for that width with the
templates frozen, described in ``meta["refined"]["{width}x{hidden}"]`` (the spec they were trained at). A
descendant of that width takes them, resampled along depth only, instead of the auxiliary scalers' resized grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from engine.costs import state_shapes
from engine.methods.base import Descendant, Learngene, LearngeneError, StateDict
from engine.numerics import exact_matmul
from engine.spec import FAMILY_DEFAULTS, SpecError, ViTSpec, merge_request, require_features
from engine.vit import (as_float32, assemble, block_key, block_tensors, check_layout, head_state, resample_depth,
                        resize_dim, resize_segments, stack_blocks)

name = "wave"

#: Weight kind -> the block tensor it builds.
KINDS = {"qkv": "attn.qkv.weight", "proj": "attn.proj.weight", "fc1": "mlp.fc1.weight", "fc2": "mlp.fc2.weight"}
#: Every family feature but DeiT's distillation token: the auxiliary network that condensing trains is a plain
#: timm ViT. Layer-scale gammas are per-block vectors outside the scheme, like the norms.
FEATURES = frozenset(FAMILY_DEFAULTS) - {"distilled"}
#: Where the width is in each tensor outside the blocks (resized by :func:`at_size`).
_STEM_WIDTH_DIM = {"patch_embed.proj.weight": 0, "patch_embed.proj.bias": 0, "norm_pre.weight": 0,
                   "norm_pre.bias": 0, "pos_embed": 2, "cls_token": 2, "reg_token": 2}


def _outside(spec: ViTSpec) -> list[str]:
    """Block tensors outside the template scheme: the norms, the biases, the layer-scale gammas."""
    return [t for t in block_tensors(spec) if t not in KINDS.values()]
DEFAULT_COUNT = 64
DEFAULT_TILE = 32
#: Trained learngenes condense further than the data-free fit can afford: distillation recovers what a small
#: template set leaves out (docs/quality.md: on the 64-wide Fashion-MNIST seed, 8 templates of 16x16 trained to
#: 0.09 of the ancestry's bytes fine-tune better than the fit's default trained at 0.82).
TRAIN_COUNT = 8
#: The share of the ancestry's block weights above which a default is no condensation.
CONDENSED_SHARE = 0.25
COMPOSE_GROUPS = 4  # expansion composes each kind's blocks in this many groups


def weight_shape(spec: ViTSpec, kind: str) -> tuple[int, int]:
    dim, hidden = spec.embed_dim, spec.mlp_hidden
    return {"qkv": (3 * dim, dim), "proj": (dim, dim), "fc1": (hidden, dim), "fc2": (dim, hidden)}[kind]


def to_tiles(weight: torch.Tensor, w1: int, w2: int) -> torch.Tensor:
    """(..., a*w1, b*w2) -> (..., a*b, w1*w2): one row per tile, tiles in row-major grid order."""
    *lead, m1, m2 = weight.shape
    a, b = m1 // w1, m2 // w2
    tiles = weight.reshape(*lead, a, w1, b, w2).transpose(-3, -2)
    return tiles.reshape(*lead, a * b, w1 * w2)


def compose(scalers: torch.Tensor, templates: torch.Tensor, out: torch.Tensor | None = None,
            exact: bool = False) -> torch.Tensor:
    """``sum_t kron(S_t, T_t)`` for scalers (..., N, a, b) and templates (N, w1, w2): (..., a*w1, b*w2), written
    into ``out`` when given.

    One matmul (scalers x templates) makes every tile; one permuting copy lays the tiles out as the weight.
    ``exact`` (expansion) uses :func:`engine.numerics.exact_matmul`, the same bits on every machine; training keeps
    the differentiable float32 matmul.
    """
    *lead, count, a, b = scalers.shape
    _, w1, w2 = templates.shape
    multiply = exact_matmul if exact else torch.matmul
    tiles = multiply(scalers.reshape(*lead, count, a * b).transpose(-1, -2), templates.reshape(count, w1 * w2))
    laid_out = tiles.reshape(*lead, a, b, w1, w2).transpose(-3, -2)
    if out is None:
        return laid_out.reshape(*lead, a * w1, b * w2)
    out.view(*lead, a, w1, b, w2).copy_(laid_out)
    return out


def decompose(stack: torch.Tensor, count: int, w1: int, w2: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Best rank-``count`` Kronecker approximation of a (L, a*w1, b*w2) stack of one kind's weights.

    The tiles of every block are the rows of one matrix X; its top ``count`` right singular vectors (from the
    eigenvectors of the small (w1*w2)^2 Gram matrix, in float64) are the templates and ``X @ V`` the scalers.
    Returns (templates (N, w1, w2), scalers (L, N, a, b), relative residual).
    """
    depth, m1, m2 = stack.shape
    a, b = m1 // w1, m2 // w2
    rows = to_tiles(stack, w1, w2).reshape(depth * a * b, w1 * w2).double()
    _, vectors = torch.linalg.eigh(rows.T @ rows)
    basis = vectors[:, -count:].flip(-1)  # eigh sorts ascending; largest first
    coords = rows @ basis
    residual = float((rows - coords @ basis.T).norm() / rows.norm().clamp_min(1e-30))
    templates = basis.T.reshape(count, w1, w2).float().contiguous()
    scalers = coords.reshape(depth, a, b, count).permute(0, 3, 1, 2).float().contiguous()
    return templates, scalers, residual


def width_key(spec: ViTSpec) -> str:
    """The key of a refined width: the weight shapes depend on the width and the MLP's hidden size only."""
    return f"{spec.embed_dim}x{spec.mlp_hidden}"


def layout(spec: ViTSpec, tile: tuple[int, int], counts: dict[str, int],
           refined: dict[str, dict[str, Any]] | None = None) -> dict[str, tuple[int, ...]]:
    w1, w2 = tile
    shapes = {k: v for k, v in state_shapes(spec).items() if not k.endswith(tuple(KINDS.values()))}
    for kind in KINDS:
        m1, m2 = weight_shape(spec, kind)
        shapes[f"templates.{kind}"] = (counts[kind], w1, w2)
        shapes[f"scalers.{kind}"] = (spec.depth, counts[kind], m1 // w1, m2 // w2)
    for key, refined_spec in (refined or {}).items():
        at = spec.replace(**refined_spec)
        if width_key(at) != key:
            raise LearngeneError(f"refined width {key!r} does not match its spec {refined_spec}")
        for kind in KINDS:
            m1, m2 = weight_shape(at, kind)
            shapes[f"refined.{key}.scalers.{kind}"] = (at.depth, counts[kind], m1 // w1, m2 // w2)
    return shapes


def _learngene_layout(learngene: Learngene) -> dict[str, tuple[int, ...]]:
    counts = {k: int(v) for k, v in learngene.meta["counts"].items()}
    return layout(learngene.base_spec, _tile(learngene), counts, learngene.meta.get("refined"))


def check_tile(spec: ViTSpec, tile: tuple[int, int]) -> None:
    w1, w2 = tile
    for field, size in (("embed_dim", spec.embed_dim), ("mlp_ratio", spec.mlp_hidden)):
        if size % w1 or size % w2:
            raise SpecError(f"{field} gives width {size}, not a multiple of the WAVE tile {w1}x{w2}", field)


def make_learngene(tensors: StateDict, spec: ViTSpec, tile: tuple[int, int], counts: dict[str, int],
                   **meta: Any) -> Learngene:
    """Package templates, scalers and the tensors outside the scheme (named as in the module docstring)."""
    check_tile(spec, tile)
    tensors = as_float32(tensors)
    check_layout(tensors, layout(spec, tile, counts, meta.get("refined")), "WAVE learngene")
    return Learngene(method=name, tensors=tensors,
                     meta={"spec": spec.to_dict(), "tile": list(tile), "counts": dict(counts), **meta})


def _default_tile(spec: ViTSpec) -> int:
    # The Gram matrix is (w1*w2)^2 and its eigendecomposition grows as (w1*w2)^3: 32x32 keeps the fit in seconds.
    return math.gcd(DEFAULT_TILE, spec.embed_dim, spec.mlp_hidden)


def stored_share(spec: ViTSpec, tile: tuple[int, int], count: int) -> float:
    """Templates plus scalers over the ancestry's weights of the four kinds, at ``count`` templates per kind
    (each capped at the kind's rank, as :func:`fit` caps it)."""
    w1, w2 = tile
    stored = whole = 0
    for kind in KINDS:
        m1, m2 = weight_shape(spec, kind)
        tiles = (m1 // w1) * (m2 // w2)
        n = min(count, w1 * w2, spec.depth * tiles)
        stored += n * w1 * w2 + spec.depth * n * tiles
        whole += spec.depth * m1 * m2
    return stored / whole


def train_defaults(spec: ViTSpec, tile: tuple[int, int] | None = None) -> dict[str, Any]:
    """Tile and template count for a trained WAVE learngene whose request leaves them out (``tile``: the one
    the request names, if any). The fit's defaults (32x32, 64 templates: sized for ViT-S/B, where they store a
    few percent of the blocks) where they condense the ancestry; on a small ancestry, where they would keep more
    than :data:`CONDENSED_SHARE` of its block weights, tiles of at most a quarter of the width and
    :data:`TRAIN_COUNT` templates per kind."""
    if tile is None:
        side = _default_tile(spec)
        if stored_share(spec, (side, side), DEFAULT_COUNT) > CONDENSED_SHARE:
            side = math.gcd(_largest_power_of_two(max(1, min(DEFAULT_TILE, spec.embed_dim // 4))),
                            spec.embed_dim, spec.mlp_hidden)
        tile = (side, side)
    condensed = stored_share(spec, tile, DEFAULT_COUNT) <= CONDENSED_SHARE
    return {"tile": list(tile), "counts": DEFAULT_COUNT if condensed else TRAIN_COUNT}


def _largest_power_of_two(n: int) -> int:
    return 1 << (n.bit_length() - 1)


def fit(ancestry: StateDict, ancestry_spec: ViTSpec, params: dict[str, Any]) -> Learngene:
    """Data-free templates from the ancestry (METHODS.md): params ``tile`` ([w1, w2], default 32x32 or the
    largest power-of-two divisor of the widths below it) and ``counts`` (one int for every kind or {kind: N},
    default 64, capped at the largest rank the kind allows)."""
    unknown = set(params) - {"tile", "counts"}
    if unknown:
        raise LearngeneError(f"wave fit takes tile, counts; got {sorted(unknown)}")
    require_features(ancestry_spec, FEATURES, name)
    check_layout(ancestry, state_shapes(ancestry_spec), "ancestry")
    w1, w2 = (int(x) for x in params.get("tile", [_default_tile(ancestry_spec)] * 2))
    try:
        check_tile(ancestry_spec, (w1, w2))
    except SpecError as exc:
        raise LearngeneError(str(exc)) from exc
    requested = params.get("counts", DEFAULT_COUNT)
    state = as_float32(ancestry)
    tensors: StateDict = {k: v for k, v in state.items() if not k.endswith(tuple(KINDS.values()))}
    counts: dict[str, int] = {}
    residuals: dict[str, float] = {}
    for kind, key in KINDS.items():
        m1, m2 = weight_shape(ancestry_spec, kind)
        rank = min(w1 * w2, ancestry_spec.depth * (m1 // w1) * (m2 // w2))
        counts[kind] = min(int(requested[kind] if isinstance(requested, dict) else requested), rank)
        templates, scalers, residuals[kind] = decompose(stack_blocks(state, ancestry_spec.depth, key),
                                                        counts[kind], w1, w2)
        tensors[f"templates.{kind}"], tensors[f"scalers.{kind}"] = templates, scalers
    return make_learngene(tensors, ancestry_spec, (w1, w2), counts, fit={"relative_residual": residuals})


def _tile(learngene: Learngene) -> tuple[int, int]:
    w1, w2 = learngene.meta["tile"]
    return int(w1), int(w2)


def resolve_spec(learngene: Learngene, partial: dict[str, Any]) -> ViTSpec:
    """Depth, width (a multiple of the tile), heads, MLP ratio, classes and image size are free."""
    spec = merge_request(learngene.base_spec, partial, {"depth", "embed_dim", "num_heads", "mlp_ratio",
                                                         "num_classes", "img_size"}, name)
    check_tile(spec, _tile(learngene))
    return spec


def candidate_specs(learngene: Learngene) -> list[ViTSpec]:
    """Depths up to twice the auxiliary depth, times head counts up to twice the auxiliary's at its head
    dimension, where the width fits the tile."""
    base = learngene.base_spec
    w1, w2 = _tile(learngene)
    specs = []
    for heads in range(1, 2 * base.num_heads + 1):
        width = heads * base.head_dim
        spec = base.replace(embed_dim=width, num_heads=heads)
        if all(size % w1 == 0 and size % w2 == 0 for size in (width, spec.mlp_hidden)):
            specs.extend(spec.replace(depth=depth) for depth in range(1, 2 * base.depth + 1))
    return specs


def resample_scalers(learngene: Learngene, spec: ViTSpec) -> dict[str, torch.Tensor]:
    """Scalers (L, N_k, a, b) for ``spec``: a refined width's own, resampled along depth; otherwise the auxiliary
    ones, depth by relative position, then the grid."""
    w1, w2 = _tile(learngene)
    key = width_key(spec)
    if key in learngene.meta.get("refined", {}):
        return {kind: resample_depth(learngene.tensors[f"refined.{key}.scalers.{kind}"], spec.depth)
                for kind in KINDS}
    resampled = {}
    for kind in KINDS:
        scalers = resample_depth(learngene.tensors[f"scalers.{kind}"], spec.depth)
        m1, m2 = weight_shape(spec, kind)
        if kind == "qkv":
            scalers = resize_segments(scalers, 2, 3, spec.embed_dim // w1)
        else:
            scalers = resize_dim(scalers, 2, m1 // w1)
        resampled[kind] = resize_dim(scalers, 3, m2 // w2)
    return resampled


def _resize_outside(tensor_name: str, stack: torch.Tensor, spec: ViTSpec) -> torch.Tensor:
    """A (L, width) stack of a per-block vector outside the scheme, resized to ``spec``'s width."""
    if tensor_name == "attn.qkv.bias":
        return resize_segments(stack, 1, 3, spec.embed_dim)
    if tensor_name == "mlp.fc1.bias":
        return resize_dim(stack, 1, spec.mlp_hidden)
    return resize_dim(stack, 1, spec.embed_dim)


def at_size(learngene: Learngene, spec: ViTSpec) -> Learngene:
    """The learngene resized to ``spec`` (which keeps its classes): the same templates, scalers for ``spec``
    (:func:`resample_scalers`), and every tensor outside the scheme resized. A WAVE learngene in its own right:
    expanding it at its own size composes exactly the weights :func:`expand` gives for ``spec``, and the scaler
    refinement trains its scalers."""
    learngene.require(name)
    base = learngene.base_spec
    if spec.num_classes != base.num_classes:
        raise SpecError(f"at_size keeps the learngene's {base.num_classes} classes", "num_classes")
    tensors = learngene.tensors
    check_layout(tensors, _learngene_layout(learngene), "WAVE learngene")
    width = spec.embed_dim
    out: StateDict = {
        f"{spec.final_norm}.weight": resize_dim(tensors[f"{base.final_norm}.weight"], 0, width),
        f"{spec.final_norm}.bias": resize_dim(tensors[f"{base.final_norm}.bias"], 0, width),
    }
    for key in state_shapes(spec.replace(depth=0)):
        if key in _STEM_WIDTH_DIM:
            out[key] = resize_dim(tensors[key], _STEM_WIDTH_DIM[key], width)
    for kind, scalers in resample_scalers(learngene, spec).items():
        out[f"templates.{kind}"] = tensors[f"templates.{kind}"]
        out[f"scalers.{kind}"] = scalers
    for tensor_name in _outside(spec):
        stack = resample_depth(stack_blocks(tensors, base.depth, tensor_name), spec.depth)
        stack = _resize_outside(tensor_name, stack, spec)
        for i in range(spec.depth):
            out[block_key(i, tensor_name)] = stack[i]
    for key, tensor in head_state(tensors).items():
        out[key] = resize_dim(tensor, 1, width) if key.endswith(".weight") else tensor
    return Learngene(method=name, tensors=out, meta={"spec": spec.to_dict(), "tile": list(_tile(learngene)),
                                                     "counts": dict(learngene.meta["counts"])})


def expand(learngene: Learngene, spec: ViTSpec, seed: int) -> Descendant:
    learngene.require(name)
    spec = resolve_spec(learngene, spec.to_dict())
    base = learngene.base_spec
    sized = at_size(learngene, spec.replace(num_classes=base.num_classes)).tensors
    head = head_state(sized)
    state: StateDict = {k: v for k, v in sized.items() if not k.startswith(("templates.", "scalers.")) and k not in head}
    for kind in KINDS:
        # Each kind's blocks are composed in a few groups straight into one preallocated stack: few large ops beat
        # many small ones on a busy CPU, and the only transient is a group's tiles (a whole kind at once would
        # hold a second copy of a third of the weights, and fragment the heap).
        scalers = sized[f"scalers.{kind}"]
        stack = torch.empty(spec.depth, *weight_shape(spec, kind))
        step = -(-spec.depth // COMPOSE_GROUPS)
        for start in range(0, spec.depth, step):
            compose(scalers[start:start + step], sized[f"templates.{kind}"], out=stack[start:start + step],
                    exact=True)
        for i in range(spec.depth):
            state[block_key(i, KINDS[kind])] = stack[i]
    return assemble(state, spec, seed, head)


@dataclass(frozen=True)
class SpanCheck:
    rank: int  # rank of the weight's (a*b, w1*w2) tile matrix
    relative_residual: float  # |tiles - their projection on the templates' span| / |tiles|


def span_check(weight: torch.Tensor, templates: torch.Tensor) -> SpanCheck:
    """How far ``weight`` is from the span of ``templates`` (N, w1, w2): the check METHODS.md promises anyone
    can run on an expanded weight (rank <= N and a residual at rounding level)."""
    _, w1, w2 = templates.shape
    tiles = to_tiles(weight, w1, w2)
    rows = tiles.double()
    basis = torch.linalg.qr(templates.reshape(len(templates), w1 * w2).double().T).Q
    residual = rows - (rows @ basis) @ basis.T
    # The rank at the weight's own precision: float32 rounding must not count as extra directions.
    return SpanCheck(rank=int(torch.linalg.matrix_rank(tiles)),
                     relative_residual=float(residual.norm() / rows.norm().clamp_min(1e-30)))
