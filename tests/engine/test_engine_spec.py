"""Spec validation names the field at fault; merging a partial request keeps what the method fixes."""
from __future__ import annotations

from typing import Any

import pytest

from engine.costs import validate_spec
from engine.spec import FrontSpec, SpecError, SpecLimits, ViTSpec, merge_request

BASE = ViTSpec(depth=12, embed_dim=768, num_heads=12)


@pytest.mark.parametrize("changes, field", [
    ({"num_heads": 7}, "num_heads"),  # 7 does not divide 768
    ({"embed_dim": 64, "num_heads": 16}, "num_heads"),  # head dim 4, below the minimum
    ({"img_size": 225}, "patch_size"),
    ({"global_pool": "max"}, "global_pool"),
    ({"class_token": False}, "class_token"),  # token pooling needs it
    ({"depth": 0}, "depth"),
    ({"depth": True}, "depth"),  # a JSON true is no depth
    ({"embed_dim": 768.0}, "embed_dim"),
    ({"num_classes": -1}, "num_classes"),
    ({"mlp_ratio": 0.0}, "mlp_ratio"),
    ({"depth": 49}, "depth"),  # above the default limit
    ({"embed_dim": 8192, "num_heads": 64}, "embed_dim"),
    ({"depth": 48, "embed_dim": 4096, "num_heads": 32}, "spec"),  # every field in range, too many parameters
    ({"front": FrontSpec(depth=12, embed_dim=384, num_heads=6)}, "front.depth"),
    ({"front": FrontSpec(depth=6, embed_dim=384, num_heads=5)}, "front.num_heads"),
])
def test_invalid_specs_name_their_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as caught:
        validate_spec(BASE.replace(**changes))
    assert caught.value.field == field


def test_valid_specs_pass_and_limits_come_from_the_caller() -> None:
    validate_spec(BASE)
    validate_spec(BASE.replace(class_token=False, global_pool="avg", num_classes=0))
    validate_spec(BASE.replace(depth=8, front=FrontSpec(depth=4, embed_dim=384, num_heads=6)))
    with pytest.raises(SpecError) as caught:
        validate_spec(BASE, SpecLimits(max_params=1_000_000))
    assert caught.value.field == "spec"


def test_dict_round_trip_keeps_the_front() -> None:
    spec = BASE.replace(depth=8, front=FrontSpec(depth=4, embed_dim=384, num_heads=6))
    assert ViTSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(SpecError) as caught:
        ViTSpec.from_dict({**BASE.to_dict(), "width": 3})
    assert caught.value.field == "width"


def test_merge_refuses_fixed_fields_and_keeps_the_head_dimension() -> None:
    assert merge_request(BASE, {"embed_dim": 384}, {"embed_dim"}, "m").num_heads == 6
    assert merge_request(BASE, {"depth": 12}, {"num_classes"}, "m") == BASE  # naming a fixed field unchanged is fine
    with pytest.raises(SpecError) as caught:
        merge_request(BASE, {"depth": 6}, {"num_classes"}, "m")
    assert caught.value.field == "depth"
    with pytest.raises(SpecError) as caught:
        merge_request(BASE, {"embed_dim": 100}, {"embed_dim"}, "m")
    assert caught.value.field == "num_heads"
