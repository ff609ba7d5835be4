"""Schemathesis against a live server, with every check on: no 5xx, no response the OpenAPI document does not
declare, no schema-invalid request accepted, authentication enforced where the document says it is.

Run three times: as an open service (anonymous writes), and with keys required, the fuzzer holding the bootstrap
admin token or an admin API key (its checks also try each operation without it and with a wrong one). A fixed seed makes a failure
reproducible: the command the test ran is in its failure message (add ``--report-dir`` to keep the cases).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.settings import Settings
from tests.service.conftest import TINY_ARGS
from tests.support import make_settings, start_server, wait_until

CONFIG = Path(__file__).with_name("schemathesis.toml")
SEED = 20261130
#: Cases per operation and phase: about 1,000 cases a run on this API (at least 500 asserted).
MAX_EXAMPLES = 15
ADMIN = "fuzz-admin-key"


LIFTED = dict(rate_limit_per_s=1e6, rate_limit_burst=10**6, anonymous_rate_per_s=1e6, anonymous_burst=10**6)


@pytest.fixture(scope="module")
def seeded_data(tmp_path_factory: pytest.TempPathFactory, tiny_ancestry_file: Path) -> Path:
    """A registry with rows to find: an ancestry, a fitted TLEG learngene, a ready descendant, finished jobs."""
    data = tmp_path_factory.mktemp("fuzz-seed")
    server, url = start_server(make_settings(data, **LIFTED), data)
    try:
        with open(tiny_ancestry_file, "rb") as f:
            r = httpx.post(f"{url}/v1/ancestries", files={"file": ("tiny.safetensors", f)},
                           data={"architecture": "vit_base_patch16_224", "model_args": json.dumps(TINY_ARGS)},
                           timeout=120)
        assert r.status_code == 201, r.text
        job = httpx.post(f"{url}/v1/condense-jobs", json={
            "ancestry": 1, "method": "tleg", "learngene": "fuzz-tleg", "mode": "fit", "evaluate": False}).json()
        wait_until(lambda: httpx.get(f"{url}/v1/jobs/{job['id']}").json()["state"] == "succeeded", 120)
        r = httpx.post(f"{url}/v1/descendants?wait=30", json={"learngene": "fuzz-tleg", "spec": {"depth": 2}},
                       timeout=60)
        assert r.status_code == 201, r.text
    finally:
        server.stop()
    return data


@pytest.fixture(params=["open", "keys", "admin-key"])
def fuzzed_server(request: pytest.FixtureRequest, tmp_path: Path, seeded_data: Path,
                  redis_url: str) -> Iterator[tuple[str, str]]:
    """The seeded registry served with a broker and no worker: what the fuzzer queues stays queued, so it costs
    no CPU and the run's time is the API's (an event stream of such a job ends after 1 s). Rate limits are lifted
    (the limiter has tests of its own) and sizes bounded. ``keys``: the fuzzer holds the bootstrap token;
    ``admin-key``: an API key with the admin scope, looked up like every other key (it found booleans accepted as
    integer limits of new keys)."""
    data = tmp_path / "data"
    shutil.copytree(seeded_data, data, ignore=shutil.ignore_patterns("server-*.log"))
    token = "" if request.param == "open" else ADMIN
    settings = make_settings(data, broker_url=redis_url, api_token=token, max_params=2_000_000, max_depth=8,
                             max_embed_dim=128, default_wait_s=0, max_wait_s=1, max_concurrent_jobs=4,
                             max_event_stream_s=1, **LIFTED)
    if request.param == "admin-key":
        token = _admin_key(settings)
    server, url = start_server(settings, tmp_path)
    try:
        # The first descendant and condensing requests import the engine (torch): seconds on a loaded machine,
        # which the fuzzer's response-time check would count against the first case of each.
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        httpx.post(f"{url}/v1/descendants", json={"learngene": "fuzz-tleg", "spec": {"depth": 2}}, headers=headers,
                   timeout=120).raise_for_status()
        assert httpx.post(f"{url}/v1/condense-jobs", headers=headers, timeout=120, json={
            "ancestry": 1, "method": "tleg", "learngene": "x", "mode": "fit", "params": {"none": 1}}).status_code == 422
        yield url, token
    finally:
        server.stop()


#: The fuzzer's admin key gets an id it will not guess: revoking key 1 (an example value) must not revoke it.
FUZZ_KEY_ID = 987_654


def _admin_key(settings: Settings) -> str:
    from service.wiring import build_context
    from service.keys.auth import hash_key
    from service.models import ApiKey

    key = "lg_fuzz-admin-" + "k" * 30
    ctx = build_context(settings, with_dispatcher=False)
    try:
        with ctx.sessions.begin() as session:
            session.add(ApiKey(id=FUZZ_KEY_ID, prefix=key[:10], key_hash=hash_key(key), owner="fuzz-admin",
                               scopes="admin"))
    finally:
        ctx.close()
    return key


def test_fuzzing_finds_no_server_error_and_no_undeclared_response(fuzzed_server: tuple[str, str],
                                                                  tmp_path: Path) -> None:
    url, token = fuzzed_server
    report = tmp_path / "report"
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run",
               f"{url}/openapi.json", "--checks", "all", "--seed", str(SEED), "--max-examples", str(MAX_EXAMPLES),
               # One worker: Hypothesis parses lambdas' source in each worker thread, and CPython 3.11's ast module
               # fails ("AST constructor recursion depth mismatch") when two threads parse at once.
               "--workers", "1", "--no-shrink", "--request-timeout", "60", "--report", "json",
               "--report-dir", str(report)]
    if token:
        command += ["--header", f"Authorization: Bearer {token}"]
    if token not in ("", ADMIN):
        # An admin key can revoke itself (the stateful phase follows listed key ids to revoke_key), leaving the
        # rest of the run anonymous; revoking is fuzzed in the other two runs.
        command += ["--exclude-operation-id", "revoke_key"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=540, cwd=tmp_path)
    result = json.loads(next(report.glob("*.json")).read_text())
    found = [run.stdout.find(title) for title in ("ERRORS", "FAILURES")]
    start = min((i for i in found if i >= 0), default=max(0, len(run.stdout) - 3000))
    summary = run.stdout[start:start + 10000] + run.stderr[-2000:]
    assert result["failures"] == [] and result["errors"] == [], summary
    assert result["exit_code"] == 0 and result["complete"], summary
    ops = result["operations"]
    assert ops["tested"] == ops["selected"] >= 28 and ops["errored"] == 0, ops
    # Written for the security report (docs/security.md) and as a floor: the run really fuzzed.
    run_name = "open" if not token else "keys" if token == ADMIN else "admin-key"
    print(f"{run_name}: {result['test_cases']['generated']} cases, {ops['tested']} operations, "
          f"{result['running_time']:.0f} s")
    assert result["test_cases"]["generated"] >= 500
    if token not in ("", ADMIN):  # the admin key held to the end: the run was authenticated throughout
        assert httpx.get(f"{url}/v1/keys", headers={"Authorization": f"Bearer {token}"}).status_code == 200
