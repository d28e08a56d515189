"""`pocketsd info PATH`: what any artifact is — a model folder, a compressed folder or a Core ML bundle —
read through the typed readers of `pocketsd.artifacts` (top floor: presentation only)."""

from __future__ import annotations

import json
from pathlib import Path

from .artifacts import COMPRESSED, COREML
from .artifacts.bundle import read_bundle_manifest
from .artifacts.compressed import read_compressed_model
from .artifacts.model_folder import detect_family, read_model_index, safetensors_stats
from .data.model_card import MODEL_CARD_FILE, is_reference_model_folder, reference_model_card
from .errors import BadInput
from .models import model_folder, resolve_model
from .models.family import downscale, family_named

MB = 2**20


class DamagedArtifact(BadInput):
    """`info` found files that no longer match their recorded sha256: the description is still printed, then
    one error line naming the damaged file (exit 2), so scripts can use `pocketsd info` as an integrity check."""

    def __init__(self, folder: Path, bad: list[str], description: str):
        more = f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""
        super().__init__(f"{Path(folder) / bad[0].split(' ')[0]} does not match the sha256 its manifest recorded{more}: "
                         "the artifact is damaged or was edited; re-create it")
        self.description = description


def _mb(n: int) -> str:
    return f"{n / MB:.2f} MB"


def describe_model_folder(folder: Path, kind: str) -> str:
    """Family, components, parameters, bytes and dtypes of a diffusers folder (from safetensors headers only)."""
    index = read_model_index(folder)
    family = detect_family(folder)
    lines = [f"{folder}: diffusers pipeline {index.get('_class_name')} — {family_named(family).title}"
             f" (kind {kind}, diffusers {index.get('_diffusers_version', '?')})",
             f"  {'component':<16} {'class':<30} {'parameters':>12} {'MB':>9}  dtype"]
    total_n = total_b = 0
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry[0] is None:
            continue
        sub = folder / name
        if not sub.is_dir():
            lines.append(f"  {name:<16} {entry[1]:<30} {'missing':>12}")
            continue
        n, nbytes, dtype = safetensors_stats(sub)
        if n:
            total_n, total_b = total_n + n, total_b + nbytes
            lines.append(f"  {name:<16} {entry[1]:<30} {n:>12,} {nbytes / 1e6:>9.2f}  {dtype}")
        else:
            lines.append(f"  {name:<16} {entry[1]:<30} {'-':>12} {'-':>9}  (no weights: config/vocabulary)")
    lines.append(f"  {'total':<16} {'':<30} {total_n:>12,} {total_b / 1e6:>9.2f}")
    unet = json.loads((folder / "unet" / "config.json").read_text()) if (folder / "unet" / "config.json").is_file() else {}
    vae = json.loads((folder / "vae" / "config.json").read_text()) if (folder / "vae" / "config.json").is_file() else {}
    factor = downscale(vae)
    sample = unet.get("sample_size")
    if sample:
        lines.append(f"  native size {sample * factor}x{sample * factor} px (latents {sample}x{sample}, VAE {factor}×), "
                     f"force_zeros_for_empty_prompt={index.get('force_zeros_for_empty_prompt', False)}")
    return "\n".join(lines + model_card_lines(folder))


def model_card_lines(folder: Path) -> list[str]:
    """The reference model's version and card facts (training steps, data grammar), from `model_card.json`; the
    embedded model without a card is version 1. Other folders without a card get no lines."""
    folder = Path(folder)
    if not is_reference_model_folder(folder):
        return []
    has_card = (folder / MODEL_CARD_FILE).is_file()
    card = reference_model_card(folder)
    if not has_card:
        return [f"  reference model version {card['version']} (no {MODEL_CARD_FILE}: the first release shipped without one)"]
    lines = [f"  reference model version {card['version']} ({MODEL_CARD_FILE})"]
    base = card.get("base")
    steps = card.get("unet_steps")
    if isinstance(steps, dict):
        done = steps.get("this_run")
        text = f"{done:,} UNet steps" if isinstance(done, int) else f"UNet steps {steps}"
        if steps.get("planned") not in (None, done):
            text += f" of {steps['planned']:,} planned"
        if isinstance(base, dict) and base.get("version") is not None:
            text += f", fine-tuned from version {base['version']}"
            before = steps.get("before")
            if isinstance(before, int):
                text += f" ({before:,} steps before)"
        lines.append(f"  training: {text}")
    elif steps is not None:
        lines.append(f"  training: {steps} UNet steps")
    grammar = card.get("grammar")
    if isinstance(grammar, dict):
        lines.append("  data grammar: " + ", ".join(f"{k} {v}" for k, v in grammar.items()))
    return lines


