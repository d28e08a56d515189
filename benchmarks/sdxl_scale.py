"""The real SDXL UNet's shapes: sizes per recipe, compression throughput against coremltools, the whole UNet.

    python benchmarks/sdxl_scale.py sizes         # (a) fp16 bytes and each recipe's bytes (meta device, instant)
    python benchmarks/sdxl_scale.py throughput    # (b) ours vs coremltools palettize_weights on every distinct Linear shape
    python benchmarks/sdxl_scale.py whole         # (c) the whole UNet (random fp16 weights) at w4r32, layer by layer

Each writes benchmarks/results/sdxl_<part>.{json,md}. No SDXL weights are downloaded: the UNet is built from
SDXL base's published config on the meta device; weights, where needed, are random (Student-t, heavy-tailed,
with a few outlier input channels — the statistics that make real LLM/diffusion weights hard to quantize).
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

from pocketsd.artifacts import write_json  # noqa: E402
from pocketsd.palettize.allocate import layer_bytes  # noqa: E402
from pocketsd.artifacts.compressed import INT, PALETTE  # noqa: E402
from pocketsd.palettize.quantizers import QuantSpec  # noqa: E402
from pocketsd.palettize.recipes import FIXED, compressible_layers  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SDXL_BASE = dict(
    sample_size=128, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280), layers_per_block=2,
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
)


def sdxl_unet_meta():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**SDXL_BASE)


def heavy_tailed(shape, seed: int, outlier_channels: int = 4, outlier_gain: float = 8.0) -> torch.Tensor:
    """Student-t (ν = 3) weights scaled like a trained layer, with a few input channels `outlier_gain`× larger."""
    g = torch.Generator().manual_seed(seed)
    fan_in = math.prod(shape[1:])
    # Student-t via normal / sqrt(chi2/ν) so the generator controls every draw.
    nu = 3.0
    z = torch.randn(shape, generator=g)
    chi2 = torch.randn((*shape, 3), generator=g).pow(2).sum(-1)
    w = z / torch.sqrt(chi2 / nu) * (0.5 / math.sqrt(fan_in))
    cols = torch.randperm(shape[1], generator=g)[:outlier_channels]
    w[:, cols] *= outlier_gain
    return w


# ---- (a) sizes --------------------------------------------------------------------------------------
def sizes(out: Path) -> dict:
    unet = sdxl_unet_meta()
    params = sum(p.numel() for p in unet.parameters())
    modules, kept = compressible_layers(unet)
    n_tensors = len(unet.state_dict())
    skip = {f"{n}.{p}" for n in modules for p in ("weight", "bias")}
    leftover = sum(v.numel() * 2 for k, v in unet.state_dict().items() if k not in skip)
    header = lambda n: 8 + 90 * n  # noqa: E731  (format.accounting's safetensors header estimate)

    def recipe_bytes(spec: QuantSpec, rank: int, smoothed: bool, per_channel: bool = False) -> int:
        total = leftover
        for m in modules.values():
            shape = tuple(m.weight.shape)
            if per_channel:  # RTN: one fp16 scale per output channel
                total += math.ceil(math.prod(shape) * spec.bits / 8) + shape[0] * 2 + (shape[0] * 2 if m.bias is not None else 0)
            else:
                total += layer_bytes(shape, spec, min(rank, min(shape[0], math.prod(shape[1:])) // 2), smoothed,
                                     m.bias is not None)
        per_layer = 2 + (2 if rank else 0) + (1 if smoothed else 0)
        return total + header(len(modules) * (per_layer + 1) + n_tensors - len(skip))

    rows = [{"recipe": "fp16", "bytes": 2 * params + header(n_tensors)}]
    rows.append({"recipe": "rtn_int4_per_channel", "bytes": recipe_bytes(QuantSpec(INT, 4, block_size=1 << 30), 0, False, True)})
    rows.append({"recipe": "kmeans4_g16 (coremltools)", "bytes": recipe_bytes(QuantSpec(PALETTE, 4, 16), 0, False)})
    rows.append({"recipe": "int4_block32", "bytes": recipe_bytes(QuantSpec(INT, 4, block_size=32), 0, False)})
    for name, (bits, rank) in FIXED.items():
        for smoothed in (False, True):
            rows.append({"recipe": f"ours_{name} palette g16{' +smoothing' if smoothed else ''}",
                         "bytes": recipe_bytes(QuantSpec(PALETTE, bits, 16), rank, smoothed)})
    rows.append({"recipe": "ours_w4r32 int4 b32 +smoothing", "bytes": recipe_bytes(QuantSpec(INT, 4, block_size=32), 32, True)})
    for r in rows:
        r["GB"] = r["bytes"] / 1e9
        r["bits_per_param"] = 8 * r["bytes"] / params
    shapes = sorted({tuple(m.weight.shape) for m in modules.values() if isinstance(m, torch.nn.Linear)})
    result = {"unet_params": params, "compressed_layers": len(modules), "fp16_layers": kept,
              "fp16_leftover_bytes": leftover, "rows": rows, "distinct_linear_shapes": [list(s) for s in shapes],
              "lowrank_share_w4r32": None}
    write(out, "sdxl_sizes", result, md_sizes(result))
    return result


def md_sizes(r: dict) -> str:
    lines = [f"SDXL base UNet (built on the meta device from the published config): {r['unet_params'] / 1e9:.3f} B "
             f"parameters, {r['compressed_layers']} Linear/Conv2d compressed, {len(r['fp16_layers'])} kept fp16.", "",
             "| recipe | bytes | GB | bits/param |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {x['recipe']} | {x['bytes']:,} | {x['GB']:.3f} | {x['bits_per_param']:.3f} |" for x in r["rows"]]
    return "\n".join(lines) + "\n"


# ---- (b) throughput ---------------------------------------------------------------------------------
def rel_error(W: torch.Tensor, Wq: torch.Tensor) -> float:
    return float((W.float() - Wq.float()).norm() / W.float().norm())


def throughput(out: Path, limit: int | None = None, coreml_workers: int = 1) -> dict:
    from coremltools.optimize.coreml._quantization_passes import palettize_weights

    from pocketsd.palettize.lowrank import compress_layer
    from pocketsd.palettize.quantizers import quantize

    unet = sdxl_unet_meta()
    modules, _ = compressible_layers(unet)
    shapes = sorted({tuple(m.weight.shape) for m in modules.values() if isinstance(m, torch.nn.Linear)})
    if limit:
        shapes = shapes[:limit]
    spec = QuantSpec(PALETTE, 4, 16)
    rows = []
    for i, shape in enumerate(shapes):
        W = heavy_tailed(shape, seed=i).to(torch.float16)
        t0 = time.perf_counter()
        params = palettize_weights.blockwise_compress(W.numpy(), "KMEANS", 4, [16, 0],
                                                      num_kmeans_workers=coreml_workers)
        t_ct = time.perf_counter() - t0
        lut = torch.from_numpy(np.asarray(params.lut)).reshape(shape[0] // 16, 16).float()
        idx = torch.from_numpy(np.asarray(params.indices).astype(np.int64)).reshape(shape)
        W_ct = torch.gather(lut.repeat_interleave(16, 0), 1, idx)
        t0 = time.perf_counter()
        q = quantize(W.float(), spec)
        t_pal = time.perf_counter() - t0
        t0 = time.perf_counter()
        d = compress_layer(W.float(), 32, spec, None, None, (0.0,), 3)
        t_r32 = time.perf_counter() - t0
        W_r32 = d.quant.dequantized.float() + (d.lowrank_up.float() @ d.lowrank_down.float())
        row = {"shape": list(shape), "params": math.prod(shape),
               "coremltools_s": t_ct, "coremltools_rel_err": rel_error(W, W_ct),
               "ours_palette4_s": t_pal, "ours_palette4_rel_err": rel_error(W, q.dequantized),
               "ours_w4r32_s": t_r32, "ours_w4r32_rel_err": rel_error(W, W_r32)}
        rows.append(row)
        print(f"{str(shape):>14}  coremltools {t_ct:7.2f} s err {row['coremltools_rel_err']:.4f}  |  ours palette4 "
              f"{t_pal:6.2f} s err {row['ours_palette4_rel_err']:.4f}  |  ours w4r32 {t_r32:6.2f} s err "
              f"{row['ours_w4r32_rel_err']:.4f}", flush=True)
    tot = {k: sum(r[k] for r in rows) for k in ("coremltools_s", "ours_palette4_s", "ours_w4r32_s")}
    wmean = lambda k: sum(r[k] * r["params"] for r in rows) / sum(r["params"] for r in rows)  # noqa: E731
    summary = {
        "shapes": len(rows), "total_seconds": tot,
        "speedup_palette4": tot["coremltools_s"] / tot["ours_palette4_s"],
        "speedup_w4r32": tot["coremltools_s"] / tot["ours_w4r32_s"],
        "rel_err_param_weighted": {k: wmean(k) for k in ("coremltools_rel_err", "ours_palette4_rel_err", "ours_w4r32_rel_err")},
        "shapes_where_ours_palette4_err_le_coremltools": sum(r["ours_palette4_rel_err"] <= r["coremltools_rel_err"] for r in rows),
        "torch_threads": torch.get_num_threads(), "coremltools_kmeans_workers": coreml_workers,
    }
    summary["target_10x_at_equal_or_lower_error"] = {
        "palette4": summary["speedup_palette4"] >= 10 and summary["rel_err_param_weighted"]["ours_palette4_rel_err"] <= summary["rel_err_param_weighted"]["coremltools_rel_err"],
        "w4r32": summary["speedup_w4r32"] >= 10 and summary["rel_err_param_weighted"]["ours_w4r32_rel_err"] <= summary["rel_err_param_weighted"]["coremltools_rel_err"],
    }
    result = {"summary": summary, "rows": rows,
              "weights": "Student-t ν=3, scaled 0.5/sqrt(fan_in), 4 outlier input channels ×8, fp16"}
    write(out, "sdxl_throughput", result, md_throughput(result))
    return result


def md_throughput(r: dict) -> str:
    s = r["summary"]
    lines = ["4-bit palettization, one 16-entry table per 16 output channels, on every distinct Linear shape of SDXL's "
             f"UNet ({r['weights']}). Relative error = ‖W − Ŵ‖/‖W‖. torch threads {s['torch_threads']}, coremltools "
             f"k-means workers {s['coremltools_kmeans_workers']}.", "",
             "| shape | coremltools s | err | ours palette4 s | err | ours w4r32 s | err |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for x in r["rows"]:
        lines.append(f"| {tuple(x['shape'])} | {x['coremltools_s']:.2f} | {x['coremltools_rel_err']:.4f} | "
                     f"{x['ours_palette4_s']:.2f} | {x['ours_palette4_rel_err']:.4f} | {x['ours_w4r32_s']:.2f} | "
                     f"{x['ours_w4r32_rel_err']:.4f} |")
    e = s["rel_err_param_weighted"]
    lines += ["", f"Totals: coremltools {s['total_seconds']['coremltools_s']:.1f} s, ours palette4 "
              f"{s['total_seconds']['ours_palette4_s']:.1f} s (**{s['speedup_palette4']:.1f}×**), ours w4r32 "
              f"{s['total_seconds']['ours_w4r32_s']:.1f} s ({s['speedup_w4r32']:.1f}×). Parameter-weighted error: "
              f"coremltools {e['coremltools_rel_err']:.4f}, ours palette4 {e['ours_palette4_rel_err']:.4f}, ours w4r32 "
              f"{e['ours_w4r32_rel_err']:.4f}. Target ≥ 10× at equal or lower error: palette4 "
              f"{'met' if s['target_10x_at_equal_or_lower_error']['palette4'] else 'missed'}, w4r32 "
              f"{'met' if s['target_10x_at_equal_or_lower_error']['w4r32'] else 'missed'}."]
    return "\n".join(lines) + "\n"


# ---- (c) the whole UNet ----------------------------------------------------------------------------
def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads): the wall time's floor on an idle machine."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def whole(out: Path, rank: int = 32, limit: int | None = None) -> dict:
    """Every compressible layer: random fp16 weight materialised alone, compressed (w4r32, no calibration),
    kept packed; the result written to a safetensors file. Never more than one layer's fp32 copy in memory."""
    from safetensors.torch import save_file

    from pocketsd.palettize.lowrank import compress_layer
    from pocketsd.palettize.packing import pack_codes

    unet = sdxl_unet_meta()
    modules, kept = compressible_layers(unet)
    if limit:  # a smoke run of the harness, not the figure
        modules = dict(list(modules.items())[:limit])
    spec = QuantSpec(PALETTE, 4, 16)
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    stored: dict[str, torch.Tensor] = {}
    per_layer = []
    for i, (name, m) in enumerate(modules.items()):
        shape = tuple(m.weight.shape)
        W = heavy_tailed(shape, seed=i).to(torch.float16)  # the fp16 checkpoint's layer
        t1 = time.perf_counter()
        d = compress_layer(W.float(), rank, spec, None, None, (0.0,), 3)
        stored[f"{name}.codes"] = pack_codes(d.quant.codes, 4)
        stored[f"{name}.lut"] = d.quant.lut
        if d.lowrank_up is not None:
            stored[f"{name}.lowrank_up"] = d.lowrank_up.contiguous()
            stored[f"{name}.lowrank_down"] = d.lowrank_down.contiguous()
        if m.bias is not None:
            stored[f"{name}.bias"] = torch.zeros(shape[0], dtype=torch.float16)
        per_layer.append({"name": name, "shape": list(shape), "seconds": time.perf_counter() - t1, "snr_db": d.snr_db})
        del W, d
        if i % 50 == 0:
            print(f"{i}/{len(modules)} layers, {time.perf_counter() - t0:.0f} s (cpu {cpu_seconds() - cpu0:.0f} s), "
                  f"peak RSS {peak_rss_mb():.0f} MB", flush=True)
    skip = {f"{n}.{p}" for n in modules for p in ("weight", "bias")}
    for key, p in unet.state_dict().items():
        if key not in skip:
            stored[key] = torch.zeros(p.shape, dtype=torch.float16)
    compress_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "unet.safetensors"
        save_file(stored, str(path))
        file_bytes = path.stat().st_size
    total_s = time.perf_counter() - t0
    cpu_s = cpu_seconds() - cpu0
    result = {"cpu_seconds": cpu_s, "cpu_seconds_per_thread": cpu_s / torch.get_num_threads(),"layers": len(modules), "fp16_layers": len(kept), "rank": rank, "quantizer": "palette4 g16",
              "calibration": None, "compress_seconds": compress_s, "total_seconds_with_write": total_s,
              "peak_rss_mb": peak_rss_mb(), "file_bytes": file_bytes,
              "bits_per_param": 8 * file_bytes / sum(p.numel() for p in unet.parameters()),
              "torch_threads": torch.get_num_threads(),
              "targets": {"under_15_min": total_s < 900, "under_16_GB": peak_rss_mb() < 16 * 1024},
              "slowest_layers": sorted(per_layer, key=lambda r: -r["seconds"])[:10]}
    write(out, "sdxl_whole_unet", result,
          f"Whole SDXL UNet (random heavy-tailed fp16 weights), w{4}r{rank} palette g16 without calibration, layer by "
          f"layer: {result['layers']} layers in {compress_s / 60:.1f} min (+ write: {total_s / 60:.1f} min total), peak RSS "
          f"{result['peak_rss_mb'] / 1024:.2f} GB, CPU time {cpu_s / 60:.1f} min, file {file_bytes / 1e9:.3f} GB ({result['bits_per_param']:.3f} bits/param), "
          f"torch threads {result['torch_threads']}. Targets: < 15 min {'met' if result['targets']['under_15_min'] else 'missed'}, "
          f"< 16 GB {'met' if result['targets']['under_16_GB'] else 'missed'}.\n")
    return result


def write(out: Path, stem: str, result: dict, md: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{stem}.json", result)
    (out / f"{stem}.md").write_text(md)
    print(md)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=("sizes", "throughput", "whole", "all"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--limit", type=int, default=None, help="only the first N shapes (throughput) / layers (whole): smoke runs")
    ap.add_argument("--coreml-workers", type=int, default=1)
    args = ap.parse_args(argv)
    if args.part in ("sizes", "all"):
        sizes(args.out)
    if args.part in ("throughput", "all"):
        throughput(args.out, args.limit, args.coreml_workers)
    if args.part in ("whole", "all"):
        whole(args.out, limit=args.limit)


if __name__ == "__main__":
    main()
