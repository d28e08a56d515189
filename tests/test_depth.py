"""Depth → image (`--depth FILE --controlnet DIR`): depth maps of any bit depth are read near = bright (or inverted),
a depth ControlNet conditions the UNet (a random-weight one built here; the reference model's own trained one is
tested in test_depth_controlnet.py), and every bad input — no ControlNet, a map that is not an image, a ControlNet
for another UNet — is one line, exit 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pocketsd.cli import main
from pocketsd.errors import BadInput
from pocketsd.pipeline.inputs import load_depth

PROMPT = "a red circle on a white background"


def quiet(_msg):
    pass


def ramp(h=128, w=128) -> np.ndarray:
    """Near (1) at the left, far (0) at the right."""
    return np.tile(np.linspace(1.0, 0.0, w), (h, 1))


@pytest.mark.parametrize("kind", ["8bit", "16bit", "float", "rgb"])
def test_depth_maps_of_any_bit_depth(tmp_path, kind):
    d = ramp(96, 96)
    path = tmp_path / ("d.tif" if kind == "float" else "d.png")
    if kind == "8bit":
        Image.fromarray((d * 200 + 20).astype(np.uint8)).save(path)  # not using the full range: stretched
    elif kind == "16bit":
        Image.fromarray((d * 60000 + 1000).astype(np.uint16)).save(path)
    elif kind == "float":
        Image.fromarray((d * 7.5 + 0.5).astype(np.float32)).save(path)  # metric-like values
    else:
        Image.fromarray(np.stack([(d * 255).astype(np.uint8)] * 3, -1)).save(path)
    loaded = load_depth(path, 128, 128, warn=quiet)
    assert loaded.depth.shape == (128, 128) and loaded.control.size == (128, 128)
    assert loaded.depth.min() < 0.02 and loaded.depth.max() > 0.98  # stretched to its own range
    assert loaded.depth[:, :8].mean() > 0.9 and loaded.depth[:, -8:].mean() < 0.1  # near = bright
    gray = np.asarray(loaded.control)
    assert (gray[..., 0] == gray[..., 1]).all() and gray[:, :8].mean() > 230


def test_depth_invert_and_colour_note(tmp_path):
    d = ramp()
    Image.fromarray((d * 255).astype(np.uint8)).save(tmp_path / "d.png")
    inv = load_depth(tmp_path / "d.png", 128, 128, invert=True, warn=quiet)
    assert inv.depth[:, :8].mean() < 0.1  # the left (bright in the file) is now far
    rgb = np.zeros((128, 128, 3), np.uint8)
    rgb[..., 0] = (d * 255).astype(np.uint8)  # a false-colour map
    Image.fromarray(rgb).save(tmp_path / "c.png")
    notes = []
    load_depth(tmp_path / "c.png", 128, 128, warn=notes.append)
    assert any("colour" in n for n in notes)


@pytest.mark.parametrize("case,match", [("text", "not an image"), ("flat", "flat"), ("nan", "NaN")])
def test_bad_depth_maps_are_one_line(tmp_path, case, match):
    path = tmp_path / ("d.tif" if case == "nan" else "d.png")
    if case == "text":
        path.write_text("depth, in words")
    elif case == "flat":
        Image.new("L", (64, 64), 90).save(path)
    else:
        arr = ramp(64, 64).astype(np.float32)
        arr[3, 3] = np.nan
        Image.fromarray(arr).save(path)
    with pytest.raises(BadInput, match=match) as err:
        load_depth(path, 128, 128, warn=quiet)
    assert "\n" not in str(err.value)


# ---- through the command, with a depth ControlNet built here ----------------------------------------------
@pytest.fixture(scope="module")
def depth_controlnet(tmp_path_factory, ref_pipeline) -> Path:
    """A random-weight ControlNet for the reference UNet, saved as a diffusers folder named like a depth one."""
    from diffusers import ControlNetModel

    cn = ControlNetModel.from_unet(ref_pipeline.unet, conditioning_embedding_out_channels=(16, 16, 32, 32))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in [*cn.controlnet_down_blocks.parameters(), *cn.controlnet_mid_block.parameters(),
                  *cn.controlnet_cond_embedding.conv_out.parameters()]:
            p.normal_(0, 0.05, generator=g)
    folder = tmp_path_factory.mktemp("depth") / "controlnet-depth-tiny"
    cn.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture
def depth_png(tmp_path) -> Path:
    Image.fromarray((ramp() * 65535).astype(np.uint16)).save(tmp_path / "depth.png")
    return tmp_path / "depth.png"


def test_cli_depth_with_a_depth_controlnet(tmp_path, depth_png, depth_controlnet, capsys):
    out = tmp_path / "out.png"
    assert main(["generate", PROMPT, "--depth", str(depth_png), "--controlnet", str(depth_controlnet), "--steps", "2",
                 "--controlnet-scale", "0.8", "--control-guidance-end", "0.5", "--out", str(out), "--quiet"]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["input"]["depth"] == str(depth_png) and report["input"]["controlnet"] == str(depth_controlnet)
    assert report["input"]["controlnet_scale"] == 0.8 and report["input"]["control_guidance"] == [0.0, 0.5]
    assert "looks like" not in capsys.readouterr().err  # a folder named "depth": no conditioning warning


def test_depth_conditions_the_unet(depth_png, depth_controlnet, ref_model_path):
    """The depth map reaches the UNet through the ControlNet: scale 0 is the plain result, scale 1 is not."""
    from pocketsd.pipeline.controlnet import controlnet_hook
    from pocketsd.pipeline.generate import GenerationRequest, generate
    from pocketsd.pipeline.torch_backend import open_backend

    backend = open_backend(str(ref_model_path))
    control = load_depth(depth_png, 128, 128, warn=quiet).control
    kw = dict(prompt=PROMPT, steps=2, guidance=5.0, seed=0)
    plain = generate(backend, GenerationRequest(**kw), decode=False).latents
    off = generate(backend, GenerationRequest(**kw, unet_extra=controlnet_hook(depth_controlnet, control, backend,
                                                                               scale=0.0)), decode=False).latents
    on = generate(backend, GenerationRequest(**kw, unet_extra=controlnet_hook(depth_controlnet, control, backend)),
                  decode=False).latents
    assert torch.allclose(plain, off, atol=1e-5) and (on - plain).abs().max() > 1e-3


def _bad(argv, tmp_path, capsys, monkeypatch, match):
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    rc = main(["generate", PROMPT, *argv, "--steps", "1", "--out", str(tmp_path / "o.png"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert match in err, err
    assert sorted(tmp_path.rglob("*")) == before  # nothing written
    return err


def test_depth_without_controlnet_says_what_to_download(tmp_path, depth_png, capsys, monkeypatch, ref_model_path):
    import shutil

    model = tmp_path / "model"  # a model that ships no depth ControlNet (the reference model has its own)
    shutil.copytree(ref_model_path, model, ignore=shutil.ignore_patterns("controlnet*"))
    err = _bad(["--depth", str(depth_png), "--model", str(model)], tmp_path, capsys, monkeypatch,
               "diffusers/controlnet-depth-sdxl-1.0")
    assert "--controlnet DIR" in err and "no depth estimator" in err and "ships none" in err


def test_depth_that_is_not_an_image(tmp_path, depth_controlnet, capsys, monkeypatch):
    (tmp_path / "depth.png").write_text("not a PNG")
    _bad(["--depth", str(tmp_path / "depth.png"), "--controlnet", str(depth_controlnet)], tmp_path, capsys,
         monkeypatch, "not an image")


def test_controlnet_whose_blocks_do_not_fit(tmp_path, depth_png, depth_controlnet, capsys, monkeypatch):
    import shutil

    other = tmp_path / "controlnet-depth-xl"
    shutil.copytree(depth_controlnet, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["block_out_channels"] = [320, 640, 1280]
    (other / "config.json").write_text(json.dumps(cfg))
    _bad(["--depth", str(depth_png), "--controlnet", str(other)], tmp_path, capsys, monkeypatch, "does not fit this UNet")


@pytest.mark.parametrize("argv,match", [
    (["--depth-invert"], "--depth-invert goes with --depth"),
    (["--controlnet-scale", "0.5"], "only apply with --controlnet"),
])
def test_depth_and_controlnet_flags_alone(tmp_path, capsys, monkeypatch, argv, match):
    _bad(argv, tmp_path, capsys, monkeypatch, match)
