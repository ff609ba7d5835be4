"""Inputs that gave a 500 or were stored wrong (issue "Owners own what they make", items 9-13): each is now a 4xx
naming the field, before anything is stored, or is served as the HTTP specification says."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.context import AppContext
from tests.service.conftest import ARCH, TINY_ARGS, app_client, bearer

sqlite_only = pytest.mark.parametrize("backend_settings", ["sqlite"], indirect=True)


@pytest.fixture(scope="module")
def hf_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small transformers ViT saved as transformers saves it: model.safetensors and config.json."""
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("hf")
    transformers.ViTModel(transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
        patch_size=8, layer_norm_eps=1e-6, add_pooling_layer=False)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def timm_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small timm ViT saved as timm pushes to the Hub (config.json with architecture and pretrained_cfg)."""
    import timm
    from timm.models._hub import save_for_hf

    folder = tmp_path_factory.mktemp("timm-hub")
    save_for_hf(timm.create_model(ARCH, **TINY_ARGS), str(folder), safe_serialization=True)
    return folder


def _upload_snapshot(c: TestClient, folder: Path, config: Any, **fields: str) -> Any:
    raw = config if isinstance(config, bytes) else json.dumps(config).encode()
    files = {"config": ("config.json", raw, "application/json"),
             "file": ("model.safetensors", (folder / "model.safetensors").read_bytes())}
    return c.post("/v1/ancestries", data=fields, files=files)


HF_CASES: dict[str, tuple[dict[str, Any] | bytes, str]] = {
    # Each was a 500 (unhashable type, float("abc"), recursion) or, for qkv_bias, an ancestry with qkv bias.
    "hidden_act_list": ({"hidden_act": []}, "config.hidden_act"),
    "hidden_act_object": ({"hidden_act": {}}, "config.hidden_act"),
    "model_type_list": ({"model_type": []}, "config.model_type"),
    "layerscale_text": ({"model_type": "dinov2", "layerscale_value": "abc"}, "config.layerscale_value"),
    "layerscale_list": ({"model_type": "dinov2", "layerscale_value": [1]}, "config.layerscale_value"),
    "qkv_bias_no": ({"qkv_bias": "no"}, "config.qkv_bias"),
    "hidden_size_true": ({"hidden_size": True}, "config.hidden_size"),
    "deep_list": (b"[" * 100_000, "config"),
    "deep_object": (b'{"a":' * 50_000, "config"),
    "twenty_deep": (json.dumps({"model_type": "vit", "x": [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]}).encode(),
                    "config"),
}


@sqlite_only
@pytest.mark.parametrize("case", sorted(HF_CASES))
def test_hostile_hugging_face_configs_are_422_naming_the_field(ctx: AppContext, hf_snapshot: Path,
                                                               case: str) -> None:
    change, field = HF_CASES[case]
    config = change if isinstance(change, bytes) else {
        **json.loads((hf_snapshot / "config.json").read_text()), **change}
    with app_client(ctx) as c:
        r = _upload_snapshot(c, hf_snapshot, config)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["details"][0]["field"] == field
        assert c.get("/v1/ancestries").json()["items"] == []


@sqlite_only
def test_the_untouched_hugging_face_snapshot_uploads(ctx: AppContext, hf_snapshot: Path) -> None:
    """The cases above change one key of a config that is accepted as it is."""
    with app_client(ctx) as c:
        r = _upload_snapshot(c, hf_snapshot, json.loads((hf_snapshot / "config.json").read_text()))
        assert r.status_code == 201, r.text
        assert r.json()["model_args"]["qkv_bias"] is True and r.json()["converted_from"] == "vit"


@sqlite_only
@pytest.mark.parametrize("form", [{"model_args": "[" * 20_000}, {"mean": "[" * 20_000, "std": "[1]"},
                                  {"mean": "[true]", "std": "[1]"}, {"mean": "[1]", "std": "[0]"}])
def test_hostile_form_fields_are_422_naming_the_field(ctx: AppContext, tiny_ancestry_file: Path,
                                                       form: dict[str, str]) -> None:
    field = next(iter(form)) if "model_args" in form or form["mean"] != "[1]" else "std"
    with app_client(ctx) as c, open(tiny_ancestry_file, "rb") as f:
        r = c.post("/v1/ancestries", files={"file": ("tiny.safetensors", f)},
                   data={"architecture": ARCH, "model_args": json.dumps(TINY_ARGS), **form})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == field, r.text


PRETRAINED_CFG_CASES = {
    "nan_mean": ({"mean": [float("nan")]}, "config.pretrained_cfg.mean.0"),
    "infinite_std": ({"std": [float("inf")]}, "config.pretrained_cfg.std.0"),
    "text_mean": ({"mean": ["0.5"]}, "config.pretrained_cfg.mean.0"),
    "negative_crop": ({"crop_pct": -7}, "config.pretrained_cfg.crop_pct"),
    "script_interpolation": ({"interpolation": "<script>" * 1000}, "config.pretrained_cfg.interpolation"),
    "unknown_crop_mode": ({"crop_mode": "diagonal"}, "config.pretrained_cfg.crop_mode"),
}


@sqlite_only
@pytest.mark.parametrize("case", sorted(PRETRAINED_CFG_CASES))
def test_a_timm_hub_pretrained_cfg_is_checked_like_the_mean_and_std_fields(ctx: AppContext, timm_snapshot: Path,
                                                                           case: str) -> None:
    """Item 10: these were stored; every descendant's config.json was then a 500 (NaN is not JSON) or carried them."""
    change, field = PRETRAINED_CFG_CASES[case]
    config = json.loads((timm_snapshot / "config.json").read_text())
    config["pretrained_cfg"] = {**config["pretrained_cfg"], "mean": [0.5], "std": [0.25], **change}
    with app_client(ctx) as c:
        r = _upload_snapshot(c, timm_snapshot, json.dumps(config, allow_nan=True).encode())
        assert r.status_code == 422, r.text
        assert r.json()["error"]["details"][0]["field"] == field
        assert c.get("/v1/ancestries").json()["items"] == []
        config["pretrained_cfg"] |= {"mean": [0.5], "std": [0.25], "crop_pct": 0.9, "interpolation": "bilinear",
                                     "crop_mode": "center"}
        r = _upload_snapshot(c, timm_snapshot, config)
        assert r.status_code == 201, r.text
        assert r.json()["preprocessing"] == {"mean": [0.5], "std": [0.25], "crop_pct": 0.9,
                                             "interpolation": "bilinear", "crop_mode": "center"}


