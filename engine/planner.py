"""Budget planner: from a learngene, a method and a budget to the spec to expand.

1. The method's candidate specs (with the requested classes, within the service's limits) are costed by formula
   (:mod:`engine.costs`) and those within ``max_params`` and ``max_gflops`` kept.
2. Their Pareto front on (parameters up, GFLOPs down) is taken: a candidate is dropped when another has at least
   as many parameters for no more GFLOPs.
3. With ``max_latency_ms``, front members are timed on the named device (batch 1, median of ``RUNS`` forward
   passes after ``WARMUP``). Latency is assumed to grow with GFLOPs along the front, so the largest member within
   the budget is found by bisection, starting from the cheapest: at most ``MAX_TIMINGS`` models are timed (a
   front of 2,000 needs 12), none above ``MAX_TIMED_PARAMS`` or ``MAX_TIMED_GFLOPS`` (timing one allocates its
   weights and runs it, in the process that asked), none once ``time_limit_s`` have passed since the search
   began (a model being timed then stops after the runs done so far, one at least). A model not timed counts as
   over the budget; ``details`` says why the search stopped short. A budget of any size is so answered within
   seconds.
4. Rule: the largest parameter count that fits; ties go to fewer GFLOPs.

Nothing fitting raises :class:`BudgetError` carrying the smallest parameters, GFLOPs (and latency, when asked)
available, so the API can say what would fit. At most ``MAX_CANDIDATES`` specs of a method are considered.

Latencies are cached in memory for the process and, when given a path, in a JSON file shared between processes;
the key holds the device (CPU model and thread count, or GPU name), the architecture and its model_args.
"""
from __future__ import annotations

import itertools
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.costs import gflops, param_count, validate_spec
from engine.methods.base import Learngene, Method
from engine.spec import SpecError, SpecLimits, ViTSpec
from engine.vit import build_model

WARMUP = 2
RUNS = 5
RULE = "largest parameter count within the budget; ties: fewer GFLOPs"
#: Specs of a method considered at most (FRONT offers about 6,000 at its default limits; costing is cheap).
MAX_CANDIDATES = 20_000
#: Models timed at most for one latency budget: a bisection of a front of 4,096.
MAX_TIMINGS = 12
#: The largest model timed: 400 MB of float32 weights, allocated to time it, and a forward pass of a second or
#: two on a small CPU (ViT-B/16 at 224 px: 86M parameters, 17.6 GFLOPs).
MAX_TIMED_PARAMS = 100_000_000
MAX_TIMED_GFLOPS = 50.0
#: Seconds a latency search may take, by default.
TIME_LIMIT_S = 10.0


@dataclass(frozen=True)
class Budget:
    max_params: int | None = None
    max_gflops: float | None = None
    max_latency_ms: float | None = None
    device: str = "cpu"  # where latency is measured: "cpu", "cuda" or "cuda:N"


@dataclass(frozen=True)
class Candidate:
    spec: ViTSpec
    params: int
    gflops: float
    latency_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "params": self.params, "gflops": self.gflops,
                "latency_ms": self.latency_ms}


@dataclass(frozen=True)
class PlanResult:
    chosen: Candidate
    front: list[Candidate]  # the Pareto front within the budget, most parameters first
    within: list[Candidate]  # every candidate within the parameter and GFLOPs budgets
    details: dict[str, Any] = field(default_factory=dict)  # JSON-able summary for the descendant's record

    @property
    def spec(self) -> ViTSpec:
        return self.chosen.spec


class BudgetError(ValueError):
    """No candidate fits; the smallest cost on each axis is attached (latency only when a latency budget was
    given)."""

    def __init__(self, message: str, min_params: int | None, min_gflops: float | None,
                 min_latency_ms: float | None = None, device: str | None = None) -> None:
        super().__init__(message)
        self.min_params = min_params
        self.min_gflops = min_gflops
        self.min_latency_ms = min_latency_ms
        self.device = device


def _device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.machine()}:{platform.processor() or 'unknown'}:{torch.get_num_threads()}threads"


