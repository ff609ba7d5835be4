"""Condensing throughput: images/s of the engine's training loop (``engine.train.loop.train``, with job hooks
that record progress and take time-based checkpoints) against a plain PyTorch loop over the same model, data,
batch size, optimizer (AdamW, fused on CUDA), gradient clipping and autocast, with no schedule, hooks, progress
reports or checkpoints. The ratio ours / plain shows what the loop's bookkeeping costs; 1.0 is free.

The workload is TLEG condensing: the auxiliary network (12 blocks of A + (i/12) B) distilled from a frozen
ancestry, at three sizes (a fourth workload, the pool's hidden term, follows):

- ``seed``: the fresh install's digits ancestry (16 px, patch 4, width 64, 6 blocks), digits data;
- ``vit-s``: a ViT-S-size ancestry (width 384, 6 heads, 12 blocks; 224 px patch 16 on CUDA, 32 px patch 8 on a
  CPU to keep the run short), random weights and random images (throughput does not depend on the values);
- ``vit-s-112``: issue 19's target, a ViT-S/14 (DINOv2's shape, with a head) at 112 px. Our side streams the
  data as a condensing job does: raw 28x28 uint8 images (Fashion-MNIST's format) decoded, resized to 112 px and
  normalized per batch (:mod:`engine.data`), CPU steps in micro-batches; the plain side gets the same images
  already resized in memory and runs the whole batch at once (teacher forward under ``no_grad``, student forward
  and backward).

``pool-hidden-112`` is another workload on the same streamed data: the report's best learngene at d12 w192, a
Learngene Pool trained mode with one 12-deep, 192-wide student distilling a **headless** ViT-S/14 (DINOv2's
shape: layer scale, no head) by the features objective plus the hidden term (``hidden_weight: 1``: each student
block but the last matched with the ancestry's block at the same relative depth). Ours: the pool trainer's model
(``PoolNet`` in its ``FeatureStudent``, the projections included) and ``Distillation`` through the engine's loop.
Plain: the same student and projections driven by timm's own ``forward_intermediates`` on both sides and the loss
written out in a few lines (:func:`plain_hidden_loss`; ``tests/bench`` checks it equals the engine's).

Each side first runs ``--warmup`` steps (allocator, kernels), then ``--steps`` timed steps; the two sides
alternate ``--repeats`` times and the medians are printed, so both share whatever else the machine is doing.
Both sides autocast alike (``--precision``: auto is bf16 on CUDA and on CPUs with native bf16). The process's
peak resident memory is printed at the end (issue 19's bound for ViT-S at 112 px: under 8 GB).

On CUDA the model FLOPs utilization is printed too: achieved FLOPs / peak, where one training image costs
3x the auxiliary network's forward FLOPs (forward + backward) plus 1x the teacher's forward, counted by
:func:`engine.costs.gflops` (matmuls only, 2 FLOPs per multiply-add). The peak assumed is the dense bf16 tensor
core peak of an H100/H200 SXM, 989 TFLOP/s (NVIDIA's datasheet figure without sparsity); pass ``--peak-tflops``
for another GPU.

    .venv/bin/python bench/condense_throughput.py [--steps 30] [--warmup 5] [--repeats 3] [--only vit-s-112]
        [--precision auto|fp32|bf16]
"""
from __future__ import annotations

import argparse
import dataclasses
import resource
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from engine.costs import gflops
from engine.data import DIGITS_URI, ArraySource, Preprocess, Split, batch_indices, load_dataset
from engine.spec import ViTSpec
from engine.train.ancestry import SEED_ANCESTRY_SPEC
from engine.train.distill import Distillation, HiddenTerm, feature_student, hidden_blocks, soft_kl
from engine.train.loop import NoHooks, TrainConfig, autocast, make_optimizer, native_bf16, pick_device, train
from engine.train.pool import HIDDEN_STATS_IMAGES, PoolNet
from engine.train.tleg import LinearExpansionViT
from engine.vit import build_model

H100_BF16_DENSE_TFLOPS = 989.0
AUX_DEPTH = 12


@dataclass(frozen=True)
class Workload:
    name: str
    ancestry: ViTSpec
    data: Split  # what our side trains on (streamed for vit-s-112)
    batch_size: int
    plain_data: Split | None = None  # the plain side's images, preprocessed in memory; None: ``data``
    student: ViTSpec | None = None  # a pool student distilled with the hidden term; None: TLEG's auxiliary network


