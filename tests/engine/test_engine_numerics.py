"""engine/numerics.py: order-free arithmetic that still computes what the library calls it replaces."""
from __future__ import annotations

import hashlib
import math
import os

import numpy as np
import pytest
import torch
from timm.layers import resample_abs_pos_embed

from engine.numerics import exact_matmul, fixed_sum, normal_, resample_grid, uniform_

#: sha256 of the first 1000 of 3,000,001 draws of normal_(std 0.02, seed 0), as the torch path of stop 26 made them.
PINNED_NORMAL_SHA256 = "8ec91010aec0f2276065cb8bfb7599b3149591603d2fe0aaa7af11b3c49f00cb"


def test_fixed_sum_adds_every_element_once() -> None:
    values = np.arange(1.0, 1001.0).reshape(1, 1000)
    assert fixed_sum(values, axis=1)[0] == 500500.0
    assert fixed_sum(np.ones((3, 7)), axis=1).tolist() == [7.0, 7.0, 7.0]
    assert fixed_sum(np.zeros((2, 0)), axis=1).tolist() == [0.0, 0.0]


def _halving_reference(values: list[float]) -> float:
    """The documented order, one Python float add at a time: first half plus second half, an odd last carried."""
    while len(values) > 1:
        half = len(values) // 2
        values = [a + b for a, b in zip(values[:half], values[half:2 * half])] + values[2 * half:]
    return values[0]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 31, 1000, 4097])
def test_fixed_sum_pairs_by_position_in_place_as_documented(n: int) -> None:
    """The in-place halving (no allocation per level) keeps the pairs and the order of the one that allocated."""
    values = np.random.default_rng(n).standard_normal(n) * 10.0 ** np.random.default_rng(0).integers(-8, 8, n)
    assert fixed_sum(values)[()] == _halving_reference(values.tolist())
    assert fixed_sum(np.stack([values, -values]), axis=1).tolist() == [_halving_reference(values.tolist()),
                                                                       _halving_reference((-values).tolist())]


def test_exact_matmul_is_closer_to_float64_than_float32_matmul_and_thread_free() -> None:
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 300, 64, generator=generator), torch.randn(64, 512, generator=generator)
    truth = a.double() @ b.double()
    error = (exact_matmul(a, b).double() - truth).abs().max() / truth.abs().max()
    assert error < 4e-7
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = exact_matmul(a, b)
        torch.set_num_threads(2)
        assert torch.equal(one, exact_matmul(a, b))
    finally:
        torch.set_num_threads(threads)


def test_exact_matmul_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        exact_matmul(torch.ones(2, 3), torch.ones(4, 2))


@pytest.mark.parametrize("side, new", [(4, 6), (4, 3), (14, 37), (37, 8), (5, 12)])
def test_resample_grid_is_timms_bicubic_to_float32_rounding(side: int, new: int) -> None:
    pos_embed = torch.randn(1, 1 + side * side, 32, generator=torch.Generator().manual_seed(side))
    ours = resample_grid(pos_embed, 1, (new, new))
    timms = resample_abs_pos_embed(pos_embed, [new, new], num_prefix_tokens=1)
    torch.testing.assert_close(ours, timms, rtol=2e-6, atol=2e-6 * float(timms.abs().max()))
    assert torch.equal(ours[:, :1], pos_embed[:, :1])


def test_the_redrawn_distributions_are_the_ones_they_replace() -> None:
    drawn = normal_(torch.empty(200_000), 0.02, torch.Generator().manual_seed(0))
    assert abs(float(drawn.std()) - 0.02) < 2e-4 and abs(float(drawn.mean())) < 2e-4
    assert float(drawn.abs().max()) <= 6 * 0.02
    bound = 1 / math.sqrt(48)
    spread = uniform_(torch.empty(200_000), bound, torch.Generator().manual_seed(0))
    assert float(spread.min()) >= -bound and float(spread.max()) < bound
    assert abs(float(spread.std()) - bound / math.sqrt(3)) < 1e-3


def test_the_normal_quantile_matches_scipys_within_acklams_bound_in_the_centre_and_tails() -> None:
    from scipy.special import ndtri

    from engine.numerics import standard_normal_quantile

    u = torch.linspace(-1 + 2 ** -23, 1 - 2 ** -23, 400_001)
    z = standard_normal_quantile(u).numpy()
    ref = ndtri((u.double().numpy() + 1.0) * 0.5)
    assert np.all(np.abs(z - ref) <= 1.2e-9 * np.maximum(np.abs(ref), 1e-3))


def test_normal_draws_do_not_depend_on_mkls_code_path_or_torchs_cpu_capability() -> None:
    # On a Xeon, torch's erfinv (timm's trunc_normal_) gave other bits with MKL_CBWR=COMPATIBLE and
    # ATEN_CPU_CAPABILITY=default: every fresh weight of a descendant changed.
    import subprocess
    import sys

    code = ("import torch, hashlib; from engine.numerics import normal_; t = torch.empty(1_000_000); "
            "normal_(t, 0.02, torch.Generator().manual_seed(0), cut=2.0); "
            "print(hashlib.sha256(t.numpy().tobytes()).hexdigest())")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, **env}).stdout
            for env in ({}, {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "default"},
                        {"ATEN_CPU_CAPABILITY": "avx2", "OMP_NUM_THREADS": "3"})}
    assert len(runs) == 1


def test_normal_draws_split_across_threads_keep_their_bits() -> None:
    # Large draws are transformed in one slab per thread: the split must not show in the bits, and the numpy
    # path must give what the former torch path gave (pinned: the first draws of seed 0 at std 0.02).
    draws = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            draws.append(normal_(torch.empty(3_000_001), 0.02, torch.Generator().manual_seed(0)))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(draws[0], other) for other in draws[1:])
    assert hashlib.sha256(draws[0][:1000].numpy().tobytes()).hexdigest() == PINNED_NORMAL_SHA256
