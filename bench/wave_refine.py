"""Does WAVE's scaler refinement fix its weak widths? The quality report's setting, narrowed to the width sweep.

The same ancestry recipe, WAVE training and fine-tuning protocol as the digits report (``bench/quality_digits.py``:
digits 0-4 -> 5-9, 10 images per class, 100 steps, seeds 0-2), at depth 6 and widths 32, 48, 64, 96. Four
initializations:
timm's random init, weight selection from the ancestry (it only shrinks), the trained WAVE learngene (scalers of
new widths resampled without data), and that learngene refined (``engine.train.refine_wave``: per width, only
the scalers train, templates frozen, distilled from the ancestry on the source images; one joint run for the
three widths the ancestry does not have).

    .venv/bin/python bench/wave_refine.py [--refine-steps 300] [--jobs 2]     # ~6 min on 2 cores

Prints a Markdown table (mean +- standard deviation over the seeds) and the refinement's own metrics.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import quality_digits as qr  # noqa: E402  (the report's tasks: same data, ancestry and fine-tuning)
from bench.finetune import resolve, single_threaded  # noqa: E402
from bench.reporting import mean_sd, method_of, row, table_head  # noqa: E402

WIDTHS = (32, 48, 64, 96)
DEPTH = 6
REFINED_WIDTHS = (32, 48, 96)


def task_refine(learngene_path: str, ancestry_path: str, steps: int) -> tuple[Any, dict[str, Any]]:
    from safetensors.torch import load_file

    from engine.artifacts import load_learngene
    from engine.train.condense import refine_sizes
    from engine.methods import validate_params
    from engine.train.wave import refine_wave

    learngene = load_learngene(Path(learngene_path))
    sizes = [{"embed_dim": w, "num_heads": w // 16, "depth": DEPTH} for w in REFINED_WIDTHS]
    params = validate_params("wave", {"sizes": sizes, "steps": steps, "checkpoint_every_s": 0.0}, "refine")
    specs = refine_sizes("wave", learngene, params["sizes"])
    started = time.process_time()
    refined, metrics, _ = refine_wave(learngene, load_file(ancestry_path), qr.ancestry_spec(), qr.source_task(),
                                      specs, params, None)
    return refined, {**metrics, "cpu_s": time.process_time() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refine-steps", type=int, default=300)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    import multiprocessing

    import torch
    from safetensors.torch import save_file

    from engine.artifacts import save_learngene
    from engine.methods import weight_selection
    from engine.methods.base import Learngene

    torch.set_num_threads(1)
    settings = qr.FULL
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(
        max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn"), initializer=single_threaded
    ) as pool:
        work = Path(tmp)
        state, ancestry_metrics = pool.submit(qr.task_train_ancestry, settings.ancestry_steps).result()
        ancestry_path = work / "ancestry.safetensors"
        save_file(state, str(ancestry_path))
        wave_lg, wave_metrics = pool.submit(qr.task_condense, "wave", "train", str(ancestry_path),
                                            settings.train_params("wave")).result()
        wave_path = work / "wave-train.safetensors"
        save_learngene(wave_lg, wave_path)
        refined, refine_metrics = pool.submit(task_refine, str(wave_path), str(ancestry_path),
                                              args.refine_steps).result()
        refined_path = work / "wave-refine.safetensors"
        save_learngene(refined, refined_path)
        learngenes: dict[str, tuple[Any, str | None]] = {
            "random": (Learngene("random", {}, {"spec": qr.ancestry_spec().to_dict()}), None),
            "weight-selection": (weight_selection.fit(state, qr.ancestry_spec(), {}), None),
            "wave train": (wave_lg, str(wave_path)),
            "wave refine": (refined, str(refined_path)),
        }
        ws_path = work / "weight-selection.safetensors"
        save_learngene(learngenes["weight-selection"][0], ws_path)
        learngenes["weight-selection"] = (learngenes["weight-selection"][0], str(ws_path))
        futures = []
        for init, (learngene, path) in learngenes.items():
            for width in WIDTHS:
                spec = resolve(method_of(init), learngene, DEPTH, width)
                if spec is None:
                    continue
                for seed in settings.seeds:
                    run = qr.Run(init, path, spec.to_dict(), seed, settings.shots, settings.finetune_steps,
                                 settings.batch_size, settings.lr, settings.eval_every)
                    futures.append(pool.submit(qr.task_finetune, run))
        results = [f.result() for f in futures]
    wall = time.perf_counter() - started

    print(f"ancestry source val accuracy {ancestry_metrics['val_accuracy']:.3f}; WAVE train "
          f"{wave_metrics['cpu_s']:.0f} CPU s; refinement ({args.refine_steps} steps, widths "
          f"{list(REFINED_WIDTHS)} jointly) {refine_metrics['cpu_s']:.0f} CPU s; wall {wall / 60:.1f} min")
    print("source-task accuracy of the refined sizes (before -> after refinement):",
          {k: f"{v['val_accuracy_before']:.3f} -> {v['val_accuracy']:.3f}" for k, v in refine_metrics["sizes"].items()})
    print()
    print("\n".join(table_head(f"initialization (depth {DEPTH})", [f"width {w}" for w in WIDTHS])))
    for init in learngenes:
        accuracies = [[r["accuracy"] for r in results if r["init"] == init and r["width"] == width] for width in WIDTHS]
        print(row([init, *(mean_sd(a) if a else "—" for a in accuracies)]))


if __name__ == "__main__":
    main()
