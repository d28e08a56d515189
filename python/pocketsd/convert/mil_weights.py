"""Our codes, tables and scales → Core ML iOS18 constexpr ops, inside ct.convert.

How (what works in coremltools 9.0): each compressed layer, in its "export" mode (palettize/layer.py), carries
its residual R as a dense fp32 tensor whose values are exactly the fp16 dequantized residual. After the default MIL pipeline
(including the fp16 cast) that weight is an fp16 `const` bit-identical to R. A graph pass appended to
the pipeline finds those consts by their fp16 bytes and swaps each for
  - `constexpr_lut_to_dense(indices=our codes as uint{b}, lut=our tables)`     (palette), or
  - `constexpr_blockwise_shift_scale(data=our codes as int{b}, scale=our scales)` (int),
built with `mb` from the compressed folder's arrays, so nothing is re-clustered or re-quantized.
A const that no pass should have touched but that we cannot find makes the conversion fail loudly
(see `CompressedWeights.missing`). `verify_package` then reads the saved .mlpackage back and
decompresses every constexpr op to check it against R bit for bit.

An fp32 program (a VAE whose config says `force_upcast`: SDXL's overflows in fp16 activations) keeps its weight
consts in fp32; R's values are fp16-exact there too, so the pass matches an fp32 const whose values are exactly
R's and builds the same op with an fp32 table (palette; iOS18's op takes either), or the fp16 int op followed by a
cast to fp32 (an fp32 scale would skip R's rounding of each product): the package stores the same codes, the model
computes in fp32, and the decompressed weight is bit-identical to R.

coremltools' own `palettize_weights`/`linear_quantize_weights` cannot be used: they compute new
tables/scales from the weight values instead of taking ours.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np

from ..palettize.layer import CompressedLayer

PASS_NAME = "pocketsd::use_compressed_codes"


def fp16_key(values) -> str:
    """Identity of a weight by its fp16 bytes (shape-agnostic: (o,i) and (o,i,1,1) share a key)."""
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().numpy()
    return hashlib.sha1(np.ascontiguousarray(values.astype(np.float16)).tobytes()).hexdigest()


def weight_key(values: np.ndarray) -> str | None:
    """`fp16_key` of an fp16 array, or of an fp32 array whose every value is fp16-exact (an fp32 program's copy of
    R); None for anything else (an fp32 const rounded to fp16 would match R without being it)."""
    if values.dtype == np.float16:
        return fp16_key(values)
    if values.dtype == np.float32 and np.array_equal(values.astype(np.float16).astype(np.float32), values):
        return fp16_key(values)
    return None


def _register():
    from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY, register_pass

    if PASS_NAME in PASS_REGISTRY:
        return

    @register_pass(namespace="pocketsd")
    class use_compressed_codes(AbstractGraphPass):  # noqa: N801 (coremltools names passes in snake case)
        # The layers to place; set by `CompressedWeights.active()` around one ct.convert call.
        table: "CompressedWeights | None" = None

        def apply(self, prog):
            if use_compressed_codes.table is None:
                return
            for function in prog.functions.values():
                _replace_in_block(function, use_compressed_codes.table)


def _replace_in_block(block, table: "CompressedWeights") -> None:
    from coremltools.converters.mil.mil import Builder as mb  # noqa: F401 (opens the builder context)

    for op in list(block.operations):
        for inner in op.blocks:
            _replace_in_block(inner, table)
        if op.op_type != "const":
            continue
        val = op.outputs[0].val
        if not isinstance(val, np.ndarray) or val.dtype not in (np.float16, np.float32) or val.size < 8:
            continue
        key = weight_key(val)
        layer = None if key is None else table.by_key.get(key)
        if layer is None:
            continue
        with block:
            new_var = constexpr_for(layer, val.shape, before_op=op, name=f"{op.name}_pocketsd_{layer.quantizer}",
                                    dtype=val.dtype)
        block.replace_uses_of_var_after_op(anchor_op=op, old_var=op.outputs[0], new_var=new_var, no_check_var_types=True)
        block.remove_ops([op])
        table.placed[layer.name] += 1


def constexpr_for(layer: CompressedLayer, shape: tuple[int, ...], before_op=None, name: str | None = None,
                  dtype=np.float16):
    """The iOS18 constexpr op for one compressed layer, shaped as the const it replaces; `dtype` (the const's:
    fp16, or fp32 in an fp32 program) is the table's or scale's, and so the decompressed weight's."""
    from coremltools.converters.mil.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    shape = tuple(int(x) for x in shape)
    codes = layer.unpacked_codes().numpy().reshape(shape)
    kwargs = {"before_op": before_op} if before_op is not None else {}
    if name:
        kwargs["name"] = name
    if layer.quantizer == "palette":
        n_groups = layer.lut.shape[0]
        lut = layer.lut.numpy().astype(dtype).reshape((n_groups,) + (1,) * (len(shape) - 1) + (2 ** layer.bits, 1))
        indices = codes.astype(types.nptype_from_builtin(types.string_to_builtin(f"uint{layer.bits}")))
        return mb.constexpr_lut_to_dense(indices=indices, lut=lut, **kwargs)
    scales = layer.scales.numpy().astype(np.float16)
    scales = scales.reshape(scales.shape + (1,) * (len(shape) - scales.ndim))
    data = codes.astype(types.nptype_from_builtin(types.string_to_builtin(f"int{layer.bits}")))
    if dtype == np.float16:
        return mb.constexpr_blockwise_shift_scale(data=data, scale=scales, **kwargs)
    # An fp32 scale would give the exact product scale·code, which R rounds to fp16 (as Core ML does with an fp16
    # scale): decompress in fp16, then widen (exact), so the fp32 program's weight is R bit for bit.
    kwargs.pop("name", None)
    half = mb.constexpr_blockwise_shift_scale(data=data, scale=scales, **kwargs)
    return mb.cast(x=half, dtype="fp32", **({"name": name} if name else {}), **kwargs)


