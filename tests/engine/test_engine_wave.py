"""WAVE: every expanded weight is the Kronecker sum of the stored templates, so it lies in their span."""
from __future__ import annotations

import pytest
import torch

from engine.methods import wave
from engine.methods.base import Learngene, StateDict
from engine.spec import SpecError, ViTSpec
from engine.vit import block_key

SIZES = [{}, {"depth": 6, "embed_dim": 96, "num_heads": 6}, {"depth": 2, "embed_dim": 32, "num_heads": 2}]


@pytest.mark.parametrize("partial", SIZES, ids=["same", "larger", "smaller"])
def test_every_weight_is_the_kronecker_sum_of_the_templates(learngenes: dict[str, Learngene], partial: dict) -> None:
    learngene = learngenes["wave"]
    spec = wave.resolve_spec(learngene, partial)
    state = wave.expand(learngene, spec, seed=0).state_dict
    scalers = wave.resample_scalers(learngene, spec)
    for kind, key in wave.KINDS.items():
        templates = learngene.tensors[f"templates.{kind}"]
        assert scalers[kind].shape[:2] == (spec.depth, learngene.meta["counts"][kind])
        for i in range(spec.depth):
            expected = sum(torch.kron(s, t) for s, t in zip(scalers[kind][i], templates))
            torch.testing.assert_close(state[block_key(i, key)], expected, rtol=1e-5, atol=1e-6)
            check = wave.span_check(state[block_key(i, key)], templates)
            assert check.rank <= len(templates)
            assert check.relative_residual < 1e-6


def test_the_span_check_rejects_weights_outside_the_templates(learngenes: dict[str, Learngene],
                                                              ancestry: StateDict) -> None:
    templates = learngenes["wave"].tensors["templates.fc1"]
    check = wave.span_check(ancestry[block_key(0, "mlp.fc1.weight")], templates)
    assert check.rank > len(templates)
    assert check.relative_residual > 0.1


def test_fit_recovers_weights_built_from_templates(tiny: ViTSpec, ancestry: StateDict) -> None:
    generator = torch.Generator().manual_seed(3)
    templates = torch.randn(3, 8, 8, generator=generator)
    built = dict(ancestry)
    for kind, key in wave.KINDS.items():
        m1, m2 = wave.weight_shape(tiny, kind)
        scalers = torch.randn(tiny.depth, 3, m1 // 8, m2 // 8, generator=generator)
        built.update({block_key(i, key): wave.compose(scalers[i], templates) for i in range(tiny.depth)})
    learngene = wave.fit(built, tiny, {"tile": [8, 8], "counts": 3})
    assert max(learngene.meta["fit"]["relative_residual"].values()) < 1e-5
    state = wave.expand(learngene, tiny, seed=0).state_dict
    for i in range(tiny.depth):
        for key in wave.KINDS.values():
            torch.testing.assert_close(state[block_key(i, key)], built[block_key(i, key)], rtol=1e-4, atol=1e-5)


def test_same_size_keeps_the_tensors_outside_the_scheme(learngenes: dict[str, Learngene], tiny: ViTSpec,
                                                        ancestry: StateDict) -> None:
    state = wave.expand(learngenes["wave"], tiny, seed=0).state_dict
    for key in ("pos_embed", "cls_token", block_key(2, "norm2.weight"), block_key(1, "attn.qkv.bias"), "head.weight"):
        assert torch.equal(state[key], ancestry[key]), key


def test_scalers_resample_by_relative_depth(learngenes: dict[str, Learngene], tiny: ViTSpec) -> None:
    learngene = learngenes["wave"]
    stored = learngene.tensors["scalers.proj"]
    doubled = wave.resample_scalers(learngene, tiny.replace(depth=2 * tiny.depth))["proj"]
    assert torch.equal(doubled[::2], stored)  # block 2i of 2L sits at aux block i
    torch.testing.assert_close(doubled[1], (stored[0] + stored[1]) / 2)


def test_width_must_be_a_multiple_of_the_tile(learngenes: dict[str, Learngene]) -> None:
    with pytest.raises(SpecError) as caught:
        wave.resolve_spec(learngenes["wave"], {"embed_dim": 36, "num_heads": 3})
    assert caught.value.field == "embed_dim"


def test_trained_defaults_condense_a_small_ancestry_and_keep_vit_b() -> None:
    """Regression (issue 15): the fit's defaults (32x32 tiles, 64 templates) kept 0.81 of a 64-wide ancestry's
    block weights, so a trained WAVE learngene of the Fashion seed was a re-encoding, not a condensation."""
    small = ViTSpec(depth=6, embed_dim=64, num_heads=4, num_classes=5, img_size=28, patch_size=7, in_chans=1)
    assert wave.stored_share(small, (32, 32), wave.DEFAULT_COUNT) > 0.8
    defaults = wave.train_defaults(small)
    assert defaults == {"tile": [16, 16], "counts": wave.TRAIN_COUNT}
    assert wave.stored_share(small, (16, 16), defaults["counts"]) <= wave.CONDENSED_SHARE
    vit_b = ViTSpec(depth=12, embed_dim=768, num_heads=12, num_classes=1000)
    assert wave.train_defaults(vit_b) == {"tile": [32, 32], "counts": wave.DEFAULT_COUNT}
    # A tile the request names is kept; only the count left out is sized for it.
    assert wave.train_defaults(small, (32, 32)) == {"tile": [32, 32], "counts": wave.TRAIN_COUNT}
    assert wave.train_defaults(vit_b, (8, 8))["tile"] == [8, 8]
