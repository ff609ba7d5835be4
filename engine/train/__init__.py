"""Training on data: the shared loop, the seed ancestry, the condensing trainers and the evaluation card.

What the worker calls:

- :func:`condense` (``engine.train.condense``): ancestry (+ dataset) -> (learngene, metrics, loss history);
- :func:`refine`: an existing learngene gains what it was trained for at new sizes (WAVE's scalers);
- :func:`evaluate_card` (``engine.train.card``): learngene vs random init after a short fine-tune, per size;
- :func:`train_ancestry` (``engine.train.ancestry``): a small ViT trained from scratch (the fresh install's seed).

Which method offers which mode, with which knobs, is the registry's (:mod:`engine.methods`).
"""
from engine.train.ancestry import train_ancestry
from engine.train.card import evaluate_card
from engine.train.condense import condense, refine, refine_sizes
from engine.train.loop import Cancelled, Hooks, NoHooks

__all__ = ["Cancelled", "Hooks", "NoHooks", "condense", "evaluate_card", "refine", "refine_sizes", "train_ancestry"]
