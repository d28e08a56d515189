"""Peak memory of `pocketsd lora train` on the fp16 reference model against the compressed one (QLoRA-style:
4-bit codes frozen), same data, steps, rank and batch, each run in a fresh process, side by side.

    python benchmarks/lora_train_memory.py [--compressed DIR] [--steps N] [--repeats R]

Writes benchmarks/results/lora_train_memory.{json,md}. Configurations: the fp16 folder (weights held in fp32 for
CPU training, as generation holds them), the compressed folder with its UNet packed (codes in memory, each layer
dequantized when used, forward and backward — the QLoRA mode, `lora train`'s default) and dense (dequantized once
at load). Runs alternate between configurations so background load touches all alike. Peak RSS is the kernel's
high-water mark of the whole process (getrusage); "before weights" is the RSS once the libraries are imported,
before any weight is read; the UNet's held bytes count every tensor the module holds during training (frozen
weights or codes, derived buffers, the new factors).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "python"))


def one_run(name: str, model: str, mode: str, images: Path, args, workdir: Path, i: int) -> dict:
    out = workdir / f"{name}-{i}.safetensors"
    cmd = [sys.executable, "-m", "pocketsd", "lora", "train", "--images", str(images), "--model", model,
           "--out", str(out), "--steps", str(args.steps), "--rank", str(args.rank), "--batch", str(args.batch),
           "--lr", "1e-3", "--unet-mode", mode, "--preview-every", "0", "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    rep = json.loads(out.with_suffix(".json").read_text())
    return {"peak_rss_mb": rep["peak_rss_mb"], "rss_before_weights_mb": rep["rss_before_weights_mb"],
            "unet_bytes_held": rep["unet_bytes_held"], "train_seconds": rep["train_seconds"],
            "train_cpu_seconds": rep["train_cpu_seconds"], "lora_bytes": rep["bytes"],
            "loss_last10": rep["loss_last10"], "load_average": os.getloadavg()}


def compress_reference(folder: Path) -> Path:
    from pocketsd.compress.run import CompressOptions, compress_model
    from pocketsd.data import REFERENCE_MODEL
    from pocketsd.palettize.recipes import make_recipe

    if not (folder / "pocketsd.json").is_file():
        # The UNet alone (what the LoRA trains over) and without distillation (same codes either way).
        compress_model(CompressOptions(out=folder, model=str(REFERENCE_MODEL), components=("unet",),
                                       recipe=make_recipe(None, None, distill_steps=0)))
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compressed", type=Path, default=None,
                    help="compressed reference model (default: build/lora_train_memory/compressed, made if missing)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    from pocketsd.data import REFERENCE_MODEL
    from pocketsd.refmodel.copyspace import draw_training_folder

    compressed = args.compressed or compress_reference(ROOT / "build" / "lora_train_memory" / "compressed")
    configs = {"fp16": (str(REFERENCE_MODEL), "packed"), "compressed_packed": (str(compressed), "packed"),
               "compressed_dense": (str(compressed), "dense")}
    runs: dict[str, list[dict]] = {k: [] for k in configs}
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        draw_training_folder(images, args.images, 0)
        for i in range(args.repeats):
            for name, (model, mode) in configs.items():
                runs[name].append(one_run(name, model, mode, images, args, Path(tmp), i))

    def median(rows, key):
        return statistics.median(r[key] for r in rows)

    summary = {}
    for name, rows in runs.items():
        peak, base = median(rows, "peak_rss_mb"), median(rows, "rss_before_weights_mb")
        summary[name] = {"peak_rss_mb": peak, "rss_before_weights_mb": base, "peak_above_libraries_mb": round(peak - base, 1),
                         "unet_mb_held": round(median(rows, "unet_bytes_held") / 2**20, 2),
                         "step_seconds": round(median(rows, "train_seconds") / args.steps, 3),
                         "step_cpu_seconds": round(median(rows, "train_cpu_seconds") / args.steps, 3)}
    fp16 = summary["fp16"]
    for row in summary.values():
        row["ratio_peak_rss"] = round(row["peak_rss_mb"] / fp16["peak_rss_mb"], 3)
        row["ratio_peak_above_libraries"] = round(row["peak_above_libraries_mb"] / fp16["peak_above_libraries_mb"], 3)
        row["ratio_unet_held"] = round(row["unet_mb_held"] / fp16["unet_mb_held"], 3)
        row["ratio_step_cpu"] = round(row["step_cpu_seconds"] / fp16["step_cpu_seconds"], 3)
    manifest = json.loads((compressed / "pocketsd.json").read_text())
    acc = manifest["components"]["unet"]["accounting"]
    from pocketsd.data.model_card import reference_model_record

    result = {
        "what": "peak RSS of one `pocketsd lora train` run (whole process, getrusage), fresh process per run",
        "reference_model": reference_model_record(),  # compressed from the embedded model and trained on it
        "settings": {"steps": args.steps, "rank": args.rank, "batch": args.batch, "images": args.images,
                     "resolution": 128, "torch_threads": args.threads, "repeats": args.repeats},
        "compressed_model": {"path": str(compressed), "unet_bits_per_param": acc.get("bits_per_param"),
                             "unet_bytes": acc.get("total_bytes")},
        "summary": summary, "runs": runs,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "lora_train_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    md = ["# LoRA training memory: fp16 vs compressed (QLoRA-style)", "",
          f"Reference model, {args.images} images at 128 px, {args.steps} steps, rank {args.rank}, batch {args.batch}, "
          f"{args.threads} torch thread(s); median of {args.repeats} fresh processes per configuration. Compressed UNet: "
          f"{acc.get('bits_per_param'):.2f} bits/param. Regenerate: `python benchmarks/lora_train_memory.py`.", "",
          "| configuration | peak RSS MB | before weights MB | peak above libraries MB | UNet held MB | step s (CPU) "
          "| peak | above libraries | UNet held | step CPU |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in summary.items():
        md.append(f"| {name} | {r['peak_rss_mb']:.0f} | {r['rss_before_weights_mb']:.0f} | {r['peak_above_libraries_mb']:.0f} "
                  f"| {r['unet_mb_held']:.2f} | {r['step_cpu_seconds']:.2f} | {r['ratio_peak_rss']:.2f}× "
                  f"| {r['ratio_peak_above_libraries']:.2f}× | {r['ratio_unet_held']:.2f}× | {r['ratio_step_cpu']:.2f}× |")
    md += ["", "Ratios are to fp16 in the same run. Load averages during the runs are in the JSON."]
    (RESULTS / "lora_train_memory.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
