"""Initialization quality: does a descendant inherited from a learngene learn a new task better than timm's
random init, and than weight selection from the same ancestry? The command for every quality report; each
report is a module of its own, and they fine-tune through one shared module (``bench/finetune.py``).

- v2, the default, on real data (Fashion-MNIST and MNIST, learning rate chosen on validation, test accuracy
  reported): ``bench/quality_real.py``, into ``docs/quality.md``.
- ``--digits``: the first report, on scikit-learn's digits (``bench/quality_digits.py``), into
  ``docs/quality_digits.md``; ``--quick`` is its smoke run (the tests').

    .venv/bin/python bench/quality_report.py --budget small --deadline 14:20   # v2, reduced grid, stop at 14:20
    .venv/bin/python bench/quality_report.py --budget full                     # v2, the whole grid (hours)
    .venv/bin/python bench/quality_report.py --digits     # the digits report into docs/ (~10-20 min on 2 cores)
    .venv/bin/python bench/quality_report.py --quick      # a digits smoke run (< 2 min) into a temporary folder
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import quality_digits, quality_real  # noqa: E402


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="digits smoke run: tiny budgets, 2 seeds, 2 depths")
    parser.add_argument("--digits", action="store_true", help="the digits report (docs/quality_digits.md)")
    parser.add_argument("--budget", choices=sorted(quality_real.BUDGETS), default="full",
                        help="v2 on real data: the reduced or the whole grid")
    parser.add_argument("--deadline", default=None, metavar="HH:MM",
                        help="v2: stop scheduling at this local time and report what was measured")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: docs/, or a temporary folder with --quick)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--raw", type=Path, default=None, help="also write every measurement to this JSON file")
    parser.add_argument("--render", type=Path, default=None, metavar="RAW_JSON",
                        help="measure nothing: write the report from a --raw file of an earlier run")
    args = parser.parse_args(argv)
    if args.quick or args.digits:
        quality_digits.main(args.quick, args.jobs, args.out, args.raw, args.render)
    else:
        quality_real.main(args.budget, args.deadline, args.jobs, args.out, args.raw, args.render)


if __name__ == "__main__":
    main()
