"""Size and compute of a descendant, by formula: no model is built, so the API can cost a request cheaply.

:func:`state_shapes` is the single description of a descendant's tensor layout (timm key names and shapes);
:func:`param_count` sums it, and tests check it against ``timm.create_model`` for many specs.

FLOPs convention of :func:`gflops`: forward pass of one image (batch 1), 2 FLOPs per multiply-add, counting the
patch-embedding convolution, every linear layer (qkv, attention projection, fc1, fc2, the stitch of a stitched
descendant, the head) and the two attention matmuls ``Q K^T`` and ``A V``. Norms, softmax, GELU, bias and residual
additions, pooling and the position-embedding add are not counted (they are a few percent and memory-bound).
This matches ``torch.utils.flop_counter.FlopCounterMode`` on the built model, and is twice timm's "GMACs".
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.spec import ViTSpec

Shape = tuple[int, ...]


def block_shapes(dim: int, hidden: int) -> dict[str, Shape]:
    """The tensors of one timm ``Block`` (qkv fused row-wise as q|k|v), in timm's state-dict order."""
    return {
        "norm1.weight": (dim,),
        "norm1.bias": (dim,),
        "attn.qkv.weight": (3 * dim, dim),
        "attn.qkv.bias": (3 * dim,),
        "attn.proj.weight": (dim, dim),
        "attn.proj.bias": (dim,),
        "norm2.weight": (dim,),
        "norm2.bias": (dim,),
        "mlp.fc1.weight": (hidden, dim),
        "mlp.fc1.bias": (hidden,),
        "mlp.fc2.weight": (dim, hidden),
        "mlp.fc2.bias": (dim,),
    }


def _parts(spec: ViTSpec) -> list[tuple[int, int, int]]:
    """(width, MLP hidden, number of blocks) of each part: the front part of a stitched spec, then the rest."""
    if spec.front is None:
        return [(spec.embed_dim, spec.mlp_hidden, spec.depth)]
    front = spec.front
    return [
        (front.embed_dim, int(front.embed_dim * front.mlp_ratio), front.depth),
        (spec.embed_dim, spec.mlp_hidden, spec.depth - front.depth),
    ]


def state_shapes(spec: ViTSpec) -> dict[str, Shape]:
    """Every tensor of the descendant's state dict (timm names, timm order) with its shape."""
    parts = _parts(spec)
    stem_dim = parts[0][0]
    shapes: dict[str, Shape] = {
        "cls_token": (1, 1, stem_dim),
        "pos_embed": (1, spec.num_tokens, stem_dim),
        "patch_embed.proj.weight": (stem_dim, spec.in_chans, spec.patch_size, spec.patch_size),
        "patch_embed.proj.bias": (stem_dim,),
    }
    if not spec.class_token:
        del shapes["cls_token"]
    index = 0
    for dim, hidden, count in parts:
        for _ in range(count):
            shapes.update({f"blocks.{index}.{name}": shape for name, shape in block_shapes(dim, hidden).items()})
            index += 1
    if stem_dim != spec.embed_dim:
        shapes["stitch.weight"] = (spec.embed_dim, stem_dim)
        shapes["stitch.bias"] = (spec.embed_dim,)
    shapes[f"{spec.final_norm}.weight"] = (spec.embed_dim,)
    shapes[f"{spec.final_norm}.bias"] = (spec.embed_dim,)
    if spec.num_classes > 0:
        shapes["head.weight"] = (spec.num_classes, spec.embed_dim)
        shapes["head.bias"] = (spec.num_classes,)
    return shapes


def param_count(spec: ViTSpec) -> int:
    """Exactly ``sum(p.numel() for p in model.state_dict().values())`` of the built descendant."""
    total = 0
    for shape in state_shapes(spec).values():
        size = 1
        for n in shape:
            size *= n
        total += size
    return total


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
    macs += spec.embed_dim * spec.num_classes
    return 2 * macs / 1e9


def preference_key(spec: ViTSpec) -> tuple[int, float]:
    """Sort key putting the preferred spec first: the most parameters, then the fewest GFLOPs."""
    return (-param_count(spec), gflops(spec))