class JobLikeHooks(NoHooks):
    """What a real job does on each callback, minus the database: keep progress, keep the checkpoint bytes."""

    def __init__(self) -> None:
        self.reports: list[dict] = []
        self.checkpoint: bytes | None = None

    def on_progress(self, progress: dict) -> None:
        self.reports.append(progress)

    def save_checkpoint(self, blob: bytes) -> None:
        self.checkpoint = blob


def workloads(device: torch.device) -> list[Workload]:
    digits = load_dataset(DIGITS_URI, SEED_ANCESTRY_SPEC.img_size, SEED_ANCESTRY_SPEC.in_chans).train
    img, patch, batch = (224, 16, 128) if device.type == "cuda" else (32, 8, 8)
    vit_s = ViTSpec(depth=12, embed_dim=384, num_heads=6, num_classes=1000, img_size=img, patch_size=patch,
                    in_chans=3, class_token=True, global_pool="token")
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(4 * batch, 3, img, img, generator=generator)
    random_data = Split(images, torch.randint(0, 1000, (4 * batch,), generator=generator))
    # ViT-S/14 at 112 px (an 8x8 grid), 10 classes; 2,048 raw 28x28 gray images streamed to 3x112x112.
    vit_s14 = vit_s.replace(img_size=112, patch_size=14, num_classes=10)
    batch_112 = 128 if device.type == "cuda" else 32
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(2048, 28, 28), dtype=np.uint8)
    streamed = Split(ArraySource(pixels, 255.0, Preprocess(112, 3)), torch.from_numpy(rng.integers(0, 10, 2048)))
    preresized = Split(streamed.images, streamed.labels)
    # DINOv2's ViT-S/14 as users upload it: layer scale, no head; the student: 12 blocks at width 192.
    headless = vit_s14.replace(num_classes=0, init_values=1e-5)
    student = headless.replace(embed_dim=192, num_heads=3)
    return [Workload("seed", SEED_ANCESTRY_SPEC, digits, 64), Workload("vit-s", vit_s, random_data, batch),
            Workload("vit-s-112", vit_s14, streamed, batch_112, preresized),
            Workload("pool-hidden-112", headless, streamed, batch_112, preresized, student)]


def setup(workload: Workload, device: torch.device) -> tuple[nn.Module, Distillation]:
    """The model our loop trains and its loss: TLEG's auxiliary network with the logits objective, or (a workload
    with a ``student``) the pool trainer's one-student net in its ``FeatureStudent`` with the features objective and
    the hidden term, its statistics measured on the first images as the trainer does."""
    torch.manual_seed(0)
    teacher = build_model(workload.ancestry).eval().requires_grad_(False)
    if workload.student is None:
        aux = LinearExpansionViT(workload.ancestry.replace(depth=AUX_DEPTH, class_token=False, global_pool="avg"))
        return aux.to(device), Distillation(teacher).to(device)
    spec = workload.student
    net = PoolNet([(build_model(spec).state_dict(), spec)], {})
    loss = Distillation(teacher, logits=False, features=True, hidden_weight=1.0).to(device)
    images = (workload.plain_data or workload.data).images[:HIDDEN_STATS_IMAGES]
    loss.hidden = HiddenTerm.fit(loss.teacher, [spec.depth], [images]).to(device)
    model = feature_student(net, loss, [spec.embed_dim], [(spec.embed_dim, spec.depth)])
    return model.to(device), loss


