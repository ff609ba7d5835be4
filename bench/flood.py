"""A bounded flood on loopback: does the rate limiter shed it with 429s, and does ``/healthz`` stay fast?

The service runs as ``python -m service.cli serve`` (embedded default, its default limits: anonymous callers share
20 requests/s, burst 50), with ``LEARNGENE_API_TOKEN`` set so that keys are required. A prober sends ``GET
/healthz`` back to back on its own connection, first alone (baseline), then while ``--connections`` flood
connections send, each as fast as answers come, for ``--duration`` seconds:

* ``anonymous reads``: ``GET /v1/learngenes`` without a key;
* ``wrong-token writes``: ``POST /v1/descendants`` with a different wrong bearer token each time (the issue's
  1000 wrong-token POSTs that all got 401);
* meanwhile a client with a valid key (its own bucket) reads once every 100 ms: its answers say whether the flood
  of others reaches it.

Printed: the flood's requests by status, the probe's p50/p99 alone and under each flood, the keyed client's
statuses. On a 2-core machine the flood client shares the CPU with the server, so the probe's latency under flood
also measures that contention, not only the server.

    .venv/bin/python bench/flood.py [--duration 10] [--connections 32]
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import HOST, _read_response, start_service  # noqa: E402  (a sibling script, not a package)

ADMIN = "flood-admin"


def _request(method: str, path: str, port: int, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}"] + [f"{k}: {v}" for k, v in headers.items()]
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _flood(kind: str, port: int, stop: float, counts: collections.Counter[int], index: int) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    n = 0
    try:
        while time.perf_counter() < stop:
            n += 1
            if kind == "anonymous reads":
                request = _request("GET", "/v1/learngenes", port, {})
            else:
                body = json.dumps({"learngene": "x", "spec": {"depth": 2}}).encode()
                request = _request("POST", "/v1/descendants", port, {"Authorization": f"Bearer wrong-{index}-{n}"},
                                   body)
            writer.write(request)
            await writer.drain()
            status, _ = await _read_response(reader)
            counts[status] += 1
    finally:
        writer.close()


async def _probe(port: int, stop: float, path: str, headers: dict[str, str], pause: float,
                 latencies: list[float], statuses: collections.Counter[int]) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    request = _request("GET", path, port, headers)
    try:
        while time.perf_counter() < stop:
            start = time.perf_counter()
            writer.write(request)
            await writer.drain()
            status, _ = await _read_response(reader)
            latencies.append(time.perf_counter() - start)
            statuses[status] += 1
            if pause:
                await asyncio.sleep(pause)
    finally:
        writer.close()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3 if ordered else float("nan")


async def _phase(kind: str | None, port: int, connections: int, duration: float, key: str) -> dict[str, object]:
    stop = time.perf_counter() + duration
    counts: collections.Counter[int] = collections.Counter()
    probe: list[float] = []
    probe_status: collections.Counter[int] = collections.Counter()
    keyed: list[float] = []
    keyed_status: collections.Counter[int] = collections.Counter()
    tasks = [_probe(port, stop, "/healthz", {}, 0.0, probe, probe_status),
             _probe(port, stop, "/v1/learngenes", {"Authorization": f"Bearer {key}"}, 0.1, keyed, keyed_status)]
    if kind:
        tasks += [_flood(kind, port, stop, counts, i) for i in range(connections)]
    await asyncio.gather(*tasks)
    return {"flood": dict(sorted(counts.items())), "flood_rps": sum(counts.values()) / duration,
            "probe_p50": _pct(probe, 0.5), "probe_p99": _pct(probe, 0.99), "probe_n": len(probe),
            "probe_status": dict(probe_status), "keyed": dict(keyed_status), "keyed_p99": _pct(keyed, 0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--connections", type=int, default=32, help="flood connections")
    args = parser.parse_args()
    import httpx

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="learngene-flood-") as tmp:
        proc, url = start_service(Path(tmp) / "data", {"LEARNGENE_API_TOKEN": ADMIN})
        try:
            key = httpx.post(f"{url}/v1/keys", json={"owner": "bench"},
                             headers={"Authorization": f"Bearer {ADMIN}"}).json()["key"]
            port = int(url.rsplit(":", 1)[1])
            results = {}
            for kind in (None, "anonymous reads", "wrong-token writes"):
                results[kind or "no flood (baseline)"] = asyncio.run(
                    _phase(kind, port, args.connections, args.duration, key))
                time.sleep(3)  # let the anonymous bucket refill between phases
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"{args.connections} flood connections, {args.duration:g} s per phase, {os.cpu_count()} CPUs, "
          f"load average {load_before:.2f} before the run")
    print(f"{'phase':<24}{'flood req/s':>12}  {'flood statuses':<26}{'healthz n':>10}{'p50 ms':>8}{'p99 ms':>8}"
          f"  {'keyed client':<18}{'p99 ms':>8}")
    for name, r in results.items():
        statuses = ", ".join(f"{k}: {v}" for k, v in r["flood"].items()) or "-"  # type: ignore[attr-defined]
        keyed = ", ".join(f"{k}: {v}" for k, v in r["keyed"].items())  # type: ignore[attr-defined]
        print(f"{name:<24}{r['flood_rps']:>12.0f}  {statuses:<26}{r['probe_n']:>10}{r['probe_p50']:>8.1f}"
              f"{r['probe_p99']:>8.1f}  {keyed:<18}{r['keyed_p99']:>8.1f}")


if __name__ == "__main__":
    main()
