"""The registry lifecycle from the client (issue 21): ``learngene usage``, ``rm``, ``alias``, ``pin`` over HTTP,
and the SDK's matching methods, against the live server."""
from __future__ import annotations

import json

import pytest

from learngene import Client
from learngene.errors import Conflict, Gone, Unauthorized
from tests.client.conftest import LEARNGENE, Live
from tests.client.test_cli import run


def test_usage_prints_a_table_and_json_that_match_the_api(live: Live) -> None:
    with Client(live.url, live.token, progress=False) as client:
        api = client.usage()
        d = client.descendant(LEARNGENE, spec={"depth": 2}, seed=11)
    r = run(live, "usage")
    assert r.returncode == 0, r.stderr
    assert "owner" in r.stdout and "descendant cache" in r.stdout and "admin" in r.stdout
    r = run(live, "--json", "usage")
    report = json.loads(r.stdout)
    (me,) = report["owners"]
    assert me["owner"] == "admin" and me["descendants_produced"] >= api["owners"][0]["descendants_produced"]
    assert me["stored"]["descendants"]["bytes"] >= d.size_bytes


def test_rm_alias_and_pin(live: Live) -> None:
    with Client(live.url, live.token, progress=False) as client:
        d = client.descendant(LEARNGENE, spec={"depth": 1}, seed=12)
        assert client.pin(d).pinned is True
        r = run(live, "pin", str(d.id), "--unpin")
        assert r.returncode == 0 and f"descendant {d.id} unpinned" in r.stdout, r.stderr
        r = run(live, "alias", LEARNGENE, "stable", "1")
        assert r.returncode == 0 and "stable -> 1" in r.stdout, r.stderr
        assert client.learngene(LEARNGENE).raw["aliases"]["stable"] == 1
        r = run(live, "alias", LEARNGENE, "latest")
        assert r.returncode == 1 and "409" in r.stderr
        with pytest.raises(Conflict, match="latest"):
            client.delete_alias(LEARNGENE, "latest")
        assert client.delete_alias(LEARNGENE, "stable") == {"latest": 1}
        r = run(live, "rm", "descendant", str(d.id))
        assert r.returncode == 0 and f"deleted descendant:{d.id}" in r.stdout, r.stderr
        with pytest.raises(Gone, match="deleted by admin"):
            client.get_descendant(d.id)
    with Client(live.url, progress=False) as anonymous, pytest.raises(Unauthorized):
        anonymous.delete("descendant", d.id)  # writes need a key here
