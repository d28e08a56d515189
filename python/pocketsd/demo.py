"""`make demo`: the whole chain on the embedded reference model, fp16 and compressed side by side.

model → generate (fp16) → compress → generate (compressed, dense and packed) → LoRA style →
convert (Core ML bundle) → info. Each stage runs as the user would run it (the `pocketsd` CLI),
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

from .artifacts import read_json

PROMPT = "a red circle on a white background"
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
    t_convert = _run(["convert", "--model", str(out / "compressed"), "--out", str(out / "coreml")])
    _run(["info", str(out / "coreml")])

    table = Table(title="PocketSD on the reference model (same prompt, seed and scheduler)")
    for col in ("run", "UNet bytes", "bits/param", "PSNR vs fp16 (dB)", "step mean (ms)", "total (s)", "peak RSS (MB)"):
        table.add_column(col, justify="right" if col != "run" else "left")
    for name in ("fp16", "compressed-dense", "compressed-packed", "compressed-blueprint"):
        rep = read_json(out / f"{name}.json")
        steps = rep["timings_s"]["unet_steps"]
        bits = rep["model"].get("bits_per_weight")
        psnr = "—" if name in ("fp16", "compressed-blueprint") else f"{_psnr(out / 'fp16.png', out / f'{name}.png'):.1f}"
        table.add_row(name, f"{rep['model']['unet_bytes']:,}", f"{bits:.2f}" if bits else "16",
                      psnr, f"{1000 * float(np.mean(steps)):.1f}", f"{rep['timings_s']['total']:.2f}",
                      f"{rep['memory']['peak_rss_mb']:.0f}")
    console.print(table)
    manifest = read_json(out / "coreml" / "pocketsd.json")
    sizes = {k: v.get("bytes") for k, v in manifest.get("components", {}).items() if isinstance(v, dict)}
    console.print(f"Core ML bundle {out / 'coreml'}: " + ", ".join(f"{k} {b / 1e6:.2f} MB" for k, b in sizes.items() if b))
    console.print(f"compress took {t_compress:.0f} s, convert {t_convert:.0f} s; images and reports in {out}/")


if __name__ == "__main__":
    main()
