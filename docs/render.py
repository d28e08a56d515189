"""Render the documentation's results pages from `benchmarks/results/**/*.json`; nothing in them is typed by hand.

    python docs/render.py              # writes docs/results/*.md, copies the figures, updates README's table
    python docs/render.py --check      # renders into a temp folder and exits 1 on any difference

Every JSON file under `benchmarks/results/` gets a page: where it came from (the command, the code version,
the machine and its load, the date, the version of the reference model it measured) and whether it is the default
command or a special run, then its tables.
A file this script has no special layout for still gets a page, from its structure: scalar settings, then
every list of records as a table. What a file does not record is written "not recorded", never guessed.

Units, chosen once (docs/units.md): MB = 10^6 bytes and GB = 10^9 bytes for files and weights; the tools
record memory (RSS) in MiB = 2^20 bytes, and it is shown in MiB (GiB = 2^30 bytes).

"Default" means the settings `pocketsd compress` uses today, read from the code (`pocketsd.palettize.recipes`),
so a row measured under older defaults turns into a special run here as soon as the defaults change.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import math
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
OUT = ROOT / "docs" / "results"
README = ROOT / "README.md"
HEADLINE_START = "<!-- results:headline start (made by docs/render.py from benchmarks/results; do not edit) -->"
HEADLINE_END = "<!-- results:headline end -->"
NOT_RECORDED = "not recorded"

# The command that writes each file, for files that do not record it themselves (from the scripts' own docstrings).
WRITTEN_BY = {
    "apple_mbp": "python benchmarks/apple_mbp.py --apple-src DIR",
    "bundle_sizes": "python benchmarks/bundle_sizes.py",
    "compression": "make bench-compress (benchmarks/compression.py; parts merged with --merge)",
    "compression_part_A": "python benchmarks/compression.py (part A)",
    "compression_part_C": "python benchmarks/compression.py (part C)",
    "compression_part_D": "python benchmarks/compression.py (part D)",
    "compression_part_E": "python benchmarks/compression.py --part-from-distill-curve benchmarks/results/distill_curve.json",
    "distill_curve": "make bench-distill (python benchmarks/distill.py; per-budget runs joined with --merge)",
    "eval_refmodel": "python benchmarks/eval_refmodel.py",
    "generate": "pocketsd bench",
    "lora_blueprint": "python -m pocketsd.refmodel.train_lora --style blueprint --steps 300 --seed 2 --max-minutes 14",
    "lora_poster": "python -m pocketsd.refmodel.train_lora --style poster --steps 450 --seed 1 --max-minutes 14",
    "lora_copyspace": "python -m pocketsd.refmodel.copyspace",
    "lora_train_memory": "make bench-lora-train (python benchmarks/lora_train_memory.py)",
    "memory_low_memory": "python benchmarks/low_memory.py",
    "refmodel_adherence": "python -m pocketsd.refmodel.check",
    "refmodel_adherence_v2_stage1_quick": "python -m pocketsd.refmodel.check --model STAGE1 --seeds 0 --positions 24 --pairs 12",
    "refmodel_adherence_v2_stage2_quick": "python -m pocketsd.refmodel.check --model STAGE2 --seeds 0 --positions 24 --pairs 12",
    "refmodel_colour_polish": "python -m pocketsd.refmodel.train --colour-polish python/pocketsd/data/reference/model "
                              "--colour-polish-steps 1300",
    "refmodel_training": "python -m pocketsd.refmodel.train --max-minutes 78",
    "refmodel_training_v2_stage1": "python -m pocketsd.refmodel.train --finetune python/pocketsd/data/reference/model --version 2 --unet-steps 2600 --unet-images 12000 --batch 64 --lr 2e-4 --p-position 0.8 --p-pair 0.2 --max-minutes 52",
    "refmodel_training_v2_stage2": "python -m pocketsd.refmodel.train --finetune STAGE1 --version 2 --unet-steps 2000 --unet-images 12000 --batch 32 --lr 3e-4 --p-position 0.9 --p-pair 0.25 --high-noise-share 0.5 --seed 1 --max-minutes 25",
    "runtime_modes": "python benchmarks/runtime_modes.py",
    "sdxl_real_size": "make bench-real-size (python benchmarks/sdxl_real_size.py)",
    "sdxl_sizes": "python benchmarks/sdxl_scale.py sizes",
    "sdxl_throughput": "python benchmarks/sdxl_scale.py throughput",
    "sdxl_whole_unet": "python benchmarks/sdxl_scale.py whole",
    "sketch": "python benchmarks/sketch.py",
    "depth": "python benchmarks/depth.py",
    "refmodel_controlnet_depth": "python -m pocketsd.refmodel.train_controlnet --condition depth",
    "inpaint": "python benchmarks/inpaint.py",
    "controlnet_bundle": "python benchmarks/controlnet_bundle.py",
    "verify_cost": "python benchmarks/verify_cost.py",
}

TITLES = {
    "default_compress": "The default compress command",
    "default_compress_quick": "The default compress command (smoke run)",
    "app_load": "The web demo under load",
    "compression": "Compression against Apple's methods",
    "distill_curve": "Distillation: gain against CPU-minutes",
    "apple_mbp": "Apple's own mixed-bit pre-analysis",
    "eval_refmodel": "Evaluation protocol on the reference model",
    "sdxl_real_size": "The whole chain on a full-size SDXL",
    "sdxl_sizes": "Real SDXL sizes",
    "sdxl_throughput": "Palettization speed on SDXL's shapes",
    "sdxl_throughput_workers": "Compressing on every core: old and new path per SDXL layer shape",
    "sdxl_whole_unet": "Compressing a whole SDXL-size UNet",
    "bundle_sizes": "Core ML bundle sizes",
    "runtime_modes": "Runtime modes (dense, packed)",
    "memory_low_memory": "Peak memory with --low-memory",
    "generate": "pocketsd bench",
    "refmodel_adherence": "Reference model: prompt adherence",
    "refmodel_adherence_v2_stage1_quick": "Reference model version 2, stage 1: quick check (special run)",
    "refmodel_adherence_v2_stage2_quick": "Reference model version 2, stage 2: quick check (special run)",
    "refmodel_training": "Reference model: training (version 1)",
    "refmodel_training_v2_stage1": "Reference model version 2: fine-tune, stage 1",
    "refmodel_training_v2_stage2": "Reference model version 2: fine-tune, stage 2 (positions learned here)",
    "refmodel_colour_polish": "Reference model: colour polish",
    "refmodel_controlnet": "Reference model: sketch ControlNet training",
    "refmodel_controlnet_depth": "Reference model: depth ControlNet training",
    "lora_copyspace": "LoRA training proof: copy space",
    "lora_train_memory": "LoRA training memory",
    "lora_poster": "Shipped LoRA: poster",
    "lora_blueprint": "Shipped LoRA: blueprint",
    "inpaint": "Inpainting proof",
    "sketch": "Sketch → image",
    "depth": "Depth → image",
    "controlnet_bundle": "A ControlNet in a Core ML bundle",
}


# ---- the default command, read from the code ---------------------------------------------------------------
def compress_defaults() -> dict:
    """What `pocketsd compress` does with no flags, from `Recipe`'s and `CalibrationSettings`' own defaults (None
    where the code does not say)."""
    out = {"budget": None, "distill": None, "distill_steps": None, "distill_minutes": None,
           "calib_count": None, "calib_steps": None}
    try:
        from dataclasses import MISSING, fields

        from pocketsd.palettize import calibrate, recipes

        for f in fields(recipes.Recipe):
            if f.name in out and f.default is not MISSING:
                out[f.name] = f.default
            if f.name == "bits_budget" and f.default is not MISSING:
                out["budget"] = f.default
        for f in fields(calibrate.CalibrationSettings):
            if f"calib_{f.name}" in out and f.default is not MISSING:
                out[f"calib_{f.name}"] = f.default
    except Exception:  # noqa: BLE001 - the pages then say the defaults could not be read
        pass
    return out


def default_command_text(d: dict) -> str:
    if d["budget"] is None:
        return "`pocketsd compress` (its defaults could not be read from the code)"
    steps = d["distill_steps"]
    if not steps or d["distill"] == "off":
        distil = "no distillation"
    else:
        distil = (f"{d['distill']}-wise " if d["distill"] == "block" else
                  f"{d['distill']}-UNet " if d["distill"] else "") + f"distillation, {steps:,} steps"
        distil += " per block" if d["distill"] == "block" else ""
        if d["distill_minutes"]:
            distil += f" or {d['distill_minutes']:g} wall-clock minutes in all, whichever ends first"
    calib = (f", calibration {d['calib_count']} prompts × {d['calib_steps']} steps"
             if d["calib_count"] and d["calib_steps"] else "")
    return f"`pocketsd compress`: budget {d['budget']:g} bits/param{calib}, {distil}"


# ---- formatting --------------------------------------------------------------------------------------------
def num(x, digits: int = 4) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if math.isinf(x) or math.isnan(x):
            return str(x)
        if abs(x) >= 1e5:
            return f"{x:,.0f}"
        if x == 0:
            return "0"
        s = f"{x:.{digits}g}"
        return s if "e" not in s else f"{x:.3e}"
    return str(x)


def cell(x) -> str:
    if isinstance(x, (list, tuple)):
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x):
            return ("[" + ", ".join(str(v) if isinstance(v, int) else num(v) for v in x) + "]" if len(x) <= 6
                    else f"{len(x)} values")
        return ", ".join(cell(v) for v in x) if len(x) <= 6 else f"{len(x)} items"
    if isinstance(x, dict):
        return ", ".join(f"{k} {cell(v)}" for k, v in x.items()) if len(x) <= 6 else f"{len(x)} fields"
    return num(x).replace("|", "\\|").replace("\n", " ")


def mb(nbytes) -> str:
    return "—" if nbytes is None else f"{nbytes / 1e6:.3f}"


def ci(pair) -> str:
    return f" [{pair[0]:.2f}, {pair[1]:.2f}]" if pair and len(pair) == 2 else ""


def table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> list[str]:
    align = align or ["---"] * len(header)
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"] + \
           ["| " + " | ".join(r) + " |" for r in rows] + [""]


def label(key: str) -> str:
    """A column name with its unit made explicit (RSS in MiB as the tools record it, sizes in 10^n bytes)."""
    if key.endswith("_mb") and "rss" in key:
        return key[:-3] + " (MiB)"
    if key.endswith("_gb"):
        return key[:-3] + " (GB)"
    if key.endswith("_bytes") or key == "bytes":
        return key + " (B)"
    return key


# ---- provenance --------------------------------------------------------------------------------------------
_LOAD_KEY = re.compile(r"^(load(_?avg)?(_average)?(_(before|after|end|start))?)$")
_UPTIME = re.compile(r"load average:\s*([\d.]+)")


def loads(data, out: list[float] | None = None) -> list[float]:
    """Every 1-minute load average the file recorded, at any depth."""
    out = [] if out is None else out
    if isinstance(data, dict):
        for k, v in data.items():
            if _LOAD_KEY.match(k):
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out.append(float(v))
                elif isinstance(v, list) and v and isinstance(v[0], (int, float)):
                    out.append(float(v[0]))
            elif k.startswith("uptime") and isinstance(v, str) and _UPTIME.search(v):
                out.append(float(_UPTIME.search(v).group(1)))
            else:
                loads(v, out)
    elif isinstance(data, list) and len(data) < 400:
        for v in data:
            loads(v, out)
    return out


def find_key(data, names: tuple[str, ...]):
    if isinstance(data, dict):
        for n in names:
            if data.get(n) is not None and not isinstance(data[n], (dict, list)):
                return data[n]
        for k in ("machine", "settings", "train", "train_settings"):
            if isinstance(data.get(k), dict):
                v = find_key(data[k], names)
                if v is not None:
                    return v
    return None


def find_disjoint(data):
    """A recorded check that evaluation prompts are disjoint from the compressor's: any key naming 'disjoint'."""
    if isinstance(data, dict):
        for k, v in data.items():
            if "disjoint" in k and not isinstance(v, (dict, list)):
                return v
            if k == "splits" and isinstance(v, dict):
                return "; ".join(f"{a}: {b}" for a, b in v.items())
            if isinstance(v, dict):
                found = find_disjoint(v)
                if found is not None:
                    return found
    return None


