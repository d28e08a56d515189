"""The two weight quantizers, each mapping 1:1 onto a Core ML iOS18 constexpr op (see format.py):

- `quantize_palette`: a k-means lookup table of 2^b fp16 entries per group of G output channels
  (`constexpr_lut_to_dense`), b ∈ {1, 2, 4, 6, 8}.
- `quantize_int_blockwise`: symmetric integers with one fp16 scale per block of B input channels
  (`constexpr_blockwise_shift_scale`, no offset), b ∈ {4, 8}. `rtn_per_channel` is its B = in, no-clip
  special case (the classic round-to-nearest per-output-channel baseline).

Both accept an optional per-column `importance` (mean squared calibration input of each column of
W.reshape(out, -1)), so their error is the layer's expected output error under a diagonal approximation.

Why our own k-means: coremltools runs sklearn's k-means once per group (~10 s for one 5120×1280 layer).
Scalar k-means needs no distance matrix: with sorted centroids the nearest one is found by a batched
`searchsorted` against the midpoints, so all groups of a layer iterate at once in O(n log k) memory-light steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..artifacts.compressed import INT, PALETTE
from .packing import pack_codes, unpack_codes  # noqa: F401  (re-exported: quantizers own packing too)

PALETTE_BITS = (1, 2, 4, 6, 8)  # the LUT sizes constexpr_lut_to_dense takes (3-bit left out)
INT_BITS = (4, 8)
# The bit widths a layer may take, per quantizer — the one list the format, the allocator and the recipes use.
# Like Apple's mixed-bit palettization, a budget may drop insensitive layers to 1–2-bit palettes and spend what
# that saves on sensitive ones; with {4, 6, 8} alone a 4.5-bit budget leaves almost nothing to move
# (measured on the reference model: 31.5 dB image PSNR against MBP's 37.1 dB at equal size).
BITS = {PALETTE: PALETTE_BITS, INT: INT_BITS}
# Tiling defaults, defined here once (QuantSpec, the quantizers and recipes.Recipe read them): 16 output channels
# per palette table and 32 input channels per int scale, the granularities Core ML's constexpr ops tile by.
DEFAULT_GROUP_SIZE = 16
DEFAULT_BLOCK_SIZE = 32
CLIP_GRID = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)
_CHUNK_ELEMENTS = 1 << 23  # values processed at once by k-means (bounds memory on SDXL-size layers)


@dataclass(frozen=True)
class QuantSpec:
    quantizer: str = PALETTE  # "palette" | "int4"
    bits: int = 4
    group_size: int = DEFAULT_GROUP_SIZE  # palette: output channels per table
    block_size: int = DEFAULT_BLOCK_SIZE  # int: input channels per scale

    def fitted(self, shape: tuple[int, ...]) -> "QuantSpec":
        """The spec with group/block sizes shrunk to divisors of this weight's dims (Core ML needs exact tiling)."""
        if self.quantizer == PALETTE:
            return QuantSpec(self.quantizer, self.bits, _largest_divisor(shape[0], self.group_size), self.block_size)
        return QuantSpec(self.quantizer, self.bits, self.group_size, _largest_divisor(shape[1], self.block_size))


@dataclass
class Quantized:
    codes: torch.Tensor  # weight shape; uint8 (palette) or int8 (int)
    lut: torch.Tensor | None  # fp16 (out/G, 2^b)
    scales: torch.Tensor | None  # fp16 (out, in/B[, kh, kw])
    dequantized: torch.Tensor  # fp16, weight shape: exactly format.dequantize_residual of these codes
    spec: QuantSpec


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


