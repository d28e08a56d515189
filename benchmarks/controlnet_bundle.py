"""The reference model's sketch ControlNet in a Core ML bundle, converted here, its weights read back.

    python benchmarks/controlnet_bundle.py [--model DIR] [--controlnet DIR] [--recipe w4r32] [--work DIR] [--reuse]
                                           [--out benchmarks/results]

Runs `pocketsd convert --model MODEL --controlnet Sketch=CONTROLNET --controlnet-recipe RECIPE` (the same
`convert_bundle` the CLI calls) into a fresh folder, then `pocketsd info BUNDLE` in another process (which checks
every package's sha256). Records, from the written manifest: the ControlNet package's inputs and outputs (Apple's
ControlNet layout: the Unet's inputs plus `controlnet_cond`, out the residuals), that the Unet package takes exactly
those residuals as inputs, the ControlNet's bits per parameter as stored (every tensor counted: codes, tables,
scales, low-rank factors, fp16 leftovers), its bit-for-bit weight readback, package bytes, conversion seconds and
peak RSS, with the load average (a shared machine). Prediction needs macOS: not run here.
Writes controlnet_bundle.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

MB = 2**20


def main(argv=None) -> None:
    from pocketsd.artifacts import atomic_file, read_json, write_json
    from pocketsd.artifacts.bundle import MANIFEST
    from pocketsd.convert.bundle import ConvertOptions
    from pocketsd.convert.run import convert_bundle
    from pocketsd.data import REFERENCE_MODEL

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=REFERENCE_MODEL)
    ap.add_argument("--controlnet", type=Path, default=None, help="default: MODEL/controlnet")
    ap.add_argument("--recipe", default="w4r32", help="--controlnet-recipe (a recipe name or a bits budget)")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "controlnet_bundle")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--reuse", action="store_true", help="read the bundle already in --work again (no conversion)")
    args = ap.parse_args(argv)
    controlnet = args.controlnet or args.model / "controlnet"

    load_before = os.getloadavg()
    previous = args.out / "controlnet_bundle.json"
    if args.reuse and previous.is_file():  # the load average of the run that converted the bundle
        load_before, conversion_end = read_json(previous)["load_average_before"], read_json(previous)["load_average_after"]
    if not args.reuse:
        if args.work.exists():
            shutil.rmtree(args.work)
        convert_bundle(ConvertOptions(model=str(args.model), out=args.work, controlnets=[("Sketch", controlnet)],
                                      controlnet_recipe=args.recipe), log=lambda m: print("  " + m, flush=True))
    info = subprocess.run([sys.executable, "-m", "pocketsd", "info", str(args.work)], capture_output=True, text=True)
    load_after = conversion_end if args.reuse and previous.is_file() else os.getloadavg()
    manifest = read_json(args.work / MANIFEST)  # as written on disk
    comps = manifest["components"]
    convert_s = sum(c.get("convert_seconds") or 0 for c in comps.values())  # each package's own conversion time
    cn_key = next(k for k in comps if k.startswith("controlnet/"))
    cn = comps[cn_key]
    unet_keys = [k for k in comps if k.startswith("Unet")]
    unet_inputs = [i["name"] for k in unet_keys for i in comps[k]["inputs"]]
    residuals = [o["name"] for o in cn["outputs"]]
    acc = cn["controlnet"]["accounting"]
    from pocketsd.data.model_card import reference_model_record_if_any

    doc = {
        "reference_model": reference_model_record_if_any(args.model),
        "command": f"pocketsd convert --model {args.model} --out {args.work} --controlnet Sketch={controlnet} "
                   f"--controlnet-recipe {args.recipe}; pocketsd info {args.work}",
        "recipe": args.recipe, "controlnet_package": cn_key,
        "controlnet_inputs": cn["inputs"], "controlnet_outputs": cn["outputs"],
        "unet_packages": unet_keys, "unet_takes_every_residual": all(r in unet_inputs for r in residuals),
        "residuals": len(residuals),
        "controlnet_bytes": cn["bytes"], "controlnet_weight_blob_bytes": cn["census"]["weight_blob_bytes"],
        "controlnet_accounting": acc,
        "controlnet_fp16_bytes": 2 * acc["parameters"],
        "verify": cn.get("verify"), "controlnet_convert_seconds": cn.get("convert_seconds"),
        "controlnet_compress_seconds": cn.get("compress_seconds"), "controlnet_peak_rss_mb": cn.get("peak_rss_mb"),
        "bundle_total_bytes": manifest.get("total_bytes"),
        "components": {k: {"bytes": v["bytes"], "convert_seconds": v.get("convert_seconds")} for k, v in comps.items()},
        "convert_seconds_total": round(convert_s, 1),
        "info_exit_code": info.returncode, "info_integrity": [ln.strip() for ln in info.stdout.splitlines() if "integrity" in ln],
        "load_average_before": load_before, "load_average_after": load_after,
        "prediction": "not run: Core ML prediction needs macOS",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "controlnet_bundle.json", doc)
    cond = next(i for i in cn["inputs"] if i["name"] == "controlnet_cond")
    v = doc["verify"] or {}
    fp16 = cn["controlnet"].get("fp16_layers") or []
    ins = ", ".join(f"`{i['name']}` {tuple(i['shape'])}" for i in cn["inputs"])
    load = lambda a: ", ".join(f"{x:.1f}" for x in a)  # noqa: E731
    lines = [
        "# The sketch ControlNet in a Core ML bundle (reference model)", "",
        f"`{doc['command']}`", "",
        "| | |", "|---|---|",
        f"| package | `Resources/{cn_key}.mlpackage` |",
        f"| inputs | {ins} |",
        f"| outputs | {len(residuals)} residuals, `{residuals[0]}` … `{residuals[-1]}` |",
        f"| the Unet takes every residual as an input | {doc['unet_takes_every_residual']} ({', '.join(unet_keys)}) |",
        f"| conditioning image | `controlnet_cond` {tuple(cond['shape'])} in [0, 1] |",
        f"| ControlNet parameters | {acc['parameters']:,} |",
        f"| stored ({args.recipe}; every tensor counted) | {acc['stored_bytes'] / MB:.2f} MB, {acc['bits_per_param']} bits/param "
        f"(fp16: {doc['controlnet_fp16_bytes'] / MB:.2f} MB) |",
        f"| weight blob in the package | {doc['controlnet_weight_blob_bytes'] / MB:.2f} MB "
        f"(×{doc['controlnet_weight_blob_bytes'] / acc['stored_bytes']:.3f} of the accounting) |",
        f"| package on disk (blob + program) | {cn['bytes'] / MB:.2f} MB |",
        f"| weight readback | {v.get('layers_matched')} layers, {v.get('constexpr_ops')} constexpr ops, bit-exact {v.get('bit_exact')} |",
        f"| `pocketsd info` | exit {info.returncode}; {'; '.join(doc['info_integrity']) or '—'} |",
        f"| ControlNet conversion | {cn.get('convert_seconds', float('nan')):.1f} s, peak RSS {cn.get('peak_rss_mb', float('nan')):.0f} MB |",
        f"| whole bundle | {doc['bundle_total_bytes'] / MB:.2f} MB, {convert_s:.0f} s of conversion in all |",
        f"| fp16 layers left (not compressed) | {', '.join(fp16) if fp16 else 'none'} |",
        "", f"Load average {load(load_before)} at the start, {load(load_after)} at the end (a shared 2-core machine). "
        "Core ML prediction with this package needs macOS and was not run here. MB = 2^20 bytes; bits per parameter "
        "count every stored tensor (codes, tables, scales, low-rank factors, fp16 leftovers). The ControlNet's "
        f"conversion time ({cn.get('compress_seconds') or 0:.0f} s of it the compression) was measured under that load.", ""]
    with atomic_file(args.out / "controlnet_bundle.md", "w") as fh:
        fh.write("\n".join(lines))
    print("\n".join(lines))
    if info.returncode != 0:
        print(info.stdout + info.stderr, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
