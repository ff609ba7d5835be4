"""Training a small ancestry from scratch, so that a fresh install has something to condense.

The default spec is sized for scikit-learn's digits on a 2-core CPU: 8x8 digits upsampled to 16x16, 4x4 patches
(16 tokens), width 64, 6 blocks, 4 heads, no class token and average pooling (the form of TLEG's reference
descendants). 600 AdamW steps of 64 images reach ~97% validation accuracy in well under a minute.
"""
from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.data import DIGITS_URI, load_dataset
from engine.methods.base import StateDict
from engine.spec import ViTSpec
from engine.train.loop import Hooks, TrainConfig, accuracy, train
from engine.vit import build_model

SEED_ANCESTRY_SPEC = ViTSpec(depth=6, embed_dim=64, num_heads=4, mlp_ratio=4.0, num_classes=10, img_size=16,
                             patch_size=4, in_chans=1, class_token=False, global_pool="avg")
#: The shipped ancestries train in fp32 (precision pinned), so their scripts reproduce the shipped files' bytes
#: on any CPU, with or without native bf16.
SEED_ANCESTRY_TRAINING = TrainConfig(steps=600, batch_size=64, lr=1e-3, min_lr=1e-5, warmup_steps=30,
                                     weight_decay=0.05, precision="fp32")
#: Fashion-MNIST at its own 28 px with 7x7 patches: the same 16 tokens and blocks as the digits seed, so a step
#: costs about the same; 1,500 steps of 64 images are 4 epochs of classes 0-4 (24,000 training images).
FASHION_ANCESTRY_SPEC = SEED_ANCESTRY_SPEC.replace(img_size=28, patch_size=7)
FASHION_ANCESTRY_TRAINING = TrainConfig(steps=1500, batch_size=64, lr=1e-3, min_lr=1e-5, warmup_steps=75,
                                        weight_decay=0.05, precision="fp32")
#: The broader seed: the Fashion seed's architecture on all of Fashion-MNIST and MNIST as one 20-class task
#: (96,000 training images). 12,000 steps of 64 are 8 epochs: 11 CPU-minutes on one thread of a 2-core EPYC,
#: loading and evaluation included.
MIXED_ANCESTRY_SPEC = FASHION_ANCESTRY_SPEC
MIXED_ANCESTRY_TRAINING = TrainConfig(steps=12_000, batch_size=64, lr=1e-3, min_lr=1e-5, warmup_steps=600,
                                      weight_decay=0.05, precision="fp32")


def classification_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(images), labels)


def train_ancestry(dataset_uri: str = DIGITS_URI, spec: ViTSpec = SEED_ANCESTRY_SPEC,
                   config: TrainConfig = SEED_ANCESTRY_TRAINING, hooks: Hooks | None = None,
                   ) -> tuple[StateDict, ViTSpec, dict[str, Any]]:
    """Train a ViT of ``spec`` (its class count set to the dataset's) with cross-entropy; deterministic in
    ``config.seed`` on CPU. Returns the CPU state dict, the spec and metrics (accuracies, loss history)."""
    dataset = load_dataset(dataset_uri, spec.img_size, spec.in_chans)
    spec = spec.replace(num_classes=dataset.num_classes)
    torch.manual_seed(config.seed)
    model = build_model(spec)
    started = time.perf_counter()
    history = train(model, classification_loss, dataset.train, config, hooks)
    metrics = {
        "dataset": dataset_uri,
        "train_images": len(dataset.train),
        "val_images": len(dataset.val),
        "steps": config.steps,
        "seconds": round(time.perf_counter() - started, 2),
        "train_accuracy": accuracy(model, dataset.train),
        "val_accuracy": accuracy(model, dataset.val),
        "loss_history": history,
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return state, spec, metrics
