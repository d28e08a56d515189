#!/usr/bin/env python3
"""One JSON from a Mac verification run (scripts/verify-mac.sh, .github/workflows/apple.yml).

Reads the reports `pocketsd generate` (torch, and the Python Core ML backend) and `pocketsd-swift generate` wrote
for the same prompt and seed, and the PNGs beside them, and writes what a reader wants to compare: per-stage
seconds, peak memory, where Core ML planned each model's operations, and each Core ML image's PSNR against the
torch image. Nothing is measured here; every number comes from the reports and the images.

usage: verify_mac_report.py --run NAME=REPORT.json [--run ...] --reference NAME --out verify-mac.json
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path


def stages(report: dict) -> dict:
    """Seconds per stage, as both CLIs' `timings_s` report them (unet_steps summed and averaged)."""
    timings = report.get("timings_s") or {}
    steps = timings.get("unet_steps") or []
    out = {key: timings.get(key) for key in ("load", "text_encode", "vae_encode", "vae_decode", "total")}
    out["unet_total"] = round(sum(steps), 6) if steps else None
    out["unet_mean_step"] = round(sum(steps) / len(steps), 6) if steps else None
    out["unet_step_count"] = len(steps)
    return out


def memory(report: dict) -> dict:
    mem = report.get("memory") or {}
    keys = ("peak_footprint_mb", "peak_rss_mb", "lifetime_peak_footprint_mb", "model_weights_peak_mb", "mps_peak_mb")
    return {key: mem.get(key) for key in keys if key in mem} | {"method": report.get("memory_method")}


def psnr_db(reference: Path, test: Path) -> dict:
    """PSNR with data range 1 on 8-bit RGB (python/pocketsd/eval/metrics.py uses the same definition)."""
    import numpy as np
    from PIL import Image

    a = np.asarray(Image.open(reference).convert("RGB"), dtype=np.float64) / 255
    b = np.asarray(Image.open(test).convert("RGB"), dtype=np.float64) / 255
    if a.shape != b.shape:
        return {"psnr_db": None, "note": f"sizes differ: {a.shape[1]}x{a.shape[0]} vs {b.shape[1]}x{b.shape[0]}"}
    mse = float(np.mean((a - b) ** 2))
    if mse == 0:
        return {"psnr_db": None, "identical": True}  # JSON has no infinity
    return {"psnr_db": round(10 * math.log10(1 / mse), 3), "identical": False}


def image_of(report: dict, report_path: Path) -> Path | None:
    output = report.get("output")
    candidates = [Path(output)] if output else []
    if output and not Path(output).is_absolute():
        candidates.append(report_path.parent / output)
    candidates.append(report_path.with_suffix(".png"))
    return next((c for c in candidates if c.is_file()), None)


def combine(runs: dict[str, Path], reference: str) -> dict:
    reports = {name: json.loads(path.read_text()) for name, path in runs.items()}
    if reference not in reports:
        raise SystemExit(f"--reference {reference} is not one of the runs: {', '.join(reports)}")
    out: dict = {
        "format": "pocketsd-verify-mac/1",
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": {"system": platform.system(), "machine": platform.machine(), "release": platform.release()},
        "reference": reference,
        "runs": {},
    }
    ref_image = image_of(reports[reference], runs[reference])
    for name, report in reports.items():
        details = report.get("backend_details") or {}
        entry = {
            "report": str(runs[name]),
            "backend": report.get("backend"),
            "device": report.get("device"),
            "engine": report.get("engine"),
            "seed": report.get("seed"), "steps": report.get("steps"), "scheduler": report.get("scheduler"),
            "size": report.get("size"),
            "compute_units": report.get("compute_units") or details.get("compute_units"),
            "stages_s": stages(report),
            "memory": memory(report),
            "compute_plan": details.get("compute_plan"),
            "compute_plan_note": details.get("compute_plan_note"),
        }
        image = image_of(report, runs[name])
        entry["image"] = str(image) if image else None
        if name != reference:
            entry["against_reference"] = (psnr_db(ref_image, image) if ref_image and image
                                          else {"psnr_db": None, "note": "an image is missing"})
        out["runs"][name] = entry
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="append", required=True, metavar="NAME=REPORT.json")
    parser.add_argument("--reference", required=True, help="the run the others' images are compared with (torch)")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    runs: dict[str, Path] = {}
    for item in args.run:
        name, sep, path = item.partition("=")
        if not sep or not name:
            parser.error(f"--run takes NAME=REPORT.json, got {item!r}")
        if not Path(path).is_file():
            print(f"verify_mac_report: {path} does not exist (did that run fail?)", file=sys.stderr)
            return 2
        runs[name] = Path(path)
    result = combine(runs, args.reference)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
