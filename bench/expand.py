"""Expansion speed: each method's ``expand`` + ``save_descendant`` against ``timm.create_model`` (random init) +
``safetensors.torch.save_file`` of the same architecture, for ViT-S-size and ViT-B-size descendants (224 px,
patch 16, 1000 classes). Times are medians of alternating runs (ours, timm, ours, ...), so both sides share
whatever else the machine is doing. The ratio is ours / timm: below 1 means inheriting is cheaper than a random
start; 'random' is timm's own init and so the baseline itself (its ratio shows the noise).

Learngenes are fitted here from a randomly initialized ViT-B ancestry (nothing is downloaded). A method whose
learngene keeps its ancestry's width (TLEG, Learngene layers) gets its ViT-S learngene fitted from a ViT-S
ancestry weight-selected out of the ViT-B one. The pool holds two 12-block students (ViT-S and ViT-B by weight
selection) and is also timed on a stitched descendant (6 blocks at 384, 6 at 768). FRONT keeps its default
whole spectrum (``keep_ratio`` 1), so its ViT-B descendant is the full inverse transform and its ViT-S one a
truncation.

"peak/weights" is the growth of the process's peak resident memory during expand + save, over the descendant's
weight bytes (Linux/glibc only). Methods that hand out the learngene's own tensors (weight selection at equal
width, the pool) grow little: their descendant's weights are already in memory.

``--family dinov2`` runs the same on a DINOv2-with-registers ancestry (layer scale, 4 registers, positions for
the patches only, patch 14 at 224 px): every method that handles those features, the same sizes.

    .venv/bin/python bench/expand.py [--repeats 5] [--methods front random] [--family plain|dinov2]
"""
from __future__ import annotations

import argparse
import ctypes
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

import engine.stitched  # noqa: F401  (registers the stitched architecture)
from engine.artifacts import descendant_metadata, save_descendant
from engine.methods import METHOD_NAMES, get_method, weight_selection
from engine.methods.base import Learngene
from engine.spec import FrontSpec, SpecError, ViTSpec
from engine.vit import build_model, seeded

SEED = 0
FAMILIES = {
    "plain": ViTSpec(depth=12, embed_dim=768, num_heads=12),
    "dinov2": ViTSpec(depth=12, embed_dim=768, num_heads=12, patch_size=14, init_values=1e-5, reg_tokens=4,
                      no_embed_class=True, base_architecture="vit_base_patch14_reg4_dinov2"),
}
ANCESTRY = FAMILIES["plain"]
SIZES = {"ViT-S": ANCESTRY.replace(embed_dim=384, num_heads=6), "ViT-B": ANCESTRY}
STITCHED = ANCESTRY.replace(front=FrontSpec(depth=6, embed_dim=384, num_heads=6))
FIT_PARAMS = {
    "pool": {"students": [{"embed_dim": 384, "num_heads": 6, "depth": 12},
                          {"embed_dim": 768, "num_heads": 12, "depth": 12}], "batch": 2},
    "wave": {"tile": [32, 32], "counts": 64},
}


