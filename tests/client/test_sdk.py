"""The Python SDK against a live server: descendants, verified and resumable downloads, condensing followed to
its version, typed errors."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from learngene import (Client, ConnectionFailed, JobFailed, NotFound, RateLimited, Unauthorized, ValidationError,
                       Version)
from learngene.transfer import incomplete_path, sha256_file
from tests.client.conftest import LEARNGENE, Live
from tests.support import make_settings, start_server


@pytest.fixture
def client(live: Live) -> Iterator[Client]:
    with Client(live.url, live.token, progress=False) as c:
        yield c


def test_importing_the_client_imports_neither_torch_nor_the_service() -> None:
    code = ("import sys; from learngene import Client; "
            "print(sorted(m for m in ('torch', 'timm', 'fastapi', 'service', 'engine', 'sqlalchemy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_registry_reads_are_typed(client: Client, live: Live) -> None:
    lg = client.learngene(LEARNGENE)
    assert lg.method == "tleg" and lg.latest_version == 1 and lg.aliases == {"latest": 1}
    assert [v.version for v in client.versions(LEARNGENE)] == [1]
    assert LEARNGENE in [x.name for x in client.learngenes()]
    assert client.ancestry(live.ancestry_id).architecture == "vit_base_patch16_224"
    assert client.version(LEARNGENE).lineage["ancestry_id"] == live.ancestry_id


def test_a_descendant_downloads_verified_then_is_skipped_and_loads(client: Client, tmp_path: Path) -> None:
    d = client.descendant(LEARNGENE, spec={"depth": 3})
    assert d.status == "ready" and d.spec["depth"] == 3 and d.sha256
    first = d.download(tmp_path / "d3")
    assert first.bytes_fetched == d.size_bytes and not first.skipped
    assert sha256_file(first.weights)[0] == d.sha256
    assert json.loads(first.config.read_text())["model_args"]["depth"] == 3
    again = d.download(tmp_path / "d3")
    assert again.skipped and again.bytes_fetched == 0

    import torch

    model = client.load(d, directory=tmp_path / "d3")
    assert len(model.blocks) == 3
    assert model.eval()(torch.randn(2, 1, 16, 16)).shape == (2, 10)


def test_a_budget_picks_the_largest_descendant_that_fits(client: Client) -> None:
    small = client.descendant(LEARNGENE, budget={"max_params": 3e4})
    large = client.descendant(LEARNGENE, budget={"max_params": 8e4})
    assert small.param_count <= 3e4 < large.param_count <= 8e4


class CuttingProxy:
    """A TCP proxy in front of the server that passes ``cut_after`` bytes of the answer, then drops the
    connection: a network failure in the middle of a download."""

    def __init__(self, target: str, cut_after: int) -> None:
        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.cut_after = cut_after
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve_one, daemon=True).start()

    def _serve_one(self) -> None:
        conn, _ = self.listener.accept()
        upstream = socket.create_connection(self.target)
        request = conn.recv(65536)  # one small GET
        upstream.sendall(request)
        sent = 0
        while sent < self.cut_after and (block := upstream.recv(65536)):
            block = block[: self.cut_after - sent]
            conn.sendall(block)
            sent += len(block)
        conn.close()
        upstream.close()
        self.listener.close()


def test_an_interrupted_download_resumes_where_it_stopped(client: Client, live: Live, tmp_path: Path) -> None:
    d = client.descendant(LEARNGENE, spec={"depth": 8})
    assert d.size_bytes and d.size_bytes > 200_000
    proxy = CuttingProxy(live.url, cut_after=100_000)
    with Client(proxy.url, progress=False) as cut:
        with pytest.raises(ConnectionFailed):
            cut.download(d, tmp_path)
    part = incomplete_path(tmp_path / "model.safetensors")
    kept = part.stat().st_size
    assert 0 < kept < 100_000 and not (tmp_path / "model.safetensors").exists()

    done = client.download(d, tmp_path)
    assert done.resumed_from == kept and done.bytes_fetched == d.size_bytes - kept
    assert sha256_file(done.weights)[0] == d.sha256 and not part.exists()


def test_a_corrupted_partial_file_is_detected_and_fetched_again(client: Client, tmp_path: Path) -> None:
    d = client.descendant(LEARNGENE, spec={"depth": 8})
    whole = client.download(d, tmp_path / "good").weights.read_bytes()
    damaged = bytearray(whole[: len(whole) // 2])
    damaged[1000] ^= 0xFF
    incomplete_path(tmp_path / "bad" / "model.safetensors").parent.mkdir()
    incomplete_path(tmp_path / "bad" / "model.safetensors").write_bytes(damaged)

    done = client.download(d, tmp_path / "bad")
    assert done.discarded_corrupt_partial
    assert done.bytes_fetched == len(whole) - len(damaged) + len(whole)
    assert done.weights.read_bytes() == whole


def test_condensing_is_followed_to_its_version(client: Client, live: Live) -> None:
    job = client.condense(live.ancestry_id, "tleg", "sdk-trained", dataset="builtin:digits", evaluate=False,
                          params={"steps": 12, "batch_size": 16, "warmup_steps": 2, "aux_depth": 4})
    assert job.state == "queued" and job.kind == "condense"
    version = job.follow(timeout=300)
    assert isinstance(version, Version)
    assert (version.learngene, version.version) == ("sdk-trained", 1) and version.sha256
    assert version.lineage["job_id"] == job.id and version.lineage["mode"] == "train"
    assert client.job(job.id).progress["step"] == 12


def test_a_cancelled_job_raises_job_failed(client: Client, live: Live) -> None:
    job = client.condense(live.ancestry_id, "tleg", "sdk-cancelled", dataset="builtin:digits", evaluate=False,
                          params={"steps": 100000, "batch_size": 16, "aux_depth": 4})
    client.cancel(job)
    with pytest.raises(JobFailed) as caught:
        job.follow(timeout=120)
    assert caught.value.job.state == "cancelled"
    assert client.jobs(state="cancelled")[0].id == job.id


def test_api_errors_are_typed_with_code_and_field(client: Client, live: Live) -> None:
    with pytest.raises(NotFound) as nf:
        client.learngene("no-such-learngene")
    assert nf.value.status == 404 and nf.value.code == "not_found"

    with pytest.raises(ValidationError) as invalid:
        client.descendant(LEARNGENE, spec={"depth": 0})
    assert invalid.value.code == "validation_error" and invalid.value.field == "body.spec.depth"

    with Client(live.url, token="wrong", progress=False) as stranger:
        with pytest.raises(Unauthorized) as denied:
            stranger.descendant(LEARNGENE, spec={"depth": 2})
    assert denied.value.code == "unauthorized"


def test_429_becomes_rate_limited_with_retry_after(tmp_path: Path) -> None:
    # A server of its own whose anonymous callers may make two requests, then one every 1000 s.
    server, url = start_server(make_settings(tmp_path), tmp_path, env={"LEARNGENE_ANONYMOUS_BURST": "2",
                                                                     "LEARNGENE_ANONYMOUS_RATE_PER_S": "0.001"})
    try:
        with Client(url, progress=False) as anonymous:
            with pytest.raises(RateLimited) as limited:
                for _ in range(3):
                    anonymous.learngenes()
        assert limited.value.status == 429 and limited.value.code == "too_many_requests"
        assert limited.value.retry_after is not None and 1 <= limited.value.retry_after <= 1000
    finally:
        server.stop()


def test_a_timm_hub_snapshot_folder_uploads_as_an_ancestry(client: Client, tmp_path: Path) -> None:
    import timm
    from timm.models._hub import save_for_hf

    from tests.service.conftest import ARCH, TINY_ARGS

    model = timm.create_model(ARCH, **TINY_ARGS)
    save_for_hf(model, str(tmp_path / "snapshot"), model_args=TINY_ARGS, safe_serialization=True)
    ancestry = client.upload_ancestry(tmp_path / "snapshot")  # no architecture: config.json names it
    assert ancestry.architecture == ARCH and ancestry.name == "snapshot"
    assert ancestry.spec["depth"] == TINY_ARGS["depth"]
    assert ancestry.param_count == sum(p.numel() for p in model.parameters())
