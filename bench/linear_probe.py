"""How much of the seed ancestry's features serve the report's target: a linear probe (head only, body frozen)
on Fashion-MNIST classes 5-9 for the ``fashion-vit`` body against a random one, beside full fine-tuning.

    .venv/bin/python bench/linear_probe.py              # depth 6 (the whole ancestry), 10 shots, 5 seeds

Same target split, seeds, batch order and schedule as report v2 (``bench/quality_real.py``); the probe's
learning rate is chosen from --lrs on the validation images and test accuracy is reported at it. Quoted in
``docs/quality.md`` ("Why the 10-shot gap").
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--lrs", type=float, nargs="+", default=[3e-2, 1e-1, 3e-1])
    args = parser.parse_args()

    import torch
    from safetensors.torch import load_file

    from bench.finetune import Recipe, finetune
    from bench.quality_real import target_sample
    from engine.train.ancestry import FASHION_ANCESTRY_SPEC
    from engine.vit import build_model, seeded
    from service.seed import SEED_DATA, seed_manifest

    torch.set_num_threads(1)
    state = load_file(str(SEED_DATA / seed_manifest()["fashion-vit"]["file"]))
    body = {k: v for k, v in state.items()
            if not k.startswith("head.") and not (k.startswith("blocks.") and int(k.split(".")[1]) >= args.depth)}
    for init in ("random", "fashion-vit"):
        by_lr = {}
        for lr in args.lrs:
            scores = []
            for seed in range(args.seeds):
                task, val = target_sample(args.shots, seed, 1000)
                with seeded(seed):
                    model = build_model(FASHION_ANCESTRY_SPEC.replace(num_classes=5, depth=args.depth))
                if init != "random":
                    model.load_state_dict(body, strict=False)
                for name, param in model.named_parameters():
                    param.requires_grad_(name.startswith("head."))
                recipe = Recipe(steps=args.steps, lr=lr, seed=seed, weight_decay=0.0, eval_every=args.steps)
                metrics = finetune(model, task.train, val, recipe, test=task.test)
                scores.append((metrics["val_accuracy"], metrics["test_accuracy"]))
            by_lr[lr] = scores
        best = max(by_lr, key=lambda lr: statistics.fmean(v for v, _ in by_lr[lr]))
        test = [t for _, t in by_lr[best]]
        print(f"linear probe, {init} body, depth {args.depth}, {args.shots} shots: lr {best:g}, test "
              f"{statistics.fmean(test):.3f} ± {statistics.stdev(test):.3f} over {args.seeds} seeds", flush=True)


if __name__ == "__main__":
    main()
