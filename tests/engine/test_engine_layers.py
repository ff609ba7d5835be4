"""Learngene layers: the kept ancestry blocks arrive byte for byte at the chosen end; the rest are fresh."""
from __future__ import annotations

import pytest
import torch

from engine.methods import layers
from engine.methods.base import Learngene, StateDict
from engine.spec import SpecError, ViTSpec
from engine.vit import BLOCK_TENSORS, block_key


@pytest.mark.parametrize("position, depth, expected", [("first", 6, [0, 1]), ("last", 6, [4, 5]), ("last", 2, [0, 1])])
def test_inherited_blocks_are_byte_equal_to_the_ancestry(tiny: ViTSpec, ancestry: StateDict, position: str,
                                                         depth: int, expected: list[int]) -> None:
    learngene = layers.fit(ancestry, tiny, {"count": 2, "position": position})
    kept = learngene.meta["indices"]
    assert kept == ([0, 1] if position == "first" else [2, 3])
    descendant = layers.expand(learngene, layers.resolve_spec(learngene, {"depth": depth}), seed=0)
    assert descendant.details["inherited_blocks"] == expected
    for i, source in zip(expected, kept):
        for name in BLOCK_TENSORS:
            inherited, original = descendant.state_dict[block_key(i, name)], ancestry[block_key(source, name)]
            assert inherited.dtype == original.dtype
            assert inherited.numpy().tobytes() == original.numpy().tobytes()


def test_other_blocks_are_timm_fresh_and_follow_the_seed(tiny: ViTSpec, learngenes: dict[str, Learngene]) -> None:
    learngene = learngenes["layers"]
    spec = layers.resolve_spec(learngene, {"depth": 5})
    one, again, other = (layers.expand(learngene, spec, seed) for seed in (1, 1, 2))
    fresh = block_key(3, "mlp.fc1.weight")
    assert torch.equal(one.state_dict[fresh], again.state_dict[fresh])
    assert not torch.equal(one.state_dict[fresh], other.state_dict[fresh])
    assert torch.equal(one.state_dict[block_key(0, "mlp.fc1.weight")], other.state_dict[block_key(0, "mlp.fc1.weight")])
    assert one.state_dict[fresh].std().item() == pytest.approx(0.02, rel=0.15)  # timm: trunc normal, std .02
    assert torch.equal(one.state_dict[block_key(3, "norm1.weight")], torch.ones(tiny.embed_dim))
    assert torch.count_nonzero(one.state_dict[block_key(3, "mlp.fc1.bias")]) == 0
    assert not torch.equal(one.state_dict[block_key(2, "mlp.fc1.weight")], one.state_dict[fresh])


def test_descendant_is_at_least_as_deep_as_the_learngene(learngenes: dict[str, Learngene]) -> None:
    with pytest.raises(SpecError) as caught:
        layers.resolve_spec(learngenes["layers"], {"depth": 1})
    assert caught.value.field == "depth"
