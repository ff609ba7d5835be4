"""Arithmetic whose bits do not depend on the machine: the same inputs give the same float32 outputs whatever the
thread count, the BLAS library and its kernels, or the CPU's vector width.

Why this exists: a descendant is identified by its request, and dedupe, ETags, the ``/hub`` cache and the
regeneration of an evicted descendant all rely on "the same request gives the same bytes" on every worker. Float
addition is not associative, so any kernel free to choose its summation order (a BLAS ``gemm`` blocking by thread
count or by AVX-512 vs AVX2, torch's vectorized reductions, bicubic upsampling compiled per CPU capability, the
vectorized ``normal_``) can return other bits on another machine. Everything here is built from operations whose
result IEEE-754 fixes exactly: element-wise add/multiply (each correctly rounded, independent of SIMD width or
thread split), integer-valued float64 arithmetic below 2**53 (exact in any order), and sums in an order fixed by
the code.
"""
from __future__ import annotations

import concurrent.futures
import functools
import math

import numpy as np
import torch

#: Bits of one float64 significand: integer-valued doubles below 2**53 add and multiply exactly.
_EXACT_BITS = 52


def fixed_sum(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Sum along ``axis`` in float64 by repeated halving (pairwise, the pairs fixed by position): every addition is
    one element-wise IEEE add, so the result does not depend on threads or vector width the way a library
    reduction's order may."""
    work = np.array(np.moveaxis(np.asarray(values), axis, -1), dtype=np.float64)  # a copy of our own
    return fixed_sum_into(work)


def fixed_sum_into(work: np.ndarray) -> np.ndarray:
    """:func:`fixed_sum` along the last axis of a float64 ``work`` array that it may overwrite: the halving runs in
    place (no allocation per level, which dominated on large rows), with the same pairs in the same order: the
    first half plus the second, an odd last element carried to the end."""
    n = work.shape[-1]
    if n == 0:
        return np.zeros(work.shape[:-1])
    while n > 1:
        half = n // 2
        work[..., :half] += work[..., half:2 * half]
        if n % 2:
            work[..., half] = work[..., 2 * half]
        n = half + n % 2
    return work[..., 0].copy()


def _round_to_bits(values: torch.Tensor, dim: int, bits: int) -> torch.Tensor:
    """``values`` (float64) rounded to multiples of 2**(e - bits) along each slice of ``dim``, where 2**e bounds the
    slice's largest magnitude: every element becomes an integer of at most ``bits`` bits times the slice's one
    power of two. Exact apart from that one rounding (round half to even): scaling by powers of two only moves
    exponents."""
    peak = values.abs().amax(dim=dim, keepdim=True)
    exponent = torch.where(peak > 0, torch.frexp(peak).exponent - bits, 0).double()
    scale = torch.exp2(exponent)  # powers of two: exact
    return torch.round(values / scale) * scale


def exact_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` (float32 in, float32 out) that every BLAS, thread count and CPU computes to the same bits.

    Each row of ``a`` and each column of ``b`` is rounded to an integer of a few bits times a power of two of its
    own. Then every product in the dot product of row r and column c is an integer times the same power of two
    2**(e_r + e_c), and with few enough bits every partial sum is an integer below 2**53 times that power: a float64
    ``gemm`` is exact whatever its blocking, order or use of FMA. The one other rounding is the final cast to
    float32. The bits are split evenly, about (52 - log2 k) / 2 each (23 for k = 64): each operand is kept to a
    float32-level error of its row's / column's largest magnitude for contractions of up to a few thousand terms."""
    k = a.shape[-1]
    if b.shape[-2] != k:
        raise ValueError(f"cannot multiply {tuple(a.shape)} by {tuple(b.shape)}")
    budget = _EXACT_BITS - max(1, math.ceil(math.log2(max(k, 2))))
    a_bits, b_bits = budget - budget // 2, budget // 2
    if b_bits < 12:
        raise ValueError(f"a contraction of {k} terms is too long for an exact product")
    return torch.matmul(_round_to_bits(a.double(), -1, a_bits), _round_to_bits(b.double(), -2, b_bits)).float()


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    """The cubic convolution kernel (Keys, a = -0.5: PIL's and torch's antialiased bicubic)."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


@functools.lru_cache(maxsize=64)
def _resample_weights(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) float64 weights of antialiased bicubic resampling with half-pixel centres: the filter
    torch's ``interpolate(mode="bicubic", antialias=True)`` uses (as timm's ``resample_abs_pos_embed`` does), its
    support widened by the scale when shrinking, each row normalized to sum 1 in a fixed order."""
    scale = size_in / size_out
    stretch = max(scale, 1.0)
    support = 2.0 * stretch
    weights = np.zeros((size_out, size_in))
    for i in range(size_out):
        centre = scale * (i + 0.5)
        low = max(int(centre - support + 0.5), 0)
        high = min(int(centre + support + 0.5), size_in)
        taps = _cubic((np.arange(low, high) - centre + 0.5) / stretch)
        total = 0.0
        for tap in taps:
            total += float(tap)
        weights[i, low:high] = taps / total if total != 0 else 0.0
    return weights


def _resample_axis(values: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """``weights`` (out, in) applied along ``axis`` of ``values``, summing the input positions in index order
    (element-wise float64 multiply-adds: no library reduction)."""
    moved = np.moveaxis(values, axis, 0)
    out = np.zeros((weights.shape[0],) + moved.shape[1:])
    for j in range(weights.shape[1]):
        out += weights[:, j].reshape((-1,) + (1,) * (moved.ndim - 1)) * moved[j]
    return np.moveaxis(out, 0, axis)


def resample_grid(pos_embed: torch.Tensor, prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """A (1, prefix + h*w, D) position embedding on a new (H, W) grid by antialiased bicubic resampling (what timm's
    ``resample_abs_pos_embed`` computes, to float32 rounding), computed in float64 in a fixed order; the prefix
    tokens' positions are kept."""
    tokens = pos_embed.shape[1] - prefix
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"{tokens} position tokens are not a square grid")
    values = pos_embed[0, prefix:].double().numpy().reshape(side, side, -1)
    values = _resample_axis(values, _resample_weights(side, grid[0]), 0)
    values = _resample_axis(values, _resample_weights(side, grid[1]), 1)
    resampled = torch.from_numpy(values.reshape(1, grid[0] * grid[1], -1)).float()
    return torch.cat([pos_embed[:, :prefix].float(), resampled], dim=1)


#: Acklam's rational approximation of the standard normal quantile (relative error below 1.2e-9; tested against
#: scipy's ``ndtri``): the central region's numerator (``_ACKLAM_A``) and denominator (``_ACKLAM_B``).
_ACKLAM_A = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02,
             -3.066479806614716e+01, 2.506628277459239e+00)
_ACKLAM_B = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01,
             -1.328068155288572e+01, 1.0)
#: Below this probability (and above 1 minus it) a draw is in the tails, which scipy's ``ndtri`` computes.
_TAIL = 0.02425
#: Elements per pass (the float64 scratch is four rows of it: 2 MiB per thread). Measured on a quiet 2-core AMD
#: EPYC, 86 M draws with two threads, best of two: 2^12 2.2 s, 2^14 0.90-1.13 s, 2^15 0.69 s, 2^16 0.60-0.68 s,
#: 2^17 0.57 s, 2^18 0.54-0.66 s; past 2^16 the gain is within the noise and the scratch grows.
_CHUNK = 1 << 16
#: Draws below which a thread of their own costs more than it saves: one slab.
_SLAB_MIN = 1 << 20
_ACKLAM_TAIL = np.float32(1.0 - 2 * _TAIL)  # the tails' threshold as the float32 draws compare with it


def _quantile_slab(uniform: np.ndarray, out: np.ndarray, std: float, bound: float | None) -> None:
    """``out`` (float32 or float64) = the standard normal quantile of the float32 draws ``uniform`` in [-1, 1),
    times ``std``, cut at +-``bound``; one pass of :data:`_CHUNK` elements at a time through four float64 scratch
    rows. numpy's ufuncs each round once per element (no fused multiply-add across calls, whatever the vector
    width), so the bits are fixed by the order of the calls here: q = u / 2 (exact), r = q * q, then Horner's rule
    for the numerator and the denominator, q * numerator / denominator; the tails' draws are scipy's ``ndtri``."""
    from scipy.special import ndtri

    scratch = np.empty((4, min(_CHUNK, len(uniform))))
    for start in range(0, len(uniform), _CHUNK):
        u = uniform[start:start + _CHUNK]
        q, r, num, den = (row[:len(u)] for row in scratch)
        np.multiply(u, 0.5, out=q, dtype=np.float64)  # p - 0.5, exact
        np.multiply(q, q, out=r)
        num.fill(_ACKLAM_A[0])
        den.fill(_ACKLAM_B[0])
        for a, b in zip(_ACKLAM_A[1:], _ACKLAM_B[1:]):
            np.multiply(num, r, out=num)
            np.add(num, a, out=num)
            np.multiply(den, r, out=den)
            np.add(den, b, out=den)
        np.multiply(num, q, out=num)
        np.divide(num, den, out=num)
        tails = np.flatnonzero(np.abs(u) > _ACKLAM_TAIL)
        if len(tails):
            num[tails] = ndtri((u[tails].astype(np.float64) + 1.0) * 0.5)  # (u + 1) / 2 exact in float64
        if std != 1.0:
            np.multiply(num, std, out=num)
        if bound is not None:
            np.clip(num, -bound, bound, out=num)
        out[start:start + len(u)] = num


def _quantile_into(uniform: np.ndarray, out: np.ndarray, std: float = 1.0, bound: float | None = None) -> None:
    """:func:`_quantile_slab` over flat arrays, split into one contiguous slab per thread of the job's budget
    (torch's thread count): element-wise work, so the split changes nothing in the bits."""
    workers = min(max(1, torch.get_num_threads()), max(1, len(uniform) // _SLAB_MIN))
    if workers == 1:
        _quantile_slab(uniform, out, std, bound)
        return
    edges = [len(uniform) * i // workers for i in range(workers + 1)]
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="normal-quantile") as pool:
        jobs = [pool.submit(_quantile_slab, uniform[low:high], out[low:high], std, bound)
                for low, high in zip(edges, edges[1:])]
        for job in jobs:
            job.result()


def standard_normal_quantile(uniform: torch.Tensor) -> torch.Tensor:
    """z with P(Z < z) = (u + 1) / 2 for float32 draws ``u`` in [-1, 1), in float64, with the same bits on every
    CPU: additions, multiplications and divisions in float64 (each correctly rounded, whatever the vector unit)
    for the central 95 %, scipy's ``ndtri`` (compiled C, no torch or MKL dispatch) for the tails."""
    flat = uniform.detach().reshape(-1).contiguous().numpy()
    out = np.empty(flat.shape, dtype=np.float64)
    _quantile_into(flat, out)
    return torch.from_numpy(out).view(uniform.shape)


def normal_(tensor: torch.Tensor, std: float, generator: torch.Generator | None = None,
            cut: float | None = None) -> torch.Tensor:
    """Fill ``tensor`` (float32) with N(0, std) draws cut at ``cut`` (absolute; None: 6 std), by inverse transform
    of uniform draws in [-1, 1), as timm's ``trunc_normal_`` does (``erfinv(u) * std * sqrt(2)``), with the same
    bits on every CPU. Neither of torch's ways is: its ``normal_`` is a vectorized Box-Muller on AVX2 machines and
    a scalar one elsewhere, and its ``erfinv`` (like ``log``, ``exp`` and ``sqrt``) goes through MKL's vector math
    on Intel CPUs, whose last bits change with the CPU and ``MKL_CBWR`` (found on a Xeon: every fresh weight
    differed). The quantile is :func:`standard_normal_quantile`, rounded once to float32 at the end.

    The uniform draws land in ``tensor`` itself and are transformed in place a chunk at a time: the float64 work
    never holds more than a few chunks, whatever the tensor's size."""
    bound = 6 * std if cut is None else cut
    with torch.no_grad():
        work = tensor if tensor.is_contiguous() and tensor.dtype == torch.float32 else \
            torch.empty(tensor.shape, dtype=torch.float32)
        uniform_(work, 1.0, generator)
        flat = work.view(-1).numpy()
        _quantile_into(flat, flat, std, bound)  # each chunk is read before it is overwritten
        if work is not tensor:
            tensor.copy_(work)
    return tensor


def uniform_(tensor: torch.Tensor, bound: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill ``tensor`` with U(-bound, bound) draws that are the same on every CPU: torch's ``uniform_(a, b)``
    computes ``a + (b - a) * u``, fused into one rounding on AVX2 machines and not elsewhere; for a = -1, b = 1 both
    are exact, and the scaling by ``bound`` after is one correctly rounded multiply."""
    with torch.no_grad():
        tensor.uniform_(-1.0, 1.0, generator=generator)
        if bound != 1.0:
            tensor.mul_(bound)
    return tensor