def _resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} is not available here")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"latency can be measured on 'cpu' or 'cuda', not {name!r}")
    return device


def measure_latency_ms(spec: ViTSpec, device: str = "cpu", deadline: float | None = None) -> float:
    """Median wall time of one batch-1 forward pass of ``spec``'s architecture on ``device``, in ms; past
    ``deadline`` (``time.monotonic()``), of the runs done so far (one at least, after one warm-up)."""
    target = _resolve_device(device)
    # Weights do not change the time: build without timm's (slow, CPU) init, then fill in one pass.
    with torch.device("meta"):
        model = build_model(spec)
    model.to_empty(device=target)
    generator = torch.Generator(device=target).manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.02, generator=generator)
    model.eval()
    image = torch.randn(1, spec.in_chans, spec.img_size, spec.img_size, generator=generator, device=target)
    times: list[float] = []
    warmups = WARMUP
    with torch.inference_mode():
        while len(times) < RUNS:
            if target.type == "cuda":
                torch.cuda.synchronize(target)
            start = time.perf_counter()
            model(image)
            if target.type == "cuda":
                torch.cuda.synchronize(target)
            late = deadline is not None and time.monotonic() >= deadline
            if warmups > 0 and not late:
                warmups -= 1
            elif warmups > 0:
                warmups = 0  # one warm-up was run: time the next pass, then stop
            else:
                times.append(time.perf_counter() - start)
                if late:
                    break
    return statistics.median(times) * 1000


_latencies: dict[str, float] = {}  # this process's measurements (and those read from cache files)


