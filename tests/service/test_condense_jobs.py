"""Condensing jobs through the API on builtin:digits: every method, cancellation, bad input."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load
from sqlalchemy import func, select

from service.context import AppContext
from service.models import Job, LearngeneRow, LearngeneVersion
from tests.service.conftest import upload_ancestry, wait_job
from tests.support import wait_until

sqlite_only = pytest.mark.parametrize("backend_settings", ["sqlite"], indirect=True)

SMALL_TRAIN = {"steps": 12, "batch_size": 16, "warmup_steps": 2}
CASES: dict[str, dict[str, Any]] = {
    "tleg": {**SMALL_TRAIN, "aux_depth": 4},
    "wave": {**SMALL_TRAIN},
    "pool": {**SMALL_TRAIN, "students": [{"embed_dim": 16, "num_heads": 1, "depth": 2},
                                         {"embed_dim": 32, "num_heads": 2, "depth": 2}], "stitch_images": 32},
    "layers": {"count": 2, "sample_size": 64, "batch_size": 32},
}


@pytest.fixture
def ancestry(client: TestClient, tiny_ancestry_file: Path) -> int:
    return int(upload_ancestry(client, tiny_ancestry_file).json()["id"])


def _submit(client: TestClient, body: dict[str, Any]) -> Any:
    return client.post("/v1/condense-jobs", json=body)


@sqlite_only
@pytest.mark.parametrize("method", sorted(CASES))
def test_training_each_method_on_digits_gives_a_ready_learngene(
    method: str, client: TestClient, ancestry: int
) -> None:
    import timm

    import engine.stitched  # noqa: F401

    r = _submit(client, {"ancestry": ancestry, "method": method, "learngene": f"t-{method}",
                         "dataset": "builtin:digits", "params": CASES[method], "evaluate": method == "tleg"})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"], timeout=300)
    assert job["state"] == "succeeded", job["error"]
    version = client.get(f"/v1/learngenes/t-{method}/versions/latest").json()
    assert version["method"] == method and version["sha256"]
    assert version["lineage"] == {"ancestry_id": ancestry, "ancestry_name": "tiny", "dataset": "builtin:digits",
                                  "job_id": job["id"], "mode": "train", "ancestry_deleted": None,
                                  "dataset_deleted": None}
    assert version["hyperparams"]["batch_size"] == CASES[method]["batch_size"]
    if method == "tleg":
        card = version["metrics"]["evaluation_card"]
        assert card["sizes"] and all({"learngene_accuracy", "random_accuracy"} <= set(s) for s in card["sizes"])
    loss = client.get(f"/v1/jobs/{job['id']}/loss").json()["points"]
    if method != "layers":  # layers scores blocks; it does not train
        assert loss and all(p["loss"] >= 0 for p in loss)
        png = client.get(f"/v1/jobs/{job['id']}/loss.png")
        assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"

    desc = client.post("/v1/descendants", params={"wait": 60}, json={"learngene": f"t-{method}"})
    assert desc.status_code == 201, desc.text
    config = client.get(desc.json()["config_url"]).json()
    model = timm.create_model(config["architecture"], num_classes=config["num_classes"], **config["model_args"])
    model.load_state_dict(load(client.get(desc.json()["weights_url"]).content), strict=True)
    assert model.eval()(torch.randn(2, 1, 16, 16)).shape[0] == 2


@sqlite_only
def test_fit_mode_needs_no_dataset_and_runs_on_the_cpu_queue(client: TestClient, ancestry: int) -> None:
    for method in ("tleg", "wave"):
        # The OpenAPI's first example: no dataset and no `evaluate`, so no evaluation card is asked for.
        r = _submit(client, {"ancestry": ancestry, "method": method, "learngene": f"f-{method}", "mode": "fit"})
        assert r.status_code == 202 and r.json()["queue"] == "cpu"
        assert wait_job(client, r.json()["id"])["state"] == "succeeded"
    trained = _submit(client, {"ancestry": ancestry, "method": "tleg", "learngene": "f-tleg",
                               "dataset": "builtin:digits", "params": {**CASES["tleg"], "steps": 2000},
                               "evaluate": False})
    assert trained.json()["queue"] == "gpu"
    client.post(f"/v1/jobs/{trained.json()['id']}/cancel")


@sqlite_only
def test_cancelling_a_running_job_leaves_no_version(client: TestClient, ctx: AppContext, ancestry: int) -> None:
    r = _submit(client, {"ancestry": ancestry, "method": "tleg", "learngene": "cancel-me", "dataset": "builtin:digits",
                         "params": {**CASES["tleg"], "steps": 100000}, "evaluate": False})
    job_id = r.json()["id"]
    wait_until(lambda: client.get(f"/v1/jobs/{job_id}").json()["progress"].get("step", 0) >= 2, 120,
               what="training to start")
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    job = wait_job(client, job_id, timeout=60)
    assert job["state"] == "cancelled"
    assert client.get("/v1/learngenes/cancel-me").status_code == 404
    with ctx.sessions() as s:
        assert s.scalar(select(func.count()).select_from(LearngeneVersion)) == 0
        assert s.scalar(select(func.count()).select_from(LearngeneRow)) == 0


@sqlite_only
@pytest.mark.parametrize("patch,field", [
    ({"method": "prune"}, "body.method"),
    ({"ancestry": 999}, "ancestry"),
    ({"dataset": "imagefolder:/etc"}, "dataset"),
    ({"dataset": "imagefolder:relative/path"}, "dataset"),
    ({"dataset": "s3://bucket/data"}, "dataset"),
    ({"dataset": "dataset:42"}, "dataset"),
    ({"dataset": "builtin:cifar"}, "dataset"),
    ({"dataset": "builtin:fashion-mnist?classes=0-12"}, "dataset"),
    ({"dataset": "builtin:fashion-mnist?classes=4-2"}, "dataset"),
    ({"dataset": "builtin:mnist?split=test"}, "dataset"),
    ({"dataset": "builtin:mnist+mnist"}, "dataset"),
    ({"dataset": "builtin:fashion-mnist+mnist?classes=0-20"}, "dataset"),
    ({"dataset": "builtin:shapes?classes=0-6"}, "dataset"),  # six kinds: 0-5
    ({"params": {"steps": 0}}, "params.steps"),
    ({"params": {"lr": 5.0}}, "params.lr"),
    ({"params": {"bogus": 1}}, "params.bogus"),
    ({"learngene": "Bad Name!"}, "learngene"),
    ({"params": {"img_size": 18}}, "params.img_size"),  # not on the ancestry's 4-px patch grid
    ({"params": {"img_size": 4}}, "params.img_size"),
    ({"params": {"img_size": "16"}}, "params.img_size"),
    ({"params": {"eval_images": 0}}, "params.eval_images"),
    ({"params": {"evaluate": "no"}}, "params.evaluate"),
    ({"params": {"precision": "fp16"}}, "params.precision"),
    ({"params": {"augment": "heavy"}}, "params.augment"),
    ({"params": {"mix": 1.5}}, "params.mix"),
    ({"method": "pool", "params": {"hidden_weight": -1}}, "params.hidden_weight"),
    # The hidden term belongs to the features objective; this ancestry has a head, so auto distils its logits.
    ({"method": "pool", "params": {"hidden_weight": 1.0}}, "params.hidden_weight"),
    ({"dataset": None, "mode": "train"}, "dataset"),
    ({"dataset": None, "mode": "fit", "evaluate": True}, "evaluate"),
    # Cross-entropy on 20 classes through the ancestry's 10-class head: used to be queued, then fail.
    ({"dataset": "builtin:digits+mnist", "params": {"ce_weight": 1.0}}, "params.ce_weight"),
    ({"method": "wave", "dataset": "builtin:fashion-mnist+mnist"}, "params.ce_weight"),
])
def test_bad_condense_requests_are_4xx_and_queue_nothing(
    patch: dict[str, Any], field: str, client: TestClient, ctx: AppContext, ancestry: int
) -> None:
    body = {"ancestry": ancestry, "method": "tleg", "learngene": "ok-name", "dataset": "builtin:digits",
            "params": {}, **patch}
    r = _submit(client, body)
    assert r.status_code in (404, 422), r.text
    fields = [d["field"] for d in r.json()["error"]["details"]]
    assert field in fields, fields
    with ctx.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0


@sqlite_only
def test_a_job_condenses_on_procedural_shapes_joined_to_a_packaged_dataset(client: TestClient, ancestry: int) -> None:
    # builtin:shapes needs no package and no file: generic condensing data for a target unlike what one has.
    r = _submit(client, {"ancestry": ancestry, "method": "tleg", "learngene": "on-shapes",
                         "dataset": "builtin:digits+shapes", "params": {**CASES["tleg"], "img_size": 8},
                         "evaluate": False})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"], timeout=300)
    assert job["state"] == "succeeded", job["error"]
    version = client.get("/v1/learngenes/on-shapes/versions/latest").json()
    assert version["lineage"]["dataset"] == "builtin:digits+shapes"


@sqlite_only
def test_a_job_condenses_at_the_image_size_and_evaluation_budget_it_asks_for(client: TestClient,
                                                                             ancestry: int) -> None:
    params = {**CASES["tleg"], "img_size": 8, "eval_images": 40, "precision": "fp32"}
    r = _submit(client, {"ancestry": ancestry, "method": "tleg", "learngene": "small-run", "dataset": "builtin:digits",
                         "params": params, "evaluate": False})
    assert r.status_code == 202, r.text
    assert wait_job(client, r.json()["id"], timeout=300)["state"] == "succeeded"
    version = client.get("/v1/learngenes/small-run/versions/latest").json()
    assert {k: version["hyperparams"][k] for k in params} == params
    # evaluate: false on the request skips the run's validation metrics as well as the card.
    assert version["metrics"]["evaluated"] is False and "val_kl_after" not in version["metrics"]
    assert version["meta"]["spec"]["img_size"] == 8
    # The learngene was condensed at 8 px (a 2x2 patch grid); a descendant asks for its own size.
    desc = client.post("/v1/descendants", params={"wait": 60},
                       json={"learngene": "small-run", "spec": {"depth": 3, "img_size": 16}})
    assert desc.status_code == 201, desc.text
    assert client.get(desc.json()["config_url"]).json()["model_args"]["img_size"] == 16

    r = _submit(client, {"ancestry": ancestry, "method": "tleg", "learngene": "small-run", "dataset": "builtin:digits",
                         "params": {**params, "evaluate": True}, "evaluate": False})
    assert wait_job(client, r.json()["id"], timeout=300)["state"] == "succeeded"
    metrics = client.get("/v1/learngenes/small-run/versions/latest").json()["metrics"]
    assert metrics["val_images"] == 40 and "evaluation_card" not in metrics


@sqlite_only
def test_a_learngene_name_keeps_its_method(client: TestClient, ancestry: int) -> None:
    r = _submit(client, {"ancestry": ancestry, "method": "tleg", "learngene": "mine", "mode": "fit", "evaluate": False})
    assert wait_job(client, r.json()["id"])["state"] == "succeeded"
    r = _submit(client, {"ancestry": ancestry, "method": "wave", "learngene": "mine", "mode": "fit", "evaluate": False})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "learngene"
    r = _submit(client, {"ancestry": ancestry, "method": "tleg", "learngene": "mine", "mode": "fit", "evaluate": False})
    assert wait_job(client, r.json()["id"])["state"] == "succeeded"
    assert client.get("/v1/learngenes/mine").json()["latest_version"] == 2


@sqlite_only
def test_methods_list_their_modes_and_paper_defaults(client: TestClient) -> None:
    methods = {m["name"]: m for m in client.get("/v1/methods").json()}
    assert set(methods) == {"tleg", "wave", "pool", "layers", "front", "weight-selection", "random"}
    assert methods["random"]["condensing"] == [] and methods["tleg"]["condensing"] == ["fit", "train"]
    assert methods["random"]["baseline"] and not methods["tleg"]["baseline"]
    assert methods["wave"]["condensing"] == ["fit", "train", "refine"]
    assert {p["name"]: p for p in methods["wave"]["params"]}["sizes"]["modes"] == ["refine"]
    tleg = {p["name"]: p for p in methods["tleg"]["params"]}
    assert tleg["aux_depth"]["default"] == 12 and tleg["aux_depth"]["modes"] == ["train"]
    assert tleg["temperature"]["default"] == 1.0 and tleg["kl_weight"]["default"] == 1.0


def _wave_fit(client: TestClient, ancestry: int, name: str) -> None:
    r = _submit(client, {"ancestry": ancestry, "method": "wave", "learngene": name, "mode": "fit",
                         "params": {"tile": [8, 8], "counts": 8}, "evaluate": False})
    assert wait_job(client, r.json()["id"])["state"] == "succeeded"


@sqlite_only
def test_refining_wave_adds_a_version_whose_refined_width_changes_its_descendants(
    client: TestClient, ancestry: int
) -> None:
    _wave_fit(client, ancestry, "rw")
    size = {"embed_dim": 16, "num_heads": 1}
    refine = {"ancestry": ancestry, "method": "wave", "learngene": "rw", "mode": "refine",
              "dataset": "builtin:digits", "params": {**SMALL_TRAIN, "sizes": [size]}}
    r = _submit(client, refine)
    assert r.status_code == 202 and r.json()["queue"] == "gpu", r.text
    job = wait_job(client, r.json()["id"], timeout=300)
    assert job["state"] == "succeeded", job["error"]
    version = client.get("/v1/learngenes/rw/versions/latest").json()
    assert version["version"] == 2 and version["lineage"]["mode"] == "refine"
    assert version["meta"]["refined"] == {"16x64": {"depth": 4, "embed_dim": 16, "num_heads": 1, "mlp_ratio": 4.0}}
    assert version["metrics"]["refined_from_version"] == 1 and "16x64" in version["metrics"]["sizes"]
    assert version["metrics"]["evaluation_card"]["sizes"]

    # The refined width's descendants differ between versions; those of other widths do not.
    def weights(ref: str, spec: dict[str, Any]) -> dict[str, torch.Tensor]:
        d = client.post("/v1/descendants", params={"wait": 60}, json={"learngene": f"rw:{ref}", "spec": spec})
        assert d.status_code == 201, d.text
        return load(client.get(d.json()["weights_url"]).content)

    refined_size = {**size, "depth": 3}
    assert not weights("1", refined_size)["blocks.0.attn.qkv.weight"].equal(
        weights("2", refined_size)["blocks.0.attn.qkv.weight"])
    assert weights("1", {"depth": 3})["blocks.0.attn.qkv.weight"].equal(
        weights("2", {"depth": 3})["blocks.0.attn.qkv.weight"])


@sqlite_only
def test_bad_refine_requests_are_4xx_and_queue_nothing(client: TestClient, ctx: AppContext, ancestry: int,
                                                       tiny_ancestry_file: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    _wave_fit(client, ancestry, "rw2")
    # Another file with the same weights: the same file again would answer the same ancestry.
    copy = tmp_path / "other.safetensors"
    save_file(load_file(str(tiny_ancestry_file)), str(copy), metadata={"copy": "other"})
    other = int(upload_ancestry(client, copy).json()["id"])
    assert other != ancestry
    good = {"ancestry": ancestry, "method": "wave", "learngene": "rw2", "mode": "refine",
            "dataset": "builtin:digits", "evaluate": False, "params": {"sizes": [{"embed_dim": 16, "num_heads": 1}]}}
    cases = [
        ({"method": "tleg", "learngene": "other"}, "mode"),
        ({"learngene": "no-such"}, "learngene"),
        ({"ancestry": other}, "ancestry"),
        ({"dataset": None}, "dataset"),
        ({"params": {}}, "params.sizes"),
        ({"params": {"sizes": [{"embed_dim": 12, "num_heads": 1}]}}, "params.sizes"),
        ({"params": {"sizes": [{"embed_dim": 16, "num_heads": 1}, {"embed_dim": 16, "num_heads": 2}]}},
         "params.sizes"),
        ({"params": {"sizes": [{"width": 16}]}}, "params.sizes"),
        ({"params": {"sizes": [{"embed_dim": 16, "num_heads": 1}], "tile": [8, 8]}}, "params.tile"),
        # The learngene is 16 px: refinement trains its scalers on that grid only.
        ({"params": {"sizes": [{"embed_dim": 16, "num_heads": 1}], "img_size": 8}}, "params.img_size"),
        ({"params": {"sizes": [{"embed_dim": 16, "num_heads": 1}], "eval_images": -1}}, "params.eval_images"),
    ]
    with ctx.sessions() as s:
        jobs_before = s.scalar(select(func.count()).select_from(Job))
    for patch, field in cases:
        r = _submit(client, {**good, **patch})
        assert r.status_code in (404, 422), (patch, r.text)
        assert field in [d["field"] for d in r.json()["error"]["details"]], (patch, r.json())
    with ctx.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == jobs_before


@sqlite_only
def test_the_api_enums_follow_the_method_registry(client: TestClient) -> None:
    from engine.methods import BASELINE_NAMES, CONDENSING_NAMES, METHOD_NAMES, MODES

    schemas = client.get("/openapi.json").json()["components"]["schemas"]

    def enum(model: str, field: str) -> list[str]:
        prop = schemas[model]["properties"][field]
        options = prop.get("anyOf", [prop])
        return next(o["enum"] for o in options if "enum" in o)

    assert enum("DescendantRequest", "method") == list(METHOD_NAMES)
    assert enum("CondenseRequest", "method") == list(CONDENSING_NAMES)
    assert enum("CondenseRequest", "mode") == list(MODES)
    assert [m["name"] for m in client.get("/v1/methods").json()] == list(METHOD_NAMES)
    assert [m["name"] for m in client.get("/v1/methods").json() if m["baseline"]] == list(BASELINE_NAMES)
