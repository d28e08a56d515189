"""`pocketsd lora train`: bad input, caption sources, resume after a kill, QLoRA-style training on a compressed
model (only the new factors learn; the residual is byte-identical after `lora merge`), and the written file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from pocketsd.cli import main as cli
from pocketsd.errors import BadInput
from pocketsd.train import dataset as ds

REPO = Path(__file__).resolve().parents[1]
# Small and fast: 64 px images (8×8 latents), rank 2, batch 2.
FAST = ["--resolution", "64", "--rank", "2", "--batch", "2", "--preview-every", "0", "--device", "cpu", "--quiet"]


def _draw(folder: Path, n: int, captions: bool = True, seed: int = 0) -> list[str]:
    from pocketsd.refmodel.copyspace import draw_training_folder

    scenes = draw_training_folder(folder, n, seed)
    if not captions:
        for txt in folder.glob("*.txt"):
            txt.unlink()
    return [s.caption for s in scenes]


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("train") / "images"
    _draw(folder, 6)
    return folder


@pytest.fixture(scope="session")
def compressed(tmp_path_factory, ref_model_path) -> Path:
    """The reference model at w4r16 from a deliberately tiny calibration (as tests/test_compress.py)."""
    out = tmp_path_factory.mktemp("train-compressed") / "w4r16"
    assert cli(["compress", "--model", str(ref_model_path), "--out", str(out), "--recipe", "w4r16",
                "--calib-count", "4", "--calib-steps", "2", "--refine-iters", "1", "--quiet"]) == 0
    return out


def _one_line_error(capsys, argv: list[str], needle: str) -> str:
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and needle in err, err
    return err


# ---- bad input ---------------------------------------------------------------------------------------------
def test_empty_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    out = tmp_path / "l.safetensors"
    _one_line_error(capsys, ["lora", "train", "--images", str(tmp_path / "empty"), "--out", str(out)], "no images in")
    _one_line_error(capsys, ["lora", "train", "--images", str(tmp_path / "nowhere"), "--out", str(out)], "does not exist")
    assert not out.exists()


def test_images_without_captions_say_how_to_give_them(tmp_path, capsys):
    folder = tmp_path / "imgs"
    _draw(folder, 3, captions=False)
    (folder / "copyspace_001.txt").write_text("a red circle on a white background\n")
    err = _one_line_error(capsys, ["lora", "train", "--images", str(folder), "--out", str(tmp_path / "l.safetensors")],
                          "2 of 3 images have no caption")
    assert "copyspace_000.png" in err and ".txt" in err and "--captions" in err
    # a captions file that misses images says so too
    (tmp_path / "caps.json").write_text(json.dumps({"copyspace_000.png": "a red circle on a white background"}))
    err = _one_line_error(capsys, ["lora", "train", "--images", str(folder), "--captions", str(tmp_path / "caps.json"),
                                   "--out", str(tmp_path / "l.safetensors")], "in caps.json")
    assert "copyspace_002.png" in err


def test_unreadable_images_are_named(tmp_path, capsys, ref_model_path):
    folder = tmp_path / "imgs"
    _draw(folder, 3)
    (folder / "copyspace_001.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing an image decoder can read")
    Image.new("RGB", (4, 4)).save(folder / "tiny.png")
    (folder / "tiny.txt").write_text("a dot")
    out = tmp_path / "l.safetensors"
    err = _one_line_error(capsys, ["lora", "train", "--images", str(folder), "--out", str(out)] + FAST,
                          "2 of 4 images cannot be read")
    assert "copyspace_001.png" in err and "tiny.png (4×4 px)" in err and not out.exists()


@pytest.mark.parametrize("args,needle", [
    (["--rank", "0"], "--rank must be an integer ≥ 1"),
    (["--rank", "-4"], "--rank must be an integer ≥ 1"),
    (["--steps", "0"], "--steps must be"),
    (["--lr", "0"], "--lr must be a positive number"),
    (["--lr", "nan"], "--lr must be a positive number"),
    (["--resolution", "100"], "--resolution 100 does not fit this model: use a multiple of 32"),
])
def test_bad_numbers_are_one_line(tmp_path, capsys, images, args, needle):
    out = tmp_path / "l.safetensors"
    _one_line_error(capsys, ["lora", "train", "--images", str(images), "--out", str(out), "--device", "cpu"] + args, needle)
    assert not out.exists()


def test_bad_out_and_models_are_one_line(tmp_path, capsys, images, ref_model_path):
    base = ["lora", "train", "--images", str(images), "--device", "cpu"]
    _one_line_error(capsys, base + ["--out", str(tmp_path / "l.pt")], "must end in .safetensors")
    _one_line_error(capsys, base + ["--out", str(tmp_path / "no" / "l.safetensors")], "does not exist")
    other = tmp_path / "flux"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    _one_line_error(capsys, base + ["--out", str(tmp_path / "l.safetensors"), "--model", str(other)],
                    "model family FluxPipeline is not supported")
    _one_line_error(capsys, base + ["--out", str(tmp_path / "l.safetensors"), "--model", str(tmp_path / "nope")],
                    "does not exist")
    assert not (tmp_path / "l.safetensors").exists()


# ---- captions ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["json", "jsonl", "csv", "tsv", "metadata"])
def test_every_caption_source_reads(tmp_path, kind):
    folder = tmp_path / "imgs"
    captions = _draw(folder, 3, captions=False)
    names = sorted(p.name for p in folder.glob("*.png"))
    table = dict(zip(names, captions))
    path = None
    if kind == "json":
        path = tmp_path / "c.json"
        path.write_text(json.dumps(table))
    elif kind in ("jsonl", "metadata"):
        path = (folder / "metadata.jsonl") if kind == "metadata" else tmp_path / "c.jsonl"
        path.write_text("".join(json.dumps({"file_name": n, "text": c}) + "\n" for n, c in table.items()))
    elif kind == "csv":
        path = tmp_path / "c.csv"
        path.write_text("file_name,text\n" + "".join(f'{n},"{c}"\n' for n, c in table.items()))
    else:
        path = tmp_path / "c.txt"
        path.write_text("".join(f"{n}\t{c}\n" for n, c in table.items()))
    examples = ds.find_examples(folder, None if kind == "metadata" else path)
    assert [e.caption for e in examples] == [table[n] for n in names]


def test_images_are_resized_centre_cropped_and_keep_their_size(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGBA", (200, 100), (255, 0, 0, 0)).save(folder / "wide.png")  # transparent → white
    (folder / "wide.txt").write_text("  a   wide\nimage ")
    examples = ds.find_examples(folder)
    assert examples[0].caption == "a wide image"
    prepared = ds.prepare_images(examples, 64)
    assert prepared.pixels.shape == (1, 3, 64, 64)
    assert prepared.original_sizes == [(100, 200)] and prepared.crops_top_left == [(0, 32)]
    assert np.allclose(prepared.pixels, 1.0)


# ---- the run ------------------------------------------------------------------------------------------------
def _cmd(images: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pocketsd", "lora", "train", "--images", str(images), "--out", str(out),
            "--steps", str(steps), "--checkpoint-every", "2", "--lr", "1e-3", *FAST, *extra]


def _env() -> dict:
    # one thread: the same float reductions in every process, so runs can be compared bit for bit
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_resume_after_a_kill_gives_the_same_lora(tmp_path, images):
    steps = 40
    whole = tmp_path / "whole.safetensors"
    subprocess.run(_cmd(images, whole, steps), check=True, env=_env(), capture_output=True, timeout=600)

    killed = tmp_path / "killed.safetensors"
    state = tmp_path / "killed.checkpoint" / "state.json"
    proc = subprocess.Popen(_cmd(images, killed, steps), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not killed.exists()
    at = json.loads(state.read_text())["step"]
    assert 2 <= at < steps and at % 2 == 0

    # without --resume an existing checkpoint is refused, not overwritten
    again = subprocess.run(_cmd(images, killed, steps), env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "--resume" in again.stderr.strip().splitlines()[-1]
    # other settings are refused too
    other = subprocess.run(_cmd(images, killed, steps, "--seed", "9", "--resume"), env=_env(), capture_output=True,
                           text=True, timeout=600)
    assert other.returncode == 2 and "other settings" in other.stderr and "seed" in other.stderr

    resumed = subprocess.run(_cmd(images, killed, steps, "--resume"), env=_env(), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {killed.with_suffix('.checkpoint')} at step {at}" in resumed.stderr
    a, b = load_file(str(whole)), load_file(str(killed))
    assert a.keys() == b.keys() and len(a) > 0
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed LoRA differs from the uninterrupted one"
    ra, rb = (json.loads(p.with_suffix(".json").read_text()) for p in (whole, killed))
    assert ra["curve"] == rb["curve"] and rb["steps"] == steps
    assert not killed.with_suffix(".checkpoint").exists()  # removed once the LoRA is written


def test_written_lora_is_what_generate_reads(tmp_path, images, ref_model_path, capsys):
    from pocketsd.palettize.lora import read_lora

    out = tmp_path / "style.safetensors"
    argv = ["lora", "train", "--images", str(images), "--out", str(out), "--steps", "2", "--lr", "1e-3",
            "--resolution", "64", "--rank", "4", "--alpha", "2", "--batch", "2", "--device", "cpu", "--quiet",
            "--preview-every", "1", "--preview-steps", "2", "--preview-prompt", "a red circle on a white background"]
    assert cli(argv) == 0
    assert "wrote" in capsys.readouterr().out
    with safe_open(str(out), "pt") as fh:
        keys = list(fh.keys())
        meta = json.loads(fh.metadata()["lora_adapter_metadata"])
    assert keys and all(k.startswith("unet.") and (".lora_A.weight" in k or ".lora_B.weight" in k) for k in keys)
    assert meta["unet.r"] == 4 and meta["unet.lora_alpha"] == 2
    lora = read_lora(out)
    assert all(layer.alpha == 2 and layer.rank == 4 for layer in lora.layers.values())
    assert any(name.endswith("conv2") for name in lora.layers) and any(name.endswith("to_q") for name in lora.layers)
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["steps"] == 2 and report["layers"] == len(lora.layers) and report["data"]["images"] == 6
    previews = sorted((tmp_path / "style.previews").glob("*.png"))
    assert [p.name for p in previews] == ["step_000001.png", "step_000002.png"]
    assert Image.open(previews[0]).size == (64, 64)
    png = tmp_path / "g.png"
    assert cli(["generate", "a red circle on a white background", "--lora", f"{out}:0.5", "--steps", "2",
                "--out", str(png), "--quiet"]) == 0 and png.exists()


def test_text_encoder_factors_are_written_beside_the_unet(tmp_path, images):
    out = tmp_path / "te.safetensors"
    assert cli(["lora", "train", "--images", str(images), "--out", str(out), "--steps", "1", "--text-encoders"]
               + FAST) == 0
    keys = load_file(str(out)).keys()
    for part in ("unet.", "text_encoder.", "text_encoder_2."):
        assert any(k.startswith(part) and k.endswith("lora_A.weight") for k in keys), part
    assert any(".self_attn.q_proj." in k for k in keys)


# ---- compressed models: QLoRA --------------------------------------------------------------------------------
def test_frozen_compressed_backward_matches_autograd(compressed):
    from pocketsd.artifacts.compressed import read_compressed_model
    from pocketsd.models import load_compressed_component
    from pocketsd.palettize.layer import CompressedConv2d, CompressedLinear, compressed_layers
    from pocketsd.train.adapters import frozen_forward

    unet = load_compressed_component(read_compressed_model(compressed), "unet", mode="packed")
    layers = compressed_layers(unet)
    lin = next(l for l in layers.values() if isinstance(l, CompressedLinear) and l.smooth is not None and l.rank)
    conv = next(l for l in layers.values() if isinstance(l, CompressedConv2d) and l.shape[2] == 3)
    g = torch.Generator().manual_seed(0)
    for layer, shape in ((lin, (2, 5, lin.shape[1])), (conv, (2, conv.shape[1], 8, 8))):
        for mode in ("packed", "dense"):
            layer.set_mode(mode)
            x = torch.randn(shape, generator=g, requires_grad=True)
            w = torch.randn(layer(x).shape, generator=g)
            (layer(x) * w).sum().backward()  # the layer's own autograd
            want, x.grad = x.grad.clone(), None
            y = frozen_forward(layer, x)
            (y * w).sum().backward()
            torch.testing.assert_close(y, layer(x))
            torch.testing.assert_close(x.grad, want, rtol=1e-4, atol=1e-5)
        layer.set_mode("packed")


def test_compressed_training_only_moves_the_new_factors_and_merges_byte_identical(tmp_path, compressed, images):
    from convert_support import compressed_unet_layers

    from pocketsd.palettize.lora import read_lora
    from pocketsd.train.lora import train_lora
    from pocketsd.train.options import TrainOptions

    lora_path = tmp_path / "q.safetensors"
    report = train_lora(TrainOptions(images=images, out=lora_path, model=str(compressed), rank=4, steps=3, lr=1e-2,
                                     batch=2, resolution=64, preview_every=0, unet_mode="packed"), log=lambda m: None)
    assert report["model"]["kind"] == "compressed" and report["model"]["unet_mode"] == "packed"
    lora = read_lora(lora_path)
    assert lora.layers and all(layer.up.abs().max() > 0 for layer in lora.layers.values())  # B learned from zero

    merged = tmp_path / "merged"
    assert cli(["lora", "merge", "--model", str(compressed), "--lora", str(lora_path), "--out", str(merged)]) == 0
    with safe_open(str(compressed / "unet/pocketsd_unet.safetensors"), "pt") as f0, \
            safe_open(str(merged / "unet/pocketsd_unet.safetensors"), "pt") as f1:
        residual = [k for k in f0.keys() if k.rsplit(".", 1)[1] in ("codes", "lut", "scales", "smooth", "bias")]
        assert len(residual) > 100
        for k in residual:
            assert f0.get_tensor(k).numpy().tobytes() == f1.get_tensor(k).numpy().tobytes(), k
    before, after = compressed_unet_layers(compressed), compressed_unet_layers(merged)
    widened = [n for n in lora.layers if n in before]
    assert widened
    for name in widened:
        b, a = before[name], after[name]
        assert a.rank == b.rank + lora.layers[name].rank
        if b.rank:  # the stored branch is kept bit for bit, the LoRA's columns appended
            assert torch.equal(a.lowrank_up[:, :b.rank], b.lowrank_up)
            assert torch.equal(a.lowrank_down[:b.rank], b.lowrank_down)
        up, down = lora.layers[name].factors(1.0)
        assert torch.equal(a.lowrank_up[:, b.rank:], up.half())


def test_sd_family_with_v_prediction_trains(tmp_path, images, ref_model_path):
    """SD 1.x/2.x layout (one text encoder, no size conditioning), its scheduler set to v-prediction as SD 2.x's."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from pocketsd.palettize.lora import read_lora

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=16, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=16,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
                                attention_head_dim=2)
    scheduler = EulerDiscreteScheduler.from_pretrained(ref_model_path / "scheduler", prediction_type="v_prediction")
    StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(ref_model_path / "vae"), unet=unet,
        text_encoder=CLIPTextModel.from_pretrained(ref_model_path / "text_encoder", dtype=torch.float32),
        tokenizer=CLIPTokenizer.from_pretrained(ref_model_path / "tokenizer"), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False).save_pretrained(tmp_path / "sd")
    out = tmp_path / "sd.safetensors"
    argv = ["lora", "train", "--images", str(images), "--model", str(tmp_path / "sd"), "--out", str(out),
            "--steps", "2", "--preview-steps", "2"] + [a for a in FAST if a not in ("--preview-every", "0")]
    assert cli(argv + ["--preview-every", "2"]) == 0
    lora = read_lora(out)
    assert lora.layers and all(n.startswith(("down_blocks", "up_blocks", "mid_block")) for n in lora.layers)
    assert (tmp_path / "sd.previews" / "step_000002.png").is_file()
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["model"]["family"] == "sd" and all(np.isfinite(report["curve"]))


def test_copy_space_check_reads_drawn_layouts():
    """The proof's pixel check: every drawn copy-space scene passes with its colour and shape read right, and the
    same scenes drawn in the centre fail it."""
    import random

    from pocketsd.data.grammar import Scene
    from pocketsd.refmodel.copyspace import EVAL_SCENES, STYLE, score
    from pocketsd.refmodel.drawing import draw_scene

    styled = [draw_scene(Scene(s.color, s.shape, s.background, None, STYLE), random.Random(k))
              for k, s in enumerate(EVAL_SCENES)]
    plain = [draw_scene(Scene(s.color, s.shape, s.background, "in the center"), random.Random(k))
             for k, s in enumerate(EVAL_SCENES)]
    drawn = score(styled, EVAL_SCENES)
    assert (drawn["style_shown"], drawn["color_right"], drawn["shape_right"]) == (12, 12, 12)
    assert score(plain, EVAL_SCENES)["style_shown"] == 0
