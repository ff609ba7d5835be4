"""The checkpoints users have, end to end over HTTP: every ViT family timm makes (and a Hugging Face layout) uploads,
expands in its own family, and loads strictly into the timm architecture its config.json names; copies at the
ancestry's size compute exactly its outputs; what cannot be served is refused with a 422 naming the field."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load, save_file

from tests.engine.test_engine_families import FAMILIES, SMALL, make_family
from tests.service.conftest import condense_fit


def _upload(client: TestClient, path: Path, architecture: str = "", model_args: dict | None = None,
            config: Path | None = None, **form: Any) -> Any:
    files: dict[str, Any] = {}
    if config is not None:  # every part before the weights: the server checks them before it stores those
        files["config"] = ("config.json", config.read_bytes(), "application/json")
    files["file"] = ("model.safetensors", path.read_bytes(), "application/octet-stream")
    data = {"architecture": architecture, "model_args": json.dumps(model_args or {}),
            **{k: json.dumps(v) for k, v in form.items()}}
    return client.post("/v1/ancestries", files=files, data=data)


def _family_file(name: str, folder: Path) -> tuple[Path, torch.nn.Module]:
    state, _, model = make_family(name)
    path = folder / f"{name}.safetensors"
    save_file(state, str(path))
    return path, model


def _descendant(client: TestClient, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], torch.nn.Module]:
    """(descendant, its config.json, the model rebuilt from config.json and loaded strictly)."""
    r = client.post("/v1/descendants", params={"wait": 60}, json=body)
    assert r.status_code == 201, r.text
    desc = r.json()
    assert desc["status"] == "ready", desc
    config = client.get(desc["config_url"]).json()
    model = timm.create_model(config["architecture"], num_classes=config["num_classes"], **config["model_args"])
    model.load_state_dict(load(client.get(desc["weights_url"]).content), strict=True)
    return desc, config, model.eval()


def _images(size: int = 32) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))


def test_every_family_uploads_and_its_weight_selection_descendants_stay_in_the_family(
        client: TestClient, tmp_path: Path) -> None:
    for name, (architecture, extra, features) in FAMILIES.items():
        path, ancestry_model = _family_file(name, tmp_path)
        r = _upload(client, path, architecture, {**SMALL, **extra})
        assert r.status_code == 201, (name, r.text)
        ancestry = r.json()
        assert ancestry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert ancestry["param_count"] == sum(p.numel() for p in ancestry_model.parameters())
        assert ancestry["family"] == {"deit-distilled": "deit-distilled", "dinov2": "dinov2", "dinov2-reg": "dinov2",
                                      "clip": "clip", "deit": "deit"}.get(name, "vit")
        assert {f for f in features if ancestry["spec"][f] is not None} == features
        source = {"ancestry": ancestry["id"], "method": "weight-selection"}
        _, config, same = _descendant(client, {**source, "spec": {}})
        assert config["architecture"] == architecture and "num_classes" not in config["model_args"]
        assert config["pretrained_cfg"]["mean"] == list(timm.create_model(architecture).pretrained_cfg["mean"])
        with torch.inference_mode():
            assert torch.equal(same(_images()), ancestry_model(_images())), name
        desc, _, half = _descendant(client, {**source, "spec": {"depth": 2, "embed_dim": 16, "num_heads": 1}})
        assert desc["param_count"] == sum(p.numel() for p in half.parameters())
        with torch.inference_mode():
            assert half(_images()).shape == (2, SMALL["num_classes"])


@pytest.mark.parametrize("name", ["dinov2-reg", "clip", "deit-distilled"])
def test_tleg_wave_and_front_fits_expand_real_families_or_refuse_up_front(client: TestClient, tmp_path: Path,
                                                                    name: str) -> None:
    architecture, extra, _ = FAMILIES[name]
    path, _ = _family_file(name, tmp_path)
    mean, std = [0.1, 0.2, 0.3], [0.3, 0.2, 0.1]
    ancestry = _upload(client, path, architecture, {**SMALL, **extra}, mean=mean, std=std).json()
    for method, params in (("tleg", {}), ("wave", {"tile": [8, 8], "counts": 4}), ("front", {})):
        body = {"ancestry": ancestry["id"], "method": method, "learngene": f"{name}-{method}", "mode": "fit",
                "params": params}
        if method == "wave" and name == "deit-distilled":
            r = client.post("/v1/condense-jobs", json=body)
            assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "ancestry.distilled"
            continue
        condense_fit(client, ancestry["id"], method, f"{name}-{method}", params)
        desc, config, model = _descendant(client, {"learngene": f"{name}-{method}", "spec": {"depth": 3,
                                                                                           "img_size": 48}})
        assert config["pretrained_cfg"]["mean"] == mean and config["pretrained_cfg"]["input_size"] == [3, 48, 48]
        assert desc["spec"]["act_layer"] == ancestry["spec"]["act_layer"]
        with torch.inference_mode():
            out = model(_images(48))
        assert out.shape == (2, SMALL["num_classes"]) and bool(torch.isfinite(out).all())
    r = client.post("/v1/condense-jobs", json={"ancestry": ancestry["id"], "method": "pool", "learngene": "p",
                                               "mode": "fit"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["field"] == f"ancestry.{_first_feature(ancestry)}"


def _first_feature(ancestry: dict[str, Any]) -> str:
    """The first family feature of the ancestry that the pool does not carry (it carries layer scale only)."""
    from engine.methods import pool
    from engine.spec import ViTSpec

    return [f for f in ViTSpec.from_dict(ancestry["spec"]).features if f not in pool.FEATURES][0]


def test_a_hugging_face_checkpoint_uploads_as_the_timm_model_it_is(client: TestClient, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8, mlp_ratio=2,
        layerscale_value=0.5, num_register_tokens=2, layer_norm_eps=1e-6)).eval()
    hf.save_pretrained(tmp_path / "hub")
    weights, config = tmp_path / "hub" / "model.safetensors", tmp_path / "hub" / "config.json"
    r = _upload(client, weights, config=config)
    assert r.status_code == 201, r.text
    ancestry = r.json()
    assert ancestry["architecture"] == "vit_base_patch14_reg4_dinov2" and ancestry["converted_from"] == \
        "dinov2_with_registers"
    assert ancestry["model_args"]["reg_tokens"] == 2 and ancestry["family"] == "dinov2"
    _, _, same = _descendant(client, {"ancestry": ancestry["id"], "method": "weight-selection", "spec": {}})
    with torch.inference_mode():
        torch.testing.assert_close(same(_images()), hf(pixel_values=_images()).pooler_output, rtol=1e-5, atol=1e-5)
    again = _upload(client, weights, config=config)
    assert again.status_code == 200 and again.json()["id"] == ancestry["id"]
    swin = tmp_path / "swin.json"
    swin.write_text(json.dumps({**json.loads(config.read_text()), "model_type": "swin"}))
    r = _upload(client, weights, config=swin)
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "config.model_type"


def test_the_same_upload_answers_the_same_ancestry(client: TestClient, tmp_path: Path) -> None:
    path, _ = _family_file("deit", tmp_path)
    first = _upload(client, path, "deit_tiny_patch16_224", SMALL)
    again = _upload(client, path, "deit_tiny_patch16_224", SMALL)
    assert first.status_code == 201 and again.status_code == 200 and again.json() == first.json()
    other = _upload(client, path, "deit_tiny_patch16_224", SMALL, mean=[0.5] * 3, std=[0.5] * 3)
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    assert other.json()["preprocessing"]["mean"] == [0.5] * 3
    assert len(client.get("/v1/ancestries").json()["items"]) == 2


@pytest.mark.parametrize("case, field", [
    ("huge-depth", "model_args.depth"),
    ("checkpoint-path", "model_args.checkpoint_path"),
    ("swin", "architecture"),
    ("non-finite", "file"),
    ("wrong-mean", "mean"),
    ("architecture-and-config", "architecture"),
    ("nothing-named", "architecture"),
])
def test_what_cannot_be_served_is_refused_at_upload(client: TestClient, tmp_path: Path, case: str,
                                                    field: str) -> None:
    path, _ = _family_file("deit", tmp_path)
    architecture, args, form, config = "deit_tiny_patch16_224", dict(SMALL), {}, None
    if case == "huge-depth":
        args["depth"] = 10**9
    elif case == "checkpoint-path":
        args["checkpoint_path"] = "/etc/passwd"
    elif case == "swin":
        architecture = "swin_tiny_patch4_window7_224"
    elif case == "non-finite":
        state = load(path.read_bytes())
        state["blocks.1.mlp.fc1.weight"][0, 0] = math.nan
        save_file(state, str(path))
    elif case == "wrong-mean":
        form = {"mean": [0.5], "std": [0.5]}
    elif case == "architecture-and-config":
        config = tmp_path / "config.json"
        config.write_text(json.dumps({"model_type": "vit"}))
    elif case == "nothing-named":
        architecture = ""
    r = _upload(client, path, architecture, args, config=config, **form)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["field"] == field
    if case == "swin":
        assert "DINOv2" in r.json()["error"]["message"]
    assert client.get("/v1/ancestries").json()["items"] == []


def test_a_timm_hub_snapshot_uploads_with_its_config(client: TestClient, tmp_path: Path) -> None:
    from timm.models._hub import save_for_hf

    _, _, model = make_family("dinov2")
    save_for_hf(model, str(tmp_path / "hub"), safe_serialization=True)
    r = _upload(client, tmp_path / "hub" / "model.safetensors", config=tmp_path / "hub" / "config.json")
    assert r.status_code == 201, r.text
    ancestry = r.json()
    assert ancestry["architecture"] == "vit_small_patch14_dinov2" and ancestry["converted_from"] is None
    assert ancestry["preprocessing"]["mean"] == list(model.pretrained_cfg["mean"])
    _, _, same = _descendant(client, {"ancestry": ancestry["id"], "method": "weight-selection", "spec": {}})
    with torch.inference_mode():
        assert torch.equal(same(_images()), model(_images()))
