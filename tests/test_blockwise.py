"""Block-wise distillation (`--distill block`, the default): the cut into blocks, frozen codes, seeded results,
a held-out error that never gets worse, the capped cache, and prompt texts that never cross the split."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pocketsd.artifacts import MANIFEST
from pocketsd.artifacts.compressed import weights_path
from pocketsd.cli import main as cli

from convert_support import tiny_unet_pipeline

# 8 steps per block and a time budget that never binds: the step count ends every block (a loaded machine would
# otherwise stop blocks at different steps), so two runs are comparable byte for byte
QUICK = ["--recipe", "w4r16", "--calib-count", "16", "--calib-steps", "2", "--refine-iters", "1", "--distill-steps", "8",
         "--distill-minutes", "600"]


@pytest.fixture(scope="module")
def tiny(ref_model_path, tmp_path_factory) -> Path:
    return tiny_unet_pipeline(ref_model_path, tmp_path_factory.mktemp("blk") / "tiny")


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
    """The tiny pipeline compressed three times from the same calibration: distillation off, and block twice."""
    root = tmp_path_factory.mktemp("blkruns")
    temp = root / "tmp"
    temp.mkdir()
    old, tempfile.tempdir = tempfile.tempdir, str(temp)  # the block cache goes here: the test checks it is removed
    try:
        out = {}
        for name, extra in (("off", ["--distill", "off"]), ("block", []), ("again", [])):
            assert cli(["compress", "--model", str(tiny), "--out", str(root / name), "--quiet", *QUICK, *extra]) == 0
            out[name] = root / name
    finally:
        tempfile.tempdir = old
    out["temp"] = temp
    return out


def _weights(folder: Path, component: str) -> dict[str, torch.Tensor]:
    return load_file(str(folder / weights_path(component)))


def _manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def test_blocks_cut_every_layer_exactly_once(ref_pipeline):
    from pocketsd.palettize.blockwise import BLOCK_SHARE, find_blocks
    from pocketsd.palettize.recipes import compressible_layers

    for network in (ref_pipeline.unet, ref_pipeline.text_encoder_2):
        layers = compressible_layers(network)[0]
        blocks = find_blocks(network, list(layers))
        owner = {name: [b for b in blocks if name == b or name.startswith(b + ".")] for name in layers}
        assert all(len(found) == 1 for found in owner.values()), [n for n, f in owner.items() if len(f) != 1][:3]
        total = sum(m.weight.numel() for m in layers.values())
        largest = max(m.weight.numel() for m in layers.values())
        for b in blocks:  # no larger than the share, or than the largest single layer where that is larger
            size = sum(m.weight.numel() for n, m in layers.items() if n == b or n.startswith(b + "."))
            assert size <= max(BLOCK_SHARE * total, largest)
        assert 4 <= len(blocks) <= 4 / BLOCK_SHARE


def test_codes_stay_byte_identical_and_small_tensors_move(runs):
    for component in ("unet", "text_encoder", "text_encoder_2"):
        off, block = _weights(runs["off"], component), _weights(runs["block"], component)
        assert off.keys() == block.keys()
        codes = [k for k in off if k.endswith(".codes")]
        assert codes, component
        for k in codes:
            assert torch.equal(off[k], block[k]), k
        moved = [k for k in off if k.endswith((".lowrank_up", ".lut", ".bias")) and not torch.equal(off[k], block[k])]
        assert moved, f"{component}: distillation changed no small tensor"


def test_held_out_error_never_worse_and_some_block_gains(runs):
    manifest = _manifest(runs["block"])
    gains = []
    for component in ("unet", "text_encoder", "text_encoder_2"):
        comp = manifest["components"][component]
        assert comp["recipe"]["distill"] == "block"
        report = comp["calibration"]["distillation"]
        assert report["mode"] == "block" and report["blocks"]
        for block in report["blocks"]:
            assert block["snr_db_after"] >= block["snr_db_before"], block["block"]
            assert block["kept"] in ("start", "fp16", "student")
            gains.append(block["snr_db_after"] - block["snr_db_before"])
    assert max(gains) > 0.5  # on held-out prompts, not the ones trained on
    assert _manifest(runs["off"])["components"]["unet"]["recipe"]["distill"] == "off"


def test_block_distillation_is_deterministic_for_a_seed(runs):
    blocks = _manifest(runs["block"])["components"]["unet"]["calibration"]["distillation"]["blocks"]
    assert all(t["steps_done"] == t["steps_planned"] for b in blocks for t in b["tried"].values())
    for component in ("unet", "text_encoder_2"):
        a, b = _weights(runs["block"], component), _weights(runs["again"], component)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_cache_is_removed_after_the_run(runs):
    assert not list(runs["temp"].glob("pocketsd-blocks-*"))


def test_held_out_texts_are_never_trained_on(runs):
    split = _manifest(runs["block"])["components"]["unet"]["calibration"]["distillation"]["prompts"]
    assert split["held_out"] and split["trained"]
    assert not set(split["held_out"]) & set(split["trained"])


def test_calibration_never_draws_a_held_out_combination():
    """By text: no calibration caption names a colour, shape and background held out for evaluation."""
    from pocketsd.data.grammar import calibration_prompts
    from pocketsd.data.prompt_sets import HELD_OUT_SET, IN_SET_SET, load_prompt_set

    held = load_prompt_set(HELD_OUT_SET).texts
    inset = load_prompt_set(IN_SET_SET).texts
    assert len(held) == 18 and len(inset) == 36 and not set(held) & set(inset)
    for seed in range(5):
        captions = calibration_prompts(216, seed)
        assert len(set(captions)) == 216
        # a caption with a position starts with its plain adherence prompt's text
        assert not [c for c in captions if c.split(",")[0] in held]
        assert {c.split(",")[0] for c in captions} == set(inset)


def test_held_out_seeds_differ_from_calibration_seeds():
    """Evaluation seeds come from each prompt's id; calibration's generators are seeded 0, 1, … per batch."""
    from pocketsd.data.prompt_sets import HELD_OUT_SET, load_prompt_set, prompt_seed
    from pocketsd.palettize.calibrate import CalibrationSettings

    settings = CalibrationSettings()
    calibration_seeds = set(range(settings.seed, settings.seed + settings.count))
    eval_seeds = {prompt_seed(p.id) for p in load_prompt_set(HELD_OUT_SET)}
    assert len(eval_seeds) == 18 and not eval_seeds & calibration_seeds


def test_small_cache_cap_keeps_fewer_rows(tiny, tmp_path):
    out = tmp_path / "capped"
    assert cli(["compress", "--model", str(tiny), "--out", str(out), "--quiet", *QUICK, "--components", "unet",
                "--distill-cache-gb", "0.000001", "--distill-steps", "5"]) == 0
    cache = _manifest(out)["components"]["unet"]["calibration"]["distillation"]["cache"]
    assert cache["rows_per_call"] == 1 and cache["calls"] == 4


@pytest.mark.parametrize("args, needle", [
    (["--distill", "sideways"], "--distill"),
    (["--distill-inputs", "teacher"], "--distill-inputs"),
    (["--distill-cache-gb", "0"], "--distill-cache-gb"),
    (["--distill-cache-gb", "nan"], "--distill-cache-gb"),
])
def test_bad_block_options_exit_2_with_one_line(tmp_path, capsys, args, needle):
    rc = cli(["compress", "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_a_killed_runs_cache_is_removed_by_the_next_run(tmp_path):
    import subprocess
    import sys

    from pocketsd.palettize.blockwise import CACHE_PREFIX, block_cache_folder

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"{CACHE_PREFIX}{int(dead.stdout)}-abc"
    (stale / "unet").mkdir(parents=True)
    (stale / "unet" / "net-00000.safetensors").write_bytes(b"x" * 100)
    unrelated = tmp_path / "pocketsd-blocks-notapid"
    unrelated.mkdir()
    fresh = block_cache_folder(tmp_path)
    assert fresh.is_dir() and not stale.exists() and unrelated.exists()
