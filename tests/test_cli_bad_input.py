"""Issue 2 §4: every bad input to `pocketsd generate` gets one line, exit code 2, no traceback, and no file left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pocketsd.cli import main

PROMPT = "a red circle on a white background"


@pytest.fixture(scope="session")
def model_dir(request) -> Path:
    override = os.environ.get("POCKETSD_TEST_MODEL")
    return Path(override) if override else request.getfixturevalue("ref_model_path")


def _bad(argv, tmp_path, capsys, monkeypatch, match: str) -> str:
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    rc = main(["generate", PROMPT, *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert match in err, err
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, not even a temp file
    return err


def test_missing_model_path(tmp_path, capsys, monkeypatch):
    _bad(["--model", str(tmp_path / "nowhere")], tmp_path, capsys, monkeypatch, "does not exist")


def test_folder_that_is_not_a_pipeline(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "stuff"
    folder.mkdir()
    (folder / "notes.txt").write_text("hi")
    _bad(["--model", str(folder)], tmp_path, capsys, monkeypatch, "not a diffusers pipeline")


def test_unsupported_family(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "sd3"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    err = _bad(["--model", str(folder)], tmp_path, capsys, monkeypatch, "StableDiffusion3Pipeline is not supported")
    assert "Stable Diffusion XL" in err and "1.x/2.x" in err


def test_pickle_without_allow_pickle(tmp_path, capsys, monkeypatch):
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, ckpt)
    _bad(["--model", str(ckpt)], tmp_path, capsys, monkeypatch, "--allow-pickle")


@pytest.mark.parametrize("argv,match", [
    (["--steps", "0"], "--steps must be at least 1"),
    (["--guidance", "-1"], "--guidance must be ≥ 0"),
    (["--size", "100x100"], "must be a multiple of 64"),
    (["--size", "big"], "is not WIDTHxHEIGHT"),
    (["--count", "0"], "--count must be at least 1"),
    (["--strength", "0.5"], "--strength only applies with --image or --sketch"),
    (["--backend", "coreml"], "--backend coreml runs a Core ML bundle"),
])
def test_bad_options(argv, match, tmp_path, capsys, monkeypatch, model_dir):
    _bad(["--model", str(model_dir), *argv], tmp_path, capsys, monkeypatch, match)


def test_output_folder_missing(tmp_path, capsys, monkeypatch):
    _bad(["--out", str(tmp_path / "no" / "such" / "x.png")], tmp_path, capsys, monkeypatch, "does not exist")


def test_long_prompt_warns_names_dropped_words_and_runs(tmp_path, capsys, monkeypatch, model_dir):
    monkeypatch.chdir(tmp_path)
    prompt = " ".join(["a red circle on a white background"] * 11 + ["at the top"])  # 80 tokens: the last 5 are dropped
    rc = main(["generate", prompt, "--model", str(model_dir), "--steps", "1", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 0
    assert "warning" in err and 'dropped: "white background at the top"' in err
    report = json.loads((tmp_path / "pocketsd-0.json").read_text())
    assert any("at the top" in w for w in report["warnings"]) and (tmp_path / "pocketsd-0.png").is_file()


def test_console_script_exit_code_and_one_line(tmp_path):
    """The real process: exit code 2 and a single stderr line (not just `main`'s return value)."""
    proc = subprocess.run([sys.executable, "-m", "pocketsd", "generate", PROMPT, "--steps", "0"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["pocketsd: error: --steps must be at least 1, got 0"]
    assert list(tmp_path.iterdir()) == []
