"""Size and compute of a descendant, by formula: no model is built, so the API can cost a request cheaply.

:func:`state_shapes` is the single description of a descendant's tensor layout (timm key names and shapes);
:func:`param_count` sums it, and tests check it against ``timm.create_model`` for many specs.

FLOPs convention of :func:`gflops`: forward pass of one image (batch 1), 2 FLOPs per multiply-add, counting the
patch-embedding convolution, every linear layer (qkv, attention projection, fc1, fc2, the stitch of a stitched
descendant, the head) and the two attention matmuls ``Q K^T`` and ``A V``. Norms, softmax, GELU, bias and residual
additions, pooling and the position-embedding add are not counted (they are a few percent and memory-bound).
This matches ``torch.utils.flop_counter.FlopCounterMode`` on the built model, and is twice timm's "GMACs".

:func:`validate_spec` lives here rather than beside the spec's other checks because its last limit is the
parameter count: the spec module stays below this one.
"""
from __future__ import annotations

import math

from engine.spec import SpecError, SpecLimits, ViTSpec, validate_structure

Shape = tuple[int, ...]


def block_shapes(dim: int, hidden: int, qkv_bias: bool = True, layer_scale: bool = False) -> dict[str, Shape]:
    """The tensors of one timm ``Block`` (qkv fused row-wise as q|k|v), in timm's state-dict order: without
    ``attn.qkv.bias`` when ``qkv_bias`` is false, with the layer-scale gammas ``ls1.gamma`` / ``ls2.gamma`` when
    ``layer_scale``."""
    shapes: dict[str, Shape] = {
        "norm1.weight": (dim,),
        "norm1.bias": (dim,),
        "attn.qkv.weight": (3 * dim, dim),
        "attn.qkv.bias": (3 * dim,),
        "attn.proj.weight": (dim, dim),
        "attn.proj.bias": (dim,),
        "ls1.gamma": (dim,),
        "norm2.weight": (dim,),
        "norm2.bias": (dim,),
        "mlp.fc1.weight": (hidden, dim),
        "mlp.fc1.bias": (hidden,),
        "mlp.fc2.weight": (dim, hidden),
        "mlp.fc2.bias": (dim,),
        "ls2.gamma": (dim,),
    }
    if not qkv_bias:
        del shapes["attn.qkv.bias"]
    if not layer_scale:
        del shapes["ls1.gamma"], shapes["ls2.gamma"]
    return shapes


def spec_block_shapes(spec: ViTSpec, dim: int | None = None, hidden: int | None = None) -> dict[str, Shape]:
    """:func:`block_shapes` of ``spec``'s family, at its width unless ``dim`` / ``hidden`` say otherwise."""
    return block_shapes(spec.embed_dim if dim is None else dim, spec.mlp_hidden if hidden is None else hidden,
                        spec.qkv_bias, spec.init_values is not None)


def _parts(spec: ViTSpec) -> list[tuple[int, int, int]]:
    """(width, MLP hidden, number of blocks) of each part: the front part of a stitched spec, then the rest."""
    if spec.front is None:
        return [(spec.embed_dim, spec.mlp_hidden, spec.depth)]
    front = spec.front
    return [
        (front.embed_dim, int(front.embed_dim * front.mlp_ratio), front.depth),
        (spec.embed_dim, spec.mlp_hidden, spec.depth - front.depth),
    ]


def _stem_shapes(spec: ViTSpec, stem_dim: int) -> dict[str, Shape]:
    """The tensors before the blocks: prefix tokens, position and patch embeddings, pre-norm."""
    shapes: dict[str, Shape] = {}
    if spec.class_token:
        shapes["cls_token"] = (1, 1, stem_dim)
    if spec.reg_tokens:
        shapes["reg_token"] = (1, spec.reg_tokens, stem_dim)
    shapes["pos_embed"] = (1, spec.pos_embed_len, stem_dim)
    if spec.distilled:  # timm's DeiT registers it after the position embedding
        shapes["dist_token"] = (1, 1, stem_dim)
    shapes["patch_embed.proj.weight"] = (stem_dim, spec.in_chans, spec.patch_size, spec.patch_size)
    if not spec.pre_norm:  # timm drops the patch bias under a pre-norm (CLIP)
        shapes["patch_embed.proj.bias"] = (stem_dim,)
    else:
        shapes["norm_pre.weight"] = (stem_dim,)
        shapes["norm_pre.bias"] = (stem_dim,)
    return shapes


def _tail_shapes(spec: ViTSpec, stem_dim: int) -> dict[str, Shape]:
    """The tensors after the blocks: a stitched descendant's stitch, the final norm, the heads."""
    shapes: dict[str, Shape] = {}
    if stem_dim != spec.embed_dim:
        shapes["stitch.weight"] = (spec.embed_dim, stem_dim)
        shapes["stitch.bias"] = (spec.embed_dim,)
    shapes[f"{spec.final_norm}.weight"] = (spec.embed_dim,)
    shapes[f"{spec.final_norm}.bias"] = (spec.embed_dim,)
    for head in head_modules(spec):
        shapes[f"{head}.weight"] = (spec.num_classes, spec.embed_dim)
        shapes[f"{head}.bias"] = (spec.num_classes,)
    return shapes


