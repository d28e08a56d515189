"""What is inside a Core ML package or bundle, read from the saved MIL program (no Core ML runtime).

`census(package)`: ops by type per function, constexpr weights by kind, weight bytes (the weight blob on
disk) and the bytes each kind of weight takes.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

COMPRESSED_OPS = ("constexpr_lut_to_dense", "constexpr_blockwise_shift_scale")


def _nbytes(val) -> int:
    """Bytes a const takes in the blob: sub-byte dtypes (uint4/int4/…) count their bits."""
    if not isinstance(val, np.ndarray):
        return 0
    bits = None
    meta = getattr(val.dtype, "metadata", None) or {}
    for v in meta.values():
        name = getattr(v, "__name__", str(v))
        digits = "".join(ch for ch in name if ch.isdigit())
        if digits:
            bits = int(digits)
    return (val.size * bits + 7) // 8 if bits else int(val.nbytes)


def census(package: Path) -> dict:
    from .mil_weights import iter_ops, load_program

    package = Path(package)
    program = load_program(package)
    functions = {}
    for fname, function in program.functions.items():
        ops = Counter()
        weight_bytes = Counter()
        for op in iter_ops(function):
            ops[op.op_type] += 1
            if op.op_type in COMPRESSED_OPS:
                weight_bytes[op.op_type] += sum(_nbytes(v.val) for v in op.inputs.values() if v.val is not None)
            elif op.op_type == "const" and all(c.op_type not in COMPRESSED_OPS for c in op.outputs[0].child_ops):
                size = _nbytes(op.outputs[0].val)
                if size >= 64:  # tensors, not shape/axis scalars
                    weight_bytes["dense_" + str(op.outputs[0].val.dtype)] += size
        functions[fname] = {"ops": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
                            "constexpr": {k: ops[k] for k in COMPRESSED_OPS if ops[k]},
                            "weight_bytes_by_kind": dict(weight_bytes)}
    blob = sorted(package.rglob("weight.bin"))
    return {"functions": functions, "weight_blob_bytes": sum(f.stat().st_size for f in blob),
            "package_bytes": sum(f.stat().st_size for f in package.rglob("*") if f.is_file())}
