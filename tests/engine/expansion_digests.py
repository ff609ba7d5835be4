"""Run as a script by ``test_engine_determinism.py``: expand every learngene saved in a folder, print the sha256 of
each descendant file as JSON. A fresh process, so that the caller can vary the thread count, the CPU capability
torch dispatches to and the BLAS code path, which are all fixed once torch is loaded."""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

from engine.artifacts import descendant_metadata, load_learngene, save_descendant
from engine.methods import get_entry


def digests(folder: Path, threads: int) -> dict[str, str]:
    """``{"method/request index[/fresh]": sha256}`` for the requests in ``folder/requests.json``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    out: dict[str, str] = {}
    try:
        requests = json.loads((folder / "requests.json").read_text())
        with tempfile.TemporaryDirectory() as scratch:
            for name, partials in requests.items():
                entry = get_entry(name)
                learngene = load_learngene(folder / f"{name}.learngene")
                for index, partial in enumerate(partials):
                    spec = entry.load().resolve_spec(learngene, partial)
                    # A fresh head where the classes would keep the learngene's: once per method is enough.
                    for head in ("inherit", "fresh") if index == 0 else ("inherit",):
                        descendant = entry.expand(learngene, spec, seed=3, head=head)
                        path = Path(scratch) / "d.safetensors"
                        out[f"{name}/{index}/{head}"] = save_descendant(
                            descendant, descendant_metadata(name, spec, 3), path)
    finally:
        torch.set_num_threads(previous)
    return out


if __name__ == "__main__":
    print(json.dumps(digests(Path(sys.argv[1]), int(sys.argv[2]))))
