"""Descendants over real HTTP (TestClient drives the ASGI app; the in-process worker runs the jobs):
sizes and budgets in, strictly loadable timm weights out; caching, dedupe, conditional and range downloads."""
from __future__ import annotations

import concurrent.futures
import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load
from sqlalchemy import func, select

from service.context import AppContext
from service.models import Job
from tests.service.conftest import condense_fit, upload_ancestry


@pytest.fixture
def registry(client: TestClient, tiny_ancestry_file: Path) -> dict[str, Any]:
    ancestry = upload_ancestry(client, tiny_ancestry_file).json()
    condense_fit(client, ancestry["id"], "tleg", "tiny-tleg")
    return {"ancestry": ancestry["id"], "learngene": "tiny-tleg"}


def _post(client: TestClient, body: dict[str, Any], wait: float = 30) -> Any:
    return client.post("/v1/descendants", params={"wait": wait}, json=body)


def _load_timm(client: TestClient, desc: dict[str, Any]) -> torch.nn.Module:
    import timm

    import engine.stitched  # noqa: F401  (registers the stitched architecture with timm)

    config = client.get(desc["config_url"]).json()
    weights = client.get(desc["weights_url"])
    assert weights.status_code == 200
    model = timm.create_model(config["architecture"], num_classes=config["num_classes"], **config["model_args"])
    model.load_state_dict(load(weights.content), strict=True)
    return model


def test_a_spec_becomes_weights_that_load_strictly_into_timm(client: TestClient, registry: dict[str, Any]) -> None:
    r = _post(client, {"learngene": "tiny-tleg", "spec": {"depth": 6}})
    assert r.status_code == 201, r.text
    desc = r.json()
    assert desc["status"] == "ready" and desc["spec"]["depth"] == 6 and desc["spec"]["embed_dim"] == 32
    assert desc["method"] == "tleg" and desc["source"] == {"learngene": "tiny-tleg", "version": 1, "ancestry": None}
    model = _load_timm(client, desc)
    assert sum(p.numel() for p in model.parameters()) == desc["param_count"]
    out = model.eval()(torch.randn(2, 1, 16, 16))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert desc["hub_repo_id"] == "tiny-tleg.v1/d6-e32-h2-r4-c10-s0"


def test_weights_carry_provenance_and_the_metadata_view_matches(client: TestClient, registry: dict[str, Any]) -> None:
    desc = _post(client, {"learngene": "tiny-tleg", "spec": {"depth": 3}, "seed": 7}).json()
    meta = client.get(desc["metadata_url"]).json()
    assert meta["metadata"]["learngene"] == "tiny-tleg" and meta["metadata"]["version"] == "1"
    assert meta["metadata"]["method"] == "tleg" and meta["metadata"]["seed"] == "7"
    assert json.loads(meta["metadata"]["spec"]) == desc["spec"]
    lg = client.get("/v1/learngenes/tiny-tleg/versions/1").json()
    assert meta["metadata"]["learngene_sha256"] == lg["sha256"]
    tensors = load(client.get(desc["weights_url"]).content)
    assert {k: list(v.shape) for k, v in tensors.items()} == {k: v["shape"] for k, v in meta["tensors"].items()}


def test_the_same_request_is_answered_from_the_registry(client: TestClient, ctx: AppContext,
                                                        registry: dict[str, Any]) -> None:
    first = _post(client, {"learngene": "tiny-tleg", "spec": {"depth": 5}})
    again = _post(client, {"learngene": "tiny-tleg:1", "spec": {"depth": 5, "embed_dim": 32}})
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"] and again.json()["sha256"] == first.json()["sha256"]
    other_seed = _post(client, {"learngene": "tiny-tleg", "spec": {"depth": 5}, "seed": 1})
    assert other_seed.status_code == 201 and other_seed.json()["id"] != first.json()["id"]
    with ctx.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Job).where(Job.kind == "expand")) == 2


def test_identical_concurrent_requests_compute_once(client: TestClient, ctx: AppContext,
                                                    registry: dict[str, Any]) -> None:
    body = {"learngene": "tiny-tleg", "spec": {"depth": 9}, "seed": 3}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: _post(client, body), range(8)))
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    assert all(r.status_code in (200, 201, 202) for r in responses)
    with ctx.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Job).where(Job.kind == "expand")) == 1


def test_same_seed_gives_byte_identical_files(client: TestClient, ctx: AppContext, registry: dict[str, Any],
                                              tmp_path: Path) -> None:
    """Determinism across independent registries: a second service computing the same request from the
    same learngene bytes writes the same file."""
    desc = _post(client, {"learngene": "tiny-tleg", "spec": {"depth": 4}, "seed": 11}).json()
    from engine.artifacts import descendant_config, load_learngene, save_descendant  # noqa: F401
    from engine.methods import get_method
    from engine.spec import ViTSpec

    lg_bytes = client.get("/v1/learngenes/tiny-tleg/versions/1/tensors").content
    (tmp_path / "lg.safetensors").write_bytes(lg_bytes)
    learngene = load_learngene(tmp_path / "lg.safetensors")
    again = get_method("tleg").expand(learngene, ViTSpec.from_dict(desc["spec"]), 11)
    ours = load(client.get(desc["weights_url"]).content)
    assert set(ours) == set(again.state_dict)
    assert all(torch.equal(ours[k], again.state_dict[k]) for k in ours)


