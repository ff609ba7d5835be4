"""A headless DINOv2-style ancestry (layer scale, no head: the normal self-supervised checkpoint) through the API:
trained condensing distils its features end to end (it used to be queued and then fail), and every request that
could never run is a 422 naming the field, with no job made."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load, save_file
from sqlalchemy import func, select

from service.context import AppContext
from service.models import Job
from tests.service.conftest import wait_job

sqlite_only = pytest.mark.parametrize("backend_settings", ["sqlite"], indirect=True)

ARCH = "vit_small_patch14_dinov2"
#: Digits are 8x8 gray images: resized to 16 px and repeated to the ancestry's 3 channels.
ARGS = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 4, "num_heads": 2, "mlp_ratio": 2.0,
        "num_classes": 0}
QUICK = {"steps": 12, "batch_size": 16, "warmup_steps": 2, "checkpoint_every_s": 0}


@pytest.fixture(scope="module")
def headless_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = timm.create_model(ARCH, pretrained=False, **ARGS)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("gamma"):
                tensor.uniform_(0.2, 1.0)  # timm's 1e-5 would make every block a no-op
    path = tmp_path_factory.mktemp("headless") / "dino.safetensors"
    save_file(model.state_dict(), str(path))
    return path


@pytest.fixture
def ancestry(client: TestClient, headless_file: Path) -> int:
    r = client.post("/v1/ancestries", files={"file": ("dino.safetensors", headless_file.read_bytes(),
                                                      "application/octet-stream")},
                    data={"architecture": ARCH, "model_args": json.dumps(ARGS)})
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["num_classes"] == 0 and r.json()["spec"]["init_values"] is not None
    return int(r.json()["id"])


def _submit(client: TestClient, body: dict[str, Any]) -> Any:
    return client.post("/v1/condense-jobs", json=body)


def _descendant_outputs(client: TestClient, body: dict[str, Any]) -> torch.Tensor:
    r = client.post("/v1/descendants", params={"wait": 60}, json=body)
    assert r.status_code == 201, r.text
    config = client.get(r.json()["config_url"]).json()
    model = timm.create_model(config["architecture"], num_classes=config["num_classes"], **config["model_args"])
    model.load_state_dict(load(client.get(r.json()["weights_url"]).content), strict=True)
    with torch.no_grad():
        return model.eval()(torch.randn(2, 3, 16, 16))


@sqlite_only
@pytest.mark.parametrize("method, params", [
    ("tleg", {**QUICK, "aux_depth": 4}),
    ("pool", {**QUICK, "stitch_images": 32, "students": [{"embed_dim": 16, "num_heads": 1, "depth": 2},
                                                        {"embed_dim": 32, "num_heads": 2, "depth": 2}]}),
])
def test_trained_condensing_of_a_headless_ancestry_succeeds_end_to_end(
        client: TestClient, ancestry: int, method: str, params: dict[str, Any]) -> None:
    # No evaluation card (the request's evaluate), but the run's own before/after metrics (the params').
    r = _submit(client, {"ancestry": ancestry, "method": method, "learngene": f"h-{method}", "mode": "train",
                         "dataset": "builtin:digits", "params": {**params, "evaluate": True}, "evaluate": False})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"], timeout=300)
    assert job["state"] == "succeeded", job["error"]
    version = client.get(f"/v1/learngenes/h-{method}/versions/latest").json()
    metrics = version["metrics"]
    assert metrics["val_feature_loss_after"] < metrics["val_feature_loss_before"]
    assert version["hyperparams"]["objective"] == "auto"
    out = _descendant_outputs(client, {"learngene": f"h-{method}", "spec": {"num_classes": 6}})
    assert out.shape == (2, 6) and bool(torch.isfinite(out).all())


@sqlite_only
def test_wave_train_then_refine_of_a_headless_ancestry(client: TestClient, ancestry: int) -> None:
    r = _submit(client, {"ancestry": ancestry, "method": "wave", "learngene": "h-wave", "mode": "train",
                         "dataset": "builtin:digits", "params": {**QUICK, "tile": [8, 8], "counts": 4},
                         "evaluate": False})
    assert r.status_code == 202, r.text
    assert wait_job(client, r.json()["id"], timeout=300)["state"] == "succeeded"
    r = _submit(client, {"ancestry": ancestry, "method": "wave", "learngene": "h-wave", "mode": "refine",
                         "dataset": "builtin:digits",
                         "params": {**QUICK, "sizes": [{"embed_dim": 16, "num_heads": 1, "depth": 3}]}})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"], timeout=300)
    assert job["state"] == "succeeded", job["error"]
    out = _descendant_outputs(client, {"learngene": "h-wave",
                                       "spec": {"embed_dim": 16, "num_heads": 1, "depth": 3, "num_classes": 4}})
    assert out.shape == (2, 4)


@sqlite_only
@pytest.mark.parametrize("method, mode, params, field", [
    ("tleg", "train", {"objective": "logits"}, "params.objective"),
    ("pool", "train", {"objective": "both"}, "params.objective"),
    ("layers", "fit", {"count": 5}, "params.count"),
    ("layers", "train", {"count": 9}, "params.count"),
    ("layers", "fit", {"indices": [0, 4]}, "params.indices"),
    ("pool", "fit", {"students": [{"embed_dim": 64, "num_heads": 2, "depth": 2}]}, "params.students"),
    ("pool", "train", {"student_blocks": "last"}, "params.student_blocks"),
    ("wave", "train", {"tile": [6, 6]}, "params.tile"),
    ("tleg", "train", {"aux_embed_dim": 64}, "params.aux_embed_dim"),
    ("wave", "refine", {"sizes": [{"depth": 2}], "objective": "logits"}, "params.objective"),
])
def test_requests_a_headless_ancestry_cannot_run_are_422_and_queue_nothing(
        client: TestClient, ctx: AppContext, ancestry: int, method: str, mode: str, params: dict[str, Any],
        field: str) -> None:
    body = {"ancestry": ancestry, "method": method, "learngene": f"no-{method}", "mode": mode,
            "dataset": "builtin:digits", "params": params}
    if mode == "refine":  # a learngene to refine, made by a fit (no job is counted below but this one)
        fit = _submit(client, {"ancestry": ancestry, "method": "wave", "learngene": body["learngene"], "mode": "fit",
                               "params": {"tile": [8, 8], "counts": 4}})
        assert wait_job(client, fit.json()["id"])["state"] == "succeeded"
    with ctx.sessions() as s:
        jobs_before = s.scalar(select(func.count()).select_from(Job))
    r = _submit(client, body)
    assert r.status_code == 422, r.text
    assert [d["field"] for d in r.json()["error"]["details"]] == [field], r.json()
    with ctx.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == jobs_before


@sqlite_only
def test_layers_descendant_sizes_name_the_count_that_fits(client: TestClient, ancestry: int) -> None:
    r = _submit(client, {"ancestry": ancestry, "method": "layers", "learngene": "h-layers", "mode": "fit"})
    assert wait_job(client, r.json()["id"])["state"] == "succeeded"
    r = client.post("/v1/descendants", json={"learngene": "h-layers", "spec": {"depth": 1}})
    assert r.status_code == 422 and "count in [1, 1]" in r.text, r.text
    r = client.post("/v1/descendants", json={"learngene": "h-layers", "spec": {"embed_dim": 16, "num_heads": 1}})
    assert r.status_code == 422 and "width 32" in r.text, r.text
