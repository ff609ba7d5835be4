"""Work a request can make the server do, bounded (issue "Owners own what they make", items 4-8), measured against
real server processes: bytes received and written, requests answered, series exposed, processes that exit."""
from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.context import AppContext
from tests.service.conftest import ARCH, TINY_ARGS, app_client, bearer, new_key
from tests.support import Proc, make_settings, start_server, wait_until

sqlite_only = pytest.mark.parametrize("backend_settings", ["sqlite"], indirect=True)
BOUNDARY = "lgboundary"
MIB = 1024 * 1024


def _field(name: str, value: str) -> bytes:
    return f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()


def _file_head(filename: str = "big.safetensors") -> bytes:
    return (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()


def _request_head(port: str, length: int, token: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"POST /v1/ancestries HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {length}\r\n\r\n").encode()


def _send_while_listening(url: str, head: bytes, chunks: Iterator[bytes]) -> tuple[int, int, bytes]:
    """Send a request by hand, reading between chunks; (status, body bytes sent before the answer, answer)."""
    host, port = url.removeprefix("http://").split(":")
    sent = 0
    answer = b""
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall(head)
        s.settimeout(0.02)
        for chunk in chunks:
            try:
                answer += s.recv(65536)
            except (TimeoutError, BlockingIOError):
                pass
            if answer:
                break
            try:
                s.sendall(chunk)
            except OSError:
                break
            sent += len(chunk)
        s.settimeout(60)
        while b"\r\n\r\n" not in answer:
            answer += s.recv(65536)
        head, _, body = answer.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(
            b"content-length:"))
        while len(body) < length:
            body += s.recv(65536)
    return int(answer.split(b" ")[1]), sent, body


def _written_bytes(proc: Proc) -> int:
    """Bytes the process has passed to write(2) so far (files, sockets, pipes alike)."""
    for line in Path(f"/proc/{proc.popen.pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/<pid>/io")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, str, Path]]:
    tmp = tmp_path_factory.mktemp("bounded")
    proc, url = start_server(make_settings(tmp), tmp)
    try:
        yield proc, url, tmp
    finally:
        proc.stop()


def _scratch_files(data: Path) -> list[Path]:
    return [p for p in (data / "artifacts" / "tmp").iterdir() if p.is_file()]


def test_an_upload_with_a_bad_field_is_refused_before_its_file_is_stored(server: tuple[Proc, str, Path]) -> None:
    """Item 7: a 2 GB upload with an unsupported architecture was refused after 16.8 s and 4 GB written. The
    fields come first; they are checked when the file part begins, and the answer comes before the file is."""
    proc, url, data = server
    fields = _field("architecture", "resnet50") + _field("model_args", "{}")
    body_size = 64 * MIB
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    length = len(fields) + len(_file_head()) + body_size + len(tail)
    written = _written_bytes(proc)
    status, sent, answer = _send_while_listening(
        url, _request_head(url.rsplit(":", 1)[1], length),
        iter([fields + _file_head(), *(b"\0" * MIB for _ in range(64)), tail]))
    assert status == 422 and b'"field":"architecture"' in answer, answer[:400]
    assert sent < 16 * MIB, sent  # the answer came while the client was still sending
    assert _written_bytes(proc) - written < MIB  # nothing of the file was written anywhere
    assert _scratch_files(data) == []


def test_an_upload_is_written_once(server: tuple[Proc, str, Path]) -> None:
    """Item 7: an upload was spooled to a temporary file, then copied into storage: written twice. 32 MiB that
    are not safetensors: stored once in scratch space, read, refused, deleted."""
    proc, url, data = server
    payload = b"\1" * (32 * MIB)
    written = _written_bytes(proc)
    r = httpx.post(f"{url}/v1/ancestries", data={"architecture": ARCH, "model_args": json.dumps(TINY_ARGS)},
                   files={"file": ("junk.safetensors", payload)}, timeout=120)
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "file", r.text
    delta = _written_bytes(proc) - written
    assert len(payload) <= delta < 1.25 * len(payload), delta
    assert _scratch_files(data) == []


