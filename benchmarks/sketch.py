"""Sketch → image on the reference model: the sketch as a starting image against the sketch ControlNet, one run.

    python benchmarks/sketch.py [--model DIR] [--controlnet DIR] [--seeds 3] [--steps 12] [--out benchmarks/results]

Eight drawings (outlines of squares, circles and triangles, off-centre, on 300×300 paper; coloured inks, one wobbly
hand-drawn line, one thick marker, one white chalk on black, one circle left open, one square drawn edge by edge
with the strokes crossing at the corners) go through `pocketsd.pipeline.inputs.load_sketch`
and the shared loop exactly as `pocketsd generate --sketch` runs them, with a prompt whose colour is not the
ink's and that has no position words (the place must come from the drawing):

- text only: the prompt from pure noise, no sketch (the baseline);
- init image at strength 0.5 / 0.65 (the default, today's `--sketch` path) / 0.8: the filled shape denoised;
- ControlNet at conditioning scale 0.5 / 1.0 (what `--sketch … --controlnet DIR` runs) / 2.0: pure noise,
  the cleaned strokes conditioning every step (`pipeline.controlnet`).

Per method: shape right, colour right (both read back by `pocketsd.eval.classify`), place right (the object's
centre within 12 px of the sketch's filled region's centre), all three at once, and the time per image as a ratio
to text only. Writes sketch.{json,md} and sketch.png (seed 0 of every case, every method).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

PAPER = 300
# name, shape, outline box on the paper, pen, ink RGB, paper RGB, prompt (its colour is never the ink's).
CASES = (
    ("square-tl", "square", (30, 30, 140, 140), "pen", (200, 30, 30), (250, 250, 250), "a green square on a white background"),
    ("circle-br", "circle", (160, 150, 280, 270), "pen", (245, 140, 30), (250, 250, 250), "a blue circle on a gray background"),
    ("triangle-tr", "triangle", (150, 20, 280, 150), "pen", (40, 80, 220), (250, 250, 250), "a orange triangle on a black background"),
    ("circle-bl", "circle", (20, 150, 140, 270), "wobbly", (40, 150, 60), (245, 240, 225), "a red circle on a white background"),
    ("square-r", "square", (170, 90, 280, 200), "marker", (140, 60, 190), (250, 250, 250), "a yellow square on a gray background"),
    ("triangle-b", "triangle", (95, 165, 205, 275), "chalk", (235, 235, 235), (25, 25, 25), "a purple triangle on a white background"),
    ("circle-open-t", "circle", (95, 15, 205, 125), "open", (30, 30, 30), (250, 250, 250), "a green circle on a black background"),
    ("square-strokes-l", "square", (25, 95, 135, 205), "strokes", (110, 110, 110), (250, 250, 250), "a orange square on a white background"),
)
STRENGTHS = (0.5, 0.65, 0.8)
SCALES = (0.5, 1.0, 2.0)
PLACE_TOLERANCE = 12  # pixels of the 128-px image


def _outline(shape: str, box) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = box
    if shape == "square":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
    if shape == "triangle":
        return [((x0 + x1) / 2, y0), (x1, y1), (x0, y1), ((x0 + x1) / 2, y0)]
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 73)]


def draw(case, path: Path) -> Path:
    from PIL import Image, ImageDraw

    _, shape, box, pen, ink, paper, _ = case
    img = Image.new("RGB", (PAPER, PAPER), paper)
    d = ImageDraw.Draw(img)
    pts = _outline(shape, box)
    if pen == "wobbly":  # a hand's wobble and a stroke that stops short of where it began
        pts = [(x + 3 * math.sin(k * 0.7), y + 3 * math.cos(k * 0.45)) for k, (x, y) in enumerate(pts[:-3])]
    width = {"pen": 2, "wobbly": 2, "marker": 7, "chalk": 4, "open": 2, "strokes": 2}[pen]
    if pen == "open":  # an outline left open: a fifth of the circle not drawn (too wide for the sketch cleaner to close)
        pts = pts[: int(len(pts) * 0.8)]
    if pen == "strokes":  # a pencil square drawn edge by edge, each stroke running 12 px past its corners
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            ux, uy = (x1 - x0) / math.hypot(x1 - x0, y1 - y0), (y1 - y0) / math.hypot(x1 - x0, y1 - y0)
            d.line([(x0 - 12 * ux, y0 - 12 * uy), (x1 + 12 * ux, y1 + 12 * uy)], fill=ink, width=width)
    else:
        d.line(pts, fill=ink, width=width, joint="curve")
    img.save(path)
    return path


def _load(avg) -> str:
    return ", ".join(f"{x:.1f}" for x in avg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="diffusers folder (default: the reference model)")
    ap.add_argument("--controlnet", type=Path, default=None, help="ControlNet folder (default: MODEL/controlnet)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    # One thread: on a shared machine two OpenMP threads per process made each image 10-100× slower (spinning at
    # barriers while descheduled); the time column is a ratio within this run either way.
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import tempfile

    import torch
    from PIL import Image
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from scipy import ndimage

    from pocketsd.artifacts import atomic_file, write_json
    from pocketsd.data import REFERENCE_MODEL
    from pocketsd.data.grammar import COLORS
    from pocketsd.data.model_card import reference_model_record
    from pocketsd.eval.classify import classify, object_mask
    from pocketsd.pipeline.controlnet import control_tensor, controlnet_hook, load_controlnet, residuals_hook
    from pocketsd.pipeline.generate import GenerationRequest, generate
    from pocketsd.pipeline.inputs import SKETCH_STRENGTH, image_to_tensor, load_sketch
    from pocketsd.pipeline.torch_backend import open_backend

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    cn_folder = args.controlnet or Path(args.model or REFERENCE_MODEL) / "controlnet"
    if not (cn_folder / "config.json").is_file():
        sys.exit(f"no ControlNet at {cn_folder}: train it with `python -m pocketsd.refmodel.train_controlnet`")
    backend = open_backend(args.model)
    unet_config = dict(backend.components.config("unet"))
    controlnet = load_controlnet(cn_folder, unet_config)
    methods = [("text only", None)] + [(f"init image {s:g}", s) for s in STRENGTHS] + [(f"ControlNet {c:g}", c) for c in SCALES]
    rows, sheet = [], {}
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with tempfile.TemporaryDirectory() as tmp, bar:
        task = bar.add_task("sketch benchmark", total=len(CASES) * len(methods) * args.seeds)
        for case in CASES:
            name, shape, prompt = case[0], case[1], case[6]
            color = next(w for w in prompt.split() if w in COLORS)
            ink = min(COLORS, key=lambda k: np.linalg.norm(np.subtract(COLORS[k], case[4])))  # the ink's nearest grammar colour
            sk = load_sketch(draw(case, Path(tmp) / f"{name}.png"), 128, 128, prompt, warn=None)
            target = ndimage.center_of_mass(sk.region)
            hooks = {c: (controlnet_hook(cn_folder, sk.control, backend) if c == 1.0
                         else residuals_hook(controlnet, control_tensor(sk.control), c)) for c in SCALES}
            sheet[name] = [Image.open(Path(tmp) / f"{name}.png").convert("RGB").resize((128, 128)), sk.control]
            for method, value in methods:
                for seed in range(args.seeds):
                    kw = dict(prompt=prompt, steps=args.steps, seed=seed)
                    if method.startswith("init"):
                        kw.update(init_image=image_to_tensor(sk.start), strength=value)
                    elif method.startswith("ControlNet"):
                        kw.update(unet_extra=hooks[value])
                    t0 = time.perf_counter()
                    image = generate(backend, GenerationRequest(**kw)).images[0]
                    seconds = time.perf_counter() - t0
                    pixels = np.asarray(image, dtype=np.float32)
                    reading = classify(image)
                    mask = object_mask(pixels, np.median(pixels[:4].reshape(-1, 3), axis=0))
                    centre = ndimage.center_of_mass(mask) if mask.any() else (float("nan"),) * 2
                    off = float(np.hypot(centre[0] - target[0], centre[1] - target[1]))
                    row = {"method": method, "case": name, "shape": shape, "color": color, "ink": ink, "seed": seed,
                           "read_shape": reading.shape, "read_color": reading.color,
                           "shape_right": reading.shape == shape, "color_right": reading.color == color,
                           "ink_color": reading.color == ink, "centre_offset_px": None if math.isnan(off) else round(off, 1),
                           "place_right": bool(off < PLACE_TOLERANCE), "seconds": seconds}
                    row["all_right"] = row["shape_right"] and row["color_right"] and row["place_right"]
                    rows.append(row)
                    bar.update(task, advance=1, description=f"{name}: {method}")
                    if seed == 0:
                        sheet[name].append(image)

    base_seconds = np.median([r["seconds"] for r in rows if r["method"] == "text only"])
    table = []
    for method, _ in methods:
        sel = [r for r in rows if r["method"] == method]
        entry = {"method": method, "n": len(sel)}
        for key in ("shape_right", "place_right", "color_right", "all_right", "ink_color"):
            entry[key] = sum(r[key] for r in sel) / len(sel)
        entry["per_case_all_right"] = {c[0]: sum(r["all_right"] for r in sel if r["case"] == c[0]) for c in CASES}
        entry["seconds_per_image"] = float(np.median([r["seconds"] for r in sel]))
        entry["time_ratio"] = entry["seconds_per_image"] / base_seconds
        table.append(entry)

    doc = {"benchmark": "sketch", "model": args.model or "reference",
           "reference_model": reference_model_record(args.model), "controlnet": str(cn_folder), "steps": args.steps,
           "seeds": args.seeds, "torch_threads": args.threads, "guidance": GenerationRequest("").guidance, "default_strength": SKETCH_STRENGTH,
           "place_tolerance_px": PLACE_TOLERANCE,
           "cases": [{"name": c[0], "shape": c[1], "box": c[2], "pen": c[3], "ink": c[4], "paper": c[5], "prompt": c[6]} for c in CASES],
           "load_average_before": load_before, "load_average_after": os.getloadavg(),
           "table": table, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "sketch.json", doc)

    cols = ["sketch", "control"] + [m for m, _ in methods]
    w = 128
    grid = Image.new("RGB", (w * len(cols), w * len(CASES)), (255, 255, 255))
    for r, case in enumerate(CASES):
        for c, im in enumerate(sheet[case[0]]):
            grid.paste(im, (c * w, r * w))
    grid.save(args.out / "sketch.png")

    lines = ["# Sketch → image (reference model)", "",
             f"{len(CASES)} off-centre drawings × {args.seeds} seeds × {args.steps} steps, guidance {doc['guidance']:g}; the prompt "
             "names a colour that is not the ink's and no position. Text only = the prompt from pure noise, no sketch; "
             f"init image = today's `--sketch` path (default strength {SKETCH_STRENGTH:g}); ControlNet = `--sketch … --controlnet` "
             "(scale 1) from pure noise. Place right: object centre within "
             f"{PLACE_TOLERANCE} px of the sketch's. Regenerate with `python benchmarks/sketch.py`; images of seed 0 in "
             "`sketch.png` (columns: sketch, cleaned control, then the methods in this order). Load average (1, 5, 15 min) "
             f"{_load(doc['load_average_before'])} at the start, {_load(doc['load_average_after'])} at the end "
             f"({args.threads} torch thread(s), a shared machine): the times are ratios within this run.", "",
             "| method | shape right | place right | colour right (prompt's, not ink's) | all three | ink colour instead | time per image |",
             "|---|---|---|---|---|---|---|"]
    for t in table:
        mark = " (default)" if t["method"] == f"init image {SKETCH_STRENGTH:g}" else (" (`--controlnet`)" if t["method"] == "ControlNet 1" else "")
        lines.append(f"| {t['method']}{mark} | {t['shape_right']:.0%} | {t['place_right']:.0%} | {t['color_right']:.0%} | "
                     f"{t['all_right']:.0%} | {t['ink_color']:.0%} | {t['time_ratio']:.2f}× |")
    lines += ["", f"All three right per drawing (of {args.seeds}):", "",
              "| method | " + " | ".join(c[0] for c in CASES) + " |", "|---|" + "---|" * len(CASES)]
    for t in table:
        lines.append(f"| {t['method']} | " + " | ".join(str(t["per_case_all_right"][c[0]]) for c in CASES) + " |")
    with atomic_file(args.out / "sketch.md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
