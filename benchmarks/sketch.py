"""Sketch → image on the reference model: does the drawing's shape and place survive denoising?

    python benchmarks/sketch.py [--model DIR] [--seeds 4] [--steps 12] [--out benchmarks/results]

Three procedurally drawn sketches (thin dark outlines of a square, a circle and a triangle, each off-center, on
300×300 paper) go through `pocketsd.pipeline.inputs.load_sketch` and the shared loop at several strengths, next to
the same prompts from pure noise (strength 1.0, text only). Per strength: shape read back right by
`pocketsd.eval.classify`, and the object's centre within 12 px of the sketch's. Writes sketch.{json,md}; the
default `SKETCH_STRENGTH` is chosen from this table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

CASES = (  # shape, outline box on 300×300 paper, prompt (no position words: the place must come from the sketch)
    ("square", (30, 30, 140, 140), "a green square on a white background"),
    ("circle", (160, 150, 280, 270), "a blue circle on a gray background"),
    ("triangle", (150, 20, 280, 150), "a orange triangle on a black background"),
)
STRENGTHS = (0.5, 0.65, 0.8, 1.0)


def draw(shape: str, box, path: Path) -> Path:
    from PIL import Image, ImageDraw

    img = Image.new("L", (300, 300), 250)
    d = ImageDraw.Draw(img)
    x0, y0, x1, y1 = box
    if shape == "square":
        d.rectangle(box, outline=10, width=2)
    elif shape == "circle":
        d.ellipse(box, outline=10, width=2)
    else:
        d.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], outline=10, width=2)
    img.save(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()

    import tempfile

    from scipy import ndimage

    from pocketsd.artifacts import atomic_file, write_json
    from pocketsd.eval.classify import classify, object_mask
    from pocketsd.pipeline.generate import GenerationRequest, generate
    from pocketsd.pipeline.inputs import SKETCH_STRENGTH, image_to_tensor, load_sketch
    from pocketsd.pipeline.torch_backend import open_backend

    backend = open_backend(args.model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for strength in STRENGTHS:
            for shape, box, prompt in CASES:
                sk = load_sketch(draw(shape, box, Path(tmp) / f"{shape}.png"), 128, 128, prompt,
                                 min(strength, 1.0), warn=None)
                target = ndimage.center_of_mass(sk.region)
                for seed in range(args.seeds):
                    kw = dict(prompt=prompt, steps=args.steps, seed=seed)
                    if strength < 1.0:
                        kw.update(init_image=image_to_tensor(sk.start), strength=strength)
                    image = generate(backend, GenerationRequest(**kw)).images[0]
                    pixels = np.asarray(image, dtype=np.float32)
                    reading = classify(image)
                    mask = object_mask(pixels, np.median(pixels[:4].reshape(-1, 3), axis=0))
                    centre = ndimage.center_of_mass(mask) if mask.any() else (float("nan"),) * 2
                    rows.append({"strength": strength, "shape": shape, "seed": seed, "read_shape": reading.shape,
                                 "shape_right": reading.shape == shape,
                                 "place_right": bool(np.hypot(centre[0] - target[0], centre[1] - target[1]) < 12)})
    table = []
    for strength in STRENGTHS:
        sel = [r for r in rows if r["strength"] == strength]
        per = {s: sum(r["shape_right"] for r in sel if r["shape"] == s) for s, _, _ in CASES}
        table.append({"strength": strength, "shape_right": sum(r["shape_right"] for r in sel) / len(sel),
                      "place_right": sum(r["place_right"] for r in sel) / len(sel), "per_shape": per, "n": len(sel)})
    doc = {"benchmark": "sketch", "model": args.model or "reference", "steps": args.steps, "seeds": args.seeds,
           "default_strength": SKETCH_STRENGTH, "table": table, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "sketch.json", doc)
    lines = ["# Sketch → image (reference model)", "",
             f"{len(CASES)} off-center outline sketches × {args.seeds} seeds × {args.steps} steps; strength 1.0 = the same "
             "prompts from pure noise (no sketch). Regenerate with `python benchmarks/sketch.py`.", "",
             "| strength | shape right | place right (centre within 12 px) | right per shape (of " + str(args.seeds) + ") |",
             "|---|---|---|---|"]
    for t in table:
        per = ", ".join(f"{k} {v}" for k, v in t["per_shape"].items())
        mark = " (default)" if abs(t["strength"] - SKETCH_STRENGTH) < 1e-9 else (" (text only)" if t["strength"] == 1.0 else "")
        lines.append(f"| {t['strength']:g}{mark} | {t['shape_right']:.0%} | {t['place_right']:.0%} | {per} |")
    with atomic_file(args.out / "sketch.md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