def reference_model_text(data: dict) -> str:
    """The reference model a file measured, from its `reference_model` record (`pocketsd.data.model_card`): the
    version, the commit that made a file older than the record, and the card's grammar and steps; `null` means the
    run did not use the reference model."""
    if "reference_model" not in data:
        return NOT_RECORDED
    ref = data["reference_model"]
    if ref is None:
        return "none (this run did not use the reference model)"
    if not isinstance(ref, dict):
        return cell(ref)
    parts = [f"version {ref.get('version', NOT_RECORDED)}"]
    if ref.get("commit"):
        parts.append(f"results made at git {ref['commit']}")
    grammar = ref.get("grammar")
    if isinstance(grammar, dict):
        parts.append("trained on " + ", ".join(f"{k} {cell(v)}" for k, v in grammar.items()
                                                if k in ("p_position", "p_pair", "images")))
    steps = ref.get("unet_steps")
    if isinstance(steps, dict) and steps.get("this_run") is not None:
        parts.append(f"{steps['this_run']:,} UNet steps on version {(ref.get('base') or {}).get('version', '?')}")
    return "; ".join(parts)


def provenance(stem: str, data: dict, kind: str) -> list[str]:
    command = data.get("command") if isinstance(data.get("command"), str) else WRITTEN_BY.get(stem)
    commit = data.get("commit") or data.get("code_version") or data.get("git_describe")
    version = (data.get("versions") or {}).get("pocketsd") if isinstance(data.get("versions"), dict) else None
    code = ", ".join(x for x in ((f"pocketsd {version}" if version else ""), (f"git {commit[:12] if re.fullmatch(r'[0-9a-f]{40}', commit) else commit}" if commit else ""))
                     if x) or NOT_RECORDED
    cpus = find_key(data, ("cpus", "cpu_count", "cores"))
    threads = find_key(data, ("torch_threads", "threads", "omp_threads"))
    platform = find_key(data, ("platform",))
    machine = "; ".join(f"{name}: {NOT_RECORDED if v is None else v}" for name, v in
                        (("CPUs", cpus), ("torch threads", threads), ("platform", platform)))
    ls = loads(data)
    load = (f"1-minute load average {min(ls):.1f}–{max(ls):.1f} over {len(ls)} readings" if len(ls) > 1 else
            f"1-minute load average {ls[0]:.1f}" if ls else NOT_RECORDED)
    date = find_key(data, ("date", "date_utc", "created_utc", "finished_utc", "started_utc")) or NOT_RECORDED
    rows = [["command", f"`{command}`" if command else NOT_RECORDED], ["code version", code],
            ["reference model", reference_model_text(data)],
            ["machine", machine], ["load", load], ["date", str(date)], ["run", kind]]
    if any(k in data for k in ("calibration", "teacher", "n_image_prompts")) or \
            any(k in (data.get("settings") or {}) for k in ("calibration", "n_image_prompts")):
        disjoint = find_disjoint(data)
        rows.append(["evaluation prompts disjoint from calibration and teacher prompts (by text)",
                     NOT_RECORDED if disjoint is None else cell(disjoint)])
    return table(["", ""], rows)