class CompressedWeights:
    """The compressed layers of one conversion, looked up by the fp16 bytes of their residual."""

    def __init__(self, layers: dict[str, CompressedLayer]):
        self.layers = dict(layers)
        self.by_key = {fp16_key(m.residual()): m for m in layers.values()}
        self.placed: Counter = Counter()

    @contextlib.contextmanager
    def active(self):
        _register()
        from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY

        cls = type(PASS_REGISTRY[PASS_NAME])
        cls.table, self.placed = self, Counter()
        try:
            yield
        finally:
            cls.table = None

    def missing(self, expected: set[str] | None = None) -> list[str]:
        names = set(self.layers) if expected is None else expected
        return sorted(n for n in names if not self.placed[n])


def pass_pipeline():
    """coremltools' default pipeline with our replacement pass at the end (after the fp16 cast)."""
    import coremltools as ct

    _register()
    pipeline = ct.PassPipeline.DEFAULT
    pipeline.append_pass(PASS_NAME)
    return pipeline


# ---- reading back -----------------------------------------------------------------------------
def load_program(package: Path):
    """The MIL program of a saved .mlpackage, without compiling or loading it (works on Linux)."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    model = ct.models.MLModel(str(package), skip_model_load=True)
    spec = model.get_spec()
    return milproto_load(spec, spec.specificationVersion, model.weights_dir)


def iter_ops(block):
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from iter_ops(inner)


def decompressed_weights(program) -> dict[str, np.ndarray]:
    """Every constexpr op's dense value (as Core ML would materialise it), by op name, all functions."""
    out = {}
    for fname, function in program.functions.items():
        for op in iter_ops(function):
            if op.op_type in ("constexpr_lut_to_dense", "constexpr_blockwise_shift_scale"):
                out[f"{fname}/{op.name}"] = np.asarray(op.materialized_val_inference())
    return out


def verify_package(package: Path, layers: dict[str, CompressedLayer]) -> dict:
    """Decompress every constexpr weight of `package` and match it bit for bit against our R.

    `layers` maps layer name → CompressedLayer. Returns counts; raises AssertionError on any mismatch.
    """
    expected = {fp16_key(layer.residual()): name for name, layer in layers.items()}
    dense = decompressed_weights(load_program(package))
    matched, foreign = Counter(), []
    for op_name, value in dense.items():
        key = weight_key(np.asarray(value))
        name = None if key is None else expected.get(key)
        if name is None:
            foreign.append(op_name)
        else:
            matched[name] += 1
    if foreign:
        raise AssertionError(f"{len(foreign)} constexpr weights in {package.name} match no compressed layer, e.g. {foreign[0]}")
    return {"constexpr_ops": len(dense), "layers_matched": len(matched), "bit_exact": True}
