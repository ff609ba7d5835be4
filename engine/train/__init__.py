"""Training on data: the shared loop, the seed ancestry, the condensing trainers and the evaluation card.

What the worker calls:

- :func:`condense` (``engine.train.condense``): ancestry (+ dataset) -> (learngene, metrics, loss history);
- :func:`evaluate_card` (``engine.train.card``): learngene vs random init after a short fine-tune, per size;
- :func:`train_ancestry` (``engine.train.ancestry``): a small ViT trained from scratch (the fresh install's seed);
- :func:`validate_params`, :data:`DEFAULT_PARAMS`, :func:`supports_fit`, :func:`supports_train` for requests.
"""
from engine.train.ancestry import train_ancestry
from engine.train.card import evaluate_card
from engine.train.condense import condense, refine, refine_sizes, supports_fit, supports_refine, supports_train
from engine.train.loop import Cancelled, Hooks, NoHooks
from engine.train.params import DEFAULT_PARAMS, ParamError, validate_params

__all__ = ["Cancelled", "DEFAULT_PARAMS", "Hooks", "NoHooks", "ParamError", "condense", "evaluate_card", "refine",
           "refine_sizes", "supports_fit", "supports_refine", "supports_train", "train_ancestry", "validate_params"]
