"""bench/condense_throughput.py's pool-hidden workload compares the engine's loop with a plain one; the ratio only
means something if both sides compute the same loss on the same modules."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.condense_throughput import Workload, ours, plain, plain_hidden_loss, setup  # noqa: E402
from engine.data import Split  # noqa: E402
from engine.spec import ViTSpec  # noqa: E402
from engine.train.loop import TrainConfig  # noqa: E402


def tiny() -> Workload:
    ancestry = ViTSpec(depth=4, embed_dim=32, num_heads=2, num_classes=0, img_size=28, patch_size=7, in_chans=3,
                       init_values=1e-5)
    generator = torch.Generator().manual_seed(0)
    data = Split(torch.randn(16, 3, 28, 28, generator=generator), torch.randint(0, 10, (16,), generator=generator))
    return Workload("tiny", ancestry, data, 8, data, ancestry.replace(depth=3, embed_dim=16, num_heads=2))


def test_the_plain_hidden_loss_is_the_engines() -> None:
    """The plain side (timm's forward_intermediates, the loss in a few lines) computes the engine's features +
    hidden-term loss, to float precision, on the same student, projections and teacher statistics."""
    workload = tiny()
    model, loss = setup(workload, torch.device("cpu"))
    with torch.no_grad():  # the copy projections start as identities: move them off, so a mismatch shows
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
        # and each matched block its own statistics, so that using the wrong block's shows too
        loss.hidden.mean.copy_(torch.randn_like(loss.hidden.mean))
        loss.hidden.std.copy_(0.5 + torch.rand_like(loss.hidden.std))
    images = workload.data.images[:8]
    engine = loss(model, images, workload.data.labels[:8])
    assert loss.hidden is not None and len(model.hidden[0]) == 2
    assert torch.allclose(plain_hidden_loss(model, loss, images), engine, atol=1e-5), engine


def test_both_sides_of_the_pool_hidden_workload_train() -> None:
    workload = tiny()
    config = TrainConfig(steps=2, batch_size=8, log_every=1, precision="fp32")
    assert ours(workload, config, 1, torch.device("cpu")) > 0
    assert plain(workload, config, 1, torch.device("cpu")) > 0
