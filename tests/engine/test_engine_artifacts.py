"""Our safetensors writer: readable by the safetensors library, independent of dict order, no copies refused."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from engine.artifacts import (descendant_config, load_learngene, save_descendant, sha256_file,
                              write_safetensors)
from engine.methods.base import Descendant, LearngeneError
from engine.spec import TIMM_ARCHITECTURE, ViTSpec


def test_written_files_read_back_with_the_safetensors_library(tmp_path: Path) -> None:
    stacked = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    tensors = {
        "b.view0": stacked[0],  # views of one storage, which save_file refuses
        "b.view1": stacked[1],
        "a.half": torch.tensor([1.5, -2.0], dtype=torch.float16),
        "a.bf16": torch.tensor([0.25], dtype=torch.bfloat16),
        "c.long": torch.tensor([[7]], dtype=torch.int64),
        "c.flag": torch.tensor([True, False]),
        "d.empty": torch.zeros(0, 5),
        "e.transposed": torch.arange(6.0).reshape(2, 3).T,  # not contiguous
    }
    digest = write_safetensors(tensors, {"z": "last", "a": "first"}, tmp_path / "x.safetensors")
    # The digest hashed while writing is the file's own.
    assert digest == hashlib.sha256((tmp_path / "x.safetensors").read_bytes()).hexdigest()
    assert not list(tmp_path.glob("*.partial"))
    loaded = load_file(tmp_path / "x.safetensors")
    assert loaded.keys() == tensors.keys()
    for key, tensor in tensors.items():
        assert loaded[key].dtype == tensor.dtype and torch.equal(loaded[key], tensor), key
    with safe_open(tmp_path / "x.safetensors", framework="pt") as f:
        assert f.metadata() == {"a": "first", "z": "last"}


def test_bytes_do_not_depend_on_insertion_order(tmp_path: Path) -> None:
    tensors = {f"t{i}": torch.randn(3, i + 1) for i in range(5)}
    metadata = {f"k{i}": str(i) for i in range(6)}
    write_safetensors(tensors, metadata, tmp_path / "one.safetensors")
    write_safetensors(dict(reversed(tensors.items())), dict(reversed(metadata.items())), tmp_path / "two.safetensors")
    assert (tmp_path / "one.safetensors").read_bytes() == (tmp_path / "two.safetensors").read_bytes()
    # Same content as the library writes, whatever the order of its header.
    save_file(tensors, tmp_path / "lib.safetensors", metadata=metadata)
    one = tmp_path / "one.safetensors"
    assert sha256_file(one) == hashlib.sha256(one.read_bytes()).hexdigest()
    ours, theirs = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "lib.safetensors")
    assert all(torch.equal(ours[k], theirs[k]) for k in tensors)


def test_descendant_files_need_their_provenance_and_configs_name_the_architecture(tmp_path: Path) -> None:
    spec = ViTSpec(depth=1, embed_dim=32, num_heads=2, num_classes=5, img_size=16, patch_size=4)
    descendant = Descendant(state_dict={"w": torch.ones(1)}, architecture=TIMM_ARCHITECTURE,
                            model_args=spec.timm_model_args())
    with pytest.raises(ValueError):
        save_descendant(descendant, {"method": "random"}, tmp_path / "model.safetensors")
    config = descendant_config(descendant, spec)
    assert config["architecture"] == TIMM_ARCHITECTURE and config["model_args"]["depth"] == 1
    assert config["pretrained_cfg"]["input_size"] == [3, 16, 16]
    assert config["num_classes"] == config["pretrained_cfg"]["num_classes"] == 5


def test_a_plain_safetensors_file_is_not_a_learngene(tmp_path: Path) -> None:
    save_file({"w": torch.ones(2)}, tmp_path / "plain.safetensors")
    with pytest.raises(LearngeneError):
        load_learngene(tmp_path / "plain.safetensors")


def test_failed_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("engine.artifacts.os.fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_safetensors({"w": torch.randn(64, 64)}, {}, tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []
