"""Random: timm's own default initialization, the baseline every method must beat (METHODS.md section 6).

Any valid spec; the learngene only supplies defaults for fields a request leaves out, so any learngene (of any
method) can be expanded this way. ``fit`` records the ancestry's spec and keeps no tensors.
"""
from __future__ import annotations

from typing import Any

from engine.methods.base import Descendant, Learngene, LearngeneError, StateDict
from engine.spec import FAMILY_DEFAULTS, FREE_FIELDS, ViTSpec, merge_request
from engine.vit import make_descendant, seeded_state

name = "random"

#: timm builds every family feature itself.
FEATURES = frozenset(FAMILY_DEFAULTS)


def fit(ancestry: StateDict, ancestry_spec: ViTSpec, params: dict[str, Any]) -> Learngene:
    if params:
        raise LearngeneError(f"random fit takes no parameters, got {sorted(params)}")
    return Learngene(method=name, tensors={}, meta={"spec": ancestry_spec.to_dict()})


def resolve_spec(learngene: Learngene, partial: dict[str, Any]) -> ViTSpec:
    # Every plain-ViT field may change (the stitched ``front`` is the Pool's alone): nothing is inherited.
    return merge_request(learngene.base_spec, partial, FREE_FIELDS | {"patch_size", "in_chans"}, name)


def candidate_specs(learngene: Learngene) -> list[ViTSpec]:
    """Depths up to twice the base's, times head counts up to twice the base's at the base head dimension."""
    base = learngene.base_spec
    return [base.replace(depth=depth, embed_dim=heads * base.head_dim, num_heads=heads)
            for heads in range(1, 2 * base.num_heads + 1) for depth in range(1, 2 * base.depth + 1)]


def expand(learngene: Learngene, spec: ViTSpec, seed: int) -> Descendant:
    spec = resolve_spec(learngene, spec.to_dict())
    return make_descendant(seeded_state(spec, seed), spec)
