"""The reference model's 16-bit original against each of its compressed variants, through `pocketsd eval`.

    python benchmarks/eval_refmodel.py [--work build/eval_refmodel] [--quick] [--lock /tmp/pocketsd-heavy.lock]

(`--lock FILE` holds the machine's heavy-job lock one variant at a time, so other heavy jobs can run in between.)

Compresses the reference model with every fixed recipe and the budgets 4.0, 4.5 and 6.0 (`pocketsd compress`,
default calibration; a folder already made with the same recipe is reused), then runs, for each variant,

    pocketsd eval --model VARIANT --against reference --prompts reference \\
                  --metrics psnr,ssim,lpips,fid,adherence --out WORK/runs/VARIANT --images WORK/images

with one shared image folder, so the fp16 images are made once. LPIPS and FID run only if their real weights are on
this machine; otherwise each run records the one-line skip. A variant that `pocketsd compress` refuses is recorded
with its message. Writes `benchmarks/results/eval_refmodel.{json,md,png}` (PSNR and adherence against bits per
parameter) and `eval_refmodel_grid.png` (the budget-4.5 run's worst pairs).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
VARIANTS = [("w4r0", ["--recipe", "w4r0"]), ("w4r16", ["--recipe", "w4r16"]), ("w4r32", ["--recipe", "w4r32"]),
            ("w4r64", ["--recipe", "w4r64"]), ("w6r0", ["--recipe", "w6r0"]), ("w8r0", ["--recipe", "w8r0"]),
            ("budget4", ["--bits-budget", "4.0"]), ("budget4.5", ["--bits-budget", "4.5"]),
            ("budget6", ["--bits-budget", "6.0"]),
            # the same budget with the text encoders left in fp16: what compressing them costs (issue 11)
            ("budget4.5_unet_only", ["--bits-budget", "4.5", "--components", "unet"]),
            # the text encoders' cost with nothing else moving: distillation off (it stops at a wall-clock cap, so
            # its UNet differs from run to run on a loaded machine), the same UNet recipe, with and without them
            ("w4r0_nodistill", ["--recipe", "w4r0", "--distill-steps", "0"]),
            ("w4r0_nodistill_unet_only", ["--recipe", "w4r0", "--distill-steps", "0", "--components", "unet"])]
METRICS = "psnr,ssim,lpips,fid,adherence"
SUMMARY_KEYS = ("value", "low", "high", "n", "interval_method", "real_weights", "weights", "skipped")


def pocketsd(*args: str, timeout: int = 7200) -> subprocess.CompletedProcess:
    """The command as a user runs it, in a fresh process (each run's memory is its own)."""
    return subprocess.run([sys.executable, "-m", "pocketsd", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def compress(name: str, args: list[str], folder: Path, quick: bool) -> dict:
    extra = ["--calib-count", "4", "--calib-steps", "2", "--refine-iters", "1"] if quick else []
    manifest = folder / "pocketsd.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        if _recipe_matches(m, args):
            return {"status": "reused", "seconds": None}
    t0 = time.perf_counter()
    done = pocketsd("compress", "--out", str(folder), "--quiet", *args, *extra)
    seconds = round(time.perf_counter() - t0, 1)
    if done.returncode != 0:
        message = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        return {"status": "refused" if done.returncode == 2 else "failed", "message": message, "seconds": seconds}
    return {"status": "made", "seconds": seconds}


def _recipe_matches(manifest: dict, args: list[str]) -> bool:
    recipe = ((manifest.get("components") or {}).get("unet") or {}).get("recipe") or {}
    if args[0] == "--recipe":
        return recipe.get("name") == args[1]
    return recipe.get("bits_budget") == float(args[1]) and recipe.get("name", "").startswith("budget")


def accounting(folder: Path) -> dict:
    m = json.loads((folder / "pocketsd.json").read_text())
    comps = m.get("components") or {}
    out = {"compressed_components": sorted(comps)}
    unet = comps.get("unet") or {}
    acc = unet.get("accounting") or {}
    out.update(unet_bits_per_param=acc.get("bits_per_param"), unet_bytes=acc.get("total_bytes"),
               recipe=(unet.get("recipe") or {}).get("name"),
               calibration=unet.get("calibration"))
    return out


def evaluate(name: str, model: Path, work: Path, quick: bool) -> dict:
    out = work / "runs" / name
    args = ["eval", "--model", str(model), "--against", "reference", "--prompts", "reference", "--metrics", METRICS,
            "--out", str(out), "--images", str(work / "images"), "--device", "cpu", "--quiet"]
    if quick:
        args += ["--count", "6", "--steps", "4"]
    t0 = time.perf_counter()
    done = pocketsd(*args)
    if done.returncode != 0:
        raise SystemExit(f"pocketsd eval failed for {name}:\n{done.stderr[-3000:]}")
    doc = json.loads((out / "eval.json").read_text())
    doc["_seconds"] = round(time.perf_counter() - t0, 1)
    doc["_stdout"] = done.stdout
    return doc


def summary(doc: dict) -> dict:
    return {k: {f: m.get(f) for f in SUMMARY_KEYS} for k, m in doc["metrics"].items()}


@contextlib.contextmanager
def heavy_lock(path: Path | None):
    if path is None:
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # the same lock `flock FILE cmd` takes
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_variant(name: str, flags: list[str], folder: Path, work: Path, quick: bool) -> dict:
    made = compress(name, flags, folder, quick)
    row = {"variant": name, "compress_args": flags, "compress": made}
    print(f"{name}: compress {made['status']}" + (f" ({made['seconds']} s)" if made.get("seconds") else "")
          + (f": {made['message']}" if made.get("message") else ""), flush=True)
    if made["status"] in ("refused", "failed"):
        return row
    row.update(accounting(folder))
    doc = evaluate(name, folder, work, quick)
    row.update(metrics=summary(doc), skipped=doc["skipped"], eval_seconds=doc["_seconds"],
               images={k: {f: v[f] for f in ("name", "images", "made", "reused")} for k, v in doc["models"].items()},
               eval_timings=doc["timings_s"], load_average=doc["load_average"], run=str(work / "runs" / name),
               _doc=doc)
    psnr, adh = doc["metrics"]["psnr"], doc["metrics"]["adherence"]
    print(f"  {row['unet_bits_per_param']:.3f} bits/param  PSNR {psnr['value']:.2f} dB "
          f"[{psnr['low']:.2f}, {psnr['high']:.2f}]  SSIM {doc['metrics']['ssim']['value']:.4f}  "
          f"adherence {adh['value']:.3f}  ({doc['_seconds']} s)", flush=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "eval_refmodel")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--quick", action="store_true", help="tiny calibration, 6 prompts, 4 steps: checks the harness")
    ap.add_argument("--lock", type=Path, help="hold this lock file (flock) while each variant runs")
    ap.add_argument("--variants", help="comma-separated subset of " + ", ".join(n for n, _ in VARIANTS))
    ap.add_argument("--note", help="why this run differs from the full one (e.g. a subset of variants); written at the "
                    "top of the results")
    args = ap.parse_args(argv)
    from pocketsd.data.model_card import reference_model_record  # every variant is compressed from it and judged against it
    wanted = set(args.variants.split(",")) if args.variants else None
    if wanted and wanted - {n for n, _ in VARIANTS}:
        raise SystemExit(f"--variants: unknown {', '.join(sorted(wanted - {n for n, _ in VARIANTS}))}")
    work = args.work / "quick" if args.quick else args.work
    (work / "models").mkdir(parents=True, exist_ok=True)
    (work / "runs").mkdir(parents=True, exist_ok=True)
    rows, first_doc = [], None
    t_all = time.perf_counter()
    for name, flags in VARIANTS:
        if wanted and name not in wanted:
            continue
        folder = work / "models" / name
        with heavy_lock(args.lock):
            row = run_variant(name, flags, folder, work, args.quick)
        rows.append(row)
        if "metrics" in row:
            first_doc = first_doc or row.pop("_doc")
            row.pop("_doc", None)
    if first_doc is None:
        raise SystemExit("no variant could be evaluated")
    result = {
        "what": "fp16 reference model (B) against each compressed variant (A) through `pocketsd eval`",
        "quick": args.quick, "prompts": first_doc["prompts"], "seed_base": first_doc["seed_base"],
        "eval_settings": {k: v for k, v in first_doc["models"]["against"]["settings"].items()
                          if k not in ("path", "fingerprint", "model", "kind")},
        "metrics_asked": METRICS, "rows": rows, "note": args.note,
        "variants_planned": [n for n, _ in VARIANTS],
        "variants_not_run": [n for n, _ in VARIANTS if wanted and n not in wanted],
        "fp16_adherence": summary(first_doc).get("adherence_against"),
        "commit": _commit(), "reference_model": reference_model_record(), "versions": first_doc["versions"], "seconds": round(time.perf_counter() - t_all, 1),
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
    }
    stem = "eval_refmodel_quick" if args.quick else "eval_refmodel"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(result))
    plot(result, args.out / f"{stem}.png")
    grid_from = next((r for r in rows if r["variant"] == "budget4.5" and "run" in r), None) or \
        next(r for r in rows if "run" in r)
    shutil.copyfile(Path(grid_from["run"]) / "eval_grid.png", args.out / f"{stem}_grid.png")
    result["grid_from"] = grid_from["variant"]
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    return result


def _commit() -> str | None:
    if os.environ.get("POCKETSD_COMMIT"):  # a run from an exported tree (git archive) says which commit it is
        return os.environ["POCKETSD_COMMIT"]
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except Exception:
        return None


def _cell(m: dict | None, digits: int) -> str:
    if not m or m.get("skipped"):
        return "skipped"
    v = m["value"]
    v = float(v) if isinstance(v, str) else v
    if m.get("low") is None:
        return f"{v:.{digits}f}"
    return f"{v:.{digits}f} [{float(m['low']):.{digits}f}, {float(m['high']):.{digits}f}]"


def _distilled(row: dict) -> str:
    """Distillation is paced by wall clock (default cap 10 min), so on a loaded machine it may stop early: say so."""
    d = (row.get("calibration") or {}).get("distillation")
    if not d:
        return "none"
    return f"{d.get('steps_done')} of {d.get('steps_planned')} (stopped by {d.get('stopped_by')})"


def markdown(result: dict) -> str:
    p, s = result["prompts"], result["eval_settings"]
    lines = []
    if result.get("note"):
        lines += [f"**This run:** {result['note']}", ""]
    if result.get("variants_not_run"):
        lines += [f"**Not run** (planned: {', '.join(result['variants_planned'])}): "
                  f"{', '.join(result['variants_not_run'])}.", ""]
    lines += [f"`pocketsd eval` on the reference model: A = each compressed variant, B = the fp16 original; "
             f"{p['count']} prompts of the `{p['name']}` set, seed per prompt from its id (base "
             f"{result['seed_base']}), {s['steps']} {s['scheduler']} steps, guidance {s['guidance']}, device "
             f"{s['device']}. Mean and 95 % interval (PSNR/SSIM: t-interval over images; adherence: Wilson).",
             "",
             "| variant | UNet bits/param | UNet MB | distillation steps | PSNR dB | SSIM | adherence A | LPIPS "
             "| FID |",
             "| --- | ---: | ---: | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        if "metrics" not in r:
            lines.append(f"| {r['variant']} | — | — | {r['compress']['status']}: {r['compress'].get('message', '')} "
                         "| | | | | |")
            continue
        m = r["metrics"]
        lines.append(f"| {r['variant']} | {r['unet_bits_per_param']:.3f} | {r['unet_bytes'] / 1e6:.3f} | "
                     f"{_distilled(r)} | {_cell(m.get('psnr'), 2)} | {_cell(m.get('ssim'), 4)} | "
                     f"{_cell(m.get('adherence'), 3)} | "
                     f"{_cell(m.get('lpips'), 4)} | {_cell(m.get('fid'), 2)} |")
    lines += ["", f"fp16 adherence (B, the same prompts and seeds): {_cell(result['fp16_adherence'], 3)}. Adherence = "
              "colour, shape and background all read back right from the pixels."]
    skipped = sorted({s for r in result["rows"] for s in r.get("skipped", [])})
    if skipped:
        lines += ["", "Not measured (the metric's real weights are not on this machine; no number was made up):"]
        lines += [f"- {s}" for s in skipped]
    comps = sorted({", ".join(r.get("compressed_components", [])) for r in result["rows"] if "metrics" in r})
    lines += ["", f"Compressed components: {'; '.join(comps)}. Commit {result.get('commit') or '?'}; whole run "
              f"{result['seconds'] / 60:.1f} min (load average {result['load_average_end'][0]} at the end)."]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if "metrics" in r]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "psnr", "image PSNR vs fp16 (dB)"), (axes[1], "adherence", "adherence (A)")):
        for r in rows:
            m = r["metrics"][key]
            v, lo, hi = (float(m[f]) if m[f] is not None else None for f in ("value", "low", "high"))
            err = [[max(0.0, v - lo)], [max(0.0, hi - v)]] if lo is not None else None
            ax.errorbar(r["unet_bits_per_param"], v, yerr=err, fmt="o" if r["variant"].startswith("budget") else "s",
                        capsize=4)
            ax.annotate(r["variant"], (r["unet_bits_per_param"], v), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
        if key == "adherence" and result.get("fp16_adherence"):
            ax.axhline(float(result["fp16_adherence"]["value"]), color="gray", ls="--", lw=1, label="fp16")
            ax.legend(fontsize=8)
        ax.set_xlabel("UNet bits per parameter")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(f"pocketsd eval, reference model: compressed (A) vs fp16 (B), {result['prompts']['count']} prompts, "
                 "95 % intervals", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
