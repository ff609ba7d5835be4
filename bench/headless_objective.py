"""Which objective to distil a headless ancestry with: one trained ancestry used with its head (logit KL) and
without it (feature objectives), TLEG condensing, then the evaluation card (learngene vs random init after a short
fine-tune) of the learngenes.

The ancestry: a digits ViT with a class token and layer scale (16 px, patch 4, width 64, 6 blocks, 4 heads,
``init_values`` 0.1), trained 400 steps. Its headless copy drops ``head.*`` and sets ``num_classes`` 0: the same
features, no class predictions (what a DINOv2 checkpoint looks like). Every condensing run is ``steps`` TLEG
steps at lr 1e-3; the feature variants swap the term of :func:`engine.train.distill.feature_terms` only:

- cosine (what ``objective: features`` ships): 1 - cos on the pooled token + 1 - mean cos on normalized patches;
- smooth-L1 on layer-normalized pooled and patch tokens;
- the pooled term alone, the patch term alone.

The card fine-tunes depth-3 and depth-6 descendants for 100 steps on 10 shots a class, seeds 0-2 (means). The
``val_*`` feature metrics of a variant are computed with that variant's own terms (a smooth-L1 run's "cosines" are
1 - its smooth-L1 terms): compare variants by the card. Run:
``PYTHONPATH=. python bench/headless_objective.py [steps] [out.json]``; results are in docs/methods.md.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

import engine.train.distill as distill
from engine.data import DIGITS_URI
from engine.methods.base import StateDict
from engine.spec import ViTSpec
from engine.train import condense, evaluate_card
from engine.train.ancestry import train_ancestry
from engine.train.loop import TrainConfig

SPEC = ViTSpec(depth=6, embed_dim=64, num_heads=4, mlp_ratio=4.0, num_classes=10, img_size=16, patch_size=4,
               in_chans=1, class_token=True, global_pool="token", init_values=0.1)
Terms = Callable[[distill.PathOutputs, distill.PathOutputs], tuple[torch.Tensor, torch.Tensor]]
COSINE: Terms = distill.feature_terms


def smooth_l1(student: distill.PathOutputs, teacher: distill.PathOutputs) -> tuple[torch.Tensor, torch.Tensor]:
    width = teacher[1].shape[-1]
    pooled = F.smooth_l1_loss(F.layer_norm(student[0].float(), (width,)), F.layer_norm(teacher[0].float(), (width,)))
    patches = F.smooth_l1_loss(F.layer_norm(student[1].float(), (width,)), F.layer_norm(teacher[1].float(), (width,)))
    return pooled, patches


def pooled_only(student: distill.PathOutputs, teacher: distill.PathOutputs) -> tuple[torch.Tensor, torch.Tensor]:
    pooled, patches = COSINE(student, teacher)
    return pooled, patches * 0


def patches_only(student: distill.PathOutputs, teacher: distill.PathOutputs) -> tuple[torch.Tensor, torch.Tensor]:
    pooled, patches = COSINE(student, teacher)
    return pooled * 0, patches


def run(state: StateDict, spec: ViTSpec, params: dict[str, Any], mode: str = "train",
        terms: Terms = COSINE) -> dict[str, Any]:
    distill.feature_terms = terms
    try:
        started = time.perf_counter()
        learngene, metrics, _ = condense("tleg", mode, state, spec, DIGITS_URI if mode == "train" else None, params)
        seconds = time.perf_counter() - started
    finally:
        distill.feature_terms = COSINE
    cards = [evaluate_card(learngene, DIGITS_URI, sizes=[{"depth": 3}, {"depth": 6}], steps=100, shots=10, seed=seed)
             for seed in (0, 1, 2)]
    row: dict[str, Any] = {"seconds": round(seconds, 1)}
    for i, depth in enumerate((3, 6)):
        for init in ("learngene", "random"):
            row[f"depth{depth}_{init}"] = round(sum(c["sizes"][i][f"{init}_accuracy"] for c in cards) / len(cards), 3)
    row.update({k: round(v, 4) for k, v in metrics.items() if k.startswith("val_") and isinstance(v, float)})
    return row


def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 150
    state, spec, trained = train_ancestry(DIGITS_URI, SPEC, TrainConfig(steps=400, batch_size=64, lr=1e-3,
                                                                          min_lr=1e-5, warmup_steps=20))
    print("ancestry val accuracy", round(trained["val_accuracy"], 3), flush=True)
    headless = {k: v for k, v in state.items() if not k.startswith("head.")}
    headless_spec = spec.replace(num_classes=0)
    train = {"steps": steps, "lr": 1e-3, "warmup_steps": 10, "checkpoint_every_s": 0, "aux_depth": 6}
    runs = {
        "fit (data-free)": lambda: run(headless, headless_spec, {}, mode="fit"),
        "logits (with the head)": lambda: run(state, spec, train),
        "features: cosine (shipped)": lambda: run(headless, headless_spec, train),
        "features: smooth-L1": lambda: run(headless, headless_spec, train, terms=smooth_l1),
        "features: pooled token only": lambda: run(headless, headless_spec, train, terms=pooled_only),
        "features: patch tokens only": lambda: run(headless, headless_spec, train, terms=patches_only),
        "both (with the head)": lambda: run(state, spec, {**train, "objective": "both"}),
    }
    results = {}
    for name, measure in runs.items():
        results[name] = measure()
        print(name, json.dumps(results[name]), flush=True)
    if len(sys.argv) > 2:
        with open(sys.argv[2], "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
