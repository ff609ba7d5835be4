"""The first quality report, on scikit-learn's digits: does a descendant inherited from a learngene learn a new
task better than timm's random init, and than weight selection from the same ancestry?

Run through ``bench/quality_report.py --digits`` (into ``docs/quality_digits.md``) or ``--quick`` (its smoke run,
the tests'); fine-tuning is ``bench/finetune.py``'s, shared with the other reports.

Protocol (every number follows from the settings below and the seeds):

1. **Source task**: digits 0-4, every training image of those classes in ``engine.data``'s fixed split. An
   ancestry ViT (16 px, patch 4, width 64, 8 blocks, 4 heads, no class token, average pooling) is trained on it
   with the engine's training loop.
2. **Condensing**: a learngene per condensing method of the registry (``engine.methods``) in each of its modes
   among ``fit`` and ``train``: the data-free ``fit`` (``engine.train.condense.condense``) and ``train`` (the
   method's trainer from the registry, distilling on the *source* images only, so no target image is ever seen
   before fine-tuning). Weight selection uses the ancestry as it is.
3. **Target task**: digits 5-9 with ``shots`` training images per class, drawn by the seed
   (``engine.data.target_task``), scored on every validation image of those classes. Each descendant (several
   depths, and widths where the method allows) is fine-tuned with one optimizer, schedule, step budget and batch
   order for every initialization, once per seed.

Heads: the source and target tasks both have 5 classes, and the engine inherits a head whenever the class count
matches, which here would map digit 0 to digit 5. Descendants are therefore expanded headless and get the same
seeded timm head as the random baseline, so the comparison is between bodies alone.

Seeds: seed s picks the few-shot sample, the batch order and every random draw (the head, fresh blocks of a
Learngene-layers descendant, the random baseline). The ancestry and the learngenes are made once (seed 0), so
the spread is over the target sample and the fine-tuning, not over ancestries.

Determinism: every task runs single-threaded in a worker process, so the results do not depend on ``--jobs`` or
on the machine's core count (byte identity of floats still assumes the same CPU kind and torch build).

Output: ``quality_digits.md`` (``quality.md`` for ``--quick``; tables) and ``quality_depth.png``,
``quality_steps.png``, ``quality_width.png`` in ``--out``.

    .venv/bin/python bench/quality_report.py --digits     # the digits report into docs/ (~10-20 min on 2 cores)
    .venv/bin/python bench/quality_report.py --quick      # a digits smoke run (< 2 min) into a temporary folder
"""
from __future__ import annotations

import dataclasses
import functools
import json
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.finetune import Recipe, descendant_model, finetune, resolve, single_threaded
from bench.reporting import (BASELINES, color, first_reaching, mean_curve, mean_sd, method_inits, method_of, row,
                             stats, table_head)
from engine.methods import FIT, TRAIN

ROOT = Path(__file__).resolve().parents[1]
SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)
#: Row order of every table and legend: the two baselines, then each method's fit and train learngene.
INITS = (*BASELINES, *(init for init, _, _ in method_inits((FIT, TRAIN))))
POOL_STUDENTS = [{"embed_dim": 32, "num_heads": 2, "depth": 4}, {"embed_dim": 64, "num_heads": 4, "depth": 6}]
#: WAVE at 16x16 tiles with 32 templates per kind stores about as much as TLEG's two blocks (about a quarter of
#: the ancestry); the default 32x32 x 64 would keep nearly every direction of an ancestry this small.
WAVE_SHAPE = {"tile": [16, 16], "counts": 32}

