"""`pocketsd convert` end to end (Core ML conversion on Linux: packages, MIL program, weights; no prediction).

One session bundle is converted once (compressed reference model, chunked UNet) and read by most tests;
the multifunction and original-attention tests use a small UNet so they convert in seconds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from convert_support import compress_quickly, compressed_unet_layers, tiny_unet_pipeline
from pocketsd.cli import main
from pocketsd.convert.bundle import ConvertOptions, package_sha256
from pocketsd.convert.run import convert_bundle
from pocketsd.errors import BadInput

COMPONENTS = ["TextEncoder", "TextEncoder2", "VAEDecoder", "VAEEncoder", "UnetChunk1", "UnetChunk2"]


@pytest.fixture(scope="session")
def compressed_model(tiny_model, tmp_path_factory) -> Path:
    # The reference model with a smaller UNet: everything a bundle has, converted in about a minute.
    return compress_quickly(tiny_model, tmp_path_factory.mktemp("cv") / "compressed", min_numel=1024)


@pytest.fixture(scope="session")
def style_lora(compressed_model, tmp_path_factory) -> Path:
    """A LoRA made here (random B, A of the right shapes) on six compressed layers."""
    import torch
    from safetensors.torch import save_file

    layers = compressed_unet_layers(compressed_model)
    g = torch.Generator().manual_seed(0)
    sd = {}
    for name, layer in list(layers.items())[:6]:
        k = int(np.prod(layer.shape[1:]))
        sd[f"unet.{name}.lora_A.weight"] = (torch.randn(4, k, generator=g) * 0.01).reshape(4, *layer.shape[1:])
        sd[f"unet.{name}.lora_B.weight"] = (torch.randn(layer.shape[0], 4, generator=g) * 0.01).reshape(
            layer.shape[0], 4, *([1] * (len(layer.shape) - 2)))
    path = tmp_path_factory.mktemp("cv") / "style.safetensors"
    save_file(sd, str(path))
    return path


@pytest.fixture(scope="session")
def bundle(compressed_model, style_lora, tmp_path_factory) -> Path:
    """Compressed model, chunked UNet, two functions per chunk (main + the style LoRA): converted once."""
    out = tmp_path_factory.mktemp("cv") / "bundle"
    convert_bundle(ConvertOptions(model=str(compressed_model), out=out, chunk_unet=True, lora_functions=[style_lora]),
                   log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def tiny_model(convert_model_path, tmp_path_factory) -> Path:
    return tiny_unet_pipeline(convert_model_path, tmp_path_factory.mktemp("cv") / "tiny")


def _manifest(out: Path) -> dict:
    return json.loads((out / "pocketsd.json").read_text())


def test_bundle_layout_and_manifest(bundle):
    res = bundle / "Resources"
    for name in COMPONENTS:
        assert (res / f"{name}.mlpackage" / "Manifest.json").is_file()
    assert not (res / "Unet.mlpackage").exists()
    vocab = json.loads((res / "vocab.json").read_text())
    merges = (res / "merges.txt").read_text().splitlines()
    assert "<|endoftext|>" in vocab and merges[0].startswith("#version") and len(merges) > 1
    m = _manifest(bundle)
    assert m["kind"] == "coreml" and m["model_type"] == "sdxl" and set(m["components"]) == set(COMPONENTS)
    for name, c in m["components"].items():
        assert c["sha256"][f"Resources/{name}.mlpackage"] == package_sha256(res / f"{name}.mlpackage")
        assert c["convert_seconds"] > 0 and c["peak_rss_mb"] > 0 and c["bytes"] > 0
    # Apple's Swift names: TextEncoderXL reads hidden_embeds/pooled_outputs from input_ids.
    te = m["components"]["TextEncoder2"]
    assert [i["name"] for i in te["inputs"]] == ["input_ids"] and te["inputs"][0]["shape"] == [1, 77]
    assert [o["name"] for o in te["outputs"]] == ["hidden_embeds", "pooled_outputs"]
    c1 = m["components"]["UnetChunk1"]
    assert [i["name"] for i in c1["inputs"]] == ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"]
    ehs = c1["inputs"][2]["shape"]
    assert ehs[0] == 2 and ehs[2:] == [1, 77]  # Apple's (B, C, 1, 77) layout, batch 2 for CFG
    assert m["components"]["UnetChunk2"]["outputs"][0]["name"] == "noise_pred"
    assert [i["name"] for i in m["components"]["VAEDecoder"]["inputs"]] == ["z"]
    assert [o["name"] for o in m["components"]["VAEEncoder"]["outputs"]] == ["latent"]
    # The reference VAE is not marked fp16-safe, so both VAE packages stay fp32 and the manifest says why.
    assert m["vae_precision"]["precision"] == m["components"]["VAEDecoder"]["compute_precision"] == "float32"
    assert "force_upcast" in m["vae_precision"]["reason"]
    assert m["compiled"] is False and "xcrun coremlcompiler compile" in m["compile_hint"]


def test_chunks_interface_matches_and_weights_add_up(bundle, compressed_model):
    m = _manifest(bundle)
    c1, c2 = m["components"]["UnetChunk1"], m["components"]["UnetChunk2"]
    outs1 = {o["name"]: o["shape"] for o in c1["outputs"]}
    ins2 = {i["name"]: i["shape"] for i in c2["inputs"]}
    originals = {i["name"]: i["shape"] for i in c1["inputs"]}
    # Swift feeds chunk 2 with chunk 1's outputs merged with the original inputs.
    for name, shape in ins2.items():
        assert outs1.get(name, originals.get(name)) == shape, name
    assert set(outs1) <= set(ins2)
    # Every compressed layer is in exactly one chunk, and both chunks hold about half the weight bytes.
    v1, v2 = c1["verify"], c2["verify"]
    n_layers = len(json.loads((compressed_model / "pocketsd.json").read_text())["components"]["unet"]["layers"])
    assert v1["layers_matched"] + v2["layers_matched"] == n_layers
    b1, b2 = c1["census"]["weight_blob_bytes"], c2["census"]["weight_blob_bytes"]
    assert 0.25 < b1 / (b1 + b2) < 0.75


def test_compressed_weights_round_trip_bit_exact(bundle, compressed_model):
    """Decompress every constexpr weight of the saved packages; each equals our dequantized residual."""
    from pocketsd.convert.mil_weights import decompressed_weights, fp16_key, load_program

    layers = compressed_unet_layers(compressed_model)
    expected = {fp16_key(l.residual()): n for n, l in layers.items()}
    found = {}
    for chunk in ("UnetChunk1", "UnetChunk2"):
        program = load_program(bundle / "Resources" / f"{chunk}.mlpackage")
        for op_name, value in decompressed_weights(program).items():
            assert value.dtype == np.float16
            name = expected.get(fp16_key(value))
            assert name is not None, f"{chunk}/{op_name} is not any layer's residual bit for bit"
            assert value.shape[:2] == layers[name].shape[:2]
            found[name] = op_name
    assert set(found) == set(layers)
    census = _manifest(bundle)["components"]["UnetChunk1"]["census"]["functions"]["main"]["constexpr"]
    assert census.get("constexpr_lut_to_dense", 0) > 0 and census.get("constexpr_blockwise_shift_scale", 0) > 0


def test_bundle_bytes_close_to_accounting(bundle, compressed_model):
    m = _manifest(bundle)
    acc = json.loads((compressed_model / "pocketsd.json").read_text())["components"]["unet"]["accounting"]
    blob = sum(m["components"][c]["census"]["weight_blob_bytes"] for c in ("UnetChunk1", "UnetChunk2"))
    # The blob stores the same codes/tables/scales/factors; fp16 leftovers are the same bytes. Per-blob
    # headers and 64-byte alignment of hundreds of small tensors make up the difference on a tiny model.
    assert 0.9 < blob / acc["total_bytes"] < 1.6


def test_info_shows_census(bundle, capsys):
    assert main(["info", str(bundle)]) == 0
    text = capsys.readouterr().out
    assert "UnetChunk1" in text and "constexpr_lut_to_dense" in text and "bit-exact True" in text


def test_rerun_skips_done_and_resumes_after_kill(bundle, tmp_path, monkeypatch):
    work = tmp_path / "bundle"
    shutil.copytree(bundle, work)
    m = _manifest(work)
    # A run killed while converting VAEEncoder: its package never landed, a temp folder may linger.
    shutil.rmtree(work / "Resources" / "VAEEncoder.mlpackage")
    (work / "Resources" / ".VAEEncoder.mlpackage.tmp-dead").mkdir()
    converted = []
    import pocketsd.convert.run as run

    real = run.convert_module
    monkeypatch.setattr(run, "convert_module", lambda *a, **k: converted.append([s.name for s in a[1]]) or real(*a, **k))
    # Through the command line, as a user re-runs it (same options).
    assert main(["convert", "--model", m["source_model"]["path"], "--out", str(work), "--chunk-unet", "--quiet",
                 "--lora-functions", ",".join(m["options"]["lora_functions"])]) == 0
    assert converted == [["x"]]  # only the VAE encoder was redone
    assert (work / "Resources" / "VAEEncoder.mlpackage").is_dir()
    assert not (work / "Resources" / ".VAEEncoder.mlpackage.tmp-dead").exists()
    assert _manifest(work)["components"]["UnetChunk1"]["sha256"] == m["components"]["UnetChunk1"]["sha256"]


def test_interrupt_leaves_no_half_package(tiny_model, tmp_path, monkeypatch):
    import pocketsd.convert.bundle as B

    def interrupted_save(mlmodel, target):
        with B.atomic_dir(target) as tmp:
            (tmp / "partial").write_text("x")
            raise KeyboardInterrupt

    monkeypatch.setattr(B, "save_package_atomically", interrupted_save)
    out = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        convert_bundle(ConvertOptions(model=str(tiny_model), out=out, only=["TextEncoder"]), log=lambda s: None)
    assert not any(p.name.startswith("TextEncoder") for p in (out / "Resources").iterdir())
    assert not any(".tmp-" in p.name for p in (out / "Resources").iterdir())


def test_multifunction_lora_unet_shares_weights(bundle, compressed_model):
    """--lora-functions: functions differ only in low-rank branches; the 4-bit weights are stored once."""
    from pocketsd.convert.mil_weights import load_program

    n_layers = len(compressed_unet_layers(compressed_model))
    matched = 0
    for chunk in ("UnetChunk1", "UnetChunk2"):
        entry = _manifest(bundle)["components"][chunk]
        assert entry["functions"] == ["main", "style"]
        assert set(load_program(bundle / "Resources" / f"{chunk}.mlpackage").functions) == {"main", "style"}
        one, two = entry["single_function_bytes"], entry["bytes"]
        # Two functions cost one copy of the 4-bit weights plus a second set of low-rank branches, not 2×
        # (save_multifunction also deduplicates identical consts, so it can even come out smaller than one).
        assert two < 1.3 * one
        census = entry["census"]["functions"]
        assert census["main"]["constexpr"] == census["style"]["constexpr"]
        matched += entry["verify"]["layers_matched"]
    assert matched == n_layers
    records = _manifest(bundle)["components"]["UnetChunk1"]["lora_records"]
    assert records["main"] == [] and records["style"][0]["lowrank_concat"] == 6


def test_original_attention_converts(tiny_model, tmp_path):
    out = tmp_path / "b"
    convert_bundle(ConvertOptions(model=str(tiny_model), out=out, only=["Unet"], attention="original",
                                  unet_batch_one=True, target="macOS15"), log=lambda s: None)
    c = _manifest(out)["components"]["Unet"]
    assert c["inputs"][0]["shape"][0] == 1
    ops = c["census"]["functions"]["main"]["ops"]
    assert "scaled_dot_product_attention" in ops and "einsum" not in ops


@pytest.mark.parametrize("argv, message", [
    (["--target", "iOS99"], "invalid choice"),
    (["--size", "100x100"], "multiple"),
    (["--size", "big"], "WxH"),
])
def test_bad_input_one_line(argv, message, tiny_model, tmp_path, capsys):
    assert main(["convert", "--model", str(tiny_model), "--out", str(tmp_path / "b"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_folder_without_unet(tiny_model, tmp_path, capsys):
    broken = tmp_path / "nounet"
    shutil.copytree(tiny_model, broken, ignore=shutil.ignore_patterns("unet"))
    assert main(["convert", "--model", str(broken), "--out", str(tmp_path / "b")]) == 2
    assert "missing unet/" in capsys.readouterr().err
    with pytest.raises(BadInput):
        convert_bundle(ConvertOptions(model=str(broken), out=tmp_path / "b2"))


def test_compressed_text_encoders_convert_as_exact_constexpr_ops(compressed_model, tmp_path):
    """Compressed text encoders land in TextEncoder/TextEncoder2 as our codes, read back bit for bit."""
    from convert_support import compress_text_encoders

    folder = compress_text_encoders(compressed_model, tmp_path / "te")
    assert main(["convert", "--model", str(folder), "--out", str(tmp_path / "b"), "--only", "TextEncoder,TextEncoder2",
                 "--quiet"]) == 0
    m = _manifest(tmp_path / "b")
    for package in ("TextEncoder", "TextEncoder2"):
        entry = m["components"][package]
        assert entry["verify"]["bit_exact"] and entry["verify"]["layers_matched"] > 10
        assert entry["census"]["functions"]["main"]["constexpr"].get("constexpr_lut_to_dense", 0) > 10
    sources = m["compressed_source"]["components"]
    assert {"unet", "text_encoder", "text_encoder_2"} <= set(sources)


def test_info_memory_plans_every_stage_of_the_bundle(bundle, capsys):
    """`pocketsd info BUNDLE --memory`: resident weights per stage, default vs low-memory, against a budget."""
    m = _manifest(bundle)
    plan = m["memory_plan"]
    weights = plan["weight_bytes"]
    assert [s["stage"] for s in plan["stages"]] == ["text_encode", "vae_encode", "denoise", "vae_decode"]
    low = plan["resident_bytes"]["low_memory"]
    assert low["text_encode"] == max(weights["TextEncoder"], weights["TextEncoder2"])
    assert low["denoise"] == weights["UnetChunk1"] + weights["UnetChunk2"]
    assert plan["largest_stage_bytes"]["default"] == sum(weights.values())
    for name, entry in m["components"].items():  # the plan's bytes are the packages' own weight blobs
        assert weights[name] == entry["census"]["weight_blob_bytes"] and entry["stage"] in low
    budget = (low["denoise"] + 1) / 2**20  # just enough for the largest low-memory stage
    assert main(["info", str(bundle), "--memory", "--budget-mb", f"{budget:.6f}"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip().startswith(("text_encode", "denoise"))}
    assert "NO / yes" in rows["denoise"] and "yes / yes" in rows["text_encode"]
    assert main(["info", str(bundle), "--budget-mb", "5"]) == 2  # --budget-mb needs --memory
