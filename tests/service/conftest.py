"""Fixtures for the service's HTTP tests: a small ancestry file and a registry with fitted learngenes."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.context import AppContext
from tests.support import wait_until

TINY_ARGS: dict[str, Any] = {
    "img_size": 16, "patch_size": 4, "in_chans": 1, "num_classes": 10, "embed_dim": 32, "depth": 4,
    "num_heads": 2, "class_token": False, "global_pool": "avg",
}
ARCH = "vit_base_patch16_224"


@pytest.fixture(scope="session")
def tiny_ancestry_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small timm ViT (seeded random init: the service must not care whether it was trained)."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(ARCH, **TINY_ARGS)
    path = tmp_path_factory.mktemp("ancestry") / "tiny.safetensors"
    save_file(model.state_dict(), str(path))
    return path


def upload_ancestry(client: TestClient, path: Path, args: dict[str, Any] | None = None, arch: str = ARCH,
                    filename: str | None = None) -> Any:
    with open(path, "rb") as f:
        return client.post(
            "/v1/ancestries",
            files={"file": (filename or path.name, f, "application/octet-stream")},
            data={"architecture": arch, "model_args": json.dumps(TINY_ARGS if args is None else args)},
        )


def wait_job(client: TestClient, job_id: str, timeout: float = 120) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body = client.get(f"/v1/jobs/{job_id}").json()
        return body if body["state"] in ("succeeded", "failed", "cancelled") else None

    return wait_until(done, timeout, 0.1, f"job {job_id}")


def condense_fit(client: TestClient, ancestry_id: int, method: str, name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    r = client.post("/v1/condense-jobs", json={"ancestry": ancestry_id, "method": method, "learngene": name,
                                                "mode": "fit", "evaluate": False, "params": params or {}})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"])
    assert job["state"] == "succeeded", job["error"]
    return job


def app_client(ctx: AppContext, **settings: Any) -> TestClient:
    """A client of the app on ``ctx``, with ``settings`` changed first (``api_token="boot"``...)."""
    from service.app import create_app

    for name, value in settings.items():
        setattr(ctx.settings, name, value)
    return TestClient(create_app(ctx.settings, ctx=ctx))


def new_key(c: TestClient, admin: str, **body: Any) -> str:
    r = c.post("/v1/keys", json=body, headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def context_on_storage(request: pytest.FixtureRequest, settings: Any) -> AppContext:
    """A context on ``settings`` whose artifact store is the local folder, or the moto S3 bucket of
    ``test_s3_storage`` when the requesting fixture's param is ``"s3"`` (its fixtures must be imported)."""
    from service.wiring import build_context

    if request.param == "s3":
        settings.storage_url = f"s3://{request.getfixturevalue('bucket')}/registry"
        settings.s3_endpoint_url = request.getfixturevalue("s3_endpoint")
    return build_context(settings)
