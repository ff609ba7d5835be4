"""From a request's spec or budget to one validated, costed spec: the service's only door into the engine's
sizing code (imported lazily, so the API process loads torch only when it first sizes a request)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.descendants.schemas import BudgetIn, SpecIn
from service.errors import ErrorDetail, InvalidRequest
from service.settings import Settings


@dataclass(frozen=True)
class Plan:
    spec: dict[str, Any]
    param_count: int
    gflops: float
    details: dict[str, Any]


def limits_of(settings: Settings) -> Any:
    from engine.spec import SpecLimits

    return SpecLimits(max_depth=settings.max_depth, max_embed_dim=settings.max_embed_dim,
                      max_params=settings.max_params)


def plan(settings: Settings, method_name: str, meta: dict[str, Any], spec_in: SpecIn | None,
         budget: BudgetIn | None) -> Plan:
    from engine.costs import gflops, param_count, validate_spec
    from engine.methods import get_method
    from engine.methods.base import Learngene
    from engine.spec import SpecError

    method = get_method(method_name)
    # Sizing reads only the learngene's metadata; its tensors stay in storage until a worker expands it.
    learngene = Learngene(method=method_name, tensors={}, meta=meta)
    limits = limits_of(settings)
    details: dict[str, Any] = {}
    if budget is not None:
        spec, details = _plan_budget(settings, method, learngene, budget, limits)
        prefix = "budget"
    else:
        partial = spec_in.model_dump(exclude_none=True) if spec_in is not None else {}
        prefix = "spec"
        try:
            spec = method.resolve_spec(learngene, partial)
        except SpecError as exc:
            raise _invalid(exc, prefix) from exc
    try:
        validate_spec(spec, limits)
    except SpecError as exc:
        raise _invalid(exc, prefix) from exc
    return Plan(spec=spec.to_dict(), param_count=param_count(spec), gflops=round(gflops(spec), 6), details=details)


def _invalid(exc: Exception, prefix: str) -> InvalidRequest:
    field = getattr(exc, "field", None)
    name = f"{prefix}.{field}" if field and field != "spec" else prefix
    return InvalidRequest(str(exc), details=[ErrorDetail(field=name, message=str(exc))])


def _plan_budget(settings: Settings, method: Any, learngene: Any, budget: BudgetIn, limits: Any) -> tuple[Any, dict[str, Any]]:
    from engine.planner import Budget, BudgetError, plan_budget

    try:
        result = plan_budget(
            method, learngene,
            Budget(max_params=budget.max_params, max_gflops=budget.max_gflops,
                   max_latency_ms=budget.max_latency_ms, device=budget.device),
            num_classes=budget.num_classes, limits=limits,
            latency_cache=settings.data_dir / "latency-cache.json",
        )
    except BudgetError as exc:
        raise InvalidRequest(str(exc), details=[ErrorDetail(field="budget", message=str(exc))]) from exc
    return result.spec, result.details
