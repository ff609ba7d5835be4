"""How much of a seed ancestry's features serve a target: a linear probe (head only, body frozen) of each
ancestry's body against a random one, beside full fine-tuning with ``--finetune``.

    .venv/bin/python bench/linear_probe.py              # fashion-vit on Fashion-MNIST 5-9, depth 6, 10 shots, 5 seeds
    .venv/bin/python bench/linear_probe.py --ancestries fashion-vit mixed-vit --targets fashion-5-9 fashion mnist digits
    .venv/bin/python bench/linear_probe.py --ancestries fashion-vit mixed-vit --targets fashion-5-9 digits \\
        --finetune --lrs 3e-4 1e-3 3e-3                 # the same bodies trained end to end

Targets: ``fashion-5-9`` is report v2's (``bench/quality_real.py``: Fashion-MNIST's sandal, shirt, sneaker, bag and
ankle boot, classes fashion-vit never saw); ``fashion`` and ``mnist`` are all ten classes of each; ``digits`` is
scikit-learn's 8x8 scans upsampled to 28 px, a dataset no seed saw. The probe trains on ``--shots`` images a class
of the target's training split; accuracy is on the official test images (Fashion-MNIST's and MNIST's 10,000,
which no seed trained on; for digits, which has none, its validation split, the learning rate then being chosen
on training images outside the shots). Same seeds, batch order and schedule as report v2; the learning rate is
chosen per initialization from ``--lrs`` on 1,000 validation images and test accuracy is reported at it. Quoted
in ``docs/quality.md`` ("Why the 10-shot gap", "The broader seed").
"""
from __future__ import annotations

import argparse
import functools
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: name -> (dataset URI, classes kept or None for all)
TARGETS = {
    "fashion-5-9": ("builtin:fashion-mnist", (5, 6, 7, 8, 9)),
    "fashion": ("builtin:fashion-mnist", None),
    "mnist": ("builtin:mnist", None),
    "digits": ("builtin:digits", None),
}
VAL_IMAGES = 1000


@functools.lru_cache(maxsize=4)
def _dataset(name: str) -> Any:
    from engine.data import Dataset, load_dataset, stratified_split
    from engine.train.ancestry import FASHION_ANCESTRY_SPEC

    uri, _ = TARGETS[name]
    data = load_dataset(uri, FASHION_ANCESTRY_SPEC.img_size, FASHION_ANCESTRY_SPEC.in_chans)
    if data.test is not None:
        return data
    # No official test images: validation becomes the test, and the choice is made on training images instead.
    import torch

    train, val = (torch.from_numpy(i) for i in stratified_split(data.train.labels.numpy(), seed=1))
    return Dataset(data.uri, data.classes, data.train.subset(train), data.train.subset(val), data.val)


def _task(name: str, shots: int, seed: int) -> tuple[Any, Any, Any]:
    from engine.data import target_task

    task = target_task(_dataset(name), TARGETS[name][1], shots, seed)
    # A fixed sample of validation images (the same for every seed and init) keeps the choice cheap.
    return task.train, task.val.sample(VAL_IMAGES, seed=0), task.test


def _bodies(names: list[str], depth: int) -> dict[str, dict[str, Any] | None]:
    from safetensors.torch import load_file

    from service.seed import SEED_DATA, seed_manifest

    manifest = seed_manifest()
    bodies: dict[str, dict[str, Any] | None] = {"random": None}
    for name in names:
        state = load_file(str(SEED_DATA / manifest[name]["file"]))
        bodies[name] = {k: v for k, v in state.items()
                        if not k.startswith("head.") and not (k.startswith("blocks.") and int(k.split(".")[1]) >= depth)}
    return bodies


def _features(model: Any, split: Any) -> Any:
    """The frozen body's pooled, normed tokens: what the head sees, computed once instead of every step."""
    import torch

    from engine.data import Split

    model.eval()
    with torch.no_grad():
        chunks = [model.forward_head(model.forward_features(images), pre_logits=True)
                  for images, _ in split.batches(256)]  # preprocessed batch by batch
    return Split(torch.cat(chunks), split.labels)


def _scores(body: dict[str, Any] | None, target: str, args: argparse.Namespace, seed: int
            ) -> dict[float, tuple[float, float]]:
    """(validation, test) accuracy of one probe or fine-tuning run per learning rate."""
    from engine.train.ancestry import FASHION_ANCESTRY_SPEC, classification_loss
    from engine.train.loop import NoHooks, TrainConfig, accuracy, train
    from engine.vit import build_model, seeded

    splits = _task(target, args.shots, seed)

    def initialized() -> Any:
        with seeded(seed):
            model = build_model(FASHION_ANCESTRY_SPEC.replace(num_classes=int(splits[0].labels.max()) + 1,
                                                              depth=args.depth))
        if body is not None:
            model.load_state_dict(body, strict=False)
        return model

    if not args.finetune:
        # The head is the whole probe: training it on the frozen body's features is the same computation as
        # training the full model with the body frozen (no dropout), at a fraction of the cost.
        splits = tuple(_features(initialized(), s) for s in splits)
    scores = {}
    for lr in args.lrs:
        model = initialized() if args.finetune else initialized().head
        config = TrainConfig(steps=args.steps, batch_size=25, lr=lr, min_lr=lr / 100,
                             warmup_steps=max(1, args.steps // 10), weight_decay=0.05 if args.finetune else 0.0,
                             seed=seed, log_every=args.steps, checkpoint_every_s=0.0, device="cpu")
        train(model, classification_loss, splits[0], config, NoHooks())
        scores[lr] = (accuracy(model, splits[1]), accuracy(model, splits[2]))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ancestries", nargs="+", default=["fashion-vit"], choices=["fashion-vit", "mixed-vit"])
    parser.add_argument("--targets", nargs="+", default=["fashion-5-9"], choices=list(TARGETS))
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--lrs", type=float, nargs="+", default=[3e-2, 1e-1, 3e-1])
    parser.add_argument("--finetune", action="store_true", help="train the whole model, not only the head")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    what = "fine-tuned" if args.finetune else "linear probe"
    for target in args.targets:
        for init, body in _bodies(args.ancestries, args.depth).items():
            runs = [_scores(body, target, args, seed) for seed in range(args.seeds)]
            by_lr = {lr: [run[lr] for run in runs] for lr in args.lrs}
            best = max(by_lr, key=lambda lr: statistics.fmean(v for v, _ in by_lr[lr]))
            test = [t for _, t in by_lr[best]]
            print(f"{what}, {target}, {init} body, depth {args.depth}, {args.shots} shots: lr {best:g}, test "
                  f"{statistics.fmean(test):.3f} ± {statistics.stdev(test):.3f} over {args.seeds} seeds", flush=True)


if __name__ == "__main__":
    main()
