"""The default `pocketsd compress` (budget 4.5 + block distillation) on the reference model, beside the same budget
with whole-UNet distillation and with none, judged on prompts compression never saw.

    python benchmarks/default_compress.py [--work build/default_compress] [--variants default,whole,off] [--quick]

Each variant is the command a user runs, in a fresh process (wall and CPU seconds, and the child's own peak RSS from
/proc/PID/status VmHWM, polled):

    default  pocketsd compress --out WORK/default                 (what the README's headline figures are)
    whole    pocketsd compress --out WORK/whole --distill whole   (the older default: the whole UNet at once)
    off      pocketsd compress --out WORK/off --distill off

then `pocketsd eval --against reference --metrics psnr,adherence` twice: on `reference-held-out` (the 18 colour ×
shape × background combinations calibration and distillation never draw from: `data.grammar.HELD_OUT_RULE`) and
on `reference-in-set` (the other 36), with one shared image folder so the fp16 images are made once. Writes
`benchmarks/results/default_compress.{json,md}` with the machine's load average at every stage: distillation stops at
a wall-clock cap (`--distill-minutes`), so on a loaded machine it measures the load as much as the method.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
VARIANTS = {"default": [], "whole": ["--distill", "whole"], "off": ["--distill", "off"]}
SPLITS = ("reference-held-out", "reference-in-set")
TARGETS = {"held_out_psnr_db": 37.0, "adherence_gap_points": 2.0}


def run_measured(args: list[str], timeout: int = 7200) -> dict:
    """Run `python -m pocketsd ARGS` and measure it: wall and CPU seconds, peak RSS (VmHWM), load before/after."""
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    before = os.times()
    proc = subprocess.Popen([sys.executable, "-m", "pocketsd", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    peak_kb = 0
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak_kb = max(peak_kb, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.5)
        if time.perf_counter() - t0 > timeout:
            proc.kill()
    out, err = proc.communicate()
    after = os.times()
    return {"args": args, "returncode": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round((after.children_user - before.children_user) + (after.children_system - before.children_system), 1),
            "peak_rss_mb": round(peak_kb / 1024, 1), "load_before": [round(x, 2) for x in load0],
            "load_after": [round(x, 2) for x in os.getloadavg()], "stdout": out[-2000:], "stderr": err[-2000:]}


def distillation_summary(folder: Path) -> dict:
    manifest = json.loads((folder / "pocketsd.json").read_text())
    out = {}
    for name, comp in manifest["components"].items():
        acc, recipe = comp["accounting"], comp["recipe"]
        report = (comp.get("calibration") or {}).get("distillation") or {}
        row = {"bits_per_param": acc["bits_per_param"], "bytes": acc["total_bytes"], "distill": recipe.get("distill"),
               "distill_steps": recipe.get("distill_steps")}
        if report.get("mode") == "block":
            blocks = report["blocks"]
            row.update(blocks=len(blocks), kept={k: sum(b["kept"] == k for b in blocks) for k in ("start", "fp16", "student")},
                       mean_block_gain_db=round(sum(b["snr_db_after"] - b["snr_db_before"] for b in blocks) / len(blocks), 3),
                       seconds=report["seconds"], cache=report.get("cache"))
        elif report:
            row.update(held_out_snr_db_before=report.get("held_out_snr_db_before"),
                       held_out_snr_db_after=report.get("held_out_snr_db_after"), steps_done=report.get("steps_done"),
                       seconds=report.get("seconds"))
        out[name] = row
    out["timings_s"] = manifest.get("timings_s")
    return out


def evaluate(name: str, folder: Path, split: str, work: Path, quick: bool) -> dict:
    run = work / "runs" / f"{name}-{split}"
    args = ["eval", "--model", str(folder), "--against", "reference", "--prompts", split, "--metrics",
            "psnr,adherence", "--out", str(run), "--images", str(work / "images"), "--device", "cpu", "--quiet"]
    if quick:
        args += ["--count", "3", "--steps", "4"]
    measured = run_measured(args)
    if measured["returncode"] != 0:
        raise SystemExit(f"pocketsd eval failed for {name} on {split}:\n{measured['stderr']}")
    doc = json.loads((run / "eval.json").read_text())
    psnr, adh = doc["metrics"]["psnr"], doc["metrics"]["adherence"]
    fp16_adh = (adh.get("per_model") or {}).get("B") if isinstance(adh.get("per_model"), dict) else None
    return {"psnr_db": psnr["value"], "psnr_low": psnr["low"], "psnr_high": psnr["high"], "n": psnr["n"],
            "adherence": adh["value"], "adherence_against": adh.get("against", fp16_adh),
            "adherence_detail": {k: v for k, v in adh.items() if k not in ("value",)},
            "wall_s": measured["wall_s"], "load_after": measured["load_after"]}


def git_describe() -> str:
    done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() or "not recorded"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=str(ROOT / "build" / "default_compress"))
    ap.add_argument("--variants", default="default,whole,off")
    ap.add_argument("--quick", action="store_true", help="a smoke run: tiny calibration and 3 prompts × 4 steps")
    ap.add_argument("--note", default=None, help="a line recorded with the results (e.g. how a reused folder's peak "
                    "RSS was read)")
    ap.add_argument("--reuse", action="store_true", help="reuse a variant's compressed folder left by an interrupted "
                    "run (its CPU time and peak RSS are then not measured)")
    args = ap.parse_args()
    from pocketsd.data.model_card import reference_model_record  # the model every variant compresses and is judged against
    work = Path(args.work)
    (work / "runs").mkdir(parents=True, exist_ok=True)
    rows = []
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        folder = work / name
        extra = ["--calib-count", "16", "--calib-steps", "2", "--refine-iters", "1"] if args.quick else []
        if args.reuse and (folder / "pocketsd.json").is_file():
            # a folder an earlier, interrupted run of this script made: its stage timings come from its manifest;
            # its peak RSS and CPU time were not kept
            manifest = json.loads((folder / "pocketsd.json").read_text())
            made = {"args": ["compress", "--out", str(folder), *VARIANTS[name]], "returncode": 0, "reused": True,
                    "wall_s": round(sum(manifest.get("timings_s", {}).values()), 1), "cpu_s": None,
                    "peak_rss_mb": None, "load_before": None, "load_after": [round(x, 2) for x in os.getloadavg()],
                    "note": "reused folder: wall_s is the sum of the manifest's stage timings; CPU and peak RSS "
                            "were not measured in this run"}
        else:
            made = run_measured(["compress", "--out", str(folder), "--force", "--quiet", *VARIANTS[name], *extra])
        if made["returncode"] != 0:
            raise SystemExit(f"pocketsd compress failed for {name}:\n{made['stderr']}")
        row = {"variant": name, "command": "pocketsd compress --out OUT " + " ".join(VARIANTS[name]),
               "default_command": not VARIANTS[name] and not args.quick, "compress": made,
               "components": distillation_summary(folder), "eval": {}}
        for split in SPLITS:
            row["eval"][split] = evaluate(name, folder, split, work, args.quick)
        rows.append(row)
        held = row["eval"]["reference-held-out"]
        print(f"{name}: {row['components']['unet']['bits_per_param']:.3f} bits/param  held-out PSNR "
              f"{held['psnr_db']:.2f} dB [{held['psnr_low']:.2f}, {held['psnr_high']:.2f}]  in-set "
              f"{row['eval']['reference-in-set']['psnr_db']:.2f} dB  compress {made['wall_s']} s "
              f"(load {made['load_after'][0]})", flush=True)
    doc = {"benchmark": "default_compress", "command": "python benchmarks/default_compress.py"
           + (" --quick" if args.quick else "") + (f" --variants {args.variants}" if args.variants != "default,whole,off" else ""),
           "special_run": args.quick, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "code_version": git_describe(), "reference_model": reference_model_record(), "machine": {"cores": os.cpu_count()},
           "protocol": {"evaluation": "pocketsd eval --against reference, 20 steps, guidance 5 (eval defaults)",
                        "splits": {s: "combinations calibration and distillation never draw from" if "held" in s
                                   else "combinations calibration draws its prompts from" for s in SPLITS},
                        "targets": TARGETS}, "note": args.note, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "default_compress_quick" if args.quick else "default_compress"
    (RESULTS / f"{stem}.json").write_text(json.dumps(doc, indent=1))
    (RESULTS / f"{stem}.md").write_text(render_markdown(doc))
    print(f"wrote {RESULTS / stem}.json and .md")
    return 0


def render_markdown(doc: dict) -> str:
    lines = [f"# The default compress on the reference model{' (smoke run: not a result)' if doc['special_run'] else ''}",
             "", f"`{doc['command']}` · code {doc['code_version']} · {doc['date']} · {doc['machine']['cores']} cores", "",
             "Image PSNR against fp16 (95 % interval) and adherence, on the 18 held-out combinations and the 36 in-set "
             "ones. Bits are honest bits per parameter of the UNet.", "",
             "| variant | command | UNet bits/param | held-out PSNR dB | in-set PSNR dB | held-out adherence | "
             "compress wall s | CPU s | peak RSS MB | load (1 min) after |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in doc["rows"]:
        h, i, c = r["eval"]["reference-held-out"], r["eval"]["reference-in-set"], r["compress"]
        label = r["variant"] + (" (default)" if r["default_command"] else "")
        lines.append(f"| {label} | `{r['command']}` | {r['components']['unet']['bits_per_param']:.3f} | "
                     f"{h['psnr_db']:.2f} [{h['psnr_low']:.2f}, {h['psnr_high']:.2f}] | "
                     f"{i['psnr_db']:.2f} [{i['psnr_low']:.2f}, {i['psnr_high']:.2f}] | {h['adherence']:.3f} | "
                     f"{c['wall_s']} | {c['cpu_s'] if c['cpu_s'] is not None else 'not measured'} | "
                     f"{c['peak_rss_mb'] if c['peak_rss_mb'] is not None else 'not measured'} | {c['load_after'][0]} |")
    lines += ["", f"Target (issue 20) for the default command on held-out prompts: ≥ {TARGETS['held_out_psnr_db']} dB."]
    if doc.get("note"):
        lines += ["", f"Note: {doc['note']}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
