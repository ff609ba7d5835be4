"""Same request, same bytes, on every machine: every registered method's expansion gives one sha256 whatever the
thread count, the process, the CPU capability torch dispatches to (default: no AVX, avx2) and the BLAS code path.

Dedupe, ETags, the /hub cache and the regeneration of an evicted descendant all rest on this. The sizes are large
enough (width 192, several hundred thousand weights per kind) for BLAS and torch to split work across threads and
vector lanes, where an order-dependent reduction shows.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.artifacts import load_learngene, save_learngene
from engine.methods import REGISTRY, get_method
from engine.methods.base import Learngene, StateDict
from engine.numerics import normal_
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


#: The descendants' sha256 of the learngenes of :func:`exact_values` (the first 16 hex digits), measured on a 2-core
#: AMD EPYC (AVX-512) on 2026-12-04; the float reductions of Intel and AMD CPUs, AVX2 and AVX-512, must all give
#: these. A change of the numerics that changes them changes what every stored descendant's ETag promised: pins
#: move only with a note saying why.
PINNED = {
    "tleg/0/inherit": "4af33a98e6b714f9",
    "tleg/0/fresh": "2f04bac63c8a6080",
    "tleg/1/inherit": "72d73b54e0bde410",
    "tleg/2/inherit": "1af640b6eb8c0678",
    "layers/0/inherit": "3cb228f6d04c0dcb",
    "layers/0/fresh": "e8338c94a94f0778",
    "layers/1/inherit": "35e5c59122cf80dc",
    "layers/2/inherit": "94d335d00f525030",
    "pool/0/inherit": "256056b865199462",
    "pool/0/fresh": "256056b865199462",
    "pool/1/inherit": "f755331f0f6d0a69",
    "pool/2/inherit": "66b414999d7ff0c5",
    "wave/0/inherit": "2915c168f6a2101d",
    "wave/0/fresh": "45da2f8e86f03e83",
    "wave/1/inherit": "f419e707e5a45ed0",
    "wave/2/inherit": "ceb1f9834256ee0f",
    "wave/3/inherit": "0ba53587de16738d",
    "front/0/inherit": "fcb1dd76920fbdb0",
    "front/0/fresh": "8b4437ca6ebf199e",
    "front/1/inherit": "b6633f26b3ee2dd3",
    "front/2/inherit": "2e3efed308c83e3f",
    "front/3/inherit": "36fcb3a6c6a583c2",
    "front/4/inherit": "22a7825add2fd83d",
    "weight-selection/0/inherit": "5e1b97343b7209de",
    "weight-selection/0/fresh": "5e1b97343b7209de",
    "weight-selection/1/inherit": "dc4fc68339df5a26",
    "weight-selection/2/inherit": "6c26c9868fb8f8c5",
    "random/0/inherit": "3c49c948b07ca46a",
    "random/0/fresh": "3c49c948b07ca46a",
    "random/1/inherit": "17ca7088ad861df5",
    "random/2/inherit": "8ba900dab99f17c2",
    "random/3/inherit": "76761a58be469ebf",
    "random/4/inherit": "3129199911c8e948",
}


def exact_values(learngene: Learngene) -> Learngene:
    """``learngene`` with every tensor replaced by draws of :mod:`engine.numerics` (the same bits on every CPU), its
    layout and meta kept: what its expansion makes of them depends on the expansion alone, not on the fit's own
    float reductions (which may differ between CPUs; a fit is stored once and then served)."""
    generator = torch.Generator().manual_seed(11)
    tensors = {}
    for key in sorted(learngene.tensors):
        draw = normal_(torch.empty(learngene.tensors[key].shape), 0.05, generator)
        if key.startswith("std."):
            draw = draw.abs() + 0.01  # FRONT's per-block stds
        tensors[key] = draw.to(learngene.tensors[key].dtype)
    return dataclasses.replace(learngene, tensors=tensors)


def test_the_bytes_are_the_same_on_every_cpu(saved: Path, tmp_path: Path) -> None:
    """Pinned digests: threads and code paths are varied above on one machine; this holds every machine that runs
    the suite to the bytes measured on another."""
    shutil.copy(saved / "requests.json", tmp_path / "requests.json")
    for name in REGISTRY:
        save_learngene(exact_values(load_learngene(saved / f"{name}.learngene")), tmp_path / f"{name}.learngene")
    measured = {key: digest[:16] for key, digest in digests(tmp_path, 2).items()}
    assert measured == PINNED