# ---- palette -----------------------------------------------------------------------------------
def _assign(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid for every value; centroids sorted ascending per row."""
    mids = ((centroids[:, 1:] + centroids[:, :-1]) / 2).contiguous()
    if mids.shape[1] > 15:
        return torch.searchsorted(mids, values.contiguous())
    # for 16 entries, 15 vectorized comparisons beat a batched binary search ~5x on CPU
    labels = torch.zeros(values.shape, dtype=torch.uint8)
    for j in range(mids.shape[1]):
        labels += values >= mids[:, j:j + 1]
    return labels


def kmeans_1d(values: torch.Tensor, k: int, weights: torch.Tensor | None = None, iters: int = 60,
              bins: int = 4096, starts: int = 6, seed: int = 0) -> torch.Tensor:
    """Weighted scalar k-means on every row at once. values (rows, n) → centroids (rows, k), sorted.

    In one dimension every cluster is a contiguous range of values. We histogram each row into `bins`
    equal-width bins keeping each bin's exact weighted sum, sum of squares and mass (O(n) scatter-adds, no
    sort), so an iteration is a gather over the bins' prefix sums. Centroids are exact means of the values
    assigned; only cluster borders snap to bin edges (width = range/4096, negligible).

    Lloyd's iterations stop in local minima, and on heavy-tailed weights which one depends on the start.
    So every row runs from `starts` starts at once (weighted quantiles; quantiles plus a few entries
    spread evenly over the range; k-means++ seedings, which give sparse tails their own entries), and
    keeps the run with the lowest exact weighted squared error. (k-means++ seeding is sequential in k, so
    tables above 16 entries use the two quantile starts only: with 64–256 entries the tails get their
    own entries anyway.)
    """
    values = values.float()
    rows = values.shape[0]
    weights = torch.ones_like(values) if weights is None else weights.float().expand_as(values)
    lo = values.amin(1, keepdim=True)
    width = ((values.amax(1, keepdim=True) - lo) / bins).clamp_min(1e-12)
    idx = ((values - lo) / width).long().clamp_(0, bins - 1)
    mass = torch.zeros(rows, bins).scatter_add_(1, idx, weights).double().numpy()
    wsum = torch.zeros(rows, bins).scatter_add_(1, idx, values * weights).double().numpy()
    wsq = torch.zeros(rows, bins, dtype=torch.float64).scatter_add_(
        1, idx, (values.double() ** 2) * weights.double()).numpy()

    # The iterations work on (rows, bins) prefix sums only: small arrays where numpy's per-call overhead is
    # several times lower than torch's, and that overhead is all an iteration costs.
    def prefix(a):
        return np.concatenate([np.zeros((a.shape[0], 1)), a.cumsum(1)], 1)

    cmass, csum, csq = prefix(mass), prefix(wsum), prefix(wsq)
    lo_, width_ = lo.double().numpy(), width.double().numpy()
    inits = _kmeans_starts(mass, wsum, cmass, lo_, width_, k, starts, seed)
    n_start = len(inits)
    # All starts of all rows iterate together: rows are tiled start-major.
    c = np.concatenate(inits, 0)
    tile = lambda a: np.tile(a, (n_start, 1))  # noqa: E731
    lo_t, width_t = tile(lo_), tile(width_)
    first, last = np.zeros((c.shape[0], 1), np.int64), np.full((c.shape[0], 1), bins, np.int64)
    row_base = (np.arange(c.shape[0]) % rows * (bins + 1))[:, None]
    flat_sum, flat_mass, flat_sq = csum.ravel(), cmass.ravel(), csq.ravel()
    tol = 1e-5 * float(width_.max())

    def segments(c):
        cuts = np.ceil(((c[:, 1:] + c[:, :-1]) / 2 - lo_t) / width_t).clip(0, bins).astype(np.int64)
        return np.concatenate([first, cuts, last], 1) + row_base  # flat indices into the prefix sums

    for _ in range(iters):
        edges = segments(c)
        at_sum, at_mass = flat_sum[edges], flat_mass[edges]
        sums, m = at_sum[:, 1:] - at_sum[:, :-1], at_mass[:, 1:] - at_mass[:, :-1]
        with np.errstate(invalid="ignore", divide="ignore"):
            new = np.sort(np.where(m > 0, sums / m, c), axis=1)
        moved = np.abs(new - c).max()
        c = new
        if moved <= tol:  # converged to within a hundredth of a bin
            break
    # exact weighted SSE of each run: Σ w·x² − 2c·Σ w·x + c²·Σ w per cluster
    edges = segments(c)
    seg = lambda flat: flat[edges][:, 1:] - flat[edges][:, :-1]  # noqa: E731
    sse = (seg(flat_sq) - 2 * c * seg(flat_sum) + c * c * seg(flat_mass)).sum(1).reshape(n_start, rows)
    best = sse.argmin(0)
    c = c.reshape(n_start, rows, k)[best, np.arange(rows)]
    return torch.from_numpy(c).float()


def _kmeans_starts(mass, wsum, cmass, lo, width, k, starts, seed) -> list[np.ndarray]:
    """Sorted (rows, k) starting centroids for `kmeans_1d`, deterministic in `seed`."""
    rows, bins = mass.shape

    def quantile_bins(n):
        targets = ((np.arange(n) + 0.5) / n) * cmass[:, -1:]
        return np.stack([np.searchsorted(cmass[r, 1:], targets[r]) for r in range(rows)]).clip(max=bins - 1)

    out = [np.sort(lo + (quantile_bins(k) + 0.5) * width, axis=1)]
    if starts > 1:
        n_even = k // 4
        even = np.linspace(0.5, bins - 0.5, n_even)[None, :].repeat(rows, 0)
        out.append(np.sort(lo + np.concatenate([quantile_bins(k - n_even), even], 1) * width, axis=1))
    if starts > 2 and k <= 16:
        # Seeding only has to land near good minima (Lloyd's iterations on the fine bins do the rest), so it
        # draws from a 16× coarser histogram: seeding dominated the time at full resolution.
        f = 16 if bins % 16 == 0 and bins >= 16 * 4 * k else 1
        cm, cs = mass.reshape(rows, -1, f).sum(2), wsum.reshape(rows, -1, f).sum(2)
        with np.errstate(invalid="ignore", divide="ignore"):
            centers = np.where(cm > 0, cs / cm, lo + (np.arange(bins // f) + 0.5) * width * f)
        rng = np.random.default_rng(seed)
        for _ in range(starts - 2):
            out.append(_kmeanspp(centers, cm, k, rng))
    return out


def _kmeanspp(points: np.ndarray, mass: np.ndarray, k: int, rng) -> np.ndarray:
    """Greedy k-means++ seeding on weighted points, every row at once: each step draws 2 + ⌊ln k⌋
    candidates with probability ∝ mass·(distance to the nearest centroid so far)² and keeps the one that
    lowers the weighted potential most (the variant scikit-learn uses)."""
    rows, n = points.shape
    ar = np.arange(rows)
    trials = 2 + int(math.log(k))

    def draw(p, count):
        cum = p.cumsum(1)
        u = rng.random((rows, count)) * cum[:, -1:]
        return np.minimum(np.stack([(cum < u[:, i:i + 1]).sum(1) for i in range(count)], 1), n - 1)

    chosen = np.empty((rows, k))
    chosen[:, 0] = points[ar, draw(mass, 1)[:, 0]]
    d2 = (points - chosen[:, :1]) ** 2
    for j in range(1, k):
        p = mass * d2
        # a row whose mass is all on chosen points: any point will do (duplicates are harmless)
        p = np.where(p.sum(1, keepdims=True) > 0, p, mass + 1e-30)
        cand = points[ar[:, None], draw(p, trials)]  # (rows, trials)
        new_d2 = np.minimum(d2[:, None, :], (points[:, None, :] - cand[:, :, None]) ** 2)  # (rows, trials, n)
        pick = (new_d2 * mass[:, None, :]).sum(2).argmin(1)
        chosen[:, j] = cand[ar, pick]
        d2 = new_d2[ar, pick]
    return np.sort(chosen, axis=1)


def quantize_palette(W: torch.Tensor, bits: int = 4, group_size: int = DEFAULT_GROUP_SIZE,
                     importance: torch.Tensor | None = None, iters: int = 60, starts: int = 6) -> Quantized:
    """k-means palettization with one 2^bits-entry fp16 table per group of `group_size` output channels."""
    if bits not in PALETTE_BITS:
        raise ValueError(f"palette bits must be one of {PALETTE_BITS}, got {bits}")
    shape = tuple(W.shape)
    out = shape[0]
    if out % group_size:
        raise ValueError(f"group size {group_size} does not divide {out} output channels")
    k = 1 << bits
    n_groups = out // group_size
    rows = W.detach().float().reshape(n_groups, -1)  # consecutive output channels form a group
    cols = rows.shape[1] // group_size
    weights = None
    if importance is not None:
        weights = importance.float().reshape(1, 1, cols).expand(n_groups, group_size, cols).reshape(n_groups, -1)
    per_chunk = max(1, _CHUNK_ELEMENTS // rows.shape[1])
    luts = []
    for start in range(0, n_groups, per_chunk):
        sl = slice(start, start + per_chunk)
        luts.append(kmeans_1d(rows[sl], k, None if weights is None else weights[sl], iters, starts=starts))
    lut = torch.cat(luts).to(torch.float16)
    # Final assignment against the fp16 table actually stored, so codes are nearest for what Core ML sees.
    codes = torch.cat([_assign(rows[sl], lut[sl].float()) for sl in
                       (slice(s, s + per_chunk) for s in range(0, n_groups, per_chunk))])
    codes = codes.to(torch.uint8).reshape(shape)
    deq = torch.gather(lut.repeat_interleave(group_size, 0), 1, codes.reshape(out, -1).long()).reshape(shape)
    return Quantized(codes, lut, None, deq, QuantSpec(PALETTE, bits, group_size))


# ---- int (symmetric, block-wise) ---------------------------------------------------------------
def quantize_int_blockwise(W: torch.Tensor, bits: int = 4, block_size: int = DEFAULT_BLOCK_SIZE,
                           importance: torch.Tensor | None = None, clip_grid=CLIP_GRID) -> Quantized:
    """Symmetric integers in [-(2^(b-1)-1), 2^(b-1)-1], one fp16 scale per block of input channels.

    The clipping ratio of each block is picked from `clip_grid` by (importance-weighted) squared error,
    with the scale rounded to fp16 first so codes are optimal for the scale actually stored.
    """
    if bits not in INT_BITS:
        raise ValueError(f"int bits must be one of {INT_BITS} (Core ML has int4/int8 blocks), got {bits}")
    shape = tuple(W.shape)
    out, cin = shape[0], shape[1]
    if cin % block_size:
        raise ValueError(f"block size {block_size} does not divide {cin} input channels")
    taps = W[0, 0].numel() if W.dim() > 2 else 1
    nb = cin // block_size
    w = W.detach().float().reshape(out, nb, block_size, taps)
    imp = torch.ones(1, 1, block_size, taps) if importance is None else \
        importance.float().reshape(1, nb, block_size, taps)
    qmax = (1 << (bits - 1)) - 1
    amax = w.abs().amax(dim=2, keepdim=True)  # (out, nb, 1, taps)
    best_err = best_scale = None
    for ratio in clip_grid:
        scale = (amax * ratio / qmax).to(torch.float16).float()
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = (w / scale).round().clamp(-qmax, qmax)
        err = ((w - q * scale) ** 2 * imp).sum(dim=2, keepdim=True)
        if best_err is None:
            best_err, best_scale = err, scale
        else:
            better = err < best_err
            best_err, best_scale = torch.where(better, err, best_err), torch.where(better, scale, best_scale)
    codes = (w / best_scale).round().clamp(-qmax, qmax)
    deq = (codes * best_scale).to(torch.float16)  # fp16(scale·code): exact product, one rounding
    scales = best_scale.squeeze(2).to(torch.float16)  # (out, nb, taps)
    scales = scales.reshape(out, nb) if W.dim() == 2 else scales.reshape(out, nb, *shape[2:])
    return Quantized(codes.to(torch.int8).reshape(shape), None, scales, deq.reshape(shape),
                     QuantSpec(INT, bits, block_size=block_size))


def rtn_per_channel(W: torch.Tensor, bits: int = 4) -> Quantized:
    """Round-to-nearest symmetric per-output-channel (one scale per output channel, no clipping search)."""
    if W.dim() > 2:  # one scale over all of (in, kh, kw): treat the conv as its (out, in·k) matrix
        q = quantize_int_blockwise(W.reshape(W.shape[0], -1), bits, W[0].numel(), clip_grid=(1.0,))
        return Quantized(q.codes.reshape(W.shape), None, q.scales, q.dequantized.reshape(W.shape), q.spec)
    return quantize_int_blockwise(W, bits, W.shape[1], clip_grid=(1.0,))


def quantize(W: torch.Tensor, spec: QuantSpec, importance: torch.Tensor | None = None,
             kmeans_iters: int = 60, kmeans_starts: int = 6) -> Quantized:
    """Dispatch on the spec (group/block sizes are fitted to the weight's dims).

    kmeans_iters, kmeans_starts: fewer for quick probes that only need to rank alternatives.
    """
    spec = spec.fitted(tuple(W.shape))
    if spec.quantizer == PALETTE:
        return quantize_palette(W, spec.bits, spec.group_size, importance, kmeans_iters, kmeans_starts)
    if spec.quantizer == INT:
        return quantize_int_blockwise(W, spec.bits, spec.block_size, importance)
    raise ValueError(f"unknown quantizer {spec.quantizer!r}")