# ---- run kinds ---------------------------------------------------------------------------------------------
def differences_from_default(settings: dict, d: dict) -> list[str]:
    """How a run's recorded settings differ from the default command's. `settings` may hold `bits_budget`/`budget`,
    `distill` (mode), `distill_steps` (absent or 0: distillation off), `smoothing`, `calib_timesteps` and
    `calibration` {prompts, steps}; a setting the run does not record is said to be not recorded."""
    diffs = []
    budget = settings.get("bits_budget", settings.get("budget"))
    if budget is not None and d["budget"] is not None and abs(float(budget) - d["budget"]) > 1e-9:
        diffs.append(f"budget {float(budget):g} (default {d['budget']:g})")
    steps = settings.get("distill_steps") or 0
    mode = settings.get("distill")
    default_on = bool(d["distill_steps"]) and d["distill"] != "off"
    if not steps or mode == "off":
        if default_on:
            diffs.append("distillation off (the default distils)")
    else:
        if not default_on:
            diffs.append(f"distilled {steps:,} steps (the default does not distil)")
        elif steps != d["distill_steps"] or settings.get("distill_minutes_cap") is not None:
            cpu = settings.get("distill_cpu_seconds")
            diffs.append(f"distilled {steps:,} steps" + (f" in {cpu / 60:.0f} CPU-min" if cpu else "") +
                         f" (default {d['distill_steps']:,})")
        if mode is None:
            diffs.append("distillation mode not recorded" + (f" (default {d['distill']})" if d["distill"] else ""))
        elif d["distill"] and mode != d["distill"]:
            diffs.append(f"distillation {mode} (default {d['distill']})")
        if settings.get("teacher"):
            diffs.append(f"teacher {settings['teacher']}")
    if settings.get("smoothing") is False:
        diffs.append("smoothing off")
    if settings.get("calib_timesteps", "all") != "all":
        diffs.append(f"calibration timesteps {settings['calib_timesteps']}")
    cal = settings.get("calibration")
    if isinstance(cal, dict) and d["calib_count"] and d["calib_steps"]:
        if (cal.get("prompts"), cal.get("steps")) != (d["calib_count"], d["calib_steps"]):
            diffs.append(f"calibration {cal.get('prompts')} prompts × {cal.get('steps')} steps "
                         f"(default {d['calib_count']} × {d['calib_steps']})")
    return diffs


def compression_row_kind(row: dict, d: dict, teacher: str, calibration: dict | None = None) -> str:
    m = row.get("method", "")
    if m == "fp16":
        return "reference (uncompressed)"
    if not row.get("ours"):
        if "apple" in m:
            return "baseline (Apple's own code)"
        return "baseline (our re-implementation of Apple's mixed-bit palettization)" if "mbp" in m else "baseline"
    if row.get("default_command") is True:
        return "DEFAULT"
    settings = dict(row.get("recipe") if isinstance(row.get("recipe"), dict) else {})
    if isinstance(row.get("recipe"), str):
        mb_ = re.match(r"budget([\d.]+)$", row["recipe"])
        settings["bits_budget"] = float(mb_.group(1)) if mb_ else None
        if not mb_:
            settings["fixed"] = row["recipe"]
    for k in ("distill_steps", "distill_cpu_seconds", "smoothing", "calib_timesteps"):
        if k in row:
            settings[k] = row[k]
    if "distill_mode" in row:
        settings["distill"] = row["distill_mode"]
    if row.get("distill_cpu_seconds") is not None:
        settings["distill_minutes_cap"] = "cpu"  # a CPU-minute budget, not the default's step count
    if teacher:
        settings["teacher"] = teacher.lstrip("; ").removeprefix("teacher ")
    settings.setdefault("calibration", row.get("calibration") or calibration)
    diffs = differences_from_default(settings, d)
    if settings.get("fixed"):
        diffs.insert(0, f"fixed recipe {settings['fixed']}")
    return "DEFAULT" if not diffs else "special run: " + "; ".join(diffs)


