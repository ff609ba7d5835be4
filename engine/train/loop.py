"""The one training loop every trainer in the engine shares (ancestry, condensing, evaluation fine-tunes).

Short on purpose, nanoGPT-style: every knob is a field of :class:`TrainConfig`. AdamW (fused on CUDA), a
cosine learning-rate schedule with linear warmup, bf16 autocast where the device has native bf16 (CUDA; CPUs with
AMX or AVX512-BF16) and fp32 elsewhere, gradient-norm clipping. The caller supplies the model, a loss function
and the data (a :class:`engine.data.Split`, preprocessed batch by batch); the job around it supplies
:class:`Hooks` for progress, cancellation and checkpoints.

Cancellation is honoured within seconds in every phase: before every step, between the micro-batches of a long
CPU step (:func:`micro_batch`), between evaluation batches (:func:`predict_logits`), and while a dataset loads
(:func:`stop_check`).

Resuming is exact: batch k is a pure function of (seed, k) (:func:`engine.data.batch_indices`), the learning
rate is a pure function of the step (so the step *is* the scheduler's state), and a checkpoint holds the model,
the optimizer, the step, the loss history so far and the RNG states. A run resumed from a checkpoint taken at
step s ends with the same weights as one that never stopped (bit for bit on CPU).
"""
from __future__ import annotations

import contextlib
import io
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
import torch.nn as nn

from engine.augment import PARTNERS, Augment, Mix
from engine.data import Split, batch_indices

#: (model, images, labels) -> scalar loss. An ``nn.Module`` loss (e.g. one holding a frozen teacher) is moved to
#: the training device together with the model.
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
LossHistory = list[tuple[int, float]]


class Cancelled(Exception):
    """Raised when ``Hooks.should_stop`` says so; ``step`` is the number of optimizer steps completed."""

    def __init__(self, step: int) -> None:
        super().__init__(f"training cancelled after step {step}")
        self.step = step


class Hooks(Protocol):
    """What a job plugs into the loop (any object with these four methods will do).

    ``should_stop`` is called before every step: keep it cheap (read a flag that a heartbeat refreshes)."""

    def on_progress(self, progress: dict[str, Any]) -> None:
        """``progress`` has step, total_steps, epoch, loss, images_per_s, eta_s."""

    def should_stop(self) -> bool: ...

    def save_checkpoint(self, blob: bytes) -> None:
        """Store the latest checkpoint; only the newest one is ever needed."""

    def load_checkpoint(self) -> bytes | None: ...


class NoHooks:
    """Hooks that do nothing: no reports, never stop, no checkpoints."""

    def on_progress(self, progress: dict[str, Any]) -> None:
        pass

    def should_stop(self) -> bool:
        return False

    def save_checkpoint(self, blob: bytes) -> None:
        pass

    def load_checkpoint(self) -> bytes | None:
        return None


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int = 64
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_steps: int = 0
    weight_decay: float = 0.05  # applied to matrices only (ndim >= 2), not to biases and norms
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    seed: int = 0  # batch order and the RNG the model may use (dropout, drop path)
    log_every: int = 0  # steps between loss records and progress reports; 0: about 100 records per run
    checkpoint_every_s: float = 60.0  # 0 disables the time trigger
    checkpoint_every_steps: int = 0  # 0 disables the step trigger
    device: str | None = None  # None: cuda if available, else cpu
    precision: str = "auto"  # "fp32", "bf16", or "auto": bf16 where the device computes it natively (autocast)
    evaluate: bool = True  # condensing's before/after validation metrics (engine.train.distill.distil); False: none
    eval_images: int = 1000  # the fixed validation subset those metrics use
    micro_batch: int = 0  # images per forward/backward (gradients accumulate over a step); 0: see micro_batch()
    augment: str = "none"  # engine.augment's level for the training batches: none, light or strong
    mix: float = 0.0  # share of the training images blended with another image of the data (engine.augment.Mix)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "TrainConfig":
        """The loop's configuration from a method's validated train-mode parameters (:mod:`engine.methods`)."""
        warmup = params["warmup_steps"] if params["warmup_steps"] is not None else params["steps"] // 20
        return cls(steps=params["steps"], batch_size=params["batch_size"], lr=params["lr"], min_lr=params["min_lr"],
                   warmup_steps=warmup, weight_decay=params["weight_decay"], grad_clip=params["grad_clip"],
                   seed=params["seed"], checkpoint_every_s=params["checkpoint_every_s"],
                   precision=params.get("precision", "auto"), evaluate=params.get("evaluate", True),
                   eval_images=params.get("eval_images", cls.eval_images), augment=params.get("augment", "none"),
                   mix=params.get("mix", 0.0))


