"""`--device auto|cpu|cuda|mps`: the choice logic (injected availability), what the report says, and the one-line
refusal of a device torch cannot see — for generate, compress and bench alike."""

from __future__ import annotations

import json

import pytest
import torch

from pocketsd.cli import main
from pocketsd.errors import BadInput
from pocketsd.models.device import resolve_device

PROMPT = "a red circle on a white background"


@pytest.mark.parametrize("available,asked,expected", [
    ({"cuda": True, "mps": True, "cpu": True}, "auto", "cuda"),
    ({"cuda": False, "mps": True, "cpu": True}, "auto", "mps"),
    ({"cuda": False, "mps": False, "cpu": True}, "auto", "cpu"),
    ({"cuda": True, "mps": False, "cpu": True}, "cpu", "cpu"),
    ({"cuda": True, "mps": False, "cpu": True}, "cuda", "cuda"),
    ({"cuda": False, "mps": True, "cpu": True}, "MPS", "mps"),
    ({"cuda": False, "mps": False, "cpu": True}, None, "cpu"),
])
def test_auto_picks_cuda_then_mps_then_cpu(available, asked, expected):
    assert resolve_device(asked, available) == expected


@pytest.mark.parametrize("asked", ["cuda", "mps"])
def test_a_device_torch_cannot_see_is_one_line(asked):
    with pytest.raises(BadInput, match=f"torch sees no {asked.upper()} device here .*available: cpu"):
        resolve_device(asked, {"cuda": False, "mps": False, "cpu": True})
    with pytest.raises(BadInput, match="must be one of"):
        resolve_device("tpu", {"cpu": True})


def test_generate_reports_its_device_and_accelerator_memory(tmp_path):
    out = tmp_path / "a.png"
    assert main(["generate", PROMPT, "--device", "auto", "--steps", "2", "--out", str(out), "--quiet"]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    expected = resolve_device("auto")
    assert report["device"] == expected
    assert set(report["memory"]) >= {"peak_rss_mb", "cuda_peak_mb", "mps_peak_mb"}
    if expected == "cpu":  # no accelerator: its peaks are null, never a made-up zero
        assert report["memory"]["cuda_peak_mb"] is None and report["memory"]["mps_peak_mb"] is None
    else:
        assert report["memory"][f"{expected}_peak_mb"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the refusal cannot happen")
@pytest.mark.parametrize("command", [
    ["generate", PROMPT, "--steps", "1"],
    ["compress", "--recipe", "w4r0", "--out", "OUT"],
    ["bench", "--kinds", "fp16", "--steps", "1", "--seeds", "1", "--prompts", "1", "--out-dir", "OUT"],
])
def test_cuda_without_cuda_is_refused_before_any_work(command, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in command] + ["--device", "cuda"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "torch sees no CUDA device" in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("*.png"))
