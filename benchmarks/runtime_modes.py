"""Peak RSS and UNet step time: fp16 weights vs compressed dense vs compressed packed, side by side.

    python benchmarks/runtime_modes.py [--model PATH] [--palette DIR] [--int4 DIR] [--steps N] [--repeats R]

Compresses the model (default: the embedded reference model) twice unless folders are given — the default
budget with the palette quantizer, and w4r0 with the int4 quantizer — then times the UNet alone in a fresh process
per configuration (batch 2 = classifier-free guidance, fp32 compute on CPU):
  fp16            the source diffusers UNet (fp16 weights upcast to fp32 for CPU compute)
  dense           compressed, dequantized once at load
  packed          compressed, codes kept packed and dequantized every forward
  packed+int4mm   int4 folder, Linear residuals through torch's int4 CPU kernel (bf16 activations)
Each child reports RSS after imports, after loading, the lifetime peak (ru_maxrss), the bytes held in the
UNet's parameters and buffers, the mean step time and the output SNR against fp16 on the same inputs.
Configurations alternate over repeats so background load affects all alike; medians are reported.
Writes benchmarks/results/runtime_modes.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = ("fp16", "dense", "packed", "packed+int4mm")


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _inputs(cfg, batch=2):
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g)
    ehs = torch.randn(batch, 77, cfg.cross_attention_dim, generator=g)
    kw = {}
    if cfg.addition_embed_type == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, pooled, generator=g),
                                   "time_ids": torch.tensor([[128.0, 128, 0, 0, 128, 128]] * batch)}
    return x, ehs, kw


def child(config: str, model: str, folder: str | None, steps: int, ref_out: str | None) -> dict:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    from diffusers import UNet2DConditionModel

    from pocketsd.artifacts.compressed import read_compressed_model
    from pocketsd.models.components import load_compressed_component

    rss0 = _rss_mb()
    t0 = time.perf_counter()
    if config == "fp16":
        unet = UNet2DConditionModel.from_pretrained(Path(model) / "unet", torch_dtype=torch.float16).float().eval()
    else:
        mode = "dense" if config == "dense" else "packed"
        unet = load_compressed_component(read_compressed_model(folder), "unet", mode,
                                         int4_kernel=config == "packed+int4mm")
    load_s = time.perf_counter() - t0
    rss_loaded = _rss_mb()
    held = sum(t.numel() * t.element_size() for t in list(unet.parameters()) + list(unet.buffers()))
    x, ehs, kw = _inputs(unet.config)
    times = []
    with torch.inference_mode():
        for i in range(steps + 1):
            t = torch.full((x.shape[0],), 999.0 - i * (999.0 / max(steps, 1)))
            s = time.perf_counter()
            out = unet(x, t, ehs, **kw).sample
            if i:  # the first call warms up allocators and kernels
                times.append(time.perf_counter() - s)
        first = unet(x, torch.full((x.shape[0],), 500.0), ehs, **kw).sample
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB → MiB on Linux
    snr = None
    if config == "fp16":  # the reference itself (first fp16 run saves it, later ones would compare to it)
        if ref_out and not Path(ref_out).is_file():
            torch.save(first, ref_out)
    elif ref_out and Path(ref_out).is_file():
        ref = torch.load(ref_out)
        snr = float(10 * torch.log10(ref.pow(2).sum() / (first - ref).pow(2).sum().clamp_min(1e-30)))
    elif ref_out:
        torch.save(first, ref_out)
    return {"config": config, "load_s": load_s, "rss_after_imports_mb": rss0, "rss_after_load_mb": rss_loaded,
            "peak_rss_mb": peak, "weights_held_mb": held / 2**20, "step_s": statistics.mean(times),
            "output_snr_db_vs_fp16": snr}


def _compress(model: str, out: Path, quantizer: str) -> None:
    # palette: the default budget; int4: w4r0 (its block scales alone cost 0.5 bit/weight, above a 4.5 budget)
    how = ["--quantizer", "palette"] if quantizer == "palette" else ["--quantizer", "int4", "--recipe", "w4r0"]
    subprocess.run([sys.executable, "-m", "pocketsd", "compress", "--model", model, "--out", str(out), *how,
                    "--calib-count", "16", "--calib-steps", "4"], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="diffusers folder (default: the embedded reference model)")
    ap.add_argument("--palette", default=None, help="compressed folder (palette) to use instead of compressing")
    ap.add_argument("--int4", default=None, help="compressed folder (int4) to use instead of compressing")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", nargs=4, metavar=("CONFIG", "MODEL", "FOLDER", "REF"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        config, model, folder, ref = args.child
        print(json.dumps(child(config, model, None if folder == "-" else folder, args.steps, ref)))
        return

    from pocketsd.data import REFERENCE_MODEL

    model = args.model or str(REFERENCE_MODEL)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        palette, int4 = args.palette, args.int4
        timings = {}
        for name, given in (("palette", palette), ("int4", int4)):
            if given is None:
                t = time.perf_counter()
                _compress(model, tmp / name, name)
                timings[name] = time.perf_counter() - t
        palette, int4 = palette or str(tmp / "palette"), int4 or str(tmp / "int4")
        folders = {"fp16": "-", "dense": palette, "packed": palette, "packed+int4mm": int4}
        ref = str(tmp / "ref.pt")
        runs: dict[str, list[dict]] = {c: [] for c in CONFIGS}
        for r in range(args.repeats):
            for config in CONFIGS:
                out = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--child", config, model,
                                      folders[config], ref], check=True, capture_output=True, text=True)
                runs[config].append(json.loads(out.stdout.strip().splitlines()[-1]))
        manifests = {n: json.loads((Path(f) / "pocketsd.json").read_text()) for n, f in
                     (("palette", palette), ("int4", int4))}

    summary = {}
    for config, rows in runs.items():
        med = {k: statistics.median(r[k] for r in rows) for k in
               ("load_s", "rss_after_imports_mb", "rss_after_load_mb", "peak_rss_mb", "weights_held_mb", "step_s")}
        snrs = [r["output_snr_db_vs_fp16"] for r in rows if r["output_snr_db_vs_fp16"] is not None]
        med["output_snr_db_vs_fp16"] = statistics.median(snrs) if snrs else None
        med["peak_above_imports_mb"] = med["peak_rss_mb"] - med["rss_after_imports_mb"]
        summary[config] = med
    base = summary["fp16"]
    for med in summary.values():
        med["step_time_vs_fp16"] = med["step_s"] / base["step_s"]
        med["weights_vs_fp16"] = med["weights_held_mb"] / base["weights_held_mb"]
    from pocketsd.data.model_card import reference_model_record_if_any

    result = {
        "model": model, "reference_model": reference_model_record_if_any(model), "steps": args.steps,
        "repeats": args.repeats, "threads": os.environ.get("OMP_NUM_THREADS"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "compress_s": timings,
        "compressed": {n: {"recipe": m["recipe"]["name"], "quantizer": m["recipe"]["quantizer"],
                           "bits_per_param": m["components"]["unet"]["accounting"]["bits_per_param"],
                           "unet_bytes": m["components"]["unet"]["accounting"]["total_bytes"]}
                       for n, m in manifests.items()},
        "summary": summary, "runs": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "runtime_modes.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# UNet runtime modes: fp16 vs compressed dense vs packed",
        "",
        f"Model `{model}`, batch 2 (CFG), {args.steps} timed UNet calls after one warm-up, median of "
        f"{args.repeats} fresh processes per configuration, CPU threads {result['threads'] or 'default'}. "
        "Regenerate: `python benchmarks/runtime_modes.py`.",
        "",
        "Compressed folders: " + "; ".join(f"{n}: {c['recipe']} ({c['quantizer']}), {c['bits_per_param']:.2f} bits/param,"
                                           f" {c['unet_bytes']:,} B" for n, c in result["compressed"].items()),
        "",
        "| config | weights held (MB) | × fp16 | peak RSS (MB) | peak − imports (MB) | step (s) | × fp16 | output SNR vs fp16 (dB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for config, m in summary.items():
        snr = "—" if m["output_snr_db_vs_fp16"] is None else f"{m['output_snr_db_vs_fp16']:.1f}"
        lines.append(f"| {config} | {m['weights_held_mb']:.2f} | {m['weights_vs_fp16']:.2f} | {m['peak_rss_mb']:.0f} | "
                     f"{m['peak_above_imports_mb']:.0f} | {m['step_s']:.4f} | {m['step_time_vs_fp16']:.2f} | {snr} |")
    lines += ["", "fp16 weights are held as fp32 for CPU compute; `dense` holds fp32 folded weights; `packed` holds "
              "the packed codes, tables/scales and fp16 factors (the file's bytes). On the small reference model the "
              "process peak is dominated by the Python/torch baseline and activations, so 'weights held' is the "
              "column that scales to SDXL."]
    (RESULTS / "runtime_modes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
