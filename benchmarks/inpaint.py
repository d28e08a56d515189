"""Inpainting on the reference model: add a blue square to the right of a picture that has a red circle on the left.

    flock /tmp/pocketsd-heavy.lock python benchmarks/inpaint.py [--model DIR] [--seeds 9] [--steps 20] [--out benchmarks/results]

The input is drawn procedurally (as the model's training images are: 4× supersampled, box-downsampled): a red circle
on a white background, on the left. The mask covers the right half. The prompt is the grammar's
"a blue square on a white background, on the right". Every seed runs exactly as `pocketsd generate --image IN
--mask MASK` does (a `GenerationSession` on the options, no file written), in two ways:

- `paste-back` (the default): latent blending, then the original pasted back outside the feathered mask;
- `blend only` (`--no-paste-back`): what latent blending alone keeps of the left half, through the VAE.

Each image is read back by `pocketsd.eval.classify` one half at a time (`read_halves`): success is the left half
read as a red circle and the right half as a blue square, both on white. Also measured: how far the pixels outside
the mask moved (max and mean |Δ| over the left half, 0–255), and the time per image (load average beside it).
Writes inpaint.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

SIZE = 128
PROMPT = "a blue square on a white background, on the right"
WANT_LEFT, WANT_RIGHT = ("red", "circle", "white"), ("blue", "square", "white")
METHODS = {"paste-back": True, "blend only": False}


def draw_input(size: int = SIZE) -> Image.Image:
    """A red circle on white, on the left (the training renderer's colours and anti-aliasing)."""
    from pocketsd.data.grammar import BACKGROUNDS, COLORS

    k = 4
    big = Image.new("RGB", (size * k, size * k), tuple(BACKGROUNDS["white"]))
    half, cx, cy = 0.2 * size, 0.26 * size, 0.5 * size
    ImageDraw.Draw(big).ellipse([k * (cx - half), k * (cy - half), k * (cx + half), k * (cy + half)],
                                fill=tuple(COLORS["red"]))
    return big.resize((size, size), Image.Resampling.BOX)


def draw_mask(size: int = SIZE) -> Image.Image:
    mask = np.zeros((size, size), np.uint8)
    mask[:, size // 2:] = 255
    return Image.fromarray(mask, "L")


def read_halves(image: Image.Image):
    """(left reading, right reading): `classify` on each half of the image, one object per half."""
    from pocketsd.eval.classify import classify

    w, h = image.size
    return classify(image.crop((0, 0, w // 2, h))), classify(image.crop((w // 2, 0, w, h)))


def _as_tuple(reading) -> tuple:
    return reading.color, reading.shape, reading.background


def run(model: str | None, seeds: int, steps: int, out: Path) -> dict:
    import torch

    from pocketsd.pipeline.options import GenerateOptions, check_options
    from pocketsd.pipeline.session import GenerationSession

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    work = Path(tempfile.mkdtemp(prefix="pocketsd-inpaint-"))
    source, mask = draw_input(), draw_mask()
    source.save(work / "input.png")
    mask.save(work / "mask.png")
    original = np.asarray(source, dtype=np.int16)
    rows, images = [], {}
    session = None
    for method, paste in METHODS.items():
        opts = GenerateOptions(prompt=PROMPT, model=model, steps=steps, image=work / "input.png",
                               mask=work / "mask.png", paste_back=paste)
        check_options(opts)
        session = session or GenerationSession.open(opts)
        for seed in range(seeds):
            t0 = time.perf_counter()
            output = session.generate(opts, seed, warn=lambda m: None)
            seconds = time.perf_counter() - t0
            left, right = read_halves(output.image)
            moved = np.abs(np.asarray(output.image, dtype=np.int16) - original)[:, : SIZE // 2 - 8]
            rows.append({"method": method, "seed": seed, "left": _as_tuple(left), "right": _as_tuple(right),
                         "left_right": _as_tuple(left) == WANT_LEFT, "right_right": _as_tuple(right) == WANT_RIGHT,
                         "both": _as_tuple(left) == WANT_LEFT and _as_tuple(right) == WANT_RIGHT,
                         "kept_max_abs": int(moved.max()), "kept_mean_abs": round(float(moved.mean()), 3),
                         "seconds": round(seconds, 3)})
            images[(method, seed)] = output.image
            print(f"{method:10s} seed {seed}: left {left.color} {left.shape}, right {right.color} {right.shape} "
                  f"({seconds:.1f} s)", flush=True)
    summary = {}
    for method in METHODS:
        mine = [r for r in rows if r["method"] == method]
        summary[method] = {"both_right": sum(r["both"] for r in mine), "left_right": sum(r["left_right"] for r in mine),
                           "right_right": sum(r["right_right"] for r in mine), "seeds": len(mine),
                           "kept_max_abs": max(r["kept_max_abs"] for r in mine),
                           "kept_mean_abs": round(float(np.mean([r["kept_mean_abs"] for r in mine])), 3),
                           "seconds_per_image": round(float(np.median([r["seconds"] for r in mine])), 3)}
    doc = {"prompt": PROMPT, "model": model or "reference", "steps": steps, "seeds": seeds, "size": SIZE,
           "mask": "right half, --mask-blur 4 (default)", "target": "both objects read right in ≥ 8 of 9 seeds",
           "input": {"left": list(WANT_LEFT)}, "summary": summary, "rows": rows,
           "load_average": os.getloadavg(), "torch_threads": torch.get_num_threads(),
           "command": "python benchmarks/inpaint.py" + (f" --model {model}" if model else "")}
    out.mkdir(parents=True, exist_ok=True)
    (out / "inpaint.json").write_text(json.dumps(doc, indent=2))
    (out / "inpaint.md").write_text(markdown(doc))
    _grid(source, mask, images, seeds).save(out / "inpaint.png")
    return doc


def markdown(doc: dict) -> str:
    lines = [f"Inpainting on the reference model: \"{doc['prompt']}\" into the right half of a red circle on the left "
             f"({doc['seeds']} seeds, {doc['steps']} Euler steps, guidance 5, strength 1.0, mask blur 4).", "",
             "| method | both objects right | left: red circle | right: blue square | left half moved (max / mean, 0–255) "
             "| s / image |", "|---|---:|---:|---:|---:|---:|"]
    for method, s in doc["summary"].items():
        n = s["seeds"]
        lines.append(f"| {method} | **{s['both_right']}/{n}** | {s['left_right']}/{n} | {s['right_right']}/{n} | "
                     f"{s['kept_max_abs']} / {s['kept_mean_abs']} | {s['seconds_per_image']} |")
    load = ", ".join(f"{x:.1f}" for x in doc["load_average"])
    lines += ["", f"Target: {doc['target']}. Left half measured up to 8 px from the mask (the feather). "
              f"Load average during the run: {load} ({doc['torch_threads']} torch threads).", ""]
    return "\n".join(lines)


def _grid(source, mask, images, seeds) -> Image.Image:
    cols = seeds + 2
    grid = Image.new("RGB", (cols * SIZE, len(METHODS) * SIZE), (255, 255, 255))
    for r, method in enumerate(METHODS):
        grid.paste(source, (0, r * SIZE))
        grid.paste(mask.convert("RGB"), (SIZE, r * SIZE))
        for seed in range(seeds):
            grid.paste(images[(method, seed)], ((seed + 2) * SIZE, r * SIZE))
    return grid


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--seeds", type=int, default=9)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    doc = run(args.model, args.seeds, args.steps, args.out)
    print(markdown(doc))


if __name__ == "__main__":
    main()
