"""Learngene Pool: a stitched descendant is exactly its instances around a least-squares stitch."""
from __future__ import annotations

import pytest
import torch

from engine.methods import pool, weight_selection
from engine.methods.base import Learngene, LearngeneError
from engine.spec import STITCHED_ARCHITECTURE, TIMM_ARCHITECTURE, FrontSpec, SpecError
from engine.vit import BLOCK_TENSORS, block_key, select_indices


def test_catalogue_offers_students_and_depth_aligned_stitches(learngenes: dict[str, Learngene]) -> None:
    choices = [entry.choice for entry in pool.catalogue(learngenes["pool"])]
    # students: 3 blocks of width 32 and 4 blocks of width 64; k = round((j+1) * n_b / n_f) within [1, n_b-1]
    assert choices == [[0, 2, 0, 3], [1, 3, 1, 4], [0, 0, 1, 1], [0, 1, 1, 3], [1, 0, 0, 1], [1, 1, 0, 2],
                       [1, 2, 0, 2]]
    assert pool.stitch_positions(4, 3) == [(0, 1), (1, 2), (2, 2)]


@pytest.mark.parametrize("front, j, back, k", [(0, 1, 1, 3), (1, 0, 0, 1)])
def test_stitched_blocks_are_the_students_instances(learngenes: dict[str, Learngene], front: int, j: int,
                                                    back: int, k: int) -> None:
    learngene = learngenes["pool"]
    entry = next(e for e in pool.catalogue(learngene) if e.choice == [front, j, back, k])
    descendant = pool.expand(learngene, entry.spec, seed=0)
    state, tensors = descendant.state_dict, learngene.tensors
    assert descendant.architecture == STITCHED_ARCHITECTURE
    assert descendant.details["pool_choice"] == descendant.model_args["pool_choice"] == [front, j, back, k]
    back_depth = pool.student_specs(learngene)[back].depth
    assert entry.spec.depth == (j + 1) + (back_depth - k)
    for name in BLOCK_TENSORS:
        for i in range(j + 1):
            assert torch.equal(state[block_key(i, name)], tensors[f"students.{front}.{block_key(i, name)}"])
        for offset, i in enumerate(range(k, back_depth), start=j + 1):
            assert torch.equal(state[block_key(offset, name)], tensors[f"students.{back}.{block_key(i, name)}"])
    assert torch.equal(state["patch_embed.proj.weight"], tensors[f"students.{front}.patch_embed.proj.weight"])
    assert torch.equal(state["stitch.weight"], tensors[f"stitches.{front}.{back}.weight"])
    assert torch.equal(state["head.weight"], tensors[f"students.{back}.head.weight"])


def test_stitches_solve_their_least_squares_problem(learngenes: dict[str, Learngene]) -> None:
    learngene = learngenes["pool"]
    specs = pool.student_specs(learngene)
    images = pool.synthetic_batch(specs[0], batch=8, seed=0)  # the fit's default batch
    hidden = [pool.hidden_states(state, spec, images) for state, spec in pool.student_states(learngene)]
    positions = pool.stitch_positions(specs[0].depth, specs[1].depth)
    source = torch.cat([hidden[0][j] for j, _ in positions])
    target = torch.cat([hidden[1][k - 1] for _, k in positions])
    weight = learngene.tensors["stitches.0.1.weight"].double()
    bias = learngene.tensors["stitches.0.1.bias"].double()
    error = source @ weight.T + bias - target
    # Normal equations: the residual is orthogonal to the features and to the constant column.
    scale = source.abs().max() * error.abs().max() * len(source)
    assert (source.T @ error).abs().max() < 1e-4 * scale
    assert error.mean(dim=0).abs().max() < 1e-4 * error.abs().max()
    assert error.square().sum() < (target - target.mean(dim=0)).square().sum()  # better than a constant