def test_a_field_after_the_file_part_is_refused(server: tuple[Proc, str, Path], tiny_ancestry_file: Path) -> None:
    _, url, _ = server
    head = _field("architecture", ARCH) + _field("model_args", json.dumps(TINY_ARGS)) + _file_head("tiny.safetensors")
    body = head + tiny_ancestry_file.read_bytes() + b"\r\n" + _field("name", "late") + f"--{BOUNDARY}--\r\n".encode()
    r = httpx.post(f"{url}/v1/ancestries", content=body, timeout=60,
                   headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "name", r.text
    assert "before the file" in r.json()["error"]["message"]
    assert httpx.get(f"{url}/v1/ancestries").json()["items"] == []


def test_headers_alone_do_not_spend_the_upload_quota(tmp_path: Path, tiny_ancestry_file: Path) -> None:
    """Item 6: ten connections sending only headers (Content-Length 2 GiB) spent the anonymous callers' shared
    20 GiB a day, before a byte arrived or any key was checked. Bytes are charged as they arrive."""
    server, url = start_server(make_settings(tmp_path), tmp_path)
    port = url.rsplit(":", 1)[1]
    idle: list[socket.socket] = []
    try:
        for _ in range(10):
            conn = socket.create_connection(("127.0.0.1", int(port)), timeout=30)
            conn.sendall(_request_head(port, 2 * 1024**3))
            idle.append(conn)
        with open(tiny_ancestry_file, "rb") as f:
            r = httpx.post(f"{url}/v1/ancestries", files={"file": ("tiny.safetensors", f)}, timeout=120,
                           data={"architecture": ARCH, "model_args": json.dumps(TINY_ARGS)})
        assert r.status_code == 201, r.text
    finally:
        for conn in idle:
            conn.close()
        server.stop()


def test_a_caller_without_the_right_is_refused_before_the_body_is_read(tmp_path: Path) -> None:
    """With keys required, an anonymous upload is a 401 at once, its body unread (it was read, and charged to
    the anonymous quota, first)."""
    server, url = start_server(make_settings(tmp_path, api_token="boot"), tmp_path)
    try:
        length = 2 * 1024**3
        status, sent, _ = _send_while_listening(url, _request_head(url.rsplit(":", 1)[1], length),
                                                iter(b"\0" * MIB for _ in range(64)))
        assert status == 401 and sent < 16 * MIB, sent
        key = httpx.post(f"{url}/v1/keys", json={"owner": "reader", "scopes": ["read"]},
                         headers=bearer("boot")).json()["key"]
        status, sent, _ = _send_while_listening(url, _request_head(url.rsplit(":", 1)[1], length, key),
                                                iter(b"\0" * MIB for _ in range(64)))
        assert status == 403 and sent < 16 * MIB, sent
    finally:
        server.stop()


def _peak_rss_bytes(proc: Proc) -> int:
    for line in Path(f"/proc/{proc.popen.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def test_a_latency_budget_of_any_size_is_answered_within_seconds_and_sigterm_stops_the_server(
        tmp_path: Path, tiny_ancestry_file: Path) -> None:
    """Item 4: ``{"max_latency_ms": 1e300}`` on a FRONT learngene timed 1,338 candidate sizes inside the request
    (over 15 CPU-minutes, 2.7 GB peak), and SIGTERM did not stop the server. The planner bisects the front within
    bounds; a stop cuts what is still open after LEARNGENE_SHUTDOWN_GRACE_S."""
    from service.wiring import build_context
    from service.models import Job

    settings = make_settings(tmp_path, republish_after_s=3600, shutdown_grace_s=2)
    server, url = start_server(settings, tmp_path)
    try:
        with open(tiny_ancestry_file, "rb") as f:
            ancestry = httpx.post(f"{url}/v1/ancestries", files={"file": ("tiny.safetensors", f)}, timeout=120,
                                  data={"architecture": ARCH, "model_args": json.dumps(TINY_ARGS)}).json()
        job = httpx.post(f"{url}/v1/condense-jobs", json={"ancestry": ancestry["id"], "method": "front",
                                                          "learngene": "t-front", "mode": "fit"}).json()
        with httpx.stream("GET", f"{url}/v1/jobs/{job['id']}/events", timeout=120) as events:
            events.read()
        # A client timeout far below the 15 minutes it took: the answer has to come from a bounded search.
        r = httpx.post(f"{url}/v1/descendants", params={"wait": 0}, timeout=120,
                       json={"learngene": "t-front", "budget": {"max_latency_ms": 1e300}})
        assert r.status_code in (201, 202), r.text
        details = r.json()["details"]
        assert details["candidates"] > 1000 and 1 <= details["timed"] <= 12, details
        assert details["chosen"]["params"] <= 100_000_000 and "latency_search_stopped" in details
        # The in-process worker expands the chosen descendant (up to 100M parameters: 400 MB and its file) in the
        # same process, as soon as the request commits; whether that overlapped the reading below depended on the
        # machine's speed (1.62 GB on an idle one, under 1.5 on a loaded one). Read the peak once it has run: the
        # search (one model timed at a time) plus that expansion, against 2.7 GB for the unbounded search alone.
        descendant = r.json()["id"]
        wait_until(lambda: httpx.get(f"{url}/v1/descendants/{descendant}", timeout=10).json()["status"]
                   in ("ready", "failed"), timeout=120)
        peak = _peak_rss_bytes(server)
        assert peak < 2.0 * 1024**3, peak

        ctx = build_context(settings, with_dispatcher=False)
        try:
            with ctx.sessions.begin() as session:  # a job nobody runs: its event stream would stay open an hour
                session.add(Job(id="d" * 32, kind="condense", queue="gpu"))
        finally:
            ctx.close()
        stream = httpx.stream("GET", f"{url}/v1/jobs/{'d' * 32}/events", params={"timeout_s": 3600}, timeout=120)
        response = stream.__enter__()
        assert response.status_code == 200
        server.popen.terminate()
        assert server.popen.wait(timeout=60) is not None  # was: still serving the stream
        stream.__exit__(None, None, None)
    finally:
        server.stop()


@sqlite_only
def test_made_up_methods_add_no_metrics_series(ctx: AppContext) -> None:
    """Item 5: 3,000 anonymous requests with made-up methods (``X00000 /v1/learngenes``) grew /metrics from 53 KB
    to 7.4 MB (69,000 series), each scrape then 1-1.4 s. Methods are labelled from a fixed set."""
    from prometheus_client.parser import text_string_to_metric_families

    from service.telemetry import METHODS, OTHER

    def methods_and_samples() -> tuple[set[str], int]:
        samples = [s for family in text_string_to_metric_families(c.get("/metrics").text) for s in family.samples]
        return {s.labels["method"] for s in samples if "method" in s.labels}, len(samples)

    with app_client(ctx, anonymous_rate_per_s=1e6, anonymous_burst=10**6) as c:
        c.get("/v1/learngenes")
        methods_and_samples()  # the scrape's own series
        _, before = methods_and_samples()
        for i in range(300):
            assert c.request(f"X{i:05d}", "/v1/learngenes").status_code == 405
        labels, after = methods_and_samples()
        assert labels <= METHODS | {OTHER} and OTHER in labels, labels
        # One request counter, one latency histogram and one byte counter for "other": not 300 of each.
        assert after - before < 40, (before, after)


@sqlite_only
def test_metrics_can_be_kept_for_admin_keys(ctx: AppContext) -> None:
    with app_client(ctx, api_token="boot", metrics_access="admin") as c:
        writer = new_key(c, "boot", owner="w")
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers=bearer(writer)).status_code == 403
        r = c.get("/metrics", headers=bearer("boot"))
        assert r.status_code == 200 and "learngene_http_requests_total" in r.text
        assert c.get("/openapi.json").json()["paths"]["/metrics"]["get"]["security"] == [{"HTTPBearer": []}]


