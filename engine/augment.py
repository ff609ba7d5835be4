"""Augmentation of condensing data: the same images seen through random crops, turns, flips and contrasts.

Why: a learngene distilled on one small dataset carries the ancestry's function on that dataset's images only
(report v3: 192-wide students distilled on MNIST digits carry 0.81-0.86 of DINOv2's frozen probe on Fashion-MNIST,
and distilling the 384-wide student on digits *lowered* its probe from weight selection's 0.645 to 0.574).
Feature distillation needs no labels, so any transform widens the inputs the student learns to answer like
its ancestry. ``docs/methods.md`` records what it measured.

Levels (the ``augment`` param of every trained mode):

- ``none``: the images as preprocessed (the default: every result recorded before this module is unchanged).
- ``light``: a random resized crop (area 50-100 % of the image, aspect 3/4-4/3) and a horizontal flip (p 0.5).
- ``strong``: a random resized crop (area 20-100 %), a turn of up to 30 degrees either way, a horizontal flip
  (p 0.5), an inversion within each image's own range (p 0.2), and contrast scaled by 0.6-1.4 around each
  image's mean.

Every transform works on preprocessed (normalized) images and needs no knowledge of the normalization: geometry
resamples (bilinear, reflecting at the borders); inversion (``lowest + highest - x``) and contrast (around the
mean) use each image's own per-channel statistics. Labels are untouched. Feature distillation never reads them;
for a cross-entropy term (``ce_weight``) note that a flip or a turn can change what a digit is (a mirrored 3),
where a garment stays one.

Mixing (the ``mix`` param of every trained mode, independent of the level): a share of a batch's images is
blended with another image of the condensing data, ``lam * x + (1 - lam) * y`` with ``lam`` uniform in 0-1 (mixup
with Beta(1, 1)); the partner is drawn from the whole dataset and seen through its own transforms of the level.
Ancestry and student see the same blend (distillation as function matching: Beyer et al., "Knowledge
distillation: a good teacher is patient and consistent", CVPR 2022, found blended inputs and long schedules the
way to distil a big model without its data). A cross-entropy term takes the label of the image weighted more.

Determinism: the transforms (and the blends) of batch ``step`` are drawn from ``(seed, step)`` alone, on the CPU,
for the whole batch at once; a micro-batch takes its rows' slice. So a resumed run sees exactly the images it
would have seen, and a CPU (micro-batched) and a GPU (whole batch) run see the same ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.methods.params import AUGMENTS  # the levels, named where importing costs no torch


@dataclass(frozen=True)
class Level:
    min_area: float
    max_turn_deg: float
    flip: float
    contrast: tuple[float, float]
    invert: float


LEVELS = {
    "light": Level(min_area=0.5, max_turn_deg=0.0, flip=0.5, contrast=(1.0, 1.0), invert=0.0),
    "strong": Level(min_area=0.2, max_turn_deg=30.0, flip=0.5, contrast=(0.6, 1.4), invert=0.2),
}
ASPECT = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class Draw:
    """One batch's transforms: ``theta`` (batch, 2, 3) maps output to input coordinates (``affine_grid``'s
    convention), ``gain`` (batch,) scales each image around its mean (contrast), ``invert`` (batch,) says which
    images are inverted."""

    theta: torch.Tensor
    gain: torch.Tensor
    invert: torch.Tensor

    def rows(self, start: int, stop: int) -> "Draw":
        return Draw(self.theta[start:stop], self.gain[start:stop], self.invert[start:stop])

    def take(self, index: torch.Tensor) -> "Draw":
        return Draw(self.theta[index], self.gain[index], self.invert[index])


#: The random streams of a batch: its images' transforms (stream 0, as before mixing existed), the blends, and
#: the partners' own transforms.
IMAGES, BLENDS, PARTNERS = 0, 1, 2


def _generator(seed: int, step: int, stream: int = IMAGES) -> torch.Generator:
    # Not the batch order's stream (seed * 1_000_003 + epoch): a distinct, well-mixed seed per (seed, step, stream).
    mixed = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + stream * 0xD6E8FEB86659FD93
             + 0x94D049BB133111EB) % (2 ** 63)
    return torch.Generator().manual_seed(mixed)


class Augment:
    """``draw(n, seed, step)`` the transforms of a batch of ``n`` images, ``apply(images, draw)`` them."""

    def __init__(self, level: str) -> None:
        if level not in LEVELS:
            raise ValueError(f"augment must be one of {list(AUGMENTS)}, got {level!r}")
        self.spec = LEVELS[level]

    @classmethod
    def of(cls, level: str) -> "Augment | None":
        """The augmentation of ``level``; ``None`` for ``"none"``."""
        if level == "none":
            return None
        return cls(level)

    def draw(self, n: int, seed: int, step: int, stream: int = IMAGES) -> Draw:
        spec, g = self.spec, _generator(seed, step, stream)
        uniform = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)  # noqa: E731
        area = uniform(spec.min_area, 1.0)
        aspect = torch.exp(uniform(math.log(ASPECT[0]), math.log(ASPECT[1])))
        half_w = torch.sqrt(area * aspect).clamp(max=1.0)  # half-extents, in units of the image's half-size
        half_h = torch.sqrt(area / aspect).clamp(max=1.0)
        centre_x = uniform(-1.0, 1.0) * (1.0 - half_w)  # the (unturned) crop lies inside the image
        centre_y = uniform(-1.0, 1.0) * (1.0 - half_h)
        turn = uniform(-1.0, 1.0) * math.radians(spec.max_turn_deg)
        flip = torch.where(torch.rand(n, generator=g, dtype=torch.float64) < spec.flip, -1.0, 1.0)
        cos, sin = torch.cos(turn), torch.sin(turn)
        sx, sy = half_w * flip, half_h
        theta = torch.stack([torch.stack([cos * sx, -sin * sy, centre_x], dim=-1),
                             torch.stack([sin * sx, cos * sy, centre_y], dim=-1)], dim=1)
        gain = uniform(*spec.contrast)
        invert = torch.rand(n, generator=g, dtype=torch.float64) < spec.invert
        return Draw(theta.float(), gain.float(), invert)

    def apply(self, images: torch.Tensor, draw: Draw) -> torch.Tensor:
        """``images`` (n, C, H, W), preprocessed, seen through ``draw`` (of n images); fp32, on their device."""
        images = images.float()
        if len(images) == 0:  # a micro-batch none of whose images is blended has no partners: affine_grid refuses it
            return images
        theta, gain = draw.theta.to(images.device), draw.gain.to(images.device)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        out = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if bool(draw.invert.any()):  # dark for light within each image's own range: lowest + highest - x
            flipped = out.amin(dim=(-2, -1), keepdim=True) + out.amax(dim=(-2, -1), keepdim=True) - out
            out = torch.where(draw.invert.to(out.device).view(-1, 1, 1, 1), flipped, out)
        mean = out.mean(dim=(-2, -1), keepdim=True)
        return (mean + gain.view(-1, 1, 1, 1) * (out - mean)).contiguous()


@dataclass(frozen=True)
class Blend:
    """One batch's blends: ``partner`` (batch,) the dataset index each image is blended with, ``lam`` (batch,) its
    own weight (1: not blended)."""

    partner: torch.Tensor
    lam: torch.Tensor

    def rows(self, start: int, stop: int) -> "Blend":
        return Blend(self.partner[start:stop], self.lam[start:stop])

    @property
    def blended(self) -> torch.Tensor:
        """The positions of the images that are blended (``lam`` below 1): only their partners need loading."""
        return torch.nonzero(self.lam < 1.0).flatten()


class Mix:
    """``draw(n, size, seed, step)`` the blends of a batch of ``n`` images from a dataset of ``size``,
    ``apply(images, labels, partners, partner_labels, blend)`` them."""

    def __init__(self, share: float) -> None:
        if not 0.0 < share <= 1.0:
            raise ValueError(f"mix must be in (0, 1], got {share!r}")
        self.share = share

    @classmethod
    def of(cls, share: float) -> "Mix | None":
        """The mixing of ``share`` of the images; ``None`` for 0."""
        return cls(share) if share > 0 else None

    def draw(self, n: int, size: int, seed: int, step: int) -> Blend:
        g = _generator(seed, step, BLENDS)
        partner = torch.randint(size, (n,), generator=g)
        lam = torch.rand(n, generator=g)
        blended = torch.rand(n, generator=g) < self.share
        return Blend(partner, torch.where(blended, lam, torch.ones(n)))

    @staticmethod
    def apply(images: torch.Tensor, labels: torch.Tensor, partners: torch.Tensor, partner_labels: torch.Tensor,
              blend: Blend) -> tuple[torch.Tensor, torch.Tensor]:
        """``images`` (n, C, H, W) blended with ``partners``, those of the ``blend.blended`` images only (both
        preprocessed and already transformed); the labels of the image weighted more (an image's own at ``lam``
        0.5 or more). Unblended images stay as they are."""
        index = blend.blended.to(images.device)
        lam = blend.lam.to(images.device)[index]
        out, labels = images.float().clone(), labels.clone()
        out[index] = lam.view(-1, 1, 1, 1) * out[index] + (1.0 - lam).view(-1, 1, 1, 1) * partners.float()
        labels[index] = torch.where(lam >= 0.5, labels[index], partner_labels.to(labels.device))
        return out.contiguous(), labels