def curve_point_kind(p: dict, curve: dict, d: dict, nearest: bool) -> str:
    dist = p.get("distill") if isinstance(p.get("distill"), dict) else {}
    t = curve.get("teacher") or {}
    settings = {"bits_budget": p.get("budget"), "distill_steps": dist.get("steps_done", 0),
                "distill_cpu_seconds": dist.get("cpu_seconds"), "calibration": (curve.get("settings") or {}).get(
                    "calibration"), "distill": p.get("distill_mode") or dist.get("mode")}
    if dist.get("cpu_seconds") is not None:
        settings["distill_minutes_cap"] = "cpu"
    if "prompts" in t and "steps" in t:
        settings["teacher"] = f"{t['prompts']} prompts × {t['steps']} steps"
    diffs = differences_from_default(settings, d)
    if "lr" in (curve.get("settings") or {}):
        diffs.append(f"learning rate {num(curve['settings']['lr'])}")
    label = "DEFAULT" if not diffs else "special run: " + "; ".join(diffs)
    return ("nearest the default; " if nearest and diffs else "") + label


def teacher_text(curve: dict | None) -> str:
    t = (curve or {}).get("teacher") or {}
    return f"; teacher {t['prompts']} prompts × {t['steps']} steps" if "prompts" in t and "steps" in t else ""


def nearest_default_point(curve: dict, d: dict) -> dict | None:
    """The distillation point whose step count is nearest the default's, at the default budget."""
    if d["budget"] is None or not d["distill_steps"]:
        return None
    pts = [p for p in curve.get("points", []) if p.get("budget") == d["budget"] and isinstance(p.get("distill"), dict)]
    return min(pts, key=lambda p: abs(p["distill"].get("steps_done", 0) - d["distill_steps"]), default=None)


# ---- pages with their own layout ---------------------------------------------------------------------------
def compression_readings(rows: list[dict], d: dict, teacher: str, calibration) -> list[str]:
    """Sentences computed from the rows: labels against honest bits, and every PocketSD row against each baseline
    stored in about the same bytes (within 0.05 bits/param)."""
    out = []
    for r in rows:
        if r.get("label_bits") is not None and not r.get("ours") and r.get("bits_per_param"):
            out.append(f"- `{r['method']}` is labelled {r['label_bits']:.2f} bits and stores "
                       f"{r['bits_per_param']:.2f} bits/param, every byte counted.")
    for base in (r for r in rows if not r.get("ours") and r.get("method") != "fp16" and r.get("image_psnr_db")):
        for ours in (r for r in rows if r.get("ours") and r.get("image_psnr_db")):
            if abs(ours["bits_per_param"] - base["bits_per_param"]) <= 0.05:
                delta = ours["image_psnr_db"] - base["image_psnr_db"]
                kind = compression_row_kind(ours, d, teacher, calibration)
                out.append(f"- `{ours['method']}` against `{base['method']}` at {ours['bits_per_param']:.2f} against "
                           f"{base['bits_per_param']:.2f} bits/param: {delta:+.2f} dB image PSNR "
                           f"({'DEFAULT' if kind == 'DEFAULT' else 'special run'}).")
    return (["**Read from the rows** (computed, not typed):", ""] + out + [""]) if out else []


def page_compression(data: dict, ctx: dict) -> tuple[str, list[str]]:
    d, teacher = ctx["defaults"], teacher_text(ctx["files"].get("distill_curve"))
    rows = []
    for r in data.get("rows", []):
        psnr = r.get("image_psnr_db")
        rows.append([f"`{r.get('method')}`", compression_row_kind(r, d, teacher, data.get("calibration")), num(r.get("bits_per_param")),
                     mb(r.get("unet_bytes")), num(r.get("latent_psnr_db")),
                     ("∞" if psnr is None and r.get("method") == "fp16" else num(psnr)) + ci(r.get("image_psnr_ci95")),
                     num(r.get("image_ssim")), num(r.get("adherence_pct"), 3)])
    kinds = {row[1] for row in rows}
    kind = ("DEFAULT and special runs" if "DEFAULT" in kinds else
            "special runs only: no row is the default command (" + default_command_text(d) + ")")
    body = [f"Reference model, {data.get('n_image_prompts', NOT_RECORDED)} evaluation prompts × "
            f"{data.get('steps', NOT_RECORDED)} steps (image PSNR/SSIM against fp16, 95 % intervals in brackets), "
            f"{data.get('n_latent_prompts', NOT_RECORDED)} prompts for latent PSNR after one step; calibration "
            f"{cell(data.get('calibration'))}. Bits/param count every stored byte over every UNet parameter; "
            "UNet MB = 10^6 bytes.", ""]
    body += table(["method", "run", "bits/param", "UNet MB", "latent PSNR dB", "image PSNR dB", "SSIM", "adherence %"],
                  rows, ["---", "---"] + ["---:"] * 6)
    body += [f"Build times (`build_seconds`, compression only): " + ", ".join(
        f"`{r['method']}` {r['build_seconds']:.0f} s" for r in data.get("rows", []) if r.get("build_seconds")
        and r.get("ours")) + ".", ""]
    body += compression_readings(data.get("rows", []), d, teacher, data.get("calibration"))
    tgt = data.get("target") or {}
    if tgt.get("evaluated"):
        ours = next((r for r in data.get("rows", []) if r.get("method") == tgt.get("ours")), None)
        run = compression_row_kind(ours, d, teacher, data.get("calibration")) if ours else NOT_RECORDED
        body += ["Target check recorded in the file: " + ", ".join(f"{k} {cell(v)}" for k, v in tgt.items()) +
                 f". The row it judges, `{tgt.get('ours')}`, is: {run}.", ""]
    return kind, body


def page_distill_curve(data: dict, ctx: dict) -> tuple[str, list[str]]:
    d = ctx["defaults"]
    near = nearest_default_point(data, d)
    rows = []
    for p in sorted(data.get("points", []), key=lambda p: (p.get("budget", 0), p.get("minutes", 0))):
        dist = p.get("distill") if isinstance(p.get("distill"), dict) else {}
        steps = dist.get("steps_done", 0)
        run = curve_point_kind(p, data, d, p is near)
        rows.append([num(p.get("budget")), num(p.get("bits_per_param")), num(p.get("cpu_minutes"), 3),
                     num(p.get("wall_minutes"), 3), f"{steps:,}", num(dist.get("best_step")),
                     num(p.get("held_out_snr_db_before")), num(p.get("held_out_snr_db_after")),
                     num(p.get("image_psnr_db")) + ci(p.get("image_psnr_ci95")), num(p.get("adherence_pct"), 3),
                     num(p.get("load_before"), 3), run])
    s, t = data.get("settings", {}), data.get("teacher", {})
    kind = ("special runs: each point distils for a fixed CPU-minute budget with no step cap, against a teacher of "
            f"{t.get('prompts', NOT_RECORDED)} prompts × {t.get('steps', NOT_RECORDED)} steps; the default command is "
            + default_command_text(d))
    body = table(["setting", "value"], [[k, cell(v)] for k, v in s.items()])
    body += [f"Teacher: {t.get('prompts', NOT_RECORDED)} prompts × {t.get('steps', NOT_RECORDED)} steps, "
            f"guidance {num(t.get('guidance'))}, {num(t.get('pairs'))} recorded (unconditional, conditional) pairs.",
            ""]
    if "lr" in s:
        body += [f"Learning rate {num(s['lr'])} (changed from the default).", ""]
    body += table(["budget", "bits/param", "CPU-min", "wall min", "steps", "kept step", "held-out SNR before dB",
                   "after dB", "image PSNR dB", "adherence %", "load before", "run"], rows,
                  ["---:"] * 11 + ["---"])
    body += [f"fp16 adherence on the same prompts: {num(data.get('fp16_adherence_pct'), 3)} %.", ""]
    return kind, body


