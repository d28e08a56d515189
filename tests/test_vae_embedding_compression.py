"""The VAE and the token embeddings compressed at compress time, and read back bit for bit from Core ML's MIL.

- The VAE is palettized by default and kept only if its images stay ≥ VAE_MIN_PSNR_DB from the source VAE's; a
  planted 1-bit palette (far too coarse for any VAE) fails that gate and the VAE stays uncompressed.
- The text encoders' token tables are stored as int8 codes + one scale per row; in the converted package a constexpr
  op feeding the gather holds them.
- Every check recomputes what it checks its own way: PSNR from the mean squared error in numpy, bits from the size of
  the written file over the source VAE's parameter count, dense weights from the stored bytes with numpy's bit
  unpacking — never through the code under test.

Conversion and MIL readback run on Linux (no prediction). Compress runs on 2 prompts × 8 steps, the UNet left out.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pocketsd.compress.run import CompressOptions, compress_model
from pocketsd.palettize.calibrate import CalibrationSettings
from pocketsd.palettize.recipes import VAE_MIN_PSNR_DB, VAE_RECIPES, Recipe, make_recipe

SETTINGS = CalibrationSettings(count=2, steps=8, batch_size=2)
FAST = make_recipe("w4r0", distill="off")


def _compress(ref_model_path: Path, out: Path, components=("text_encoder", "text_encoder_2", "vae"), **kw) -> dict:
    opts = CompressOptions(out=out, model=str(ref_model_path), recipe=FAST, calibration=SETTINGS,
                           components=components, **kw)
    compress_model(opts)
    return json.loads((out / "pocketsd.json").read_text())


@pytest.fixture(scope="module")
def compressed(ref_model_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vae") / "compressed"
    _compress(ref_model_path, out)
    return out


def _tensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def _unpack(packed: np.ndarray, bits: int, count: int, signed: bool) -> np.ndarray:
    """The format's LSB-first bit stream, read with numpy's bit unpacking (not palettize.packing)."""
    stream = np.unpackbits(packed.astype(np.uint8), bitorder="little")[: count * bits].reshape(count, bits)
    codes = stream.astype(np.int64) @ (1 << np.arange(bits, dtype=np.int64))
    if signed:
        codes = np.where(codes >= 1 << (bits - 1), codes - (1 << bits), codes)
    return codes


def _dense(tensors: dict, record: dict) -> np.ndarray:
    """R of one stored layer, from its bytes: lut[row // G, code] or fp16(scale · code)."""
    shape, bits, name = tuple(record["shape"]), record["bits"], record["name"]
    count = int(np.prod(shape))
    if record["quantizer"] == "palette":
        codes = _unpack(tensors[f"{name}.codes"], bits, count, signed=False).reshape(shape[0], -1)
        lut = tensors[f"{name}.lut"]
        rows = np.arange(shape[0]) // record["group_size"]
        return lut[rows[:, None], codes].reshape(shape)
    codes = _unpack(tensors[f"{name}.codes"], bits, count, signed=True).reshape(shape).astype(np.float32)
    scales = np.repeat(tensors[f"{name}.scales"].astype(np.float32), record["block_size"], axis=1)
    return (scales * codes).astype(np.float16)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = (np.clip(a, -1, 1) + 1) / 2, (np.clip(b, -1, 1) + 1) / 2
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


def test_vae_passes_its_gate_at_the_default_palette_and_bits_count_the_file(compressed, ref_model_path, ref_pipeline):
    from diffusers import AutoencoderKL

    from pocketsd.artifacts.compressed import read_compressed_model
    from pocketsd.models.components import load_compressed_component

    manifest = json.loads((compressed / "pocketsd.json").read_text())
    gate = manifest["vae_gate"]
    assert gate["passed"] and gate["recipe"] == VAE_RECIPES[0] and gate["threshold_db"] == VAE_MIN_PSNR_DB
    vae = manifest["components"]["vae"]
    assert {r["bits"] for r in vae["layers"]} == {int(VAE_RECIPES[0][1])} and vae["layers"]

    # bits per parameter: the written file's bytes over every parameter of the source VAE
    source = AutoencoderKL.from_pretrained(ref_model_path / "vae", torch_dtype=torch.float32).eval()
    params = sum(p.numel() for p in source.parameters())
    file_bytes = (compressed / vae["weights"]).stat().st_size
    assert vae["accounting"]["bits_per_param"] == pytest.approx(8 * file_bytes / params, rel=1e-12)
    assert 8 * file_bytes / params < 12  # below fp16's 16: 8-bit codes, their tables (large on these 8–64-wide
    # layers: 256 entries per 16 rows), fp16 leftovers

    # the written VAE's pictures, against the source's, on samples the gate never saw (other prompts, other seed):
    # decode of their latents and encode→decode of the decoded images
    student = load_compressed_component(read_compressed_model(compressed), "vae", "dense")
    ref_pipeline.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        latents = ref_pipeline(prompt=["a green square on a white background", "a yellow star on black"],
                               num_inference_steps=8, guidance_scale=5.0, output_type="latent",
                               generator=torch.Generator().manual_seed(123)).images
    z = latents / source.config.scaling_factor
    with torch.inference_mode():
        ref_img, out_img = source.decode(z).sample, student.decode(z).sample
        x = ref_img.clamp(-1, 1)
        ref_trip = source.decode(source.encode(x).latent_dist.mode()).sample
        out_trip = student.decode(student.encode(x).latent_dist.mode()).sample
    for i in range(2):
        assert _psnr(ref_img[i].numpy(), out_img[i].numpy()) >= VAE_MIN_PSNR_DB
        assert _psnr(ref_trip[i].numpy(), out_trip[i].numpy()) >= VAE_MIN_PSNR_DB
        assert np.abs(ref_img[i].numpy() - out_img[i].numpy()).max() > 0  # it is compressed, not a copy


def test_too_coarse_vae_fails_the_gate_and_stays_uncompressed(ref_model_path, tmp_path):
    one_bit = Recipe(name="w1r0", bits=1, rank=0, bits_budget=None, distill="off")  # planted: 2 colours per table
    out = tmp_path / "coarse"
    manifest = _compress(ref_model_path, out, ("text_encoder", "vae"), component_recipes={"vae": one_bit})
    gate = manifest["vae_gate"]
    assert not gate["passed"] and [t["recipe"] for t in gate["tried"]] == ["w1r0"]
    assert gate["tried"][0]["min_psnr_db"] < VAE_MIN_PSNR_DB and "uncompressed" in gate["reason"]
    assert "vae" not in manifest["components"]
    for f in (ref_model_path / "vae").iterdir():  # the source's own files, byte for byte
        assert (out / "vae" / f.name).read_bytes() == f.read_bytes()


def test_token_embeddings_are_int8_codes(compressed, ref_model_path):
    manifest = json.loads((compressed / "pocketsd.json").read_text())
    for name in ("text_encoder", "text_encoder_2"):
        comp = manifest["components"][name]
        (emb,) = [r for r in comp["layers"] if r["kind"] == "embedding"]
        tensors = _tensors(compressed / comp["weights"])
        source = _tensors(next((ref_model_path / name).glob("*.safetensors")))
        table = source[f"{emb['name']}.weight"].astype(np.float32)
        assert tuple(emb["shape"]) == table.shape and emb["bits"] == 8 and f"{emb['name']}.weight" not in tensors
        assert tensors[f"{emb['name']}.codes"].nbytes == table.size  # one byte per entry
        assert tensors[f"{emb['name']}.scales"].shape == (table.shape[0], 1)  # one scale per token row
        dense = _dense(tensors, emb).astype(np.float64)
        snr_db = 10 * np.log10(np.sum(table.astype(np.float64) ** 2) / np.sum((dense - table) ** 2))
        assert snr_db == pytest.approx(emb["snr_db"], abs=0.01) and snr_db > 30  # int8: ~40 dB on a table


def test_vae_and_embedding_constexpr_ops_read_back_bit_exact(compressed, tmp_path):
    from pocketsd.cli import main
    from pocketsd.convert.mil_weights import iter_ops, load_program

    out = tmp_path / "bundle"
    assert main(["convert", "--model", str(compressed), "--out", str(out), "--quiet",
                 "--only", "TextEncoder,TextEncoder2,VAEDecoder,VAEEncoder"]) == 0
    manifest = json.loads((compressed / "pocketsd.json").read_text())
    bundle = json.loads((out / "pocketsd.json").read_text())
    packages = {"TextEncoder": ["text_encoder"], "TextEncoder2": ["text_encoder_2"],
                "VAEDecoder": ["vae"], "VAEEncoder": ["vae"]}
    # the reference VAE says force_upcast: its packages compute in fp32, yet hold our codes
    assert bundle["vae_precision"]["precision"] == "float32"
    placed_vae = set()
    for package, comps in packages.items():
        program = load_program(out / "Resources" / f"{package}.mlpackage")
        expected = {}
        for comp in comps:
            tensors = _tensors(compressed / manifest["components"][comp]["weights"])
            for rec in manifest["components"][comp]["layers"]:
                expected[_dense(tensors, rec).astype(np.float16).tobytes()] = (comp, rec)
        gathers = 0
        for op in [o for f in program.functions.values() for o in iter_ops(f)]:
            if op.op_type not in ("constexpr_lut_to_dense", "constexpr_blockwise_shift_scale"):
                continue
            value = np.asarray(op.materialized_val_inference())
            if package.startswith("VAE"):  # an fp32 table: the weight comes out in fp32, its values fp16-exact
                assert value.dtype == np.float32
                assert np.array_equal(value.astype(np.float16).astype(np.float32), value)
            comp, rec = expected[value.astype(np.float16).tobytes()]  # KeyError: a weight that is not ours
            if rec["kind"] == "embedding":
                assert [c.op_type for c in op.outputs[0].child_ops] == ["gather"]
                assert op.op_type == "constexpr_blockwise_shift_scale"
                assert np.array_equal(np.asarray(op.data.val).astype(np.int8).reshape(-1),
                                      _tensors(compressed / manifest["components"][comp]["weights"])
                                      [f"{rec['name']}.codes"].view(np.int8))
                gathers += 1
            if comp == "vae":
                placed_vae.add(rec["name"])
        if package.startswith("TextEncoder"):
            assert gathers == 1
    assert placed_vae == {r["name"] for r in manifest["components"]["vae"]["layers"]}  # every VAE layer, in one of two
