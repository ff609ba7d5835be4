"""TLEG: block i of depth L is exactly A + (i/L) B, and the data-free fit inverts that when it can."""
from __future__ import annotations

import pytest
import torch

from engine.methods import tleg
from engine.methods.base import Learngene, StateDict
from engine.spec import SpecError, ViTSpec
from engine.vit import BLOCK_TENSORS, block_key


@pytest.mark.parametrize("depth", [1, 3, 7])
def test_block_i_is_a_plus_i_over_l_times_b(learngenes: dict[str, Learngene], depth: int) -> None:
    learngene = learngenes["tleg"]
    state = tleg.expand(learngene, tleg.resolve_spec(learngene, {"depth": depth}), seed=0).state_dict
    for name in BLOCK_TENSORS:
        a, b = learngene.tensors[f"blocks.A.{name}"], learngene.tensors[f"blocks.B.{name}"]
        for i in range(depth):
            assert torch.equal(state[block_key(i, name)], a + (i / depth) * b), (name, i)
    assert torch.equal(state[block_key(0, "attn.qkv.weight")], learngene.tensors["blocks.A.attn.qkv.weight"])


def test_fit_recovers_a_and_b_from_a_linear_ancestry(tiny: ViTSpec, ancestry: StateDict) -> None:
    generator = torch.Generator().manual_seed(1)
    a = {n: torch.randn(ancestry[block_key(0, n)].shape, generator=generator) for n in BLOCK_TENSORS}
    b = {n: torch.randn(ancestry[block_key(0, n)].shape, generator=generator) for n in BLOCK_TENSORS}
    linear = dict(ancestry)
    for i in range(tiny.depth):
        linear.update({block_key(i, n): a[n] + (i / tiny.depth) * b[n] for n in BLOCK_TENSORS})
    learngene = tleg.fit(linear, tiny, {})
    for n in BLOCK_TENSORS:
        torch.testing.assert_close(learngene.tensors[f"blocks.A.{n}"], a[n], atol=2e-5, rtol=0)
        torch.testing.assert_close(learngene.tensors[f"blocks.B.{n}"], b[n], atol=2e-5, rtol=0)
    assert learngene.meta["fit"]["relative_residual"] < 1e-5
    assert tleg.fit(ancestry, tiny, {}).meta["fit"]["relative_residual"] > 1e-3  # a random ancestry is not linear


def test_descendants_pool_by_average_and_keep_the_head_only_for_the_same_classes(
        tiny: ViTSpec, learngenes: dict[str, Learngene], ancestry: StateDict) -> None:
    learngene = learngenes["tleg"]
    same = tleg.expand(learngene, tleg.resolve_spec(learngene, {"depth": 6}), seed=0)
    assert same.model_args["class_token"] is False and same.model_args["global_pool"] == "avg"
    assert torch.equal(same.state_dict["fc_norm.weight"], ancestry["norm.weight"])
    assert torch.equal(same.state_dict["head.weight"], ancestry["head.weight"])
    assert torch.equal(same.state_dict["pos_embed"], ancestry["pos_embed"][:, 1:])  # class position dropped
    other = tleg.expand(learngene, tleg.resolve_spec(learngene, {"depth": 6, "num_classes": 5}), seed=0)
    assert other.state_dict["head.weight"].shape == (5, tiny.embed_dim)
    assert other.details["head"] == "fresh"
    assert torch.count_nonzero(other.state_dict["head.bias"]) == 0  # timm's init: zero bias


def test_width_is_fixed(learngenes: dict[str, Learngene]) -> None:
    with pytest.raises(SpecError) as caught:
        tleg.resolve_spec(learngenes["tleg"], {"embed_dim": 32, "num_heads": 2})
    assert caught.value.field == "embed_dim"