def describe_compressed(folder: Path, verify: bool = True) -> str:
    """Recipe, per-layer table, size accounting of every compressed component, and the integrity check."""
    model = read_compressed_model(folder)
    m = model.manifest
    lines = [f"{folder}: compressed model (format {m.get('format_version')}"
             + (f", migrated from {m['migrated_from']}" if m.get("migrated_from") else "")
             + f", pocketsd {m.get('pocketsd_version')})",
             f"source model: {model.source.get('path')}"]
    for name, comp in model.components.items():
        recipe, acc = comp.recipe, comp.accounting
        lines += ["", f"[{name}] recipe: {recipe.get('name')}  quantizer={recipe.get('quantizer')}  "
                      f"group={recipe.get('group_size')}  block={recipe.get('block_size')}  budget={recipe.get('bits_budget')}",
                  f"kept fp16: {recipe.get('fp16_layers_rule', '')}", "",
                  f"{'layer':<64} {'shape':>16} {'quant':>8} {'bits':>4} {'grp/blk':>7} {'rank':>4} {'alpha':>5} {'SNR dB':>7}"]
        for rec in comp.layers:
            gb = rec.group_size if rec.quantizer == "palette" else rec.block_size
            snr = "" if rec.snr_db is None else f"{rec.snr_db:.1f}"
            lines.append(f"{rec.name[-64:]:<64} {'x'.join(map(str, rec.shape)):>16} {rec.quantizer:>8} "
                         f"{rec.bits:>4} {gb!s:>7} {rec.rank:>4} {rec.alpha:>5.2f} {snr:>7}")
        if comp.fp16_layers:
            lines.append(f"fp16 layers ({len(comp.fp16_layers)}): " + ", ".join(comp.fp16_layers))
        on_disk = (folder / comp.weights).stat().st_size if (folder / comp.weights).is_file() else 0
        lines += ["", f"size accounting of {name} (bytes):"]
        lines += [f"  {k:<14} {v:>14,}" for k, v in acc.get("bytes_by_category", {}).items()]
        lines += [f"  {'container':<14} {acc.get('container_bytes', 0):>14,}",
                  f"  {'total':<14} {acc.get('total_bytes', 0):>14,}   on disk: {on_disk:,}",
                  f"{name} parameters: {acc.get('params', 0):,}   fp16 size: {acc.get('fp16_bytes', 0):,} bytes",
                  f"effective bits per parameter: {acc.get('bits_per_param', 0):.3f}   "
                  f"({acc.get('compression_vs_fp16', 0):.2f}x smaller than fp16)"]
    for lora in model.loras:
        lines.append(f"LoRA merged: {lora.get('file')} ×{lora.get('scale')} ({lora.get('lowrank_concat')} branches widened)")
    if verify:
        if not model.files:
            lines.append("integrity: no sha256 recorded (format 1 folder); re-create it to get integrity checks")
        else:
            from .artifacts.integrity import mismatches

            bad = mismatches(folder, model.files)
            lines.append(f"integrity: {len(model.files)} files match their sha256" if not bad else
                         f"integrity: MISMATCH in {len(bad)} file(s): {', '.join(bad[:5])}")
            if bad:
                raise DamagedArtifact(folder, bad, "\n".join(lines))
    return "\n".join(lines)


