"""FRONT through the API: a data-free condensing job in seconds, its version's record, descendants larger and
smaller than the ancestry, a budget over the whole grid, and bad parameters refused before anything is queued."""
from __future__ import annotations

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

sqlite_only = pytest.mark.parametrize("backend_settings", ["sqlite"], indirect=True)


@pytest.fixture
def ancestry(client: TestClient, tiny_ancestry_file: Path) -> int:
    return int(upload_ancestry(client, tiny_ancestry_file).json()["id"])


def _descendant(client: TestClient, body: dict[str, Any]) -> torch.nn.Module:
    import timm

    r = client.post("/v1/descendants", params={"wait": 60}, json=body)
    assert r.status_code == 201, r.text
    config = client.get(r.json()["config_url"]).json()
    model = timm.create_model(config["architecture"], num_classes=config["num_classes"], **config["model_args"])
    model.load_state_dict(load(client.get(r.json()["weights_url"]).content), strict=True)
    assert sum(p.numel() for p in model.parameters()) == r.json()["param_count"]
    return model.eval()


@sqlite_only
def test_a_fit_job_records_the_spectrum_kept_and_gives_descendants_of_any_size(client: TestClient,
                                                                              ancestry: int) -> None:
    job = condense_fit(client, ancestry, "front", "tiny-front", {"keep_ratio": 0.5, "keep_depth": 2})
    assert job["queue"] == "cpu"
    version = client.get("/v1/learngenes/tiny-front/versions/latest").json()
    assert version["method"] == "front" and version["sha256"]
    assert version["hyperparams"] == {"keep_ratio": 0.5, "keep_depth": 2}
    fit = version["metrics"]["fit"]
    assert (fit["keep_ratio"], fit["keep_depth"]) == (0.5, 2)
    # Width 32, MLP 128, depth 4: every matrix keeps a quarter of its coefficients for half the depth.
    assert fit["coefficient_bytes"] < fit["ancestry_block_bytes"] * 0.25 * 0.5 * 1.2
    assert fit["stored_bytes"] < version["size_bytes"] < fit["stored_bytes"] + 64 * 1024  # plus the header
    assert {"attn.q.weight", "mlp.fc1.weight", "norm1.weight"} <= set(fit["relative_error"])
    for spec in ({"depth": 6, "embed_dim": 48, "num_heads": 3}, {"depth": 2, "embed_dim": 16, "num_heads": 1}):
        model = _descendant(client, {"learngene": "tiny-front", "spec": spec})
        assert len(model.blocks) == spec["depth"] and model.embed_dim == spec["embed_dim"]
        assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)


@sqlite_only
def test_a_budget_chooses_from_every_depth_and_width(client: TestClient, ancestry: int) -> None:
    condense_fit(client, ancestry, "front", "grid-front")
    ancestry_params = client.get(f"/v1/ancestries/{ancestry}").json()["param_count"]
    # Three times the ancestry's parameters: no method bound to the ancestry's width or depth reaches it.
    r = client.post("/v1/descendants", params={"wait": 60},
                    json={"learngene": "grid-front", "budget": {"max_params": 3 * ancestry_params}})
    assert r.status_code == 201, r.text
    chosen = r.json()
    assert 2.5 * ancestry_params < chosen["param_count"] <= 3 * ancestry_params
    assert chosen["details"]["candidates"] > 1000


@sqlite_only
@pytest.mark.parametrize("params, field", [
    ({"keep_ratio": 0}, "params.keep_ratio"),
    ({"keep_ratio": 1.5}, "params.keep_ratio"),
    ({"keep_ratio": "half"}, "params.keep_ratio"),
    ({"keep_depth": 0}, "params.keep_depth"),
    ({"keep_depth": 2.5}, "params.keep_depth"),
    ({"fill": "noise"}, "params.fill"),
])
def test_bad_parameters_are_422_naming_the_field_and_queue_nothing(client: TestClient, ctx: AppContext,
                                                                   ancestry: int, params: dict[str, Any],
                                                                   field: str) -> None:
    with ctx.sessions() as s:
        before = s.scalar(select(func.count()).select_from(Job))
    r = client.post("/v1/condense-jobs", json={"ancestry": ancestry, "method": "front", "learngene": "bad-front",
                                               "mode": "fit", "params": params})
    assert r.status_code == 422, r.text
    assert [d["field"] for d in r.json()["error"]["details"]] == [field]
    with ctx.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == before


@sqlite_only
def test_the_methods_list_offers_front_as_a_data_free_fit(client: TestClient) -> None:
    front = {m["name"]: m for m in client.get("/v1/methods").json()}["front"]
    assert front["condensing"] == ["fit"] and not front["baseline"]
    params = {p["name"]: p for p in front["params"]}
    assert params["keep_ratio"]["default"] == 1.0 and params["keep_depth"]["default"] is None
    assert params["keep_ratio"]["modes"] == ["fit"] == params["keep_depth"]["modes"]
