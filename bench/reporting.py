"""What the quality reports write the same way: which learngenes they measure (read from the method registry),
mean ± sd cells, Markdown tables, mean validation curves, and one colour per method."""
from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

BASELINES = ("random", "weight-selection")
#: The methods' colours, given out in the registry's order; the baselines are grey and black.
PALETTE = ("tab:blue", "tab:green", "tab:red", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
           "tab:cyan")
BASELINE_COLORS = {"random": "0.55", "weight-selection": "black"}


def method_inits(modes: Sequence[str]) -> list[tuple[str, str, str]]:
    """(initialization, method, mode) of every learngene a report condenses: each condensing method in each of
    ``modes`` it offers, in the registry's order. A refined learngene is called "<method> refined"."""
    from engine.methods import CONDENSING_NAMES, REFINE, get_entry

    return [(f"{method} {'refined' if mode == REFINE else mode}", method, mode)
            for method in CONDENSING_NAMES for mode in modes if get_entry(method).offers(mode)]


def method_of(init: str) -> str:
    return init.split()[0]


def color(init: str) -> str:
    """The colour of an initialization's method (of the baseline itself for random and weight selection)."""
    from engine.methods import CONDENSING_NAMES

    if init in BASELINE_COLORS:
        return BASELINE_COLORS[init]
    method = method_of(init)
    return PALETTE[CONDENSING_NAMES.index(method) % len(PALETTE)] if method in CONDENSING_NAMES else "tab:gray"


def stats(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation; 0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def mean_sd(values: Sequence[float]) -> str:
    mean, sd = stats(values)
    return f"{mean:.3f} ± {sd:.3f}"


def mean_curve(runs: Sequence[dict[str, Any]]) -> list[tuple[int, float]]:
    """The runs' validation curves (same steps in each), averaged step by step."""
    steps = [step for step, _ in runs[0]["curve"]]
    return [(step, statistics.fmean(r["curve"][i][1] for r in runs)) for i, step in enumerate(steps)]


def first_reaching(curve: Sequence[tuple[int, float]], target: float) -> tuple[int, float] | None:
    """The first (step, accuracy) of ``curve`` at or above ``target``; None when it never gets there."""
    return next(((step, acc) for step, acc in curve if acc >= target), None)


def table_head(first: str, columns: Sequence[str]) -> list[str]:
    """A Markdown table's header and alignment rows: ``first`` left-aligned, the ``columns`` right-aligned."""
    return [row([first, *columns]), "| --- | " + " | ".join("---:" for _ in columns) + " |"]


def row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"