def page_sdxl_real_size(data: dict, ctx: dict) -> tuple[str, list[str]]:
    rows = []
    for name, s in (data.get("stages") or {}).items():
        if not isinstance(s, dict):
            continue
        argv = s.get("argv")
        rows.append([name, f"`{' '.join(argv)}`" if isinstance(argv, list) else "—",
                     num((s.get("wall_s") or 0) / 60, 3), num((s.get("cpu_s") or 0) / 60, 3) if "cpu_s" in s else "—",
                     num(s.get("peak_rss_gb")), cell((s.get("load_average") or [None])[:1])])
    body = ["Random SDXL-base-shaped weights (no SDXL weights can be downloaded here); each stage in a fresh process.",
            "", f"Settings: {cell(data.get('settings'))}.", ""]
    body += table(["stage", "arguments", "wall min", "CPU min", "peak RSS (GB, 10^9 B)", "load (1 min)"], rows,
                  ["---", "---", "---:", "---:", "---:", "---:"])
    if any("verdict" in t for t in data.get("targets", [])):  # the default command's run (issue 20's targets)
        tg = [[t.get("target", ""), str(t.get("limit", "")), num(t.get("value")), t["verdict"]]
              for t in data.get("targets", [])]
        body += table(["target (issue 20)", "limit", "measured", "verdict"], tg)
        recipes = [[n, cell(c.get("recipe")), cell(c.get("distillation"))]
                   for n, c in (data.get("compress_recipe") or {}).items()]
        if recipes:
            body += table(["component", "recipe", "distillation"], recipes)
        argv = ((data.get("stages") or {}).get("compress") or {}).get("argv") or []
        size = argv[argv.index("--calib-size") + 1] if "--calib-size" in argv else None
        extra = [a for i, a in enumerate(argv) if i >= 5 and a != "--calib-size" and argv[i - 1] != "--calib-size"]
        kind = ("special run: " + " ".join(argv[5:])) if extra else \
            ("DEFAULT" + (f" (calibrated at {size})" if size else "") if argv else NOT_RECORDED)
        return kind, body
    tg = [[t.get("target", ""), str(t.get("limit", "")), num(t.get("value")), num(t.get("met"))]
          for t in data.get("targets", [])]
    body += table(["target", "limit", "measured", "met"], tg)
    kind = ("special run: reduced calibration (" + f"{num((data.get('settings') or {}).get('calib_count'))} prompts × "
            f"{num((data.get('settings') or {}).get('calib_steps'))} steps), fixed recipe "
            f"{(data.get('settings') or {}).get('recipe', NOT_RECORDED)}, distillation off")
    return kind, body


def metric_text(m: dict | None, digits: int = 2) -> str:
    if not isinstance(m, dict):
        return "—"
    if m.get("skipped"):
        return "skipped"
    v = m.get("value")
    if v is None:
        return "—"
    text = f"{v:.{digits}f}"
    if m.get("low") is not None and m.get("high") is not None:
        text += f" [{m['low']:.{digits}f}, {m['high']:.{digits}f}]"
    return text + ("" if m.get("real_weights") in (None, True) or m.get("value") is None or
                   not m.get("weights") else " (random weights)")


def args_kind(args: list[str], d: dict) -> str:
    """A compress command line against the default command."""
    diffs = []
    if "--recipe" in args:
        diffs.append(f"fixed recipe {args[args.index('--recipe') + 1]}")
    if "--bits-budget" in args and d["budget"] is not None:
        b = float(args[args.index("--bits-budget") + 1])
        if b != d["budget"]:
            diffs.append(f"budget {b:g} (default {d['budget']:g})")
    if "--distill-steps" in args and args[args.index("--distill-steps") + 1] == "0" or \
            "--distill" in args and args[args.index("--distill") + 1] == "off":
        diffs.append("distillation off")
    elif d["distill"]:
        diffs.append("distillation with the defaults of the code that ran it (mode not recorded)")
    if "--components" in args:
        diffs.append(f"components {args[args.index('--components') + 1]}")
    return "DEFAULT" if not diffs else "special run: " + "; ".join(diffs)


def page_eval_refmodel(data: dict, ctx: dict) -> tuple[str, list[str]]:
    d = ctx["defaults"]
    rows = []
    for r in data.get("rows", []):
        m = r.get("metrics") or {}
        skipped = [k for k, v in m.items() if isinstance(v, dict) and v.get("skipped")]
        rows.append([f"`{r.get('variant')}`", args_kind(r.get("compress_args") or [], d),
                     f"`pocketsd compress {' '.join(r.get('compress_args') or [])}`",
                     ", ".join(r.get("compressed_components") or []), num(r.get("unet_bits_per_param")),
                     metric_text(m.get("psnr")), metric_text(m.get("ssim"), 4), metric_text(m.get("adherence"), 3),
                     ", ".join(skipped) or "—"])
    p, e = data.get("prompts") or {}, data.get("eval_settings") or {}
    body = [f"fp16 reference model (B) against each compressed variant (A) through `pocketsd eval`: prompts "
            f"`{p.get('name', NOT_RECORDED)}` ({p.get('count', NOT_RECORDED)} of {p.get('total', NOT_RECORDED)}), "
            f"{e.get('steps', NOT_RECORDED)} steps, guidance {num(e.get('guidance'))}, scheduler "
            f"{e.get('scheduler', NOT_RECORDED)}, device {e.get('device', NOT_RECORDED)}. Brackets: 95 % intervals. "
            "A skipped metric had no weights on the machine (the file keeps the one-line reason).", ""]
    body += table(["variant", "run", "command", "compressed", "UNet bits/param", "image PSNR dB", "SSIM", "adherence",
                   "skipped"], rows, ["---"] * 4 + ["---:"] * 4 + ["---"])
    body += [f"fp16 adherence: {metric_text(data.get('fp16_adherence'), 3)}.", ""]
    if data.get("variants_not_run"):
        body += ["Planned and not run: " + ", ".join(f"`{v}`" for v in data["variants_not_run"]) + ".", ""]
    return "special runs (see each row)" if rows else NOT_RECORDED, body


