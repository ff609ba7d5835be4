"""Report v2 chooses each initialization's learning rate on validation and reports test accuracy at it: a rate
that wins on test but not on validation must not be picked, and gains pair seeds."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.quality_real import cells, gain  # noqa: E402


def result(init: str, lr: float, seed: int, val: float, test: float, source: str = "fashion") -> dict:
    return {"source": source, "init": init, "depth": 6, "width": 64, "shots": 10, "steps": 100, "lr": lr,
            "seed": seed, "val_accuracy": val, "test_accuracy": test}


def test_the_rate_is_chosen_on_validation_and_reported_on_test() -> None:
    results = [result("tleg fit", 1e-3, s, val=0.70, test=0.60) for s in (0, 1)]
    results += [result("tleg fit", 3e-3, s, val=0.65, test=0.90) for s in (0, 1)]  # better on test only
    chosen = cells(results)[("fashion", "tleg fit", 6, 64, 10, 100)]
    assert chosen["lr"] == 1e-3 and chosen["lrs_tried"] == [1e-3, 3e-3]
    assert [r["test_accuracy"] for r in chosen["runs"]] == [0.60, 0.60]


def test_a_rate_missing_seeds_is_not_chosen() -> None:
    # A cut-off run may leave one rate with fewer seeds; its mean is not comparable.
    results = [result("wave fit", 1e-3, s, val=0.5, test=0.5) for s in (0, 1, 2)]
    results.append(result("wave fit", 3e-4, 0, val=0.9, test=0.9))
    assert cells(results)[("fashion", "wave fit", 6, 64, 10, 100)]["lr"] == 1e-3


def test_gain_pairs_seeds_against_random_init_of_any_source() -> None:
    results = [result("random", 1e-3, s, val=0.5, test=0.5 + s / 10, source="none") for s in (0, 1)]
    results += [result("tleg fit", 1e-3, s, val=0.6, test=0.7 + s / 10, source="mnist") for s in (0, 1)]
    table = cells(results)
    assert abs(gain(table, ("mnist", "tleg fit", 6, 64, 10, 100), "random") - 0.2) < 1e-9
    assert gain(table, ("mnist", "tleg fit", 6, 64, 10, 100), "weight-selection") is None


def test_a_variant_measured_at_several_sizes_gets_one_row_of_its_own() -> None:
    from bench.quality_real import row_inits

    variant = "wave train (tile 16, 8 templates)"
    results = [result(variant, 1e-3, 0, 0.5, 0.5) | {"depth": d} for d in (3, 6)]
    results.append(result("front fit (ratio 0.5)", 1e-3, 0, 0.5, 0.5) | {"depth": 3})
    rows = row_inits({"results": results})
    assert rows.count(variant) == 1 and "front fit (ratio 0.5)" not in rows  # one size: the bytes table only
