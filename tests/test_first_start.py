"""A fresh install: the first `learngene serve` registers the shipped seed ancestries and condenses one ready
learngene per method from each, training nothing; a newcomer's first request works, and later starts reuse what
the first one made. (How long a first start takes is measured, not asserted: README, "Quick start".)"""
from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load
from sqlalchemy import func, select

from service import seed
from service.context import AppContext
from service.models import Ancestry, Job, LearngeneRow
from service.seed import SEED_ANCESTRIES, SEED_METHODS, seed_if_empty, seed_manifest
from tests.support import make_settings, start_server


def test_first_start_seeds_one_ready_learngene_per_method_and_ancestry(seeded_server: str) -> None:
    items = httpx.get(f"{seeded_server}/v1/learngenes", params={"limit": 100}).json()["items"]
    expected = {f"{prefix}-{method}": (ancestry, method)
                for ancestry, prefix in SEED_ANCESTRIES.items() for method, _ in SEED_METHODS}
    assert {i["name"]: i["method"] for i in items} == {name: method for name, (_, method) in expected.items()}
    assert {"mixed-tleg", "fashion-tleg", "digits-tleg"} <= set(expected)
    manifest = seed_manifest()
    for item in items:
        ancestry = expected[item["name"]][0]
        v = httpx.get(f"{seeded_server}/v1/learngenes/{item['name']}/versions/latest").json()
        assert v["sha256"] and v["lineage"]["ancestry_name"] == ancestry
        assert v["lineage"]["dataset"] == manifest[ancestry]["dataset"] and v["lineage"]["job_id"]
        # Trains nothing: every learngene is a data-free fit on the CPU queue, with no fine-tuned card.
        assert v["metrics"]["mode"] == "fit" and not v["metrics"].get("evaluation_card"), v["metrics"]
        job = httpx.get(f"{seeded_server}/v1/jobs/{v['lineage']['job_id']}").json()
        assert job["queue"] == "cpu" and job["state"] == "succeeded"


def test_the_seed_ancestries_are_the_shipped_checkpoints(seeded_server: str) -> None:
    ancestries = httpx.get(f"{seeded_server}/v1/ancestries").json()["items"]
    manifest = seed_manifest()
    assert sorted(a["name"] for a in ancestries) == sorted(SEED_ANCESTRIES)
    for a in ancestries:
        assert a["sha256"] == manifest[a["name"]]["sha256"]  # registered as shipped, not trained here
    fashion = manifest["fashion-vit"]
    assert fashion["dataset"] == "builtin:fashion-mnist?classes=0-4"
    assert fashion["metrics"]["val_accuracy"] > 0.85 and fashion["metrics"]["test_accuracy"] > 0.85
    # The broader seed saw every class of both sources, and knows each well on its official test images.
    mixed = manifest["mixed-vit"]
    assert mixed["dataset"] == "builtin:fashion-mnist+mnist" and mixed["model_args"]["num_classes"] == 20
    assert mixed["metrics"]["test_accuracy_fashion-mnist"] > 0.85 and mixed["metrics"]["test_accuracy_mnist"] > 0.95


def test_a_newcomers_first_request_works(seeded_server: str) -> None:
    """The README's quick start: a descendant of the broader seed's TLEG learngene takes clothes and digits."""
    import timm

    from engine.data import load_dataset

    r = httpx.post(f"{seeded_server}/v1/descendants", params={"wait": 60},
                   json={"learngene": "mixed-tleg", "spec": {"depth": 4}}, timeout=90)
    assert r.status_code == 201, r.text
    desc = r.json()
    config = httpx.get(seeded_server + desc["config_url"]).json()
    model = timm.create_model(config["architecture"], num_classes=config["num_classes"], **config["model_args"])
    model.load_state_dict(load(httpx.get(seeded_server + desc["weights_url"]).content), strict=True)
    args = config["model_args"]
    both = load_dataset("builtin:fashion-mnist+mnist?classes=0,19", args["img_size"], args["in_chans"]).val
    shirts_and_nines = torch.cat([both.images[both.labels == 0][:4], both.images[both.labels == 1][:4]])
    assert model.eval()(shirts_and_nines).shape == (8, 20)


def test_front_makes_a_wider_descendant_on_a_fresh_install(seeded_server: str) -> None:
    # FRONT's promise: any width from a fresh install's seed, here wider than the 64-wide digits ancestry.
    r = httpx.post(f"{seeded_server}/v1/descendants", params={"wait": 60},
                   json={"learngene": "digits-front", "spec": {"depth": 6, "embed_dim": 96, "num_heads": 3}},
                   timeout=90)
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["embed_dim"] == 96


def test_a_later_start_reuses_the_seed(seeded_server: str, tmp_path_factory) -> None:
    data_dir = next(Path(p) for p in tmp_path_factory.getbasetemp().iterdir() if p.name.startswith("seeded"))
    before = httpx.get(f"{seeded_server}/v1/learngenes").json()["items"]
    server, url = start_server(make_settings(data_dir, seed_on_start=True), data_dir, timeout=120)
    try:
        # Same learngenes, same version counts, same ancestries: nothing was condensed or registered again.
        after = httpx.get(f"{url}/v1/learngenes").json()["items"]
        assert [(i["name"], i["version_count"]) for i in after] == [(i["name"], i["version_count"]) for i in before]
        ancestries = httpx.get(f"{url}/v1/ancestries").json()["items"]
        assert sorted(a["name"] for a in ancestries) == sorted(SEED_ANCESTRIES)
    finally:
        server.stop()


@pytest.mark.parametrize("tampered", list(SEED_ANCESTRIES))
def test_a_tampered_shipped_checkpoint_is_refused_before_anything_is_seeded(
        tampered: str, ctx: AppContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = tmp_path / "seed_data"
    shutil.copytree(seed.SEED_DATA, shipped)
    file = shipped / seed_manifest()[tampered]["file"]
    blob = bytearray(file.read_bytes())
    blob[-1] ^= 1  # one bit of one weight: still a valid safetensors file, no longer the one recorded
    file.write_bytes(bytes(blob))
    monkeypatch.setattr(seed, "SEED_DATA", shipped)
    with pytest.raises(RuntimeError, match=f"{file.name} has sha256 .* ancestries.json records"):
        seed_if_empty(ctx, log=lambda _: None)
    # Nothing half-done: a registry with some learngenes would never be seeded again by a later start.
    with ctx.sessions() as session:
        for table in (Ancestry, LearngeneRow, Job):
            assert session.scalar(select(func.count()).select_from(table)) == 0
