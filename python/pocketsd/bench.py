"""`pocketsd bench`: the same fixed generation set on every model kind present, side by side in one run.

Kinds on the torch backend: the fp16 model folder, its compressed UNet run dense (4-bit codes dequantized once at
load) and packed (4-bit codes kept in memory, dequantized per layer call). Each kind runs in a fresh subprocess
(`python -m pocketsd.bench --worker …`) so its peak RSS is its own (a process's high-water mark cannot go down),
and within it the models load once and serve every prompt × seed (as `generate --count` does). Results:
generate.{json,md} (+ .png when matplotlib is installed) in the output folder, with every figure also given as a
ratio to fp16 measured in the same run.

The harness is part of the package so that `pocketsd bench` works from an installed wheel; benchmarks/generate.py
in a source checkout is a thin wrapper around it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import mean

from .errors import BadInput

PROMPTS = (
    "a red circle on a white background",
    "a blue square on a gray background",
    "a yellow triangle on a black background, on the left",
)
SEEDS = (0, 1)
CHECKOUT_OUT = Path("benchmarks/results")  # in a source checkout: beside the other benchmark results
INSTALLED_OUT = Path("pocketsd-bench")  # anywhere else (an installed wheel): a folder of its own in the current one
KINDS = ("fp16", "compressed-dense", "compressed-packed")


def default_out_dir(cwd: Path | None = None) -> Path:
    """Where results go when no --out-dir is given: benchmarks/results/ when run from a source checkout (it has a
    benchmarks/ folder), else ./pocketsd-bench/."""
    cwd = Path.cwd() if cwd is None else Path(cwd)
    return CHECKOUT_OUT if (cwd / CHECKOUT_OUT.parent).is_dir() else INSTALLED_OUT
RATIO_KEYS = ("load_s", "text_encode_s", "unet_step_s", "vae_decode_s", "image_s", "peak_rss_mb", "model_rss_mb",
              "unet_bytes")


@dataclass
class Config:
    label: str
    model: str
    unet_mode: str = "dense"
    device: str = "cpu"  # a concrete device (resolved once by run_bench)


# ---- worker (runs in its own process) -----------------------------------------------------------------
def run_worker(config: Config, prompts: list[str], seeds: list[int], steps: int, threads: int) -> dict:
    import psutil
    import torch

    from .eval.classify import classify
    from .models import resolve_model
    from .pipeline.generate import GenerationRequest, generate
    from .pipeline.report import PeakMemory, RunTimer
    from .pipeline.session import model_facts
    from .pipeline.torch_backend import open_backend

    torch.set_num_threads(threads)
    memory = PeakMemory(config.device)
    baseline = psutil.Process().memory_info().rss  # interpreter + torch + diffusers, before any weight is read
    source = resolve_model(config.model)
    backend = open_backend(source, unet_mode=config.unet_mode, device=config.device)
    images = []
    for i, (prompt, seed) in enumerate((p, s) for p in prompts for s in seeds):
        timer = RunTimer()
        result = generate(backend, GenerationRequest(prompt=prompt, steps=steps, guidance=5.0, seed=seed), timer=timer)
        t = timer.as_dict()
        reading = classify(result.images[0])
        words = prompt.split()
        images.append({"prompt": prompt, "seed": seed, "load_s": t["load"], "text_encode_s": t["text_encode"],
                       "unet_steps_s": t["unet_steps"], "vae_decode_s": t["vae_decode"],
                       "image_s": t["total"] - t["load"], "color_ok": reading.color == words[1],
                       "shape_ok": reading.shape == words[2]})
    read = memory.read()
    peak = read["peak_rss_mb"]
    size = "x".join(str(v) for v in result.images[0].size)
    facts = model_facts(source, getattr(backend.components, "folder", None))
    steps_all = [s for im in images for s in im["unet_steps_s"]]
    return {
        **asdict(config), "kind": source.kind, "size": size, "unet_bytes": facts["unet_bytes"],
        "bits_per_weight": facts["bits_per_weight"],
        "load_s": images[0]["load_s"],  # models load once, for the first image
        "text_encode_s": mean(im["text_encode_s"] for im in images),
        "unet_step_s": mean(steps_all), "unet_step_min_s": min(steps_all), "unet_step_max_s": max(steps_all),
        "vae_decode_s": mean(im["vae_decode_s"] for im in images),
        # Per image once warm: the first image also pays one-time imports and allocations (reported apart).
        "image_s": mean(im["image_s"] for im in (images[1:] or images)),
        "first_image_s": images[0]["image_s"],
        "peak_rss_mb": peak, "baseline_rss_mb": round(baseline / 2**20, 1), "device": config.device,
        "cuda_peak_mb": read["cuda_peak_mb"], "mps_peak_mb": read["mps_peak_mb"],
        "model_rss_mb": round(peak - baseline / 2**20, 1),
        "color_right": mean(im["color_ok"] for im in images), "shape_right": mean(im["shape_ok"] for im in images),
        "memory_method": memory.method, "images": images,
    }


# ---- parent --------------------------------------------------------------------------------------------
def _run_config(config: Config, prompts, seeds, steps, threads) -> dict:
    payload = json.dumps({"config": asdict(config), "prompts": list(prompts), "seeds": list(seeds), "steps": steps,
                          "threads": threads})
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TRANSFORMERS_VERBOSITY="error", DIFFUSERS_VERBOSITY="error",
               HF_HUB_DISABLE_PROGRESS_BARS="1")
    proc = subprocess.run([sys.executable, "-m", "pocketsd.bench", "--worker", payload],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"benchmark of {config.label} failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compress_reference(model: str | None, out: Path) -> Path:
    """Compress `model` with `pocketsd compress` (the command, so the bench measures what users get)."""
    cmd = [sys.executable, "-m", "pocketsd", "compress", "--out", str(out)] + (["--model", model] if model else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BadInput(f"`pocketsd compress` failed, so there is no compressed model to bench ({tail}); "
                       "pass --compressed DIR")
    return out


def ratios(results: list[dict], base_label: str = "fp16") -> None:
    base = next((r for r in results if r["label"] == base_label), None)
    for r in results:
        r["ratio_to_fp16"] = {k: (round(r[k] / base[k], 3) if base and base.get(k) else None) for k in RATIO_KEYS}


def _fmt(value, unit="") -> str:
    if value is None:
        return "–"
    return f"{value * 1000:.0f} ms" if unit == "ms" else f"{value:.2f}{unit}"


def markdown(doc: dict) -> str:
    rs = doc["results"]
    lines = [
        "# Generation benchmark (torch backend, CPU)", "",
        f"`pocketsd bench` on {doc['machine']['platform']}, {doc['machine']['cpus']} CPUs, torch threads "
        f"{doc['settings']['threads']}; {len(doc['settings']['prompts'])} prompts × {len(doc['settings']['seeds'])} "
        f"seeds × {doc['settings']['steps']} steps (euler, guidance 5), {doc['settings']['size']} px; each model kind "
        "in a fresh process, models loaded once per kind. Regenerate with `pocketsd bench`.", "",
        "| model | UNet MB | bits/weight | load | text encode | UNet step | VAE decode | per image | peak RSS MB | "
        "RSS over baseline MB | color / shape right |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rs:
        bpw = f"{r['bits_per_weight']:.2f}" if r.get("bits_per_weight") else "–"
        lines.append(
            f"| {r['label']} | {r['unet_bytes'] / 1e6:.2f} | {bpw} | {_fmt(r['load_s'], ' s')} | "
            f"{_fmt(r['text_encode_s'], 'ms')} | {_fmt(r['unet_step_s'], 'ms')} | {_fmt(r['vae_decode_s'], 'ms')} | "
            f"{_fmt(r['image_s'], ' s')} | {r['peak_rss_mb']:.0f} | {r['model_rss_mb']:.0f} | "
            f"{r['color_right']:.0%} / {r['shape_right']:.0%} |")
    lines += ["", "Ratios to fp16 (same run):", "",
              "| model | UNet bytes | UNet step | per image | load | peak RSS | RSS over baseline |",
              "|---|---|---|---|---|---|---|"]
    for r in rs:
        q = r["ratio_to_fp16"]
        f = lambda k: "–" if q.get(k) is None else f"{q[k]:.2f}×"  # noqa: E731
        lines.append(f"| {r['label']} | {f('unet_bytes')} | {f('unet_step_s')} | {f('image_s')} | {f('load_s')} | "
                     f"{f('peak_rss_mb')} | {f('model_rss_mb')} |")
    lines += ["", "UNet step = one denoising step with classifier-free guidance (batch 2). Peak RSS is the process "
              "high-water mark (" + rs[0]["memory_method"] + "); the baseline is the interpreter with torch and "
              "diffusers imported, before any weight is read. Color/shape right: the pixel classifier's reading of "
              "each image against its prompt."]
    if doc.get("skipped"):
        lines += ["", "Not measured: " + "; ".join(doc["skipped"])]
    return "\n".join(lines) + "\n"


def _plot(doc: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from .artifacts import atomic_write_path

    rs = doc["results"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    labels = [r["label"] for r in rs]
    axes[0].bar(labels, [r["unet_step_s"] * 1000 for r in rs], color="#4a7")
    axes[0].set_ylabel("ms per UNet step")
    axes[1].bar(labels, [r["model_rss_mb"] for r in rs], color="#47a")
    axes[1].set_ylabel("peak RSS over baseline (MB)")
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=15)
    fig.tight_layout()
    tmp = atomic_write_path(path)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return True


def run_bench(model: str | None = None, compressed: str | None = None, out_dir: Path | None = None, *,
              steps: int = 20, prompts=PROMPTS, seeds=SEEDS, threads: int | None = None, keep_compressed: Path | None = None,
              kinds: tuple[str, ...] = KINDS, progress=None, device: str = "cpu") -> dict:
    from .artifacts import MANIFEST, write_json
    from .models import resolve_model
    from .models.device import resolve_device

    device = resolve_device(device)
    threads = threads or max(1, min(2, os.cpu_count() or 1))
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    source = resolve_model(model)
    if source.kind not in ("diffusers", "compressed"):
        raise BadInput(f"`pocketsd bench --model` takes a diffusers folder (got a {source.kind} model)")
    skipped: list[str] = []
    if sys.platform != "darwin":
        skipped.append("the Core ML backend (prediction needs macOS; on a Mac, `pocketsd generate --model BUNDLE "
                       "--compute-units cpu_and_ne` reports the same stages plus first-load/compile time)")
    tmp = None
    if source.kind == "compressed":  # only the compressed kinds can be measured
        compressed, model = model, None
        kinds = tuple(k for k in kinds if k != "fp16")
        skipped.append("fp16 (the --model given is already compressed; pass its source folder to compare)")
    if any(k.startswith("compressed") for k in kinds) and compressed is None:
        reuse = keep_compressed is not None and (Path(keep_compressed) / MANIFEST).is_file()
        if reuse:
            compressed = str(keep_compressed)
        else:
            if keep_compressed is not None:
                target = Path(keep_compressed)
            else:
                tmp = Path(tempfile.mkdtemp(prefix="pocketsd-bench-"))
                target = tmp / "compressed"
            if progress:
                progress(f"compressing {source.spec} with `pocketsd compress` (pass --compressed DIR to skip)")
            try:
                compressed = str(compress_reference(model, target))
            except BaseException:
                if tmp is not None:
                    import shutil

                    shutil.rmtree(tmp, ignore_errors=True)
                raise
    if compressed is not None and resolve_model(compressed).kind != "compressed":
        raise BadInput(f"--compressed {compressed} is not a compressed model folder (from `pocketsd compress`)")
    configs = {"fp16": Config("fp16", str(source.path or source.spec), device=device),
               "compressed-dense": Config("compressed-dense", str(compressed), "dense", device),
               "compressed-packed": Config("compressed-packed", str(compressed), "packed", device)}
    results = []
    started = time.time()
    try:
        for kind in kinds:
            if progress:
                progress(f"{kind}: {len(prompts)} prompts × {len(seeds)} seeds × {steps} steps in a fresh process")
            results.append(_run_config(configs[kind], prompts, seeds, steps, threads))
    finally:
        if tmp is not None:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    ratios(results)
    import platform

    from .data.model_card import reference_model_record_if_any

    doc = {"benchmark": "generate", "reference_model": reference_model_record_if_any(source.path), "settings": {"steps": steps, "prompts": list(prompts), "seeds": list(seeds),
                                                  "threads": threads, "size": results[0]["size"] if results else None,
                                                  "model": source.spec, "compressed": compressed if not tmp else "(temporary)"},
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
           "wall_s": round(time.time() - started, 1), "results": results, "skipped": skipped}
    write_json(out_dir / "generate.json", doc)
    from .artifacts import atomic_file

    with atomic_file(out_dir / "generate.md", "w") as fh:
        fh.write(markdown(doc))
    doc["plot"] = _plot(doc, out_dir / "generate.png")
    return doc


def worker_main(payload: str) -> None:
    args = json.loads(payload)
    result = run_worker(Config(**args["config"]), args["prompts"], args["seeds"], args["steps"], args["threads"])
    print(json.dumps(result, default=float))


if __name__ == "__main__":  # the worker process `_run_config` starts; users run `pocketsd bench`
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2])
    else:
        sys.exit("internal entry point of `pocketsd bench`; run `pocketsd bench` instead")
