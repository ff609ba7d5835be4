"""HTTP descendant requests against baselines measured in the same run.

1. Cold: POST /v1/descendants?wait (a never-seen seed, so the engine really expands) + GET weights of a
   ViT-S-size descendant over HTTP on the embedded default, vs timm.create_model + safetensors save of the same
   architecture in this process. Target: ratio <= 1.
   The same cold request is also compared with the same work done in-process by the engine (the learngene,
   downloaded once, expanded and written with ``save_descendant``): what the HTTP API, the registry and the job
   hand-off add on top of the engine.
2. Cached: GET weights of an existing descendant, vs a plain static-file server (http.server) sending the same
   file. Target: ratio close to 1.

The service runs as `learngene serve` in a subprocess on a temporary data dir, with a ViT-S-width TLEG learngene
fitted (data-free) from a randomly initialized ViT-S ancestry: nothing is downloaded.

    .venv/bin/python bench/http_descendants.py [--repeats 7]
"""
from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import timm
import torch
from safetensors.torch import save_file

from engine.artifacts import descendant_metadata, load_learngene, save_descendant
from engine.methods import get_method
from engine.methods.base import Learngene

ROOT = Path(__file__).resolve().parents[1]
ARCH = "vit_base_patch16_224"
VIT_S = {"embed_dim": 384, "depth": 12, "num_heads": 6, "num_classes": 1000, "img_size": 224, "patch_size": 16}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = dict(os.environ, LEARNGENE_DATA_DIR=str(data), LEARNGENE_SEED_ON_START="false",
               LEARNGENE_MAX_WAIT_S="300")
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port),
                             "--log-level", "warning"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/healthz").status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("service did not start")


def timm_baseline(path: Path) -> float:
    started = time.perf_counter()
    model = timm.create_model(ARCH, **VIT_S)
    save_file(model.state_dict(), str(path))
    return time.perf_counter() - started


def engine_run(learngene: Learngene, seed: int, path: Path) -> float:
    """What the service's job does, in this process: expand the learngene and write the descendant."""
    method = get_method("tleg")
    started = time.perf_counter()
    spec = method.resolve_spec(learngene, {"depth": 12})
    save_descendant(method.expand(learngene, spec, seed), descendant_metadata("tleg", spec, seed), path)
    return time.perf_counter() - started


def static_server(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's signature
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        ancestry = tmp_path / "vit_s.safetensors"
        torch.manual_seed(0)
        save_file(timm.create_model(ARCH, **VIT_S).state_dict(), str(ancestry))
        proc, url = start_service(tmp_path / "data")
        try:
            client = httpx.Client(base_url=url, timeout=300)
            with open(ancestry, "rb") as f:
                anc = client.post("/v1/ancestries", files={"file": ("vit_s.safetensors", f)},
                                  data={"architecture": ARCH, "model_args": json.dumps(VIT_S)}).json()
            job = client.post("/v1/condense-jobs", json={"ancestry": anc["id"], "method": "tleg", "mode": "fit",
                                                         "learngene": "bench-tleg", "evaluate": False}).json()
            while client.get(f"/v1/jobs/{job['id']}").json()["state"] in ("queued", "running"):
                time.sleep(0.2)
            # Warm both sides once (imports, the learngene cache, allocator).
            client.post("/v1/descendants", params={"wait": 300}, json={"learngene": "bench-tleg", "seed": 10_000})
            timm_baseline(tmp_path / "warm.safetensors")
            learngene_file = tmp_path / "learngene.safetensors"
            learngene_file.write_bytes(client.get("/v1/learngenes/bench-tleg/versions/latest/tensors").content)
            learngene = load_learngene(learngene_file)
            engine_run(learngene, 20_000, tmp_path / "engine-warm.safetensors")

            cold, cold_post, base, engine = [], [], [], []
            for i in range(args.repeats):
                started = time.perf_counter()
                desc = client.post("/v1/descendants", params={"wait": 300},
                                   json={"learngene": "bench-tleg", "spec": {"depth": 12}, "seed": i}).json()
                cold_post.append(time.perf_counter() - started)
                body = client.get(desc["weights_url"]).content
                cold.append(time.perf_counter() - started)
                assert len(body) == desc["size_bytes"]
                base.append(timm_baseline(tmp_path / f"timm{i}.safetensors"))
                engine.append(engine_run(learngene, 30_000 + i, tmp_path / f"engine{i}.safetensors"))
            weights_url = desc["weights_url"]
            size = desc["size_bytes"]

            static_dir = tmp_path / "static"
            static_dir.mkdir()
            (static_dir / "model.safetensors").write_bytes(body)
            server, static_url = static_server(static_dir)
            cached, plain = [], []
            for _ in range(args.repeats):
                started = time.perf_counter()
                assert len(client.get(weights_url).content) == size
                cached.append(time.perf_counter() - started)
                started = time.perf_counter()
                assert len(httpx.get(f"{static_url}/model.safetensors").content) == size
                plain.append(time.perf_counter() - started)
            server.shutdown()
        finally:
            proc.terminate()
            proc.wait()
    med = statistics.median
    print(f"ViT-S descendant: {size / 1e6:.1f} MB, {args.repeats} repeats, medians")
    print(f"{'case':44s} {'ours s':>8s} {'baseline s':>11s} {'ratio':>7s}")
    print(f"{'cold HTTP (POST+GET) vs timm create+save':44s} {med(cold):8.3f} {med(base):11.3f} "
          f"{med(cold) / med(base):7.2f}")
    print(f"{'  of which the POST (expand, write, register)':44s} {med(cold_post):8.3f} {med(base):11.3f} "
          f"{med(cold_post) / med(base):7.2f}")
    print(f"{'cold HTTP (POST+GET) vs in-process engine':44s} {med(cold):8.3f} {med(engine):11.3f} "
          f"{med(cold) / med(engine):7.2f}")
    print(f"{'cached GET weights vs static file server':44s} {med(cached):8.3f} {med(plain):11.3f} "
          f"{med(cached) / med(plain):7.2f}")


if __name__ == "__main__":
    main()
