"""Apple's own mixed-bit palettization pre-analysis, run on the reference model, with every bit counted.

    python benchmarks/apple_mbp.py --apple-src DIR [--min-size N] [--budget 4.5] [--out benchmarks/results]

DIR is a checkout of github.com/apple/ml-stable-diffusion outside this repository (never committed, never a
dependency): the folder holding `python_coreml_stable_diffusion/`. Its `mixed_bit_compression_pre_analysis.main`
runs unchanged — per-layer and cumulative palettization at 1, 2, 4, 6 and 8 bits, each scored by the PSNR of the
latent after a one-step schedule, `num_recipes` recipes from a threshold sweep — with these adaptations, each
printed and recorded in the result:

- the pipeline is ours (`get_pipeline` returns the reference model, fp32 on the CPU; Apple's loads fp16 from
  the hub), Apple's 8 COCO test prompts are replaced by 8 grammar prompts (the only words the reference model
  knows) and the 768-px test resolution by the model's own 128 px;
- importing Apple's module downloads 8 Flickr images for img2img pipelines; there is no internet here, so the
  import is served 8 grey stand-ins (unused: this is a text-to-image pipeline);
- `torch2coreml` imports `diffusionkit` (SD3 conversion only); when it is not installed an empty stand-in module
  is registered so the import succeeds (none of its functions is called by the pre-analysis);
- Apple's int8 baseline imports `AffineQuantParams` from coremltools 7.0b1, a plain attribute holder that
  coremltools 9 removed; an empty class stands in (the arithmetic is Apple's).

Then Apple's `build_recipe` is swept over every measured threshold, and every recipe is sized three ways:
- Apple's label (`recipe_<bits>_bit_mixedpalette`): mean code bits over the *candidate* layers only — layers
  under `PALETTIZE_MIN_SIZE` weights (1e5 by default), biases, norms and tables are not in it;
- Apple's log line (`fake_palette_from_recipe`): bits over every module weight, unpalettized ones at 16;
- honest (`pocketsd.artifacts.compressed.accounting`, the format every row of compression.md is sized by):
  codes, one fp16 table per tensor (Apple palettizes per tensor), biases, every fp16 leftover and the
  container header, divided by all UNet parameters.
The recipe with the largest label ≤ budget and the one with the largest honest size ≤ budget are then applied
with Apple's `fake_palette_from_recipe` and evaluated like compression.py (54 adherence prompts, 20 steps, image
PSNR/SSIM against fp16, adherence). Writes apple_mbp{_<min size>}.{json,md} and keeps Apple's own outputs
(JSON, plot) in --work. benchmarks/baselines.py reads the recipes back for compression.md.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import math
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pocketsd.artifacts import write_json  # noqa: E402
from pocketsd.artifacts.compressed import PALETTE, LayerRecord, accounting  # noqa: E402
from pocketsd.data import REFERENCE_MODEL  # noqa: E402
from pocketsd.data.grammar import calibration_prompts  # noqa: E402
from pocketsd.data.prompt_sets import REFERENCE_SET, load_prompt_set  # noqa: E402
from pocketsd.palettize.packing import pack_codes  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MODULE = "python_coreml_stable_diffusion.mixed_bit_compression_pre_analysis"


class CannotRun(Exception):
    """Apple's code cannot run here; the message says exactly why."""


