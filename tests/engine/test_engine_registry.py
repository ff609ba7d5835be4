"""The registry lists every method behind one protocol; the engine never pulls in the web, database or queue."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.methods import BASELINE_NAMES, CONDENSING_NAMES, METHOD_NAMES, REGISTRY, get_method


def test_every_method_implements_the_protocol() -> None:
    assert set(METHOD_NAMES) >= {"tleg", "layers", "pool", "wave", "weight-selection", "random"}
    for name in METHOD_NAMES:
        method = get_method(name)
        assert method.name == name
        for function in ("fit", "resolve_spec", "candidate_specs", "expand"):
            assert callable(getattr(method, function)), (name, function)
    with pytest.raises(KeyError, match="known"):
        get_method("tleg2")


def test_every_data_driven_mode_names_a_runner_that_exists() -> None:
    for entry in REGISTRY.values():
        for mode in entry.modes:
            if mode != "fit":
                assert callable(entry.runner(mode)), (entry.name, mode)


def test_baselines_are_exactly_the_methods_without_condensing_modes() -> None:
    assert set(BASELINE_NAMES) == {"weight-selection", "random"}
    assert set(CONDENSING_NAMES) == set(METHOD_NAMES) - set(BASELINE_NAMES)
    assert REGISTRY["wave"].param_modes("sizes") == ["refine"]
    assert REGISTRY["tleg"].param_modes("aux_depth") == ["train"]


def test_engine_imports_no_service_code() -> None:
    script = (
        "import sys\n"
        "import engine.artifacts, engine.planner, engine.stitched, engine.costs\n"
        "from engine.methods import METHOD_NAMES, get_method\n"
        "[get_method(n) for n in METHOD_NAMES]\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('fastapi', 'sqlalchemy', 'celery', 'service', 'worker', 'starlette', 'redis', 'psycopg'))\n"
        "assert not bad, bad\n"
        "import engine.spec\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).resolve().parents[2])


def test_specs_and_costs_import_without_torch() -> None:
    script = "import sys, engine.spec, engine.costs, engine.methods\nassert 'torch' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).resolve().parents[2])


def test_a_fresh_head_replaces_only_an_inherited_one(learngenes: dict) -> None:
    """`head: fresh` gives a descendant with the learngene's classes a new head, the rest unchanged."""
    import torch

    entry = REGISTRY["tleg"]
    learngene = learngenes["tleg"]
    spec = entry.load().resolve_spec(learngene, {"depth": 3})
    kept = entry.expand(learngene, spec, seed=5)
    fresh = entry.expand(learngene, spec, seed=5, head="fresh")
    assert kept.details["head"] == "inherited" and fresh.details["head"] == "fresh"
    assert not torch.equal(kept.state_dict["head.weight"], fresh.state_dict["head.weight"])
    assert fresh.state_dict["head.bias"].abs().sum() == 0
    for key in kept.state_dict.keys() - {"head.weight", "head.bias"}:
        assert torch.equal(kept.state_dict[key], fresh.state_dict[key]), key
    assert torch.equal(fresh.state_dict["head.weight"], entry.expand(learngene, spec, 5, head="fresh").state_dict["head.weight"])