@sqlite_only
def test_json_booleans_are_not_numbers(ctx: AppContext) -> None:
    """Item 11: ``true`` for an integer limit made a key with limits of 1."""
    with app_client(ctx, api_token="boot") as c:
        for limit in ("rate_per_s", "burst", "max_concurrent_jobs", "descendant_bytes_per_day",
                      "upload_bytes_per_day"):
            r = c.post("/v1/keys", json={"owner": "x", limit: True}, headers=bearer("boot"))
            assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == f"body.{limit}", r.text
        assert c.get("/v1/keys", headers=bearer("boot")).json()["items"] == []
        for body, field in (({"learngene": "x", "spec": {"depth": True}}, "body.spec.depth"),
                            ({"learngene": "x", "seed": True}, "body.seed"),
                            ({"learngene": "x", "budget": {"max_params": True}}, "body.budget.max_params")):
            r = c.post("/v1/descendants", json=body, headers=bearer("boot"))
            assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == field, (body, r.text)
        r = c.post("/v1/condense-jobs", json={"ancestry": True, "method": "tleg", "learngene": "x"},
                   headers=bearer("boot"))
        assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "body.ancestry", r.text
        r = c.post("/v1/keys", json={"owner": "x", "burst": 3, "rate_per_s": 2}, headers=bearer("boot"))
        assert r.status_code == 201 and r.json()["rate_per_s"] == 2.0  # an integer is a number