def describe_bundle(folder: Path, memory: bool = False, budget_mb: float | None = None, verify: bool = True) -> str:
    """Components, shapes, sizes, precision, compressed-weight census; with `memory`, the memory plan."""
    from .convert.census import census

    bundle = read_bundle_manifest(folder)
    m = bundle.manifest
    opts = m.get("options", {})
    src = m.get("source_model", {})
    lines = [f"Core ML bundle {folder} (format {m.get('format_version')}"
             + (f", migrated from {m['migrated_from']}" if m.get("migrated_from") else "") + ")",
             f"  source: {src.get('spec')} ({src.get('kind')}), model type {m.get('model_type')}, image {m.get('image_size')}, "
             f"target {opts.get('target')}, attention {opts.get('attention')}, UNet batch {opts.get('unet_batch')}"]
    vae = m.get("vae_precision") or {}
    if vae:
        lines.append(f"  VAE precision: {vae.get('precision')} — {vae.get('reason')}")
    lines.append(f"  compiled (.mlmodelc): {m.get('compiled')}")
    if m.get("assumed"):
        lines.append(f"  assumed (not recorded by this old bundle): {', '.join(m['assumed'])}")
    total = 0
    for name, entry in bundle.components.items():
        package = folder / entry["file"]
        info = entry.get("census") or (census(package) if package.exists() else {"functions": {}, "package_bytes": 0})
        size = entry.get("bytes") or info["package_bytes"]
        total += size
        ins = ", ".join(f"{i['name']}{tuple(i['shape'])}" for i in entry.get("inputs", []))
        outs = ", ".join(f"{o['name']}{tuple(o['shape'])}" for o in entry.get("outputs", []))
        lines.append(f"  {name}: {_mb(size)}, {entry.get('compute_precision', '?')}, stage {entry.get('stage')}"
                     + (f", {entry['convert_seconds']} s / {entry['peak_rss_mb']} MB peak RSS to convert"
                        if "convert_seconds" in entry else ""))
        if ins:
            lines.append(f"      in: {ins}  →  out: {outs}")
        for fname, f in info["functions"].items():
            top = ", ".join(f"{k} {v}" for k, v in list(f["ops"].items())[:8])
            cx = ", ".join(f"{k} {v}" for k, v in f["constexpr"].items()) or "none"
            lines.append(f"      function {fname}: ops {top} …; compressed weights: {cx}")
        if "verify" in entry:
            v = entry["verify"]
            lines.append(f"      round-trip: {v['layers_matched']} layers, {v['constexpr_ops']} constexpr ops, bit-exact {v['bit_exact']}")
        if entry.get("functions") and len(entry["functions"]) > 1:
            lines.append(f"      functions {entry['functions']}; one function alone: {_mb(entry['single_function_bytes'])}")
    lines.append(f"  total: {_mb(total)}")
    cs = m.get("compressed_source") or {}
    acc = cs.get("accounting")
    if acc:
        lines.append(f"  compressed UNet accounting: {_mb(acc['total_bytes'])} ({acc['bits_per_param']:.2f} bits/param); "
                     f"UNet weight blob in the bundle: {_mb(cs.get('bundle_unet_blob_bytes', 0))} "
                     f"(×{cs.get('blob_vs_accounting', float('nan')):.3f} of the accounting)")
    if m.get("compile_hint") and not m.get("compiled"):
        lines.append(f"  {m['compile_hint']}")
    if verify:
        from .artifacts.integrity import mismatches

        digests = {k: v for c in bundle.components.values() for k, v in (c.get("sha256") or {}).items()}
        bad = mismatches(folder, digests)
        lines.append(f"  integrity: {len(digests)} packages match their sha256" if not bad else
                     f"  integrity: MISMATCH in {len(bad)} package(s): {', '.join(bad[:5])}")
        if bad:
            raise DamagedArtifact(folder, bad, "\n".join(lines))
    if memory:
        lines += memory_plan_lines(m["memory_plan"], budget_mb)
    return "\n".join(lines)


def memory_plan_lines(plan: dict, budget_mb: float | None) -> list[str]:
    """Resident model bytes per stage for the default and low-memory schedules, against a budget."""
    lines = ["", "memory plan (resident model weights per stage; on-device footprint adds activations and runtime):"]
    header = f"  {'stage':<12} {'packages':<36} {'default':>11} {'low-memory':>11}"
    if budget_mb is not None:
        header += f"  fits {budget_mb:g} MB (default / low-memory)"
    lines.append(header)
    res = plan["resident_bytes"]
    for entry in plan["stages"]:
        stage = entry["stage"]
        d, lo = res["default"][stage], res["low_memory"][stage]
        row = f"  {stage:<12} {', '.join(entry['packages'])[:36]:<36} {_mb(d):>11} {_mb(lo):>11}"
        if budget_mb is not None:
            row += f"  {'yes' if d <= budget_mb * MB else 'NO':>4} / {'yes' if lo <= budget_mb * MB else 'NO'}"
        lines.append(row)
    big = plan["largest_stage_bytes"]
    lines.append(f"  largest stage: default {_mb(big['default'])}, low-memory {_mb(big['low_memory'])}")
    return lines


def describe(path: str | Path, *, memory: bool = False, budget_mb: float | None = None, verify: bool = True) -> str:
    path = str(path)
    source = resolve_model(path)
    if memory and source.kind != COREML:
        raise BadInput(f"--memory plans the stages of a Core ML bundle; {path} is a {source.kind.replace('_', '-')} "
                       "model (convert it with `pocketsd convert` first)")
    if source.kind == COMPRESSED:
        return describe_compressed(source.path, verify)
    if source.kind == COREML:
        return describe_bundle(source.path, memory, budget_mb, verify)
    if source.kind in ("diffusers", "hub"):
        return describe_model_folder(model_folder(source), source.kind)
    raise BadInput(f"{path} is a single-file checkpoint; `pocketsd info` describes folders and bundles")
