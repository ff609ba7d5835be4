"""Condensing Learngene layers on data (METHODS.md section 2): which ancestry blocks to keep, by a measured
criterion.

Criterion **ablation-KL** (our choice among the measured criteria METHODS.md allows): on a sample of training
images, block i scores the mean KL divergence (temperature 1, nats per image) between the ancestry's class
distribution and that of the ancestry with block i skipped (the residual stream passes it unchanged). A block
whose removal changes the predictions most holds the most of what the ancestry computes. ``selection="window"``
(the default) keeps the contiguous run of ``count`` blocks with the largest total score; ``"score"`` keeps the
``count`` top-scoring blocks wherever they are (in ancestry order); ``"end"`` keeps the blocks at ``position``'s
end, as the paper's baselines do, with the scores still recorded so the choice can be judged. An ancestry without
a head has no class distribution: its blocks score **ablation-cosine**, 1 - cosine between its pooled features with
and without block i.

Why a window by default: the kept blocks are stacked next to each other in the descendant, and each was trained
on what the block before it produced. In the quality report (docs/quality.md) the top-scoring blocks of a digits
ancestry were 0, 1, 2 and 5: stacking 5 right after 2 skips the two blocks it was trained to follow, and that
learngene did worse at every depth than the first four blocks (0.800 against 0.815 mean accuracy), which is
also what the best window over the same recorded scores selects.

Cost: one pass caches every block's input, then each ablation reruns only the blocks after the skipped one, so
scoring costs about depth/2 forward passes of the sample.
"""
from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from engine.data import Dataset, Split
from engine.methods import layers
from engine.methods.base import Learngene, StateDict
from engine.spec import ViTSpec
from engine.train.distill import load_teacher, soft_kl
from engine.train.loop import Cancelled, Hooks, NoHooks, autocast, pick_device

CRITERION = "ablation-kl"
#: The criterion for an ancestry without a head: the same ablation, scored on its pooled features.
HEADLESS_CRITERION = "ablation-cosine"


def criterion_name(ancestry_spec: ViTSpec) -> str:
    return HEADLESS_CRITERION if ancestry_spec.num_classes == 0 else CRITERION


@torch.no_grad()
def block_scores(ancestry: StateDict, ancestry_spec: ViTSpec, images: torch.Tensor | Split, batch_size: int,
                 hooks: Hooks | None = None) -> list[float]:
    """The ablation-KL score of every ancestry block, averaged over ``images`` (a tensor, or a split whose images
    are loaded a batch at a time: the sample is never held whole at the run's image size)."""
    hooks = hooks or NoHooks()
    device = pick_device()
    model = load_teacher(ancestry, ancestry_spec).to(device)
    totals = torch.zeros(ancestry_spec.depth, dtype=torch.float64)
    headless = ancestry_spec.num_classes == 0
    batches = range(0, len(images), batch_size)
    started = time.perf_counter()
    for done, start in enumerate(batches, start=1):
        if hooks.should_stop():
            raise Cancelled(done - 1)
        batch = (images.batch(slice(start, start + batch_size))[0] if isinstance(images, Split)
                 else images[start:start + batch_size]).to(device)
        with autocast(device):
            x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(batch))))
            inputs = []  # inputs[i]: the residual stream entering block i
            for block in model.blocks:
                inputs.append(x)
                x = block(x)
            full = model.forward_head(model.norm(x))
            for i in range(ancestry_spec.depth):
                x = inputs[i]  # block i skipped
                for block in model.blocks[i + 1:]:
                    x = block(x)
                totals[i] += _change(model.forward_head(model.norm(x)), full, headless).item() * len(batch)
        elapsed = time.perf_counter() - started
        hooks.on_progress({"step": done, "total_steps": len(batches), "epoch": 0, "loss": None,
                           "images_per_s": min(start + batch_size, len(images)) / elapsed,
                           "eta_s": elapsed / done * (len(batches) - done)})
    return (totals / len(images)).tolist()


def _change(ablated: torch.Tensor, full: torch.Tensor, headless: bool) -> torch.Tensor:
    """How far the ablated ancestry's output is from the full one's, averaged over the batch: the KL of the class
    distributions at T=1, or for an ancestry without a head 1 - cosine of the pooled features."""
    if headless:
        return 1.0 - F.cosine_similarity(ablated.float(), full.float(), dim=-1).mean()
    return soft_kl(ablated, full, 1.0)


def best_window(scores: list[float], count: int) -> int:
    """Start of the contiguous run of ``count`` blocks with the largest total score (the earliest on a tie)."""
    totals = [sum(scores[start:start + count]) for start in range(len(scores) - count + 1)]
    return max(range(len(totals)), key=lambda start: (totals[start], -start))


def train_layers(ancestry: StateDict, ancestry_spec: ViTSpec, dataset: Dataset, params: dict[str, Any],
                 hooks: Hooks | None) -> tuple[Learngene, dict[str, Any], list[tuple[int, float]]]:
    depth = ancestry_spec.depth
    count = params["count"] if params["count"] is not None else max(1, depth // 2)
    sample = dataset.train.sample(params["sample_size"])
    scores = block_scores(ancestry, ancestry_spec, sample, params["batch_size"], hooks)
    if params["selection"] == "score":
        ranked = sorted(range(depth), key=lambda i: (-scores[i], i))
        indices = sorted(ranked[:count])
    elif params["selection"] == "window":
        start = best_window(scores, count)
        indices = list(range(start, start + count))
    else:
        start = 0 if params["position"] == "first" else depth - count
        indices = list(range(start, start + count))
    kept = {"score": f"the {count} top-scoring", "window": f"the {count} contiguous with the largest total score",
            "end": f"the {params['position']} {count}"}[params["selection"]]
    change = ("1 - cosine(pooled features of the ancestry, of the ancestry without block i)"
              if ancestry_spec.num_classes == 0 else "KL(ancestry || ancestry without block i) at T=1")
    name = criterion_name(ancestry_spec)
    criterion = f"{name}: mean {change} over {len(sample)} training images; kept {kept} blocks"
    learngene = layers.make_learngene(ancestry, ancestry_spec, indices, params["position"], criterion, scores)
    metrics = {"criterion": name, "scores": scores, "indices": indices, "sample_images": len(sample)}
    return learngene, metrics, []
