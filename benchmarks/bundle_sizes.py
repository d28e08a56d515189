"""Core ML bundle sizes: fp16 vs compressed (w4r32, budget 4.5), and real-SDXL estimates.

    python benchmarks/bundle_sizes.py [--model DIR] [--work DIR] [--out benchmarks/results]

Measured on the reference model (each bundle really converted here, same options): per-component package
bytes, conversion time and peak RSS, the UNet's weight blob against the compressed folder's accounting,
and the multifunction UNet with one vs three functions (base + the two shipped domain LoRAs).
Estimated for real SDXL base (shapes only, built on the meta device from its published configs): the UNet
from the compression accounting (palettize.allocate.layer_bytes over palettize.recipes.compressible_layers,
the rules `pocketsd compress` applies), the text encoders in fp16 and the VAE in fp32, as the bundle keeps them.
Writes bundle_sizes.json and bundle_sizes.md.
"""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

from pocketsd.artifacts import read_json, write_json  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MB = 2**20


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pocketsd", *args], check=True)


def _convert(model: Path | str, out: Path, **kw) -> dict:
    from pocketsd.convert.bundle import ConvertOptions
    from pocketsd.convert.run import convert_bundle

    return convert_bundle(ConvertOptions(model=str(model), out=out, **kw), log=lambda m: print("  " + m))


def _row(label: str, manifest: dict, compressed: dict | None) -> dict:
    comps = manifest["components"]
    unet_names = [n for n in comps if n.startswith("Unet")]
    unet_blob = sum(comps[n]["census"]["weight_blob_bytes"] for n in unet_names)
    row = {"bundle": label, "total_bytes": manifest["total_bytes"],
           "components": {n: {"bytes": c["bytes"], "precision": c["compute_precision"], "convert_s": c["convert_seconds"],
                              "peak_rss_mb": c["peak_rss_mb"]} for n, c in comps.items()},
           "unet_bytes": sum(comps[n]["bytes"] for n in unet_names), "unet_weight_blob_bytes": unet_blob}
    if compressed:
        acc = compressed["components"]["unet"]["accounting"]
        row.update(accounting_bytes=acc["total_bytes"], bits_per_param=acc["bits_per_param"],
                   blob_vs_accounting=unet_blob / acc["total_bytes"],
                   unet_bits_per_param_in_bundle=8 * unet_blob / acc["params"])
    return row


# ---- real SDXL, shapes only ----------------------------------------------------------------------
SDXL_UNET = dict(
    block_out_channels=(320, 640, 1280), layers_per_block=2, transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), sample_size=128,
)


def sdxl_estimates() -> dict:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from pocketsd.palettize.allocate import layer_bytes
    from pocketsd.palettize.quantizers import QuantSpec
    from pocketsd.palettize.recipes import compressible_layers

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET)
        te1 = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                           num_attention_heads=12, vocab_size=49408, max_position_embeddings=77))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                                         num_attention_heads=20, vocab_size=49408, projection_dim=1280,
                                                         max_position_embeddings=77))
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    params = sum(p.numel() for p in unet.parameters())
    chosen, _ = compressible_layers(unet)
    owned = {f"{n}.{p}" for n in chosen for p in ("weight", "bias")}
    leftover = sum(v.numel() * 2 for k, v in unet.state_dict().items() if k not in owned)

    def unet_bytes(bits: int, rank: int) -> int:
        spec = QuantSpec("palette", bits, 16, 32)
        return leftover + sum(layer_bytes(tuple(m.weight.shape), spec, rank, True, m.bias is not None)
                              for m in chosen.values())

    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    dec = count(vae.decoder) + count(vae.post_quant_conv)
    enc = count(vae.encoder) + count(vae.quant_conv)
    others = {"TextEncoder (fp16)": 2 * count(te1), "TextEncoder2 (fp16)": 2 * count(te2),
              "VAEDecoder (fp32)": 4 * dec, "VAEEncoder (fp32)": 4 * enc}
    recipes = {"fp16": 2 * params, "w4r32": unet_bytes(4, 32),
               "budget 4.5": math.ceil(params * 4.5 / 8)}  # the allocator spends the budget (≤ 4.5 bits/param)
    rows = []
    for name, ub in recipes.items():
        half = ub / 2  # --chunk-unet splits weights about evenly
        rows.append({"recipe": name, "unet_bytes": ub, "unet_bits_per_param": 8 * ub / params,
                     "chunk_bytes_approx": half, "bundle_bytes": ub + sum(others.values())})
    return {"unet_params": params, "other_components_bytes": others, "recipes": rows,
            "note": "budget 4.5 is the budget's definition (bits × params / 8); Core ML blob alignment adds <0.1% "
                    "at SDXL scale (64-byte alignment per tensor, ~2k tensors)"}