@sqlite_only
def test_a_loss_plot_is_rendered_once_per_state_of_its_job(ctx: AppContext, monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 8: every anonymous GET of loss.png rendered it again (0.1-0.9 s of CPU each).

    Renders are counted, not timed: a CPU-time ratio failed a clean-clone CI run on a loaded machine."""
    from service.condensing import loss
    from service.condensing.loss import PLOTS_KEPT, _plots
    from service.models import Job, JobEvent

    renders: list[str] = []
    real_render = loss._render

    def counted(job: str, points: list[loss.LossPoint]) -> bytes:
        renders.append(job)
        return real_render(job, points)

    monkeypatch.setattr(loss, "_render", counted)
    job_id = "e" * 32
    with ctx.sessions.begin() as session:
        session.add(Job(id=job_id, kind="condense", queue="gpu", state="running"))
        session.add_all(JobEvent(job_id=job_id, kind="progress", data={"step": i, "loss": 1 / (i + 1)})
                        for i in range(200))
    with app_client(ctx, anonymous_rate_per_s=1e6, anonymous_burst=10**6) as c:
        bodies = {c.get(f"/v1/jobs/{job_id}/loss.png").content for _ in range(6)}
        assert len(bodies) == 1 and renders == [job_id]  # the render is the cost; a cached plot is a database read
        png = bodies.pop()
        assert png.startswith(b"\x89PNG")
        with ctx.sessions.begin() as session:  # the job moves on: a new plot
            session.add(JobEvent(job_id=job_id, kind="progress", data={"step": 200, "loss": 0.001}))
        assert c.get(f"/v1/jobs/{job_id}/loss.png").content != png
        assert renders == [job_id, job_id]
    assert len(_plots) <= PLOTS_KEPT
