"""The reference model's depth ControlNet: depth maps of the drawn scenes agree with the drawn images (near = bright),
the trainer's depth condition trains, saves a loadable ControlNet and resumes where a stopped run left off,
`generate --depth` finds the model's own depth ControlNet, the benchmark's reader reads drawn objects right, and the
depth ControlNet converts to Core ML with its compressed weights read back bit for bit."""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from pocketsd.data.grammar import BACKGROUNDS, Scene

ROOT = Path(__file__).resolve().parents[1]


def _benchmark():
    spec = importlib.util.spec_from_file_location("depth_benchmark", ROOT / "benchmarks" / "depth.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _object_pixels(image: np.ndarray, background: str) -> np.ndarray:
    """CHW image in [-1, 1] → pixels clearly not the background colour (the drawn objects)."""
    rgb = (image.transpose(1, 2, 0) + 1.0) * 127.5
    return np.linalg.norm(rgb - np.asarray(BACKGROUNDS[background], dtype=np.float32), axis=-1) > 60


# ---- depth maps ------------------------------------------------------------------------------------------------
def test_depth_maps_agree_with_the_drawn_images():
    from pocketsd.refmodel.depth import depth_dataset
    from pocketsd.refmodel.drawing import make_dataset

    scenes, images, depths = depth_dataset(24, seed=3, p_pair=0.5)
    same_scenes, same_images = make_dataset(24, 3, p_pair=0.5)
    assert scenes == same_scenes and np.array_equal(images, same_images)  # the image stream is untouched
    assert any(s.second for s in scenes) and any(not s.second for s in scenes)
    for scene, image, depth in zip(scenes, images, depths):
        drawn = _object_pixels(image, scene.background)
        floor_nearest = max(depth[0].max(), depth[-1].max())  # the top and bottom rows hold only floor
        near = depth > floor_nearest + 0.05
        # object pixels ↔ nearer than the floor (a blended edge pixel may go either way)
        agree = (drawn == near).mean()
        assert agree > 0.98, (scene, agree)
        assert depth[drawn].mean() > depth[~drawn].mean() + 0.2  # near = bright
        assert ndimage.label(near, structure=np.ones((3, 3)))[1] == (2 if scene.second else 1)  # one cut-out each


def test_depth_maps_are_fed_as_a_user_map_is():
    from pocketsd.refmodel.depth import depth_controls, depth_dataset

    scenes, images, depths = depth_dataset(4, seed=8)
    controls = depth_controls(depths)
    assert controls.dtype == np.uint8 and controls.shape == (4, 128, 128)
    for scene, image, control in zip(scenes, images, controls):
        drawn = _object_pixels(image, scene.background)
        assert control.max() == 255 and control.min() == 0  # stretched to its own range, as load_depth does
        inside = ndimage.binary_erosion(drawn, iterations=2)  # away from the anti-aliased edges
        outside = ~ndimage.binary_dilation(drawn, iterations=2)
        assert control[inside].min() > control[outside].max()  # every object pixel nearer than all of the floor


def test_depth_draws_are_seeded():
    from pocketsd.refmodel.depth import depth_dataset

    a, b = depth_dataset(3, seed=11)[2], depth_dataset(3, seed=11)[2]
    assert np.array_equal(a, b) and not np.array_equal(a, depth_dataset(3, seed=12)[2])


# ---- training ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def depth_setup(ref_pipeline):
    from pocketsd.refmodel import train_controlnet as tc

    data = tc.prepare(ref_pipeline, 6, 5, tc.CONDITIONS["depth"], tc.V1_GRAMMAR)
    alphas = ref_pipeline.scheduler.alphas_cumprod.float()
    snr = alphas / (1 - alphas)
    held = tc.fixed_batch(tc.prepare(ref_pipeline, 2, 6, tc.CONDITIONS["depth"], tc.V1_GRAMMAR), snr, 7)
    return SimpleNamespace(tc=tc, pipe=ref_pipeline, data=data, held=held, snr=snr)


def _curves(s, cn):
    return {"loss": [], "held_out": [[0, s.tc.held_out_loss(s.pipe.unet, cn, s.held, s.snr)]]}


def test_training_resumes_where_a_stopped_run_left_off(depth_setup, tmp_path, monkeypatch):
    """4 steps straight, or 2 steps stopped by the clock and 2 more from the saved state: the same weights."""
    import time as real_time

    s = depth_setup
    torch.set_num_threads(1)
    run = dict(steps=4, batch=2, lr=1e-3, seed=0, sampling="cubic", eval_every=2)
    straight = s.tc.build_controlnet(s.pipe.unet, 0)
    s.tc.train(s.pipe.unet, straight, s.data, s.held, s.snr, deadline=None, curves=_curves(s, straight), **run)

    state = tmp_path / "controlnet_depth.train-state.pt"
    ticks = iter(range(100))  # the deadline check reads the clock once per step: stop before the third
    monkeypatch.setattr(s.tc, "time", SimpleNamespace(time=lambda: next(ticks), strftime=real_time.strftime))
    stopped = s.tc.build_controlnet(s.pipe.unet, 0)
    assert s.tc.train(s.pipe.unet, stopped, s.data, s.held, s.snr, deadline=1.5, curves=_curves(s, stopped),
                      state_path=state, checkpoint_every=100, **run) == 2
    assert state.is_file()
    monkeypatch.undo()

    resumed = s.tc.build_controlnet(s.pipe.unet, 0)
    curves = _curves(s, resumed)
    assert s.tc.train(s.pipe.unet, resumed, s.data, s.held, s.snr, deadline=None, curves=curves,
                      state_path=state, **run) == 4
    assert curves["resumed_at_step"] == 2 and len(curves["loss"]) == 4
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert any((p != 0).any() for p in resumed.controlnet_down_blocks.parameters())  # it did train


def test_depth_trainer_command_writes_a_loadable_controlnet(tmp_path, ref_model_path):
    from pocketsd.pipeline.controlnet import load_controlnet
    from pocketsd.refmodel import train_controlnet as tc

    model = tmp_path / "model"
    shutil.copytree(ref_model_path, model, ignore=shutil.ignore_patterns("controlnet*"))
    results = tmp_path / "results"
    argv = ["--condition", "depth", "--base", str(model), "--steps", "2", "--images", "4", "--held-out", "2",
            "--batch", "2", "--results", str(results)]
    tc.main(argv)
    out = model / "controlnet_depth"
    unet_config = json.loads((model / "unet" / "config.json").read_text())
    assert load_controlnet(out, unet_config) is not None
    assert sum(f.stat().st_size for f in out.iterdir()) <= 10_000_000  # ships if ≤ 10 MB
    assert not (model / "controlnet_depth.train-state.pt").exists()  # finished: nothing left to resume
    summary = json.loads((results / "refmodel_controlnet_depth.json").read_text())
    assert summary["condition"] == "depth" and summary["steps_done"] == 2
    assert summary["reference_model"]["version"] >= 1 and "p_pair" in summary["data_grammar"]
    assert (results / "refmodel_controlnet_depth.png").is_file()
    assert not (results / "refmodel_controlnet.json").exists()  # the sketch one's curve is not touched


def test_trainer_refuses_a_folder_that_is_not_a_model(tmp_path, capsys):
    from pocketsd.refmodel import train_controlnet as tc

    with pytest.raises(SystemExit) as exc:
        tc.main(["--condition", "depth", "--base", str(tmp_path)])
    assert exc.value.code == 2 and "not a diffusers SDXL folder" in capsys.readouterr().err


# ---- generate --depth finds the model's own ------------------------------------------------------------------------
def test_depth_uses_the_models_own_depth_controlnet(tmp_path, ref_model_path):
    from pocketsd.pipeline.options import GenerateOptions, check_options

    model = tmp_path / "model"
    shutil.copytree(ref_model_path, model, ignore=shutil.ignore_patterns("controlnet*"))
    depth = tmp_path / "depth.png"
    Image.fromarray(np.tile(np.linspace(0, 255, 128, dtype=np.uint8), (128, 1))).save(depth)
    from pocketsd.errors import BadInput

    with pytest.raises(BadInput, match="ships none"):
        check_options(GenerateOptions(prompt="a red circle", model=str(model), depth=depth))
    (model / "controlnet_depth").mkdir()
    (model / "controlnet_depth" / "config.json").write_text("{}")
    opts = GenerateOptions(prompt="a red circle", model=str(model), depth=depth)
    check_options(opts)
    assert opts.controlnet == model / "controlnet_depth"
    given = tmp_path / "mine"
    given.mkdir()
    (given / "config.json").write_text("{}")
    opts = GenerateOptions(prompt="a red circle", model=str(model), depth=depth, controlnet=given)
    check_options(opts)
    assert opts.controlnet == given  # a ControlNet the user names wins


# ---- the benchmark's reader, on drawn images ----------------------------------------------------------------------
@pytest.mark.parametrize("shape", ["circle", "square", "triangle"])
@pytest.mark.parametrize("position", ["on the left", "at the bottom", None])
def test_benchmark_reads_drawn_objects_where_the_depth_map_has_them(shape, position):
    from pocketsd.refmodel.depth import draw_depth
    from pocketsd.refmodel.drawing import draw_scene

    bench = _benchmark()
    scene = Scene("green", shape, "gray", position)
    rng, twin = random.Random(4), random.Random(4)
    image = draw_scene(scene, rng)
    depth = draw_depth(scene, twin, random.Random(5))
    read, target = bench.read_object(image), bench.map_object(depth)
    verdict = bench.judge(read, target)
    assert verdict["place_right"] and verdict["size_right"], verdict
    assert verdict["offset_px"] < 2 and abs(verdict["size_error"]) < 0.1, verdict
    # and a map of the object on the other side is told apart
    other_side = "on the right" if read[0] < 64 else "on the left"
    moved = draw_depth(Scene("green", shape, "gray", other_side), random.Random(4), random.Random(5))
    assert not bench.judge(read, bench.map_object(moved))["place_right"]


def test_benchmark_reader_finds_nothing_on_an_empty_image():
    bench = _benchmark()
    assert bench.read_object(Image.new("RGB", (128, 128), BACKGROUNDS["white"])) is None
    assert not bench.judge(None, (64.0, 64.0, 20.0))["place_right"]


# ---- Core ML -----------------------------------------------------------------------------------------------------
def test_depth_controlnet_converts_with_bit_exact_readback(ref_model_path, tmp_path):
    """The shipped depth ControlNet if it is there, else one of the trainer's config with random zero convolutions."""
    from pocketsd.artifacts.bundle import read_bundle_manifest
    from pocketsd.convert.bundle import ConvertOptions
    from pocketsd.convert.mil_weights import decompressed_weights, load_program
    from pocketsd.convert.run import convert_bundle
    from pocketsd.models.controlnet import shipped_controlnet

    folder = shipped_controlnet(ref_model_path, "depth")
    if folder is None:
        from diffusers import UNet2DConditionModel

        from pocketsd.refmodel.train_controlnet import build_controlnet, save_controlnet

        cn = build_controlnet(UNet2DConditionModel.from_pretrained(ref_model_path / "unet"), 0)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in [*cn.controlnet_down_blocks.parameters(), *cn.controlnet_mid_block.parameters(),
                      *cn.controlnet_cond_embedding.conv_out.parameters()]:  # zero-initialised, as untrained
                p.normal_(0, 0.05, generator=g)
        folder = tmp_path / "controlnet_depth"
        save_controlnet(cn, folder)
    out = tmp_path / "bundle"
    convert_bundle(ConvertOptions(model=str(ref_model_path), out=out, only=["controlnet/Depth"],
                                  controlnets=[("Depth", folder)], controlnet_recipe="w4r16"), log=lambda m: None)
    bundle = read_bundle_manifest(out)
    assert bundle.controlnets() == ["Depth"]
    cn_in, cn_out = bundle.specs("controlnet/Depth")
    assert cn_in["controlnet_cond"].shape[1:] == (3, 128, 128)
    assert list(cn_out)[-1] == "mid_block_res_sample"
    entry = bundle.components["controlnet/Depth"]
    acc = entry["controlnet"]["accounting"]
    assert entry["verify"]["bit_exact"] and entry["verify"]["layers_matched"] == acc["compressed_layers"] > 0
    assert len(decompressed_weights(load_program(out / entry["file"]))) == entry["verify"]["constexpr_ops"]
    bundle.verify()
