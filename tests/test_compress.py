"""`pocketsd compress` end to end on the reference model: the folder, its accounting, loading it back, bad input."""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from pocketsd.artifacts import MANIFEST
from pocketsd.artifacts.compressed import read_compressed_model, weights_path
from pocketsd.cli import main as cli
from pocketsd.info import describe_compressed as describe
from pocketsd.models.components import load_compressed_component
from pocketsd.palettize.layer import compressed_layers

UNET_WEIGHTS = weights_path("unet")


def load_compressed_unet(folder, mode):
    return load_compressed_component(read_compressed_model(folder), "unet", mode)


@pytest.fixture(scope="session")
def compressed(tmp_path_factory, ref_model_path) -> Path:
    """The reference model at w4r16 (smoothing on) from a deliberately tiny calibration: 4 prompts × 2 steps."""
    out = tmp_path_factory.mktemp("compress") / "w4r16"
    rc = cli(["compress", "--model", str(ref_model_path), "--out", str(out), "--recipe", "w4r16",
              "--calib-count", "4", "--calib-steps", "2", "--refine-iters", "1"])
    assert rc == 0
    return out


def test_folder_is_complete_and_self_describing(compressed, ref_model_path):
    for part in ("model_index.json", "scheduler", "tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "vae"):
        assert (compressed / part).exists(), part
    assert not (compressed / "unet" / "diffusion_pytorch_model.safetensors").exists()
    m = json.loads((compressed / MANIFEST).read_text())
    unet = m["components"]["unet"]
    assert m["kind"] == "compressed" and unet["recipe"]["name"] == "w4r16"
    assert m["source_model"]["path"] == str(ref_model_path)
    assert unet["calibration"]["prompts"] == 4 and unet["calibration"]["steps"] == 2
    assert {"torch", "diffusers", "pocketsd"} <= set(m["versions"])
    assert "conv_in" in unet["fp16_layers"] and "conv_out" in unet["fp16_layers"]
    rows = unet["layers"]
    assert len(rows) > 100
    for r in rows:
        assert r["quantizer"] == "palette" and r["bits"] == 4 and r["group_size"] == 16
        assert r["rank"] == min(16, min(r["shape"][0], r["shape"][1] * (r["shape"][2] * r["shape"][3] if len(r["shape"]) == 4 else 1)) // 2)
        assert r["snr_db"] is not None and r["snr_db"] > 5
    assert any(r["smoothed"] for r in rows)  # α > 0 won somewhere on real activations


# ---- the size accounting, against a count that does not use it -------------------------------------
# `accounting()` walks the stored tensors and measures the header after writing, so comparing its total with the
# file size proves nothing (that total *is* file size minus payload plus payload). The expected figures below are
# built from other sources: the per-layer rows of the manifest (shape, bits, group/block size, rank, smoothing,
# bias) at the format's documented sizes (`artifacts/compressed.py` docstring), the fp16 source UNet's own
# parameters for what stays fp16, and the safetensors header length read from the file's first 8 bytes.
def independent_byte_count(manifest: dict, source_unet: nn.Module, weights_file: Path) -> dict:
    unet = manifest["components"]["unet"]
    cat = {"codes": 0, "lut": 0, "scales": 0, "lowrank": 0, "smooth": 0, "bias": 0, "fp16_leftover": 0}
    params = 0
    compressed_keys = set()
    for row in unet["layers"]:
        shape = row["shape"]
        out, cols = shape[0], math.prod(shape[1:])
        taps = math.prod(shape[2:]) if len(shape) == 4 else 1
        numel = out * cols
        cat["codes"] += math.ceil(numel * row["bits"] / 8)  # packed at the layer's bit width
        if row["quantizer"] == "palette":
            cat["lut"] += (out // row["group_size"]) * 2 ** row["bits"] * 2  # one fp16 table per group
        else:
            cat["scales"] += out * math.ceil(shape[1] / row["block_size"]) * taps * 2
        cat["lowrank"] += row["rank"] * (out + cols) * 2  # L1 (out, r) and L2 (r, in·k), fp16
        if row["smoothed"]:
            cat["smooth"] += shape[1] * 2
        if row["has_bias"]:
            cat["bias"] += out * 2
        params += numel + (out if row["has_bias"] else 0)
        compressed_keys |= {row["name"] + ".weight", row["name"] + ".bias"}
    for key, tensor in source_unet.state_dict().items():  # everything else is stored in fp16
        if key not in compressed_keys:
            cat["fp16_leftover"] += tensor.numel() * 2
            params += tensor.numel()
    with open(weights_file, "rb") as f:
        header = 8 + int.from_bytes(f.read(8), "little")  # safetensors: u64 header length, then the header
    total = sum(cat.values()) + header
    return {"bytes_by_category": cat, "header": header, "total_bytes": total, "params": params,
            "bits_per_param": 8 * total / params}


def check_accounting(acc: dict, expected: dict) -> None:
    """Every figure of a component's accounting against the independent count: exact, byte for byte."""
    for name, n in expected["bytes_by_category"].items():
        assert acc["bytes_by_category"][name] == n, (name, acc["bytes_by_category"][name], n)
    assert acc["params"] == expected["params"], (acc["params"], expected["params"])
    assert acc["total_bytes"] == expected["total_bytes"], (acc["total_bytes"], expected["total_bytes"])
    assert abs(acc["bits_per_param"] - expected["bits_per_param"]) < 1e-9


def test_accounting_matches_an_independent_byte_count(compressed, ref_pipeline):
    m = json.loads((compressed / MANIFEST).read_text())
    weights = compressed / UNET_WEIGHTS
    expected = independent_byte_count(m, ref_pipeline.unet, weights)
    assert weights.stat().st_size == expected["total_bytes"]  # the file holds exactly what the format says
    check_accounting(m["components"]["unet"]["accounting"], expected)
    text = describe(compressed)
    assert "effective bits per parameter" in text and rows_named(m, text)


def _recount(compressed) -> dict:
    """`accounting()` run again on the tensors of the written file, the way the writer runs it."""
    from safetensors.torch import load_file

    from pocketsd.artifacts import compressed as fmt

    m = json.loads((compressed / MANIFEST).read_text())
    layers = [fmt.LayerRecord.from_dict(r) for r in m["components"]["unet"]["layers"]]
    tensors = load_file(str(compressed / UNET_WEIGHTS))
    size = (compressed / UNET_WEIGHTS).stat().st_size
    payload = sum(t.numel() * t.element_size() for t in tensors.values())
    return fmt.accounting(tensors, layers, container_bytes=size - payload)


PLANTED_MISCOUNTS = {
    # floats counted at fp32, the in-memory dtype, instead of the fp16 they are stored in
    "floats at 4 bytes": ("stored_bytes", lambda t: t.numel() * (4 if t.is_floating_point() else t.element_size())),
    # codes counted one per byte, as if unpacked
    "codes unpacked": ("stored_bytes", lambda t: t.numel() * (2 if t.is_floating_point() else 2 * t.element_size())),
    # biases of compressed layers not recognised as theirs: counted as leftovers, their parameters twice
    "bias as leftover": ("LAYER_TENSORS", ("codes", "lut", "scales", "lowrank_up", "lowrank_down", "smooth")),
}


@pytest.mark.parametrize("plant", sorted(PLANTED_MISCOUNTS))
def test_byte_count_check_fails_on_a_planted_miscount(compressed, ref_pipeline, monkeypatch, plant):
    from pocketsd.artifacts import compressed as fmt

    m = json.loads((compressed / MANIFEST).read_text())
    expected = independent_byte_count(m, ref_pipeline.unet, compressed / UNET_WEIGHTS)
    check_accounting(_recount(compressed), expected)  # unplanted: the recount passes
    monkeypatch.setattr(fmt, *PLANTED_MISCOUNTS[plant])
    with pytest.raises(AssertionError):
        check_accounting(_recount(compressed), expected)


def rows_named(manifest, text) -> bool:
    return all(r["name"][-64:] in text for r in manifest["components"]["unet"]["layers"][:5])


def test_read_api_reconstructs_the_smoothed_weights(compressed, ref_pipeline):
    layers = compressed_layers(load_compressed_unet(compressed, "packed"))
    unet = ref_pipeline.unet
    snrs = []
    for name, layer in layers.items():
        w = unet.get_submodule(name).weight.detach().float()
        r = layer.residual()
        assert r.dtype == torch.float16 and tuple(r.shape) == tuple(w.shape)
        codes = layer.unpacked_codes()
        assert codes.dtype == torch.uint8 and int(codes.max()) < 16
        assert layer.lut.shape == (w.shape[0] // 16, 16)
        assert layer.lowrank_up.shape == (w.shape[0], layer.rank)
        assert layer.lowrank_down.shape == (layer.rank, w[0].numel())
        s = torch.ones(w.shape[1]) if layer.smooth is None else layer.smooth.float()
        target = w * s.view(1, -1, *([1] * (w.dim() - 2)))
        err = layer.smoothed_weight() - target
        snrs.append(float(10 * torch.log10(target.pow(2).sum() / err.pow(2).sum())))
    assert min(snrs) > 8 and sum(snrs) / len(snrs) > 15


def test_loaded_unet_dense_equals_packed_and_tracks_fp16(compressed, ref_pipeline):
    g = torch.Generator().manual_seed(0)
    cfg = ref_pipeline.unet.config
    x = torch.randn(2, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g)
    ehs = torch.randn(2, 77, cfg.cross_attention_dim, generator=g)
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    add = {"text_embeds": torch.randn(2, pooled, generator=g),
           "time_ids": torch.tensor([[128.0, 128, 0, 0, 128, 128]] * 2)}
    t = torch.tensor([700.0, 700.0])
    with torch.no_grad():
        ref = ref_pipeline.unet(x, t, ehs, added_cond_kwargs=add).sample
        dense = load_compressed_unet(compressed, "dense")(x, t, ehs, added_cond_kwargs=add).sample
        packed = load_compressed_unet(compressed, "packed")(x, t, ehs, added_cond_kwargs=add).sample
    assert torch.allclose(dense, packed, atol=1e-4, rtol=1e-3)
    snr = float(10 * torch.log10(ref.pow(2).sum() / (dense - ref).pow(2).sum()))
    assert snr > 10, snr


def test_info_command_prints_the_table(compressed, capsys):
    assert cli(["info", str(compressed)]) == 0
    out = capsys.readouterr().out
    assert "compressed model" in out and "w4r16" in out and "SNR dB" in out


# ---- the budget, on a small stand-in network (fast; the allocation logic is the same) ------------------
class _Tiny(nn.Module):
    config = {"_class_name": "Tiny"}

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv_in = nn.Conv2d(4, 32, 3, padding=1)
        self.a = nn.Linear(128, 128)
        self.b = nn.Linear(128, 256)
        self.c = nn.Conv2d(64, 64, 3, padding=1)
        self.norm = nn.LayerNorm(128)
        with torch.no_grad():
            self.b.weight[:, :3] *= 20  # a sensitive layer with outlier input channels


@pytest.mark.parametrize("budget", [4.5, 6.0])
def test_budget_allocation_stays_within_budget(budget):
    from pocketsd.artifacts.compressed import accounting
    from pocketsd.palettize.compress import compress_network
    from pocketsd.palettize.layer import compressed_state_dict
    from pocketsd.palettize.recipes import make_recipe

    tiny = _Tiny()
    params = sum(p.numel() for p in tiny.parameters())
    compress_network(tiny, make_recipe(bits_budget=budget))
    layers = compressed_layers(tiny)
    state = compressed_state_dict(tiny)
    acc = accounting(state, [layer.record() for layer in layers.values()])
    assert set(layers) == {"a", "b", "c"} and "conv_in.weight" in state
    assert acc["bits_per_param"] <= budget
    assert acc["params"] == params
    if budget >= 6.0:  # room to spend: something got more bits or a rank
        assert any(l.bits > 4 or l.rank > 0 for l in layers.values())


def test_text_encoders_inherit_the_budget_per_compressed_weight(ref_pipeline):
    """The reference text encoders' fp16 leftovers (token and position embeddings) put 4.5 bits per parameter out of
    reach; without their own flag they get the UNet's 4.5 bits per compressed weight (noted), and stay within it."""
    from dataclasses import replace

    from pocketsd.artifacts.compressed import accounting
    from pocketsd.compress.run import CompressOptions, inherited_budgets
    from pocketsd.palettize.compress import budget_floor_bits, compress_network
    from pocketsd.palettize.layer import compressed_state_dict
    from pocketsd.palettize.recipes import make_recipe

    encoder = copy.deepcopy(ref_pipeline.text_encoder)
    recipe = make_recipe(bits_budget=4.5)
    assert budget_floor_bits(encoder, recipe) > 4.5  # the reason: as bits per parameter 4.5 cannot be met
    notes = []
    opts = CompressOptions(out=Path("unused"), recipe=recipe)
    recipes = inherited_budgets(opts, {"unet": ref_pipeline.unet, "text_encoder": encoder}, notes.append)
    assert set(recipes) == {"text_encoder"} and len(notes) == 1 and "4.5 bits per weight" in notes[0]
    inherited = recipes["text_encoder"]
    # distillation is inherited too: block mode distils the text encoders with the UNet's settings
    assert inherited.bits_budget > 4.5 and inherited.distill_steps == recipe.distill_steps
    compress_network(encoder, inherited)
    layers = compressed_layers(encoder)
    acc = accounting(compressed_state_dict(encoder), [layer.record() for layer in layers.values()])
    assert acc["bits_per_param"] <= inherited.bits_budget + 0.01
    records = [layer.record() for layer in layers.values()]
    layer_params = sum(r.numel + (r.shape[0] if r.has_bias else 0) for r in records)
    layer_bytes = acc["payload_bytes"] - acc["bytes_by_category"]["fp16_leftover"]
    assert 8 * layer_bytes / layer_params <= 4.5 + 0.1  # the UNet's budget, per compressed weight (header aside)
    # a budget given for the component itself is kept as given (and refused if it cannot be met)
    own = replace(opts, component_recipes={"text_encoder": make_recipe(bits_budget=6.0)})
    assert inherited_budgets(own, {"text_encoder": encoder}, notes.append)["text_encoder"].bits_budget == 6.0


# ---- bad input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,needle", [
    (["--bits-budget", "0.5"], "is below the"),
    (["--bits-budget", "nan"], "must be a number"),
    (["--bits-budget", "100"], "must be a number"),
    (["--recipe", "w3r99"], "unknown recipe"),
    (["--recipe", "w6r0", "--quantizer", "int4"], "cannot store"),
    (["--calib-prompts", "/nonexistent/prompts.txt"], "does not exist"),
    (["--bits-budget", "4.5", "--quantizer", "int4"], "is below the"),  # int4 scales alone cost 0.5 bit
])
def test_bad_options_exit_2_with_one_line(tmp_path, capsys, args, needle):
    rc = cli(["compress", "--out", str(tmp_path / "c")] + args)
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()


def test_model_folder_without_unet_is_bad_input(tmp_path, capsys, ref_model_path):
    src = tmp_path / "nounet"
    src.mkdir()
    shutil.copy(ref_model_path / "model_index.json", src / "model_index.json")
    rc = cli(["compress", "--model", str(src), "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert rc == 2 and re.search(r"incomplete .*missing .*\bunet\b", err) and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()


def test_compressing_a_compressed_folder_is_bad_input(compressed, tmp_path, capsys):
    rc = cli(["compress", "--model", str(compressed), "--out", str(tmp_path / "c")])
    assert rc == 2 and "already a compressed model" in capsys.readouterr().err


def test_end_to_end_probe_measures_sensitivity_and_restores_weights(ref_pipeline):
    from pocketsd.palettize.allocate import EndToEndProbe
    from pocketsd.data.grammar import calibration_prompts
    from pocketsd.palettize.calibrate import calibrate
    from pocketsd.palettize.recipes import compressible_layers

    unet = ref_pipeline.unet
    modules, _ = compressible_layers(unet)
    calib = calibrate(ref_pipeline, {}, calibration_prompts(2), steps=2, unet_calls=2, unet_call_rows=2)
    assert len(calib.unet_inputs) == 2 and calib.unet_inputs[0]["sample"].shape[0] == 2
    probe = EndToEndProbe(unet, calib.unet_inputs)
    name = next(n for n in modules if "attn2.to_k" in n)
    module = modules[name]
    before = module.weight.detach().clone()
    noisy = before + 0.05 * before.abs().mean() * torch.randn_like(before)
    rel = float((noisy - before).pow(2).sum() / before.pow(2).sum())
    gain = probe.response(module, noisy) / rel  # end-to-end error per unit of the layer's own error
    assert math.isfinite(gain) and gain > 0
    assert torch.equal(module.weight, before)
    assert probe.response(module, before.clone()) / rel == 0.0  # an exact weight changes nothing downstream


@pytest.mark.parametrize("stride,kernel", [(1, 3), (2, 3), (1, 1)])
def test_calibration_conv_rows_are_exact_unfolded_patches(stride, kernel):
    from pocketsd.palettize.calibrate import _Recorder

    conv = nn.Conv2d(8, 4, kernel, padding=kernel // 2, stride=stride)
    x = torch.randn(2, 8, 6, 6)
    amax, rows = _Recorder({}, 10, 40, seed=0)._sample_rows(conv, x, 40)
    cols = nn.functional.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    cols = cols.transpose(1, 2).reshape(-1, rows.shape[1])
    assert rows.shape == (40, 8 * kernel * kernel) and torch.equal(amax, x.abs().amax(dim=(0, 2, 3)))
    assert float((rows[:, None] - cols[None]).abs().amax(-1).min(1).values.max()) == 0.0


def test_calibration_prompts_fit_the_model(ref_model_path, tmp_path):
    """The reference model calibrates on its grammar; any other model on the shipped prompt set; a file wins."""
    from pocketsd.compress.prompts import calibration_prompts
    from pocketsd.data.grammar import calibration_prompts as grammar
    from pocketsd.data.prompt_sets import load_prompt_set
    from pocketsd.palettize.calibrate import CalibrationSettings

    settings = CalibrationSettings(count=16)
    assert calibration_prompts(ref_model_path, settings) == grammar(16, 0)
    other = calibration_prompts(tmp_path / "some-sdxl", settings)
    shipped = set(load_prompt_set("pocketsd").texts)
    assert len(other) == 16 and set(other) <= shipped and not set(other) & set(grammar(64, 0))
    (tmp_path / "mine.txt").write_text("# mine\na cat\n\na dog\n")
    assert calibration_prompts(ref_model_path, settings, tmp_path / "mine.txt") == ["a cat", "a dog"]


def test_distillation_is_skipped_when_its_training_copy_does_not_fit(monkeypatch):
    """Train mode holds an fp32 copy of every compressed weight: 4 bytes per UNet parameter must fit in 80 % of the
    memory available, else compress skips distillation with its reason (a real-size SDXL was killed for memory)."""
    import types

    import psutil

    from pocketsd.compress.run import distillation_memory_shortfall

    unet = nn.Linear(1000, 1000)  # 1,001,000 parameters: 4.0 MB in fp32
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=4_000_000))
    reason = distillation_memory_shortfall(unet, "cpu")
    assert reason and "4.0 GB" not in reason and "--distill-steps 0" in reason and "0.0 GB" in reason
    assert distillation_memory_shortfall(unet, "cuda") is None  # an accelerator's allocator raises instead
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=6_000_000))
    assert distillation_memory_shortfall(unet, "cpu") is None


@pytest.mark.parametrize("budget", [4.5, 6.0])
def test_budget_holds_for_the_file_on_disk(budget, tmp_path):
    """The budget is met by the bytes safetensors actually writes (header included), not only by the planner's
    estimate: the planner once priced header entries at 90 bytes while a UNet's long names cost ~115, and a 4.5-bit
    budget came out at 4.525. The tiny network's layer names are padded to UNet length to make the header count."""
    from safetensors.torch import save_file

    from pocketsd.artifacts.compressed import file_metadata
    from pocketsd.palettize.compress import compress_network
    from pocketsd.palettize.layer import compressed_state_dict
    from pocketsd.palettize.recipes import make_recipe

    long = "up_blocks_1_attentions_0_transformer_blocks_0_attn1"
    net = nn.Sequential()
    for k in range(6):
        net.add_module(f"{long}_{k}", nn.Linear(64, 64))
    net.add_module("norm_leftover", nn.LayerNorm(64))
    params = sum(p.numel() for p in net.parameters())
    compress_network(net, make_recipe(bits_budget=budget))
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in compressed_state_dict(net).items()}
    path = tmp_path / "c.safetensors"
    save_file(state, str(path), metadata=file_metadata("unet"))
    on_disk_bits = 8 * path.stat().st_size / params
    assert on_disk_bits <= budget
    assert on_disk_bits > budget - 0.35  # and the budget was spent, not left on the table by an over-estimate
