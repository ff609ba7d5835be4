"""Weight selection (Xu et al., ICLR 2024), METHODS.md section 5: a smaller descendant copied out of the ancestry.

The learngene is the ancestry itself: method ``"weight-selection"``, the ancestry's state dict (timm names,
float32), ``meta = {"spec": <ancestry spec>}``. Only shrinks; data-free.

The descendant takes the first L blocks (the paper's rule; :func:`block_indices` also offers ``"spread"``, L
evenly spaced blocks, which the Learngene Pool's students may ask for), and in every dimension the evenly spaced
indices of :func:`engine.vit.select_indices`; each index set is the same for every layer:

- the embedding (residual stream) width: ``select(D_a, D)``, for every tensor that reads or writes the stream;
- the MLP hidden width: ``select(H_a, H)``;
- attention: heads and head dimensions are selected separately, ``select(heads_a, heads)`` and
  ``select(head_dim_a, head_dim)``, so each descendant head is made of one ancestry head's dimensions
  (**our choice**: a flat selection over the fused rows would mix heads, and q with k). The same inner index set
  picks rows inside each of q, k and v of the fused ``qkv`` and the columns of the attention projection;
- the position embedding: the class-token position is kept when the descendant has a class token (dropped when
  it has not), and the patch grid is selected along its rows and columns (``select(grid_a, grid)`` each) so a
  smaller image keeps a regular grid of positions; a larger image's positions are resampled from the whole grid
  by timm's ``resample_abs_pos_embed`` (nothing to select);
- the patch embedding conv: output channels by the embedding width; input channels and kernel untouched (the
  patch size and input channels are fixed).

Every ViT family feature is carried (:data:`FEATURES`): layer-scale gammas, the register, class and distillation
tokens and ``norm_pre`` are selected along the embedding width like any tensor of the stream, the distillation
head like the head; the prefix tokens' positions (when the position embedding has them) keep theirs. A same-size,
same-depth descendant is the ancestry, bit for bit.
"""
from __future__ import annotations

from typing import Any

import torch

from engine.costs import head_modules, state_shapes
from engine.methods.base import Descendant, Learngene, LearngeneError, StateDict
from engine.methods.params import STUDENT_BLOCKS
from engine.spec import FAMILY_DEFAULTS, FREE_FIELDS, SpecError, ViTSpec, merge_request, require_features
from engine.vit import as_float32, assemble, block_key, block_tensors, check_layout, pos_prefix, select_indices

name = "weight-selection"

#: The ViT family features this method carries: all of them.
FEATURES = frozenset(FAMILY_DEFAULTS)


def block_indices(ancestry_depth: int, depth: int, blocks: str = "first") -> list[int]:
    """The ancestry's blocks that become the descendant's ``depth`` blocks, in order: the first ``depth`` (the
    paper's rule), or, with ``"spread"``, ``depth`` evenly spaced ones from the first to the last, both ends
    included (``round(linspace(0, ancestry_depth - 1, depth))``, unlike :func:`engine.vit.select_indices`, which
    drops the last when ``depth`` divides the ancestry's), as DistilBERT's students took every other layer of
    their teacher."""
    if blocks not in STUDENT_BLOCKS:
        raise ValueError(f"blocks must be one of {list(STUDENT_BLOCKS)}, got {blocks!r}")
    if blocks == "first":
        return list(range(depth))
    if not 0 < depth <= ancestry_depth:
        raise ValueError(f"cannot take {depth} of {ancestry_depth} blocks")
    return torch.linspace(0, ancestry_depth - 1, depth, dtype=torch.float64).round().long().tolist()


def fit(ancestry: StateDict, ancestry_spec: ViTSpec, params: dict[str, Any]) -> Learngene:
    if params:
        raise LearngeneError(f"weight-selection fit takes no parameters, got {sorted(params)}")
    require_features(ancestry_spec, FEATURES, name)
    check_layout(ancestry, state_shapes(ancestry_spec), "ancestry")
    return Learngene(method=name, tensors=as_float32(ancestry), meta={"spec": ancestry_spec.to_dict()})


def resolve_spec(learngene: Learngene, partial: dict[str, Any]) -> ViTSpec:
    base = learngene.base_spec
    spec = merge_request(base, partial, FREE_FIELDS, name)
    for field, value, limit in (
        ("depth", spec.depth, base.depth),
        ("embed_dim", spec.embed_dim, base.embed_dim),
        ("num_heads", spec.num_heads, base.num_heads),
        ("num_heads", spec.head_dim, base.head_dim),
        ("mlp_ratio", spec.mlp_hidden, base.mlp_hidden),
    ):
        if value > limit:
            raise SpecError(f"weight selection only shrinks: {field} gives {value}, the ancestry has {limit}", field)
    if spec.class_token and not base.class_token:
        raise SpecError("the ancestry has no class token to select", "class_token")
    return spec


