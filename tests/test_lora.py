"""LoRA: key formats, fit checks, concatenation onto compressed low-rank branches, the merge command."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pocketsd.cli import main as cli
from pocketsd.errors import BadInput
from pocketsd.palettize import lora as L
from pocketsd.data import REFERENCE_LORAS as LORA_DIR

STYLES = ("poster", "blueprint")
PROMPTS = ["a red circle on a white background, poster style", "a blue square on a gray background, poster style"]


# ---- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def shipped_loras() -> dict[str, Path]:
    paths = {s: LORA_DIR / f"{s}.safetensors" for s in STYLES}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        pytest.fail(f"shipped LoRA missing: {missing}; run `python -m pocketsd.refmodel.train_lora --style …`")
    return paths


@pytest.fixture(scope="session")
def compressed_folder(tmp_path_factory, ref_model_path) -> Path:
    """The reference model compressed at w4r32 with a small calibration (smoothing on, so merges must mind s)."""
    from pocketsd.compress.run import CompressOptions, compress_model
    from pocketsd.palettize.calibrate import CalibrationSettings
    from pocketsd.palettize.recipes import make_recipe

    out = tmp_path_factory.mktemp("lora") / "compressed"
    compress_model(CompressOptions(out, str(ref_model_path), make_recipe("w4r32"),
                                   CalibrationSettings(count=4, steps=3, rows_per_layer=64)))
    return out


@pytest.fixture(scope="session")
def unet_shapes(ref_pipeline) -> dict:
    return L.weight_shapes(ref_pipeline.unet)


def _random_lora(unet, names, rank=4, seed=0, conv_name=None) -> dict[str, torch.Tensor]:
    """A diffusers-format LoRA (`unet.<m>.lora_A.weight`) on `names` with random factors."""
    g = torch.Generator().manual_seed(seed)
    mods = dict(unet.named_modules())
    sd = {}
    for n in list(names) + ([conv_name] if conv_name else []):
        w = mods[n].weight
        if w.ndim == 4:
            a = torch.randn(rank, w.shape[1], *w.shape[2:], generator=g) * 0.05
            b = torch.randn(w.shape[0], rank, 1, 1, generator=g) * 0.05
        else:
            a = torch.randn(rank, w.shape[1], generator=g) * 0.05
            b = torch.randn(w.shape[0], rank, generator=g) * 0.05
        sd[f"unet.{n}.lora_A.weight"], sd[f"unet.{n}.lora_B.weight"] = a, b
    return sd


ATTN = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
FF = "up_blocks.0.attentions.1.transformer_blocks.0.ff.net.0.proj"
CONV = "down_blocks.2.resnets.0.conv2"


# ---- parsing -----------------------------------------------------------------------------------------
def test_kohya_keys_give_the_same_deltas_as_diffusers_keys(tmp_path, ref_pipeline, unet_shapes):
    """kohya (`lora_unet_…` + `.alpha`, diffusers or SGM block names) and the older diffusers `.lora.down/.up`
    format read to the same ΔW as diffusers/PEFT keys."""
    sd = _random_lora(ref_pipeline.unet, [ATTN, FF], rank=4, conv_name=CONV)
    save_file(sd, tmp_path / "diffusers.safetensors")
    kohya, old = {}, {}
    for key, t in sd.items():
        module, ab = key[len("unet."):].rsplit(".lora_", 1)
        stem = "lora_unet_" + module.replace(".", "_")
        part = "lora_down" if ab.startswith("A") else "lora_up"
        kohya[f"{stem}.{part}.weight"] = t * (2.0 if part == "lora_up" else 1.0)  # alpha/r = 2/4 halves it back
        kohya[f"{stem}.alpha"] = torch.tensor(2.0)
        old[f"unet.{module}.lora.{'down' if part == 'lora_down' else 'up'}.weight"] = t
    save_file(kohya, tmp_path / "kohya.safetensors")
    save_file(old, tmp_path / "old.safetensors")
    # kohya files trained on SGM/ldm module names (input_blocks.{1 + 3·block + layer}.{0 resnet | 1 attention})
    sgm_names = {"down_blocks_1_attentions_0": "input_blocks_4_1", "up_blocks_0_attentions_1": "output_blocks_1_1",
                 "down_blocks_2_resnets_0_conv2": "input_blocks_7_0_out_layers_3"}
    sgm = {}
    for key, t in kohya.items():
        for diffusers_name, sgm_name in sgm_names.items():
            key = key.replace(diffusers_name, sgm_name)
        sgm[key] = t
    save_file(sgm, tmp_path / "kohya_sgm.safetensors")

    ref = L.read_lora(tmp_path / "diffusers.safetensors", ref_pipeline.unet.config)
    assert set(ref.layers) == {ATTN, FF, CONV}
    for name in ("kohya", "old", "kohya_sgm"):
        other = L.read_lora(tmp_path / f"{name}.safetensors", ref_pipeline.unet.config)
        assert set(other.layers) == set(ref.layers), name
        L.check_fits(other, unet_shapes)
        for m in ref.layers:
            shape = unet_shapes[m]
            torch.testing.assert_close(other.layers[m].delta(shape), ref.layers[m].delta(shape), rtol=1e-6, atol=1e-7)


def test_shipped_loras_read_and_fit(shipped_loras, unet_shapes):
    for style, path in shipped_loras.items():
        assert path.stat().st_size <= 1_000_000, f"{style} LoRA is over 1 MB"
        lora = L.read_lora(path)
        L.check_fits(lora, unet_shapes)
        assert len(lora.layers) > 50 and all(l.rank == 8 and l.alpha == 8.0 for l in lora.layers.values())


def test_mismatched_lora_is_one_line_bad_input(tmp_path, ref_pipeline, unet_shapes):
    sd = _random_lora(ref_pipeline.unet, [ATTN], rank=4)
    sd[f"unet.{ATTN}.lora_A.weight"] = torch.zeros(4, 77)  # wrong input width
    sd["unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_z.lora_A.weight"] = torch.zeros(4, 128)
    sd["unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_z.lora_B.weight"] = torch.zeros(128, 4)
    save_file(sd, tmp_path / "other_model.safetensors")
    lora = L.read_lora(tmp_path / "other_model.safetensors")
    with pytest.raises(BadInput) as exc:
        L.check_fits(lora, unet_shapes)
    msg = str(exc.value)
    assert "\n" not in msg and "to_z: no such layer" in msg and f"{ATTN}: down (4, 77)" in msg


def test_lora_arg_and_file_errors(tmp_path):
    assert L.parse_lora_arg("a/b.safetensors:0.5") == (Path("a/b.safetensors"), 0.5)
    assert L.parse_lora_arg("c:/x.safetensors") == (Path("c:/x.safetensors"), 1.0)
    with pytest.raises(BadInput, match="does not exist"):
        L.read_lora(tmp_path / "nope.safetensors")
    (tmp_path / "x.ckpt").write_bytes(b"\0")
    with pytest.raises(BadInput, match="only .safetensors"):
        L.read_lora(tmp_path / "x.ckpt")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(BadInput, match="not a readable safetensors"):
        L.read_lora(tmp_path / "junk.safetensors")


# ---- compressed models -----------------------------------------------------------------------------
def test_concatenation_is_exact_and_residual_untouched(tmp_path, compressed_folder, ref_pipeline):
    from convert_support import compressed_unet_layers

    from pocketsd.artifacts.compressed import read_compressed_model

    sd = _random_lora(ref_pipeline.unet, [ATTN, FF], rank=4, conv_name=CONV)
    sd[f"unet.{'time_embedding.linear_1'}.lora_A.weight"] = torch.randn(4, 32) * 0.05  # a layer kept in fp16
    sd[f"unet.{'time_embedding.linear_1'}.lora_B.weight"] = torch.randn(128, 4) * 0.05
    save_file(sd, tmp_path / "l.safetensors")
    before = compressed_unet_layers(compressed_folder)
    before_leftover = read_compressed_model(compressed_folder).state_dict("unet")
    assert "time_embedding.linear_1" not in before
    out = tmp_path / "merged"
    assert cli(["lora", "merge", "--model", str(compressed_folder), "--lora", f"{tmp_path / 'l.safetensors'}:0.7",
                "--out", str(out)]) == 0
    after_model = read_compressed_model(out)
    after, after_leftover = compressed_unet_layers(out), after_model.state_dict("unet")
    assert [r["file"] for r in after_model.manifest["loras"]] == ["l.safetensors"]
    lora = L.read_lora(tmp_path / "l.safetensors")
    for name in (ATTN, FF, CONV):
        b0, a0 = before[name], after[name]
        r0 = b0.rank
        # the old branch is kept bit for bit, the new columns are exactly scale·B and A·diag(s̃) in fp16
        assert torch.equal(a0.lowrank_up[:, :r0], b0.lowrank_up) and torch.equal(a0.lowrank_down[:r0], b0.lowrank_down)
        b, a = lora.layers[name].factors(0.7)
        s = torch.ones(a.shape[1]) if b0.smooth is None else b0.smooth.float().repeat_interleave(a.shape[1] // b0.smooth.numel())
        assert torch.equal(a0.lowrank_up[:, r0:], b.half()) and torch.equal(a0.lowrank_down[r0:], (a * s).half())
        # and the layer's effective weight moved by ΔW (up to the fp16 rounding of the new factors)
        delta = a0.effective_weight() - b0.effective_weight()
        torch.testing.assert_close(delta, lora.layers[name].delta(b0.shape, 0.7), rtol=2e-2, atol=2e-4)
    # the fp16-kept layer got ΔW densely
    key = "time_embedding.linear_1.weight"
    torch.testing.assert_close(after_leftover[key].float() - before_leftover[key].float(),
                               lora.layers["time_embedding.linear_1"].delta((128, 32), 0.7), rtol=2e-2, atol=2e-3)
    # residual tensors: byte for byte identical in the two files
    with safe_open(str(compressed_folder / "unet/pocketsd_unet.safetensors"), "pt") as f0, \
            safe_open(str(out / "unet/pocketsd_unet.safetensors"), "pt") as f1:
        residual = [k for k in f0.keys() if k.rsplit(".", 1)[1] in ("codes", "lut", "scales", "smooth", "bias")]
        assert len(residual) > 100
        for k in residual:
            assert f0.get_tensor(k).numpy().tobytes() == f1.get_tensor(k).numpy().tobytes(), k


def test_merge_rejects_bad_input(tmp_path, compressed_folder, ref_model_path, ref_pipeline, capsys):
    sd = _random_lora(ref_pipeline.unet, [ATTN], rank=4)
    sd[f"unet.{ATTN}.lora_B.weight"] = torch.zeros(99, 4)
    save_file(sd, tmp_path / "bad.safetensors")
    out = tmp_path / "never"
    assert cli(["lora", "merge", "--model", str(compressed_folder), "--lora", str(tmp_path / "bad.safetensors"),
                "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not fit" in err and not out.exists()
    assert cli(["lora", "merge", "--model", str(ref_model_path), "--lora", str(tmp_path / "bad.safetensors"),
                "--out", str(out)]) == 2
    assert "needs a compressed folder" in capsys.readouterr().err and not out.exists()


def _first_latents(pipe, unet, steps=4):
    pipe.unet = unet
    gens = [torch.Generator().manual_seed(k) for k in range(len(PROMPTS))]
    with torch.no_grad():
        return pipe(PROMPTS, num_inference_steps=steps, guidance_scale=5.0, generator=gens,
                    output_type="latent").images


def test_merged_lora_tracks_fp16_with_fused_lora(compressed_folder, ref_pipeline, shipped_loras):
    """compressed+LoRA (concatenated) vs fp16+LoRA (fused dense) ≈ compressed vs fp16, in latent PSNR."""
    from convert_support import compressed_unet as load_compressed_unet

    from pocketsd.eval.metrics import latent_psnr

    pipe = copy.copy(ref_pipeline)
    pipe.set_progress_bar_config(disable=True)
    spec = [(shipped_loras["poster"], 1.0)]
    fp16 = ref_pipeline.unet
    fp16_lora = copy.deepcopy(fp16)
    rec = L.apply_loras(fp16_lora, L.load_loras(spec))[0]
    assert rec["dense_fused"] == rec["layers"] > 0
    comp = load_compressed_unet(compressed_folder)
    comp_lora = load_compressed_unet(compressed_folder)
    records = L.apply_loras(comp_lora, L.load_loras(spec))
    assert records[0]["lowrank_concat"] > 0
    ref, ref_l = _first_latents(pipe, fp16), _first_latents(pipe, fp16_lora)
    base_db = latent_psnr(ref, _first_latents(pipe, comp))
    lora_db = latent_psnr(ref_l, _first_latents(pipe, comp_lora))
    style_db = latent_psnr(ref, ref_l)  # the LoRA's own effect, so "close" is not trivially true
    assert lora_db > style_db + 6, (lora_db, style_db)
    # Measured on the shipped model (06:40 UTC): 41.8 dB without, 38.1 dB with the poster LoRA — the calibration
    # saw no LoRA activations, so some loss is expected; 5 dB bounds "about as closely".
    assert lora_db > base_db - 5, (lora_db, base_db)
    # packed runtime modules concatenate in place and agree with the merge-before-build path
    packed = load_compressed_unet(compressed_folder, mode="packed")
    L.apply_loras(packed, L.load_loras(spec))
    assert latent_psnr(_first_latents(pipe, comp_lora), _first_latents(pipe, packed)) > 40


def _text_encoder_lora(path: Path, ref_pipeline) -> Path:
    """kohya-style keys for one layer of each text encoder and one UNet layer (random small factors)."""
    te1, te2 = ref_pipeline.text_encoder, ref_pipeline.text_encoder_2
    # transformers 5 dropped CLIP's `text_model` wrapper; LoRA files still name it
    q = getattr(te1, "text_model", te1).encoder.layers[0].self_attn.q_proj
    fc1 = getattr(te2, "text_model", te2).encoder.layers[1].mlp.fc1
    g = torch.Generator().manual_seed(3)
    sd = {"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.randn(4, q.in_features, generator=g) * 0.05,
          "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.randn(q.out_features, 4, generator=g) * 0.05,
          "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.alpha": torch.tensor(4.0),
          "lora_te2_text_model_encoder_layers_1_mlp_fc1.lora_down.weight": torch.randn(4, fc1.in_features, generator=g) * 0.05,
          "lora_te2_text_model_encoder_layers_1_mlp_fc1.lora_up.weight": torch.randn(fc1.out_features, 4, generator=g) * 0.05,
          "lora_te2_text_model_encoder_layers_1_mlp_fc1.alpha": torch.tensor(2.0)}
    # the UNet layer in kohya's spelling too: real files use one key format throughout
    w = ref_pipeline.unet.get_submodule(ATTN).weight
    kohya = "lora_unet_" + ATTN.replace(".", "_")
    sd[f"{kohya}.lora_down.weight"] = torch.randn(4, w.shape[1], generator=g) * 0.05
    sd[f"{kohya}.lora_up.weight"] = torch.randn(w.shape[0], 4, generator=g) * 0.05
    sd[f"{kohya}.alpha"] = torch.tensor(4.0)
    save_file(sd, path)
    return path


def test_text_encoder_layers_are_read_and_merged_without_requantizing(tmp_path, compressed_folder, ref_pipeline):
    from convert_support import compressed_unet_layers  # noqa: F401  (the same reader the UNet test uses)

    from pocketsd.artifacts.compressed import read_compressed_model
    from pocketsd.models.components import load_compressed_component
    from pocketsd.palettize.layer import compressed_layers

    path = _text_encoder_lora(tmp_path / "te.safetensors", ref_pipeline)
    lora = L.read_lora(path)
    assert set(lora.components) == {"unet", "text_encoder", "text_encoder_2"}
    assert list(lora.components["text_encoder"]) == ["text_model.encoder.layers.0.self_attn.q_proj"]
    assert lora.components["text_encoder_2"]["text_model.encoder.layers.1.mlp.fc1"].alpha == 2.0
    before = read_compressed_model(compressed_folder)
    assert {"text_encoder", "text_encoder_2"} <= set(before.components)  # compress's default components
    out = tmp_path / "merged"
    assert cli(["lora", "merge", "--model", str(compressed_folder), "--lora", str(path), "--out", str(out)]) == 0
    after = read_compressed_model(out)
    assert {r["component"] for r in after.manifest["loras"]} == {"unet", "text_encoder", "text_encoder_2"}
    file_name = "text_model.encoder.layers.0.self_attn.q_proj"
    name = file_name if hasattr(ref_pipeline.text_encoder, "text_model") else file_name[len("text_model."):]
    b0 = compressed_layers(load_compressed_component(before, "text_encoder", "packed"))[name]
    a0 = compressed_layers(load_compressed_component(after, "text_encoder", "packed"))[name]
    assert a0.rank == b0.rank + 4 and torch.equal(a0.residual(), b0.residual())
    delta = a0.effective_weight() - b0.effective_weight()
    torch.testing.assert_close(delta, lora.components["text_encoder"][file_name].delta(b0.shape), rtol=2e-2, atol=2e-4)
    for component in ("text_encoder", "text_encoder_2"):  # residual tensors byte for byte
        with safe_open(str(compressed_folder / before.components[component].weights), "pt") as f0, \
                safe_open(str(out / after.components[component].weights), "pt") as f1:
            for k in (k for k in f0.keys() if k.rsplit(".", 1)[1] in ("codes", "lut", "scales")):
                assert f0.get_tensor(k).numpy().tobytes() == f1.get_tensor(k).numpy().tobytes(), k


def test_generate_applies_text_encoder_layers_of_a_lora(tmp_path, ref_model_path, ref_pipeline):
    path = _text_encoder_lora(tmp_path / "te.safetensors", ref_pipeline)
    out = tmp_path / "img.png"
    assert cli(["generate", "a red circle on a white background", "--model", str(ref_model_path), "--lora", str(path),
                "--steps", "2", "--out", str(out), "--quiet"]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    by_component = {r["component"]: r for r in report["loras"]}
    assert by_component["text_encoder"]["dense_fused"] == 1 and by_component["text_encoder_2"]["dense_fused"] == 1
    assert by_component["unet"]["layers"] == 1
