"""`make demo`: the whole chain on the embedded reference model, fp16 and compressed side by side.

model → generate (fp16) → compress → generate (compressed, dense and packed) → LoRA style → inpainting →
sketch with the ControlNet → convert (Core ML bundle, the ControlNet in it at 4 bits) → info. Each stage runs as the
user would run it (the `pocketsd` CLI),
and the table is read back from the JSON reports and manifests the stages wrote.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from .artifacts import MANIFEST, read_json

PROMPT = "a red circle on a white background"
INPAINT_PROMPT = "a blue square on a white background, on the right"  # into the right half of a red circle's picture
SKETCH_PROMPT = "a red square on a white background"
console = Console(width=max(110, Console().width))


def _run(args: list[str]) -> float:
    console.rule(f"[bold]pocketsd {' '.join(args)}")
    t0 = time.time()
    done = subprocess.run([sys.executable, "-m", "pocketsd", *args])
    if done.returncode != 0:
        console.print(f"[red]stage failed (exit {done.returncode}): pocketsd {' '.join(args)}")
        sys.exit(done.returncode)
    return time.time() - t0


def _psnr(a: Path, b: Path) -> float:
    x = np.asarray(Image.open(a).convert("RGB"), dtype=np.float64)
    y = np.asarray(Image.open(b).convert("RGB"), dtype=np.float64)
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _example_inputs(out: Path) -> tuple[Path, Path, Path]:
    """The inpainting example (a red circle on the left, a mask over the right half) and an outline to sketch from."""
    from PIL import ImageDraw

    k, size = 4, 128
    picture = Image.new("RGB", (k * size, k * size), (245, 245, 245))
    ImageDraw.Draw(picture).ellipse([k * 8, k * 38, k * 59, k * 90], fill=(220, 40, 40))
    picture.resize((size, size), Image.Resampling.BOX).save(out / "inpaint-input.png")
    mask = np.zeros((size, size), np.uint8)
    mask[:, size // 2:] = 255
    Image.fromarray(mask).save(out / "inpaint-mask.png")
    sketch = Image.new("L", (300, 300), 250)
    ImageDraw.Draw(sketch).rectangle((150, 40, 270, 160), outline=20, width=4)  # top right
    sketch.save(out / "sketch.png")
    return out / "inpaint-input.png", out / "inpaint-mask.png", out / "sketch.png"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("build/demo"))
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    seed = ["--seed", str(args.seed)]

    _run(["generate", PROMPT, *seed, "--out", str(out / "fp16.png")])
    t_compress = _run(["compress", "--out", str(out / "compressed")])
    _run(["generate", PROMPT, *seed, "--model", str(out / "compressed"), "--out", str(out / "compressed-dense.png")])
    _run(["generate", PROMPT, *seed, "--model", str(out / "compressed"), "--unet-mode", "packed",
          "--out", str(out / "compressed-packed.png")])
    _run(["generate", "a blue square on a white background", *seed, "--model", str(out / "compressed"),
          "--domain", "blueprint", "--out", str(out / "compressed-blueprint.png")])
    from .data import REFERENCE_MODEL

    picture, mask, sketch = _example_inputs(out)
    _run(["generate", INPAINT_PROMPT, *seed, "--model", str(out / "compressed"), "--image", str(picture),
          "--mask", str(mask), "--out", str(out / "compressed-inpaint.png")])
    controlnet = REFERENCE_MODEL / "controlnet"  # the reference model's sketch ControlNet
    _run(["generate", SKETCH_PROMPT, *seed, "--model", str(out / "compressed"), "--sketch", str(sketch),
          "--controlnet", str(controlnet), "--out", str(out / "compressed-controlnet-sketch.png")])
    t_convert = _run(["convert", "--model", str(out / "compressed"), "--out", str(out / "coreml"),
                      "--controlnet", f"Sketch={controlnet}", "--controlnet-recipe", "w4r32"])
    _run(["info", str(out / "coreml")])

    table = Table(title="PocketSD on the reference model (same prompt, seed and scheduler)")
    for col in ("run", "UNet bytes", "bits/param", "PSNR vs fp16 (dB)", "step mean (ms)", "total (s)", "peak RSS (MB)"):
        table.add_column(col, justify="right" if col != "run" else "left")
    for name in ("fp16", "compressed-dense", "compressed-packed", "compressed-blueprint", "compressed-inpaint",
                 "compressed-controlnet-sketch"):
        rep = read_json(out / f"{name}.json")
        steps = rep["timings_s"]["unet_steps"]
        bits = rep["model"].get("bits_per_weight")
        own_prompt = name in ("fp16", "compressed-blueprint", "compressed-inpaint", "compressed-controlnet-sketch")
        psnr = "—" if own_prompt else f"{_psnr(out / 'fp16.png', out / f'{name}.png'):.1f}"
        table.add_row(name, f"{rep['model']['unet_bytes']:,}", f"{bits:.2f}" if bits else "16",
                      psnr, f"{1000 * float(np.mean(steps)):.1f}", f"{rep['timings_s']['total']:.2f}",
                      f"{rep['memory']['peak_rss_mb']:.0f}")
    console.print(table)
    manifest = read_json(out / "coreml" / MANIFEST)
    sizes = {k: v.get("bytes") for k, v in manifest.get("components", {}).items() if isinstance(v, dict)}
    console.print(f"Core ML bundle {out / 'coreml'}: " + ", ".join(f"{k} {b / 1e6:.2f} MB" for k, b in sizes.items() if b))
    sketch_cn = manifest.get("components", {}).get("controlnet/Sketch", {})
    if sketch_cn:
        acc = sketch_cn["controlnet"]["accounting"]
        console.print(f"ControlNet Sketch in the bundle: {acc['bits_per_param']} bits/param, weights read back "
                      f"bit-exact: {sketch_cn.get('verify', {}).get('bit_exact')}; the Unet takes its "
                      f"{len(sketch_cn['outputs'])} residuals")
    console.print(f"compress took {t_compress:.0f} s, convert {t_convert:.0f} s; images and reports in {out}/")


if __name__ == "__main__":
    main()
