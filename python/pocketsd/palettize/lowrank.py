"""SVDQuant's decomposition of one layer: smoothing, a rank-r fp16 branch, and a quantized residual.

    W·diag(s̃) ≈ L1·L2 + Q(W·diag(s̃) − L1·L2)

- Smoothing migrates activation outliers into the weight: s_j = max|X_j|^α / max|W_{:,j}|^(1−α) per input
  channel; the low-rank branch then absorbs the weight's outliers, leaving a residual that quantizes well.
  α = 0 means no smoothing (s ≡ 1, nothing stored), not the α → 0 limit of the formula.
- Conv weights are handled as their (out, in·kh·kw) matrix; s is repeated over the kernel taps.
- Refinement (SVDQuant §4): L ← SVD_r(Ws − Q(Ws − L)) a few rounds, keeping the round whose *output* error
  on calibration inputs is lowest (each round's factors are rounded to fp16 first, so Q always quantizes the
  residual of exactly what gets stored).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..artifacts.compressed import PALETTE, LayerRecord
from .layer import CompressedLayer
from .quantizers import QuantSpec, Quantized, quantize

ALPHA_GRID = (0.0, 0.25, 0.5, 0.75)
REFINE_ITERS = 3  # rounds of L ← SVD_r(W − Q(W − L)); recipes.Recipe reads its default from here


@dataclass
class Decomposition:
    quant: Quantized
    lowrank_up: torch.Tensor | None  # fp16 (out, r)
    lowrank_down: torch.Tensor | None  # fp16 (r, n)
    smooth: torch.Tensor | None  # fp16 (in,)
    alpha: float
    error: float  # squared output error on the calibration rows (or weight error without calibration)
    signal: float  # squared output norm (same rows)

    @property
    def snr_db(self) -> float:
        return 10 * math.log10(self.signal / max(self.error, 1e-30))

    def effective_weight(self) -> torch.Tensor:
        """The dense weight this decomposition applies to x, (R + L1·L2)/s̃ in the weight's shape (fp32) — what
        the compressed layer computes, without building one (the allocator's end-to-end probes swap it in)."""
        shape = tuple(self.quant.codes.shape)
        w = self.quant.dequantized.float().reshape(shape[0], -1)
        if self.lowrank_up is not None:
            w = w + self.lowrank_up.float() @ self.lowrank_down.float()
        if self.smooth is not None:
            w = w / _expand(self.smooth, w.shape[1] // self.smooth.numel())
        return w.reshape(shape)

    def to_layer(self, name: str, like: torch.nn.Module) -> CompressedLayer:
        """The compressed layer replacing `like` (the float Linear/Conv2d this decomposes), its bias kept."""
        spec = self.quant.spec
        bias = like.bias
        record = LayerRecord(name, "conv" if isinstance(like, torch.nn.Conv2d) else "linear", tuple(self.quant.codes.shape),
                             spec.quantizer, spec.bits, spec.group_size if spec.quantizer == PALETTE else None,
                             spec.block_size if spec.quantizer != PALETTE else None,
                             0 if self.lowrank_up is None else int(self.lowrank_up.shape[1]), self.alpha,
                             self.smooth is not None, bias is not None, self.snr_db)
        return CompressedLayer.from_parts(record, like, self.quant.codes, lut=self.quant.lut, scales=self.quant.scales,
                                          lowrank_up=self.lowrank_up, lowrank_down=self.lowrank_down,
                                          smooth=self.smooth, bias=None if bias is None else bias.detach())


def smoothing_scales(act_max: torch.Tensor, W: torch.Tensor, alpha: float) -> torch.Tensor | None:
    """fp16 per-input-channel s (None for α = 0). act_max: max|X_j| over calibration inputs, shape (in,)."""
    if alpha <= 0 or act_max is None:
        return None
    wmax = W.detach().float().abs().transpose(0, 1).reshape(W.shape[1], -1).amax(1).clamp_min(1e-8)
    s = act_max.float().clamp_min(1e-5).pow(alpha) / wmax.pow(1 - alpha)
    # unnormalized on purpose: the formula already balances max|X_j/s_j| = max|W_j·s_j|, keeping both in fp16 range
    return s.clamp(1e-4, 1e4).to(torch.float16)


def _expand(s: torch.Tensor, taps: int) -> torch.Tensor:
    return s.float().repeat_interleave(taps)


def svd_factors(M: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced rank-r factors (U√S, √S Vᵀ) in fp16.

    Small ranks of large matrices (SDXL: r = 32 of 640–5120) use randomized SVD with power iterations
    (Halko et al.; `torch.svd_lowrank`, seeded so results repeat): it touches the matrix a few times
    instead of factoring it whole. Otherwise the eigendecomposition of the Gram matrix of the smaller
    side, in float64: for the wide matrices here (out × in·k) ~10× faster than a full SVD on CPU and
    exact to well below fp16 precision.
    """
    small = min(M.shape)
    if small > 256 and 4 * rank <= small:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            U, sing, V = torch.svd_lowrank(M.float(), q=min(small, rank + 16), niter=4)
        U, sing, Vh = U[:, :rank].double(), sing[:rank].double(), V[:, :rank].T.double()
    else:
        Md = M.double()
        tall = Md.shape[0] > Md.shape[1]
        A = Md.T if tall else Md  # (small, big)
        evals, evecs = torch.linalg.eigh(A @ A.T)
        evals, evecs = evals.flip(0)[:rank].clamp_min(0), evecs.flip(1)[:, :rank]
        sing = evals.sqrt()
        other = (A.T @ evecs) / sing.clamp_min(1e-30)  # (big, r): the other singular vectors
        U, Vh = (other, evecs.T) if tall else (evecs, other.T)
    root = sing.sqrt()
    return (U * root).to(torch.float16), (root[:, None] * Vh).to(torch.float16)


def _output_error(diff: torch.Tensor, rows: torch.Tensor | None) -> float:
    """Squared output error of a weight difference (out, n) on input rows (m, n); weight error without rows."""
    if rows is None:
        return float(diff.pow(2).sum())
    return float((rows @ diff.T).pow(2).sum())


def smoothed_matrix(W: torch.Tensor, act_max: torch.Tensor | None, alpha: float):
    """(W·diag(s̃) as an (out, in·k) fp32 matrix, s or None) — the matrix the low-rank branch approximates."""
    taps = math.prod(W.shape[2:]) if W.dim() > 2 else 1
    s = smoothing_scales(act_max, W, alpha)
    Wm = W.detach().float().reshape(W.shape[0], -1)
    return (Wm if s is None else Wm * _expand(s, taps)), s


def lowrank_decompose(W: torch.Tensor, rank: int, spec: QuantSpec, rows: torch.Tensor | None = None,
                      act_max: torch.Tensor | None = None, alpha: float = 0.0, iters: int = REFINE_ITERS,
                      probe: bool = False, init_factors: tuple | None = None) -> Decomposition:
    """Decompose one weight (out, in[, kh, kw]) at a given rank, quantizer and smoothing α.

    rows: calibration inputs of this layer as rows of the (in·k)-wide unfolded input (None: weight error).
    probe: a quick estimate for comparing alternatives (fewer k-means rounds); not for storing.
    init_factors: `svd_factors(smoothed_matrix(W, act_max, alpha)[0], R)` for some R ≥ rank, to share one
    SVD among several ranks (balanced factors sorted by singular value truncate to the rank-r SVD).
    """
    shape = tuple(W.shape)
    out = shape[0]
    taps = math.prod(shape[2:]) if len(shape) > 2 else 1
    Wm = W.detach().float().reshape(out, -1)
    s = smoothing_scales(act_max, W, alpha)
    s_full = None if s is None else _expand(s, taps)
    Ws = Wm if s_full is None else Wm * s_full
    xs = None if rows is None else (rows.float() if s_full is None else rows.float() / s_full)
    importance = None if xs is None else xs.pow(2).mean(0)
    signal = _output_error(Wm, None if rows is None else rows.float())
    rank = max(0, min(rank, min(out, Wm.shape[1]) // 2))
    low = torch.zeros_like(Ws)
    up = down = None
    if rank:
        up, down = (init_factors[0][:, :rank], init_factors[1][:rank]) if init_factors else svd_factors(Ws, rank)
        low = up.float() @ down.float()
    best = None
    for round_ in range(iters + 1 if rank else 1):
        q = quantize((Ws - low).reshape(shape), spec, importance, kmeans_iters=15 if probe else 60,
                     kmeans_starts=2 if probe else 6)
        err = _output_error(Ws - low - q.dequantized.float().reshape(out, -1), xs)
        if best is None or err < best.error:
            best = Decomposition(q, up, down, s, alpha if s is not None else 0.0, err, signal)
        if round_ == iters or not rank:
            break
        up, down = svd_factors(Ws - q.dequantized.float().reshape(out, -1), rank)
        low = up.float() @ down.float()
    return best


def compress_layer(W: torch.Tensor, rank: int, spec: QuantSpec, rows: torch.Tensor | None = None,
                   act_max: torch.Tensor | None = None, alpha_grid=ALPHA_GRID, iters: int = REFINE_ITERS) -> Decomposition:
    """Best decomposition over the α grid (by output error). Without calibration only α = 0 is tried.

    α is chosen on the unrefined decomposition (SVD + one quantization), then only the winner is refined.
    """
    grid = alpha_grid if (rows is not None and act_max is not None) else (0.0,)
    if len(grid) == 1:
        return lowrank_decompose(W, rank, spec, rows, act_max, grid[0], iters)
    probes = [lowrank_decompose(W, rank, spec, rows, act_max, a, 0, probe=True) for a in grid]
    alpha = min(probes, key=lambda d: d.error).alpha
    return lowrank_decompose(W, rank, spec, rows, act_max, alpha, iters)
