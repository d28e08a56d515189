"""Distillation of the small tensors (`palettize.distill`, the layer's "train" mode, `compress --distill-*`)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from pocketsd.cli import main as cli
from pocketsd.palettize.compress import compress_network
from pocketsd.palettize.distill import DistillSettings, TeacherSet, distill, output_snr_db, record_teacher
from pocketsd.palettize.layer import compressed_layers, compressed_state_dict, trainable_parameters
from pocketsd.palettize.lowrank import compress_layer
from pocketsd.palettize.quantizers import QuantSpec
from pocketsd.palettize.recipes import make_recipe


# ---- the layer's train mode ------------------------------------------------------------------------
@pytest.mark.parametrize("quantizer", ["palette", "int4"])
@pytest.mark.parametrize("like", [nn.Linear(64, 32), nn.Conv2d(16, 32, 3, padding=1)], ids=["linear", "conv"])
def test_train_mode_is_the_dense_function_and_commit_keeps_codes(quantizer, like):
    torch.manual_seed(0)
    layer = compress_layer(like.weight, 4, QuantSpec(quantizer, 4, 16, 16), None, None, (0.0,), 1).to_layer("x", like)
    x = torch.randn(3, 64) if isinstance(like, nn.Linear) else torch.randn(2, 16, 6, 6)
    dense = copy.deepcopy(layer).set_mode("dense")(x)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    layer.set_mode("train")
    assert set(layer.state_dict()) == set(before)  # the state dict stays the format in train mode
    torch.testing.assert_close(layer(x), dense, rtol=0, atol=1e-5)
    table = "lut" if quantizer == "palette" else "scales"
    assert sorted(layer.trained) == sorted(["lowrank_up", "lowrank_down", table, "bias"])
    layer(x).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.trained.values())
    with torch.no_grad():
        for p in layer.trained.values():
            p.mul_(1.05)
    change = layer.commit_trained()
    after = layer.state_dict()
    assert set(after) == set(before)
    for k, v in before.items():
        assert after[k].dtype == v.dtype and after[k].shape == v.shape, k
    assert torch.equal(after["codes"], before["codes"])  # byte for byte
    assert all(0.04 < c < 0.06 for c in change.values()), change
    layer.set_mode("dense")
    assert not layer.trained


def test_train_mode_only_selected_tensors():
    like = nn.Linear(64, 32)
    layer = compress_layer(like.weight, 0, QuantSpec("palette", 4, 16), None, None, (0.0,), 0).to_layer("x", like)
    layer.set_mode("train", trainable=("lowrank",))  # rank 0: nothing to train
    assert layer.trained == {}
    layer.set_mode("train", trainable=("bias",))
    assert list(layer.trained) == ["bias"]
    with pytest.raises(ValueError, match="subset"):
        layer.set_mode("train", trainable=("codes",))


# ---- distill on a tiny UNet --------------------------------------------------------------------------
def _tiny_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=8, norm_num_groups=8).eval()


def _teacher(unet, prompts=6, calls=4) -> TeacherSet:
    """Random guided calls: per prompt an (uncond, cond) context pair, `calls` timesteps each."""
    g = torch.Generator().manual_seed(1)
    context = torch.randn(2 * prompts, 7, 16, generator=g)
    n = prompts * calls
    sample = torch.randn(2 * n, 4, 8, 8, generator=g)
    sample[1::2] = sample[0::2]  # both halves of a pair see the same latent
    t = torch.randint(0, 1000, (n,), generator=g).float().repeat_interleave(2)
    prompt = torch.arange(prompts).repeat_interleave(calls).repeat_interleave(2)
    ctx = 2 * prompt + torch.tensor([0, 1]).repeat(n)
    with torch.no_grad():
        target = unet(sample, t, context[ctx]).sample
    return TeacherSet(sample, t, ctx, target, prompt, {"encoder_hidden_states": context})


@pytest.fixture(scope="module")
def tiny():
    teacher_unet = _tiny_unet()
    teacher = _teacher(teacher_unet)
    student = copy.deepcopy(teacher_unet)
    compress_network(student, make_recipe("w4r16", refine_iters=0))
    return student, teacher


def test_distill_raises_held_out_snr_and_keeps_the_format(tiny):
    base, teacher = tiny
    student = copy.deepcopy(base)
    before = {k: v.clone() for k, v in compressed_state_dict(student).items()}
    report = distill(student, teacher, DistillSettings(steps=24, batch_pairs=4, eval_every=8, seed=3))
    after = compressed_state_dict(student)
    assert report.steps_done == 24 and report.stopped_by == "steps" and not report.time_paced
    assert report.held_out_snr_db_after > report.held_out_snr_db_before + 0.5, report
    assert report.trainable_values > 0 and not trainable_parameters(student)  # back out of train mode
    assert set(after) == set(before)
    changed = 0
    for k, v in before.items():
        assert after[k].dtype == v.dtype and after[k].shape == v.shape, k
        if k.endswith(".codes"):
            assert torch.equal(after[k], v), f"{k} changed"  # codes byte-identical
        elif not torch.equal(after[k], v):
            changed += 1
    assert changed > 0
    assert all(layer.mode == "packed" for layer in compressed_layers(student).values())
    # the held-out figure is what the written (fp16-rounded) tensors give, within rounding
    _, held = teacher.split(0.125)
    assert abs(output_snr_db(student, teacher, held[:64]) - report.held_out_snr_db_after) < 0.2


def test_distill_is_deterministic_for_a_seed(tiny):
    base, teacher = tiny
    runs = []
    for seed in (5, 5, 6):
        student = copy.deepcopy(base)
        distill(student, teacher, DistillSettings(steps=6, batch_pairs=2, eval_every=3, seed=seed))
        runs.append(compressed_state_dict(student))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert any(not torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_distill_zero_steps_and_time_budget(tiny):
    base, teacher = tiny
    student = copy.deepcopy(base)
    before = compressed_state_dict(student)
    report = distill(student, teacher, DistillSettings(steps=0))
    assert report.steps_done == 0 and all(torch.equal(before[k], v) for k, v in compressed_state_dict(student).items())
    report = distill(copy.deepcopy(base), teacher, DistillSettings(steps=100000, minutes=1e-4, eval_every=5))
    assert report.stopped_by == "time" and report.steps_done < 100000


def test_record_teacher_pairs_and_schedule(ref_pipeline):
    teacher = record_teacher(ref_pipeline, ["a red circle on a white background", "a blue square on a black background",
                                            "a green triangle on a grey background"], steps=3, batch_size=2)
    assert teacher.pairs == 3 * 3  # every step of every prompt
    assert torch.equal(teacher.sample[0::2], teacher.sample[1::2])  # a pair shares its latent
    assert torch.equal(teacher.timestep[0::2], teacher.timestep[1::2])
    assert len(teacher.info["timesteps"]) == 3 and teacher.info["timesteps"][0] > teacher.info["timesteps"][-1]
    train, held = teacher.split(0.34)
    assert set(teacher.prompt[2 * held].tolist()) == {2} and 2 not in set(teacher.prompt[2 * train].tolist())
    inputs, target = teacher.batch(torch.tensor([0, 4]))
    with torch.no_grad():
        out = ref_pipeline.unet(**inputs, return_dict=False)[0]
    torch.testing.assert_close(out, target, rtol=1e-4, atol=1e-4)  # the cached outputs are the fp16 UNet's


# ---- the command -------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,needle", [
    (["--distill-steps", "-1"], "--distill-steps"),
    (["--distill-minutes", "0"], "--distill-minutes"),
    (["--distill-minutes", "nan"], "--distill-minutes"),
    (["--distill-tensors", "codes"], "--distill-tensors"),
    (["--distill-tensors", ""], "--distill-tensors"),
    (["--distill-lr", "3"], "--distill-lr"),
    (["--distill-batch", "0"], "--distill-batch"),
    (["--distill-epochs", "0"], "--distill-epochs"),
])
def test_bad_distill_options_exit_2_with_one_line(tmp_path, capsys, args, needle):
    rc = cli(["compress", "--out", str(tmp_path / "c")] + args)
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "c").exists()


FAST = ["--components", "unet", "--recipe", "w4r16", "--calib-count", "3", "--calib-steps", "2", "--refine-iters", "0",
        "--quiet"]

KILLER = """
import os, signal, sys
from pathlib import Path
from pocketsd.compress.run import CompressOptions, compress_model
from pocketsd.palettize.calibrate import CalibrationSettings
from pocketsd.palettize.recipes import make_recipe
seen = []
def on_progress(task, n, total, detail=""):
    seen.append(task)
    if task.startswith("distilling") and sum(t.startswith("distilling") for t in seen) == 3:
        print("killing during distillation", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
compress_model(CompressOptions(Path(sys.argv[1]), recipe=make_recipe("w4r16", refine_iters=0, distill_steps=1000,
                                                                     distill=sys.argv[2]),
                               calibration=CalibrationSettings(count=3, steps=2), components=("unet",)), on_progress)
"""


@pytest.mark.parametrize("mode", ["whole", "block"])
def test_killed_during_distillation_leaves_nothing_and_a_rerun_succeeds(tmp_path, ref_model_path, mode):
    out = tmp_path / "c"
    temp = tmp_path / "tmp"  # where the block cache goes (TMPDIR): a kill must not leave it behind for long
    temp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "python"), "TMPDIR": str(temp)}
    proc = subprocess.run([sys.executable, "-c", KILLER, str(out), mode], capture_output=True, text=True, env=env,
                          timeout=900)
    assert proc.returncode == -9 and "killing during distillation" in proc.stdout, proc.stderr[-2000:]
    assert not out.exists()
    rerun = subprocess.run([sys.executable, "-m", "pocketsd", "compress", "--out", str(out), "--distill", mode,
                            "--distill-steps", "4", *FAST], capture_output=True, text=True, env=env, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("c", "tmp")]
    assert leftovers == [], leftovers  # the killed run's temp folder was cleared by the re-run
    assert list(temp.iterdir()) == []  # and so was its block cache
    manifest = json.loads((out / "pocketsd.json").read_text())
    d = manifest["components"]["unet"]["calibration"]["distillation"]
    assert manifest["components"]["unet"]["recipe"]["distill_steps"] == 4
    if mode == "whole":
        assert d["steps_done"] == 4
    else:
        assert all(t["steps_done"] <= 4 for b in d["blocks"] for t in b["tried"].values())
