"""Every method: descendants rebuild through timm (strict load, forward pass), from config.json too, and the same
(learngene, spec, seed) always gives the same bytes."""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch

from engine.artifacts import (descendant_config, descendant_metadata, load_learngene, save_descendant,
                              save_learngene, sha256_file)
from engine.methods import METHOD_NAMES, get_method
from engine.methods.base import Descendant, Learngene
from engine.spec import ViTSpec
from engine.train.card import catalogue


def _specs(name: str, learngene: Learngene) -> list[ViTSpec]:
    """The smallest and largest candidates, and one with other classes."""
    method = get_method(name)
    # The card's catalogue: FRONT's whole grid would reach models of hundreds of millions of parameters.
    candidates = sorted(catalogue(learngene), key=lambda s: (s.depth, s.embed_dim))
    return [candidates[0], candidates[-1], method.resolve_spec(learngene, {**candidates[-1].to_dict(),
                                                                           "num_classes": 3})]


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_descendants_load_strictly_into_timm_and_run(
        name: str, learngenes: dict[str, Learngene],
        run_forward: Callable[[Descendant, ViTSpec], torch.Tensor]) -> None:
    learngene = learngenes[name]
    for spec in _specs(name, learngene):
        descendant = get_method(name).expand(learngene, spec, seed=0)
        out = run_forward(descendant, spec)
        assert out.shape == (2, spec.num_classes)
        assert torch.isfinite(out).all()


def _write(descendant: Descendant, spec: ViTSpec, name: str, folder: Path, learngene_sha: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    metadata = descendant_metadata(name, spec, 7, learngene="tiny", version="1", learngene_sha256=learngene_sha)
    save_descendant(descendant, metadata, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(descendant_config(descendant, spec)))
    return folder / "model.safetensors"


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_files_rebuild_through_timm_and_are_byte_identical(name: str, learngenes: dict[str, Learngene],
                                                           tmp_path: Path) -> None:
    method = get_method(name)
    save_learngene(learngenes[name], tmp_path / "learngene.safetensors")
    learngene = load_learngene(tmp_path / "learngene.safetensors")
    assert learngene.meta == learngenes[name].meta
    sha = sha256_file(tmp_path / "learngene.safetensors")
    spec = _specs(name, learngene)[-1]  # other classes: exercises the seeded head too
    first = _write(method.expand(learngene, spec, seed=7), spec, name, tmp_path / "a", sha)
    second = _write(method.expand(learngenes[name], spec, seed=7), spec, name, tmp_path / "b", sha)
    assert first.read_bytes() == second.read_bytes()
    other_seed = _write(method.expand(learngene, spec, seed=8), spec, name, tmp_path / "c", sha)
    assert other_seed.read_bytes() != first.read_bytes()  # the seed reaches the file (metadata at least)

    model = timm.create_model(f"local-dir:{first.parent}", pretrained=True)
    expected = method.expand(learngene, spec, seed=7).state_dict
    assert model.state_dict().keys() == expected.keys()
    assert all(torch.equal(model.state_dict()[k], expected[k]) for k in expected)


def test_same_file_from_a_fresh_process(learngenes: dict[str, Learngene], tmp_path: Path) -> None:
    """Metadata order must not depend on the process (the safetensors library's does)."""
    save_learngene(learngenes["wave"], tmp_path / "lg.safetensors")
    script = (
        "import sys; from pathlib import Path\n"
        "from engine.artifacts import load_learngene, save_descendant, descendant_metadata\n"
        "from engine.methods import get_method\n"
        "lg = load_learngene(Path(sys.argv[1])); m = get_method('wave')\n"
        "spec = m.resolve_spec(lg, {'depth': 5, 'num_classes': 4})\n"
        "metadata = descendant_metadata('wave', spec, 11, learngene='x')\n"
        "save_descendant(m.expand(lg, spec, 11), metadata, Path(sys.argv[2]))\n"
    )
    outputs = [tmp_path / f"{i}.safetensors" for i in range(2)]
    for out in outputs:
        subprocess.run([sys.executable, "-c", script, str(tmp_path / "lg.safetensors"), str(out)], check=True,
                       cwd=Path(__file__).resolve().parents[2])
    assert outputs[0].read_bytes() == outputs[1].read_bytes()
