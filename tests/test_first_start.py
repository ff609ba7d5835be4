"""A fresh install: the first `learngene serve` seeds one ready learngene per method, a newcomer's first request
works, and later starts reuse what the first one made."""
from __future__ import annotations

import time
from pathlib import Path

import httpx
import torch
from safetensors.torch import load

from tests.support import make_settings, start_server

METHODS = ("layers", "pool", "tleg", "wave")


def test_first_start_seeds_one_ready_learngene_per_method(seeded_server: str) -> None:
    items = httpx.get(f"{seeded_server}/v1/learngenes").json()["items"]
    assert sorted(i["method"] for i in items) == sorted(METHODS)
    for item in items:
        v = httpx.get(f"{seeded_server}/v1/learngenes/{item['name']}/versions/latest").json()
        assert v["status"] == "ready" and v["lineage"]["ancestry_name"] == "digits-vit"
        assert v["lineage"]["dataset"] == "builtin:digits" and v["lineage"]["job_id"]
        card = v["metrics"]["evaluation_card"]
        assert card, v["metrics"]


def test_a_newcomers_first_request_works(seeded_server: str) -> None:
    import timm
    from sklearn.datasets import load_digits

    r = httpx.post(f"{seeded_server}/v1/descendants", params={"wait": 60},
                   json={"learngene": "digits-tleg", "spec": {"depth": 4}}, timeout=90)
    assert r.status_code == 201, r.text
    desc = r.json()
    config = httpx.get(seeded_server + desc["config_url"]).json()
    model = timm.create_model(config["architecture"], num_classes=config["num_classes"], **config["model_args"])
    model.load_state_dict(load(httpx.get(seeded_server + desc["weights_url"]).content), strict=True)
    digits = load_digits()
    x = torch.tensor(digits.images[:8], dtype=torch.float32)[:, None]
    x = torch.nn.functional.interpolate(x / 16.0, size=config["model_args"]["img_size"], mode="bilinear")
    assert model.eval()(x).shape == (8, 10)


def test_a_later_start_reuses_the_seed(seeded_server: str, tmp_path_factory) -> None:
    data_dir = next(Path(p) for p in tmp_path_factory.getbasetemp().iterdir() if p.name.startswith("seeded"))
    before = httpx.get(f"{seeded_server}/v1/learngenes").json()["items"]
    started = time.monotonic()
    server, url = start_server(make_settings(data_dir, seed_on_start=True), data_dir, timeout=120)
    try:
        assert time.monotonic() - started < 60
        after = httpx.get(f"{url}/v1/learngenes").json()["items"]
        assert [(i["name"], i["version_count"]) for i in after] == [(i["name"], i["version_count"]) for i in before]
        ancestries = httpx.get(f"{url}/v1/ancestries").json()["items"]
        assert [a["name"] for a in ancestries] == ["digits-vit"]
    finally:
        server.stop()