def plain_hidden_loss(model: nn.Module, loss: Distillation, images: torch.Tensor) -> torch.Tensor:
    """What a user would write for the features objective plus the hidden term, on the modules :func:`setup` made
    (the student is ``model.net.students[0]``, a timm ViT; the projections are ``model``'s): timm's
    ``forward_intermediates`` on both sides, ``1 - cosine`` of the pooled (class) tokens and of the layer-normed
    patch tokens, and of every student block's standardized tokens but the last against the teacher's block at the
    same relative depth."""
    student = model.net.students[0]
    blocks = hidden_blocks(len(student.blocks), len(loss.teacher.blocks))
    with torch.no_grad():
        t_final, t_hidden = loss.teacher.forward_intermediates(images, indices=blocks, return_prefix_tokens=True,
                                                               output_fmt="NLC")
    s_final, s_hidden = student.forward_intermediates(images, indices=list(range(len(student.blocks) - 1)),
                                                      return_prefix_tokens=True, output_fmt="NLC")
    width = t_final.shape[-1]
    s_final = model.project(s_final)
    pooled = 1 - F.cosine_similarity(s_final[:, 0].float(), t_final[:, 0].float(), dim=-1).mean()
    patches = 1 - F.cosine_similarity(F.layer_norm(s_final[:, 1:].float(), (width,)),
                                      F.layer_norm(t_final[:, 1:].float(), (width,)), dim=-1).mean()
    terms = []
    # student block k against teacher block blocks[k], standardized by that block's statistics
    blocks_both_sides = zip(model.hidden[0], s_hidden, t_hidden)
    for k, (projection, (tokens, prefix), (t_tokens, t_prefix)) in enumerate(blocks_both_sides):
        mean, std = loss.hidden.mean[k], loss.hidden.std[k]
        mine = projection(torch.cat([prefix, tokens], 1)).float()
        target = torch.cat([t_prefix, t_tokens], 1).float()
        terms.append(1 - F.cosine_similarity((mine - mean) / std, (target - mean) / std, dim=-1).mean())
    return pooled + patches + torch.stack(terms).mean()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def ours(workload: Workload, config: TrainConfig, warmup: int, device: torch.device) -> float:
    model, loss = setup(workload, device)
    train(model, loss, workload.data, dataclasses.replace(config, steps=warmup), JobLikeHooks())
    sync(device)
    started = time.perf_counter()
    train(model, loss, workload.data, config, JobLikeHooks())
    sync(device)
    return config.steps * workload.batch_size / (time.perf_counter() - started)


def plain(workload: Workload, config: TrainConfig, warmup: int, device: torch.device) -> float:
    model, loss = setup(workload, device)
    optimizer = make_optimizer(model, config, device)
    data = workload.plain_data or workload.data
    images_all, labels_all = data.images, data.labels  # in memory, preprocessed: the plain loop only indexes

    def run(steps: int) -> None:
        for step in range(steps):
            index = batch_indices(len(data), workload.batch_size, config.seed, step)
            images = images_all[index].to(device, non_blocking=True)
            labels = labels_all[index].to(device, non_blocking=True)
            with autocast(device, config.precision):
                if workload.student is not None:
                    value = plain_hidden_loss(model, loss, images)
                else:
                    with torch.no_grad():
                        teacher_logits = loss.teacher(images)
                    value = soft_kl(model(images), teacher_logits, loss.temperature)
            value.backward()
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        del labels

    model.train()
    run(warmup)
    sync(device)
    started = time.perf_counter()
    run(config.steps)
    sync(device)
    return config.steps * workload.batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before each timed run (>= 1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS)
    parser.add_argument("--only", action="append", choices=["seed", "vit-s", "vit-s-112", "pool-hidden-112"],
                        help="run only these workloads (repeatable); default: all")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    args = parser.parse_args()
    device = pick_device()
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; {args.steps} timed steps after {args.warmup} warm-up, "
          f"median of {args.repeats}; precision {args.precision} (native bf16: {native_bf16(device)})")
    print(f"{'workload':<15} {'batch':>5} {'ours img/s':>11} {'plain img/s':>12} {'ratio':>6}"
          + (f" {'MFU ours':>9} {'MFU plain':>10}" if device.type == "cuda" else ""))
    for workload in workloads(device):
        if args.only and workload.name not in args.only:
            continue
        config = TrainConfig(steps=args.steps, batch_size=workload.batch_size, log_every=10,
                             precision=args.precision)
        results: dict[str, list[float]] = {"ours": [], "plain": []}
        for _ in range(args.repeats):
            results["ours"].append(ours(workload, config, args.warmup, device))
            results["plain"].append(plain(workload, config, args.warmup, device))
        a, b = statistics.median(results["ours"]), statistics.median(results["plain"])
        line = f"{workload.name:<15} {workload.batch_size:>5} {a:>11.1f} {b:>12.1f} {a / b:>6.3f}"
        if device.type == "cuda":
            trained = workload.student or workload.ancestry.replace(depth=AUX_DEPTH, class_token=False,
                                                                    global_pool="avg")
            flops_per_image = (3 * gflops(trained) + gflops(workload.ancestry)) * 1e9
            peak = args.peak_tflops * 1e12
            line += f" {a * flops_per_image / peak:>9.1%} {b * flops_per_image / peak:>10.1%}"
        print(line, flush=True)
    print(f"peak RSS of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
