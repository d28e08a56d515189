"""The parts of benchmarks/compression.py that decide its figures: metrics, the MBP search, the target verdict."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pocketsd.eval.metrics import adherence, image_psnr, image_ssim, latent_psnr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_latent_psnr_is_apples_formula():
    ref = torch.tensor([[-4.0, 1.0], [2.0, 0.0]])
    out = ref + torch.tensor([[0.5, -0.5], [0.5, -0.5]])  # RMSE 0.5, max|ref| 4
    assert latent_psnr(ref, out) == pytest.approx(20 * math.log10(4 / 0.5))
    assert latent_psnr(ref, ref) == math.inf


def test_image_metrics_on_pil_images():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-8, 9, a.shape), 0, 255).astype(np.uint8)
    mse = np.mean(((a / 255.0) - (b / 255.0)) ** 2)
    ia, ib = Image.fromarray(a), Image.fromarray(b)
    assert image_psnr([ia], [ib]) == pytest.approx(10 * math.log10(1 / mse), rel=1e-4)
    assert image_ssim([ia], [ia]) == pytest.approx(1.0)
    assert 0 < image_ssim([ia], [ib]) < 1


def test_adherence_reads_drawn_scenes():
    import random

    from pocketsd.refmodel.drawing import draw_scene
    from pocketsd.data.grammar import Scene

    scenes = [Scene("red", "circle", "white"), Scene("blue", "square", "black")]
    images = [draw_scene(s, random.Random(0)) for s in scenes]
    assert adherence(images, scenes) == 100.0
    assert adherence(images, scenes[::-1]) == 0.0


def test_mbp_palettization_and_verdict():
    from baselines import palettize_any_bits
    from compression import verdict

    w = torch.randn(32, 48)
    errs = []
    for bits in (1, 2, 4, 6, 8):
        codes, lut, deq = palettize_any_bits(w, bits, 16)
        assert lut.shape == (2, 1 << bits) and int(codes.max()) < (1 << bits)
        errs.append(float((deq - w).pow(2).mean()))
    assert errs == sorted(errs, reverse=True)  # more bits, less error

    rows = [{"method": "fp16", "bits_per_param": 16, "unet_bytes": 100, "image_psnr_db": math.inf, "adherence_pct": 90.0},
            {"method": "base", "bits_per_param": 4.6, "unet_bytes": 30, "image_psnr_db": 20.0, "adherence_pct": 80.0},
            {"method": "small", "bits_per_param": 4.0, "unet_bytes": 25, "image_psnr_db": 25.0, "adherence_pct": 80.0},
            {"method": "ours", "bits_per_param": 4.5, "unet_bytes": 29, "image_psnr_db": 24.0, "adherence_pct": 88.0,
             "ours": True, "low_rank": True}]
    v = verdict(rows)
    # "small" is smaller than ours, so only "base" (equal or larger) is a rival
    assert v["rival"] == "base" and v["psnr_margin_db"] == pytest.approx(4.0) and v["psnr_target_met"]
    assert v["adherence_gap_points"] == pytest.approx(2.0) and v["adherence_target_met"]

    # A rival over the bit limit is another size class; one within 1 % below our bytes counts as equal size.
    rows += [{"method": "huge", "bits_per_param": 9.9, "unet_bytes": 70, "image_psnr_db": 40.0, "adherence_pct": 80.0},
             {"method": "near", "bits_per_param": 4.49, "unet_bytes": 28.8, "image_psnr_db": 22.0, "adherence_pct": 80.0}]
    v = verdict(rows)
    assert v["rival"] == "near" and v["psnr_margin_db"] == pytest.approx(2.0) and not v["psnr_target_met"]


def test_distilled_rows_come_from_the_curve_and_merge_with_equal_settings(tmp_path, ref_model_path):
    """Each budget's longest-distilled point becomes a row; its bytes follow from the honest bits; a part made
    with other settings is refused by --merge."""
    import json

    from compression import merge_parts, part_from_distill_curve
    from safetensors import safe_open

    settings = {"model": str(ref_model_path), "steps": 20, "n_image_prompts": 54, "threads": 1,
                "calibration": {"prompts": 64, "steps": 20}, "tensors": "lowrank,table,bias"}
    metrics = {"latent_psnr_db": 50.0, "image_psnr_db": 33.0, "image_ssim": 0.96, "adherence_pct": 88.9,
               "fp16_adherence_pct": 88.9, "eval_seconds": 10.0}
    distill = {"steps_done": 300, "cpu_seconds": 600.0, "held_out_snr_db_before": 20.0, "held_out_snr_db_after": 24.0}
    points = [{"budget": 4.5, "minutes": 0.0, "bits_per_param": 4.5, "mean_rank": 0.6, "layers_with_rank": 11, **metrics},
              {"budget": 4.5, "minutes": 5.0, "bits_per_param": 4.5, "mean_rank": 0.6, "layers_with_rank": 11,
               "distill": distill, **metrics},
              {"budget": 4.5, "minutes": 20.0, "bits_per_param": 4.5, "mean_rank": 0.6, "layers_with_rank": 11,
               "distill": distill, **{**metrics, "image_psnr_db": 35.0}}]
    curve = tmp_path / "distill_curve.json"
    curve.write_text(json.dumps({"settings": settings, "points": points, "fp16_adherence_pct": 88.9}))
    part = part_from_distill_curve(curve, tmp_path, "E", ref_model_path)
    (row,) = [r for r in part["rows"] if r["method"] != "fp16"]
    assert row["method"] == "ours_budget4.5_distilled_20cpumin" and row["image_psnr_db"] == 35.0
    with safe_open(next((ref_model_path / "unet").glob("*.safetensors")), "pt") as f:
        params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert row["unet_bytes"] == round(4.5 * params / 8)

    other = dict(part, calibration={"prompts": 16, "steps": 20})
    (tmp_path / "compression_part_F.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="calibration"):
        merge_parts(tmp_path, ["E", "F"])