# ---- importing Apple's module ------------------------------------------------------------------------
def import_apple(src: Path) -> tuple[types.ModuleType, list[str]]:
    """Apple's pre-analysis module from a checkout, with the stand-ins listed in the docstring."""
    notes = []
    if not (src / "python_coreml_stable_diffusion" / "mixed_bit_compression_pre_analysis.py").is_file():
        raise CannotRun(f"{src} is not an ml-stable-diffusion checkout (no "
                        "python_coreml_stable_diffusion/mixed_bit_compression_pre_analysis.py)")
    if str(ROOT) in str(src.resolve()):
        raise CannotRun("keep Apple's checkout outside this repository (it is never committed)")
    sys.path.insert(0, str(src))
    try:
        import diffusionkit  # noqa: F401
    except ImportError:
        for name in ("diffusionkit", "diffusionkit.tests", "diffusionkit.tests.torch2coreml"):
            sys.modules[name] = types.ModuleType(name)

        def unavailable(*_a, **_k):
            raise RuntimeError("diffusionkit stand-in: SD3 conversion is not available here")

        sys.modules["diffusionkit.tests.torch2coreml"].convert_mmdit_to_mlpackage = unavailable
        sys.modules["diffusionkit.tests.torch2coreml"].convert_vae_to_mlpackage = unavailable
        notes.append("diffusionkit is not installed: an empty stand-in module was registered for torch2coreml's "
                     "import (its SD3 functions are never called by the pre-analysis)")
    from coremltools.optimize.coreml import _quantization_passes

    if not hasattr(_quantization_passes, "AffineQuantParams"):
        # Apple's `fake_linear_quantize` (its int8 baseline, which sets the low end of the threshold sweep) is a
        # copy of coremltools 7.0b1 and imports that version's parameter holder; coremltools 9 dropped the class.
        # It only holds attributes (scale, zero_point, quantized_data, axis): Apple's arithmetic runs unchanged.
        class AffineQuantParams:
            pass

        _quantization_passes.AffineQuantParams = AffineQuantParams
        notes.append("coremltools 9 has no AffineQuantParams (the attribute holder Apple's int8 baseline imports "
                     "from coremltools 7.0b1): an empty class was registered in its place")
    import requests
    from PIL import Image

    real_get = requests.get

    def offline_get(url, *a, **k):  # the module downloads img2img test images at import time
        buf = io.BytesIO()
        Image.new("RGB", (640, 480), (128, 128, 128)).save(buf, "PNG")
        buf.seek(0)
        return types.SimpleNamespace(raw=buf, status_code=200, url=url)

    requests.get = offline_get
    try:
        import importlib

        module = importlib.import_module(MODULE)
    except Exception as exc:  # noqa: BLE001 — any failure here is the answer to "can it run?"
        raise CannotRun(f"importing {MODULE} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None
    finally:
        requests.get = real_get
    notes.append(f"{len(module.RANDOM_TEST_IMAGE_DATA)} img2img test images could not be downloaded (no internet): "
                 "grey stand-ins were served to the import (only img2img pipelines use them)")
    return module, notes


# ---- sizes -------------------------------------------------------------------------------------------
def label_bits(recipe: dict, sizes: dict) -> float:
    """Apple's label: Σ bits·numel / Σ numel over the recipe's candidate layers (`build_recipe`'s stats)."""
    return sum(recipe[k] * sizes[k] for k in recipe) / sum(sizes[k] for k in recipe)


def log_bits(unet, recipe: dict) -> float:
    """The figure `fake_palette_from_recipe` logs: every module weight, unpalettized ones at 16 bits."""
    bits = numel = 0
    for name, m in unet.named_modules():
        if hasattr(m, "weight") and isinstance(getattr(m, "weight"), torch.Tensor):
            numel += m.weight.numel()
            bits += m.weight.numel() * recipe.get(name, 16)
    return bits / numel


def honest_accounting(unet, recipe: dict) -> dict:
    """The format's accounting: palettized layers as codes + one fp16 table per tensor + bias, the rest fp16."""
    modules = dict(unet.named_modules())
    state, records = {}, []
    owned = set()
    for name, bits in recipe.items():
        if bits == 16:
            continue
        m = modules[name]
        shape = tuple(m.weight.shape)
        records.append(LayerRecord(name, "conv" if isinstance(m, torch.nn.Conv2d) else "linear", shape, PALETTE,
                                   bits, shape[0], None, has_bias=m.bias is not None))
        state[f"{name}.codes"] = pack_codes(torch.zeros(shape, dtype=torch.uint8), bits)  # sizes only
        state[f"{name}.lut"] = torch.zeros(1, 1 << bits, dtype=torch.float16)
        if m.bias is not None:
            state[f"{name}.bias"] = m.bias.detach().to(torch.float16)
        owned |= {f"{name}.weight", f"{name}.bias"}
    for key, value in unet.state_dict().items():
        if key not in owned:
            state[key] = value.detach().to(torch.float16)
    return accounting(state, records)


# ---- the run -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--apple-src", type=Path, required=True, help="ml-stable-diffusion checkout (outside the repo)")
    ap.add_argument("--model", type=Path, default=REFERENCE_MODEL)
    ap.add_argument("--min-size", type=float, default=None,
                    help="PALETTIZE_MIN_SIZE: candidates have more weights than this (default: Apple's own, 1e5)")
    ap.add_argument("--num-recipes", type=int, default=7, help="Apple's --num-recipes")
    ap.add_argument("--budget", type=float, default=4.5)
    ap.add_argument("--steps", type=int, default=20, help="sampling steps of the image evaluation")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "apple_mbp", help="Apple's -o folder")
    ap.add_argument("--quick", action="store_true", help="few prompts: checks the harness, not the figures")
    args = ap.parse_args(argv)

    try:
        apple, notes = import_apple(args.apple_src.resolve())
    except CannotRun as exc:
        print(f"apple_mbp: Apple's pre-analysis cannot run here: {exc}", file=sys.stderr)
        return 2
    torch.set_grad_enabled(False)  # Apple's module does this at import; said here so it is not a surprise
    from diffusers import StableDiffusionXLPipeline

    from compression import Evaluator

    pipe = StableDiffusionXLPipeline.from_pretrained(args.model, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.default_sample_size * pipe.vae_scale_factor
    apple.RANDOM_TEST_DATA[:] = calibration_prompts(8, seed=12345)  # len() is read by build_recipe too
    apple.TEST_RESOLUTION = size
    min_size = apple.PALETTIZE_MIN_SIZE if args.min_size is None else args.min_size
    apple.PALETTIZE_MIN_SIZE = min_size
    apple.get_palettizable_modules.__defaults__ = (min_size,)
    apple.get_pipeline = lambda _args: pipe
    notes.append(f"get_pipeline returns the reference model ({args.model}), fp32 on the CPU")
    notes.append(f"RANDOM_TEST_DATA: 8 grammar prompts; TEST_RESOLUTION {size}")
    tag = "" if args.min_size is None else f"_min{int(min_size)}"
    work = args.work / f"min{int(min_size)}"
    work.mkdir(parents=True, exist_ok=True)
    apple_args = argparse.Namespace(o=str(work), model_version="pocketsd-reference", default_nbits=16,
                                    num_recipes=args.num_recipes, custom_vae_version=None)
    for note in notes:
        print(f"apple_mbp: {note}", flush=True)

    t0, c0 = time.time(), time.process_time()
    apple.main(apple_args)  # resumes from its JSON in --work if a previous run was interrupted
    pre_s, pre_cpu = time.time() - t0, time.process_time() - c0
    results = json.loads((work / "pocketsd-reference_palettization_recipe.json").read_text())

    unet = pipe.unet
    candidates, counts = apple.get_palettizable_modules(unet)
    sizes = dict(zip(candidates, counts))
    thresholds = sorted({sum(v) / len(v) for bits in results["cumulative"].values()
                         for k, v in bits.items() if k != "metadata"})
    sweep = []
    for thr in thresholds:
        recipe, stats = apple.build_recipe(results["cumulative"], sizes, thr - 1e-9, 16)
        acc = honest_accounting(unet, recipe)
        sweep.append({"threshold_db": thr, "label_bits": stats["nbits"], "log_bits": log_bits(unet, recipe),
                      "honest_bits": acc["bits_per_param"], "recipe": recipe})
    fits_label = [s for s in sweep if s["label_bits"] <= args.budget]
    fits_honest = [s for s in sweep if s["honest_bits"] <= args.budget]
    chosen = {}
    if fits_label:
        chosen[f"apple_mbp_label{args.budget:g}"] = max(fits_label, key=lambda s: (s["label_bits"], s["threshold_db"]))
    if fits_honest:
        chosen[f"apple_mbp_honest{args.budget:g}"] = max(fits_honest, key=lambda s: (s["honest_bits"], s["threshold_db"]))
    floor = min(s["honest_bits"] for s in sweep)

    prompts = load_prompt_set(REFERENCE_SET, count=6 if args.quick else None)
    ev = Evaluator(pipe, args.model, calibration_prompts(8, seed=12345), prompts, args.steps,
                   args.work / ("eval_quick" if args.quick else "eval"))
    ev.evaluate("fp16", unet)  # the fp16 reference (latents; its images are made once and reused)
    rows = []
    for name, s in chosen.items():
        student = copy.deepcopy(unet)
        apple.fake_palette_from_recipe(student, s["recipe"])
        metrics, _ = ev.evaluate(name, student)
        acc = honest_accounting(unet, s["recipe"])
        hist = {str(b): sum(1 for v in s["recipe"].values() if v == b) for b in (1, 2, 4, 6, 8, 16)}
        rows.append({"method": name, "label_bits": s["label_bits"], "log_bits": s["log_bits"],
                     "bits_per_param": acc["bits_per_param"], "unet_bytes": acc["total_bytes"],
                     "psnr_threshold_db": s["threshold_db"], "bits_histogram": hist, **metrics})
        print(f"{name}: label {s['label_bits']:.2f} bits, Apple's log {s['log_bits']:.2f}, honest "
              f"{acc['bits_per_param']:.3f} bits; image PSNR {metrics['image_psnr_db']:.2f} dB", flush=True)
    pipe.unet = unet
    apple_recipes = [{"key": k, "end_to_end_psnr_db": results["baselines"].get(k),
                      "label_bits": label_bits(r, sizes), "honest_bits": honest_accounting(unet, r)["bits_per_param"]}
                     for k, r in results.get("recipes", {}).items()]
    from pocketsd.data.model_card import reference_model_record_if_any

    doc = {"reference_model": reference_model_record_if_any(args.model),
           "apple_src": str(args.apple_src), "apple_module": MODULE, "adaptations": notes,
           "palettize_min_size": min_size, "candidates": len(candidates),
           "candidate_params_share": sum(counts) / sum(p.numel() for p in unet.parameters()),
           "pre_analysis_seconds": pre_s, "pre_analysis_cpu_seconds": pre_cpu,
           "budget": args.budget, "honest_floor_bits": floor, "quick": args.quick, "steps": args.steps,
           "n_image_prompts": len(prompts), "apple_recipes": apple_recipes,
           "sweep": [{k: v for k, v in s.items() if k != "recipe"} for s in sweep],
           "rows": rows, "recipes": {name: s["recipe"] for name, s in chosen.items()}}
    if not fits_honest:
        doc["honest_budget_note"] = (f"no recipe of Apple's fits {args.budget:g} honest bits: with candidates above "
                                     f"{min_size:g} weights the rest stays fp16 and the smallest recipe is "
                                     f"{floor:.2f} bits per parameter")
        print(f"apple_mbp: {doc['honest_budget_note']}")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"apple_mbp{tag}{'_quick' if args.quick else ''}"
    write_json(args.out / f"{stem}.json", doc)
    (args.out / f"{stem}.md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


def markdown(doc: dict) -> str:
    lines = [f"Apple's `{doc['apple_module'].rsplit('.', 1)[1]}` on the reference model: {doc['candidates']} candidate "
             f"layers (more than {doc['palettize_min_size']:g} weights, {100 * doc['candidate_params_share']:.1f} % of "
             f"the UNet's parameters); pre-analysis {doc['pre_analysis_seconds'] / 60:.1f} min "
             f"({doc['pre_analysis_cpu_seconds'] / 60:.1f} CPU-min). Image metrics: {doc['n_image_prompts']} adherence "
             f"prompts at {doc['steps']} steps against fp16.", "",
             "| recipe | Apple's label bits | Apple's log bits | honest bits/param | image PSNR dB | SSIM | adherence % |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in doc["rows"]:
        lines.append(f"| {r['method']} | {r['label_bits']:.2f} | {r['log_bits']:.2f} | {r['bits_per_param']:.3f} | "
                     f"{r['image_psnr_db']:.2f} | {r['image_ssim']:.4f} | {r['adherence_pct']:.1f} |")
    if doc.get("honest_budget_note"):
        lines += ["", doc["honest_budget_note"] + "."]
    lines += ["", "Apple's own recipes (its end-to-end PSNR is the one-step latent's):", "",
              "| Apple's key | label bits | honest bits/param | Apple's end-to-end PSNR dB |", "| --- | ---: | ---: | ---: |"]
    for r in doc["apple_recipes"]:
        psnr = r["end_to_end_psnr_db"]
        lines.append(f"| {r['key']} | {r['label_bits']:.2f} | {r['honest_bits']:.3f} | "
                     f"{'—' if psnr is None else f'{psnr:.1f}'} |")
    lines += ["", "Adaptations: " + "; ".join(doc["adaptations"]) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
