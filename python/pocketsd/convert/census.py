"""What is inside a Core ML package or bundle, read from the saved MIL program (no Core ML runtime).

`census(package)`: ops by type per function, constexpr weights by kind, weight bytes (the weight blob on
disk) and the bytes each kind of weight takes. `describe(bundle)`: the text `pocketsd info` prints.
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


def _mb(n: int) -> str:
    return f"{n / 2**20:.2f} MB"


def describe(path: Path) -> str:
    """`pocketsd info BUNDLE`: components, shapes, sizes, precision, compressed-weight census."""
    from ..artifacts import read_json
    from .bundle import MANIFEST, RESOURCES

    path = Path(path)
    lines = [f"Core ML bundle {path}"]
    manifest = read_json(path / MANIFEST) if (path / MANIFEST).is_file() else {}
    if not manifest:
        lines.append("  (no pocketsd.json manifest: listing packages only)")
    opts = manifest.get("options", {})
    if manifest:
        src = manifest.get("source_model", {})
        lines.append(f"  source: {src.get('spec')} ({src.get('kind')}), model type {manifest.get('model_type')}, "
                     f"image {manifest.get('image_size')}, target {opts.get('target')}, attention {opts.get('attention')}, "
                     f"UNet batch {opts.get('unet_batch')}")
        vae = manifest.get("vae_precision", {})
        lines.append(f"  VAE precision: {vae.get('precision')} — {vae.get('reason')}")
        lines.append(f"  compiled (.mlmodelc): {manifest.get('compiled')}")
    comps = manifest.get("components", {})
    packages = sorted((path / RESOURCES).glob("*.mlpackage")) if (path / RESOURCES).is_dir() else sorted(path.glob("*.mlpackage"))
    total = 0
    for pkg in packages:
        name = pkg.stem
        entry = comps.get(name, {})
        info = entry.get("census") or census(pkg)
        size = entry.get("bytes") or info["package_bytes"]
        total += size
        ins = ", ".join(f"{i['name']}{tuple(i['shape'])}" for i in entry.get("inputs", []))
        outs = ", ".join(f"{o['name']}{tuple(o['shape'])}" for o in entry.get("outputs", []))
        lines.append(f"  {name}: {_mb(size)}, {entry.get('compute_precision', '?')}"
                     + (f", {entry['convert_seconds']} s / {entry['peak_rss_mb']} MB peak RSS to convert" if entry else ""))
        if ins:
            lines.append(f"      in: {ins}  →  out: {outs}")
        for fname, f in info["functions"].items():
            top = ", ".join(f"{k} {v}" for k, v in list(f["ops"].items())[:8])
            cx = ", ".join(f"{k} {v}" for k, v in f["constexpr"].items()) or "none"
            lines.append(f"      function {fname}: ops {top} …; compressed weights: {cx}")
        if "verify" in entry:
            v = entry["verify"]
            lines.append(f"      round-trip: {v['layers_matched']} layers, {v['constexpr_ops']} constexpr ops, bit-exact {v['bit_exact']}")
        if entry.get("functions") and len(entry["functions"]) > 1:
            lines.append(f"      functions {entry['functions']}; one function alone: {_mb(entry['single_function_bytes'])}")
    lines.append(f"  total: {_mb(total)}")
    acc = manifest.get("compressed_source", {}).get("accounting")
    if acc:
        cs = manifest["compressed_source"]
        lines.append(f"  compressed UNet accounting: {_mb(acc['total_bytes'])} ({acc['bits_per_param']:.2f} bits/param); "
                     f"UNet weight blob in the bundle: {_mb(cs.get('bundle_unet_blob_bytes', 0))} "
                     f"(×{cs.get('blob_vs_accounting', float('nan')):.3f} of the accounting)")
    if manifest.get("compile_hint") and not manifest.get("compiled"):
        lines.append(f"  {manifest['compile_hint']}")
    return "\n".join(lines)