FORGED = "2026-12-02 20:00:00 ERROR service FORGED: the database was deleted"


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_control_characters_cannot_forge_log_lines(tmp_path: Path, log_format: str) -> None:
    """Item 12: ``GET /v1/jobs/abc%0d%0a2026-12-02 20:00:00 ERROR service FORGED...`` wrote a forged line into the
    text log."""
    import httpx

    from tests.support import make_settings, start_server

    server, url = start_server(make_settings(tmp_path), tmp_path, env={"LEARNGENE_LOG_FORMAT": log_format})
    try:
        for tail in ("%0d%0a", "%0a", "%e2%80%a8", "%1b%5b2K%0d"):  # CRLF, LF, U+2028, an ANSI line erase
            path = f"/v1/jobs/abc{tail}{FORGED.replace(' ', '%20')}"
            assert httpx.get(url + path).status_code == 404
    finally:
        server.stop()
    lines = server.log_path.read_text().splitlines()
    assert not [line for line in lines if line.startswith(FORGED[:19]) or line.lstrip("\r\x1b[2K").startswith("2026-12-02")]
    forged = [line for line in lines if "FORGED" in line]
    assert len(forged) == 4, forged  # one access line per request, each whole
    if log_format == "json":
        assert all(json.loads(line)["path"].startswith("/v1/jobs/abc") for line in forged)
    else:
        assert all(" GET /v1/jobs/abc" in line and "\\" in line for line in forged)


@sqlite_only
def test_ranges_and_head_on_weights(ctx: AppContext, tiny_ancestry_file: Path) -> None:
    """Item 13: ``Range: bytes=100-50`` and ``bytes=abc`` were a 400 with a text body; HEAD on weights a 405."""
    from tests.service.conftest import condense_fit, upload_ancestry

    with app_client(ctx) as c:
        ancestry = upload_ancestry(c, tiny_ancestry_file).json()["id"]
        r = c.post("/v1/descendants?wait=60", json={"ancestry": ancestry, "method": "random", "spec": {"depth": 1}})
        assert r.status_code == 201, r.text
        d = r.json()
        weights, size, etag = d["weights_url"], d["size_bytes"], f'"{d["sha256"]}"'
        for unparseable in ("bytes=100-50", "bytes=abc", "pages=0-1", "bytes=-"):
            r = c.get(weights, headers={"Range": unparseable})
            assert r.status_code == 200 and len(r.content) == size, (unparseable, r.status_code, r.text[:80])
        r = c.get(weights, headers={"Range": f"bytes={size + 10}-"})
        assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{size}"
        assert r.json()["error"]["code"] == "range_not_satisfiable"
        r = c.get(weights, headers={"Range": "bytes=0-9"})
        assert r.status_code == 206 and len(r.content) == 10
        head = c.head(weights)
        assert head.status_code == 200 and int(head.headers["content-length"]) == size and head.content == b""
        assert head.headers["etag"] == etag
        assert c.head(weights, headers={"If-None-Match": etag}).status_code == 304
        condense_fit(c, ancestry, "tleg", "ranged")
        tensors = "/v1/learngenes/ranged/versions/1/tensors"
        head = c.head(tensors)
        assert head.status_code == 200 and int(head.headers["content-length"]) == len(c.get(tensors).content)
        assert c.get(tensors, headers={"Range": "bytes=9-3"}).status_code == 200


@sqlite_only
def test_error_messages_name_no_server_path(ctx: AppContext) -> None:
    """Item 13: a dataset whose image could not be read was refused naming the file's absolute path here."""
    import io
    import os
    import zipfile

    from PIL import Image

    png = io.BytesIO()
    Image.new("L", (8, 8)).save(png, format="PNG")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a/1.png", os.urandom(2000))
        zf.writestr("b/1.png", png.getvalue())
    with app_client(ctx) as c:
        r = c.post("/v1/datasets", files={"file": ("d.zip", archive.getvalue())})
    assert r.status_code == 422, r.text
    message = json.dumps(r.json())
    assert "a/1.png" in message
    for root in (ctx.settings.data_dir.resolve(), ctx.settings.artifact_root):
        assert str(root) not in message, message


def test_seed_with_a_broker_and_no_worker_says_so_and_gives_up(tmp_path: Path, redis_url: str) -> None:
    """Item 13: ``learngene seed`` with a broker and no worker waited silently (13 minutes, until stopped)."""
    import subprocess
    import sys

    from tests.support import REPO, make_settings, service_env

    env = service_env(make_settings(tmp_path, broker_url=redis_url))
    run = subprocess.run([sys.executable, "-m", "service.cli", "seed", "--wait-for-worker", "4"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "waiting for a worker" in run.stdout and "learngene worker" in run.stdout
    assert "no worker took a seeding job" in run.stderr and "learngene worker --queues" in run.stderr