def default_compress_rows(data: dict, d: dict) -> list[dict]:
    """One entry per variant of a default_compress file, with its run label."""
    out = []
    for r in data.get("rows", []):
        ev = r.get("eval") or {}
        held = next((v for k, v in ev.items() if "held" in k), None) or {}
        inset = next((v for k, v in ev.items() if "in-set" in k or "in_set" in k), None) or {}
        unet = (r.get("components") or {}).get("unet") or {}
        if r.get("default_command") is True and not data.get("special_run"):
            run = "DEFAULT"
        else:
            flags = (r.get("command") or "").split("--out OUT")[-1].strip()
            run = "special run" + (f": {flags}" if flags else "") + (" (smoke run)" if data.get("special_run") else "")
        out.append({"variant": r.get("variant"), "run": run, "command": (r.get("command") or "").strip(), "unet": unet, "held": held,
                    "inset": inset, "compress": r.get("compress") or {}})
    return out


def psnr_ci(e: dict) -> str:
    if e.get("psnr_db") is None:
        return "—"
    text = f"{e['psnr_db']:.2f}"
    if e.get("psnr_low") is not None and e.get("psnr_high") is not None:
        text += f" [{e['psnr_low']:.2f}, {e['psnr_high']:.2f}]"
    return text


def pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}" if x <= 1 else f"{x:.1f}"


def page_default_compress(data: dict, ctx: dict) -> tuple[str, list[str]]:
    d = ctx["defaults"]
    rows = []
    for r in default_compress_rows(data, d):
        c = r["compress"]
        loads_ = [x for x in (c.get("load_before"), c.get("load_after")) if isinstance(x, list) and x]
        rows.append([f"`{r['variant']}`", r["run"], f"`{r['command']}`" if r["command"] else "—",
                     num(r["unet"].get("bits_per_param")), psnr_ci(r["held"]), num(r["held"].get("n")),
                     psnr_ci(r["inset"]), pct(r["held"].get("adherence")), pct(r["held"].get("adherence_against")),
                     num(c.get("wall_s")), num(c.get("cpu_s")), num(c.get("peak_rss_mb")),
                     " → ".join(f"{x[0]:.1f}" for x in loads_) or NOT_RECORDED])
    proto = data.get("protocol") or {}
    body = []
    if proto.get("evaluation"):
        body += [f"Evaluation: {proto['evaluation']}.", ""]
    for split, what in (proto.get("splits") or {}).items():
        body += [f"- `{split}`: {what}."]
    body += [""] if proto.get("splits") else []
    body += table(["variant", "run", "command", "UNet bits/param", "held-out image PSNR dB", "held-out n",
                   "in-set image PSNR dB", "held-out adherence %", "fp16 adherence %", "compress wall s",
                   "compress CPU s", "peak RSS (MiB)", "load (1 min) before → after"], rows,
                  ["---", "---", "---"] + ["---:"] * 10)
    if proto.get("targets"):
        body += ["Targets recorded in the file: " + cell(proto["targets"]) + ".", ""]
    kinds = {r[1] for r in rows}
    kind = "special run (smoke run)" if data.get("special_run") else (
        "DEFAULT command and special runs beside it" if "DEFAULT" in kinds else "special runs")
    return kind, body


SPECIAL = {"default_compress": page_default_compress, "default_compress_quick": page_default_compress,
           "compression": page_compression, "eval_refmodel": page_eval_refmodel, "distill_curve": page_distill_curve, "sdxl_real_size": page_sdxl_real_size}

# What each file's run is, for files whose kind is a matter of what they measure rather than their settings.
KINDS = {
    "apple_mbp": "baseline: Apple's own pre-analysis code on the reference model (not a PocketSD command)",
    "generate": "`pocketsd bench` with the settings below (whether they were its defaults: not recorded)",
    "compression_part_A": "part of compression.json (merged there)",
    "compression_part_C": "part of compression.json (merged there)",
    "compression_part_D": "part of compression.json (merged there)",
    "compression_part_E": "part of compression.json: its distilled rows come from distill_curve.json (special runs)",
    "refmodel_training": "training run of version 1 of the reference model (`make tiny-model`'s first step)",
    "refmodel_training_v2_stage1": "training run: version 2's first fine-tune stage (`make tiny-model`)",
    "refmodel_training_v2_stage2": "training run: version 2's second fine-tune stage (`make tiny-model`)",
    "refmodel_colour_polish": "training run of the shipped reference model (`make tiny-model`)",
    "refmodel_controlnet": "training run of the shipped sketch ControlNet (`make tiny-model`)",
    "refmodel_controlnet_depth": "training run of the shipped depth ControlNet",
    "refmodel_adherence": "check of the shipped reference model (`make check-model`)",
    "lora_poster": "training run of a shipped LoRA (`make tiny-model`)",
    "lora_blueprint": "training run of a shipped LoRA (`make tiny-model`)",
    "lora_copyspace": "training run of a shipped LoRA (`make tiny-model`) on a budget-4.5 compressed UNet",
    "sdxl_sizes": "size accounting of fixed recipes (no model run)",
    "sdxl_throughput": "special run: fixed recipes on random SDXL-shaped weights, no calibration",
    "sdxl_throughput_workers": "special run: w4r32 and budget 4.5 on random SDXL-shaped weights (scaled down), "
                               "synthetic calibration rows",
    "sdxl_whole_unet": "special run: fixed recipe w4r32 on random SDXL-shaped weights, no calibration",
    "bundle_sizes": "fixed recipes and budget 4.5, converted with `pocketsd convert` defaults",
}


# ---- generic layout ----------------------------------------------------------------------------------------
def run_kind_recorded(data) -> str | None:
    """A file's own statement of what run it is: `special_run`, `quick`, a `mode` of smoke/quick, `default_command`."""
    if not isinstance(data, dict):
        return None
    if data.get("default_command") is True and not data.get("special_run") and not data.get("quick"):
        return "DEFAULT"
    if data.get("special_run") is True or data.get("quick") is True:
        return "special run" + (" (quick)" if data.get("quick") else "")
    if str(data.get("mode", "")).lower() in ("smoke", "quick"):
        return f"special run ({data['mode']} mode)"
    return None


