"""Hugging Face transformers checkpoints (ViT, DeiT, DINOv2 with and without registers) become timm's layout:
the converted timm model computes what the transformers model computes, from either naming generation."""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import timm
import torch

from engine.ancestry import AncestryError, check_weights, inspect_architecture
from engine.convert import from_hugging_face

transformers = pytest.importorskip("transformers")

COMMON = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32, "patch_size": 8,
          "layer_norm_eps": 1e-6}
#: transformers 5 names -> the names transformers 4 saved (documented in engine/convert.py), to test both.
CLASSIC = [(r"\blayers\.(\d+)\.", r"encoder.layer.\1."), (r"attention\.q_proj", "attention.attention.query"),
           (r"attention\.k_proj", "attention.attention.key"), (r"attention\.v_proj", "attention.attention.value"),
           (r"attention\.o_proj", "attention.output.dense"), (r"(layer\.\d+)\.mlp\.fc1", r"\1.intermediate.dense"),
           (r"(layer\.\d+)\.mlp\.fc2", r"\1.output.dense")]


def _model(kind: str) -> tuple[torch.nn.Module, Callable[[Any], torch.Tensor], bool]:
    """(transformers model, its output, whether timm's matching output is the logits) for ``kind``."""
    t = transformers
    if kind == "vit":
        model = t.ViTForImageClassification(t.ViTConfig(**COMMON, intermediate_size=64, num_labels=5))
        return model, lambda out: out.logits, True
    if kind == "deit":
        model = t.DeiTForImageClassificationWithTeacher(t.DeiTConfig(**COMMON, intermediate_size=64, num_labels=5))
        return model, lambda out: out.logits, True
    if kind == "dinov2":
        model = t.Dinov2Model(t.Dinov2Config(**COMMON, mlp_ratio=2, layerscale_value=0.5))
        return model, lambda out: out.last_hidden_state, False
    model = t.Dinov2WithRegistersModel(t.Dinov2WithRegistersConfig(**COMMON, mlp_ratio=2, layerscale_value=0.5,
                                                                   num_register_tokens=2))
    return model, lambda out: out.last_hidden_state, False


@pytest.mark.parametrize("generation", ["transformers-5", "transformers-4"])
@pytest.mark.parametrize("kind", ["vit", "deit", "dinov2", "dinov2_with_registers"])
def test_converted_checkpoints_compute_what_transformers_computes(kind: str, generation: str) -> None:
    torch.manual_seed(0)
    model, output, logits = _model(kind)
    model.eval()
    state = {k: v + torch.randn_like(v) * 0.05 for k, v in model.state_dict().items()}  # off the init
    model.load_state_dict(state)
    if generation == "transformers-4":
        for pattern, replacement in CLASSIC:
            state = {re.sub(pattern, replacement, k): v for k, v in state.items()}
        assert any(".attention.attention.query." in k for k in state)
    architecture, model_args, converted = from_hugging_face(state, model.config.to_dict())
    spec, shapes, _ = inspect_architecture(architecture, model_args)
    check_weights(converted, shapes, architecture)
    rebuilt = timm.create_model(architecture, **model_args)
    rebuilt.load_state_dict(converted, strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        expected = output(model(pixel_values=x))
        got = rebuilt.eval()(x) if logits else rebuilt.eval().forward_features(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert spec.distilled == (kind == "deit") and (spec.init_values is not None) == kind.startswith("dinov2")


@pytest.mark.parametrize("change, field", [
    ({"model_type": "swin"}, "config.model_type"),
    ({"use_swiglu_ffn": True}, "config.use_swiglu_ffn"),
    ({"hidden_act": "relu"}, "config.hidden_act"),
    ({"num_hidden_layers": -1}, "config.num_hidden_layers"),
])
def test_what_cannot_be_converted_is_refused_naming_the_config_key(change: dict, field: str) -> None:
    model, _, _ = _model("dinov2")
    with pytest.raises(AncestryError) as caught:
        from_hugging_face(model.state_dict(), {**model.config.to_dict(), **change})
    assert caught.value.field == field


def test_a_dinov2_classifier_is_refused_not_dropped() -> None:
    model = transformers.Dinov2ForImageClassification(transformers.Dinov2Config(**COMMON, num_labels=3))
    with pytest.raises(AncestryError) as caught:
        from_hugging_face(model.state_dict(), model.config.to_dict())
    assert caught.value.field == "file" and "backbone" in str(caught.value)