#: The reading of the full report's numbers (deterministic for FULL's settings: a change of settings means
#: re-reading the tables and rewriting this).
FINDINGS = """## What it shows, and where methods lose

- **Inheriting beats timm's random init almost everywhere, by about 0.1 to 0.25.** With 50 target images and 100
  steps, random init averages 0.58. Every learngene beats it at every size it can make, except WAVE's data-free
  fit at widths 32 and 48, which ties it. Inherited descendants reach random init's final accuracy in 10 to 40
  steps instead of 90.
- **Trained TLEG matches the ancestry's own weights at any depth, from a quarter of its bytes.** On the depths
  both can make, TLEG train and weight selection (the ancestry's first blocks) are within noise (+0.005 on
  average, 3 wins of 5, with standard deviations of 0.01-0.06), and TLEG also makes depth 12, which selection from
  an 8-block ancestry cannot, with the best cell of the table (0.842). Its learngene is 413 KB, 26% of the
  ancestry, and serves 16 depths. That is TLEG's claim at small scale. It does *not* clearly beat weight
  selection: an ancestry this small is already a cheap and strong source to select from.
- **The data-free fits of TLEG and WAVE lose to weight selection by 0.11-0.13.** The ancestry's trained blocks are
  far from a line in depth (TLEG fit residual 0.37) and from a rank-32 template span (WAVE residual 0.78), so the
  fitted networks keep 27% and 24% of the ancestry's source accuracy (chance: 20%). They still beat random init by
  about 0.1: the stem (patch and position embeddings, copied exactly), the norms and the average block survive.
  300 distillation steps (30-40 CPU seconds) restore the source accuracy (0.989 and 0.983), which is why the papers
  condense on data: the fit is a starting point, not a substitute.
- **WAVE loses at widths it did not learn.** At width 64, trained WAVE is on par with weight selection from depth
  6 up (0.814-0.819 against 0.806-0.808), but at widths 32, 48 and 96 it gets 0.58, 0.65 and 0.69: well below
  weight selection (0.71 and 0.81 where it exists) and only 0.06-0.10 above random. A new width gets its scalers
  by resampling the auxiliary tile grid without data (our data-free default), and norms and biases are resized the
  same way with no fan-in correction: the templates carry over, their arrangement for another width is a guess.
  METHODS.md's optional scaler refinement (the paper trains scalers per size) is not part of this report's grid;
  measured apart in [`wave_refine.md`](wave_refine.md), it closes the gap: 1000 scaler-only steps on the source
  images give 0.73, 0.80 and 0.81 at widths 32, 48 and 96 (trained WAVE without it: 0.58, 0.64, 0.69; weight
  selection: 0.70, 0.81, none). Weight selection, in contrast, keeps whole heads and aligned neurons.
- **Learngene layers: the measured criterion chose worse blocks than "the first 4".** Ablation-KL kept blocks 0,
  1, 2 and 5. The scores of blocks 3-7 differ in the third decimal (0.000-0.007), so the fourth pick is noise, and
  stacking block 5 straight after block 2 skips the two blocks it was trained to follow. It loses to the
  positional choice or ties it at every depth (mean 0.800 against 0.815) and keeps less of the source task (0.911
  against 0.961). A criterion for blocks that will be stacked should score contiguous runs, not single blocks:
  the trainer's default is now that (`selection="window"`, the run with the largest total score), which on these
  recorded scores (0.169, 0.251, 0.078, 0.005, ...) keeps blocks 0-3, the positional learngene above; this report
  still measures the single-block `selection="score"`.
  The positional learngene at depth 4 is exactly weight selection at depth 4 (same blocks, same head draw, hence
  identical numbers: a check on the harness); random blocks after it cost little (0.79-0.83 at depths 5-12).
- **The pool is good where it exists, but it serves few sizes and is the largest learngene.** Two students (32x4,
  64x6) and their stitches give 10 catalogue entries, three of them on this grid, for 90% of the ancestry's bytes.
  Data-free, the wide student is the ancestry's first 6 blocks, so `pool fit` at depth 6 *is* weight selection
  (identical numbers). The stitched width-32 descendant at depth 6 scores 0.79-0.81 against 0.71 for a plain
  width-32 weight selection, but it is 5 blocks at width 64 plus one at 32 (267k parameters against 78k): it wins
  with more parameters, not with a better initialization per parameter. Training the pool (150 steps) helps the
  stitched paths (depth 5: 0.775 to 0.814).
- **Limits of this evidence.** One small ancestry (400k parameters, 721 source images), made once: the 3 seeds vary
  the target sample and the fine-tuning, not the ancestry, and differences under about 0.03 are within the
  spread. One fine-tuning recipe for every initialization (no per-method learning rate); small condensing budgets
  (at most 300 steps). Nothing here says how the methods rank with ImageNet-scale ancestries."""


@dataclass(frozen=True)
class Settings:
    name: str
    ancestry_steps: int
    condense_steps: dict[str, int]
    depths: tuple[int, ...]
    widths: tuple[int, ...]
    width_depth: int  # the depth of the width sweep and of the accuracy-vs-steps curves
    seeds: tuple[int, ...]
    shots: int
    finetune_steps: int
    eval_every: int
    batch_size: int = 25
    lr: float = 1e-3
    layers_count: int = 4

    def fit_params(self, method: str) -> dict[str, Any]:
        """The report's size knobs where it sets them; every other method fits with its defaults."""
        knobs = {"wave": dict(WAVE_SHAPE), "pool": {"students": POOL_STUDENTS},
                 "layers": {"count": self.layers_count, "position": "first"}}
        return knobs.get(method, {})

    def train_params(self, method: str) -> dict[str, Any]:
        """Small condensing runs: the trainers' defaults except steps (where the settings give them), sizes
        matched to the fits, no checkpoints."""
        if method == "layers":  # no optimizer: it scores the ancestry's blocks
            return {"count": self.layers_count, "selection": "score"}
        knobs = {
            # aux_depth = the ancestry's depth (reference: 12): the fit it starts from is then exactly the
            # least-squares line through the ancestry's 8 blocks, and a step costs 2/3 as much.
            "tleg": {"aux_depth": 8},
            "wave": dict(WAVE_SHAPE),
            "pool": {"students": POOL_STUDENTS},
        }
        steps = {"steps": self.condense_steps[method]} if method in self.condense_steps else {}
        return {**steps, "checkpoint_every_s": 0.0, **knobs.get(method, {})}


