"""Train the seed ancestries a fresh install registers, and write them into the repository.

A first start only registers these checkpoints and condenses them (service/seed.py), so it trains no ancestry;
this script is how they were made, and how to make them again:

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/train_seed_ancestry.py   # all of them
    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/train_seed_ancestry.py mixed-vit

Each is written as ``service/seed_data/<name>.safetensors`` with its entry in ``service/seed_data/ancestries.json``:
the dataset, the timm model arguments, the recipe, the accuracies reached (train, validation and the sources'
official test images; for a joined dataset also each source's own) and the file's sha256 (which the seed
checks before registering). Training is seeded and single-threaded, so a rerun on the same CPU kind and torch
build writes the same bytes; elsewhere float summation order may differ, and the recorded accuracies are the check.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEED_DATA = ROOT / "service" / "seed_data"
MANIFEST = SEED_DATA / "ancestries.json"


def recipes() -> dict[str, tuple[str, object, object]]:
    from engine.data import DIGITS_URI, FASHION_MNIST_URI
    from engine.train.ancestry import (FASHION_ANCESTRY_SPEC, FASHION_ANCESTRY_TRAINING, MIXED_ANCESTRY_SPEC,
                                       MIXED_ANCESTRY_TRAINING, SEED_ANCESTRY_SPEC, SEED_ANCESTRY_TRAINING)

    return {
        # Classes 0-4 (T-shirt/top, trouser, pullover, dress, coat): the other five stay unseen, a transfer target.
        "fashion-vit": (f"{FASHION_MNIST_URI}?classes=0-4", FASHION_ANCESTRY_SPEC, FASHION_ANCESTRY_TRAINING),
        "digits-vit": (DIGITS_URI, SEED_ANCESTRY_SPEC, SEED_ANCESTRY_TRAINING),
        # Every image of both, as 20 classes: broader features than either (docs/quality.md, "The broader seed").
        "mixed-vit": ("builtin:fashion-mnist+mnist", MIXED_ANCESTRY_SPEC, MIXED_ANCESTRY_TRAINING),
    }


def train_one(name: str) -> dict[str, object]:
    import torch
    from safetensors.torch import save_file

    from engine.data import load_dataset
    from engine.data_uri import BUILTIN_CLASSES, parse_builtin
    from engine.train.ancestry import train_ancestry
    from engine.train.loop import accuracy
    from engine.vit import build_model

    uri, spec, config = recipes()[name]
    config = dataclasses.replace(config, device="cpu", checkpoint_every_s=0.0)
    started = time.perf_counter()
    state, spec, metrics = train_ancestry(uri, spec, config)
    metrics.pop("loss_history")
    dataset = load_dataset(uri, spec.img_size, spec.in_chans)
    model = build_model(spec)
    model.load_state_dict(state)
    if dataset.test is not None:
        metrics["test_accuracy"] = accuracy(model, dataset.test)
    sources = parse_builtin(uri).sources
    if len(sources) > 1:
        # A joined task's overall accuracy hides a weak source: record each one's, over all the joined classes.
        first = 0
        for source in sources:
            count = len(BUILTIN_CLASSES[source])
            for split_name in ("val", "test"):
                split = getattr(dataset, split_name)
                if split is not None:
                    mine = (split.labels >= first) & (split.labels < first + count)
                    metrics[f"{split_name}_accuracy_{source}"] = accuracy(model, split.subset(mine))
            first += count
    path = SEED_DATA / f"{name}.safetensors"
    save_file(state, str(path), metadata={"source": "scripts/train_seed_ancestry.py", "dataset": uri})
    entry = {
        "file": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "dataset": uri,
        "model_args": spec.timm_model_args(),
        "recipe": {k: v for k, v in dataclasses.asdict(config).items() if k not in ("device", "log_every")},
        "torch": torch.__version__,
        "metrics": {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()},
    }
    print(f"{name}: val {metrics['val_accuracy']:.4f}"
          + (f", test {metrics['test_accuracy']:.4f}" if "test_accuracy" in metrics else "")
          + f" in {time.perf_counter() - started:.0f}s -> {path.relative_to(ROOT)} ({path.stat().st_size:,} bytes)",
          flush=True)
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="which seed ancestries (default: all)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # the bytes must not depend on the machine's core count
    names = args.names or list(recipes())
    unknown = set(names) - set(recipes())
    if unknown:
        parser.error(f"unknown seed ancestries {sorted(unknown)}; known: {list(recipes())}")
    manifest = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}
    for name in names:
        manifest[name] = train_one(name)
        MANIFEST.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
