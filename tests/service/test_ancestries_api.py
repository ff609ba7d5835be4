"""Ancestry uploads: only safetensors that load strictly into the named timm ViT are kept; nothing else is."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.context import AppContext
from tests.service.conftest import TINY_ARGS, upload_ancestry


def _stored_blobs(ctx: AppContext) -> list[Path]:
    root = ctx.settings.artifact_root
    return [p for p in root.rglob("*") if p.is_file() and "tmp" not in p.relative_to(root).parts]


def test_upload_records_size_hash_and_spec(client: TestClient, ctx: AppContext, tiny_ancestry_file: Path) -> None:
    import hashlib

    r = upload_ancestry(client, tiny_ancestry_file)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["sha256"] == hashlib.sha256(tiny_ancestry_file.read_bytes()).hexdigest()
    assert body["size_bytes"] == tiny_ancestry_file.stat().st_size
    assert body["spec"]["depth"] == 4 and body["spec"]["embed_dim"] == 32 and body["spec"]["class_token"] is False
    import timm

    model = timm.create_model("vit_base_patch16_224", **TINY_ARGS)
    assert body["param_count"] == sum(p.numel() for p in model.parameters())
    assert client.get(f"/v1/ancestries/{body['id']}").json()["sha256"] == body["sha256"]
    assert [a["id"] for a in client.get("/v1/ancestries").json()["items"]] == [body["id"]]


@pytest.mark.parametrize("case", ["pickle", "truncated", "wrong-shapes", "unknown-arch", "bad-args", "not-json",
                                  "wrong-suffix"])
def test_bad_uploads_are_4xx_and_leave_nothing(case: str, client: TestClient, ctx: AppContext,
                                                tiny_ancestry_file: Path, tmp_path: Path) -> None:
    path, args, arch, filename = tiny_ancestry_file, dict(TINY_ARGS), "vit_base_patch16_224", None
    if case == "pickle":
        path = tmp_path / "evil.safetensors"
        path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    elif case == "truncated":
        path = tmp_path / "cut.safetensors"
        path.write_bytes(tiny_ancestry_file.read_bytes()[:-100])
    elif case == "wrong-shapes":
        args["embed_dim"] = 64
    elif case == "unknown-arch":
        arch = "resnet9000"
    elif case == "bad-args":
        args["no_such_argument"] = 3
    elif case == "not-json":
        args = None  # type: ignore[assignment]
    elif case == "wrong-suffix":
        filename = "model.bin"
    if case == "not-json":
        with open(path, "rb") as f:
            r = client.post("/v1/ancestries", files={"file": (path.name, f)},
                            data={"architecture": arch, "model_args": "{not json"})
    else:
        r = upload_ancestry(client, path, args, arch, filename)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["details"] and err["details"][0]["field"] in {"file", "architecture", "model_args",
                                                             "model_args.no_such_argument"}
    assert client.get("/v1/ancestries").json()["items"] == []
    assert _stored_blobs(ctx) == []
    assert list((ctx.settings.artifact_root / "tmp").iterdir()) == []


def test_uploads_over_the_size_cap_are_413(ctx: AppContext, tiny_ancestry_file: Path) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app

    ctx.settings.max_upload_bytes = 2048
    with TestClient(create_app(ctx.settings, ctx=ctx)) as c:
        r = upload_ancestry(c, tiny_ancestry_file)
    assert r.status_code == 413
    assert _stored_blobs(ctx) == []


def test_writes_need_the_token_when_one_is_set(ctx: AppContext, tiny_ancestry_file: Path) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app

    ctx.settings.api_token = "s3cret"
    with TestClient(create_app(ctx.settings, ctx=ctx)) as c:
        assert upload_ancestry(c, tiny_ancestry_file).status_code == 401
        c.headers["Authorization"] = "Bearer s3cret"
        assert upload_ancestry(c, tiny_ancestry_file).status_code == 201
        c.headers.pop("Authorization")
        assert c.get("/v1/ancestries").status_code == 200  # reads stay open