FULL = Settings(name="full", ancestry_steps=400, condense_steps={"tleg": 300, "wave": 300, "pool": 150},
                depths=(2, 4, 5, 6, 8, 12), widths=(32, 48, 64, 96), width_depth=6, seeds=(0, 1, 2), shots=10,
                finetune_steps=100, eval_every=10)
QUICK = Settings(name="quick", ancestry_steps=60, condense_steps={"tleg": 10, "wave": 10, "pool": 5},
                 depths=(4, 6), widths=(32, 64), width_depth=6, seeds=(0, 1), shots=10, finetune_steps=10,
                 eval_every=5)


# ----------------------------------------------------------------------------------------------------------------
# Tasks run in worker processes. Each is a pure function of its arguments (single-threaded, seeded).


@functools.lru_cache(maxsize=None)
def _digits() -> Any:
    from engine.data import DIGITS_URI, load_dataset
    from engine.train.ancestry import SEED_ANCESTRY_SPEC

    return load_dataset(DIGITS_URI, SEED_ANCESTRY_SPEC.img_size, SEED_ANCESTRY_SPEC.in_chans)


def source_task() -> Any:
    from engine.data import target_task

    return target_task(_digits(), SOURCE_CLASSES)


@functools.lru_cache(maxsize=None)
def target(shots: int, seed: int) -> Any:
    from engine.data import target_task

    return target_task(_digits(), TARGET_CLASSES, shots, seed)


def ancestry_spec() -> Any:
    from engine.train.ancestry import SEED_ANCESTRY_SPEC

    return SEED_ANCESTRY_SPEC.replace(depth=8, num_classes=len(SOURCE_CLASSES))


