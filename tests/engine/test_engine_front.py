"""FRONT (METHODS.md section 5): the identities of the transform, and descendants of any size that timm loads."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.artifacts import descendant_metadata, save_descendant
from engine.costs import param_count
from engine.methods import front, get_method
from engine.methods.base import Learngene, LearngeneError, StateDict
from engine.spec import SpecError, ViTSpec
from engine.train.card import catalogue
from engine.vit import block_key
from tests.engine.conftest import load_into_timm, random_state
from tests.engine.test_engine_families import FAMILIES, images, make_family, rebuilt

AVG = ViTSpec(depth=4, embed_dim=64, num_heads=4, num_classes=10, img_size=16, patch_size=4, class_token=False,
              global_pool="avg")


def trained_like(spec: ViTSpec, seed: int = 0) -> StateDict:
    """timm's init with every norm and bias moved off its constant: a fresh LayerNorm (all ones) would make half
    the kinds trivially exact."""
    state = random_state(spec, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    return {k: v + 0.1 * torch.randn(v.shape, generator=generator) if v.ndim == 1 else v for k, v in state.items()}


@pytest.fixture(scope="module", params=["token", "avg"])
def case(request: pytest.FixtureRequest, tiny: ViTSpec) -> tuple[ViTSpec, StateDict, Learngene]:
    spec = tiny if request.param == "token" else AVG
    state = trained_like(spec)
    return spec, state, front.fit(state, spec, {})


def test_the_whole_spectrum_at_the_ancestrys_size_reproduces_it(case: tuple[ViTSpec, StateDict, Learngene]) -> None:
    spec, state, learngene = case
    descendant = front.expand(learngene, spec, seed=0)
    assert set(descendant.state_dict) == set(state)
    for key, tensor in state.items():
        torch.testing.assert_close(descendant.state_dict[key], tensor, rtol=1e-5, atol=1e-6, msg=key)
    errors = learngene.meta["fit"]["relative_error"]
    assert set(errors) == set(front.kinds(spec)) and max(errors.values()) < 1e-6


def test_a_truncated_spectrum_is_recorded_as_a_real_error(tiny: ViTSpec) -> None:
    learngene = front.fit(trained_like(tiny), tiny, {"keep_ratio": 0.5, "keep_depth": 2})
    assert min(learngene.meta["fit"]["relative_error"].values()) > 1e-3


def test_truncation_commutes_with_expansion(tiny: ViTSpec) -> None:
    state = trained_like(tiny)
    whole = front.fit(state, tiny, {})
    small = front.fit(state, tiny, {"keep_ratio": 0.5, "keep_depth": 2})
    for kind in front.kinds(tiny):
        big, corner = whole.tensors[f"coeffs.{kind}"], small.tensors[f"coeffs.{kind}"]
        assert torch.equal(big[tuple(slice(0, n) for n in corner.shape)], corner), kind
    # A target inside the kept corner (2 blocks, width 32, MLP 64) reads only kept coefficients: both agree.
    inside = {"depth": 2, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2.0}
    a = front.expand(whole, front.resolve_spec(whole, inside), seed=0).state_dict
    b = front.expand(small, front.resolve_spec(small, inside), seed=0).state_dict
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Outside it, the small learngene is the whole one with the rest of the spectrum zeroed.
    zeroed = Learngene(front.name, dict(whole.tensors), {**whole.meta})
    for kind in front.kinds(tiny):
        coeffs = torch.zeros_like(whole.tensors[f"coeffs.{kind}"])
        corner = small.tensors[f"coeffs.{kind}"]
        coeffs[tuple(slice(0, n) for n in corner.shape)] = corner
        zeroed.tensors[f"coeffs.{kind}"] = coeffs
    outside = {"depth": 7, "embed_dim": 96, "num_heads": 6}
    a = front.expand(zeroed, front.resolve_spec(zeroed, outside), seed=0).state_dict
    b = front.expand(small, front.resolve_spec(small, outside), seed=0).state_dict
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("keep_ratio,keep_depth", [(1.0, 4), (0.5, 4), (0.5, 2), (0.25, 1), (0.75, 3)])
def test_stored_bytes_follow_keep_ratio_squared_times_keep_depth(tiny: ViTSpec, keep_ratio: float,
                                                                 keep_depth: int) -> None:
    state = trained_like(tiny)
    learngene = front.fit(state, tiny, {"keep_ratio": keep_ratio, "keep_depth": keep_depth})
    for kind_name, kind in front.kinds(tiny).items():
        stored = learngene.tensors[f"coeffs.{kind_name}"].numel()
        whole = tiny.depth * math.prod(front._size(tiny, axis) for axis in kind.axes)
        # Widths 64 and 256 times these ratios are whole numbers: the corner is exactly r^2 (or r) of each block.
        assert stored == whole * keep_ratio ** len(kind.axes) * keep_depth / tiny.depth, kind_name
    summary = learngene.meta["fit"]
    assert summary["stored_bytes"] == sum(t.numel() * t.element_size() for t in learngene.tensors.values())
    matrices = sum(learngene.tensors[f"coeffs.{k}"].numel() * 4 for k, kind in front.kinds(tiny).items()
                   if len(kind.axes) == 2)
    all_matrices = sum(state[block_key(i, t)].numel() * 4 for i in range(tiny.depth)
                       for t in ("attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight"))
    assert matrices == all_matrices * keep_ratio ** 2 * keep_depth / tiny.depth
    assert (summary["keep_ratio"], summary["keep_depth"]) == (keep_ratio, keep_depth)


def test_keep_ratio_rounds_the_kept_size_up() -> None:
    assert front._kept(10, 0.3) == 3 and front._kept(10, 0.31) == 4 and front._kept(3, 0.01) == 1


@pytest.mark.parametrize("request_", [
    {"depth": 9, "embed_dim": 96, "num_heads": 6},  # deeper and wider
    {"depth": 2, "embed_dim": 32, "num_heads": 2},  # shallower and narrower
    {"depth": 1, "embed_dim": 48, "num_heads": 3, "mlp_ratio": 2.0, "num_classes": 5},
    {"depth": 6, "embed_dim": 128, "num_heads": 2, "mlp_ratio": 3.0},  # other head dimension
    {"depth": 3, "img_size": 24, "class_token": False, "global_pool": "avg"},  # another grid, pooling changed
])
def test_descendants_of_any_size_load_strictly_in_timm(case: tuple[ViTSpec, StateDict, Learngene],
                                                       request_: dict) -> None:
    spec, _, learngene = case
    if not spec.class_token and request_.get("class_token", True) is not False:
        request_ = {**request_, "class_token": False, "global_pool": "avg"}
    target = front.resolve_spec(learngene, request_)
    model = load_into_timm(front.expand(learngene, target, seed=0))
    with torch.inference_mode():
        out = model(torch.randn(2, target.in_chans, target.img_size, target.img_size))
    assert out.shape == (2, target.num_classes) and torch.isfinite(out).all()


def _stats(tensor: torch.Tensor) -> tuple[float, float]:
    values = tensor.double()
    return float(values.mean()), float(values.std(correction=0))


def test_every_block_gets_the_ancestrys_stats_at_its_relative_depth(tiny: ViTSpec) -> None:
    state = trained_like(tiny)
    learngene = front.fit(state, tiny, {"keep_ratio": 0.5, "keep_depth": 2})
    # Same depth, another width: block i has block i's mean and std.
    wide = front.expand(learngene, front.resolve_spec(learngene, {"embed_dim": 96, "num_heads": 6}), 0).state_dict
    for i in range(tiny.depth):
        for tensor in ("attn.proj.weight", "mlp.fc1.weight", "norm1.bias"):
            expected = _stats(state[block_key(i, tensor)])
            assert _stats(wide[block_key(i, tensor)]) == pytest.approx(expected, rel=1e-4, abs=1e-6), (i, tensor)
    # Depth 7 from 4: block i reads position i/6*3, between two ancestry blocks.
    deep = front.expand(learngene, front.resolve_spec(learngene, {"depth": 7}), 0).state_dict
    ancestry_stats = np.array([_stats(state[block_key(i, "mlp.fc2.weight")]) for i in range(tiny.depth)])
    for i in range(7):
        position = i / 6 * 3
        expected = [np.interp(position, range(tiny.depth), ancestry_stats[:, j]) for j in range(2)]
        assert _stats(deep[block_key(i, "mlp.fc2.weight")]) == pytest.approx(expected, rel=1e-4, abs=1e-6), i


def test_a_constant_tensor_stays_constant_at_every_size(tiny: ViTSpec) -> None:
    state = random_state(tiny)  # timm's init: LayerNorm weights 1, biases 0
    learngene = front.fit(state, tiny, {"keep_ratio": 0.5})
    spec = front.resolve_spec(learngene, {"depth": 5, "embed_dim": 96, "num_heads": 6})
    out = front.expand(learngene, spec, 0).state_dict
    assert torch.equal(out[block_key(3, "norm2.weight")], torch.ones(96))
    assert torch.equal(out[block_key(3, "attn.proj.bias")], torch.zeros(96))
    assert torch.equal(out["norm.weight"], torch.ones(96))


def test_the_same_request_gives_the_same_bytes_whatever_the_threads(case: tuple[ViTSpec, StateDict, Learngene],
                                                                    tmp_path: Path) -> None:
    spec, _, learngene = case
    target = front.resolve_spec(learngene, {"depth": 5, "embed_dim": 80, "num_heads": 5})
    metadata = descendant_metadata(front.name, target, 0)
    threads = torch.get_num_threads()
    digests = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            digests.append(save_descendant(front.expand(learngene, target, 0), metadata, tmp_path / f"{count}.st"))
    finally:
        torch.set_num_threads(threads)
    assert len(set(digests)) == 1


def test_the_head_is_kept_only_for_the_ancestrys_classes(case: tuple[ViTSpec, StateDict, Learngene]) -> None:
    spec, state, learngene = case
    same = front.expand(learngene, front.resolve_spec(learngene, {"embed_dim": 32, "num_heads": 2}), 0)
    assert same.details["head"] == "inherited" and same.state_dict["head.weight"].shape == (10, 32)
    assert torch.equal(same.state_dict["head.bias"], state["head.bias"])
    other = front.expand(learngene, front.resolve_spec(learngene, {"num_classes": 3}), 0)
    assert other.details["head"] == "fresh" and torch.count_nonzero(other.state_dict["head.bias"]) == 0


@pytest.mark.parametrize("params", [{"keep_ratio": 0.0}, {"keep_ratio": 1.5}, {"keep_depth": 0}, {"fill": "zero"}])
def test_bad_fit_parameters_are_refused(tiny: ViTSpec, params: dict) -> None:
    with pytest.raises(LearngeneError, match=next(iter(params))):
        front.fit(trained_like(tiny), tiny, params)


def test_keep_depth_beyond_the_ancestry_keeps_the_whole_depth_spectrum(tiny: ViTSpec) -> None:
    learngene = front.fit(trained_like(tiny), tiny, {"keep_depth": 99})
    assert learngene.meta["keep_depth"] == tiny.depth


def test_a_class_token_cannot_be_added() -> None:
    learngene = front.fit(trained_like(AVG), AVG, {"keep_ratio": 0.5})
    with pytest.raises(SpecError) as caught:
        front.resolve_spec(learngene, {"class_token": True, "global_pool": "token"})
    assert caught.value.field == "class_token"


def test_the_planner_grid_covers_every_depth_and_width_within_the_limits(case: tuple[ViTSpec, StateDict,
                                                                                         Learngene]) -> None:
    spec, _, learngene = case
    grid = {(s.depth, s.embed_dim) for s in front.candidate_specs(learngene)}
    assert (1, spec.head_dim) in grid and (48, 64 * spec.head_dim) in grid and len(grid) == 48 * 64


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request: pytest.FixtureRequest) -> tuple[StateDict, ViTSpec, torch.nn.Module, Learngene]:
    state, spec, model = make_family(request.param)
    return state, spec, model, front.fit(state, spec, {})


def test_every_family_at_its_own_size_computes_the_ancestrys_outputs(family: tuple) -> None:
    state, spec, model, learngene = family
    descendant = front.expand(learngene, spec, seed=0)
    assert descendant.architecture == spec.base_architecture
    x = images(spec)
    with torch.inference_mode():
        torch.testing.assert_close(rebuilt(descendant, spec)(x), model(x), rtol=1e-4, atol=1e-4)


def test_every_family_grows_and_shrinks_into_timm(family: tuple) -> None:
    _, spec, _, learngene = family
    for request_ in ({"depth": 6, "embed_dim": 48, "num_heads": 3, "num_classes": 7},
                     {"depth": 2, "embed_dim": 16, "num_heads": 1}):
        target = front.resolve_spec(learngene, request_)
        assert target.features == spec.features
        with torch.inference_mode():
            out = rebuilt(front.expand(learngene, target, seed=3), target)(images(target))
        assert out.shape == (2, target.num_classes) and bool(torch.isfinite(out).all())


def test_the_card_samples_front_within_what_the_growing_methods_offer(learngenes: dict[str, Learngene]) -> None:
    for name, learngene in learngenes.items():
        candidates = list(get_method(name).candidate_specs(learngene))
        sampled = catalogue(learngene)
        if name == "front":
            base = learngene.base_spec
            largest = max(param_count(s) for s in sampled)
            assert largest == param_count(base.replace(depth=2 * base.depth, embed_dim=2 * base.embed_dim,
                                                       num_heads=2 * base.num_heads))
            assert len(sampled) < len(candidates)
        else:
            assert sorted(map(param_count, sampled)) == sorted(map(param_count, candidates)), name
