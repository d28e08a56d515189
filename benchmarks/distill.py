"""Distillation gain against distillation time, at several bit budgets, on the reference model.

    python benchmarks/distill.py [--budgets 4.0,4.5,6.0] [--minutes 0,2,5,10,20] [--threads 1] [--quick]

For every budget the UNet is compressed once (`compress_network`, the calibration of compression.py: 64 grammar
prompts × 20 steps), the fp16 teacher's calls are recorded once (`record_teacher`, the same prompts and steps),
and for every point of `--minutes` a fresh copy is distilled with that many minutes of this process's CPU time
(`DistillSettings(clock="cpu")`: the learning rate anneals over the budget, so each point is a complete run, not
a snapshot of a longer one). Each point is evaluated by compression.py's `Evaluator` (`pocketsd eval`'s protocol):
final-image PSNR / SSIM against fp16 over the 54 adherence prompts at 20 steps, adherence, latent PSNR after the
first step. Bits per parameter are
the format's accounting of the written tensors (distillation changes values, never sizes).

CPU minutes are `time.process_time()` of this process (all its threads); run with `--threads 1` on a shared
machine so that spinning threads do not count as work. The load average is recorded beside every point.
Points are appended to distill_curve.json as they finish; a re-run skips the points already there (same
settings), so an interrupted run resumes. Writes distill_curve.{json,md,png}.

On a shared machine the budgets can run as separate processes (`--budgets 4.5 --out A`, `--budgets 4.0 --out B`,
the same `--work` so the fp16 images are made once), then `--merge A/distill_curve.json,B/distill_curve.json`
joins their points (the settings must be equal) into `--out`.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pocketsd.artifacts import write_json  # noqa: E402
from pocketsd.artifacts.compressed import accounting  # noqa: E402
from pocketsd.data import REFERENCE_MODEL  # noqa: E402
from pocketsd.data.model_card import reference_model_record  # noqa: E402
from pocketsd.data.grammar import calibration_prompts  # noqa: E402
from pocketsd.data.prompt_sets import REFERENCE_SET, load_prompt_set  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TARGETS = {4.5: 36.0, 4.0: 33.0}  # issue 15: image PSNR vs fp16 at 20 steps


def load() -> float:
    return os.getloadavg()[0]


def main(argv: list[str] | None = None) -> dict:
    from diffusers import StableDiffusionXLPipeline

    from baselines import MethodContext
    from compression import Evaluator
    from pocketsd.palettize.compress import compress_network
    from pocketsd.palettize.distill import distill, record_teacher
    from pocketsd.palettize.layer import compressed_layers, compressed_state_dict, set_mode
    from pocketsd.palettize.recipes import Recipe, make_recipe

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REFERENCE_MODEL)
    ap.add_argument("--budgets", default="4.0,4.5,6.0")
    ap.add_argument("--minutes", default="0,2,5,10,20", help="CPU-minute budgets of distillation (0: none)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20, help="sampling steps of the image evaluation")
    ap.add_argument("--calib-prompts", type=int, default=64)
    ap.add_argument("--calib-steps", type=int, default=20)
    ap.add_argument("--tensors", default=",".join(Recipe.distill_tensors))
    ap.add_argument("--lr", type=float, default=Recipe.distill_lr, help="Adam step relative to each tensor's RMS")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "bench-distill", help="pocketsd eval's folders")
    ap.add_argument("--quick", action="store_true", help="few prompts and seconds: checks the harness, not the figures")
    ap.add_argument("--merge", default=None, metavar="JSON,JSON",
                    help="join the points of curve files written by separate runs (same settings) and stop")
    args = ap.parse_args(argv)
    if args.merge:
        return merge([Path(f) for f in args.merge.split(",") if f.strip()], args.out)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    budgets = [float(b) for b in args.budgets.split(",")]
    minutes = [float(m) for m in args.minutes.split(",")]
    prompts, steps, calib_n, calib_steps = load_prompt_set(REFERENCE_SET), args.steps, args.calib_prompts, args.calib_steps
    if args.quick:
        prompts, steps, calib_n, calib_steps = load_prompt_set(REFERENCE_SET, count=6), 6, 8, 4
        minutes = [m / 20 for m in minutes]
    stem = "distill_curve_quick" if args.quick else "distill_curve"
    path = args.out / f"{stem}.json"
    settings = {"model": str(args.model), "steps": steps, "n_image_prompts": len(prompts), "threads": args.threads,
                "calibration": {"prompts": calib_n, "steps": calib_steps}, "tensors": args.tensors,
                "stop": "CPU-minute budget only (no epoch cap); the best held-out step is kept"}
    if args.lr != Recipe.distill_lr:  # recorded only when changed, so curves of the default stay mergeable
        settings["lr"] = args.lr
    doc = json.loads(path.read_text()) if path.is_file() else {}
    if doc.get("settings") != settings:
        doc = {"settings": settings, "points": []}
    doc["reference_model"] = reference_model_record(args.model)
    done = {(p["budget"], p["minutes"]) for p in doc["points"]}

    pipe = StableDiffusionXLPipeline.from_pretrained(args.model, torch_dtype=torch.float32)
    latent_prompts = calibration_prompts(8, seed=12345)
    work = args.work / ("quick" if args.quick else "full")
    ev = Evaluator(pipe, args.model, latent_prompts, prompts, steps, work)
    fp16_unet = pipe.unet
    fp16_metrics, _ = ev.evaluate("fp16", fp16_unet)
    doc["fp16_adherence_pct"] = fp16_metrics["adherence_pct"]  # kept even if the run is stopped before the end
    doc["machine"] = {"cpus": os.cpu_count(), "load_after_fp16": load(),
                      "note": "shared machine: other jobs ran beside this one; CPU minutes are this process's own"}
    ctx = MethodContext(pipe=pipe, model=args.model, calib_prompts=calibration_prompts(calib_n, seed=0),
                        calib_steps=calib_steps, latent_prompts=latent_prompts, quick=args.quick)
    teacher = None
    for budget in budgets:
        todo = [m for m in minutes if (budget, m) not in done]
        if not todo:
            continue
        calib = ctx.calibration()
        recipe = make_recipe(bits_budget=budget, distill_tensors=args.tensors, distill_lr=args.lr)
        compressed = copy.deepcopy(fp16_unet)
        t0, c0 = time.time(), time.process_time()
        compress_network(compressed, recipe, calib)
        compress_s, compress_cpu = time.time() - t0, time.process_time() - c0
        if teacher is None:
            t0, c0 = time.time(), time.process_time()
            teacher = record_teacher(pipe, ctx.calib_prompts, calib_steps, 5.0, 8, 0)
            doc["teacher"] = {**teacher.info, "seconds": time.time() - t0, "cpu_seconds": time.process_time() - c0}
        layers = compressed_layers(compressed)
        acc = accounting(compressed_state_dict(compressed), [layer.record() for layer in layers.values()])
        ranks = [layer.rank for layer in layers.values()]
        for m in todo:
            student = copy.deepcopy(compressed)
            point = {"budget": budget, "minutes": m, "bits_per_param": acc["bits_per_param"], "unet_bytes": acc["total_bytes"],
                     "mean_rank": sum(ranks) / len(ranks), "layers_with_rank": sum(r > 0 for r in ranks),
                     "compress_seconds": compress_s, "compress_cpu_seconds": compress_cpu, "load_before": load()}
            if m > 0:
                ds = recipe.distill_settings(5.0)
                # The CPU-minute budget is the only stop here (no epoch cap): the curve asks what more time buys;
                # the best held-out step is kept, so a long run cannot end worse than its best point.
                ds = type(ds)(**{**ds.__dict__, "steps": 1_000_000, "max_epochs": None, "minutes": m, "clock": "cpu"})
                rep = distill(student, teacher, ds, final_mode="dense")
                point.update({"distill": {k: v for k, v in rep.to_dict().items()},
                              "cpu_minutes": rep.cpu_seconds / 60, "wall_minutes": rep.seconds / 60,
                              "held_out_snr_db_before": rep.held_out_snr_db_before,
                              "held_out_snr_db_after": rep.held_out_snr_db_after})
                after = accounting(compressed_state_dict(student), [layer.record() for layer in compressed_layers(student).values()])
                assert after["total_bytes"] == acc["total_bytes"]  # values change, sizes never
            else:
                point.update({"cpu_minutes": 0.0, "wall_minutes": 0.0})
            set_mode(student, "dense")
            metrics, _ = ev.evaluate(f"budget{budget:g}_distill{m:g}min", student)
            point.update(metrics)
            point["load_after"] = load()
            doc["points"].append(point)
            print(f"budget {budget:g} · {m:g} CPU-min: {point['bits_per_param']:.3f} bits, image PSNR "
                  f"{metrics['image_psnr_db']:.2f} dB, adherence {metrics['adherence_pct']:.1f} % "
                  f"(load {point['load_before']:.1f})", flush=True)
            args.out.mkdir(parents=True, exist_ok=True)
            write_json(path, doc)
            pipe.unet = fp16_unet
    fp16_adherence = fp16_metrics["adherence_pct"]
    doc["fp16_adherence_pct"] = fp16_adherence
    doc["targets"] = verdict(doc["points"], fp16_adherence)
    write_json(path, doc)
    (args.out / f"{stem}.md").write_text(markdown(doc))
    plot(doc, args.out / f"{stem}.png")
    print(markdown(doc))
    return doc


def merge(files: list[Path], out: Path) -> dict:
    """One curve from the curve files of separate runs (one per budget, say): equal settings required."""
    docs = [json.loads(f.read_text()) for f in files]
    if any(d["settings"] != docs[0]["settings"] for d in docs):
        raise SystemExit("distill.py --merge: the curve files were made with different settings")
    versions = {(d.get("reference_model") or {}).get("version") for d in docs}
    if len(versions) > 1:
        raise SystemExit(f"distill.py --merge: the curve files measured different reference model versions {versions}")
    points, seen = [], set()
    for d in docs:
        for p in d["points"]:
            if (p["budget"], p["minutes"]) not in seen:
                seen.add((p["budget"], p["minutes"]))
                points.append(p)
    adherence = [d["fp16_adherence_pct"] for d in docs if d.get("fp16_adherence_pct") is not None]
    # A run stopped early has no fp16_adherence_pct of its own; every point carries the fp16 side's adherence.
    adherence = adherence[0] if adherence else points[0]["fp16_adherence_pct"]
    doc = {"settings": docs[0]["settings"], "reference_model": docs[0].get("reference_model"), "points": points,
           "merged_from": [str(f) for f in files],
           "teacher": next((d["teacher"] for d in docs if "teacher" in d), None), "fp16_adherence_pct": adherence}
    doc["targets"] = verdict(points, adherence)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "distill_curve.json", doc)
    (out / "distill_curve.md").write_text(markdown(doc))
    plot(doc, out / "distill_curve.png")
    print(markdown(doc))
    return doc


def verdict(points: list[dict], fp16_adherence: float) -> dict:
    """Issue 15's targets, on the longest distillation run of each budget."""
    out = {}
    for budget, target in TARGETS.items():
        runs = [p for p in points if p["budget"] == budget]
        if not runs:
            out[f"budget{budget:g}"] = {"evaluated": False}
            continue
        best = max(runs, key=lambda p: p["minutes"])
        out[f"budget{budget:g}"] = {"evaluated": True, "target_db": target, "minutes": best["minutes"],
                                    "bits_per_param": best["bits_per_param"], "image_psnr_db": best["image_psnr_db"],
                                    "met": best["image_psnr_db"] >= target,
                                    "adherence_pct": best["adherence_pct"],
                                    "adherence_no_worse_than_fp16": best["adherence_pct"] >= fp16_adherence}
    return out