def test_conditional_and_range_downloads(client: TestClient, registry: dict[str, Any]) -> None:
    desc = _post(client, {"learngene": "tiny-tleg", "spec": {"depth": 2}}).json()
    url = desc["weights_url"]
    full = client.get(url)
    assert full.headers["etag"] == f'"{desc["sha256"]}"'
    assert "model.safetensors" in full.headers["content-disposition"]
    assert len(full.content) == desc["size_bytes"]
    assert client.get(url, headers={"If-None-Match": f'"{desc["sha256"]}"'}).status_code == 304
    assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
    part = client.get(url, headers={"Range": "bytes=8-107"})
    assert part.status_code == 206 and part.content == full.content[8:108]
    assert part.headers["content-range"] == f"bytes 8-107/{desc['size_bytes']}"
    assert client.get(url, headers={"Range": f"bytes={desc['size_bytes'] + 5}-"}).status_code == 416


def test_a_budget_picks_the_largest_spec_that_fits(client: TestClient, registry: dict[str, Any]) -> None:
    small = _post(client, {"learngene": "tiny-tleg", "spec": {"depth": 2}}).json()
    large = _post(client, {"learngene": "tiny-tleg", "spec": {"depth": 8}}).json()
    budget = (small["param_count"] + large["param_count"]) // 2
    r = _post(client, {"learngene": "tiny-tleg", "budget": {"max_params": budget}})
    assert r.status_code in (200, 201), r.text
    chosen = r.json()
    assert chosen["param_count"] <= budget
    deeper = _post(client, {"learngene": "tiny-tleg", "spec": {"depth": chosen["spec"]["depth"] + 1}}).json()
    assert deeper["param_count"] > budget  # nothing larger of this learngene would have fit

    r = _post(client, {"learngene": "tiny-tleg", "budget": {"max_params": 10}})
    assert r.status_code == 422
    assert r.json()["error"]["details"][0]["field"] == "budget"
    assert "smallest" in r.json()["error"]["message"]


@pytest.mark.parametrize("body,field", [
    ({"learngene": "tiny-tleg", "spec": {"num_heads": 3}}, "spec.num_heads"),
    ({"learngene": "tiny-tleg", "spec": {"depth": 0}}, "body.spec.depth"),
    ({"learngene": "tiny-tleg", "spec": {"depth": 500}}, "spec.depth"),
    ({"learngene": "tiny-tleg", "spec": {"depth": 47, "embed_dim": 2048, "num_heads": 16}}, "spec"),
    ({"learngene": "tiny-tleg", "spec": {"width": 3}}, "body.spec.width"),
    ({"learngene": "tiny-tleg", "spec": {}, "budget": {"max_params": 5}}, "body"),
    ({"spec": {"depth": 2}}, "body"),
    ({"ancestry": 1, "method": "tleg"}, "body"),
    ({"learngene": "tiny-tleg", "method": "wave"}, "method"),
    ({"learngene": "tiny-tleg", "budget": {}}, "body.budget"),
])
def test_bad_requests_are_422_naming_the_field_and_queue_nothing(
    body: dict[str, Any], field: str, client: TestClient, ctx: AppContext, registry: dict[str, Any]
) -> None:
    r = _post(client, body)
    assert r.status_code == 422, r.text
    fields = [d["field"] for d in r.json()["error"]["details"]]
    assert any(f == field or f.startswith(field + ".") for f in fields), fields
    with ctx.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Job).where(Job.kind == "expand")) == 0


def test_unknown_sources_are_404(client: TestClient, registry: dict[str, Any]) -> None:
    assert _post(client, {"learngene": "nope", "spec": {"depth": 2}}).status_code == 404
    assert _post(client, {"learngene": "tiny-tleg:9", "spec": {"depth": 2}}).status_code == 404
    assert _post(client, {"ancestry": 999, "method": "random", "spec": {"depth": 2}}).status_code == 404
    assert client.get("/v1/descendants/999").status_code == 404
    assert client.get("/v1/descendants/999/weights").status_code == 404