# ---- the run -------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="diffusers folder (default: the reference model)")
    ap.add_argument("--work", default=str(ROOT / "build" / "bench_bundles"))
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--reuse", action="store_true", help="reuse compressed folders already in --work")
    ap.add_argument("--no-compress", action="store_true", help="measure only recipes given with --compressed")
    ap.add_argument("--no-functions", action="store_true", help="skip the multifunction (LoRA) Unet")
    ap.add_argument("--compressed", action="append", default=[], metavar="LABEL=DIR",
                    help="use an existing compressed folder for 'w4r32' or 'budget 4.5' instead of compressing")
    args = ap.parse_args(argv)
    from pocketsd.data import REFERENCE_LORAS as LORA_DIR, REFERENCE_MODEL

    model = Path(args.model) if args.model else REFERENCE_MODEL
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rows = []
    print("fp16 bundle")
    fp16 = _convert(model, work / "bundle-fp16")
    rows.append(_row("fp16", fp16, None))
    recipes = {"w4r32": ["--recipe", "w4r32"], "budget 4.5": ["--bits-budget", "4.5"]}
    compressed_manifests = {}
    given = dict(x.split("=", 1) for x in args.compressed)
    for label, flags in recipes.items():
        if args.no_compress and label not in given:
            rows.append({"bundle": label, "not_measured": "no compressed folder given (--no-compress)"})
            continue
        folder = Path(given[label]) if label in given else work / f"compressed-{label.replace(' ', '')}"
        if label not in given and not (args.reuse and (folder / "pocketsd.json").is_file()):
            print(f"compress {label}")
            _cli("compress", "--model", str(model), *flags, "--out", str(folder))
        out = work / f"bundle-{label.replace(' ', '')}"
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(work / "bundle-fp16", out)  # text encoders and VAE are unchanged: resume skips them
        print(f"{label} bundle")
        manifest = _convert(folder, out)
        compressed_manifests[label] = read_json(folder / "pocketsd.json")
        rows.append(_row(label, manifest, compressed_manifests[label]))
        rows[-1]["compressed_from"] = compressed_manifests[label].get("source_model", {}).get("path")
    loras = sorted(Path(LORA_DIR).glob("*.safetensors"))[:2] if Path(LORA_DIR).is_dir() else []
    multifunction = None
    base_label = next((b["bundle"] for b in rows if b["bundle"] != "fp16" and "not_measured" not in b), None)
    if len(loras) == 2 and base_label and not args.no_functions:
        print(f"multifunction Unet ({base_label} + 2 LoRAs)")
        out = work / "bundle-functions"
        shutil.rmtree(out, ignore_errors=True)
        folder = Path(given.get(base_label, work / f"compressed-{base_label.replace(' ', '')}"))
        m = _convert(folder, out, only=["Unet"], lora_functions=loras)
        u = m["components"]["Unet"]
        multifunction = {"recipe": base_label, "loras": [p.name for p in loras], "functions": u["functions"],
                         "one_function_bytes": u["single_function_bytes"], "three_functions_bytes": u["bytes"],
                         "ratio": u["bytes"] / u["single_function_bytes"]}
    from pocketsd.data.model_card import reference_model_record_if_any

    result = {"model": str(model), "reference_model": reference_model_record_if_any(model), "bundles": rows, "multifunction_unet": multifunction,
              "sdxl_estimate": sdxl_estimates(), "seconds": round(time.time() - t0, 1)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bundle_sizes.json", result)
    (out / "bundle_sizes.md").write_text(markdown(result))
    print(markdown(result))
    return result


def markdown(r: dict) -> str:
    lines = ["# Core ML bundle sizes", "", f"Reference model `{r['model']}` (measured; `python benchmarks/bundle_sizes.py`).", "",
             "| bundle | total MB | UNet MB | UNet bits/param in bundle | blob / accounting | TextEncoder | TextEncoder2 | VAEDecoder | VAEEncoder |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for b in r["bundles"]:
        if "not_measured" in b:
            lines.append(f"| {b['bundle']} | not measured: {b['not_measured']} |")
            continue
        c = b["components"]
        cell = lambda n: f"{c[n]['bytes'] / MB:.2f} ({c[n]['precision'].replace('float', 'fp')})" if n in c else "-"  # noqa: E731
        bits = f"{b['unet_bits_per_param_in_bundle']:.2f}" if "unet_bits_per_param_in_bundle" in b else "16 (fp16)"
        ratio = f"{b['blob_vs_accounting']:.3f}" if "blob_vs_accounting" in b else "-"
        lines.append(f"| {b['bundle']} | {b['total_bytes'] / MB:.2f} | {b['unet_bytes'] / MB:.2f} | {bits} | {ratio} | "
                     f"{cell('TextEncoder')} | {cell('TextEncoder2')} | {cell('VAEDecoder')} | {cell('VAEEncoder')} |")
    lines += ["", "Conversion time (s) / peak RSS (MB) per component:", "",
              "| bundle | " + " | ".join(r["bundles"][0]["components"]) + " |",
              "| --- |" + " ---: |" * len(r["bundles"][0]["components"])]
    for b in (b for b in r["bundles"] if "components" in b):
        lines.append(f"| {b['bundle']} | " + " | ".join(
            f"{c['convert_s']} / {c['peak_rss_mb']:.0f}" for c in b["components"].values()) + " |")
    m = r.get("multifunction_unet")
    if m:
        lines += ["", f"Multifunction Unet ({m['recipe']}; functions {', '.join(m['functions'])}): one function "
                  f"{m['one_function_bytes'] / MB:.2f} MB, three functions {m['three_functions_bytes'] / MB:.2f} MB "
                  f"(×{m['ratio']:.2f})."]
    else:
        lines += ["", "Multifunction Unet: not measured (the two domain LoRAs are not in refmodel/loras yet)."]
    s = r["sdxl_estimate"]
    lines += ["", f"## Real SDXL base (estimate; UNet {s['unet_params'] / 1e9:.3f} B parameters)", "",
              "| recipe | UNet GB | bits/param | each chunk (--chunk-unet) GB | whole bundle GB |", "| --- | ---: | ---: | ---: | ---: |"]
    for row in s["recipes"]:
        lines.append(f"| {row['recipe']} | {row['unet_bytes'] / 1e9:.3f} | {row['unet_bits_per_param']:.2f} | "
                     f"{row['chunk_bytes_approx'] / 1e9:.3f} | {row['bundle_bytes'] / 1e9:.3f} |")
    lines += ["", "Other components: " + ", ".join(f"{k} {v / 1e9:.3f} GB" for k, v in s["other_components_bytes"].items())
              + ".", "", s["note"], ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
