"""Shared tensor helpers for the methods: timm ViT key names, evenly spaced selection, resizing along a
dimension, resampling along depth, seeded timm initialization of parts of a descendant.

Every method works on plain timm state dicts (see METHODS.md for the key names); what more than one method needs
lives here, once.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import timm
import torch
from torch import nn

from engine.costs import block_shapes, head_modules, spec_block_shapes, state_shapes
from engine.methods.base import Descendant, LearngeneError, StateDict
from engine.numerics import normal_, resample_grid, uniform_
from engine.spec import ViTSpec

#: The tensors of one plain transformer block, by their name inside ``blocks.{i}.`` (timm order).
BLOCK_TENSORS: tuple[str, ...] = tuple(block_shapes(1, 1))
#: Tensors outside the blocks that carry the input side: patch embedding, class, register and distillation
#: tokens, position embedding, pre-norm. A spec has those of its family only.
STEM_TENSORS: tuple[str, ...] = ("patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "reg_token",
                                 "dist_token", "pos_embed", "norm_pre.weight", "norm_pre.bias")


def block_tensors(spec: ViTSpec) -> tuple[str, ...]:
    """The tensors of one block of ``spec``'s family (no qkv bias, layer-scale gammas...), in timm order."""
    return tuple(spec_block_shapes(spec, 1, 1))


def block_key(index: int, name: str) -> str:
    return f"blocks.{index}.{name}"


def pos_prefix(spec: ViTSpec) -> list[str]:
    """The prefix tokens that have a position in ``pos_embed``, in timm's order (class, distillation, registers);
    none when ``no_embed_class``."""
    if spec.no_embed_class:
        return []
    return (["cls"] if spec.class_token else []) + (["dist"] if spec.distilled else []) + \
        [f"reg{r}" for r in range(spec.reg_tokens)]


def resample_pos_embed(pos_embed: torch.Tensor, spec: ViTSpec) -> torch.Tensor:
    """``pos_embed`` (with ``spec``'s prefix positions, on any square grid) on ``spec``'s grid by antialiased
    bicubic resampling, as timm's ``resample_abs_pos_embed`` adapts pretrained weights to another image size, but
    computed in a fixed order (:func:`engine.numerics.resample_grid`): torch's bicubic kernel gives other bits on
    CPUs with and without AVX2. Unchanged when the grid already fits."""
    prefix = len(pos_prefix(spec))
    grid = spec.img_size // spec.patch_size
    if pos_embed.shape[1] == prefix + grid * grid:
        return pos_embed
    return resample_grid(pos_embed, prefix, (grid, grid))


def head_state(tensors: StateDict) -> StateDict:
    """The classifier heads among ``tensors`` (``head.*``, and a distilled model's ``head_dist.*``)."""
    return {k: v for k, v in tensors.items() if k.startswith(("head.", "head_dist."))}


def check_layout(tensors: StateDict, shapes: dict[str, tuple[int, ...]], what: str) -> None:
    """Refuse tensors whose keys or shapes are not exactly ``shapes`` (e.g. an ancestry with layer scale or
    register tokens, or a learngene missing a tensor): a clear error here beats a KeyError deep in a method."""
    missing = sorted(set(shapes) - set(tensors))
    unexpected = sorted(set(tensors) - set(shapes))
    wrong = sorted(k for k in set(shapes) & set(tensors) if tuple(tensors[k].shape) != shapes[k])
    if missing or unexpected or wrong:
        raise LearngeneError(
            f"{what} does not have the expected tensors: missing {missing[:4]}, unexpected {unexpected[:4]}, "
            f"wrong shape {wrong[:4]}")


def as_float32(state: StateDict) -> StateDict:
    """Ancestries may be stored in half precision; every method computes and stores float32."""
    return {k: v if v.dtype == torch.float32 else v.float() for k, v in state.items()}


def stack_blocks(state: StateDict, depth: int, name: str) -> torch.Tensor:
    """``(depth, *shape)``: tensor ``name`` of blocks 0..depth-1, one copy."""
    return torch.stack([state[block_key(i, name)] for i in range(depth)])


