"""A supplementary pass for report v2: condense size-knob variants that a run did not have (or measure a
learngene at more sizes) with the same code, settings and seeds, and merge the results into its raw JSON.

    .venv/bin/python bench/quality_supplement.py docs/quality_real_raw.json \
        --variant "wave train (tile 16, 8 templates)" --sizes 3x64 6x64 12x64 3x32 3x96
    .venv/bin/python bench/quality_report.py --render docs/quality_real_raw.json

Variants are named as in ``bench.quality_real.VARIANTS``; sizes are DEPTHxWIDTH (default: the main size);
``--shots`` (default 10) and ``--steps`` (default the budget's short steps) choose the target settings; the
budget's learning-rate grid and seeds; fine-tuned by ``quality_real.task_finetune``.
Runs the variants in ``--jobs`` processes; the raw JSON records every pass under ``supplementary``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import quality_real as q  # noqa: E402
from bench.finetune import single_threaded  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("raw", type=Path, help="the report's raw JSON, updated in place")
    parser.add_argument("--variant", action="append", required=True, choices=sorted(q.VARIANTS))
    parser.add_argument("--sizes", nargs="+", default=None, metavar="DEPTHxWIDTH")
    parser.add_argument("--shots", nargs="+", default=["10"], help="per class; 'all' for the whole target set")
    parser.add_argument("--steps", nargs="+", type=int, default=None, help="fine-tuning budgets (default: short)")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    data = json.loads(args.raw.read_text())
    b = q.BUDGETS[data["budget"]]
    sizes = [tuple(map(int, s.split("x"))) for s in args.sizes] if args.sizes else [(b.width_depth, q.ANCESTRY_WIDTH)]
    settings = [(None if shots == "all" else int(shots), steps) for shots in args.shots
                for steps in args.steps or [b.short_steps]]

    from engine.artifacts import load_learngene
    from service.seed import SEED_DATA, seed_manifest

    ancestry = str(SEED_DATA / seed_manifest()["fashion-vit"]["file"])
    started = time.time()
    pool = ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=get_context("spawn"),
                               initializer=single_threaded)
    with tempfile.TemporaryDirectory(prefix="quality-supplement-") as work, pool:
        runs = []
        for init in args.variant:
            method, mode, params = q.VARIANTS[init]
            params = {**q.condense_params(b, method, mode), **params}
            out = str(Path(work) / f"{init.replace(' ', '-')}.safetensors")
            result = q.task_condense(init, method, mode, ancestry, 5, q.SOURCES["fashion"], params, out)
            data["learngenes"][f"fashion/{init}"] = {k: v for k, v in result.items() if k != "init"}
            print(f"condensed {init} ({result['cpu_s']:.0f} CPU s)", flush=True)
            learngene = load_learngene(Path(out))
            for depth, width in sizes:
                made = [run for shots, steps in settings
                        for run in q.runs_for(b, "fashion", init, method, learngene, out, [(depth, width)], shots, steps)]
                if not made:
                    print(f"{init} does not make depth {depth}, width {width}", flush=True)
                runs += made
        results = list(pool.map(q.task_finetune, runs))
    data["results"] += results
    data.setdefault("supplementary", []).append(
        {"variants": args.variant, "sizes": [list(s) for s in sizes], "settings": settings, "runs": len(results),
         "minutes": round((time.time() - started) / 60, 1)})
    args.raw.write_text(json.dumps(data))
    print(f"{len(results)} fine-tuning runs merged into {args.raw}", flush=True)


if __name__ == "__main__":
    main()
