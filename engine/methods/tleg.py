"""TLEG: linear expansion (Xia et al., AAAI 2024), METHODS.md section 1.

Block i (0-based) of a descendant of depth L gets ``W_i = A + (i / L) * B`` for every block tensor.

Learngene tensors (float32):

- ``blocks.A.<name>`` and ``blocks.B.<name>`` for every timm block tensor name (``norm1.weight``,
  ``norm1.bias``, ``attn.qkv.weight``, ``attn.qkv.bias``, ``attn.proj.weight``, ``attn.proj.bias``,
  ``norm2.weight``, ``norm2.bias``, ``mlp.fc1.weight``, ``mlp.fc1.bias``, ``mlp.fc2.weight``, ``mlp.fc2.bias``);
- ``patch_embed.proj.weight``, ``patch_embed.proj.bias``, ``pos_embed`` of shape (1, num_patches, D): patch
  tokens only, since descendants have no class token;
- ``fc_norm.weight``, ``fc_norm.bias``: the learngene's final norm (timm's name under average pooling);
- ``head.weight``, ``head.bias`` when the learngene has classes.

``meta``: ``spec`` (the auxiliary network's: ``class_token=False``, ``global_pool="avg"``, depth L_aux),
``aux_depth`` (L_aux), and ``fit`` (``relative_residual`` of the least-squares fit) when made by :func:`fit`.

Auxiliary network (for the trainer): ``blocks = nn.ModuleDict({"A": block, "B": block})`` of two timm blocks
(:func:`engine.blocks.vit_block`) gives exactly the ``blocks.A.*`` / ``blocks.B.*`` keys; block i of the auxiliary
network runs a block with weights ``A + (i / L_aux) * B`` (e.g. ``torch.func.functional_call``). Together with a
timm ViT's ``patch_embed``, ``pos_embed``, ``fc_norm`` and ``head`` (built from ``meta["spec"]``), its
``state_dict()`` is the learngene: pass it to :func:`make_learngene`. METHODS.md gives the training init (B's
norm weights 0).
"""
from __future__ import annotations

from typing import Any

import torch

from engine.costs import spec_block_shapes, state_shapes
from engine.methods.base import Descendant, Learngene, LearngeneError, StateDict
from engine.spec import FAMILY_DEFAULTS, ViTSpec, merge_request, require_features
from engine.vit import as_float32, assemble, block_key, block_tensors, check_layout, head_state, pos_prefix, stack_blocks

name = "tleg"
#: Every block tensor of the family (layer-scale gammas too) gets its (A, B) pair; registers, pre-norm and the
#: activation are kept; the class and distillation tokens are dropped, as TLEG's descendants pool by average.
FEATURES = frozenset(FAMILY_DEFAULTS)


def aux_spec(ancestry_spec: ViTSpec) -> ViTSpec:
    """The learngene's spec for an ancestry: no class (nor distillation) token, average pooling with the final
    norm after pooling (the reference descendants' form)."""
    return ancestry_spec.replace(class_token=False, global_pool="avg", distilled=False, fc_norm=None)


def coefficients(depth: int) -> torch.Tensor:
    """``i / depth`` for i = 0..depth-1 as float32, rounded once from float64 like Python's ``i / depth``."""
    return (torch.arange(depth, dtype=torch.float64) / depth).float()


def layout(spec: ViTSpec) -> dict[str, tuple[int, ...]]:
    """Learngene tensor names and shapes for an auxiliary network of ``spec``."""
    blocks = spec_block_shapes(spec)
    outside = {k: v for k, v in state_shapes(spec.replace(depth=1)).items() if not k.startswith("blocks.")}
    return {
        **{f"blocks.{part}.{k}": v for part in ("A", "B") for k, v in blocks.items()},
        **outside,
    }


def make_learngene(tensors: StateDict, spec: ViTSpec, **meta: Any) -> Learngene:
    """Package (A, B) and the shared tensors (named as in the module docstring) as a TLEG learngene."""
    if spec != aux_spec(spec):
        raise LearngeneError("a TLEG learngene has no class token and average pooling into fc_norm")
    tensors = as_float32(tensors)
    check_layout(tensors, layout(spec), "TLEG learngene")
    return Learngene(method=name, tensors=tensors, meta={"spec": spec.to_dict(), "aux_depth": spec.depth, **meta})


