"""``builtin:shapes``: procedural condensing data (engine.shapes), reproducible, learnable and joinable."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import shapes
from engine.data import load_dataset
from engine.data_uri import builtin_classes, parse_builtin


def test_shapes_are_the_same_for_the_same_seed_and_differ_for_another() -> None:
    a_images, a_labels = shapes.generate(500, seed=7)
    b_images, b_labels = shapes.generate(500, seed=7)
    c_images, _ = shapes.generate(500, seed=8)
    assert a_images.dtype == np.uint8 and a_images.shape == (500, 28, 28) and a_labels.dtype == np.int64
    assert np.array_equal(a_images, b_images) and np.array_equal(a_labels, b_labels)
    assert not np.array_equal(a_images, c_images)


def test_every_kind_is_drawn_about_equally_and_every_image_shows_something() -> None:
    images, labels = shapes.generate(6000, seed=0)
    counts = np.bincount(labels, minlength=len(shapes.KINDS))
    assert counts.min() > 850 and counts.max() < 1150  # 1,000 each, give or take chance
    # Bright strokes on a dark ground, like the MNISTs: every image has lit pixels and a dark background.
    lit = (images > 128).reshape(len(images), -1).sum(axis=1)
    assert lit.min() > 0 and np.median(lit) < 28 * 28 / 2
    assert np.median(images[:, 0, 0]) < 80
    # Edges are anti-aliased: intermediate gray levels exist, not just two values.
    assert len(np.unique(images)) > 200


@pytest.mark.parametrize("kind", shapes.KINDS)
def test_each_kind_covers_some_pixels_and_not_the_whole_image(kind: str) -> None:
    yy, xx = np.mgrid[0:28, 0:28].astype(np.float32) + 0.5
    distance = shapes._DISTANCE[kind](np.random.Generator(np.random.PCG64(3)), 64, yy, xx, True)
    inside = (distance < 0).reshape(64, -1).sum(axis=1)
    assert inside.min() > 0, f"a labelled {kind} drew nothing"
    assert inside.max() < 28 * 28, f"a labelled {kind} filled the whole image"


def test_the_kind_on_top_is_learnable_from_the_pixels() -> None:
    # The label is the kind drawn last. Shapes move and turn, so raw pixels say little linearly, but how much is lit
    # (a ring or a bar is thin, a disc or a box is solid) already beats chance (1/6): the label is information a
    # condensing run with a head can use, not noise.
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    images, labels = shapes.generate(3000, seed=0)
    histograms = np.stack([np.histogram(image, bins=16, range=(0, 256))[0] for image in images]).astype(np.float64)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(histograms[:2400], labels[:2400])
    assert model.score(histograms[2400:], labels[2400:]) > 0.25


def test_shapes_load_as_a_builtin_dataset_with_splits_and_join_another() -> None:
    assert parse_builtin("builtin:shapes?classes=0-2").classes == (0, 1, 2)
    assert builtin_classes("fashion-mnist+shapes")[10:] == shapes.KINDS
    data = load_dataset("builtin:shapes", img_size=16, in_chans=3)
    assert data.classes == shapes.KINDS
    assert len(data.train) + len(data.val) == shapes.TRAIN_COUNT and len(data.test) == shapes.TEST_COUNT
    images, labels = data.train.batch(torch.arange(8))
    assert images.shape == (8, 3, 16, 16) and images.min() >= -1 and images.max() <= 1
    joined = load_dataset("builtin:fashion-mnist+shapes", img_size=28, in_chans=1)
    assert joined.num_classes == 16 and len(joined.test) == 10_000 + shapes.TEST_COUNT
    assert int((joined.train.labels >= 10).sum()) == len(data.train)
