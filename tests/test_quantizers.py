"""Quantizers, packing, low-rank decomposition, allocation and runtime layers on small synthetic weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pocketsd.palettize.allocate import Candidate, ResponseCurve, allocate, layer_bytes
from pocketsd.artifacts.compressed import LayerRecord
from pocketsd.palettize.layer import CompressedLayer


def _layer(name, kind, shape, quantizer, bits, codes, **tensors):
    """A compressed layer holding exactly these codes and tables/scales (no branch, no smoothing)."""
    like = nn.Linear(shape[1], shape[0], bias=False) if kind == "linear" else \
        nn.Conv2d(shape[1], shape[0], shape[2:], bias=False)
    sizes = {k: tensors.pop(k) for k in ("group_size", "block_size") if k in tensors}
    record = LayerRecord(name, kind, shape, quantizer, bits, **sizes)
    return CompressedLayer.from_parts(record, like, codes, **tensors)


def dequantize_residual(layer):
    return layer.residual()


def effective_weight(layer):
    return layer.effective_weight()


def LowRankQuantLinear(layer, mode):  # noqa: N802  (the dense/packed modes of the one layer type)
    import copy

    return copy.deepcopy(layer).set_mode(mode)


def LowRankQuantConv2d(layer, conv, mode):  # noqa: N802
    import copy

    return copy.deepcopy(layer).set_mode(mode)
from pocketsd.palettize.lowrank import compress_layer, lowrank_decompose, svd_factors
from pocketsd.palettize.packing import pack_codes, packed_nbytes, unpack_codes
from pocketsd.palettize.quantizers import (QuantSpec, quantize, quantize_int_blockwise, quantize_palette,
                                           rtn_per_channel)


def _heavy_tailed(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=g) * 0.05
    w.view(-1)[torch.randint(0, w.numel(), (max(1, w.numel() // 200),), generator=g)] *= 12  # outliers
    return w


# ---- packing ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("count", [1, 7, 1000, 4097])
def test_pack_unpack_round_trip_is_exact(bits, signed, count):
    g = torch.Generator().manual_seed(bits * 100 + count)
    codes = torch.randint(0, 1 << bits, (count,), generator=g, dtype=torch.int16)
    codes = (codes - (1 << (bits - 1))).to(torch.int8) if signed else codes.to(torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_nbytes(count, bits) == math.ceil(count * bits / 8)
    back = unpack_codes(packed, bits, count, signed=signed)
    assert back.dtype == codes.dtype and torch.equal(back, codes)


def test_4bit_layout_is_low_nibble_first():
    packed = pack_codes(torch.tensor([1, 2, 15, 0, 7], dtype=torch.uint8), 4)
    assert packed.tolist() == [0x21, 0x0F, 0x07]
    assert pack_codes(torch.tensor([-1, -8], dtype=torch.int8), 4).tolist() == [0x8F]


def test_unpack_rejects_wrong_length():
    with pytest.raises(ValueError):
        unpack_codes(torch.zeros(3, dtype=torch.uint8), 4, 7)


# ---- dequantization semantics == Core ML iOS18 constexpr ops ---------------------------------------
@pytest.fixture(scope="module")
def coreml_ops():
    from coremltools.converters.mil.mil.ops.defs.iOS18.compression import (constexpr_blockwise_shift_scale,
                                                                           constexpr_lut_to_dense)
    return constexpr_lut_to_dense, constexpr_blockwise_shift_scale


@pytest.mark.parametrize("shape", [(64, 48), (32, 16, 3, 3)])
@pytest.mark.parametrize("bits", [4, 6])
def test_palette_dequantization_matches_constexpr_lut_to_dense(coreml_ops, shape, bits):
    lut_op, _ = coreml_ops
    w = _heavy_tailed(*shape)
    q = quantize_palette(w, bits=bits, group_size=16)
    layer = _layer("l", "linear" if len(shape) == 2 else "conv", shape, "palette", bits, q.codes,
                   group_size=16, lut=q.lut)
    ours = dequantize_residual(layer)
    assert ours.dtype == torch.float16 and torch.equal(ours, q.dequantized)
    # Core ML: indices with the weight's shape, lut (out/G, 1[, 1, 1], 2^b, 1)
    lut = q.lut.numpy().reshape((shape[0] // 16,) + (1,) * (len(shape) - 1) + (1 << bits, 1))
    theirs = lut_op.decompress(q.codes.numpy(), lut, None)
    assert theirs.dtype == np.float16 and np.array_equal(theirs, ours.numpy())
    assert int(q.codes.max()) < (1 << bits)


@pytest.mark.parametrize("shape", [(64, 96), (32, 64, 3, 3)])
@pytest.mark.parametrize("bits", [4, 8])
def test_int_dequantization_matches_constexpr_blockwise_shift_scale(coreml_ops, shape, bits):
    _, bss_op = coreml_ops
    w = _heavy_tailed(*shape)
    q = quantize_int_blockwise(w, bits=bits, block_size=32)
    qmax = (1 << (bits - 1)) - 1
    assert q.codes.dtype == torch.int8 and int(q.codes.abs().max()) <= qmax
    assert q.scales.shape == (shape[0], shape[1] // 32) + tuple(shape[2:])
    layer = _layer("l", "conv", shape, "int4", bits, q.codes, block_size=32, scales=q.scales)
    ours = dequantize_residual(layer)
    assert torch.equal(ours, q.dequantized)
    theirs = bss_op.decompress(q.codes.numpy(), q.scales.numpy(), None)
    assert theirs.dtype == np.float16 and np.array_equal(theirs, ours.numpy())


# ---- quantizer quality ------------------------------------------------------------------------------
def _rel(w, q):
    return float((w - q.dequantized.float()).norm() / w.norm())


def test_palette_and_block_int_beat_per_channel_rtn_and_more_bits_help():
    w = _heavy_tailed(128, 256)
    rtn = _rel(w, rtn_per_channel(w, 4))
    pal4, pal6 = _rel(w, quantize_palette(w, 4, 16)), _rel(w, quantize_palette(w, 6, 16))
    int4, int8 = _rel(w, quantize_int_blockwise(w, 4, 32)), _rel(w, quantize_int_blockwise(w, 8, 32))
    assert pal4 < rtn and int4 < rtn
    assert pal6 < pal4 / 2 and int8 < int4 / 4


def test_kmeans_importance_weights_the_error_where_inputs_are_large():
    w = _heavy_tailed(64, 128, seed=3)
    imp = torch.ones(128)
    imp[:8] = 100.0
    plain, weighted = quantize_palette(w, 4, 16), quantize_palette(w, 4, 16, importance=imp)
    err = lambda q: float((((w - q.dequantized.float()) ** 2) * imp).sum())  # noqa: E731
    assert err(weighted) < err(plain)


def test_group_and_block_sizes_are_fitted_to_odd_widths():
    q = quantize(torch.randn(40, 24), QuantSpec("palette", 4, 16))
    assert q.spec.group_size == 10 and q.lut.shape == (4, 16)
    q = quantize(torch.randn(16, 48), QuantSpec("int4", 4, block_size=32))
    assert q.spec.block_size == 24 and q.scales.shape == (16, 2)


# ---- low-rank + smoothing ---------------------------------------------------------------------------
def test_svd_factors_match_truncated_svd():
    m = torch.randn(48, 200, dtype=torch.float64)
    up, down = svd_factors(m, 8)
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    ref = (u[:, :8] * s[:8]) @ vh[:8]
    assert float((up.double() @ down.double() - ref).norm() / ref.norm()) < 2e-3


def test_randomized_svd_path_matches_truncated_svd_on_large_matrices():
    g = torch.Generator().manual_seed(4)
    # a decaying spectrum plus noise, like trained weights
    m = (torch.randn(600, 40, generator=g) @ torch.randn(40, 700, generator=g)) + 0.05 * torch.randn(600, 700, generator=g)
    up, down = svd_factors(m, 32)  # 4·32 ≤ 600: the randomized path
    u, s, vh = torch.linalg.svd(m.double(), full_matrices=False)
    ref = (u[:, :32] * s[:32]) @ vh[:32]
    assert float((up.double() @ down.double() - ref).norm() / ref.norm()) < 5e-3
    again = svd_factors(m, 32)
    assert torch.equal(up, again[0]) and torch.equal(down, again[1])  # seeded: deterministic


def _optimal_kmeans_sse(x: np.ndarray, k: int) -> float:
    """Exact 1-D k-means by dynamic programming over the sorted values (O(k·n²), small n only)."""
    x = np.sort(x)
    c1, c2 = np.concatenate([[0], x.cumsum()]), np.concatenate([[0], (x * x).cumsum()])
    n = len(x)
    cost = lambda i, j: c2[j] - c2[i] - (c1[j] - c1[i]) ** 2 / (j - i)  # noqa: E731
    best = [cost(0, j) if j else 0.0 for j in range(n + 1)]
    for _ in range(1, k):
        best = [0.0] + [min(best[i] + cost(i, j) for i in range(1, j)) if j > 1 else best[j] for j in range(1, n + 1)]
    return best[n]


def test_multi_start_kmeans_finds_near_optimal_tables_on_heavy_tailed_rows():
    from pocketsd.palettize.quantizers import kmeans_1d

    g = torch.Generator().manual_seed(7)
    # Student-t with 3 degrees of freedom: a normal over sqrt(χ²₃ / 3)
    rows = torch.randn(6, 160, generator=g) / (torch.randn(6, 160, 3, generator=g).pow(2).mean(-1)).sqrt()
    rows[:, :3] *= 8  # a few outliers per row
    sse = lambda c: float(((rows[:, :, None] - c[:, None, :]) ** 2).amin(-1).sum())  # noqa: E731
    one, many = kmeans_1d(rows, 8, starts=1), kmeans_1d(rows, 8, starts=6)
    optimum = sum(_optimal_kmeans_sse(r.numpy().astype(np.float64), 8) for r in rows)
    assert sse(many) <= sse(one) + 1e-6
    assert sse(many) <= 1.03 * optimum, (sse(many), optimum)
    assert torch.equal(many, kmeans_1d(rows, 8, starts=6))  # deterministic


def test_rank_refinement_and_smoothing_reduce_output_error():
    g = torch.Generator().manual_seed(1)
    w = _heavy_tailed(96, 128, seed=1)
    x = torch.randn(256, 128, generator=g)
    x[:, :4] *= 40  # activation outlier channels, as in real diffusion UNets
    amax = x.abs().amax(0)
    spec = QuantSpec("palette", 4, 16)
    r0 = lowrank_decompose(w, 0, spec, x, amax, alpha=0.0)
    r16 = lowrank_decompose(w, 16, spec, x, amax, alpha=0.0, iters=0)
    r16_refined = lowrank_decompose(w, 16, spec, x, amax, alpha=0.0, iters=3)
    best = compress_layer(w, 16, spec, x, amax)
    assert r16.error < r0.error and r16_refined.error <= r16.error
    assert best.alpha > 0 and best.error < r16_refined.error  # smoothing pays off with outlier channels
    assert best.snr_db > r0.snr_db + 3


# ---- allocation -------------------------------------------------------------------------------------
def test_allocation_respects_budget_and_spends_where_error_drops_most():
    cands = {
        "sensitive": [Candidate(0, 4, 1000, 0.10), Candidate(0, 6, 1500, 0.01), Candidate(8, 4, 1400, 0.02)],
        "robust": [Candidate(0, 4, 1000, 0.010), Candidate(0, 6, 1500, 0.009)],
    }
    params = 4000
    choice = allocate(4.8, cands, fixed_bytes=0, total_params=params)  # 2400 bytes: one upgrade of ≤ 400
    assert choice["sensitive"].bytes == 1400 and choice["robust"].bytes == 1000
    choice = allocate(6.0, cands, fixed_bytes=0, total_params=params)  # 3000 bytes: both upgrades fit
    assert sum(c.bytes for c in choice.values()) <= 3000
    assert choice["sensitive"].bits == 6 and choice["robust"].bits == 6


def test_response_curve_interpolates_measured_points_and_is_monotone():
    # measured: a layer whose UNet response grows faster than its own error at large errors
    curve = ResponseCurve([(1e-1, 5e-2), (1e-3, 1e-5), (1e-2, 2e-3)])
    for e, r in [(1e-3, 1e-5), (1e-2, 2e-3), (1e-1, 5e-2)]:
        assert math.isclose(curve(e), r, rel_tol=1e-9)
    assert math.isclose(curve(1e-4), 1e-6, rel_tol=1e-9)  # below the points: proportional (slope 1)
    assert math.isclose(curve(1.0), 0.5, rel_tol=1e-9)  # above too
    mid = curve(math.sqrt(1e-3 * 1e-2))  # log-log midpoint
    assert math.isclose(mid, math.sqrt(1e-5 * 2e-3), rel_tol=1e-9)
    xs = np.logspace(-6, 0, 200)
    ys = [curve(float(x)) for x in xs]
    assert all(b >= a for a, b in zip(ys, ys[1:])) and curve(0.0) == 0.0
    # a noisy measurement that dips is flattened, never rewarded
    dip = ResponseCurve([(1e-3, 1e-4), (1e-2, 5e-5)])
    assert dip(1e-2) >= dip(1e-3) * (1 - 1e-9)


def test_layer_bytes_counts_every_tensor():
    spec = QuantSpec("palette", 4, 16)
    n = layer_bytes((64, 32, 3, 3), spec, rank=8, smoothed=True, has_bias=True)
    assert n == 64 * 288 // 2 + 4 * 16 * 2 + 8 * (64 + 288) * 2 + 32 * 2 + 64 * 2


# ---- runtime layers ---------------------------------------------------------------------------------
def _layer_from(module, quantizer, bits, rank, x):
    w = module.weight.detach()
    rows = x if isinstance(module, nn.Linear) else \
        nn.functional.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride).transpose(1, 2).reshape(-1, w[0].numel())
    amax = x.abs().amax(0) if isinstance(module, nn.Linear) else x.abs().amax((0, 2, 3))
    d = lowrank_decompose(w, rank, QuantSpec(quantizer, bits), rows, amax, alpha=0.5, iters=1)
    return d.to_layer("m", module)


@pytest.mark.parametrize("quantizer,bits", [("palette", 4), ("int4", 4), ("palette", 6), ("int4", 8)])
def test_dense_and_packed_layers_agree_and_approximate_the_original(quantizer, bits):
    torch.manual_seed(0)
    lin = nn.Linear(64, 48)
    x = torch.randn(32, 64)
    layer = _layer_from(lin, quantizer, bits, 8, x)
    dense, packed = LowRankQuantLinear(layer, "dense"), LowRankQuantLinear(layer, "packed")
    with torch.no_grad():
        yd, yp, y = dense(x), packed(x), lin(x)
    assert torch.allclose(yd, yp, atol=1e-5, rtol=1e-4)
    assert float((yd - y).norm() / y.norm()) < (0.15 if bits == 4 else 0.05)
    assert torch.allclose(dense.dense_weight, effective_weight(layer))

    conv = nn.Conv2d(32, 48, 3, padding=1, stride=2)
    xc = torch.randn(2, 32, 8, 8)
    layer = _layer_from(conv, quantizer, bits, 8, xc)
    dense, packed = LowRankQuantConv2d(layer, conv, "dense"), LowRankQuantConv2d(layer, conv, "packed")
    with torch.no_grad():
        yd, yp, y = dense(xc), packed(xc), conv(xc)
    assert yd.shape == y.shape and torch.allclose(yd, yp, atol=1e-5, rtol=1e-4)
    assert float((yd - y).norm() / y.norm()) < (0.15 if bits == 4 else 0.05)
    # packed mode keeps the codes packed: b bits per weight, not a dense copy
    assert packed.codes.numel() == packed_nbytes(conv.weight.numel(), bits)
    assert not hasattr(packed, "weight") or packed.weight is None
    assert "dense_weight" not in dict(packed.named_buffers())