def _peak_rss_reset() -> int | None:
    """Hand freed heap back to the kernel, then reset its peak-RSS mark; the current RSS in bytes (None where
    unsupported). Without the trim, memory freed by earlier rows would be reused unseen."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kib("VmRSS") * 1024
    except OSError:
        return None


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _seconds(action: Callable[[], None]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def _fit_learngenes(ancestry: dict[str, torch.Tensor], methods: list[str]) -> dict[tuple[str, str], Learngene]:
    """(method, size) -> learngene; timings of each fit are printed."""
    small_spec = SIZES["ViT-S"]
    small = weight_selection.select(ancestry, ANCESTRY, small_spec)
    small.update({"head.weight": ancestry["head.weight"][:, ::2].contiguous(), "head.bias": ancestry["head.bias"]})
    learngenes = {}
    for name in methods:
        method = get_method(name)

        def fit(label: str, state: dict[str, torch.Tensor], spec: ViTSpec) -> Learngene:
            start = time.perf_counter()
            learngene = method.fit(state, spec, FIT_PARAMS.get(name, {}))
            print(f"fit {name:<17} from {label:<5} {time.perf_counter() - start:7.2f} s")
            return learngene

        whole = fit("ViT-B", ancestry, ANCESTRY)
        for size, spec in SIZES.items():
            try:
                method.resolve_spec(whole, {k: getattr(spec, k) for k in ("depth", "embed_dim", "num_heads")})
                learngenes[(name, size)] = whole
            except SpecError:  # the method keeps its ancestry's width: a ViT-S learngene needs a ViT-S ancestry
                learngenes[(name, size)] = fit(size, small, small_spec)
    return learngenes


def _methods(selected: list[str]) -> list[str]:
    """The selected methods that handle the ancestry's family features."""
    return [name for name in selected
            if all(f in get_method(name).FEATURES for f in ANCESTRY.features)]


def main() -> None:
    global ANCESTRY, SIZES
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--methods", nargs="+", choices=METHOD_NAMES, default=list(METHOD_NAMES),
                        help="time only these (default: every method)")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="plain")
    args = parser.parse_args()
    ANCESTRY = FAMILIES[args.family]
    SIZES = {"ViT-S": ANCESTRY.replace(embed_dim=384, num_heads=6), "ViT-B": ANCESTRY}
    print(f"torch {torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.machine()}, load {os.getloadavg()[0]:.2f}, family {args.family} {ANCESTRY.features}")
    with seeded(SEED):
        ancestry = build_model(ANCESTRY).state_dict()
    methods = _methods(args.methods)
    learngenes = _fit_learngenes(ancestry, methods)
    rows = [(size, name, learngenes[(name, size)], spec) for size, spec in SIZES.items() for name in methods]
    if "pool" in methods:
        rows.append(("stitched", "pool", learngenes[("pool", "ViT-B")], STITCHED))

    print(f"\n{'size':<9}{'method':<18}{'params':>12}{'ours s':>9}{'timm s':>9}{'ratio':>8}{'peak/weights':>14}")
    with tempfile.TemporaryDirectory() as folder:
        ours_path, timm_path = Path(folder) / "ours.safetensors", Path(folder) / "timm.safetensors"
        for size, name, learngene, target in rows:
            method = get_method(name)
            request = {k: getattr(target, k) for k in ("depth", "embed_dim", "num_heads", "num_classes")}
            spec = method.resolve_spec(learngene, {**request, "front": target.to_dict()["front"]})
            metadata = descendant_metadata(name, spec, SEED, learngene="bench", version="1")

            def ours() -> None:
                save_descendant(method.expand(learngene, spec, SEED), metadata, ours_path)

            def baseline() -> None:
                torch.manual_seed(SEED)
                model = timm.create_model(spec.architecture, pretrained=False, **spec.timm_model_args())
                save_file(model.state_dict(), timm_path)

            ours()  # warm-up: one-time allocations (thread pools, kernel caches) are not the method's
            baseline()
            before = _peak_rss_reset()
            ours()
            peak = None if before is None else _status_kib("VmHWM") * 1024 - before
            # Alternating runs share whatever else the machine is doing at the time.
            ours_times, timm_times = zip(*[(_seconds(ours), _seconds(baseline)) for _ in range(args.repeats)])
            ours_s, timm_s = statistics.median(ours_times), statistics.median(timm_times)
            weight_bytes = timm_path.stat().st_size
            peak_text = "n/a" if peak is None else f"{peak / weight_bytes:.2f}"
            params = sum(t.numel() for t in method.expand(learngene, spec, SEED).state_dict.values())
            print(f"{size:<9}{name:<18}{params:>12,}{ours_s:>9.3f}{timm_s:>9.3f}{ours_s / timm_s:>8.2f}{peak_text:>14}")


if __name__ == "__main__":
    main()
