"""Parameter counts and FLOPs by formula agree with the models timm actually builds."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from engine.costs import gflops, param_count, state_shapes
from engine.spec import FrontSpec, ViTSpec
from engine.vit import build_model

SPECS = [
    ViTSpec(depth=2, embed_dim=32, num_heads=4, num_classes=10, img_size=16, patch_size=4),
    ViTSpec(depth=3, embed_dim=48, num_heads=3, num_classes=0, img_size=16, patch_size=4),
    ViTSpec(depth=1, embed_dim=32, num_heads=2, num_classes=7, img_size=16, patch_size=4, class_token=False,
            global_pool="avg"),
    ViTSpec(depth=2, embed_dim=40, num_heads=5, mlp_ratio=2.5, num_classes=1, img_size=24, patch_size=8,
            global_pool="avg"),
    ViTSpec(depth=2, embed_dim=32, num_heads=4, mlp_ratio=3.0, num_classes=1000, img_size=16, patch_size=2,
            in_chans=1),
    ViTSpec(depth=5, embed_dim=64, num_heads=4, num_classes=10, img_size=16, patch_size=4,
            front=FrontSpec(depth=2, embed_dim=32, num_heads=2)),
    ViTSpec(depth=3, embed_dim=32, num_heads=2, num_classes=0, img_size=16, patch_size=4, class_token=False,
            global_pool="avg", front=FrontSpec(depth=1, embed_dim=48, num_heads=4, mlp_ratio=2.0)),
    ViTSpec(depth=3, embed_dim=32, num_heads=2, num_classes=3, img_size=16, patch_size=4,
            front=FrontSpec(depth=2, embed_dim=32, num_heads=4, mlp_ratio=2.0)),  # same width: no stitch
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.architecture}-d{s.depth}-w{s.embed_dim}-{s.global_pool}")
def test_layout_and_param_count_match_the_built_model(spec: ViTSpec) -> None:
    state = build_model(spec).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == state_shapes(spec)
    assert param_count(spec) == sum(t.numel() for t in state.values())


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.architecture}-d{s.depth}-w{s.embed_dim}-{s.global_pool}")
def test_gflops_match_torch_flop_counter(spec: ViTSpec) -> None:
    model = build_model(spec).eval()
    for block in model.blocks:
        block.attn.fused_attn = False  # explicit matmuls, which the counter sees (it skips CPU fused attention)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.randn(1, spec.in_chans, spec.img_size, spec.img_size))
    assert gflops(spec) * 1e9 == pytest.approx(counter.get_total_flops(), rel=1e-12)


def test_vit_base_costs_match_published_numbers() -> None:
    vit_b = ViTSpec(depth=12, embed_dim=768, num_heads=12)
    assert param_count(vit_b) == 86_567_656  # timm's vit_base_patch16_224
    assert gflops(vit_b) == pytest.approx(2 * 17.58, abs=0.05)  # timm lists 17.58 GMACs
