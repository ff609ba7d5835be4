"""Weight selection: evenly spaced indices, the same for every layer, each descendant head inside one ancestry head."""
from __future__ import annotations

import pytest
import torch

from engine.methods import weight_selection
from engine.methods.base import Learngene, StateDict
from engine.spec import SpecError, ViTSpec
from engine.vit import block_key, select_indices


@pytest.mark.parametrize("total, size, expected", [
    (12, 6, [0, 2, 4, 6, 8, 10]),  # divisible: arange(s) * (t // s)
    (12, 12, list(range(12))),
    (10, 4, [0, 3, 6, 9]),  # not divisible: round(linspace(0, t-1, s))
    (7, 3, [0, 3, 6]),
    (9, 2, [0, 8]),
    (5, 1, [0]),
])
def test_selected_indices(total: int, size: int, expected: list[int]) -> None:
    assert select_indices(total, size).tolist() == expected


def test_qkv_and_proj_select_whole_heads_within_q_k_and_v(learngenes: dict[str, Learngene],
                                                          ancestry: StateDict) -> None:
    learngene = learngenes["weight-selection"]
    spec = weight_selection.resolve_spec(learngene, {"embed_dim": 32, "num_heads": 2, "depth": 3})
    state = weight_selection.expand(learngene, spec, seed=0).state_dict
    # 64 wide, 4 heads of 16 -> 32 wide, 2 heads of 16: heads 0 and 2, every dimension; residual stream every other.
    emb = torch.arange(0, 64, 2)
    inner = torch.cat([torch.arange(0, 16), torch.arange(32, 48)])
    rows = torch.cat([inner, 64 + inner, 128 + inner])
    for i in range(3):
        qkv = ancestry[block_key(i, "attn.qkv.weight")]
        assert torch.equal(state[block_key(i, "attn.qkv.weight")], qkv[rows][:, emb])
        proj, fc2 = ancestry[block_key(i, "attn.proj.weight")], ancestry[block_key(i, "mlp.fc2.weight")]
        assert torch.equal(state[block_key(i, "attn.proj.weight")], proj[emb][:, inner])
        assert torch.equal(state[block_key(i, "mlp.fc2.weight")], fc2[emb][:, torch.arange(0, 256, 2)])
    assert block_key(3, "norm1.weight") not in state  # the first L blocks only


def test_position_embedding_keeps_a_regular_grid(learngenes: dict[str, Learngene], ancestry: StateDict) -> None:
    learngene = learngenes["weight-selection"]
    spec = weight_selection.resolve_spec(learngene, {"img_size": 8, "class_token": False, "global_pool": "avg"})
    state = weight_selection.expand(learngene, spec, seed=0).state_dict
    # 4x4 grid -> 2x2: rows/cols 0 and 2; ancestry tokens are shifted by its class token.
    tokens = torch.tensor([0, 2, 8, 10]) + 1
    assert torch.equal(state["pos_embed"], ancestry["pos_embed"][:, tokens])
    assert torch.equal(state["fc_norm.weight"], ancestry["norm.weight"])


def test_same_spec_returns_the_ancestry(tiny: ViTSpec, learngenes: dict[str, Learngene],
                                       ancestry: StateDict) -> None:
    state = weight_selection.expand(learngenes["weight-selection"], tiny, seed=0).state_dict
    assert state.keys() == ancestry.keys()
    assert all(torch.equal(state[k], ancestry[k]) for k in ancestry)


@pytest.mark.parametrize("partial, field", [
    ({"depth": 5}, "depth"),
    ({"embed_dim": 96, "num_heads": 6}, "embed_dim"),
    ({"embed_dim": 64, "num_heads": 8}, "num_heads"),  # more heads than the ancestry's 4
    ({"embed_dim": 32, "num_heads": 1}, "num_heads"),  # head dim 32 > the ancestry's 16
    ({"patch_size": 2}, "patch_size"),
])
def test_only_shrinks(learngenes: dict[str, Learngene], partial: dict, field: str) -> None:
    with pytest.raises(SpecError) as caught:
        weight_selection.resolve_spec(learngenes["weight-selection"], partial)
    assert caught.value.field == field
