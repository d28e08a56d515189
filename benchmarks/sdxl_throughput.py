"""Layer decomposition on every core against the old one-process path, per SDXL layer shape, side by side in one run.

    python benchmarks/sdxl_throughput.py            # the SDXL UNet's common layer shapes, both recipes
    python benchmarks/sdxl_throughput.py --smoke    # the smallest shape, 2 layers, w4r32: a check of the harness

Writes benchmarks/results/sdxl_throughput_workers.{json,md} (`--smoke`: a temporary folder unless --out is given).
(benchmarks/results/sdxl_throughput.json is another measurement: our palettization against coremltools', written by
`benchmarks/sdxl_scale.py throughput`.)

For every distinct Linear/Conv2d weight shape of SDXL base's UNet that occurs at least `--min-count` times (built on
the meta device from the published config; no weights downloaded), `--layers` layers of that shape get random
heavy-tailed weights (`sdxl_scale.heavy_tailed`, seeded) and synthetic calibration rows with a few outlier input
channels, and are compressed by `palettize.compress.compress_network` twice, on the same inputs:

- old: `workers=IN_PROCESS_THREADED`: one layer after another in this process, torch's own intra-op threads;
- new: the default (`workers.map_layers`: one worker process per usable CPU, one torch thread each).

Each row gives both wall times and their ratio, CPU time (this process and its workers), whether the two paths'
compressed bytes are identical, and each path's weight error ‖W − Ŵ‖/‖W‖ with Ŵ rebuilt from the compressed layer's
stored tensors. The 1-minute load average is read before and after every measurement: the ratios mean something
only on an otherwise idle machine. `--scale` shrinks both matrix dimensions of every shape (kernel sizes kept) so
the run takes minutes, not hours; the SDXL count of each shape is recorded, and the summary also weights each
shape's per-layer time by it (an estimate for the whole UNet at that scale).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import platform
import resource
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pocketsd.artifacts import write_json  # noqa: E402
from pocketsd.palettize.calibrate import Calibration, CalibrationSettings, LayerStats  # noqa: E402
from pocketsd.palettize.compress import compress_network  # noqa: E402
from pocketsd.palettize.layer import compressed_layers, compressed_state_dict  # noqa: E402
from pocketsd.palettize.recipes import compressible_layers, make_recipe  # noqa: E402
from pocketsd.palettize.workers import IN_PROCESS_THREADED, usable_cpus  # noqa: E402
from sdxl_scale import heavy_tailed, sdxl_unet_meta  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
STEM = "sdxl_throughput_workers"
RECIPES = ("w4r32", "budget")  # the fixed recipe of the real-size run that was profiled, and the default command's
OUTLIER_INPUTS = 4  # calibration input channels made larger, as activation outliers are (what smoothing is for)
OUTLIER_GAIN = 20.0


def sdxl_shapes(min_count: int) -> list[tuple[tuple[int, ...], int]]:
    """(weight shape, how many compressed layers of SDXL's UNet have it), smallest first."""
    modules, _ = compressible_layers(sdxl_unet_meta())
    counts = Counter(tuple(m.weight.shape) for m in modules.values())
    return sorted(((s, n) for s, n in counts.items() if n >= min_count), key=lambda sn: (math.prod(sn[0]), sn[0]))


def scaled(shape: tuple[int, ...], scale: float) -> tuple[int, ...]:
    """Both matrix dimensions times `scale`, kept multiples of 16 (the palette's group size); kernels kept."""
    return tuple(max(16, round(d * scale / 16) * 16) for d in shape[:2]) + tuple(shape[2:])


def make_layers(shape: tuple[int, ...], count: int, seed: int) -> nn.Sequential:
    """`count` float layers of this weight shape with heavy-tailed weights (rounded to fp16, like a checkpoint's)."""
    layers = []
    for i in range(count):
        layer = nn.Linear(shape[1], shape[0]) if len(shape) == 2 else \
            nn.Conv2d(shape[1], shape[0], shape[2:], padding=shape[2] // 2)
        with torch.no_grad():
            layer.weight.copy_(heavy_tailed(shape, seed=seed + i).to(torch.float16).float())
            layer.bias.zero_()
        layers.append(layer)
    return nn.Sequential(*layers)


def synthetic_calibration(model: nn.Sequential, rows: int, seed: int) -> Calibration:
    """Calibration rows as `calibrate` records them (fp16, one row per token or unfolded patch), Gaussian with a few
    input channels `OUTLIER_GAIN`× larger, and each layer's per-input-channel max|X|."""
    g = torch.Generator().manual_seed(seed)
    stats = {}
    for name, m in compressible_layers(model)[0].items():
        cin, taps = m.weight.shape[1], m.weight[0, 0].numel()
        gain = torch.ones(cin)
        gain[torch.randperm(cin, generator=g)[:OUTLIER_INPUTS]] = OUTLIER_GAIN
        x = torch.randn(rows, cin, taps, generator=g) * gain[None, :, None]
        stats[name] = LayerStats(act_max=x.abs().amax((0, 2)), rows=x.reshape(rows, -1).to(torch.float16))
    return Calibration(stats)


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its reaped children (the pool's workers, once shut down)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def weight_rel_error(original: nn.Sequential, compressed: nn.Sequential) -> float:
    """‖W − Ŵ‖/‖W‖ over all layers, Ŵ rebuilt from each compressed layer's stored codes, tables, factors and scales."""
    err = norm = 0.0
    for name, layer in compressed_layers(compressed).items():
        w = original.get_submodule(name).weight.detach().double()
        err += float((w - layer.effective_weight().double()).pow(2).sum())
        norm += float(w.pow(2).sum())
    return math.sqrt(err / norm)


def digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for key, t in sorted(compressed_state_dict(model).items()):
        h.update(key.encode())
        h.update(t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def run_path(layers: nn.Sequential, recipe, calib: Calibration, workers: int) -> dict:
    import copy

    model = copy.deepcopy(layers)
    load_before = list(os.getloadavg())
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    compress_network(model, recipe, calib, workers=workers)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    return {"seconds": wall, "cpu_seconds": cpu, "load_before": load_before, "load_after": list(os.getloadavg()),
            "rel_error": weight_rel_error(layers, model), "digest": digest(model)}


def measure(shapes, recipes, layers_per_shape: int, scale: float, rows: int, workers: int | None) -> dict:
    # one small compress on each path first: one-off costs (lazy imports, first kernels) out of the first row
    warm = make_layers((64, 64), 2, seed=10_000)
    for path in (IN_PROCESS_THREADED, workers):
        run_path(warm, make_recipe("w4r32"), synthetic_calibration(warm, 64, 0), path)
    out = []
    for i, (shape, count) in enumerate(shapes):
        small = scaled(shape, scale)
        layers = make_layers(small, layers_per_shape, seed=1000 * i)
        calib = synthetic_calibration(layers, rows, seed=i)
        for name in recipes:
            recipe = make_recipe(name if name != "budget" else None)
            old = run_path(layers, recipe, calib, IN_PROCESS_THREADED)
            new = run_path(layers, recipe, calib, workers)
            row = {"recipe": name, "sdxl_shape": list(shape), "sdxl_count": count, "shape": list(small),
                   "layers": layers_per_shape, "params_per_layer": math.prod(small),
                   "old_s": old["seconds"], "new_s": new["seconds"], "speedup": old["seconds"] / new["seconds"],
                   "old_cpu_s": old["cpu_seconds"], "new_cpu_s": new["cpu_seconds"],
                   "old_rel_err": old["rel_error"], "new_rel_err": new["rel_error"],
                   "identical_bytes": old["digest"] == new["digest"],
                   "load_before": old["load_before"], "load_after": new["load_after"]}
            out.append(row)
            print(f"{name:>6} {str(tuple(shape)):>22} → {str(tuple(small)):>20} × {layers_per_shape}: old "
                  f"{row['old_s']:6.2f} s  new {row['new_s']:6.2f} s  ({row['speedup']:.2f}×)  err old "
                  f"{row['old_rel_err']:.5f} new {row['new_rel_err']:.5f}{'  same bytes' if row['identical_bytes'] else ''}"
                  f"  load {row['load_before'][0]:.2f}→{row['load_after'][0]:.2f}", flush=True)
    return {"rows": out}


def summarize(rows: list[dict]) -> dict:
    out = {}
    for name in dict.fromkeys(r["recipe"] for r in rows):
        rs = [r for r in rows if r["recipe"] == name]
        old, new = sum(r["old_s"] for r in rs), sum(r["new_s"] for r in rs)
        # per-layer seconds × SDXL's count of the shape: the whole UNet's layer work at this scale (shapes run)
        est_old = sum(r["old_s"] / r["layers"] * r["sdxl_count"] for r in rs)
        est_new = sum(r["new_s"] / r["layers"] * r["sdxl_count"] for r in rs)
        weight = lambda k: sum(r[k] * r["params_per_layer"] * r["layers"] for r in rs) / \
            sum(r["params_per_layer"] * r["layers"] for r in rs)  # noqa: E731
        out[name] = {"old_s": old, "new_s": new, "speedup": old / new,
                     "sdxl_weighted_old_s": est_old, "sdxl_weighted_new_s": est_new,
                     "sdxl_weighted_speedup": est_old / est_new,
                     "old_rel_err_param_weighted": weight("old_rel_err"),
                     "new_rel_err_param_weighted": weight("new_rel_err"),
                     "shapes_with_identical_bytes": sum(r["identical_bytes"] for r in rs), "shapes": len(rs)}
    return out


def markdown(result: dict) -> str:
    m, s = result["machine"], result["settings"]
    lines = [f"Layer decomposition, old path (one process, {m['torch_threads']} torch threads) against the new one "
             f"({s['workers']} worker processes, one torch thread each), on SDXL UNet layer shapes scaled by "
             f"{s['scale']:g} per matrix dimension, {s['layers_per_shape']} layers per shape, {s['calibration_rows']} "
             f"synthetic calibration rows per layer. {m['cpus']} usable CPUs. Error: ‖W − Ŵ‖/‖W‖ from the stored "
             f"tensors. 1-minute load average {result['load_start'][0]:.2f} at the start, {result['load_end'][0]:.2f} "
             "at the end.", "",
             "| recipe | SDXL shape (count) | run shape × layers | old s | new s | speed-up | old err | new err | "
             "same bytes | load before → after |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in result["rows"]:
        lines.append(f"| {r['recipe']} | {tuple(r['sdxl_shape'])} ({r['sdxl_count']}) | {tuple(r['shape'])} × "
                     f"{r['layers']} | {r['old_s']:.2f} | {r['new_s']:.2f} | {r['speedup']:.2f}× | "
                     f"{r['old_rel_err']:.5f} | {r['new_rel_err']:.5f} | {'yes' if r['identical_bytes'] else 'no'} | "
                     f"{r['load_before'][0]:.2f} → {r['load_after'][0]:.2f} |")
    lines.append("")
    for name, x in result["summary"].items():
        lines.append(f"- **{name}**: {x['old_s']:.1f} s → {x['new_s']:.1f} s (**{x['speedup']:.2f}×**); weighted by "
                     f"SDXL's count of each shape {x['sdxl_weighted_speedup']:.2f}×. Parameter-weighted error old "
                     f"{x['old_rel_err_param_weighted']:.5f}, new {x['new_rel_err_param_weighted']:.5f}; identical "
                     f"bytes on {x['shapes_with_identical_bytes']} of {x['shapes']} shapes (where not, the old path's "
                     "randomized SVD ran with several torch threads, whose result depends on the thread count).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help=f"folder for {STEM}.{{json,md}} (default {RESULTS})")
    ap.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated, of: " + ", ".join(RECIPES))
    ap.add_argument("--scale", type=float, default=0.5, help="factor on both matrix dimensions of every shape")
    ap.add_argument("--layers", type=int, default=None, help="layers per shape (default: 2 per worker)")
    ap.add_argument("--min-count", type=int, default=5, help="only shapes SDXL's UNet has at least this many of")
    ap.add_argument("--shapes", type=int, default=None, help="only the first N shapes (smallest first)")
    ap.add_argument("--workers", type=int, default=None, help="the new path's worker processes (default: usable CPUs)")
    ap.add_argument("--rows", type=int, default=CalibrationSettings.rows_per_layer, help="calibration rows per layer")
    ap.add_argument("--smoke", action="store_true", help="the smallest shape, 2 layers, scale 0.25, w4r32 only")
    args = ap.parse_args(argv)
    recipes = tuple(r.strip() for r in args.recipes.split(",") if r.strip())
    if not recipes or any(r not in RECIPES for r in recipes):
        ap.error(f"--recipes takes a comma-separated list of {', '.join(RECIPES)}, got {args.recipes!r}")
    if not 0 < args.scale <= 1:
        ap.error(f"--scale must be in (0, 1], got {args.scale}")
    workers = usable_cpus() if args.workers is None else args.workers
    if workers < 1:
        ap.error(f"--workers must be at least 1, got {workers}")
    layers = args.layers or 2 * workers
    shapes = sdxl_shapes(args.min_count)
    if args.smoke:
        shapes, layers, args.scale, recipes = shapes[:1], 2, 0.25, ("w4r32",)
    elif args.shapes:
        shapes = shapes[:args.shapes]
    out = args.out or (Path(tempfile.mkdtemp(prefix="sdxl_throughput_smoke_")) if args.smoke else RESULTS)
    load_start = list(os.getloadavg())
    if load_start[0] > 0.5:
        print(f"warning: 1-minute load average {load_start[0]:.2f}: the machine is not idle, so the ratios mix in "
              "whatever else runs", flush=True)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    measured = measure(shapes, recipes, layers, args.scale, args.rows, workers)
    result = {
        "command": "python benchmarks/sdxl_throughput.py" + ("" if argv is None and len(sys.argv) == 1 else
                                                             " " + " ".join(sys.argv[1:] if argv is None else argv)),
        "special_run": True, "mode": "smoke" if args.smoke else "full", "started_utc": started,
        "reference_model": None,  # random SDXL-shaped weights: the reference model is not involved
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": usable_cpus(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                    "torch": torch.__version__, "numpy": np.__version__},
        "settings": {"workers": workers, "scale": args.scale, "layers_per_shape": layers, "min_count": args.min_count,
                     "calibration_rows": args.rows, "recipes": list(recipes),
                     "weights": "Student-t ν=3, scaled 0.5/sqrt(fan_in), 4 outlier input channels ×8, fp16",
                     "calibration": f"Gaussian rows, {OUTLIER_INPUTS} input channels ×{OUTLIER_GAIN:g}"},
        "load_start": load_start, "load_end": list(os.getloadavg()),
        # a forked worker's RSS also counts the pages it shares with this process, so the two do not add up
        "peak_rss_mb": {"main": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                        "largest_worker_incl_shared": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024},
        **measured,
    }
    result["summary"] = summarize(result["rows"])
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{STEM}.json", result)
    (out / f"{STEM}.md").write_text(markdown(result))
    print(markdown(result))
    print(f"written: {out / STEM}.json", flush=True)


if __name__ == "__main__":
    main()