def is_scalar(v) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def records_table(name: str, items: list[dict]) -> list[str]:
    keys: list[str] = []
    for it in items:
        for k, v in it.items():
            if k not in keys and (is_scalar(v) or (isinstance(v, list) and len(v) <= 6)
                                  or (isinstance(v, dict) and len(v) <= 6 and all(map(is_scalar, v.values())))):
                keys.append(k)
    keys = [k for k in keys if not (k.endswith("_dir") or k == "eval_dir" or k == "run" or k == "log")][:12]
    if not keys:
        return [f"`{name}`: {len(items)} records.", ""]
    rows = [[cell(it.get(k)) for k in keys] for it in items]
    return [f"**{name}**", ""] + table([label(k) for k in keys], rows)


def _walk(data: dict, prefix: str, settings: list, tables: list, depth: int = 0) -> None:
    """Flatten scalars (and short lists of scalars) into `settings`, collect lists of records into `tables`."""
    for k, v in data.items():
        key = f"{prefix}{k}"
        if is_scalar(v):
            text = cell(v) if not isinstance(v, str) else (v if len(v) < 300 else v[:300] + " …")
            settings.append([label(key), text.replace("|", "\\|").replace("\n", " ")])
        elif isinstance(v, list) and (not v or not isinstance(v[0], dict)):
            settings.append([label(key), cell(v)])
        elif isinstance(v, list):
            tables.append((key, v))
        elif isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()) and \
                all(all(is_scalar(y) or isinstance(y, (list, dict)) for y in x.values()) for x in v.values()) \
                and len(v) <= 60 and not any(isinstance(y, dict) and any(isinstance(z, dict) for z in y.values())
                                             for x in v.values() for y in x.values()):
            tables.append((key, [{"": name, **x} for name, x in v.items()]))
        elif isinstance(v, dict) and depth < 3:
            _walk(v, key + ".", settings, tables, depth + 1)


def generic_body(data) -> list[str]:
    if not isinstance(data, dict):
        return [f"{type(data).__name__} of {len(data)} items." if isinstance(data, list) else cell(data), ""]
    settings: list = []
    tables: list = []
    _walk(data, "", settings, tables)
    body = table(["field", "value"], settings) if settings else []
    for name, items in tables:
        if len(items) <= 60:
            body += records_table(name, items)
        else:
            body += [f"`{name}`: {len(items)} records (see the JSON file).", ""]
    return body


# ---- figures and pages -------------------------------------------------------------------------------------
def figures_of(json_path: Path) -> list[Path]:
    stem = json_path.stem
    return sorted(p for p in json_path.parent.glob(f"{stem}*.png"))


def page_name(json_path: Path) -> str:
    rel = json_path.relative_to(RESULTS)
    return "__".join(rel.with_suffix("").parts)


def render_page(json_path: Path, data, ctx: dict) -> tuple[str, str, str]:
    stem, name = json_path.stem, page_name(json_path)
    title = TITLES.get(stem, stem.replace("_", " "))
    if json_path.parent != RESULTS:
        title += f" ({json_path.parent.name})"
    if stem in SPECIAL and isinstance(data, dict):
        kind, body = SPECIAL[stem](data, ctx)
    else:
        kind = KINDS.get(stem) if json_path.parent == RESULTS else None
        if json_path.parent != RESULTS and stem == "distill_curve" and isinstance(data, dict):
            kind, body = page_distill_curve(data, ctx)
        else:
            kind = kind or run_kind_recorded(data) or NOT_RECORDED
            body = generic_body(data)
    lines = [f"# {title}", "", f"Generated by `docs/render.py` from `benchmarks/results/"
             f"{json_path.relative_to(RESULTS).as_posix()}`. Do not edit by hand.", ""]
    lines += provenance(stem, data if isinstance(data, dict) else {}, kind)
    for fig in figures_of(json_path):
        fname = name + "__" + fig.name if json_path.parent != RESULTS else fig.name
        ctx["figures"][fname] = fig
        lines += [f"![{fig.stem}](figures/{fname})", ""]
    lines += body
    return name, title, "\n".join(lines).rstrip() + "\n", kind


def reference_model_knows(ctx: dict) -> list[str]:
    """What the reference model follows, with its scores and targets: refmodel_adherence.json, inpaint.json and
    depth.json (each says which model version it measured)."""
    files = ctx["files"]
    adh, inp, dep = files.get("refmodel_adherence"), files.get("inpaint"), files.get("depth")
    if not adh:
        return []
    targets = adh.get("targets", {})
    rows = []
    for key, what in (("color", "colour"), ("shape", "shape"), ("background", "background")):
        if key in adh:
            rows.append([what, pct(adh[key]), pct(targets.get(key)) if key in targets else "—",
                         f"{adh.get('n_images', NOT_RECORDED)} prompts × seeds", "refmodel_adherence.json"])
    pos, pairs = adh.get("positions") or {}, adh.get("pairs") or {}
    if pos:
        rows.append(["position word (object on the asked side)", pct(pos.get("side_right")),
                     pct(targets.get("position")) if "position" in targets else "—", f"{pos.get('n_images')} images",
                     "refmodel_adherence.json"])
    if pairs:
        rows.append(["two objects (both right)", pct(pairs.get("both_right")), "—", f"{pairs.get('n_images')} images",
                     "refmodel_adherence.json"])
    if inp and "paste-back" in inp.get("summary", {}):
        sm = inp["summary"]["paste-back"]
        rows.append(["inpainting: add an object beside a kept one", f"{sm['both_right']}/{sm['seeds']}", "8/9",
                     f"{sm['seeds']} seeds", "inpaint.json"])
        rows.append(["inpainting: seam within 8/255", f"{sm['seam_ok']}/{sm['seeds']}", f"{sm['seeds']}/{sm['seeds']}",
                     f"{sm['seeds']} seeds", "inpaint.json"])
    if dep:
        cn = next((r for r in dep.get("table", []) if r.get("method") == "ControlNet"), None)
        if cn:
            shipped = "" if dep.get("shipped", True) else " — not shipped"
            rows.append([f"depth map → place and size (depth ControlNet{shipped})", pct(cn.get("both_right")),
                         pct(dep.get("target")), f"{cn.get('n')} images", "depth.json"])
    lines = [f"**What the reference model follows** (reference model {reference_model_text(adh)}; 20-step generations read "
             "back from pixels by `pocketsd.eval.classify`):", ""]
    lines += table(["what", "score (%)", "target (%)", "measured on", "file"], rows, ["---", "---:", "---:", "---", "---"])
    return lines


