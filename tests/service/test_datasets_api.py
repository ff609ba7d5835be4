"""Datasets for condensing: uploaded ImageFolder archives and folders under the allowed roots."""
from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.context import AppContext
from tests.service.conftest import upload_ancestry, wait_job

sqlite_only = pytest.mark.parametrize("backend_settings", ["sqlite"], indirect=True)


def _digit_images(per_class: int = 6, classes: tuple[int, ...] = (0, 1, 2)) -> dict[str, bytes]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    files: dict[str, bytes] = {}
    for c in classes:
        for i, img in enumerate(digits.images[digits.target == c][:per_class]):
            buf = io.BytesIO()
            Image.fromarray((img * 255 / 16).astype(np.uint8)).save(buf, format="PNG")
            files[f"digits/class_{c}/{i}.png"] = buf.getvalue()
    return files


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _upload(client: TestClient, data: bytes, name: str = "digits.zip") -> object:
    return client.post("/v1/datasets", files={"file": (name, data)}, data={"name": "three digits"})


@sqlite_only
def test_an_uploaded_imagefolder_condenses(client: TestClient, tiny_ancestry_file: Path) -> None:
    archive = _zip(_digit_images())
    r = _upload(client, archive)
    assert r.status_code == 201, r.text  # type: ignore[attr-defined]
    ds = r.json()  # type: ignore[attr-defined]
    assert ds["num_classes"] == 3 and ds["num_images"] == 18 and ds["uri"] == f"dataset:{ds['id']}"
    assert _upload(client, archive).json()["id"] == ds["id"]  # type: ignore[attr-defined]  # same bytes: same row
    ancestry = upload_ancestry(client, tiny_ancestry_file).json()["id"]
    job = client.post("/v1/condense-jobs", json={
        "ancestry": ancestry, "method": "tleg", "learngene": "folder-tleg", "dataset": ds["uri"],
        "params": {"steps": 4, "batch_size": 8, "warmup_steps": 1, "aux_depth": 2}, "evaluate": False}).json()
    done = wait_job(client, job["id"], timeout=180)
    assert done["state"] == "succeeded", done["error"]
    assert client.get("/v1/learngenes/folder-tleg/versions/1").json()["lineage"]["dataset"] == ds["uri"]


@sqlite_only
def test_imagefolder_paths_must_be_under_an_allowed_root(ctx: AppContext, tiny_ancestry_file: Path,
                                                          tmp_path: Path) -> None:
    from service.app import create_app

    root = tmp_path / "datasets"
    for name, data in _digit_images().items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    ctx.settings.allowed_dataset_roots = [root]
    with TestClient(create_app(ctx.settings, ctx=ctx)) as client:
        ancestry = upload_ancestry(client, tiny_ancestry_file).json()["id"]
        body = {"ancestry": ancestry, "method": "tleg", "learngene": "root-tleg",
                "params": {"steps": 3, "batch_size": 8, "warmup_steps": 1, "aux_depth": 2}, "evaluate": False}
        escape = client.post("/v1/condense-jobs", json={**body, "dataset": f"imagefolder:{root}/../../"})
        assert escape.status_code == 422 and escape.json()["error"]["details"][0]["field"] == "dataset"
        ok = client.post("/v1/condense-jobs", json={**body, "dataset": f"imagefolder:{root / 'digits'}"})
        assert ok.status_code == 202, ok.text
        assert wait_job(client, ok.json()["id"], timeout=180)["state"] == "succeeded"


def _tar_with(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        payload = b"" if kind != tarfile.REGTYPE else b"x"
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


@sqlite_only
@pytest.mark.parametrize("archive", ["traversal-zip", "traversal-tar", "symlink-tar", "one-class", "not-archive"])
def test_bad_archives_are_422_and_leave_nothing(archive: str, client: TestClient, ctx: AppContext) -> None:
    data = {
        "traversal-zip": lambda: _zip({"../evil/a.png": b"x", "ok/b/c.png": b"y"}),
        "traversal-tar": lambda: _tar_with("../../etc/evil.png"),
        "symlink-tar": lambda: _tar_with("cls/link.png", tarfile.SYMTYPE, "/etc/passwd"),
        "one-class": lambda: _zip({k: v for k, v in _digit_images(classes=(0,)).items()}),
        "not-archive": lambda: b"just some bytes",
    }[archive]()
    r = _upload(client, data)
    assert r.status_code == 422, r.text  # type: ignore[attr-defined]
    assert r.json()["error"]["details"][0]["field"] == "file"  # type: ignore[attr-defined]
    assert client.get("/v1/datasets").json()["items"] == []
    root = ctx.settings.artifact_root
    assert [p for p in root.rglob("*") if p.is_file()] == []