#: On a CPU a step runs in micro-batches of at most this many input values (16 images of 3x224^2: 2 at DINOv2's
#: 518 px, the whole batch of 64 at 112 px), so a step at a large image size still notices a cancel within
#: seconds, and its activations stay bounded.
CPU_MICRO_BATCH_VALUES = 16 * 3 * 224 * 224


def micro_batch(data: Split, config: TrainConfig, device: torch.device) -> int:
    """Images per forward/backward: ``config.micro_batch`` when set; else the whole batch on an accelerator and,
    on a CPU, as many as :data:`CPU_MICRO_BATCH_VALUES` allows (at least one)."""
    if config.micro_batch > 0:
        return config.micro_batch
    if device.type != "cpu" or len(data) == 0:
        return config.batch_size
    values = data.batch(torch.arange(1))[0][0].numel()  # one image preprocessed: its size at the target size
    return max(1, min(config.batch_size, CPU_MICRO_BATCH_VALUES // values))


def stop_check(hooks: Hooks | None) -> Callable[[], None] | None:
    """A callback raising :class:`Cancelled` (step 0) once ``hooks`` ask to stop: what slow work outside the loop
    (loading a dataset) calls between chunks."""
    if hooks is None:
        return None

    def check() -> None:
        if hooks.should_stop():
            raise Cancelled(0)
    return check


def pick_device(name: str | None = None) -> torch.device:
    """Resolved at call time, never at import: workers fork, and a CUDA context must not cross a fork."""
    if name is not None:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


PRECISIONS = ("auto", "fp32", "bf16")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 matmuls natively: CUDA, or a CPU with AMX or AVX512-BF16 (where oneDNN's bf16
    kernels beat fp32: 2.1x on ViT-S training here, docs/benchmarks.md). Other CPUs emulate bf16, slower than fp32."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(check is not None and check() for check in checks)


def autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """bf16 autocast (no loss scaling needed, unlike fp16) for ``precision="bf16"``, and for ``"auto"`` where the
    device has native bf16 (:func:`native_bf16`); fp32 otherwise. Losses and metrics stay fp32 (``soft_kl``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" or (precision == "auto" and native_bf16(device)):
        if device.type in ("cuda", "cpu"):
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``min_lr`` at the last step."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    decay_steps = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / decay_steps)
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - config.min_lr)


def make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, fused=device.type == "cuda")


def train(model: nn.Module, loss_fn: LossFn, data: Split, config: TrainConfig,
          hooks: Hooks | None = None) -> LossHistory:
    """Train ``model`` in place for ``config.steps`` steps; returns the loss history [(step, loss)], where
    ``step`` counts completed steps (1-based). Raises :class:`Cancelled` when the hooks ask to stop."""
    hooks = hooks or NoHooks()
    device = pick_device(config.device)
    if device.type == "cuda":  # the fp32 matmuls left outside autocast may use TF32 tensor cores
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model.to(device).train()
    if isinstance(loss_fn, nn.Module):
        loss_fn.to(device)
    optimizer = make_optimizer(model, config, device)
    torch.manual_seed(config.seed)  # dropout / drop path draw from the global RNG; a checkpoint restores it

    step, history = 0, []
    blob = hooks.load_checkpoint()
    if blob is not None:
        step, history = _restore(blob, model, optimizer)

    micro = micro_batch(data, config, device)
    augment, mix = Augment.of(config.augment), Mix.of(config.mix)
    log_every = config.log_every or max(1, config.steps // 100)
    per_epoch = len(data) // min(config.batch_size, len(data))
    images_seen, window_start = 0, time.perf_counter()
    last_checkpoint = time.monotonic()
    while step < config.steps:
        if hooks.should_stop():
            if step > 0:  # a stopping worker hands the job on: whoever runs it next resumes from here
                hooks.save_checkpoint(_snapshot(model, optimizer, step, history))
            raise Cancelled(step)
        index = batch_indices(len(data), config.batch_size, config.seed, step)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        chunks = index.split(micro)
        # Drawn for the whole batch from (seed, step): the same images whatever the micro-batching or resume.
        draw = augment.draw(len(index), config.seed, step) if augment is not None else None
        blend = mix.draw(len(index), len(data), config.seed, step) if mix is not None else None
        partner_draw = None
        if augment is not None and blend is not None:
            partner_draw = augment.draw(len(index), config.seed, step, PARTNERS)
        for k, part in enumerate(chunks):
            if k and hooks.should_stop():  # a long step on a CPU: stop between its micro-batches too
                optimizer.zero_grad(set_to_none=True)  # the step is dropped: model and optimizer are at ``step``
                if step > 0:
                    hooks.save_checkpoint(_snapshot(model, optimizer, step, history))
                raise Cancelled(step)
            images, labels = data.batch(part)  # preprocessed now, at the target size: memory flat in img_size
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            start, stop = k * micro, k * micro + len(part)
            if draw is not None:
                images = augment.apply(images, draw.rows(start, stop))
            if blend is not None:  # the blended images' partners, preprocessed and transformed as the batch's own
                rows = blend.rows(start, stop)
                blended = rows.blended
                partners, partner_labels = data.batch(rows.partner[blended])
                partners = partners.to(device, non_blocking=True)
                if partner_draw is not None:
                    partners = augment.apply(partners, partner_draw.rows(start, stop).take(blended))
                images, labels = mix.apply(images, labels, partners, partner_labels, rows)
            with autocast(device, config.precision):
                part_loss = loss_fn(model, images, labels)
            if len(chunks) > 1:  # gradient accumulation: the batch's mean loss is the size-weighted chunk sum
                part_loss = part_loss * (len(part) / len(index))
            part_loss.backward()
            loss = part_loss.detach() if k == 0 else loss + part_loss.detach()
        if config.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        images_seen += len(index)

        if step % log_every == 0 or step == config.steps:
            # .item() waits for the device; doing it only here keeps the GPU queue full between reports.
            value = loss.item()
            history.append((step, value))
            elapsed = time.perf_counter() - window_start
            images_per_s = images_seen / elapsed if elapsed > 0 else 0.0
            steps_per_s = images_per_s / len(index)
            hooks.on_progress({
                "step": step, "total_steps": config.steps, "epoch": step // per_epoch, "loss": value,
                "images_per_s": images_per_s,
                "eta_s": (config.steps - step) / steps_per_s if steps_per_s > 0 else None,
            })
            images_seen, window_start = 0, time.perf_counter()

        due_by_steps = config.checkpoint_every_steps > 0 and step % config.checkpoint_every_steps == 0
        due_by_time = config.checkpoint_every_s > 0 and time.monotonic() - last_checkpoint >= config.checkpoint_every_s
        if (due_by_steps or due_by_time) and step < config.steps:
            hooks.save_checkpoint(_snapshot(model, optimizer, step, history))
            last_checkpoint = time.monotonic()
    model.eval()
    return history


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor | Split, batch_size: int = 256,
                   hooks: Hooks | None = None, precision: str = "auto") -> torch.Tensor:
    """Logits for every image (a tensor, or a split preprocessed batch by batch), in fp32 on the CPU, computed
    on the model's device in eval mode. Raises :class:`Cancelled` (step 0) when ``hooks`` ask to stop, checked
    before every batch."""
    return predict_many([model], images, batch_size, hooks, precision)[0]


@torch.no_grad()
def predict_many(models: list[nn.Module], images: torch.Tensor | Split, batch_size: int = 256,
                 hooks: Hooks | None = None, precision: str = "auto") -> list[torch.Tensor]:
    """:func:`predict_logits` of several models on the same images, each batch preprocessed once for all."""
    data = images if isinstance(images, Split) else Split(images, torch.zeros(len(images), dtype=torch.long))
    device = next(models[0].parameters()).device
    if device.type == "cpu" and len(data):  # forward only: 3x the training micro-batch (see CPU_MICRO_BATCH_VALUES)
        values = data.batch(torch.arange(1))[0][0].numel()
        batch_size = max(1, min(batch_size, 3 * CPU_MICRO_BATCH_VALUES // values))
    was_training = [model.training for model in models]
    for model in models:
        model.eval()
    outputs: list[list[torch.Tensor]] = [[] for _ in models]
    try:
        for batch, _ in data.batches(batch_size):
            if hooks is not None and hooks.should_stop():
                raise Cancelled(0)
            batch = batch.to(device)
            with autocast(device, precision):
                for model, out in zip(models, outputs):
                    out.append(model(batch).float().cpu())
    finally:
        for model, mode in zip(models, was_training):
            model.train(mode)
    return [torch.cat(out) for out in outputs]


def accuracy(model: nn.Module, data: Split, batch_size: int = 256, hooks: Hooks | None = None) -> float:
    return (predict_logits(model, data, batch_size, hooks).argmax(-1) == data.labels).float().mean().item()


def _snapshot(model: nn.Module, optimizer: torch.optim.Optimizer, step: int, history: LossHistory) -> bytes:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "history": [list(point) for point in history],
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _restore(blob: bytes, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, LossHistory]:
    # weights_only: a checkpoint is data coming back from storage, never code to run.
    state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return int(state["step"]), [(int(s), float(v)) for s, v in state["history"]]