def headline(ctx: dict) -> list[str]:
    """The README's and the results index's headline table: compression.json's rows at the default budget, Apple's
    rows and fp16, plus the distillation point nearest the default command; every row says what run it is."""
    comp, curve, d = ctx["files"].get("compression"), ctx["files"].get("distill_curve"), ctx["defaults"]
    if not comp or d["budget"] is None:
        return ["(no compression results file, or the defaults could not be read)", ""]
    teacher = teacher_text(curve)
    rows = []
    for r in comp.get("rows", []):
        m, bits = r.get("method", ""), r.get("bits_per_param") or 0
        apple = "mbp" in m
        ours_default_budget = r.get("ours") and abs(bits - d["budget"]) < 0.05 and r.get("smoothing", True) \
            and r.get("calib_timesteps", "all") == "all"
        if m == "fp16" or apple or ours_default_budget:
            psnr = r.get("image_psnr_db")
            rows.append([f"`{m}`", compression_row_kind(r, d, teacher, comp.get("calibration")), f"{bits:.3f}", mb(r.get("unet_bytes")),
                         ("∞" if psnr is None else f"{psnr:.2f}") + ci(r.get("image_psnr_ci95")),
                         num(r.get("adherence_pct"), 3), "compression.json"])
    near = nearest_default_point(curve or {}, d)
    if near:
        steps = near["distill"].get("steps_done", 0)
        rows.append([f"budget {near['budget']:g}, distilled {near.get('cpu_minutes', 0):.0f} CPU-min",
                     curve_point_kind(near, curve, d, True),
                     f"{near['bits_per_param']:.3f}", "—", f"{near['image_psnr_db']:.2f}" + ci(near.get("image_psnr_ci95")),
                     num(near.get("adherence_pct"), 3), "distill_curve.json"])
    lines = reference_model_knows(ctx)
    dc = ctx["files"].get("default_compress")
    if dc and not dc.get("special_run"):
        drows = []
        for r in default_compress_rows(dc, d):
            drows.append([f"`{r['command'] or r['variant']}`", r["run"], num(r["unet"].get("bits_per_param")),
                          psnr_ci(r["held"]), psnr_ci(r["inset"]), pct(r["held"].get("adherence")),
                          pct(r["held"].get("adherence_against"))])
        lines += [f"**The default command** (`default_compress.json`, {dc.get('date', NOT_RECORDED)}, code "
                  f"{dc.get('code_version', NOT_RECORDED)}, reference model {reference_model_text(dc)}): image PSNR against fp16 on prompts compression never saw "
                  "(held-out) and on the rest (in-set), 95 % intervals; adherence on the held-out prompts.", ""]
        lines += table(["command", "run", "UNet bits/param", "held-out PSNR dB", "in-set PSNR dB",
                        "held-out adherence %", "fp16 adherence %"], drows,
                       ["---", "---", "---:", "---:", "---:", "---:", "---:"])
        lines += ["**Against Apple's methods** (`compression.json`):", ""]
    lines += [f"Default command: {default_command_text(d)}. Reference model ({reference_model_text(comp)}), "
             f"{comp.get('n_image_prompts', NOT_RECORDED)} evaluation prompts × {comp.get('steps', NOT_RECORDED)} steps, "
             "image PSNR against fp16 with 95 % intervals; bits/param count every stored byte over every UNet "
             "parameter; MB = 10^6 bytes.", ""]
    lines += table(["method", "run", "bits/param", "UNet MB", "image PSNR dB", "adherence %", "file"], rows,
                   ["---", "---", "---:", "---:", "---:", "---:", "---"])
    lines += [f"Calibration of these runs: {cell(comp.get('calibration'))}.", ""]
    if not any(r[1] == "DEFAULT" for r in rows) and not (dc and not dc.get("special_run")):
        lines += ["**No file holds a measurement of the default command itself**; the rows above are the nearest "
                  "measured runs, labelled with how they differ.", ""]
    return lines


def render(results: Path = RESULTS) -> tuple[dict[str, str], dict[str, Path]]:
    """{page file name: markdown} and {figure file name: source png}."""
    files = sorted(results.rglob("*.json"))
    ctx = {"defaults": compress_defaults(), "figures": {}, "files": {}}
    for f in files:
        if f.parent == results:
            ctx["files"][f.stem] = json.loads(f.read_text())
    pages, index = {}, []
    for f in files:
        data = json.loads(f.read_text())
        name, title, text, kind = render_page(f, data, ctx)
        pages[name + ".md"] = text
        index.append([f"[{title}]({name}.md)", f"`{f.relative_to(results).as_posix()}`", kind])
    head = ["# Results", "", "Generated by `docs/render.py` from `benchmarks/results/`; every figure on these pages "
            "comes from a file there, and `tests/test_docs.py` fails when a page differs from what its file gives. "
            "Each page states the command, code version, machine, load and date its file records, and whether it is "
            "the default command or a special run. Units: MB = 10^6 bytes, GB = 10^9 bytes; memory (RSS) is "
            "recorded in MiB = 2^20 bytes.", "", "## Headline", ""]
    head += headline(ctx)
    head += ["## Every results file", ""] + table(["page", "file", "run"], index)
    pages["index.md"] = "\n".join(head).rstrip() + "\n"
    pages["headline.md"] = "\n".join(headline(ctx)).rstrip() + "\n"
    return pages, ctx["figures"]


def write(out: Path, pages: dict[str, str], figures: dict[str, Path]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.md"):
        if old.name not in pages:
            old.unlink()
    for name, text in pages.items():
        (out / name).write_text(text)
    figdir = out / "figures"
    figdir.mkdir(exist_ok=True)
    for name, src in figures.items():
        dst = figdir / name
        if not dst.exists() or not filecmp.cmp(src, dst, shallow=False):
            shutil.copyfile(src, dst)


def readme_with_headline(readme: str, pages: dict[str, str]) -> str:
    if HEADLINE_START not in readme or HEADLINE_END not in readme:
        return readme
    before, rest = readme.split(HEADLINE_START, 1)
    _, after = rest.split(HEADLINE_END, 1)
    return before + HEADLINE_START + "\n" + pages["headline.md"] + HEADLINE_END + after


def diff(out: Path, pages: dict[str, str]) -> list[str]:
    problems = [f"{n}: differs from what its file gives" for n, t in pages.items()
                if not (out / n).exists() or (out / n).read_text() != t]
    problems += [f"{p.name}: no results file makes this page" for p in out.glob("*.md") if p.name not in pages]
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="render into a temp folder and fail on any difference")
    args = ap.parse_args(argv)
    pages, figures = render()
    readme = README.read_text()
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            write(Path(tmp), pages, figures)
            problems = diff(OUT, {n: (Path(tmp) / n).read_text() for n in pages})
        if readme_with_headline(readme, pages) != readme:
            problems.append("README.md: the headline table differs from the results files")
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems else 0
    write(OUT, pages, figures)
    README.write_text(readme_with_headline(readme, pages))
    print(f"wrote {len(pages)} pages and {len(figures)} figures to {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