def markdown(doc: dict) -> str:
    s = doc["settings"]
    lines = [f"Distillation on the reference model: image PSNR / SSIM against fp16 over {s['n_image_prompts']} "
             f"adherence prompts at {s['steps']} steps; teacher = fp16 UNet calls on {s['calibration']['prompts']} "
             f"calibration prompts × {s['calibration']['steps']} steps; trained tensors: {s['tensors']}; "
             f"learning rate {s.get('lr', 'default')}; "
             f"{s['threads']} torch thread(s); CPU minutes are this process's CPU time.", "",
             "| budget | bits/param | CPU-min | wall-min | steps | held-out SNR dB (before → after) | image PSNR dB | SSIM | "
             "adherence % | load |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for p in sorted(doc["points"], key=lambda p: (p["budget"], p["minutes"])):
        d = p.get("distill")
        held = f"{d['held_out_snr_db_before']:.2f} → {d['held_out_snr_db_after']:.2f}" if d else "—"
        lines.append(f"| {p['budget']:g} | {p['bits_per_param']:.3f} | {p['cpu_minutes']:.1f} | {p['wall_minutes']:.1f} | "
                     f"{d['steps_done'] if d else 0} | {held} | {p['image_psnr_db']:.2f} | {p['image_ssim']:.4f} | "
                     f"{p['adherence_pct']:.1f} | {p['load_before']:.1f} |")
    lines.append("")
    lines.append(f"fp16 adherence: {doc.get('fp16_adherence_pct', float('nan')):.1f} %.")
    for key, t in doc.get("targets", {}).items():
        if t.get("evaluated"):
            lines.append(f"Target {key}: image PSNR ≥ {t['target_db']} dB — {t['image_psnr_db']:.2f} dB at "
                         f"{t['bits_per_param']:.3f} bits after {t['minutes']:g} CPU-min: "
                         f"**{'met' if t['met'] else 'missed'}**; adherence {t['adherence_pct']:.1f} % "
                         f"({'no worse than' if t['adherence_no_worse_than_fp16'] else 'below'} fp16).")
    return "\n".join(lines) + "\n"


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for budget in sorted({p["budget"] for p in doc["points"]}):
        pts = sorted((p for p in doc["points"] if p["budget"] == budget), key=lambda p: p["minutes"])
        ax.plot([p["cpu_minutes"] for p in pts], [p["image_psnr_db"] for p in pts], "o-",
                label=f"budget {budget:g} ({pts[0]['bits_per_param']:.2f} bits)")
        if budget in TARGETS:
            ax.axhline(TARGETS[budget], ls=":", lw=1, color=ax.lines[-1].get_color())
    ax.set_xlabel("distillation CPU-minutes")
    ax.set_ylabel("final-image PSNR vs fp16 (dB)")
    ax.set_title("Distilling the small tensors (codes frozen), reference model")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
