"""Peak RSS of `pocketsd generate` with and without `--low-memory`, each in a fresh process, side by side.

    python benchmarks/low_memory.py [--model PATH] [--steps N] [--repeats R]

Writes benchmarks/results/memory_low_memory.{json,md}. Each run is a separate `python -m pocketsd generate` so the
peak (the kernel's high-water mark for the whole run, see pipeline/report.py) is not polluted by the other mode.
Runs alternate (normal, low, normal, low, …) so background load affects both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = "a red circle on a white background"


def one_run(model: str | None, steps: int, low_memory: bool, workdir: Path, i: int) -> dict:
    out = workdir / f"run-{i}-{'low' if low_memory else 'normal'}.png"
    cmd = [sys.executable, "-m", "pocketsd", "generate", PROMPT, "--seed", "1", "--steps", str(steps), "--out", str(out),
           "--quiet"] + (["--model", model] if model else []) + (["--low-memory"] if low_memory else [])
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.with_suffix(".json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="default: the embedded reference model")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    from pocketsd.data.model_card import reference_model_record, reference_model_record_if_any

    runs: dict[str, list[dict]] = {"normal": [], "low_memory": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for low in (False, True):
                rep = one_run(args.model, args.steps, low, Path(tmp), i)
                runs["low_memory" if low else "normal"].append({
                    "peak_rss_mb": rep["memory"]["peak_rss_mb"],
                    "rss_after_startup_mb": rep["memory"].get("rss_after_startup_mb"),
                    "load_s": rep["timings_s"]["load"], "total_s": rep["timings_s"]["total"],
                    "unet_step_mean_s": statistics.mean(rep["timings_s"]["unet_steps"]),
                    "model": rep["model"],
                })

    def summary(rows: list[dict]) -> dict:
        peak = statistics.median(r["peak_rss_mb"] for r in rows)
        base = statistics.median(r["rss_after_startup_mb"] for r in rows)
        return {"peak_rss_mb": peak, "rss_after_startup_mb": base, "peak_above_startup_mb": round(peak - base, 1),
                "load_s": statistics.median(r["load_s"] for r in rows),
                "total_s": statistics.median(r["total_s"] for r in rows)}

    normal, low = summary(runs["normal"]), summary(runs["low_memory"])
    result = {
        "what": "peak RSS of one `pocketsd generate` run (whole run, kernel high-water mark), fresh process per run",
        "model": runs["normal"][0]["model"], "steps": args.steps, "repeats": args.repeats,
        "reference_model": reference_model_record() if args.model is None else reference_model_record_if_any(args.model),
        "normal": normal, "low_memory": low,
        "ratio_peak_low_over_normal": round(low["peak_rss_mb"] / normal["peak_rss_mb"], 3),
        "ratio_model_part_low_over_normal": round(low["peak_above_startup_mb"] / normal["peak_above_startup_mb"], 3)
        if normal["peak_above_startup_mb"] > 0 else None,
        "runs": runs, "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                  "omp_threads": os.environ.get("OMP_NUM_THREADS")},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "memory_low_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "# Peak memory with and without `--low-memory`",
        "",
        f"Model: `{result['model']['path']}` ({result['model']['kind']}), {args.steps} steps, median of {args.repeats} "
        "fresh processes each. Regenerate: `python benchmarks/low_memory.py`.",
        "",
        "| mode | peak RSS (MB) | RSS after imports (MB) | peak above imports (MB) | load (s) | total (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in (("default", normal), ("--low-memory", low)):
        md.append(f"| {name} | {row['peak_rss_mb']:.0f} | {row['rss_after_startup_mb']:.0f} | "
                  f"{row['peak_above_startup_mb']:.0f} | {row['load_s']:.2f} | {row['total_s']:.2f} |")
    md += ["", f"Peak ratio low/default: {result['ratio_peak_low_over_normal']}; model-attributable part: "
           f"{result['ratio_model_part_low_over_normal']}.", ""]
    (RESULTS / "memory_low_memory.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
