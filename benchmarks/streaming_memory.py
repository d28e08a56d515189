"""Peak memory of the default `pocketsd compress` against one block and the whole model (issue 20, "Streaming").

    python benchmarks/streaming_memory.py            # → benchmarks/results/streaming_memory.{json,md} (make bench-streaming-memory)
    python benchmarks/streaming_memory.py --smoke    # the tiniest size and least work (SMOKE): checks the script, not a result

The model is built, not downloaded: the reference model's text encoders, tokenizers, VAE and scheduler (small) around
a random UNet of SDXL's layout (`sdxl_scale.SDXL_BASE`: three levels, 2 resnets per level, transformer blocks in the
two deeper levels) at a chosen width and depth, with a small latent (16², so calibration's activations stay small
and what is measured is the weights). Its weights are stored in fp16, as published SDXL checkpoints are. By default
the levels are 160/320/640 wide with 1/2/4 transformer layers (≈ 0.3 B UNet parameters, ≈ 0.6 GB in fp16) — many
times one block, which block distillation caps at 1/16 of the network's compressed weights.

The default command (`pocketsd compress --model M --out O`, nothing else; `--smoke` adds a 4-prompt, 2-step
calibration) runs in a child process whose own VmHWM is read at its exit (`child_peak`); its PSS plus that of the
k-means worker processes it starts is polled beside it. Compared with: the largest block (parameters in fp32, as it is held
while it is distilled), the UNet at the dtype compress holds it in while calibrating, the whole model, and the RSS of
an interpreter that has only imported torch, diffusers, transformers and pocketsd (the floor no command gets under).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from child_peak import run_measured, status_bytes  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "build" / "streaming-memory"
GB = 1e9
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# --smoke: the tiniest model and the least work that still runs every step (calibration, budget probes, block
# distillation, write): this machine's load made the plain 4-prompt calibration's probes alone take hours
SMOKE = {"width": 32, "transformer_layers": "0,1,1", "layers_per_block": 1,
         "calib": ["--calib-count", "4", "--calib-steps", "2", "--max-unet-evals", "100", "--distill-minutes", "1"]}


def unet_config(width: int, transformer_layers: tuple[int, ...], reference_unet: dict, sample_size: int,
                layers_per_block: int = 2) -> dict:
    """SDXL's UNet layout at `width` (SDXL: 320) and `transformer_layers` per level (SDXL: 1, 2, 10), conditioned
    like the reference model (its text encoders' width and pooled size) so the reference pipeline runs it."""
    from sdxl_scale import SDXL_BASE

    widths = (width, 2 * width, 4 * width)
    return dict(SDXL_BASE, block_out_channels=widths, transformer_layers_per_block=transformer_layers,
                layers_per_block=layers_per_block,
                # diffusers' `attention_head_dim` is SDXL's head count; SDXL's heads are 64 wide
                attention_head_dim=tuple(max(1, w // 64) for w in widths),
                cross_attention_dim=reference_unet["cross_attention_dim"],
                addition_time_embed_dim=reference_unet["addition_time_embed_dim"],
                projection_class_embeddings_input_dim=reference_unet["projection_class_embeddings_input_dim"],
                sample_size=sample_size)


def build_model(folder: Path, width: int, transformer_layers: tuple[int, ...], sample_size: int, seed: int,
                layers_per_block: int = 2) -> dict:
    """The reference pipeline with a random SDXL-layout UNet in its place (fp16 on disk); skipped when built."""
    import torch
    from diffusers import UNet2DConditionModel

    from pocketsd.artifacts.model_folder import copy_model
    from pocketsd.data import REFERENCE_MODEL

    config = unet_config(width, transformer_layers, json.loads((REFERENCE_MODEL / "unet" / "config.json").read_text()),
                         sample_size, layers_per_block)
    done = folder / "BUILT.json"
    if done.is_file() and json.loads(done.read_text())["unet_config"] == json.loads(json.dumps(config)):
        return json.loads(done.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    copy_model(REFERENCE_MODEL, folder, skip={"unet", "controlnet", "controlnet_depth"})
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**config).to(torch.float16)
    shutil.rmtree(folder / "unet", ignore_errors=True)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    info = {"unet_config": json.loads(json.dumps(config)), "seed": seed}
    done.write_text(json.dumps(info, indent=1))
    return info


def model_sizes(folder: Path) -> dict:
    """Parameters of every network, and of the UNet's largest block as block distillation cuts it (`find_blocks`),
    read from a meta-device UNet (no weights loaded in this process)."""
    import torch
    from diffusers import UNet2DConditionModel

    from pocketsd.artifacts.model_folder import NETWORKS, safetensors_stats
    from pocketsd.compress.run import load_precision
    from pocketsd.palettize.blockwise import find_blocks
    from pocketsd.palettize.recipes import compressible_layers

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
    layers = compressible_layers(unet)[0]
    blocks = find_blocks(unet, list(layers))
    modules = dict(unet.named_modules())
    block_params = {b: sum(p.numel() for p in modules[b].parameters()) for b in blocks}
    largest = max(block_params, key=block_params.get)
    params = {c: safetensors_stats(folder / c)[0] for c in NETWORKS if (folder / c).is_dir()}
    precision = load_precision(folder, "auto", "cpu")
    return {"params": params, "model_params": sum(params.values()),
            "model_file_bytes": sum(p.stat().st_size for p in folder.rglob("*.safetensors")),
            "blocks": len(blocks), "largest_block": largest, "largest_block_params": block_params[largest],
            "largest_layer_params": max(m.weight.numel() for m in layers.values()),
            "load_precision": precision}


def import_floor() -> int:
    """VmHWM of an interpreter that only imported what `pocketsd compress` imports (bytes)."""
    code = ("import torch, diffusers, transformers, pocketsd.compress.run; from pathlib import Path; "
            "print(Path('/proc/self/status').read_text())")
    text = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return status_bytes(text, "VmHWM")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=160, help="channels of the first level (SDXL: 320; ×2, ×4 below)")
    ap.add_argument("--transformer-layers", default="1,2,4", help="transformer layers per level (SDXL: 1,2,10)")
    ap.add_argument("--layers-per-block", type=int, default=2, help="resnets per level (SDXL: 2)")
    ap.add_argument("--sample-size", type=int, default=16, help="latent side (SDXL: 128; small keeps activations small)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--smoke", action="store_true", help=f"the tiniest model ({SMOKE['width']} wide, layers "
                    f"{SMOKE['transformer_layers']}, {SMOKE['layers_per_block']} resnet per level) and {' '.join(SMOKE['calib'])}: "
                    "checks this script runs")
    args = ap.parse_args()
    if args.smoke:
        args.width, args.transformer_layers = SMOKE["width"], SMOKE["transformer_layers"]
        args.layers_per_block = SMOKE["layers_per_block"]
    layers = tuple(int(x) for x in args.transformer_layers.split(","))
    work = args.work
    model, out, logs = work / "model", work / "compressed", work / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    built = build_model(model, args.width, layers, args.sample_size, args.seed, args.layers_per_block)
    build_s = time.time() - t0
    sizes = model_sizes(model)
    floor = import_floor()
    shutil.rmtree(out, ignore_errors=True)
    argv = ["compress", "--model", str(model), "--out", str(out),
            *(SMOKE["calib"] if args.smoke else [])]
    print(f"[{time.strftime('%H:%M:%S')}] pocketsd {' '.join(argv)}", flush=True)
    run = run_measured(argv, logs / "compress.log")
    from pocketsd.artifacts.manifest import MANIFEST

    manifest_path = out / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if run["exit_code"] == 0 and manifest_path.is_file() else {}
    unet = manifest.get("components", {}).get("unet", {})

    held = DTYPE_BYTES[sizes["load_precision"]]
    block_fp32 = 4 * sizes["largest_block_params"]
    unet_held = held * sizes["params"]["unet"]
    model_held = held * sizes["model_params"]
    peak = run["peak_rss_bytes"] or run["polled_hwm_bytes"]
    from default_compress import git_describe

    from pocketsd.data.model_card import reference_model_record

    result = {
        "what": "peak RSS of the default pocketsd compress against its largest block and the whole model",
        "smoke": args.smoke, "command": " ".join(["pocketsd", *argv]),
        "default_command": not args.smoke, "special_run": args.smoke, **({"mode": "smoke"} if args.smoke else {}),
        "code_version": git_describe(),
        # the text encoders, tokenizers, VAE and scheduler are the reference model's; the UNet is random
        "reference_model": reference_model_record(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average": os.getloadavg()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": {**sizes, "unet_config": built["unet_config"], "build_s": round(build_s, 1)},
        "compress": {k: v for k, v in run.items() if k != "rss_timeline"},
        "rss_timeline": run["rss_timeline"][:: max(1, len(run["rss_timeline"]) // 60)],  # (s, own RSS, with workers)
        "manifest": {"precision": manifest.get("precision"), "timings_s": manifest.get("timings_s"),
                     "recipe": unet.get("recipe"),
                     "unet_bytes": (unet.get("accounting") or {}).get("total_bytes")},
        "bytes": {"peak_rss": peak, "tree_peak_pss": run["tree_peak_bytes"], "import_floor": floor,
                  "largest_block_fp32": block_fp32, "unet_at_load_precision": unet_held,
                  "model_at_load_precision": model_held},
        "ratios": {"peak_over_largest_block_fp32": round(peak / block_fp32, 2),
                   "peak_over_model_at_load_precision": round(peak / model_held, 2),
                   "peak_above_floor_over_model_at_load_precision": round((peak - floor) / model_held, 2),
                   "peak_above_floor_over_largest_block_fp32": round((peak - floor) / block_fp32, 2)},
    }
    RESULTS.mkdir(exist_ok=True)
    from pocketsd.artifacts import write_json

    write_json(RESULTS / "streaming_memory.json", result)
    (RESULTS / "streaming_memory.md").write_text(markdown(result))
    print(markdown(result))
    return 0 if run["exit_code"] == 0 else 1


def markdown(r: dict) -> str:
    b, m, c = r["bytes"], r["model"], r["compress"]
    gb = lambda x: f"{x / GB:.3f} GB" if x is not None else "–"  # noqa: E731
    cfg = m["unet_config"]
    lines = [
        "# Streaming: peak memory of `pocketsd compress` against one block and the whole model", "",
        ("**Smoke run** (tiniest size, shortened calibration): checks the script, not a result. The full run is "
         "`make bench-streaming-memory` on a quiet machine." if r["smoke"] else
         "The default command, nothing but `--model`/`--out` (its progress bars draw nothing into a log file)."), "",
        f"Command: `{r['command']}` — exit {c['exit_code']}, {c['wall_s'] / 60:.1f} min wall, "
        f"{c['cpu_s'] / 60:.1f} min CPU. Machine: {r['machine']['platform']}, {r['machine']['cpus']} CPUs, load "
        + "/".join(f"{x:.1f}" for x in r["machine"]["load_average"]) + f", {r['date']}.", "",
        f"Model: random UNet of SDXL's layout, levels {'/'.join(map(str, cfg['block_out_channels']))} wide, "
        f"{'/'.join(map(str, cfg['transformer_layers_per_block']))} transformer layers, latent "
        f"{cfg['sample_size']}², {m['params']['unet']:,} parameters; {m['model_params']:,} in all networks "
        f"({gb(m['model_file_bytes'])} of fp16 files). {m['blocks']} blocks, the largest `{m['largest_block']}` "
        f"({m['largest_block_params']:,} parameters). Compress holds the model in {m['load_precision']} while it "
        f"calibrates.", "",
        "| quantity | bytes |", "| --- | ---: |",
        f"| peak RSS of compress (its own VmHWM) | {gb(b['peak_rss'])} |",
        f"| peak PSS of compress + its worker processes (polled every 0.5 s) | {gb(b['tree_peak_pss'])} |",
        f"| interpreter with the imports only (floor) | {gb(b['import_floor'])} |",
        f"| largest block in fp32 | {gb(b['largest_block_fp32'])} |",
        f"| UNet at {m['load_precision']} | {gb(b['unet_at_load_precision'])} |",
        f"| every network at {m['load_precision']} | {gb(b['model_at_load_precision'])} |", "",
        "| ratio | value |", "| --- | ---: |",
        *[f"| {k.replace('_', ' ')} | {v} |" for k, v in r["ratios"].items()], "",
        "Calibration runs the whole pipeline, so every network is resident at its load precision while it "
        "calibrates: the floor of the peak is the imports plus the model at that precision, and what streaming "
        "removes is everything above it (a float layer and its compressed copy beside each other for the whole "
        "network, a second copy at write time, an fp32 copy of the network for distillation).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
