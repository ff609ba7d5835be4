"""The Hugging Face Hub-compatible route, driven by the real huggingface_hub client and timm's hf-hub loader
in a separate process (HF_ENDPOINT is read when huggingface_hub is imported)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.conftest import TINY_ARGS
from tests.support import make_settings, start_server, wait_until

CLIENT = r'''
import json, os, sys
import torch
from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
import timm
import engine.stitched  # registers the stitched architecture (pool descendants)

repo = sys.argv[1]
out = {}
if os.environ["HF_HUB_OFFLINE"] == "0":
    meta = get_hf_file_metadata(hf_hub_url(repo, "model.safetensors"))
    out["commit"], out["etag"], out["size"] = meta.commit_hash, meta.etag, meta.size
cfg_path = hf_hub_download(repo, "config.json")
out["config"] = json.load(open(cfg_path))
weights_path = hf_hub_download(repo, "model.safetensors")
out["weights_path"] = weights_path
out["weights_bytes"] = os.path.getsize(weights_path)
model = timm.create_model("hf-hub:" + repo, pretrained=True)
x = torch.randn(2, 1, 16, 16)
out["logits_shape"] = list(model.eval()(x).shape)
out["params"] = sum(p.numel() for p in model.parameters())
print("RESULT " + json.dumps(out))
'''


@pytest.fixture(scope="module")
def hub_server(tmp_path_factory: pytest.TempPathFactory, tiny_ancestry_file: Path) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("hub")
    server, url = start_server(make_settings(tmp), tmp)
    try:
        with open(tiny_ancestry_file, "rb") as f:
            ancestry = httpx.post(f"{url}/v1/ancestries", files={"file": ("tiny.safetensors", f)},
                                  data={"architecture": "vit_base_patch16_224",
                                        "model_args": json.dumps(TINY_ARGS)}, timeout=120).json()
        job = httpx.post(f"{url}/v1/condense-jobs", json={"ancestry": ancestry["id"], "method": "tleg",
                                                          "learngene": "hub-tleg", "mode": "fit",
                                                          "evaluate": False}, timeout=120).json()
        wait_until(lambda: httpx.get(f"{url}/v1/jobs/{job['id']}").json()["state"] == "succeeded", 120)
        yield url
    finally:
        server.stop()


def _client(url: str, repo: str, cache: Path, offline: bool = False) -> dict[str, Any]:
    env = dict(os.environ, HF_ENDPOINT=f"{url}/hub", HF_HOME=str(cache), HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_OFFLINE="1" if offline else "0", HF_HUB_DISABLE_XET="1")
    proc = subprocess.run([sys.executable, "-c", CLIENT, repo], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def test_timm_and_huggingface_hub_load_a_never_requested_size(hub_server: str, tmp_path: Path) -> None:
    before = httpx.get(f"{hub_server}/v1/descendants").json()["items"]
    assert before == []
    result = _client(hub_server, "hub-tleg/d5-s3", tmp_path / "hf")
    assert result["logits_shape"] == [2, 10]
    assert result["config"]["model_args"]["depth"] == 5
    made = httpx.get(f"{hub_server}/v1/descendants").json()["items"]
    assert len(made) == 1 and made[0]["spec"]["depth"] == 5 and made[0]["seed"] == 3
    assert result["etag"] == made[0]["sha256"] and result["size"] == made[0]["size_bytes"]
    assert result["commit"] == made[0]["sha256"][:40]
    assert result["params"] == made[0]["param_count"]

    # Cached: the same repo loads with the network off, from huggingface_hub's cache.
    offline = _client(hub_server, "hub-tleg/d5-s3", tmp_path / "hf", offline=True)
    assert offline["weights_path"] == result["weights_path"] and offline["logits_shape"] == [2, 10]


def test_pinned_repo_ids_from_the_api_resolve(hub_server: str, tmp_path: Path) -> None:
    desc = httpx.post(f"{hub_server}/v1/descendants", params={"wait": 30},
                      json={"learngene": "hub-tleg", "spec": {"depth": 2}}, timeout=60).json()
    result = _client(hub_server, desc["hub_repo_id"], tmp_path / "hf")
    assert result["etag"] == desc["sha256"] and result["config"]["model_args"]["depth"] == 2


def test_hub_errors(hub_server: str) -> None:
    base = f"{hub_server}/hub"
    r = httpx.head(f"{base}/hub-tleg/d2/resolve/main/pytorch_model.bin")
    assert r.status_code == 404 and r.headers["x-error-code"] == "EntryNotFound"
    assert httpx.head(f"{base}/nope/d2/resolve/main/config.json").status_code == 404
    assert httpx.head(f"{base}/hub-tleg/not-a-spec/resolve/main/config.json").status_code == 404
    r = httpx.get(f"{base}/hub-tleg/d2/resolve/main/model.safetensors", headers={"Range": "bytes=0-7"})
    assert r.status_code == 206 and len(r.content) == 8 and r.headers["x-repo-commit"]


def test_front_descendants_of_a_new_width_come_through_the_hub(hub_server: str, tmp_path: Path) -> None:
    ancestry = httpx.get(f"{hub_server}/v1/ancestries").json()["items"][0]["id"]
    job = httpx.post(f"{hub_server}/v1/condense-jobs", json={"ancestry": ancestry, "method": "front",
                                                             "learngene": "hub-front", "mode": "fit"}, timeout=120)
    assert job.status_code == 202, job.text
    wait_until(lambda: httpx.get(f"{hub_server}/v1/jobs/{job.json()['id']}").json()["state"] == "succeeded", 120)
    result = _client(hub_server, "hub-front/d6-e48-h3", tmp_path / "hf")
    assert result["logits_shape"] == [2, 10]
    assert {k: result["config"]["model_args"][k] for k in ("depth", "embed_dim", "num_heads")} == \
        {"depth": 6, "embed_dim": 48, "num_heads": 3}
