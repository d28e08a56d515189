"""n-bit codes ⇄ bytes: the storage layout of the compressed UNet's quantization codes.

Layout (the format's definition; `format.py` refers here): the codes of one weight, flattened in
row-major order of the weight's shape, form one little-endian bit stream; code i occupies bits
[i·b, (i+1)·b) with its least significant bit first. For b = 4, code 2k is the low nibble of byte k
and code 2k+1 the high nibble; for b = 8 the bytes are the codes; for b = 6, four codes fill three
bytes. The last byte is zero-padded. Signed codes (the int quantizer) are stored as b-bit two's
complement fields and sign-extended on unpacking.

Written by hand because neither torch nor safetensors has sub-byte dtypes we can store and read back
portably; it is vectorized (no Python loop over elements) so a 5120×1280 layer packs in milliseconds.
"""

from __future__ import annotations

import math

import torch


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes that `count` codes of `bits` bits take once packed."""
    return math.ceil(count * bits / 8)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes (any shape; uint8 in [0, 2^bits) or int8 in [-2^(bits-1), 2^(bits-1))) into uint8."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    flat = codes.reshape(-1).to(torch.int16) & ((1 << bits) - 1)  # two's complement field for signed codes
    if bits == 8:
        return flat.to(torch.uint8)
    if bits == 4:  # the common case, fast path: two codes per byte, low nibble first
        if flat.numel() % 2:
            flat = torch.cat([flat, flat.new_zeros(1)])
        pairs = flat.view(-1, 2)
        return (pairs[:, 0] | (pairs[:, 1] << 4)).to(torch.uint8)
    # General b: expand each code to its bits, then regroup the bit stream into bytes.
    shifts = torch.arange(bits, dtype=torch.int16)
    stream = ((flat[:, None] >> shifts) & 1).reshape(-1)
    pad = (-stream.numel()) % 8
    if pad:
        stream = torch.cat([stream, stream.new_zeros(pad)])
    weights = (1 << torch.arange(8, dtype=torch.int16))
    return (stream.view(-1, 8) * weights).sum(1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, count: int, signed: bool = False) -> torch.Tensor:
    """Inverse of `pack_codes`: the first `count` codes as uint8 (or int8 when `signed`), 1-D."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    if packed.numel() != packed_nbytes(count, bits):
        raise ValueError(f"{packed.numel()} packed bytes cannot hold exactly {count} codes of {bits} bits")
    raw = packed.reshape(-1).to(torch.int16)
    if bits == 8:
        codes = raw
    elif bits == 4:
        codes = torch.stack([raw & 0xF, raw >> 4], dim=1).reshape(-1)[:count]
    else:
        stream = ((raw[:, None] >> torch.arange(8, dtype=torch.int16)) & 1).reshape(-1)
        stream = stream[: count * bits].view(count, bits)
        codes = (stream * (1 << torch.arange(bits, dtype=torch.int16))).sum(1)
    if signed:
        codes = torch.where(codes >= (1 << (bits - 1)), codes - (1 << bits), codes)
        return codes.to(torch.int8)
    return codes.to(torch.uint8)
