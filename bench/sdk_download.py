"""The Python client's download speed against curl on the same file, measured in the same run.

1. Cold: a never-seen seed, so the service really expands: ``client.descendant(...).download(dir)`` (POST, follow,
   GET weights with a sha256 check, GET config) vs ``curl`` doing the POST and then fetching weights and config.
2. Cached: the descendant exists; the client downloads it into an empty folder (sha256 checked) vs one curl
   fetching weights and config over one connection.
3. Already there: the client finds the verified file in place and fetches nothing (no curl equivalent).

Speed ratio = curl's time / the client's time (goal >= 0.9). The service runs as ``learngene serve`` on a temporary
data dir with a ViT-S-width TLEG learngene fitted from a random ViT-S ancestry: nothing is downloaded.

    .venv/bin/python bench/sdk_download.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

from learngene import Client

ROOT = Path(__file__).resolve().parents[1]
ARCH = "vit_base_patch16_224"
VIT_S = {"embed_dim": 384, "depth": 12, "num_heads": 6, "num_classes": 1000, "img_size": 224, "patch_size": 16}
SPEC = {"depth": 12}


def start_service(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The benchmark is not abuse: lift the anonymous rate limit.
    env = dict(os.environ, LEARNGENE_DATA_DIR=str(data), LEARNGENE_SEED_ON_START="false", LEARNGENE_MAX_WAIT_S="300",
               LEARNGENE_ANONYMOUS_RATE_PER_S="1000000", LEARNGENE_ANONYMOUS_BURST="1000000")
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--log-level",
                             "warning"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    with Client(url, progress=False) as c:
        deadline = time.monotonic() + 120
        while True:
            try:
                c._request("GET", "/healthz")
                return proc, url
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)


def curl(*args: str) -> bytes:
    return subprocess.run(["curl", "-sSf", *args], check=True, capture_output=True).stdout


def curl_cold(url: str, seed: int, folder: Path) -> float:
    started = time.perf_counter()
    body = json.dumps({"learngene": "bench-tleg", "spec": SPEC, "seed": seed})
    desc = json.loads(curl("-X", "POST", f"{url}/v1/descendants?wait=300", "-H", "content-type: application/json",
                           "-d", body))
    curl("-o", str(folder / "model.safetensors"), f"{url}{desc['weights_url']}",
         "-o", str(folder / "config.json"), f"{url}{desc['config_url']}")
    return time.perf_counter() - started


def curl_cached(url: str, desc: dict[str, object], folder: Path) -> float:
    started = time.perf_counter()
    curl("-o", str(folder / "model.safetensors"), f"{url}{desc['weights_url']}",
         "-o", str(folder / "config.json"), f"{url}{desc['config_url']}")
    return time.perf_counter() - started


def timed(fn: object, *args: object, **kwargs: object) -> tuple[float, object]:
    started = time.perf_counter()
    out = fn(*args, **kwargs)  # type: ignore[operator]
    return time.perf_counter() - started, out


def prepare(client: Client, folder: Path) -> None:
    """The learngene every request expands: fitted from a seeded random ViT-S."""
    torch.manual_seed(0)
    weights = folder / "vit_s.safetensors"
    save_file(timm.create_model(ARCH, **VIT_S).state_dict(), str(weights))
    ancestry = client.upload_ancestry(weights, architecture=ARCH, model_args=VIT_S)
    client.condense(ancestry, "tleg", "bench-tleg", mode="fit", evaluate=False).follow()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        proc, url = start_service(tmp_path / "data")
        try:
            client = Client(url, progress=False, timeout=300)
            prepare(client, tmp_path)
            # Warm both sides once (imports, the learngene cache, connections).
            client.descendant("bench-tleg", spec=SPEC, seed=100_000).download(tmp_path / "warm")
            curl_cold(url, 100_001, _fresh(tmp_path / "warm-curl"))

            cold_sdk, cold_curl, cached_sdk, cached_curl, present = [], [], [], [], []
            for i in range(args.repeats):
                t, _ = timed(lambda: client.descendant("bench-tleg", spec=SPEC, seed=i).download(
                    _fresh(tmp_path / f"sdk{i}")))
                cold_sdk.append(t)
                cold_curl.append(curl_cold(url, 1_000 + i, _fresh(tmp_path / f"curl{i}")))
            d = client.descendant("bench-tleg", spec=SPEC, seed=0)
            for i in range(args.repeats):
                t, got = timed(client.download, d, _fresh(tmp_path / "cached-sdk"))
                assert got.bytes_fetched == d.size_bytes  # type: ignore[attr-defined]
                cached_sdk.append(t)
                cached_curl.append(curl_cached(url, d.raw, _fresh(tmp_path / "cached-curl")))
                t, got = timed(client.download, d, tmp_path / "cached-sdk")
                assert got.skipped  # type: ignore[attr-defined]
                present.append(t)
            assert (tmp_path / "cached-sdk" / "model.safetensors").read_bytes() == \
                (tmp_path / "cached-curl" / "model.safetensors").read_bytes()
            client.close()
        finally:
            proc.terminate()
            proc.wait()
    med = statistics.median
    print(f"ViT-S descendant: {d.size_bytes / 1e6:.1f} MB, {args.repeats} repeats, medians (speed ratio = curl / client)")
    print(f"{'case':48s} {'client s':>9s} {'curl s':>8s} {'ratio':>6s}")
    for name, ours, theirs in (("cold: POST, produce, GET weights + config", cold_sdk, cold_curl),
                               ("cached: GET weights (sha256 checked) + config", cached_sdk, cached_curl)):
        print(f"{name:48s} {med(ours):9.3f} {med(theirs):8.3f} {med(theirs) / med(ours):6.2f}"
              f"   (runs: {', '.join(f'{b / a:.2f}' for a, b in zip(ours, theirs))})")
    print(f"{'already there: verified, nothing fetched':48s} {med(present):9.3f}")


def _fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


if __name__ == "__main__":
    main()