def test_weight_selection_and_random_from_an_ancestry(client: TestClient, registry: dict[str, Any]) -> None:
    ancestry = registry["ancestry"]
    ws = _post(client, {"ancestry": ancestry, "method": "weight-selection",
                        "spec": {"depth": 2, "embed_dim": 16, "num_heads": 1}})
    assert ws.status_code == 201, ws.text
    model = _load_timm(client, ws.json())
    assert model(torch.randn(1, 1, 16, 16)).shape == (1, 10)
    grow = _post(client, {"ancestry": ancestry, "method": "weight-selection", "spec": {"depth": 8}})
    assert grow.status_code == 422  # weight selection only shrinks
    rnd = _post(client, {"ancestry": ancestry, "method": "random", "spec": {"depth": 3, "embed_dim": 48,
                                                                            "num_heads": 3}})
    assert rnd.status_code == 201, rnd.text
    assert _load_timm(client, rnd.json())(torch.randn(1, 1, 16, 16)).shape == (1, 10)
    assert rnd.json()["hub_repo_id"].startswith(f"ancestry-{ancestry}.random/")


def test_listing_filters_by_learngene_and_version(client: TestClient, registry: dict[str, Any]) -> None:
    a = _post(client, {"learngene": "tiny-tleg", "spec": {"depth": 2}}).json()
    b = _post(client, {"ancestry": registry["ancestry"], "method": "random", "spec": {"depth": 2}}).json()
    by_lg = client.get("/v1/descendants", params={"learngene": "tiny-tleg"}).json()
    assert [d["id"] for d in by_lg["items"]] == [a["id"]]
    assert client.get("/v1/descendants", params={"learngene": "tiny-tleg", "version": 2}).json()["items"] == []
    by_anc = client.get("/v1/descendants", params={"ancestry": registry["ancestry"]}).json()
    assert [d["id"] for d in by_anc["items"]] == [b["id"]]
    assert client.get("/v1/descendants", params={"learngene": "nope"}).status_code == 404


def test_without_wait_the_answer_is_202_with_a_job(client: TestClient, registry: dict[str, Any]) -> None:
    r = _post(client, {"learngene": "tiny-tleg", "spec": {"depth": 12}, "seed": 99}, wait=0)
    assert r.status_code == 202
    body = r.json()
    assert body["status"] == "pending" and body["job_id"]
    assert r.headers["location"] == f"/v1/descendants/{body['id']}"


def test_learngene_tensors_download(client: TestClient, registry: dict[str, Any]) -> None:
    lg = client.get("/v1/learngenes/tiny-tleg/versions/latest").json()
    r = client.get(lg["tensors_url"])
    assert r.status_code == 200 and r.headers["etag"] == f'"{lg["sha256"]}"'
    import hashlib

    assert hashlib.sha256(r.content).hexdigest() == lg["sha256"]
    tensors = load(r.content)
    assert any(".A." in k or k.startswith("blocks.A") for k in tensors), list(tensors)[:5]


def test_a_failed_expansion_is_a_500_and_the_same_request_retries(client: TestClient, ctx: AppContext,
                                                                   registry: dict[str, Any]) -> None:
    from service.models import LearngeneVersion

    with ctx.sessions() as s:
        key = s.scalars(select(LearngeneVersion.storage_key)).one()
    path = ctx.store.local_path(key)
    assert path is not None
    saved = path.read_bytes()
    path.write_bytes(b"corrupted")  # storage lost the learngene's bytes
    from service.descendants import tasks as expand

    expand._cache.clear()  # workers keep recently used learngenes in memory; this one must be read again
    r = _post(client, {"learngene": "tiny-tleg", "spec": {"depth": 7}, "seed": 5})
    assert r.status_code == 500 and r.json()["error"]["code"] == "job_failed"
    path.write_bytes(saved)
    r = _post(client, {"learngene": "tiny-tleg", "spec": {"depth": 7}, "seed": 5})
    assert r.status_code == 201 and r.json()["status"] == "ready"


def test_a_fresh_head_is_its_own_descendant(client: TestClient, registry: dict[str, Any]) -> None:
    """`head: fresh` with the learngene's own class count: a new head, every other tensor the inherited one."""
    kept = _post(client, {"learngene": "tiny-tleg", "spec": {"depth": 4}}).json()
    fresh = _post(client, {"learngene": "tiny-tleg", "spec": {"depth": 4}, "head": "fresh"})
    assert fresh.status_code == 201, fresh.text
    fresh = fresh.json()
    assert fresh["id"] != kept["id"] and fresh["details"]["head"] == "fresh" and kept["details"]["head"] == "inherited"
    a, b = (load(client.get(d["weights_url"]).content) for d in (kept, fresh))
    assert not torch.equal(a["head.weight"], b["head.weight"])
    assert all(torch.equal(a[k], b[k]) for k in a.keys() - {"head.weight", "head.bias"})
    again = _post(client, {"learngene": "tiny-tleg", "spec": {"depth": 4}, "head": "fresh"})
    assert again.status_code == 200 and again.json()["id"] == fresh["id"]
    bad = _post(client, {"learngene": "tiny-tleg", "spec": {"depth": 4}, "head": "keep"})
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["field"].endswith("head")
