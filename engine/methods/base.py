"""The contract every learngene method implements.

A method is one module under ``engine/methods/`` holding pure functions over plain tensors: condensing an
ancestry into a :class:`Learngene`, and expanding a learngene into a descendant's full state dict. Nothing here
knows about HTTP, databases or queues.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol

import torch

from engine.spec import ViTSpec

StateDict = dict[str, torch.Tensor]


class LearngeneError(ValueError):
    """A learngene, ancestry or fit parameter that a method cannot use (wrong method, missing tensors...)."""


@dataclass
class Learngene:
    """A condensed learngene: its tensors plus JSON-able metadata.

    ``meta["spec"]`` is the dict of the :class:`ViTSpec` the learngene was condensed for (its ancestry's or its
    auxiliary network's); everything else in ``meta`` is method-specific (TLEG's auxiliary depth, the indices
    Learngene layers kept, WAVE's tile shape and template counts, the Pool's students and stitches...).
    """

    method: str
    tensors: StateDict
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def base_spec(self) -> ViTSpec:
        return ViTSpec.from_dict(self.meta["spec"])

    def require(self, method: str) -> None:
        """Refuse a learngene of another method (its tensors would be misread, not merely mis-sized)."""
        if self.method != method:
            raise LearngeneError(f"this is a {self.method!r} learngene, not a {method!r} one")


@dataclass
class Descendant:
    """An expanded descendant: weights plus what ``timm.create_model`` needs to rebuild it.

    Tensors may share storage with the learngene's (copying them would double the peak memory): treat both as
    read-only, or clone before training in place.
    """

    state_dict: StateDict
    architecture: str
    model_args: dict[str, Any]
    #: Method-specific facts worth recording (e.g. which blocks were inherited, the pool's stitch choice).
    details: dict[str, Any] = field(default_factory=dict)


class Method(Protocol):
    name: str
    #: The ViT family features (:data:`engine.spec.FAMILY_DEFAULTS`) this method carries from an ancestry to its
    #: descendants; an ancestry using any other is refused before condensing (none: plain ViTs only).
    FEATURES: frozenset[str]

    def fit(self, ancestry: StateDict, ancestry_spec: ViTSpec, params: dict[str, Any]) -> Learngene:
        """Data-free condensing from an ancestry's weights."""
        ...

    def resolve_spec(self, learngene: Learngene, partial: dict[str, Any]) -> ViTSpec:
        """Fill a partial request from the learngene's own spec and reject what this method cannot make
        (raising :class:`engine.spec.SpecError` naming the field)."""
        ...

    def candidate_specs(self, learngene: Learngene) -> Iterable[ViTSpec]:
        """Every spec this learngene can produce, for the budget planner (finite, reasonably small)."""
        ...

    def expand(self, learngene: Learngene, spec: ViTSpec, seed: int) -> Descendant:
        """Deterministic in (learngene, spec, seed)."""
        ...
