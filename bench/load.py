"""Load on the real service: requests/s and latency percentiles of the read paths and of the dedupe POST, each
against ``GET /healthz`` (the same app's trivial endpoint) measured in the same run.

The service runs as ``python -m service.cli serve`` (one uvicorn process, the embedded default: SQLite and a local
artifact folder) on 127.0.0.1 with a temporary data dir and no seeding. Setup over HTTP: a tiny random ViT uploaded
as an ancestry, a data-free TLEG learngene condensed from it, one descendant expanded and cached. Then, case by
case, ``--concurrency`` keep-alive connections send requests back to back for ``--duration`` seconds (after
``--warmup`` seconds whose requests are not counted).

The load generator is a small asyncio HTTP/1.1 client over raw sockets rather than httpx: on a 2-core machine the
client shares the CPU with the server, and a lighter client leaves more of it to the thing being measured. The
server is started with ``--log-level warning`` (no access log), as a deployment behind a proxy that logs would
be. Ratios < 1 mean the case is slower than the baseline; p50/p99 are per-request latencies in milliseconds.

    .venv/bin/python bench/load.py [--duration 10] [--concurrency 16] [--warmup 1]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
ARCH = "vit_base_patch16_224"
#: The service tests' tiny ViT: a learngene of it is condensed in well under a second.
TINY_ARGS = {"img_size": 16, "patch_size": 4, "in_chans": 1, "num_classes": 10, "embed_dim": 32, "depth": 4,
             "num_heads": 2, "class_token": False, "global_pool": "avg"}
LEARNGENE = "load-tleg"


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    body: bytes = b""
    expect: int = 200


@dataclass
class Result:
    case: Case
    latencies: list[float]
    errors: int
    seconds: float
    response_bytes: int

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3 if ordered else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


#: The load is the measurement, not abuse: the anonymous rate limit would answer most of it with 429s.
NO_RATE_LIMIT = {"LEARNGENE_ANONYMOUS_RATE_PER_S": "1000000", "LEARNGENE_ANONYMOUS_BURST": "1000000"}


def start_service(data_dir: Path, env_overrides: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = dict(os.environ, LEARNGENE_DATA_DIR=str(data_dir), LEARNGENE_SEED_ON_START="false",
               **(NO_RATE_LIMIT if env_overrides is None else env_overrides))
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--host", HOST, "--port", str(port),
                             "--log-level", "warning"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited with code {proc.returncode} while starting")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("the service did not answer /healthz within 120 s")


def prepare(url: str, folder: Path) -> tuple[int, dict[str, object]]:
    """Upload a tiny ancestry, condense a TLEG learngene (fit), expand one descendant; its id and request."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ancestry = folder / "tiny.safetensors"
    save_file(timm.create_model(ARCH, **TINY_ARGS).state_dict(), str(ancestry))
    with httpx.Client(base_url=url, timeout=120) as client:
        with open(ancestry, "rb") as f:
            r = client.post("/v1/ancestries", files={"file": (ancestry.name, f, "application/octet-stream")},
                            data={"architecture": ARCH, "model_args": json.dumps(TINY_ARGS)})
        r.raise_for_status()
        r = client.post("/v1/condense-jobs", json={"ancestry": r.json()["id"], "method": "tleg", "mode": "fit",
                                                    "learngene": LEARNGENE, "evaluate": False})
        r.raise_for_status()
        job_id = r.json()["id"]
        deadline = time.monotonic() + 120
        while (state := client.get(f"/v1/jobs/{job_id}").json()["state"]) in ("queued", "running"):
            if time.monotonic() > deadline:
                raise RuntimeError("condensing did not finish within 120 s")
            time.sleep(0.1)
        if state != "succeeded":
            raise RuntimeError(f"condensing ended {state}")
        request: dict[str, object] = {"learngene": LEARNGENE, "spec": {"depth": 4}, "seed": 0}
        r = client.post("/v1/descendants", params={"wait": 60}, json=request)
        if r.status_code != 201 or r.json()["status"] != "ready":
            raise RuntimeError(f"expanding the descendant failed: {r.status_code} {r.text}")
        descendant_id = r.json()["id"]
        # The first download warms the file cache; the benchmark measures the cached path.
        client.get(f"/v1/descendants/{descendant_id}/weights").raise_for_status()
    return descendant_id, request


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, int]:
    """(status, body bytes) of one HTTP/1.1 response: Content-Length or chunked bodies."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in headers:
        size = int(headers["content-length"])
        await reader.readexactly(size)
        return status, size
    if headers.get("transfer-encoding", "").lower() == "chunked":
        size = 0
        while True:
            chunk = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(chunk + 2)  # the chunk and its CRLF
            size += chunk
            if chunk == 0:
                return status, size
    return status, 0  # 204/304: no body


async def _connection(case: Case, port: int, counting_from: float, stop: float, result: Result) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    headers = f"{case.method} {case.path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAccept: */*\r\n"
    if case.body:
        headers += f"Content-Type: application/json\r\nContent-Length: {len(case.body)}\r\n"
    request = (headers + "\r\n").encode() + case.body
    try:
        while (now := time.perf_counter()) < stop:
            writer.write(request)
            await writer.drain()
            status, size = await _read_response(reader)
            done = time.perf_counter()
            if now >= counting_from:
                if status == case.expect:
                    result.latencies.append(done - now)
                    result.response_bytes += size
                else:
                    result.errors += 1
    finally:
        writer.close()


async def _run_case(case: Case, port: int, concurrency: int, warmup: float, duration: float) -> Result:
    start = time.perf_counter()
    counting_from, stop = start + warmup, start + warmup + duration
    # Counted: requests sent inside the window (the last ones may finish just after it).
    result = Result(case, [], 0, duration, 0)
    await asyncio.gather(*(_connection(case, port, counting_from, stop, result) for _ in range(concurrency)))
    return result


def run_case(case: Case, port: int, concurrency: int, warmup: float, duration: float) -> Result:
    return asyncio.run(_run_case(case, port, concurrency, warmup, duration))


def cases(descendant_id: int, request: dict[str, object]) -> list[Case]:
    return [
        Case("GET /healthz (baseline)", "GET", "/healthz"),
        Case("GET /v1/learngenes", "GET", "/v1/learngenes"),
        Case(f"GET /v1/learngenes/{LEARNGENE}/versions/latest", "GET", f"/v1/learngenes/{LEARNGENE}/versions/latest"),
        Case("GET /v1/descendants/{id}", "GET", f"/v1/descendants/{descendant_id}"),
        Case("GET /v1/descendants/{id}/weights", "GET", f"/v1/descendants/{descendant_id}/weights"),
        Case("POST /v1/descendants (dedupe)", "POST", "/v1/descendants", json.dumps(request).encode(), expect=200),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per case")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each case")
    parser.add_argument("--concurrency", type=int, default=16, help="keep-alive connections")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]  # the machine's own load, before this benchmark adds to it
    with tempfile.TemporaryDirectory(prefix="learngene-load-") as tmp:
        proc, url = start_service(Path(tmp) / "data")
        try:
            descendant_id, request = prepare(url, Path(tmp))
            port = int(url.rsplit(":", 1)[1])
            results = []
            for case in cases(descendant_id, request):
                results.append(run_case(case, port, args.concurrency, args.warmup, args.duration))
                print(f"  {case.name}: {results[-1].rps:.0f} req/s", file=sys.stderr, flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    baseline = results[0]
    print(f"{args.concurrency} connections, {args.duration:g} s per case after {args.warmup:g} s warm-up, "
          f"{os.cpu_count()} CPUs, load average {load_before:.2f} before the run")
    print(f"{'case':<48}{'requests':>9}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'KB/resp':>9}"
          f"{'req/s ratio':>13}{'p50 ratio':>11}")
    for r in results:
        count = len(r.latencies)
        size = r.response_bytes / count / 1e3 if count else 0.0
        print(f"{r.case.name:<48}{count:>9}{r.rps:>9.0f}{r.percentile(0.5):>9.1f}{r.percentile(0.99):>9.1f}"
              f"{r.errors:>8}{size:>9.1f}{r.rps / baseline.rps:>13.2f}"
              f"{r.percentile(0.5) / baseline.percentile(0.5):>11.2f}")
    if any(r.errors for r in results):
        print("some requests got an unexpected status: see the errors column", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
