"""The ViT family users have: each family, made by timm at a small size, is read into a spec, expanded by every
method that handles it (or refused naming the feature), and every descendant loads strictly into the timm
architecture its config.json names. Copying methods at the ancestry's own size compute exactly its outputs."""
from __future__ import annotations

import math
from typing import Any

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed

from engine.ancestry import AncestryError, check_weights, inspect_architecture
from engine.artifacts import descendant_config
from engine.costs import gflops, param_count
from engine.methods import get_method
from engine.methods.base import Descendant, StateDict
from engine.spec import SpecError, ViTSpec
from engine.vit import seeded

SMALL = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 2, "num_classes": 5}
#: name -> (timm architecture, model_args, the family features it must show)
FAMILIES: dict[str, tuple[str, dict[str, Any], set[str]]] = {
    "deit": ("deit_tiny_patch16_224", {}, set()),
    "deit-distilled": ("deit_tiny_distilled_patch16_224", {}, {"distilled"}),
    "vit-384": ("vit_small_patch16_384", {}, set()),
    "dinov2": ("vit_small_patch14_dinov2", {}, {"init_values"}),
    "dinov2-reg": ("vit_small_patch14_reg4_dinov2", {}, {"init_values", "reg_tokens", "no_embed_class"}),
    "medium-gap": ("vit_medium_patch16_gap_256", {}, {"init_values", "qkv_bias", "fc_norm"}),
    "clip": ("vit_base_patch16_clip_quickgelu_224", {}, {"pre_norm", "act_layer", "norm_eps"}),
    "no-qkv-bias": ("vit_base_patch16_224", {"qkv_bias": False, "act_layer": "gelu_tanh"},
                    {"qkv_bias", "act_layer"}),
}


def make_family(name: str) -> tuple[StateDict, ViTSpec, torch.nn.Module]:
    """A timm model of the family with every tensor moved off its init (layer-scale gammas of 1e-5 would hide
    the blocks), its state dict and the spec read off it."""
    architecture, extra, _ = FAMILIES[name]
    args = {**SMALL, **extra}
    spec, shapes, _ = inspect_architecture(architecture, args)
    with seeded(0):
        model = timm.create_model(architecture, pretrained=False, **args)
        with torch.no_grad():
            for tensor in model.state_dict().values():
                tensor.add_(torch.randn_like(tensor) * 0.1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    check_weights(state, shapes, architecture)
    return state, spec, model.eval()


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request: pytest.FixtureRequest) -> tuple[str, StateDict, ViTSpec, torch.nn.Module]:
    return (request.param, *make_family(request.param))


def rebuilt(descendant: Descendant, spec: ViTSpec) -> torch.nn.Module:
    """The descendant as a user rebuilds it from config.json: architecture, num_classes, model_args, strict."""
    config = descendant_config(descendant, spec)
    assert "num_classes" not in config["model_args"]
    model = timm.create_model(config["architecture"], pretrained=False, num_classes=config["num_classes"],
                              **config["model_args"])
    model.load_state_dict(descendant.state_dict, strict=True)
    return model.eval()


def images(spec: ViTSpec) -> torch.Tensor:
    return torch.randn(2, spec.in_chans, spec.img_size, spec.img_size, generator=torch.Generator().manual_seed(1))


def test_the_spec_names_the_family_features(family: tuple) -> None:
    name, _, spec, model = family
    assert set(spec.features) == FAMILIES[name][2]
    assert spec.base_architecture == FAMILIES[name][0] and spec.architecture == FAMILIES[name][0]


@pytest.mark.parametrize("method, params", [("weight-selection", {}), ("layers", {"count": 4})])
def test_same_size_copies_compute_the_ancestry_outputs(family: tuple, method: str, params: dict) -> None:
    _, state, spec, model = family
    learngene = get_method(method).fit(state, spec, params)
    descendant = get_method(method).expand(learngene, spec, seed=0)
    assert descendant.architecture == spec.base_architecture
    x = images(spec)
    with torch.inference_mode():
        assert torch.equal(rebuilt(descendant, spec)(x), model(x))


def test_weight_selection_at_half_width_and_depth_loads_strictly(family: tuple) -> None:
    _, state, spec, _ = family
    method = get_method("weight-selection")
    half = method.resolve_spec(method.fit(state, spec, {}), {"depth": 2, "embed_dim": 16, "num_classes": 3})
    assert half.features == spec.features and half.num_heads == 1
    descendant = method.expand(method.fit(state, spec, {}), half, seed=0)
    with torch.inference_mode():
        out = rebuilt(descendant, half)(images(half))
    assert out.shape == (2, 3) and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("method, params", [("tleg", {}), ("wave", {"tile": [8, 8], "counts": 4}),
                                            ("layers", {"count": 2}), ("random", {}), ("front", {})])
def test_every_method_expands_the_family_or_names_the_feature(family: tuple, method: str, params: dict) -> None:
    _, state, spec, _ = family
    module = get_method(method)
    unsupported = [f for f in spec.features if f not in module.FEATURES]
    if unsupported:
        with pytest.raises(SpecError) as caught:
            module.fit(state, spec, params)
        assert caught.value.field == unsupported[0]
        return
    learngene = module.fit(state, spec, params)
    target = module.resolve_spec(learngene, {"depth": 6, "num_classes": 7})
    descendant = module.expand(learngene, target, seed=3)
    with torch.inference_mode():
        out = rebuilt(descendant, target)(images(target))
    assert out.shape == (2, 7) and bool(torch.isfinite(out).all())