def candidate_specs(learngene: Learngene) -> list[ViTSpec]:
    """Every depth up to the ancestry's, times every head count at the ancestry's head dimension."""
    base = learngene.base_spec
    return [base.replace(depth=depth, embed_dim=heads * base.head_dim, num_heads=heads)
            for heads in range(1, base.num_heads + 1) for depth in range(1, base.depth + 1)]


def _take(tensor: torch.Tensor, *indices: torch.Tensor | None) -> torch.Tensor:
    """Select ``indices[d]`` along each leading dimension d (``None``: kept whole). A full range is skipped, so
    equal sizes copy nothing."""
    for dim, index in enumerate(indices):
        if index is not None and len(index) != tensor.shape[dim]:
            tensor = tensor.index_select(dim, index)
    return tensor


def select(ancestry: StateDict, ancestry_spec: ViTSpec, spec: ViTSpec, blocks: str = "first") -> StateDict:
    """The descendant's weights for ``spec`` (already resolved) selected from ``ancestry``, without the head;
    ``blocks`` says which of the ancestry's blocks (:func:`block_indices`)."""
    a, s = ancestry_spec, spec
    emb = select_indices(a.embed_dim, s.embed_dim)
    hidden = select_indices(a.mlp_hidden, s.mlp_hidden)
    heads = select_indices(a.num_heads, s.num_heads)
    inner = (heads[:, None] * a.head_dim + select_indices(a.head_dim, s.head_dim)).reshape(-1)
    qkv = torch.cat([inner + part * a.embed_dim for part in range(3)])
    all_indices = {
        "norm1.weight": (emb,),
        "norm1.bias": (emb,),
        "attn.qkv.weight": (qkv, emb),
        "attn.qkv.bias": (qkv,),
        "attn.proj.weight": (emb, inner),
        "attn.proj.bias": (emb,),
        "ls1.gamma": (emb,),
        "norm2.weight": (emb,),
        "norm2.bias": (emb,),
        "mlp.fc1.weight": (hidden, emb),
        "mlp.fc1.bias": (hidden,),
        "mlp.fc2.weight": (emb, hidden),
        "mlp.fc2.bias": (emb,),
        "ls2.gamma": (emb,),
    }
    block_selection = {t: all_indices[t] for t in block_tensors(s)}
    grid_a, grid = a.img_size // a.patch_size, s.img_size // s.patch_size
    cells = select_indices(grid_a, min(grid, grid_a))  # a larger grid is resampled from the whole one
    prefix_a = pos_prefix(a)
    tokens = (cells[:, None] * grid_a + cells[None, :]).reshape(-1) + len(prefix_a)
    prefix = torch.tensor([prefix_a.index(token) for token in pos_prefix(s)], dtype=torch.long)
    tokens = torch.cat([prefix, tokens])
    state: StateDict = {
        "patch_embed.proj.weight": _take(ancestry["patch_embed.proj.weight"], emb),
        "pos_embed": _take(ancestry["pos_embed"], None, tokens, emb),
        f"{s.final_norm}.weight": _take(ancestry[f"{a.final_norm}.weight"], emb),
        f"{s.final_norm}.bias": _take(ancestry[f"{a.final_norm}.bias"], emb),
    }
    wanted = state_shapes(s.replace(depth=0))
    for key in ("patch_embed.proj.bias", "norm_pre.weight", "norm_pre.bias"):
        if key in wanted:
            state[key] = _take(ancestry[key], emb)
    for key in ("cls_token", "reg_token", "dist_token"):
        if key in wanted:
            state[key] = _take(ancestry[key], None, None, emb)
    for i, source in enumerate(block_indices(a.depth, s.depth, blocks)):
        for tensor_name, indices in block_selection.items():
            state[block_key(i, tensor_name)] = _take(ancestry[block_key(source, tensor_name)], *indices)
    return state


def expand(learngene: Learngene, spec: ViTSpec, seed: int, blocks: str = "first") -> Descendant:
    """The descendant for ``spec``; ``blocks`` as in :func:`select` (the method's own expansion: the first)."""
    learngene.require(name)
    spec = resolve_spec(learngene, spec.to_dict())
    base = learngene.base_spec
    check_layout(learngene.tensors, state_shapes(base), "weight-selection learngene")
    tensors = learngene.tensors
    emb = select_indices(base.embed_dim, spec.embed_dim)
    head = {}
    for module in head_modules(base):
        head[f"{module}.weight"] = _take(tensors[f"{module}.weight"], None, emb).float()
        head[f"{module}.bias"] = tensors[f"{module}.bias"].float()
    # An ancestry read as stored may be half precision; descendants are float32 (no copy when already).
    return assemble(as_float32(select(tensors, base, spec, blocks)), spec, seed, head)
