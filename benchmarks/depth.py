"""Depth → image on the reference model: does the object go where, and come out as large as, the depth map says?

    python benchmarks/depth.py [--model DIR] [--controlnet DIR] [--seeds 2] [--steps 12] [--out benchmarks/results]

Twelve depth maps drawn as the depth ControlNet's training maps are (`pocketsd.refmodel.depth.depth_map`: a floor
plane, the object nearer, near = bright) with one object at six places (left, right, top, bottom, two corners) and
two sizes, saved as 16-bit PNGs and run exactly as `pocketsd generate PROMPT --depth MAP` runs them
(`pipeline.inputs.load_depth`, then the model's depth ControlNet at scale 1 from pure noise). The prompt names the
object's shape, a colour and a background and no position, so only the map can decide where and how large.

Per image, the object is read back from the pixels (`pocketsd.eval.classify`: background from the border, the
largest blob that differs from it) and compared with the map's object (the pixels nearer than the floor):
place right = centroid within PLACE_TOLERANCE px; size right = half-extent within SIZE_TOLERANCE of the map's; the
target is both in ≥ 90 % of images. The same prompts and seeds without the ControlNet (text only) are the baseline.
Writes depth.{json,md} and depth.png (per map: the map, then seed 0 with the ControlNet and text only).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

# (name, shape, centre x, centre y) on the 128-px image; every place gets a small and a large object.
PLACES = (("left", "circle", 34, 64), ("right", "square", 94, 64), ("top", "triangle", 64, 34),
          ("bottom", "circle", 64, 94), ("top-left", "square", 38, 38), ("bottom-right", "triangle", 90, 90))
HALVES = (16, 26)  # half-extents in px: the grammar's drawings span 24–32 (one object) and 18–24 (two)
PROMPTS = {"circle": "a red circle on a white background", "square": "a blue square on a gray background",
           "triangle": "a yellow triangle on a black background"}
FLOOR = (0.05, 0.35, 0.05)  # far edge, near edge, tilt: inside the training maps' ranges
OBJECT_DEPTH = 0.85
PLACE_TOLERANCE = 12  # px, as the sketch benchmark
SIZE_TOLERANCE = 0.25  # relative error of the half-extent
TARGET = 0.90


def cases() -> list[dict]:
    return [{"name": f"{place}-{'small' if half == HALVES[0] else 'large'}", "shape": shape, "cx": cx, "cy": cy,
             "half": half, "prompt": PROMPTS[shape]} for place, shape, cx, cy in PLACES for half in HALVES]


def extent(mask: np.ndarray) -> tuple[float, float, float] | None:
    """Centroid (x, y) and half-extent (mean of the box's half-width and half-height) of a mask, in pixels."""
    if mask.sum() < 30:
        return None
    ys, xs = np.nonzero(mask)
    half = ((xs.max() - xs.min() + 1) + (ys.max() - ys.min() + 1)) / 4
    return float(xs.mean()), float(ys.mean()), float(half)


def map_object(depth: np.ndarray) -> tuple[float, float, float] | None:
    """The map's object: the pixels nearer than any part of the floor (half-way to the object counts, as an
    anti-aliased edge pixel half covered)."""
    floor_max = float(depth[np.r_[0:2, -2:0]].max())  # the top and bottom rows: floor only, its far and near edges
    return extent(depth > (floor_max + depth.max()) / 2)


def read_object(image) -> tuple[float, float, float] | None:
    """The generated (or drawn) image's object, read from its pixels as the adherence checker reads it."""
    from pocketsd.eval.classify import classify, object_mask
    from pocketsd.data.grammar import BACKGROUNDS

    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    reading = classify(image)
    return extent(object_mask(pixels, np.asarray(BACKGROUNDS[reading.background], dtype=np.float32)))


def judge(read, target) -> dict:
    """place/size right of one reading against the map's object (either may be None: nothing there)."""
    if read is None or target is None:
        return {"read": read, "offset_px": None, "size_error": None, "place_right": False, "size_right": False}
    offset = float(np.hypot(read[0] - target[0], read[1] - target[1]))
    size_error = float((read[2] - target[2]) / target[2])
    return {"read": [round(v, 1) for v in read], "offset_px": round(offset, 1), "size_error": round(size_error, 3),
            "place_right": offset <= PLACE_TOLERANCE, "size_right": abs(size_error) <= SIZE_TOLERANCE}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="diffusers folder (default: the reference model)")
    ap.add_argument("--controlnet", type=Path, default=None, help="depth ControlNet folder (default: MODEL/controlnet_depth)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    # One thread: on a shared machine two OpenMP threads per process made each image 10-100× slower.
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import tempfile

    import torch
    from PIL import Image
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from pocketsd.artifacts import atomic_file, write_json
    from pocketsd.data import REFERENCE_MODEL
    from pocketsd.data.model_card import reference_model_record
    from pocketsd.models.controlnet import shipped_controlnet
    from pocketsd.pipeline.controlnet import controlnet_hook
    from pocketsd.pipeline.generate import GenerationRequest, generate
    from pocketsd.pipeline.inputs import load_depth
    from pocketsd.pipeline.torch_backend import open_backend
    from pocketsd.refmodel.depth import depth_map

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    model = Path(args.model) if args.model else REFERENCE_MODEL
    cn_folder = args.controlnet or shipped_controlnet(model, "depth")
    if cn_folder is None or not (Path(cn_folder) / "config.json").is_file():
        sys.exit(f"no depth ControlNet at {cn_folder or model / 'controlnet_depth'}: train it with "
                 "`python -m pocketsd.refmodel.train_controlnet --condition depth`")
    backend = open_backend(args.model)
    rows, sheet = [], {}
    all_cases = cases()
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with tempfile.TemporaryDirectory() as tmp, bar:
        task = bar.add_task("depth benchmark", total=len(all_cases) * 2 * args.seeds)
        for case in all_cases:
            depth = depth_map([(case["shape"], (case["cx"], case["cy"], case["half"]), OBJECT_DEPTH)], FLOOR)
            path = Path(tmp) / f"{case['name']}.png"
            Image.fromarray((np.clip(depth, 0, 1) * 65535).astype(np.uint16)).save(path)  # a user's 16-bit map
            loaded = load_depth(path, 128, 128, warn=None)
            target = map_object(loaded.depth)
            hook = controlnet_hook(Path(cn_folder), loaded.control, backend)
            sheet[case["name"]] = [loaded.control]
            for method in ("ControlNet", "text only"):
                for seed in range(args.seeds):
                    kw = dict(prompt=case["prompt"], steps=args.steps, seed=seed)
                    if method == "ControlNet":
                        kw["unet_extra"] = hook
                    t0 = time.perf_counter()
                    image = generate(backend, GenerationRequest(**kw)).images[0]
                    row = {"method": method, "case": case["name"], "seed": seed, "seconds": time.perf_counter() - t0,
                           "target": [round(v, 1) for v in target], **judge(read_object(image), target)}
                    row["both_right"] = row["place_right"] and row["size_right"]
                    rows.append(row)
                    bar.update(task, advance=1, description=f"{case['name']}: {method}")
                    if seed == 0:
                        sheet[case["name"]].append(image)

    table = []
    for method in ("ControlNet", "text only"):
        sel = [r for r in rows if r["method"] == method]
        table.append({"method": method, "n": len(sel),
                      **{k: sum(r[k] for r in sel) / len(sel) for k in ("place_right", "size_right", "both_right")},
                      "seconds_per_image": float(np.median([r["seconds"] for r in sel]))})
    passed = table[0]["both_right"] >= TARGET
    doc = {"benchmark": "depth", "model": args.model or "reference", "reference_model": reference_model_record(model),
           "controlnet": str(cn_folder),
           "steps": args.steps, "seeds": args.seeds, "torch_threads": args.threads,
           "guidance": GenerationRequest("").guidance, "controlnet_scale": 1.0, "floor": FLOOR,
           "object_depth": OBJECT_DEPTH, "place_tolerance_px": PLACE_TOLERANCE, "size_tolerance": SIZE_TOLERANCE,
           "target": TARGET, "passed": passed, "cases": all_cases,
           "load_average_before": load_before, "load_average_after": os.getloadavg(), "table": table, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "depth.json", doc)

    w = 128
    grid = Image.new("RGB", (w * 3, w * len(all_cases)), (255, 255, 255))
    for r, case in enumerate(all_cases):
        for c, im in enumerate(sheet[case["name"]]):
            grid.paste(im.convert("RGB"), (c * w, r * w))
    grid.save(args.out / "depth.png")

    load = lambda avg: ", ".join(f"{x:.1f}" for x in avg)  # noqa: E731
    lines = ["# Depth → image (reference model)", "",
             f"Reference model version {doc['reference_model']['version']}, depth ControlNet `{cn_folder}` at scale 1. "
             f"{len(all_cases)} depth maps (6 places × 2 sizes, 16-bit PNG, near = bright) × {args.seeds} seeds × "
             f"{args.steps} steps, guidance {doc['guidance']:g}; prompts name shape, colour and background, no position. "
             f"Place right: the object's centroid within {PLACE_TOLERANCE} px of the map's; size right: its half-extent "
             f"within {SIZE_TOLERANCE:.0%} of the map's. Target: both in ≥ {TARGET:.0%} with the ControlNet — "
             f"**{'met' if passed else 'not met'}**. Text only = the same prompt and seed without the map. "
             f"Regenerate with `python benchmarks/depth.py`; `depth.png` shows per map the map, the ControlNet's and "
             f"the text-only image of seed 0. Load average (1, 5, 15 min) {load(load_before)} at the start, "
             f"{load(doc['load_average_after'])} at the end ({args.threads} torch thread(s)).", "",
             "| method | place right | size right | both | time per image |", "|---|---|---|---|---|"]
    for t in table:
        lines.append(f"| {t['method']} | {t['place_right']:.0%} | {t['size_right']:.0%} | {t['both_right']:.0%} | "
                     f"{t['seconds_per_image']:.2f} s |")
    lines += ["", "Per map (ControlNet), both right of " + str(args.seeds) + ":", "", "| map | both right | read (x, y, half) of seed 0 | map's (x, y, half) |",
              "|---|---|---|---|"]
    for case in all_cases:
        sel = [r for r in rows if r["method"] == "ControlNet" and r["case"] == case["name"]]
        lines.append(f"| {case['name']} | {sum(r['both_right'] for r in sel)} | {sel[0]['read']} | {sel[0]['target']} |")
    with atomic_file(args.out / "depth.md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