def task_train_ancestry(steps: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The seed ancestry's recipe (engine.train.ancestry) on the source classes only."""
    import torch

    from engine.train.ancestry import SEED_ANCESTRY_TRAINING, classification_loss
    from engine.train.loop import accuracy, train
    from engine.vit import build_model

    config = dataclasses.replace(SEED_ANCESTRY_TRAINING, steps=steps, warmup_steps=max(1, steps // 20),
                                 checkpoint_every_s=0.0, device="cpu")
    source = source_task()
    torch.manual_seed(config.seed)
    model = build_model(ancestry_spec())
    started = time.process_time()
    train(model, classification_loss, source.train, config)
    metrics = {"steps": steps, "train_images": len(source.train), "val_images": len(source.val),
               "val_accuracy": accuracy(model, source.val), "cpu_s": time.process_time() - started}
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}, metrics


def task_condense(method: str, mode: str, ancestry_path: str, params: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A learngene condensed from the ancestry file; ``train`` distils on the source task's images."""
    from safetensors.torch import load_file

    from engine.methods import get_entry
    from engine.train.condense import condense

    ancestry = load_file(ancestry_path)
    started = time.process_time()
    if mode == FIT:
        learngene, metrics, _ = condense(method, FIT, ancestry, ancestry_spec(), None, params)
    else:
        # condense() loads a dataset by URI (all ten digits); the trainers take the source task itself.
        entry = get_entry(method)
        learngene, metrics, _ = entry.runner(TRAIN)(ancestry, ancestry_spec(), source_task(),
                                                    entry.validate_params(params, TRAIN), None)
    metrics = {**metrics, "cpu_s": time.process_time() - started}
    # Learngene layers records the blocks it kept (and their scores) only on the learngene.
    metrics.update({key: learngene.meta[key] for key in ("indices", "scores") if key in learngene.meta})
    return learngene, metrics


@dataclass(frozen=True)
class Run:
    init: str  # one of INITS
    learngene_path: str | None  # None: timm's random init
    spec: dict[str, Any]  # the resolved, headless descendant spec
    seed: int
    shots: int
    steps: int
    batch_size: int
    lr: float
    eval_every: int


def task_finetune(run: Run) -> dict[str, Any]:
    """Fine-tune one descendant on the target task; validation accuracy every ``eval_every`` steps."""
    from engine.spec import ViTSpec

    task = target(run.shots, run.seed)
    spec = ViTSpec.from_dict(run.spec)
    model, details = descendant_model(spec, task.num_classes, run.seed, run.learngene_path)
    recipe = Recipe(steps=run.steps, lr=run.lr, seed=run.seed, batch_size=run.batch_size, min_lr=1e-5,
                    eval_every=run.eval_every)
    metrics = finetune(model, task.train, task.val, recipe)
    return {"init": run.init, "depth": spec.depth, "width": spec.embed_dim, "seed": run.seed,
            "front": None if spec.front is None else dataclasses.asdict(spec.front), "params": metrics["params"],
            "accuracy": metrics["val_accuracy"], "curve": metrics["curve"],
            "details": {k: v for k, v in details.items() if k != "head"}, "cpu_s": metrics["cpu_s"]}


# ----------------------------------------------------------------------------------------------------------------
# Orchestration (main process).


def grid(settings: Settings) -> list[tuple[int, int]]:
    """(depth, width) points: the depth sweep at the ancestry's width, the width sweep at ``width_depth``."""
    points = [(d, 64) for d in settings.depths] + [(settings.width_depth, w) for w in settings.widths]
    return list(dict.fromkeys(points))


def plan_runs(settings: Settings, init: str, learngene: Any, path: str | None) -> list[Run]:
    runs = []
    for depth, width in grid(settings):
        spec = resolve(method_of(init), learngene, depth, width)
        if spec is None:
            continue
        for seed in settings.seeds:
            runs.append(Run(init, path, spec.to_dict(), seed, settings.shots, settings.finetune_steps,
                            settings.batch_size, settings.lr, settings.eval_every))
    return runs


@dataclass
class Collected:
    ancestry: dict[str, Any]
    condensing: dict[str, dict[str, Any]]  # init -> metrics
    sizes: list[dict[str, Any]]
    retention: dict[str, dict[str, Any]]  # init -> source-task accuracy of its ancestry-size descendant
    results: list[dict[str, Any]]
    run: dict[str, Any]  # settings name, wall time, workers, machine: what the footer reports


def run_all(settings: Settings, jobs: int, work: Path) -> Collected:
    import torch
    from safetensors.torch import save_file

    from engine.artifacts import save_learngene
    from engine.methods import weight_selection
    from engine.methods.base import Learngene

    torch.set_num_threads(1)
    context = multiprocessing.get_context("spawn")  # no forked torch thread pools
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=single_threaded) as pool:
        ancestry_future = pool.submit(task_train_ancestry, settings.ancestry_steps)
        # timm's random init needs nothing from the ancestry: it fills the other workers meanwhile.
        random_lg = Learngene("random", {}, {"spec": ancestry_spec().to_dict()})
        finetunes = [pool.submit(task_finetune, r) for r in plan_runs(settings, "random", random_lg, None)]
        state, ancestry_metrics = ancestry_future.result()
        print(f"ancestry: source val accuracy {ancestry_metrics['val_accuracy']:.3f}", flush=True)
        ancestry_path = work / "ancestry.safetensors"
        save_file(state, str(ancestry_path))
        pending = submit_condensing(pool, settings, str(ancestry_path))

        learngenes: dict[str, Learngene] = {}
        condensing: dict[str, dict[str, Any]] = {}

        def schedule(init: str, learngene: Learngene) -> None:
            path = work / f"{init.replace(' ', '-')}.safetensors"
            save_learngene(learngene, path)
            learngenes[init] = learngene
            finetunes.extend(pool.submit(task_finetune, r) for r in plan_runs(settings, init, learngene, str(path)))

        schedule("weight-selection", weight_selection.fit(state, ancestry_spec(), {}))
        for future in as_completed(pending):
            init = pending[future]
            learngene, metrics = future.result()
            condensing[init] = metrics
            print(f"condensed {init} ({metrics['cpu_s']:.0f} CPU s)", flush=True)
            schedule(init, learngene)
        results = collect_finetunes(finetunes)
    results.sort(key=lambda r: (INITS.index(r["init"]), r["depth"], r["width"], r["seed"]))
    return Collected(ancestry_metrics, condensing, learngene_sizes(settings, learngenes, work),
                     retention(learngenes, state), results, {"settings": settings.name, "jobs": jobs})


def submit_condensing(pool: ProcessPoolExecutor, settings: Settings, ancestry_path: str) -> dict[Future[Any], str]:
    """Every learngene of the report, the training runs first so that they start while the fits finish."""
    inits = sorted(method_inits((FIT, TRAIN)), key=lambda item: item[2] != TRAIN)
    return {pool.submit(task_condense, method, mode, ancestry_path,
                        settings.train_params(method) if mode == TRAIN else settings.fit_params(method)): init
            for init, method, mode in inits}


def collect_finetunes(finetunes: list[Future[Any]]) -> list[dict[str, Any]]:
    results = []
    for done, future in enumerate(as_completed(finetunes), start=1):
        results.append(future.result())
        if done % 25 == 0 or done == len(finetunes):
            print(f"fine-tuned {done}/{len(finetunes)}", flush=True)
    return results


def learngene_sizes(settings: Settings, learngenes: dict[str, Any], work: Path) -> list[dict[str, Any]]:
    """Stored bytes of each learngene against the descendants it serves: those of this report (written with
    their target head, as the service would store them) and its whole catalogue (float32 weights)."""
    from engine.artifacts import descendant_metadata, save_descendant
    from engine.costs import param_count
    from engine.methods import get_method

    ancestry_bytes = (work / "ancestry.safetensors").stat().st_size
    rows = []
    for init in INITS[1:]:
        learngene = learngenes[init]
        path = work / f"{init.replace(' ', '-')}.safetensors"
        method = get_method(learngene.method)
        served = 0
        specs = [s for s in (resolve(learngene.method, learngene, d, w) for d, w in grid(settings)) if s is not None]
        for spec in specs:
            spec = spec.replace(num_classes=len(TARGET_CLASSES))
            target_path = work / "descendant.safetensors"
            save_descendant(method.expand(learngene, spec, 0), descendant_metadata(learngene.method, spec, 0),
                            target_path)
            served += target_path.stat().st_size
        catalogue = [s.replace(num_classes=len(TARGET_CLASSES)) for s in method.candidate_specs(learngene)]
        rows.append({"init": init, "stored": path.stat().st_size, "ancestry": ancestry_bytes,
                     "report_count": len(specs), "report_bytes": served,
                     "catalogue_count": len(catalogue), "catalogue_bytes": 4 * sum(map(param_count, catalogue))})
    return rows


def retention(learngenes: dict[str, Any], ancestry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """How much of the ancestry's own task each learngene keeps before any fine-tuning: source-task validation
    accuracy of its largest descendant up to the ancestry's depth, with the inherited source head."""
    from engine.costs import preference_key
    from engine.methods import get_method
    from engine.train.loop import accuracy
    from engine.vit import build_model

    source = source_task()
    out = {}
    for init, learngene in learngenes.items():
        method = get_method(learngene.method)
        width = learngene.base_spec.embed_dim
        specs = [s for s in method.candidate_specs(learngene) if s.depth <= ancestry_spec().depth]
        # The deepest at the learngene's own width (WAVE could also grow wider than anything it learnt).
        spec = min(specs, key=lambda s: (-s.depth, s.embed_dim != width, *preference_key(s)))
        model = build_model(spec)
        model.load_state_dict(method.expand(learngene, spec, 0).state_dict, strict=True)
        out[init] = {"depth": spec.depth, "width": spec.embed_dim, "accuracy": accuracy(model, source.val)}
    return out

# ----------------------------------------------------------------------------------------------------------------
# Aggregation and tables.

Cells = dict[tuple[str, int, int], list[dict[str, Any]]]  # (init, depth, width) -> its runs, one per seed


def by_cell(results: list[dict[str, Any]]) -> Cells:
    cells: Cells = defaultdict(list)
    for r in results:
        cells[(r["init"], r["depth"], r["width"])].append(r)
    return cells


def _accuracies(runs: list[dict[str, Any]]) -> list[float]:
    return [r["accuracy"] for r in runs]


def markdown(settings: Settings, data: Collected) -> str:
    cells = by_cell(data.results)
    sections = [_intro(settings, data), _by_size(settings, data, cells), _summary(cells),
                _steps_to_random(settings, cells), _kept(data), _stored(data), _footer(settings, data)]
    return "\n".join(line for section in sections for line in section)


def _intro(settings: Settings, data: Collected) -> list[str]:
    return [
        "# Initialization quality: learngenes against random init and weight selection",
        "",
        f"Generated by `bench/quality_report.py {'--quick' if settings.name == 'quick' else '--digits'}` "
        "(protocol in `bench/quality_digits.py`'s docstring; how to read it in the sections below). Every number is "
        f"accuracy on the target task's validation images after {settings.finetune_steps} fine-tuning steps, mean ± "
        f"sample standard deviation over {len(settings.seeds)} seeds ({', '.join(map(str, settings.seeds))}).",
        "",
        "## How to run",
        "",
        "```bash",
        ".venv/bin/python bench/quality_report.py --digits   # this report: docs/quality_digits.md and docs/quality_*.png",
        ".venv/bin/python bench/quality_report.py --quick    # smoke run (< 2 min) into a temporary folder",
        ".venv/bin/python bench/quality_report.py --digits --raw r.json   # also keep every measurement (curves included)",
        ".venv/bin/python bench/quality_report.py --digits --render r.json --out somewhere/   # re-render, no training",
        "```",
        "",
        "`--jobs N` sets the number of worker processes (default: the CPU count); each runs one task at a time on "
        "one thread, so the numbers do not depend on N. The accuracies are deterministic for a given machine kind "
        "and torch build; `tests/bench/test_quality_report_quick.py` runs the quick mode.",
        "",
        "## Setup",
        "",
        f"- Source task: digits {SOURCE_CLASSES[0]}-{SOURCE_CLASSES[-1]}, {data.ancestry['train_images']} training "
        f"images. Ancestry: ViT 16 px / patch 4, width 64, depth 8, 4 heads, no class token, average pooling "
        f"({settings.ancestry_steps} steps); source validation accuracy **{data.ancestry['val_accuracy']:.3f}**.",
        f"- Target task: digits {TARGET_CLASSES[0]}-{TARGET_CLASSES[-1]}, {settings.shots} training images per "
        f"class ({settings.shots * len(TARGET_CLASSES)} in all, drawn by the seed), "
        f"{len(target(settings.shots, 0).val)} validation images.",
        f"- Fine-tuning, identical for every initialization: AdamW lr {settings.lr:g}, 10% warmup then cosine, "
        f"weight decay 0.05, batch {settings.batch_size}, {settings.finetune_steps} steps; the head is timm's "
        "seeded init for everyone (the source head would map 0-4 onto 5-9).",
        "- Condensing: `fit` = the data-free fit; `train` = the method's trainer on the source images "
        f"(TLEG {settings.condense_steps['tleg']} steps, auxiliary depth 8; WAVE {settings.condense_steps['wave']} "
        f"steps, tile {WAVE_SHAPE['tile'][0]}x{WAVE_SHAPE['tile'][1]}, {WAVE_SHAPE['counts']} templates per kind; "
        f"Pool {settings.condense_steps['pool']} steps, students "
        + ", ".join(f"{s['embed_dim']}x{s['depth']}" for s in POOL_STUDENTS)
        + f" (width x depth); layers: the {settings.layers_count} blocks of highest ablation-KL score). "
        f"`layers fit` keeps the first {settings.layers_count} blocks; every other fit takes its method's defaults.",
        "",
        *([FINDINGS, ""] if settings is FULL else []),
    ]


def _by_size(settings: Settings, data: Collected, cells: Cells) -> list[str]:
    depths, widths, at = list(settings.depths), list(settings.widths), settings.width_depth
    lines = ["## Accuracy by depth (width 64)", "", *table_head("initialization", [f"depth {d}" for d in depths])]
    for init in INITS:
        lines.append(row([init, *(mean_sd(_accuracies(cells[(init, d, 64)])) if (init, d, 64) in cells else "—"
                                  for d in depths)]))
    lines += ["", "— : the method cannot make that size (weight selection only shrinks the 8-block ancestry; "
                  f"Learngene layers needs at least its {settings.layers_count} blocks; the pool offers "
                  "the depths of its catalogue). Pool descendants are the catalogue entry with the most "
                  "parameters at that depth and width.", ""]

    lines += [f"## Accuracy by width (depth {at})", "", *table_head("initialization", [f"width {w}" for w in widths])]
    for init in INITS:
        if any((init, at, w) in cells for w in widths if w != 64):
            lines.append(row([init, *(mean_sd(_accuracies(cells[(init, at, w)])) if (init, at, w) in cells else "—"
                                      for w in widths)]))
    lines += ["", "TLEG and Learngene layers keep the ancestry's width (64); weight selection only shrinks; the "
                  "pool's widths are its students'.", ""]
    stitched = {(r["depth"], r["width"]): r for r in data.results if r["front"] is not None}
    if stitched:
        lines += ["Stitched pool descendants (the width above is the back part's):", ""]
        for (depth, width), r in sorted(stitched.items()):
            front = r["front"]
            lines.append(f"- depth {depth}, width {width}: {front['depth']} block(s) at width {front['embed_dim']}, "
                         f"a stitch, {depth - front['depth']} at width {width}; {r['params']:,} parameters "
                         f"(choice {r['details'].get('pool_choice')}).")
        lines.append("")
    return lines


def _summary(cells: Cells) -> list[str]:
    lines = ["## Summary: gain over the baselines", "",
             "Mean over every (depth, width) the method can make and every seed, of its accuracy minus the "
             "baseline's on the same size and seed; wins count sizes whose seed-mean beats the baseline's.", "",
             "| initialization | sizes | mean accuracy | vs random | wins vs random | vs weight selection "
             "| wins vs weight selection |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for init in INITS:
        keys = sorted(k for k in cells if k[0] == init)
        accuracies = [a for k in keys for a in _accuracies(cells[k])]
        out = [init, str(len(keys)), f"{statistics.fmean(accuracies):.3f}"]
        for baseline in BASELINES:
            shared = [(k, (baseline, *k[1:])) for k in keys if (baseline, *k[1:]) in cells]
            if init == baseline or not shared:
                out += ["—", "—"]
                continue
            diffs = [a["accuracy"] - b["accuracy"] for k, base in shared
                     for a, b in zip(cells[k], cells[base], strict=True)]
            wins = sum(statistics.fmean(_accuracies(cells[k])) > statistics.fmean(_accuracies(cells[base]))
                       for k, base in shared)
            out += [f"{statistics.fmean(diffs):+.3f}", f"{wins}/{len(shared)}"]
        lines.append(row(out))
    return [*lines, ""]


def _steps_to_random(settings: Settings, cells: Cells) -> list[str]:
    depth = settings.width_depth
    final_random = statistics.fmean(_accuracies(cells[("random", depth, 64)]))
    lines = [f"## Fine-tuning steps to reach random init's final accuracy (depth {depth}, width 64)", "",
             f"Random init ends at {final_random:.3f} after {settings.finetune_steps} steps; the first evaluated "
             f"step (every {settings.eval_every}) at which each initialization's seed-mean accuracy reaches that "
             "(curves in the second plot).", "",
             "| initialization | steps | accuracy at that step |", "| --- | ---: | ---: |"]
    for init in INITS:
        runs = cells.get((init, depth, 64))
        if runs:
            reached = first_reaching(mean_curve(runs), final_random)
            lines.append(row([init, "never" if reached is None else str(reached[0]),
                              "—" if reached is None else f"{reached[1]:.3f}"]))
    return [*lines, ""]


def _condensing_result(metrics: dict[str, Any]) -> str:
    if "val_accuracy" in metrics:
        return (f"accuracy {metrics['val_accuracy']:.3f}, agreement {metrics['teacher_agreement']:.3f} "
                f"(from {metrics['val_accuracy_before']:.3f})")
    if metrics.get("scores"):
        return "kept blocks " + ", ".join(map(str, metrics["indices"])) + " (ablation-KL scores " + ", ".join(
            f"{s:.3f}" for s in metrics["scores"]) + ")"
    if "indices" in metrics:
        return "kept blocks " + ", ".join(map(str, metrics["indices"])) + " (by position)"
    return "—"


def _kept(data: Collected) -> list[str]:
    lines = ["## Learngenes: what condensing kept", "",
             "Before any fine-tuning: source-task validation accuracy of each learngene's largest descendant up "
             "to depth 8, with the source head it inherits (the ancestry itself scores "
             f"{data.ancestry['val_accuracy']:.3f}). For `train`: the auxiliary network's (pool: mean over its "
             "paths') source validation accuracy at the end of condensing and its agreement with the ancestry.",
             "", "| learngene | descendant (depth x width) | source accuracy | condensing result | fit residual |",
             "| --- | --- | ---: | --- | ---: |"]
    for init in INITS[1:]:
        kept = data.retention[init]
        metrics = data.condensing.get(init, {})
        residual = metrics.get("fit", {}).get("relative_residual")
        if isinstance(residual, dict):
            residual = statistics.fmean(residual.values())
        lines.append(row([init, f"{kept['depth']} x {kept['width']}", f"{kept['accuracy']:.3f}",
                          _condensing_result(metrics), "—" if residual is None else f"{residual:.2f}"]))
    return [*lines, "", "Fit residual: relative Frobenius error of the fitted block weights (WAVE: mean over the four "
                        "weight kinds).", ""]


def _stored(data: Collected) -> list[str]:
    lines = ["## Stored size against what it serves", "",
             "`stored`: the learngene file. `this report`: the descendants above (one file each, float32, "
             "5-class head). `catalogue`: every size the method offers (`candidate_specs`), float32 weights.", "",
             "| learngene | stored KB | vs ancestry | this report: files, MB | stored / report "
             "| catalogue: sizes, MB | stored / catalogue |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for size in data.sizes:
        lines.append(row([size["init"], f"{size['stored'] / 1e3:.0f}", f"{size['stored'] / size['ancestry']:.2f}",
                          f"{size['report_count']}, {size['report_bytes'] / 1e6:.2f}",
                          f"{size['stored'] / size['report_bytes']:.3f}",
                          f"{size['catalogue_count']}, {size['catalogue_bytes'] / 1e6:.1f}",
                          f"{size['stored'] / size['catalogue_bytes']:.4f}"]))
    return [*lines, "", f"The ancestry file is {data.sizes[0]['ancestry'] / 1e3:.0f} KB.", ""]


def _footer(settings: Settings, data: Collected) -> list[str]:
    cpu_s = sum(r["cpu_s"] for r in data.results) + sum(m["cpu_s"] for m in data.condensing.values())
    run = data.run
    return ["## Plots", "",
            "![accuracy vs depth](quality_depth.png)", "",
            f"![accuracy vs fine-tuning steps at depth {settings.width_depth}](quality_steps.png)", "",
            "![accuracy vs width](quality_width.png)", "",
            "## Run", "",
            f"{len(data.results)} fine-tuning runs; {run['wall_s'] / 60:.1f} min wall time with {run['jobs']} "
            f"single-threaded workers ({(cpu_s + data.ancestry['cpu_s']) / 60:.1f} CPU min in tasks) on "
            f"{run['cpus']} CPUs ({run['cpu_model']}), torch {run['torch']}, {run['date']}, load average "
            f"{run['load_start']:.1f} at the start and {run['load_end']:.1f} at the end (other work shared the "
            "machine). Timings vary from run to run; the accuracies do not.", ""]


# ----------------------------------------------------------------------------------------------------------------
# Plots.


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _jitter(init: str, scale: float) -> float:
    """A small x offset per initialization, so that identical points (e.g. layers and weight selection at the
    layers' depth) stay visible side by side."""
    return (INITS.index(init) - (len(INITS) - 1) / 2) * scale


def _style(init: str) -> dict[str, Any]:
    if init in BASELINES:
        # Drawn above the methods: a method identical to a baseline (pool fit at depth 6) must not hide it.
        return {"color": color(init), "linestyle": ":" if init == "random" else "-.", "marker": "s",
                "linewidth": 1.6, "zorder": 3}
    return {"color": color(init), "linestyle": "-", "marker": "o", "linewidth": 1.8, "zorder": 2}


def plot_depth(settings: Settings, cells: Cells, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    for ax, mode in zip(axes, ("fit", "train")):
        for init in INITS:
            if init not in BASELINES and not init.endswith(mode):
                continue
            points = [(d, *stats([r["accuracy"] for r in cells[(init, d, 64)]]))
                      for d in settings.depths if (init, d, 64) in cells]
            if points:
                x, mean, sd = zip(*points)
                x = [d + _jitter(init, 0.04) for d in x]
                ax.errorbar(x, mean, yerr=sd, capsize=3, label=init, **_style(init))
        ax.set_title(f"learngenes condensed by {'data-free fit' if mode == 'fit' else 'training (distillation)'}")
        ax.set_xlabel("descendant depth (width 64)")
        ax.set_xticks(settings.depths)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best", framealpha=0.85)
    axes[0].set_ylabel(f"target accuracy after {settings.finetune_steps} steps")
    fig.suptitle(f"Digits {TARGET_CLASSES[0]}-{TARGET_CLASSES[-1]}, {settings.shots} shots per class: "
                 f"mean ± sd over {len(settings.seeds)} seeds", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_steps(settings: Settings, cells: Cells, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    depth = settings.width_depth
    for ax, mode in zip(axes, ("fit", "train")):
        for init in INITS:
            if (init not in BASELINES and not init.endswith(mode)) or (init, depth, 64) not in cells:
                continue
            steps, mean = zip(*mean_curve(cells[(init, depth, 64)]))
            style = _style(init)
            style.pop("marker")
            ax.plot(steps, mean, label=init, **style)
        ax.set_title(f"{'data-free fit' if mode == 'fit' else 'trained'} learngenes, depth {depth}, width 64")
        ax.set_xlabel("fine-tuning steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best", framealpha=0.85)
    axes[0].set_ylabel("target validation accuracy (mean over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_width(settings: Settings, cells: Cells, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.4))
    depth = settings.width_depth
    for init in INITS:
        points = [(w, *stats([r["accuracy"] for r in cells[(init, depth, w)]]))
                  for w in settings.widths if (init, depth, w) in cells]
        if len(points) < 2:
            continue  # a fixed-width method has one point: it is in the depth plot
        x, mean, sd = zip(*points)
        x = [w + _jitter(init, 0.6) for w in x]
        style = _style(init)
        if init.endswith("fit"):
            style.update(linestyle="--", marker="^")
        ax.errorbar(x, mean, yerr=sd, capsize=3, label=init, **style)
    ax.set_xlabel(f"descendant width (depth {depth})")
    ax.set_xticks(settings.widths)
    ax.set_ylabel(f"target accuracy after {settings.finetune_steps} steps")
    ax.set_title("Width, where the method allows it (mean ± sd)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.85)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(settings: Settings, data: Collected, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    cells = by_cell(data.results)
    plot_depth(settings, cells, out / "quality_depth.png")
    plot_steps(settings, cells, out / "quality_steps.png")
    plot_width(settings, cells, out / "quality_width.png")
    (out / ("quality_digits.md" if settings is FULL else "quality.md")).write_text(markdown(settings, data))


# ----------------------------------------------------------------------------------------------------------------
# The command (``bench/quality_report.py --digits | --quick``).


def main(quick: bool, jobs: int, out: Path | None, raw: Path | None, render: Path | None) -> None:
    if render is not None:
        data = Collected(**json.loads(render.read_text()))
        settings = QUICK if data.run["settings"] == "quick" else FULL
    else:
        settings = QUICK if quick else FULL
        load_start, started = os.getloadavg()[0], time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="quality-work-") as work:
            data = run_all(settings, max(1, jobs), Path(work))
        import torch

        data.run.update(wall_s=time.perf_counter() - started, cpus=os.cpu_count(), cpu_model=cpu_model(),
                        torch=torch.__version__, date=datetime.now(timezone.utc).strftime("%Y-%m-%d"),
                        load_start=load_start, load_end=os.getloadavg()[0])
        if raw is not None:
            raw.write_text(json.dumps(dataclasses.asdict(data), indent=1))
    out = out or (Path(tempfile.mkdtemp(prefix="quality-quick-")) if settings is QUICK else ROOT / "docs")
    write_report(settings, data, out)
    print(f"wrote {out / 'quality.md'} and 3 plots ({data.run['wall_s'] / 60:.1f} min)", flush=True)