def test_students_and_their_pairs_come_as_plain_or_stitched_specs(learngenes: dict[str, Learngene]) -> None:
    learngene = learngenes["pool"]
    student = pool.resolve_spec(learngene, {"depth": 3, "embed_dim": 32, "front": None})
    assert student.architecture == TIMM_ARCHITECTURE
    stitched = pool.resolve_spec(learngene, {"depth": 3, "front": {"depth": 2, "embed_dim": 32, "num_heads": 2,
                                                                     "mlp_ratio": 4.0}})
    assert stitched.front == FrontSpec(depth=2, embed_dim=32, num_heads=2)
    assert pool.resolve_spec(learngene, {"num_classes": 4}).num_classes == 4
    with pytest.raises(SpecError) as caught:
        pool.resolve_spec(learngene, {"depth": 9})
    assert caught.value.field == "depth"


def test_a_width_asked_for_is_the_width_of_every_block(learngenes: dict[str, Learngene]) -> None:
    """Regression: {"embed_dim": 32} answered a stitched network whose first blocks were 64 wide (more
    parameters, so "preferred"); the user asked for a 32-wide network."""
    learngene = learngenes["pool"]
    narrow = pool.resolve_spec(learngene, {"embed_dim": 32})
    assert narrow.front is None and narrow.embed_dim == 32 and narrow.depth == 3
    with pytest.raises(SpecError, match="offers: .*depth 3 width 32") as caught:
        pool.resolve_spec(learngene, {"embed_dim": 32, "depth": 4})  # only stitched 4-block networks end at 32
    assert caught.value.field == "depth"
    # Depth alone leaves the widths to the pool: a stitched answer is what was asked.
    assert pool.resolve_spec(learngene, {"depth": 3}).front is not None


def test_build_pool_requires_every_stitch(learngenes: dict[str, Learngene]) -> None:
    students = pool.student_states(learngenes["pool"])
    one = (torch.zeros(64, 32), torch.zeros(64))
    with pytest.raises(LearngeneError):
        pool.build_pool(students, {(0, 1): one}, {})
    rebuilt = pool.build_pool(students, {(0, 1): one, (1, 0): (torch.zeros(32, 64), torch.zeros(32))}, {})
    assert rebuilt.meta["stitches"] == [[0, 1], [1, 0]]
    assert rebuilt.tensors.keys() == learngenes["pool"].tensors.keys()


def test_spread_students_take_evenly_spaced_blocks_from_first_to_last(ancestry: dict, tiny) -> None:
    """``student_blocks: spread``: a 2-deep student of the 4-deep ancestry is weight-selected from blocks 0 and 3
    (both ends), where the default takes blocks 0 and 1; the learngene records which."""
    students = [{"embed_dim": 64, "num_heads": 4, "depth": 2}]
    first = pool.fit(ancestry, tiny, {"students": students})
    spread = pool.fit(ancestry, tiny, {"students": students, "student_blocks": "spread"})
    for learngene, blocks in ((first, [0, 1]), (spread, [0, 3])):
        (state, _), = pool.student_states(learngene)
        for i, source in enumerate(blocks):
            for name in BLOCK_TENSORS:
                assert torch.equal(state[block_key(i, name)], ancestry[block_key(source, name)]), (blocks, i, name)
    assert first.meta["fit"]["students"] == "weight selection"
    assert spread.meta["fit"]["students"] == "weight selection, spread blocks [[0, 3]]"
    # select_indices (the widths' rule) drops the last block when the depth divides; spread keeps both ends.
    assert weight_selection.block_indices(12, 4, "spread") == [0, 4, 7, 11]
    assert select_indices(12, 4).tolist() == [0, 3, 6, 9]
    assert weight_selection.block_indices(12, 6, "spread") == [0, 2, 4, 7, 9, 11]
    assert weight_selection.block_indices(12, 12, "spread") == list(range(12))
    with pytest.raises(ValueError, match="cannot take 5 of 4"):
        weight_selection.block_indices(4, 5, "spread")
    with pytest.raises(ValueError, match="blocks must be one of"):
        weight_selection.block_indices(4, 2, "last")
