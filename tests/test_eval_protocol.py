"""`pocketsd eval`: the protocol (resume, settings-keyed image folders, seeds, reports) on drawn images, the command on
the reference model (2 steps, 3 prompts), bad input, and the two-process run against the one-process run."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pocketsd.cli import main
from pocketsd.data.prompt_sets import load_prompt_set, prompt_seed
from pocketsd.errors import BadInput
from pocketsd.eval.protocol import EvalPlan, ModelSide, image_name, run_eval, settings_key
from pocketsd.eval.report import grid_order
from pocketsd.refmodel.drawing import draw_scene

PROMPTS = load_prompt_set("reference", count=3)


class Drawer:
    """A stand-in model: draws each prompt's scene (so adherence is known) plus seeded noise of `sigma`, and records
    every (prompt id, seed) it was asked for. `fail_after` raises mid-run, like a crash."""

    def __init__(self, sigma: float, fail_after: int | None = None):
        self.sigma, self.fail_after, self.calls = sigma, fail_after, []

    def side(self, name: str, **settings) -> ModelSide:
        return ModelSide(name, {"drawer": name, "sigma": self.sigma, **settings}, lambda: self.make)

    def make(self, prompt, seed):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls.append((prompt.id, seed))
        image = np.asarray(draw_scene(prompt.scene, random.Random(0), size=64), dtype=np.float32)
        noise = np.random.default_rng(seed).normal(0, self.sigma, image.shape)
        return Image.fromarray(np.clip(image + noise, 0, 255).astype(np.uint8))


class _TinyFeatures(torch.nn.Module):
    """8 features instead of Inception's 2048: torchmetrics' FID of 2048-wide features spends tens of seconds in an
    eigendecomposition on a shared CPU; the path through the protocol is the same."""

    num_features = 8

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)

    def forward(self, images):
        return torch.relu(self.conv(images.float() / 255)).mean(dim=(2, 3))


@pytest.fixture
def tiny_fid(monkeypatch):
    from pocketsd.eval.fid import FidScorer

    monkeypatch.setattr(FidScorer, "random", classmethod(
        lambda cls, seed=0, device="cpu": cls(_TinyFeatures(), False, "random 8-feature net (test)", None, device)))


def _plan(tmp_path, **kw) -> EvalPlan:
    return EvalPlan(prompts=kw.pop("prompts", PROMPTS), out=tmp_path / "run", **kw)


def test_same_seed_per_prompt_for_both_models_and_a_full_report(tmp_path):
    a, b = Drawer(12.0), Drawer(0.0)
    doc = run_eval(_plan(tmp_path, metrics=("psnr", "ssim", "adherence"), seed_base=7), a.side("a"), b.side("b"))
    want = [(p.id, prompt_seed(p.id, 7)) for p in PROMPTS]
    assert a.calls == want and b.calls == want
    run = tmp_path / "run"
    for name in ("eval.json", "eval.md", "eval_grid.png", "eval_plot.png", "manifest.json"):
        assert (run / name).is_file(), name
    saved = json.loads((run / "eval.json").read_text())
    assert saved["ids"] == [p.id for p in PROMPTS] and saved["seeds"] == [s for _, s in want]
    psnr = saved["metrics"]["psnr"]
    assert psnr["n"] == 3 and len(psnr["per_item"]) == 3 and psnr["low"] < psnr["value"] < psnr["high"]
    assert 20 < psnr["value"] < 35  # noise σ = 12 of 255 → about 26 dB
    assert saved["metrics"]["adherence_against"]["value"] == 1.0  # B draws every scene exactly
    assert saved["skipped"] == [] and saved["real_weights"] == {}
    assert saved["models"]["model"]["made"] == 3 and saved["models"]["against"]["reused"] == 0
    folder = run / saved["models"]["model"]["images"]
    png = Image.open(folder / image_name(PROMPTS.prompts[0].id, want[0][1]))
    assert png.text["prompt"] == PROMPTS.prompts[0].text and png.text["seed"] == str(want[0][1])
    assert json.loads((folder / "settings.json").read_text())["settings"] == {"drawer": "a", "sigma": 12.0}
    md = (run / "eval.md").read_text()
    assert "| PSNR (A vs B, dB) | A |" in md and "none needed" in md
    assert doc["metrics"] == saved["metrics"]


def test_resume_more_metrics_later_and_other_settings(tmp_path):
    a, b = Drawer(8.0, fail_after=2), Drawer(0.0)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_eval(_plan(tmp_path, metrics=("psnr",)), a.side("a"), b.side("b"))
    a.fail_after = None
    doc = run_eval(_plan(tmp_path, metrics=("psnr",)), a.side("a"), b.side("b"))
    assert len(a.calls) == 3 and doc["models"]["model"]["made"] == 1  # the crash kept 2 whole images
    assert not list((tmp_path / "run").rglob(".*tmp*"))  # no half-written file
    # more metrics later: nothing is generated again
    doc = run_eval(_plan(tmp_path, metrics=("psnr", "ssim", "adherence")), a.side("a"), b.side("b"))
    assert len(a.calls) == 3 and len(b.calls) == 3
    assert set(doc["metrics"]) == {"psnr", "ssim", "adherence", "adherence_against"}
    assert doc["models"]["model"]["reused"] == 3
    # other settings: another folder, every image made again
    doc = run_eval(_plan(tmp_path, metrics=("psnr",)), a.side("a", steps=30), b.side("b"))
    assert len(a.calls) == 6 and doc["models"]["model"]["made"] == 3
    assert len(list((tmp_path / "run" / "images").iterdir())) == 3


def test_a_folder_whose_settings_differ_is_refused(tmp_path):
    a = Drawer(0.0)
    side = a.side("a")
    run_eval(_plan(tmp_path, metrics=("adherence",)), side)
    record = tmp_path / "run" / "images" / side.folder_name / "settings.json"
    data = json.loads(record.read_text())
    data["settings"]["sigma"] = 99
    record.write_text(json.dumps(data))
    with pytest.raises(BadInput, match="other settings"):
        run_eval(_plan(tmp_path, metrics=("adherence",)), side)


def test_settings_key_and_image_names():
    assert settings_key({"a": 1, "b": 2}) == settings_key({"b": 2, "a": 1})
    assert settings_key({"a": 1}) != settings_key({"a": 2})
    assert image_name("ref-red-circle-white", 5) == "ref-red-circle-white_s5.png"
    odd = image_name("a/b c", 1)
    assert "/" not in odd and " " not in odd and odd != image_name("a_b_c", 1)


def test_grid_order_is_worst_psnr_first():
    doc = {"ids": ["x", "y", "z"], "metrics": {"psnr": {"per_item": [30.0, "inf", 12.5]}}}
    assert grid_order(doc) == [2, 0, 1]
    assert grid_order({"ids": ["x", "y"], "metrics": {}}) == [0, 1]


def test_random_weight_metrics_are_marked_and_missing_weights_are_one_line(tmp_path, monkeypatch, tiny_fid):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("POCKETSD_LPIPS_ALEXNET", "POCKETSD_FID_INCEPTION"):
        monkeypatch.delenv(var, raising=False)
    a, b = Drawer(10.0), Drawer(0.0)
    (tmp_path / "missing").mkdir()
    (tmp_path / "random").mkdir()
    doc = run_eval(_plan(tmp_path / "missing", metrics=("psnr", "lpips", "fid")), a.side("a"), b.side("b"))
    assert [s.split(":")[0] for s in doc["skipped"]] == ["skipped lpips", "skipped fid"]
    assert all("download with" in s and "\n" not in s for s in doc["skipped"])
    md = (tmp_path / "missing" / "run" / "eval.md").read_text()
    assert "skipped lpips: AlexNet weights not found at" in md

    doc = run_eval(_plan(tmp_path / "random", metrics=("psnr", "lpips", "fid"), random_weights=True,
                         fid_bootstrap=20), a.side("a"), b.side("b"))
    assert doc["real_weights"] == {"lpips": False, "fid": False}
    assert doc["metrics"]["fid"]["low"] is not None  # bootstrap interval
    md = (tmp_path / "random" / "run" / "eval.md").read_text()
    assert md.count("random — not a quality measure") == 2 and "measure nothing" in md


def test_fid_against_a_reference_image_folder(tmp_path, tiny_fid):
    real = tmp_path / "mjhq" / "shapes"
    real.mkdir(parents=True)
    for p in PROMPTS:  # MJHQ's layout: <category>/<image id>.jpg
        draw_scene(p.scene, random.Random(1), size=64).save(real / f"{p.id}.jpg")
    a = Drawer(10.0)
    plan = _plan(tmp_path, metrics=("fid",), reference_images=tmp_path / "mjhq", random_weights=True,
                 fid_bootstrap=0)
    doc = run_eval(plan, a.side("a"))
    assert doc["metrics"]["fid"]["value"] > 0 and doc["metrics"]["fid"]["real_weights"] is False
    assert "named after the prompt ids" in doc["reference_images"]["used"]
    assert any("against --reference-images" in n for n in doc["metrics"]["fid"]["notes"])


# ---- the command on the reference model ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def nudged_model(tmp_path_factory, ref_model_path) -> Path:
    """The reference model with every UNet weight nudged by 2 % of its tensor's spread: a second model that is close
    to the first, made in a second (a real compression takes a minute)."""
    import torch
    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("nudged") / "model"
    shutil.copytree(ref_model_path, out, ignore=shutil.ignore_patterns("controlnet"))
    path = out / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    gen = torch.Generator().manual_seed(0)
    for k, v in state.items():
        if v.ndim >= 2:
            state[k] = (v.float() + 0.02 * v.float().std() * torch.randn(v.shape, generator=gen)).to(v.dtype)
    save_file(state, str(path))
    return out


def _eval_args(model, out, *extra):
    return ["eval", "--model", str(model), "--against", "reference", "--prompts", "reference", "--count", "3",
            "--steps", "2", "--out", str(out), "--device", "cpu", "--quiet", *extra]


def test_command_on_the_reference_model(nudged_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no AlexNet here: LPIPS must say what it needs
    monkeypatch.delenv("POCKETSD_LPIPS_ALEXNET", raising=False)
    rc = main(_eval_args(nudged_model, tmp_path / "run", "--metrics", "psnr,ssim,adherence,lpips"))
    out = capsys.readouterr().out
    assert rc == 0, out
    doc = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert 15 < doc["metrics"]["psnr"]["value"] < 60 and 0 < doc["metrics"]["ssim"]["value"] <= 1
    assert {"adherence", "adherence_against"} <= set(doc["metrics"])
    assert doc["models"]["model"]["settings"]["steps"] == 2 and doc["models"]["against"]["settings"]["kind"] == \
        "diffusers"
    lpips_line = next(line for line in out.splitlines() if line.startswith("skipped lpips"))
    assert "AlexNet weights not found at" in lpips_line and "download with `curl" in lpips_line
    # a re-run with another metric reuses every image
    rc = main(_eval_args(nudged_model, tmp_path / "run", "--metrics", "psnr,lpips", "--random-weights"))
    out = capsys.readouterr().out
    assert rc == 0 and "images: A 0 made / 3 reused, B 0 made / 3 reused" in out
    assert "random weights: not a quality measure" in out


@pytest.mark.parametrize("extra,match", [
    (["--metrics", "psnr,sharpness"], "unknown metric 'sharpness'"),
    (["--prompts", "/no/such/prompts.txt"], "no such prompt file"),
    (["--against", "/no/such/model"], "--against: model path /no/such/model does not exist"),
    (["--count", "0"], "--count must be at least 1"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--reference-images", "/no/such/folder", "--metrics", "fid"], "--reference-images /no/such/folder is not a folder"),
    (["--out", "/no/such/parent/run"], "does not exist (create it first)"),
    (["--fid-bootstrap", "1"], "--fid-bootstrap must be 0"),
    pytest.param(["--model", "BUNDLE_V1"], "Core ML prediction needs macOS",
                 marks=pytest.mark.skipif(sys.platform == "darwin", reason="macOS runs Core ML bundles")),
])
def test_bad_input_is_one_line_and_exit_2(extra, match, tmp_path, capsys, monkeypatch):
    if "BUNDLE_V1" in extra:  # the format-1 bundle fixture, made whole outside the folder checked below
        from bundle_fixture import bundle_v1

        extra = [str(bundle_v1(tmp_path.parent / f"{tmp_path.name}-bundle")) if a == "BUNDLE_V1" else a for a in extra]
    monkeypatch.chdir(tmp_path)
    argv = ["eval", "--against", "reference", "--count", "3", "--steps", "2", "--out", str(tmp_path / "run"), *extra]
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and match in err, err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_bad_metric_for_the_comparison(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = tmp_path / "prompts.txt"
    text.write_text("a cat\na dog\n")
    for argv, match in ((["eval", "--metrics", "psnr"], "add --against MODEL"),
                        (["eval", "--against", "reference", "--prompts", str(text), "--metrics", "adherence"],
                         "use --prompts reference")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and match in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["prompts.txt"]


# ---- scale-out -------------------------------------------------------------------------------------------------
def test_two_processes_equal_one_process(nudged_model, tmp_path):
    """torchrun with 2 CPU processes (accelerate's launcher forms CPU groups only through mpirun) against one process:
    the same images byte for byte and the same metrics, per image and aggregated. Batch size 1 so that no network
    sees a different batch in the two runs. (FID is left out here only for time: a 2048-wide FID costs tens of
    seconds per process on this CPU; its features travel in the same gathered partial state as LPIPS's values.)"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    args = _eval_args(nudged_model, "OUT", "--metrics", "psnr,ssim,adherence,lpips", "--random-weights",
                      "--batch-size", "1")[1:]
    runs = {}
    for name, launcher in (("one", [sys.executable, "-m", "pocketsd.eval"]),
                           ("two", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                    "2", "-m", "pocketsd.eval"])):
        out = tmp_path / name
        argv = [str(out) if a == "OUT" else a for a in args]
        done = subprocess.run(launcher + argv, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = json.loads((out / "eval.json").read_text())
    one, two = runs["one"], runs["two"]
    assert one["processes"] == 1 and two["processes"] == 2
    assert two["models"]["model"]["made_per_process"] == [2, 1] == two["models"]["against"]["made_per_process"]
    assert one["metrics"] == two["metrics"]
    assert one["ids"] == two["ids"] and one["seeds"] == two["seeds"]
    for role in ("model", "against"):
        folder_one = tmp_path / "one" / one["models"][role]["images"]
        folder_two = tmp_path / "two" / two["models"][role]["images"]
        names = sorted(p.name for p in folder_one.glob("*.png"))
        assert len(names) == 3 and names == sorted(p.name for p in folder_two.glob("*.png"))
        for n in names:
            assert np.array_equal(np.asarray(Image.open(folder_one / n)), np.asarray(Image.open(folder_two / n))), n


def test_an_in_memory_unet_generates_as_its_model_folder_does(nudged_model, tmp_path):
    """What benchmarks/compression.py relies on: `model_side(opts, unet=…)` puts a UNet held in memory in place of the
    model's own, and its images equal those of a folder holding that UNet (PSNR infinite on every prompt)."""
    import torch
    from diffusers import UNet2DConditionModel

    from pocketsd.evaluate import model_side
    from pocketsd.pipeline.options import GenerateOptions

    unet = UNet2DConditionModel.from_pretrained(nudged_model / "unet", torch_dtype=torch.float32)
    opts = GenerateOptions(prompt="-", steps=2, device="cpu")
    plan = EvalPlan(prompts=load_prompt_set("reference", count=2), out=tmp_path / "run", metrics=("psnr",))
    doc = run_eval(plan, model_side(opts, unet=unet, unet_name="nudged in memory"),
                   model_side(dataclasses.replace(opts, model=str(nudged_model))))
    assert doc["models"]["model"]["settings"]["unet"] == "nudged in memory"
    assert doc["models"]["model"]["images"] != doc["models"]["against"]["images"]
    assert doc["metrics"]["psnr"]["per_item"] == ["inf", "inf"]
