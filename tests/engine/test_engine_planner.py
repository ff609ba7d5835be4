"""The planner picks the largest descendant within budget, and says what the smallest would cost when none fits."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.costs import gflops, param_count
from engine.methods import get_method
from engine.methods.base import Learngene
from engine.planner import Budget, BudgetError, Candidate, pareto_front, plan_budget
from engine.spec import SpecLimits


@pytest.mark.parametrize("name", ["tleg", "wave", "pool", "weight-selection", "front"])
def test_picks_the_largest_candidate_within_budget(name: str, learngenes: dict[str, Learngene]) -> None:
    method = get_method(name)
    specs = list(method.candidate_specs(learngenes[name]))
    sizes = sorted(param_count(s) for s in specs)
    budget = Budget(max_params=sizes[len(sizes) // 2])
    result = plan_budget(method, learngenes[name], budget)
    assert result.chosen.params <= budget.max_params
    assert result.chosen.params == max(p for p in sizes if p <= budget.max_params)
    assert result.chosen.params == param_count(result.spec) and result.chosen.gflops == gflops(result.spec)
    assert result.front[0] == result.chosen
    assert all(c.params <= budget.max_params for c in result.within)
    assert {c.spec for c in result.front} <= {c.spec for c in result.within}
    assert len(result.within) == sum(p <= budget.max_params for p in sizes)
    json.dumps(result.details)  # recorded on the descendant row as JSON


def test_pareto_front_drops_dominated_candidates(learngenes: dict[str, Learngene]) -> None:
    spec = get_method("tleg").candidate_specs(learngenes["tleg"])[0]
    a, b, c, d = (Candidate(spec, p, g) for p, g in [(10, 5.0), (8, 6.0), (8, 4.0), (5, 1.0)])
    assert pareto_front([a, b, c, d]) == [a, c, d]  # b: fewer parameters than a for more GFLOPs


def test_nothing_fits_reports_the_smallest_costs(learngenes: dict[str, Learngene]) -> None:
    method = get_method("weight-selection")
    specs = method.candidate_specs(learngenes["weight-selection"])
    with pytest.raises(BudgetError) as caught:
        plan_budget(method, learngenes["weight-selection"], Budget(max_params=1000, max_gflops=1.0))
    assert caught.value.min_params == min(param_count(s) for s in specs)
    assert caught.value.min_gflops == min(gflops(s) for s in specs)
    assert f"{caught.value.min_params:,}" in str(caught.value)


def test_classes_and_service_limits_shape_the_candidates(learngenes: dict[str, Learngene]) -> None:
    method = get_method("tleg")
    result = plan_budget(method, learngenes["tleg"], Budget(max_params=10**9), num_classes=3,
                         limits=SpecLimits(max_depth=5))
    assert result.spec.depth == 5 and result.spec.num_classes == 3


def test_latency_is_measured_cached_and_bounds_the_choice(learngenes: dict[str, Learngene], tmp_path: Path) -> None:
    method = get_method("tleg")
    cache = tmp_path / "latency.json"
    limits = SpecLimits(max_depth=3)  # three candidates keep the timing short
    roomy = plan_budget(method, learngenes["tleg"], Budget(max_latency_ms=60_000.0), limits=limits,
                        latency_cache=cache)
    assert roomy.chosen.latency_ms is not None and 0 < roomy.chosen.latency_ms < 60_000
    assert roomy.spec.depth == 3
    stored = json.loads(cache.read_text())
    # Bisection: the cheapest, then the middle of the rest (the deepest), each once; both fit.
    assert len(stored) == len(roomy.front) == roomy.details["timed"] == 2
    with pytest.raises(BudgetError) as caught:
        plan_budget(method, learngenes["tleg"], Budget(max_latency_ms=1e-6), limits=limits, latency_cache=cache)
    shallowest = next(v for k, v in stored.items() if '"depth": 1,' in k)
    assert caught.value.min_latency_ms == shallowest  # the cheapest candidate's, from the cache
    assert caught.value.device == "cpu"


def test_a_latency_budget_of_any_size_times_a_bounded_number_of_models(learngenes: dict[str, Learngene],
                                                                       tmp_path: Path) -> None:
    """A FRONT learngene offers thousands of sizes; ``max_latency_ms: 1e300`` timed every one of its front (1,338 on
    the seeded one, over 15 CPU-minutes). Bisection times about log2 of the front's size."""
    import math

    from engine.planner import MAX_TIMINGS

    method, learngene = get_method("front"), learngenes["front"]
    limits = SpecLimits(max_params=3_000_000)  # small models: the timings themselves stay short
    cache = tmp_path / "latency.json"
    result = plan_budget(method, learngene, Budget(max_latency_ms=1e300), limits=limits, latency_cache=cache,
                         time_limit_s=600)  # the count is bounded here, not the time (a busy machine is slow)
    front = pareto_front(result.within)
    assert len(front) > 100
    assert result.details["timed"] == len(json.loads(cache.read_text())) <= math.ceil(math.log2(len(front))) + 1
    assert result.details["timed"] <= MAX_TIMINGS
    assert result.chosen == result.front[0] and result.chosen.latency_ms is not None
    assert result.chosen.params == front[0].params  # everything fits 1e300 ms: the largest of the front


def test_a_latency_search_stops_at_its_time_limit(learngenes: dict[str, Learngene], tmp_path: Path) -> None:
    method, learngene = get_method("front"), learngenes["front"]
    result = plan_budget(method, learngene, Budget(max_latency_ms=1e300), limits=SpecLimits(max_params=3_000_000),
                         latency_cache=tmp_path / "latency.json", time_limit_s=0)
    assert result.details["timed"] == 1  # the cheapest only: an answer, within its budget
    assert result.details["latency_search_stopped"] == "the time limit of the search was reached"
    assert result.chosen.params == min(c.params for c in result.within)
