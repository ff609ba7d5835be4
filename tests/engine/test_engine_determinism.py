"""Same request, same bytes, on every machine: every registered method's expansion gives one sha256 whatever the
thread count, the process, the CPU capability torch dispatches to (default: no AVX, avx2) and the BLAS code path.

Dedupe, ETags, the /hub cache and the regeneration of an evicted descendant all rest on this. The sizes are large
enough (width 192, several hundred thousand weights per kind) for BLAS and torch to split work across threads and
vector lanes, where an order-dependent reduction shows.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.artifacts import save_learngene
from engine.methods import REGISTRY, get_method
from engine.methods.base import StateDict
from engine.spec import SpecError, ViTSpec
from engine.vit import seeded_state
from tests.engine.expansion_digests import digests

PLAIN = ViTSpec(depth=6, embed_dim=192, num_heads=3, num_classes=10, img_size=32, patch_size=8)
#: A DINOv2-like family (layer scale, a register token) for the methods that take it.
FAMILY = PLAIN.replace(init_values=1e-5, reg_tokens=1)
FIT_PARAMS: dict[str, dict] = {
    "layers": {"count": 3},
    "wave": {"tile": [32, 32], "counts": 16},
    "pool": {"students": [{"embed_dim": 96, "num_heads": 3, "depth": 3},
                          {"embed_dim": 192, "num_heads": 3, "depth": 4}]},
}
#: Requests tried on every learngene; each method keeps those it can make (depth, classes and image size, width).
REQUESTS: list[dict] = [
    {"depth": 9},
    {"depth": 4, "num_classes": 3, "img_size": 48},
    {"depth": 5, "embed_dim": 240, "num_heads": 5},
    {"depth": 3, "embed_dim": 96, "num_heads": 3, "img_size": 24},
    {},
]
SCRIPT = Path(__file__).with_name("expansion_digests.py")


def trained_like(spec: ViTSpec) -> StateDict:
    """timm's init moved off its constants (a fresh LayerNorm's ones would make resizing trivially exact)."""
    generator = torch.Generator().manual_seed(1)
    state = seeded_state(spec, 0)
    return {k: v + 0.05 * torch.randn(v.shape, generator=generator) for k, v in state.items()}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every registered method's learngene (on the family ancestry where the method takes it), saved with the
    requests it can make."""
    folder = tmp_path_factory.mktemp("learngenes")
    ancestries = {FAMILY: trained_like(FAMILY), PLAIN: trained_like(PLAIN)}
    requests: dict[str, list[dict]] = {}
    for name in REGISTRY:
        method = get_method(name)
        spec = FAMILY if {"init_values", "reg_tokens"} <= set(method.FEATURES) else PLAIN
        learngene = method.fit(ancestries[spec], spec, FIT_PARAMS.get(name, {}))
        save_learngene(learngene, folder / f"{name}.learngene")
        requests[name] = []
        for partial in REQUESTS:
            try:
                method.resolve_spec(learngene, partial)
            except SpecError:
                continue
            requests[name].append(partial)
        assert len(requests[name]) >= 2 or name == "pool", (name, requests[name])
    (folder / "requests.json").write_text(json.dumps(requests))
    return folder


@pytest.fixture(scope="module")
def reference(saved: Path) -> dict[str, str]:
    return digests(saved, 1)


def test_every_method_and_request_is_covered(reference: dict[str, str]) -> None:
    assert {key.split("/")[0] for key in reference} == set(REGISTRY)
    # Different requests give different descendants (the digests are not of something constant).
    assert len(set(reference.values())) > len(REGISTRY)


@pytest.mark.parametrize("threads", [2, 3])
def test_the_thread_count_changes_no_byte(saved: Path, reference: dict[str, str], threads: int) -> None:
    assert digests(saved, threads) == reference


@pytest.mark.parametrize("env, threads", [
    ({"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1", "MKL_CBWR": "COMPATIBLE"}, 1),
    ({"ATEN_CPU_CAPABILITY": "avx2", "OMP_NUM_THREADS": "3"}, 3),
], ids=["default-capability", "avx2"])
def test_a_fresh_process_on_another_code_path_gives_the_same_bytes(saved: Path, reference: dict[str, str],
                                                                   env: dict[str, str], threads: int) -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), str(saved), str(threads)], capture_output=True, text=True,
                            env={**os.environ, **env}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout) == reference