def _read_cache(path: Path) -> dict[str, float]:
    try:
        return {k: float(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}  # missing or damaged: measuring again is the cure


def latency_ms(spec: ViTSpec, device: str = "cpu", cache_file: Path | None = None,
               deadline: float | None = None) -> float:
    """:func:`measure_latency_ms`, cached in memory and (when given) in ``cache_file``."""
    key = "|".join([_device_label(_resolve_device(device)), spec.architecture,
                    json.dumps(spec.timm_model_args(), sort_keys=True)])
    if key not in _latencies and cache_file is not None:
        _latencies.update(_read_cache(cache_file))
    if key not in _latencies:
        _latencies[key] = measure_latency_ms(spec, device, deadline)
        if cache_file is not None:
            merged = {**_read_cache(cache_file), key: _latencies[key]}
            partial = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.partial")
            partial.write_text(json.dumps(merged, sort_keys=True, indent=0))
            os.replace(partial, cache_file)
    return _latencies[key]


def _candidates(method: Method, learngene: Learngene, num_classes: int | None,
                limits: SpecLimits | None) -> list[Candidate]:
    candidates = []
    for spec in itertools.islice(method.candidate_specs(learngene), MAX_CANDIDATES):
        request = spec.to_dict() if num_classes is None else {**spec.to_dict(), "num_classes": num_classes}
        try:
            resolved = method.resolve_spec(learngene, request)
            if limits is not None:
                validate_spec(resolved, limits)
        except SpecError:
            continue  # outside the service's limits, or not makeable with these classes
        candidates.append(Candidate(resolved, param_count(resolved), gflops(resolved)))
    return candidates


def pareto_front(candidates: list[Candidate]) -> list[Candidate]:
    """Candidates not beaten by another with at least as many parameters for no more GFLOPs, most parameters
    first (one candidate per cost point)."""
    front: list[Candidate] = []
    for candidate in sorted(candidates, key=lambda c: (-c.params, c.gflops)):
        if not front or candidate.gflops < front[-1].gflops:
            front.append(candidate)
    return front


class _LatencySearch:
    """The bisection of step 3: which front members were timed, and why it stopped short, if it did."""

    def __init__(self, budget: Budget, cache_file: Path | None, time_limit_s: float) -> None:
        self.budget = budget
        self.cache_file = cache_file
        self.deadline = time.monotonic() + time_limit_s
        self.timings = 0
        self.stopped: str | None = None

    def fits(self, candidate: Candidate) -> Candidate | None:
        """The candidate with its latency when it is timed within the budget; None when it is over, or not timed."""
        if candidate.params > MAX_TIMED_PARAMS or candidate.gflops > MAX_TIMED_GFLOPS:
            self.stopped = f"models above {MAX_TIMED_PARAMS:,} parameters or {MAX_TIMED_GFLOPS:g} GFLOPs are not timed"
            return None
        if self.timings >= MAX_TIMINGS:
            self.stopped = f"at most {MAX_TIMINGS} models are timed"
            return None
        if self.timings and time.monotonic() >= self.deadline:  # the cheapest is always timed: it may be the answer
            self.stopped = "the time limit of the search was reached"
            return None
        measured = latency_ms(candidate.spec, self.budget.device, self.cache_file, deadline=self.deadline)
        self.timings += 1
        if self.budget.max_latency_ms is not None and measured > self.budget.max_latency_ms:
            return None
        return Candidate(candidate.spec, candidate.params, candidate.gflops, measured)

    def largest_within(self, front: list[Candidate]) -> list[Candidate]:
        """The front members timed within the budget, most parameters first, its largest fitting one first."""
        cheapest_first = front[::-1]
        low, high = 0, len(cheapest_first) - 1
        fitting: list[Candidate] = []
        while low <= high:
            # The cheapest first: when it is over the budget, so is everything else.
            i = low if not fitting else (low + high + 1) // 2
            timed = self.fits(cheapest_first[i])
            if timed is None:
                high = i - 1
                if not fitting:
                    break
            else:
                fitting.append(timed)
                low = i + 1
        return sorted(fitting, key=lambda c: -c.params)


def plan_budget(method: Method, learngene: Learngene, budget: Budget, *, num_classes: int | None = None,
                limits: SpecLimits | None = None, latency_cache: Path | None = None,
                time_limit_s: float = TIME_LIMIT_S) -> PlanResult:
    """The spec to expand for ``budget`` (see the module docstring for the rule)."""
    candidates = _candidates(method, learngene, num_classes, limits)
    if not candidates:
        raise BudgetError(f"the {method.name} learngene offers no spec within the service limits", None, None)
    within = [c for c in candidates
              if (budget.max_params is None or c.params <= budget.max_params)
              and (budget.max_gflops is None or c.gflops <= budget.max_gflops)]
    front = pareto_front(within)
    search = None
    if budget.max_latency_ms is not None:
        search = _LatencySearch(budget, latency_cache, time_limit_s)
        front = search.largest_within(front)
    if not front:
        raise _nothing_fits(method, candidates, budget, latency_cache)
    chosen = front[0]
    details = {
        "rule": RULE,
        "budget": {"max_params": budget.max_params, "max_gflops": budget.max_gflops,
                   "max_latency_ms": budget.max_latency_ms, "device": budget.device},
        "candidates": len(candidates),
        "within_budget": len(within),
        "chosen": chosen.to_dict(),
        "front": [c.to_dict() for c in front],
    }
    if search is not None:
        details["timed"] = search.timings
        if search.stopped:
            details["latency_search_stopped"] = search.stopped
    return PlanResult(chosen=chosen, front=front, within=within, details=details)


def _nothing_fits(method: Method, candidates: list[Candidate], budget: Budget,
                  latency_cache: Path | None) -> BudgetError:
    min_params = min(c.params for c in candidates)
    cheapest = min(candidates, key=lambda c: (c.gflops, c.params))
    message = (f"no {method.name} descendant fits the budget; the smallest available has {min_params:,} parameters "
               f"and {cheapest.gflops:.4g} GFLOPs")
    min_latency = None
    if budget.max_latency_ms is not None and cheapest.params <= MAX_TIMED_PARAMS and \
            cheapest.gflops <= MAX_TIMED_GFLOPS:  # timed already, or quick to
        min_latency = latency_ms(cheapest.spec, budget.device, latency_cache)
        message += f", and runs in {min_latency:.3g} ms on {budget.device}"
    return BudgetError(message, min_params, cheapest.gflops, min_latency, budget.device)