def test_the_pool_carries_layer_scale_and_refuses_what_stitching_cannot_carry(family: tuple) -> None:
    _, state, spec, _ = family
    if not spec.features:
        pytest.skip("a plain ViT: the pool's own tests cover it")
    pool = get_method("pool")
    unsupported = [f for f in spec.features if f not in pool.FEATURES]
    if unsupported:
        with pytest.raises(SpecError) as caught:
            pool.fit(state, spec, {})
        assert caught.value.field == unsupported[0]
        return
    learngene = pool.fit(state, spec, {})
    stitched = [s for s in pool.candidate_specs(learngene) if s.front is not None]
    assert stitched, "a pool of two widths offers stitched descendants"
    for target in (stitched[0].replace(num_classes=7), pool.candidate_specs(learngene)[0]):
        descendant = pool.expand(learngene, target, seed=3)
        assert any(k.endswith("ls1.gamma") for k in descendant.state_dict)  # the ancestry's layer scale, carried
        with torch.inference_mode():
            out = rebuilt(descendant, target)(images(target))
        assert out.shape == (2, target.num_classes) and bool(torch.isfinite(out).all())


def test_config_json_carries_the_family_and_a_fine_tuning_head() -> None:
    state, spec, _ = make_family("clip")
    method = get_method("weight-selection")
    descendant = method.expand(method.fit(state, spec, {}), spec, seed=0)
    pre = {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "interpolation": "bilinear", "crop_pct": 0.875,
           "crop_mode": "center"}
    config = descendant_config(descendant, spec, pre)
    assert config["pretrained_cfg"]["mean"] == pre["mean"] and config["pretrained_cfg"]["interpolation"] == "bilinear"
    model = timm.create_model(config["architecture"], num_classes=11, **config["model_args"])
    assert model.head.out_features == 11 and model.norm_pre.eps == 1e-5
    assert type(model.blocks[0].mlp.act).__name__ == "QuickGELU"


@pytest.mark.parametrize("args, field", [
    ({"depth": 10**9}, "model_args.depth"),
    ({"checkpoint_path": "/etc/passwd"}, "model_args.checkpoint_path"),
    ({"embed_dim": 2.5}, "model_args.embed_dim"),
    ({"act_layer": "relu"}, "model_args.act_layer"),
    ({"init_values": math.nan}, "model_args.init_values"),
    ({"global_pool": "map"}, "model_args.global_pool"),
])
def test_model_args_are_refused_before_anything_is_built(args: dict, field: str) -> None:
    with pytest.raises(AncestryError) as caught:
        inspect_architecture("vit_base_patch16_224", args)
    assert caught.value.field == field


@pytest.mark.parametrize("architecture", ["swin_tiny_patch4_window7_224", "beit_base_patch16_224",
                                          "eva02_tiny_patch14_224", "vit_giant_patch14_dinov2"])
def test_other_families_are_refused_with_the_supported_list(architecture: str) -> None:
    with pytest.raises(AncestryError) as caught:
        inspect_architecture(architecture, {"num_classes": 5})
    assert caught.value.field == "architecture" and "DINOv2" in str(caught.value)


def test_non_finite_weights_are_refused() -> None:
    state, spec, _ = make_family("deit")
    _, shapes, _ = inspect_architecture("deit_tiny_patch16_224", SMALL)
    state["blocks.0.attn.qkv.weight"][0, 0] = math.inf
    with pytest.raises(AncestryError) as caught:
        check_weights(state, shapes, "deit_tiny_patch16_224")
    assert caught.value.field == "file" and "blocks.0.attn.qkv.weight" in str(caught.value)


def test_another_image_size_resamples_the_positions_with_timm() -> None:
    state, spec, _ = make_family("dinov2-reg")
    method = get_method("layers")
    learngene = method.fit(state, spec, {"count": 2})
    target = method.resolve_spec(learngene, {"img_size": 48})
    descendant = method.expand(learngene, target, seed=0)
    # no_embed_class: the positions are the patches' only; 4x4 -> 6x6. timm's resampling, to float32 rounding
    # (ours sums in a fixed order, so that every CPU gives the same bits).
    torch.testing.assert_close(descendant.state_dict["pos_embed"],
                               resample_abs_pos_embed(state["pos_embed"], new_size=[6, 6], num_prefix_tokens=0),
                               rtol=1e-5, atol=1e-6)
    assert param_count(target) == sum(t.numel() for t in descendant.state_dict.values())
    assert gflops(target) > gflops(spec)
    with torch.inference_mode():
        assert rebuilt(descendant, target)(images(target)).shape == (2, 5)


def test_a_pool_serves_its_students_at_another_image_size() -> None:
    # Report v3: a data-free pool of the DINOv2 backbone (518 px) refused every 56-px request; timm adapts a
    # pretrained ViT to another resolution by resampling its positions, and so does the pool now.
    state, spec, _ = make_family("dinov2")
    method = get_method("pool")
    student = {"embed_dim": spec.embed_dim // 2, "num_heads": 1, "depth": 2}
    learngene = method.fit(state, spec, {"students": [student]})
    target = method.resolve_spec(learngene, {"img_size": 48, "depth": 2})
    assert target.img_size == 48
    descendant = method.expand(learngene, target, seed=0)
    own = method.expand(learngene, method.resolve_spec(learngene, {"depth": 2}), seed=0)
    torch.testing.assert_close(descendant.state_dict["pos_embed"],
                               resample_abs_pos_embed(own.state_dict["pos_embed"], new_size=[6, 6],
                                                      num_prefix_tokens=1), rtol=1e-5, atol=1e-6)
    with torch.inference_mode():
        assert rebuilt(descendant, target)(images(target)).shape == (2, 5)
    with pytest.raises(SpecError) as refused:  # 50 px is no whole number of 8-px patches
        method.resolve_spec(learngene, {"img_size": 50})
    assert refused.value.field in ("img_size", "patch_size") and "50" in str(refused.value)
