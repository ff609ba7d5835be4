"""A random descendant drawn straight into a state dict: timm's layout and constants, timm's distributions, one draw.

Issue 23 item 3: the random method built the model with timm (drawing every weight) and then drew every weight
again through the exact normal quantile, 2.6-3.6 times timm's own create + save."""
from __future__ import annotations

import pytest
import torch

from engine.methods.base import LearngeneError
from engine.spec import FrontSpec, ViTSpec
from engine.vit import build_model, seeded, seeded_state

BASE = ViTSpec(depth=3, embed_dim=48, num_heads=3, num_classes=5, img_size=32, patch_size=8)
FAMILIES = {
    "plain": BASE,
    "dinov2": BASE.replace(init_values=1e-5, reg_tokens=2, no_embed_class=True),
    "clip": BASE.replace(pre_norm=True, qkv_bias=True, act_layer="quick_gelu", class_token=True),
    "avg-pool-fc-norm": BASE.replace(class_token=False, global_pool="avg", fc_norm=True),
    "deit-distilled": BASE.replace(distilled=True, base_architecture="deit_tiny_distilled_patch16_224"),
    "headless": BASE.replace(num_classes=0),
    "stitched": BASE.replace(front=FrontSpec(depth=1, embed_dim=24, num_heads=3)),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_state_has_timms_keys_shapes_and_constants(family: str) -> None:
    spec = FAMILIES[family]
    with seeded(0):
        timm_state = build_model(spec).state_dict()
    ours = seeded_state(spec, 0)
    assert list(ours) == list(timm_state)
    for key, tensor in timm_state.items():
        assert ours[key].shape == tensor.shape and ours[key].dtype == torch.float32, key
        if tensor.numel() > 1 and bool((tensor == tensor.reshape(-1)[0]).all()):  # a constant of timm's init
            assert torch.equal(ours[key], tensor), key
        elif tensor.numel() > 1:
            assert ours[key].std() > 0, key  # drawn, like timm's
    model = build_model(spec)
    model.load_state_dict(ours, strict=True)


def test_the_draws_follow_timms_distributions_and_the_seed() -> None:
    spec = ViTSpec(depth=2, embed_dim=192, num_heads=3, num_classes=10, img_size=32, patch_size=8)
    state = seeded_state(spec, 0)
    with seeded(0):
        timm_state = build_model(spec).state_dict()
    for key in ("blocks.0.attn.qkv.weight", "blocks.1.mlp.fc1.weight", "pos_embed", "head.weight"):
        ours, theirs = state[key], timm_state[key]
        assert abs(ours.std().item() - theirs.std().item()) < 0.1 * theirs.std().item(), key
        assert abs(ours.mean().item()) < 0.1 * theirs.std().item(), key
    bound = 1 / (3 * 8 * 8) ** 0.5  # kaiming_uniform_(a=sqrt(5)) of a (3, 8, 8) fan-in
    patch = state["patch_embed.proj.weight"]
    assert patch.abs().max() <= bound and patch.abs().max() > 0.9 * bound
    assert 0 < state["cls_token"].std() < 1e-5
    again, other = seeded_state(spec, 0), seeded_state(spec, 1)
    assert all(torch.equal(state[k], again[k]) for k in state)
    assert not torch.equal(state["blocks.0.attn.qkv.weight"], other["blocks.0.attn.qkv.weight"])


def test_a_tensor_without_a_rule_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.vit

    shapes = engine.vit.state_shapes(BASE)
    monkeypatch.setattr(engine.vit, "state_shapes", lambda spec: {**shapes, "attn_pool.latent": (1, 1, 48)})
    with pytest.raises(LearngeneError, match="attn_pool.latent"):
        seeded_state(BASE, 0)