def state_shapes(spec: ViTSpec) -> dict[str, Shape]:
    """Every tensor of the descendant's state dict (timm names, timm order) with its shape."""
    parts = _parts(spec)
    stem_dim = parts[0][0]
    shapes = _stem_shapes(spec, stem_dim)
    index = 0
    for dim, hidden, count in parts:
        block = spec_block_shapes(spec, dim, hidden)
        for _ in range(count):
            shapes.update({f"blocks.{index}.{name}": shape for name, shape in block.items()})
            index += 1
    shapes.update(_tail_shapes(spec, stem_dim))
    return shapes


def head_modules(spec: ViTSpec) -> list[str]:
    """The classifier heads: ``head``, and DeiT's ``head_dist`` when distilled; none without classes."""
    if spec.num_classes <= 0:
        return []
    return ["head", "head_dist"] if spec.distilled else ["head"]


def _numel(shapes: dict[str, Shape]) -> int:
    return sum(math.prod(shape) for shape in shapes.values())


def param_count(spec: ViTSpec) -> int:
    """Exactly ``sum(p.numel() for p in model.state_dict().values())`` of the built descendant, without listing
    every block: the budget planner costs thousands of candidates per request."""
    parts = _parts(spec)
    stem_dim = parts[0][0]
    blocks = sum(count * _numel(spec_block_shapes(spec, dim, hidden)) for dim, hidden, count in parts)
    return _numel(_stem_shapes(spec, stem_dim)) + blocks + _numel(_tail_shapes(spec, stem_dim))


def gflops(spec: ViTSpec) -> float:
    """Forward GFLOPs for one image (see the module docstring for what is counted)."""
    tokens = spec.num_tokens
    parts = _parts(spec)
    stem_dim = parts[0][0]
    macs = spec.num_patches * stem_dim * spec.in_chans * spec.patch_size ** 2
    for dim, hidden, count in parts:
        per_block = (
            tokens * dim * 3 * dim  # qkv
            + 2 * tokens * tokens * dim  # Q K^T and A V, all heads together
            + tokens * dim * dim  # attention projection
            + 2 * tokens * dim * hidden  # fc1 and fc2
        )
        macs += count * per_block
    if stem_dim != spec.embed_dim:
        macs += tokens * stem_dim * spec.embed_dim
    macs += len(head_modules(spec)) * spec.embed_dim * spec.num_classes
    return 2 * macs / 1e9


def preference_key(spec: ViTSpec) -> tuple[int, float]:
    """Sort key putting the preferred spec first: the most parameters, then the fewest GFLOPs."""
    return (-param_count(spec), gflops(spec))


def validate_spec(spec: ViTSpec, limits: SpecLimits = SpecLimits()) -> None:
    """Check ``spec`` is buildable and within ``limits``. Raises :class:`SpecError` naming the field."""
    validate_structure(spec)
    widths = [("", spec.embed_dim, spec.num_heads, spec.mlp_ratio)]
    if spec.front is not None:
        widths.append(("front.", spec.front.embed_dim, spec.front.num_heads, spec.front.mlp_ratio))
    for prefix, embed_dim, num_heads, mlp_ratio in widths:
        if embed_dim > limits.max_embed_dim:
            raise SpecError(f"{prefix}embed_dim {embed_dim} is above the limit {limits.max_embed_dim}",
                            f"{prefix}embed_dim")
        if num_heads > limits.max_num_heads:
            raise SpecError(f"{prefix}num_heads {num_heads} is above the limit {limits.max_num_heads}",
                            f"{prefix}num_heads")
        head_dim = embed_dim // num_heads
        if not limits.min_head_dim <= head_dim <= limits.max_head_dim:
            raise SpecError(
                f"head dimension {head_dim} ({prefix}embed_dim / {prefix}num_heads) must be within "
                f"[{limits.min_head_dim}, {limits.max_head_dim}]", f"{prefix}num_heads")
        if not 0 < mlp_ratio <= limits.max_mlp_ratio:
            raise SpecError(f"{prefix}mlp_ratio must be in (0, {limits.max_mlp_ratio}], got {mlp_ratio}",
                            f"{prefix}mlp_ratio")
    for field, value, limit in (
        ("depth", spec.depth, limits.max_depth),
        ("num_classes", spec.num_classes, limits.max_num_classes),
        ("img_size", spec.img_size, limits.max_img_size),
        ("in_chans", spec.in_chans, limits.max_in_chans),
        ("reg_tokens", spec.reg_tokens, limits.max_reg_tokens),
    ):
        if value > limit:
            raise SpecError(f"{field} {value} is above the limit {limit}", field)
    params = param_count(spec)
    if params > limits.max_params:
        # No single field is at fault: depth and width together make the size.
        raise SpecError(f"the spec has {params:,} parameters, above the limit {limits.max_params:,}", "spec")
