"""`pocketsd bench`: a real (tiny) run in a fresh process, the ratio table, and its bad inputs.

The full bench (fp16 vs compressed dense vs packed, 3 prompts × 2 seeds × 20 steps) is what `pocketsd bench`
regenerates into benchmarks/results/; here it runs one kind with one image of two steps to keep the suite fast.
"""

from __future__ import annotations

import json

import pytest

from pocketsd.commands.bench import harness as _bench_harness
from pocketsd.errors import BadInput

_harness = _bench_harness()  # benchmarks/generate.py, the harness behind `pocketsd bench`
RATIO_KEYS, markdown, ratios, run_bench = _harness.RATIO_KEYS, _harness.markdown, _harness.ratios, _harness.run_bench


def test_bench_runs_a_kind_in_a_fresh_process(tmp_path, ref_model_path):
    doc = run_bench(str(ref_model_path), None, tmp_path, steps=2, prompts=("a red circle on a white background",),
                    seeds=(0,), kinds=("fp16",), threads=1)
    (r,) = doc["results"]
    assert r["label"] == "fp16" and r["kind"] == "diffusers" and r["size"] == "128x128"
    assert len(r["images"]) == 1 and len(r["images"][0]["unet_steps_s"]) == 2
    assert r["unet_step_s"] > 0 and r["vae_decode_s"] > 0 and r["load_s"] > 0
    assert r["peak_rss_mb"] > r["baseline_rss_mb"] > 0  # the worker's own high-water mark, above its baseline
    assert r["unet_bytes"] > 0 and r["bits_per_weight"] == pytest.approx(16, abs=0.5)  # fp16 weights on disk
    assert r["ratio_to_fp16"]["unet_step_s"] == 1.0
    on_disk = json.loads((tmp_path / "generate.json").read_text())
    assert on_disk["results"][0]["unet_step_s"] == r["unet_step_s"]
    assert "| fp16 |" in (tmp_path / "generate.md").read_text()


def _fake(label, step, rss, nbytes):
    return {"label": label, "unet_bytes": nbytes, "bits_per_weight": 16.0 * nbytes / 1000, "load_s": 1.0,
            "text_encode_s": 0.01, "unet_step_s": step, "vae_decode_s": 0.1, "image_s": 20 * step, "peak_rss_mb": rss,
            "model_rss_mb": rss - 100, "color_right": 1.0, "shape_right": 0.5, "memory_method": "VmHWM"}


def test_ratios_are_against_fp16_of_the_same_run():
    rs = [_fake("fp16", 0.2, 500, 1000), _fake("compressed-dense", 0.2, 400, 280), _fake("compressed-packed", 0.3, 300, 280)]
    ratios(rs)
    assert rs[0]["ratio_to_fp16"] == {k: 1.0 for k in RATIO_KEYS}
    assert rs[2]["ratio_to_fp16"]["unet_step_s"] == 1.5
    assert rs[2]["ratio_to_fp16"]["model_rss_mb"] == 0.5
    assert rs[1]["ratio_to_fp16"]["unet_bytes"] == 0.28
    doc = {"results": rs, "machine": {"platform": "test", "cpus": 2},
           "settings": {"threads": 2, "prompts": ["p"], "seeds": [0], "steps": 20, "size": "128x128"}, "skipped": []}
    md = markdown(doc)
    assert "| compressed-packed | 0.28× | 1.50× |" in md


def test_no_fp16_base_gives_no_ratio():
    rs = [_fake("compressed-dense", 0.2, 400, 280)]
    ratios(rs)
    assert all(v is None for v in rs[0]["ratio_to_fp16"].values())


def test_bad_bench_inputs(tmp_path, ref_model_path, capsys):
    from pocketsd.cli import main

    with pytest.raises(BadInput, match="not a compressed model"):
        run_bench(str(ref_model_path), str(ref_model_path), tmp_path, kinds=("compressed-dense",))
    assert main(["bench", "--kinds", "fp32"]) == 2
    assert "choose from" in capsys.readouterr().err
    assert main(["bench", "--out-dir", str(tmp_path / "no" / "such")]) == 2
    assert "does not exist" in capsys.readouterr().err
