"""Condensing parameters: defaults, and refusals that name the parameter (the API's 422)."""
from __future__ import annotations

from typing import Any

import pytest

from engine.methods import METHOD_NAMES, REGISTRY, validate_params
from engine.methods.params import ParamError

DEFAULT_PARAMS = {name: entry.default_params() for name, entry in REGISTRY.items()}


def test_every_method_has_defaults_that_validate() -> None:
    for method in METHOD_NAMES:
        assert validate_params(method, {}) == DEFAULT_PARAMS[method]
        for mode in set(REGISTRY[method].modes) - {"refine"}:  # refine has no default sizes
            assert validate_params(method, {}, mode).items() <= DEFAULT_PARAMS[method].items()
    assert DEFAULT_PARAMS["tleg"]["aux_depth"] == 12 and DEFAULT_PARAMS["tleg"]["temperature"] == 1.0
    assert DEFAULT_PARAMS["tleg"]["kl_weight"] == 1.0 and DEFAULT_PARAMS["tleg"]["ce_weight"] == 0.0
    assert DEFAULT_PARAMS["wave"]["ce_weight"] > 0  # WAVE distils with KL plus cross-entropy


def test_given_values_override_defaults() -> None:
    params = validate_params("pool", {"steps": 10, "warmup_steps": 2, "lr": 1,
                                      "students": [{"embed_dim": 32, "num_heads": 2, "depth": 3}]})
    assert params["steps"] == 10 and params["lr"] == 1.0 and isinstance(params["lr"], float)
    assert params["students"] == [{"embed_dim": 32, "num_heads": 2, "depth": 3}]


@pytest.mark.parametrize("method, params, name", [
    ("tleg", {"aux_depht": 6}, "aux_depht"),
    ("tleg", {"aux_depth": 0}, "aux_depth"),
    ("tleg", {"steps": True}, "steps"),
    ("tleg", {"steps": 2.5}, "steps"),
    ("tleg", {"lr": 0}, "lr"),
    ("tleg", {"lr": float("nan")}, "lr"),
    ("tleg", {"temperature": -1}, "temperature"),
    ("tleg", {"init": "zeros"}, "init"),
    ("tleg", {"steps": 10, "warmup_steps": 10}, "warmup_steps"),
    ("tleg", {"warmup_steps": -1}, "warmup_steps"),
    ("tleg", {"lr": 1e-4, "min_lr": 1e-3}, "min_lr"),
    ("wave", {"tile": [8]}, "tile"),
    ("wave", {"counts": {"qkv": 4, "mlp": 4}}, "counts"),
    ("pool", {"students": [{"embed_dim": 32, "depth": 3}]}, "students"),
    ("pool", {"students": [{"embed_dim": 32, "num_heads": 2, "depth": 3, "width": 1}]}, "students"),
    ("layers", {"position": "middle"}, "position"),
    ("layers", {"sample_size": 1}, "sample_size"),
    ("random", {"seed": 1}, "seed"),
    ("pool", {"augment": "heavy"}, "augment"),
    ("tleg", {"augment": True}, "augment"),
])
def test_bad_values_are_refused_naming_the_parameter(method: str, params: dict[str, Any], name: str) -> None:
    with pytest.raises(ParamError) as raised:
        validate_params(method, params)
    assert raised.value.field == f"params.{name}"
    assert isinstance(raised.value, ValueError)


def test_a_mode_restricts_the_knobs() -> None:
    assert validate_params("tleg", {}, mode="fit") == {}
    assert set(validate_params("layers", {}, mode="fit")) == {"count", "position", "indices"}
    with pytest.raises(ParamError, match="params.steps"):
        validate_params("wave", {"steps": 10}, mode="fit")
    with pytest.raises(ParamError, match="params.indices"):
        validate_params("layers", {"indices": [0]}, mode="train")
    with pytest.raises(ParamError, match="method"):
        validate_params("nope", {})