def fit(ancestry: StateDict, ancestry_spec: ViTSpec, params: dict[str, Any]) -> Learngene:
    """Least squares ``W_i ~ A + (i / L_a) * B`` over the ancestry's blocks, for every block tensor.

    The design matrix ``[1, i / L_a]`` is the same for every tensor, so its pseudo-inverse (2 x L_a) is solved once
    and applied to each tensor's whole stack of blocks.
    """
    if params:
        raise LearngeneError(f"tleg fit takes no parameters, got {sorted(params)}")
    require_features(ancestry_spec, FEATURES, name)
    check_layout(ancestry, state_shapes(ancestry_spec), "ancestry")
    state = as_float32(ancestry)
    depth = ancestry_spec.depth
    design = torch.stack([torch.ones(depth, dtype=torch.float64), coefficients(depth).double()], dim=1)
    solve = torch.linalg.pinv(design).float()
    coeff = coefficients(depth)
    tensors: StateDict = {}
    residual = total = 0.0
    for tensor_name in block_tensors(ancestry_spec):
        stack = stack_blocks(state, depth, tensor_name)
        a, b = torch.tensordot(solve, stack, dims=1)
        fitted = a + coeff.view((-1,) + (1,) * a.ndim) * b
        residual += float((stack - fitted).square().sum())
        total += float(stack.square().sum())
        tensors[f"blocks.A.{tensor_name}"] = a
        tensors[f"blocks.B.{tensor_name}"] = b
    spec = aux_spec(ancestry_spec)
    # Descendants have no class (nor distillation) token: keep the positions of the registers and patches only.
    prefix = pos_prefix(ancestry_spec)
    kept = [i for i, token in enumerate(prefix) if token not in ("cls", "dist")]
    tensors["pos_embed"] = torch.cat([state["pos_embed"][:, kept], state["pos_embed"][:, len(prefix):]], dim=1)
    for key in layout(spec):
        if not key.startswith(("blocks.", "fc_norm.", "pos_embed")):
            tensors[key] = state[key]  # the stem (patch embedding, registers, pre-norm) and the head
    tensors["fc_norm.weight"] = state[f"{ancestry_spec.final_norm}.weight"]
    tensors["fc_norm.bias"] = state[f"{ancestry_spec.final_norm}.bias"]
    return make_learngene(tensors, spec, fit={"relative_residual": (residual / max(total, 1e-30)) ** 0.5})


def resolve_spec(learngene: Learngene, partial: dict[str, Any]) -> ViTSpec:
    """Depth, classes and image size (same patches; positions resampled) are free; width, heads, MLP, patches
    and pooling are the learngene's."""
    return merge_request(learngene.base_spec, partial, {"depth", "num_classes", "img_size"}, name)


def candidate_specs(learngene: Learngene) -> list[ViTSpec]:
    base = learngene.base_spec
    return [base.replace(depth=depth) for depth in range(1, 2 * learngene.meta["aux_depth"] + 1)]


def expand(learngene: Learngene, spec: ViTSpec, seed: int) -> Descendant:
    learngene.require(name)
    spec = resolve_spec(learngene, spec.to_dict())
    base = learngene.base_spec
    tensors = learngene.tensors
    check_layout(tensors, layout(base), "TLEG learngene")
    coeff = coefficients(spec.depth)
    head = head_state(tensors)
    state: StateDict = {k: v for k, v in tensors.items() if not k.startswith("blocks.") and k not in head}
    for tensor_name in block_tensors(spec):
        a, b = tensors[f"blocks.A.{tensor_name}"], tensors[f"blocks.B.{tensor_name}"]
        # All blocks of one tensor at once, (i/L) * B then + A in place: the same bits as A + (i/L) * B without a
        # second stack-sized temporary. Each block is a contiguous view of the result.
        stack = coeff.view((-1,) + (1,) * a.ndim) * b
        stack += a
        for i in range(spec.depth):
            state[block_key(i, tensor_name)] = stack[i]
    return assemble(state, spec, seed, head)