def select_indices(total: int, size: int) -> torch.Tensor:
    """Evenly spaced indices (weight selection's rule): ``arange(size) * (total // size)`` when ``size`` divides
    ``total``, else ``round(linspace(0, total - 1, size))`` (ties to even)."""
    if not 0 < size <= total:
        raise ValueError(f"cannot select {size} of {total}")
    if total % size == 0:
        return torch.arange(size) * (total // size)
    return torch.linspace(0, total - 1, size, dtype=torch.float64).round().long()


def _lerp_at(tensor: torch.Tensor, dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of ``tensor`` along ``dim`` at fractional ``positions`` (within [0, n-1])."""
    n = tensor.shape[dim]
    low = positions.floor().long().clamp(max=n - 1)
    high = (low + 1).clamp(max=n - 1)
    shape = [1] * tensor.ndim
    shape[dim] = -1
    weight = (positions - low).to(tensor.dtype).reshape(shape)
    return tensor.index_select(dim, low) * (1 - weight) + tensor.index_select(dim, high) * weight


def resize_dim(tensor: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """Resize one dimension: evenly spaced selection when shrinking, linear interpolation (end points kept)
    when growing, the tensor itself when the size is unchanged."""
    n = tensor.shape[dim]
    if size == n:
        return tensor
    if size < n:
        return tensor.index_select(dim, select_indices(n, size))
    return _lerp_at(tensor, dim, torch.linspace(0, n - 1, size, dtype=torch.float64))


def resize_segments(tensor: torch.Tensor, dim: int, segments: int, size: int) -> torch.Tensor:
    """Resize each of ``segments`` equal parts of ``dim`` to ``size`` (qkv's q|k|v rows resized apart)."""
    parts = tensor.chunk(segments, dim)
    return torch.cat([resize_dim(p, dim, size) for p in parts], dim)


def resample_depth(stack: torch.Tensor, depth: int) -> torch.Tensor:
    """Resample a ``(n, ...)`` per-block stack to ``depth`` blocks by relative position: block i of ``depth`` reads
    the stack at ``i / depth * n`` (linear interpolation), so equal depths give the stack back unchanged."""
    n = stack.shape[0]
    if depth == n:
        return stack
    positions = (torch.arange(depth, dtype=torch.float64) * n / depth).clamp(max=n - 1)
    return _lerp_at(stack, 0, positions)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run with the CPU generator seeded, restoring the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        yield


def block_width(spec: ViTSpec, index: int) -> tuple[int, int, float]:
    """(embed_dim, num_heads, mlp_ratio) of block ``index`` (front blocks of a stitched spec differ)."""
    if spec.front is not None and index < spec.front.depth:
        return spec.front.embed_dim, spec.front.num_heads, spec.front.mlp_ratio
    return spec.embed_dim, spec.num_heads, spec.mlp_ratio


def _truncated_normal_views(shapes: dict[str, tuple[int, ...]], keys: list[str],
                            generator: torch.Generator | None) -> StateDict:
    """timm's truncated normal (std 0.02, cut at +-2) for ``keys``, drawn by one call into one buffer in the order
    of ``keys`` and handed out as views: per-tensor draws cost a few kernel launches each, which dominates on small
    or busy CPUs. ``generator`` None draws from torch's global one."""
    drawn = torch.empty(sum(math.prod(shapes[k]) for k in keys))
    normal_(drawn, std=0.02, cut=2.0, generator=generator)
    state: StateDict = {}
    offset = 0
    for key in keys:
        size = math.prod(shapes[key])
        state[key] = drawn[offset:offset + size].view(shapes[key])
        offset += size
    return state


def _constant(key: str, shape: tuple[int, ...], spec: ViTSpec) -> torch.Tensor:
    """The tensors timm starts at a constant: LayerScale gammas at ``init_values``, norm weights at 1, biases at 0.
    Raises :class:`LearngeneError` for a tensor no rule covers (a new timm feature must say how it starts)."""
    module, _, part = key.rpartition(".")
    if part == "gamma":
        return torch.full(shape, float(spec.init_values or 0.0))  # timm's LayerScale
    if part == "weight" and len(shape) == 1 and "norm" in module.rpartition(".")[2]:
        return torch.ones(shape)
    if part == "bias" and len(shape) == 1:
        return torch.zeros(shape)
    raise LearngeneError(f"no initialization rule for {key} {tuple(shape)}")


def timm_random_init(spec: ViTSpec, modules: list[str], seed: int) -> StateDict:
    """timm's default ViT initialization (``init_weights_vit_timm``: linear weights truncated normal with std 0.02
    cut at +-2, biases 0; LayerNorm weights 1, biases 0) of some modules of ``spec`` (``"blocks.{i}"`` or
    ``"head"``), drawn from a generator seeded with ``seed``.

    Every linear weight is drawn by one call into one buffer, in the order of ``modules``, then handed out as
    views (:func:`_truncated_normal_views`).
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for module in modules:
        if module in ("head", "head_dist"):
            shapes.update({f"{module}.weight": (spec.num_classes, spec.embed_dim),
                           f"{module}.bias": (spec.num_classes,)})
        else:
            dim, _, mlp_ratio = block_width(spec, int(module.split(".")[1]))
            block = spec_block_shapes(spec, dim, int(dim * mlp_ratio))
            shapes.update({f"{module}.{k}": v for k, v in block.items()})
    weights = [k for k, shape in shapes.items() if len(shape) == 2]  # the 2-D tensors are the linear weights
    with seeded(seed):  # timm's trunc_normal_(std=0.02, a=-2, b=2), the same bits on every CPU
        state = _truncated_normal_views(shapes, weights, generator=None)
    return {key: state[key] if key in state else _constant(key, shape, spec) for key, shape in shapes.items()}


def make_descendant(state: StateDict, spec: ViTSpec, **details: Any) -> Descendant:
    return Descendant(state_dict=state, architecture=spec.architecture, model_args=spec.timm_model_args(),
                      details=details)


def assemble(state: StateDict, spec: ViTSpec, seed: int,
             head: tuple[torch.Tensor, torch.Tensor] | StateDict | None,
             fresh: list[str] | None = None, **details: Any) -> Descendant:
    """The descendant: ``state`` plus its heads and any ``fresh`` modules (``"blocks.{i}"``).

    The learngene's ``head`` (weight, bias, already at the descendant's width; or a dict of timm head keys, which
    a distilled spec's ``head_dist.*`` join) is kept only for exactly its classes and only whole; otherwise every
    head gets timm's fresh init (another task's head would only mislead). Fresh modules and fresh heads come from
    one draw seeded with ``seed``, so they never repeat each other's numbers.
    """
    modules = list(fresh or [])
    heads = head_modules(spec)
    given = {"head.weight": head[0], "head.bias": head[1]} if isinstance(head, tuple) else dict(head or {})
    wanted = [f"{module}.{part}" for module in heads for part in ("weight", "bias")]
    details["head"] = "none"
    if heads:
        if all(key in given and given[key].shape[0] == spec.num_classes for key in wanted):
            state.update({key: given[key] for key in wanted})
            details["head"] = "inherited"
        else:
            modules.extend(heads)
            details["head"] = "fresh"
    if modules:
        state.update(timm_random_init(spec, modules, seed))
    if "pos_embed" in state:  # another image size than the learngene's (same patch size)
        state["pos_embed"] = resample_pos_embed(state["pos_embed"], spec)
    return make_descendant(state, spec, **details)


def refresh_head(descendant: Descendant, spec: ViTSpec, seed: int) -> None:
    """Replace an inherited head with timm's fresh init: for fine-tuning on a new task that happens to have the
    learngene's number of classes, where the old head's class order means nothing."""
    if descendant.details.get("head") != "inherited":
        return
    descendant.state_dict.update(timm_random_init(spec, ["head"], seed))
    descendant.details["head"] = "fresh"


def build_model(spec: ViTSpec) -> nn.Module:
    """The descendant architecture with timm's default initialization (from the global RNG)."""
    import engine.stitched  # noqa: F401  (registers the stitched architecture with timm)

    return timm.create_model(spec.architecture, pretrained=False, **spec.timm_model_args())


#: Prefix tokens timm's ViT initializes with ``normal_(std=1e-6)``; DeiT's distillation token is a truncated
#: normal (std 0.02) like the position embedding.
_TINY_TOKENS = ("cls_token", "reg_token")
_TRUNCATED_TOKENS = ("pos_embed", "dist_token")


def seeded_state(spec: ViTSpec, seed: int) -> StateDict:
    """timm's default initialization of ``spec`` (``init_weights_vit_timm``; torch's own default for the patch
    embedding's convolution) as a state dict, drawn from a generator seeded with ``seed``, with the same bits on
    every CPU, and without building the model.

    The distributions are timm's, the bits are not: timm's draws depend on the CPU (its truncated normals go
    through torch's ``erfinv``, which MKL computes differently by CPU and ``MKL_CBWR``; ``normal_`` is a
    vectorized Box-Muller on AVX2 only; ``kaiming_uniform_`` fuses ``a + (b - a) * u`` on AVX2), so every random
    tensor is drawn by :mod:`engine.numerics`: all truncated normals (linear weights, position embedding,
    distillation token) in one call into one buffer, in state-dict order, then the prefix tokens, then the patch
    embedding. One draw, not timm's followed by ours: this is the whole cost of a random descendant.

    Raises :class:`LearngeneError` for a tensor no rule here covers (a new timm feature must say how it starts)."""
    shapes = state_shapes(spec)
    generator = torch.Generator().manual_seed(seed)
    truncated = [k for k, shape in shapes.items() if len(shape) == 2 or k in _TRUNCATED_TOKENS]
    state = _truncated_normal_views(shapes, truncated, generator)
    for key in _TINY_TOKENS:
        if key in shapes:
            state[key] = normal_(torch.empty(shapes[key]), std=1e-6, generator=generator)
    patch = shapes["patch_embed.proj.weight"]
    bound = 1.0 / math.sqrt(math.prod(patch[1:]))  # torch's default: kaiming_uniform_(a=sqrt(5)), bias alike
    for key in ("patch_embed.proj.weight", "patch_embed.proj.bias"):
        if key in shapes:
            state[key] = uniform_(torch.empty(shapes[key]), bound, generator)
    for key, shape in shapes.items():
        if key not in state:
            state[key] = _constant(key, shape, spec)
    return {key: state[key] for key in shapes}  # timm's order
