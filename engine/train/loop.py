"""The one training loop every trainer in the engine shares (ancestry, condensing, evaluation fine-tunes).

Short on purpose, nanoGPT-style: every knob is a field of :class:`TrainConfig`. AdamW (fused on CUDA), a
cosine learning-rate schedule with linear warmup, bf16 autocast on CUDA and fp32 on CPU, gradient-norm
clipping. The caller supplies the model, a loss function and the data; the job around it supplies
:class:`Hooks` for progress, cancellation and checkpoints.

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

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "TrainConfig":
        """The loop's configuration from a method's validated train-mode parameters (:mod:`engine.methods`)."""
        warmup = params["warmup_steps"] if params["warmup_steps"] is not None else params["steps"] // 20
        return cls(steps=params["steps"], batch_size=params["batch_size"], lr=params["lr"], min_lr=params["min_lr"],
                   warmup_steps=warmup, weight_decay=params["weight_decay"], grad_clip=params["grad_clip"],
                   seed=params["seed"], checkpoint_every_s=params["checkpoint_every_s"])


def pick_device(name: str | None = None) -> torch.device:
    """Resolved at call time, never at import: workers fork, and a CUDA context must not cross a fork."""
    if name is not None:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 on CUDA (no loss scaling needed, unlike fp16); fp32 on CPU, where bf16 is slow on most cores."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
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
        images = data.images[index].to(device, non_blocking=True)
        labels = data.labels[index].to(device, non_blocking=True)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)

        with autocast(device):
            loss = loss_fn(model, images, labels)
        loss.backward()
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
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits for every image, in fp32 on the CPU, computed on the model's device in eval mode."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        with autocast(device):
            outputs.append(model(images[start:start + batch_size].to(device)).float().cpu())
    model.train(was_training)
    return torch.cat(outputs)


def accuracy(model: nn.Module, data: Split, batch_size: int = 256) -> float:
    return (predict_logits(model, data.images, batch_size).argmax(-1) == data.labels).float().mean().item()


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
