"""The evaluation protocol `pocketsd eval` runs: the same prompts and seeds through two models, every image kept on
disk, the metrics computed once.

Why the images come from a callable. eval is a stage and stages never import each other, so this module cannot call
the pipeline stage's generation. The caller — the top floor's `pocketsd.evaluate` for the command, a benchmark for
an in-memory UNet — hands each model in as a `ModelSide`: a name, the settings that decide its pixels, and `open()`,
which loads the model and returns `make(prompt, seed) -> PIL image`. The protocol owns the rest: which images exist,
which must be made and by which process, scoring, and the report. (The other choice, an eval stage that only scores
image folders while the command generates into them, would put resume, seeds and sharding of generation on the
top floor, next to argument parsing; here they are one tested unit, and the top floor only wires.)

The run folder (`--out DIR`):

    DIR/images/<model>-<settings key>/settings.json             what decided these pixels (model, fingerprint, steps…)
    DIR/images/<model>-<settings key>/<prompt id>_s<seed>.png   one image per prompt, seed = prompt_seed(id, base)
    DIR/manifest.json    what this run used: both sides' settings and folders, images made and reused
    DIR/eval.json        per metric: mean, 95 % interval, n, per-image values, real_weights; skips with their line;
                         prompts, seeds, settings, timings, versions
    DIR/eval.md          the same as a table; DIR/eval_grid.png (A | B per prompt, worst PSNR first);
                         DIR/eval_plot.png (per-image distributions)

Resume, and more metrics later: an image folder's name carries a hash of its settings, so a re-run with the same
settings finds its images and makes only the missing ones (each PNG is written atomically: a file that exists is
whole), and a run with other settings (steps, model files, device…) gets a folder of its own. Metrics are always
recomputed from the images, which is cheap next to generating them.

Scale-out: under `accelerate launch` (GPUs) or `torchrun` (CPU processes) every process makes a contiguous share of
the missing images (`sharding.shard`), then scores a contiguous share of the prompts (the per-image networks run on
its own device), and the main process merges the partial states (`Evaluation.merge`) and computes every mean,
interval and FID once, in prompt order — so the result equals the one-process run. Every process must see DIR (one
machine, or a shared filesystem).
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..artifacts import atomic_file, write_json
from ..data.prompt_sets import Prompt, PromptSet, prompt_seed
from ..errors import BadInput
from . import sharding
from .results import MetricResult, image_name, load_image, results_of  # noqa: F401  (re-exported)
from .scoring import METRICS, NEEDS_WEIGHTS, PAIRED, MetricWeights

RUN_FORMAT = "pocketsd-eval"
RUN_VERSION = 1
SETTINGS_FILE = "settings.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
ROLES = ("model", "against")  # A (the model judged) and B (what it is compared with)

ImageMaker = Callable[[Prompt, int], Any]  # (prompt, seed) → PIL image
Progress = Callable[..., None]  # (task, advance, total, detail="") as `ui.task_progress` draws it


@dataclass(frozen=True)
class ModelSide:
    """One model of the comparison: `settings` must hold everything that decides its pixels (the image folder is
    named by their hash); `open()` loads it and returns the image maker. A maker may carry `notes` (warnings worth
    keeping) and `close()`."""

    name: str
    settings: dict
    open: Callable[[], ImageMaker]

    @property
    def key(self) -> str:
        return settings_key(self.settings)

    @property
    def folder_name(self) -> str:
        return f"{slug(self.name)}-{self.key}"


@dataclass
class EvalPlan:
    prompts: PromptSet
    out: Path
    metrics: tuple[str, ...] = ("psnr", "ssim", "adherence")
    seed_base: int = 0
    images: Path | None = None  # where the image folders live (default OUT/images; share it between runs)
    reference_images: Path | None = None  # FID against these images instead of the --against model's
    weights: MetricWeights = field(default_factory=MetricWeights)
    random_weights: bool = False  # CI: random-weight LPIPS/FID, marked real_weights=false
    device: str = "cpu"  # where the metric networks run
    fid_bootstrap: int = 100
    batch_size: int = 16
    grid_pairs: int = 16

    @property
    def image_root(self) -> Path:
        return Path(self.images) if self.images is not None else Path(self.out) / "images"

    def seed_of(self, prompt: Prompt) -> int:
        return prompt_seed(prompt.id, self.seed_base)


# ---- names -------------------------------------------------------------------------------------------------------
def settings_key(settings: dict) -> str:
    """12 hex digits of sha256 over the settings as canonical JSON."""
    text = json.dumps(settings, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe short form of a model name (the settings key keeps folders apart, not this)."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text).rstrip("/").split("/")[-1] or "model").strip("._") or "model"
    return base[:limit]


# ---- checks before anything loads --------------------------------------------------------------------------------
def check_plan(plan: EvalPlan, has_against: bool) -> None:
    """Bad input that costs nothing to find (one line, exit 2 through BadInput)."""
    unknown = [m for m in plan.metrics if m not in METRICS]
    if unknown:
        raise BadInput(f"unknown metric {unknown[0]!r}; known: {', '.join(METRICS)}")
    if not plan.metrics:
        raise BadInput("no metric to compute")
    if len(plan.prompts) < 1:
        raise BadInput("the prompt set is empty")
    if not has_against:
        paired = [m for m in plan.metrics if m in PAIRED]
        if paired:
            raise BadInput(f"{paired[0]} compares each image with the other model's image of the same prompt and "
                           "seed: add --against MODEL")
        if "fid" in plan.metrics and plan.reference_images is None:
            raise BadInput("fid needs a second image set: add --against MODEL or --reference-images DIR")
    if "adherence" in plan.metrics and any(p.scene is None for p in plan.prompts):
        raise BadInput("adherence reads the reference model's grammar back from pixels; use --prompts reference "
                       "(or reference-all)")
    if plan.batch_size < 1:
        raise BadInput(f"--batch-size must be at least 1, got {plan.batch_size}")
    if plan.fid_bootstrap < 0 or plan.fid_bootstrap == 1:
        raise BadInput(f"--fid-bootstrap must be 0 (no interval) or at least 2 resamples, got {plan.fid_bootstrap}")
    if plan.grid_pairs < 0:
        raise BadInput(f"--grid must be 0 or more pairs, got {plan.grid_pairs}")
    out = Path(plan.out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out} is a file; give a folder")
    if not out.expanduser().resolve().parent.is_dir():
        raise BadInput(f"--out {out}: folder {out.expanduser().resolve().parent} does not exist (create it first)")
    if out.is_dir():
        _check_run_folder(out)
    if plan.images is not None and Path(plan.images).exists() and not Path(plan.images).is_dir():
        raise BadInput(f"--images {plan.images} is a file; give a folder")
    if plan.reference_images is not None:
        reference_files(plan)


OUTPUT_FILES = ("manifest.json", "eval.json", "eval.md", "eval_grid.png", "eval_plot.png")


def _check_run_folder(out: Path) -> None:
    """--out may be a new folder, an earlier run's (resumed) or any folder without our output names in it; never one
    whose eval.json or manifest.json PocketSD did not write (they would be replaced)."""
    manifest = out / "manifest.json"
    ours = False
    if manifest.is_file():
        try:
            ours = json.loads(manifest.read_text(encoding="utf-8")).get("format") == RUN_FORMAT + "-manifest"
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            ours = False
    if not ours:
        clash = [name for name in OUTPUT_FILES if (out / name).exists()]
        if clash:
            raise BadInput(f"--out {out} already holds {clash[0]}, which is not from a `pocketsd eval` run; give "
                           "another --out folder (nothing there was changed)")


def check_resume(plan: EvalPlan, folders: dict[str, Path], sides: dict[str, "ModelSide"]) -> None:
    """What an earlier run left in the image folders must be this run's: settings.json readable and equal, and every
    existing image whole and made for the same prompt text (ids of a plain text file are line numbers, so another
    file's line 3 has the same name). Checked for every side before anything is written."""
    for role, side in sides.items():
        folder = folders[role]
        if folder.exists() and not folder.is_dir():
            raise BadInput(f"{folder} is a file where the image folder of {side.name} goes; remove it")
        path = folder / SETTINGS_FILE
        if path.exists():
            try:
                old = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(old, dict):
                    raise ValueError("not a JSON object")
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                raise BadInput(f"{path} is not readable ({type(exc).__name__}); remove the folder {folder} or use "
                               "another --images/--out") from None
            if old.get("key") != side.key or old.get("settings") != _jsonable(side.settings):
                raise BadInput(f"{folder} holds images made with other settings (its {SETTINGS_FILE} differs); "
                               "remove the folder or use another --images/--out")
        for prompt in plan.prompts:
            image = folder / image_name(prompt.id, plan.seed_of(prompt))
            if image.exists():
                _check_existing_image(image, prompt)


def _check_existing_image(path: Path, prompt: Prompt) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            made_for = im.info.get("prompt")  # save_image's text chunks precede the pixels: read at open, no decode
            # every chunk's CRC and the file's end, without inflating pixels (a resume of thousands of images stays
            # cheap): a truncated or bit-flipped PNG fails here, not at scoring after everything else was generated
            im.verify()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise BadInput(f"{path} is damaged ({type(exc).__name__}); delete it and re-run to make it again") from None
    if made_for is not None and made_for != prompt.text:
        raise BadInput(f"{path} was made for another prompt ({made_for[:40]!r}, not {prompt.id}'s "
                       f"{prompt.text[:40]!r}): this folder belongs to another prompt set; use another --out/--images")


def reference_files(plan: EvalPlan) -> tuple[list[Path], str]:
    """The real images FID compares with, and how they were chosen. If the folder holds an image named after every
    prompt id (MJHQ-30K's `<category>/<image id>.jpg` does), exactly those; otherwise every image in it."""
    folder = Path(plan.reference_images).expanduser()
    if not folder.is_dir():
        raise BadInput(f"--reference-images {folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if len(files) < 2:
        raise BadInput(f"--reference-images {folder} holds {len(files)} images (.png/.jpg/.webp); FID needs at "
                       "least 2")
    by_stem: dict[str, Path] = {}
    for f in files:
        by_stem.setdefault(f.stem, f)
    matched = [by_stem[p.id] for p in plan.prompts if p.id in by_stem]
    if len(matched) == len(plan.prompts) and len(matched) >= 2:
        return matched, f"the {len(matched)} images named after the prompt ids"
    return files, (f"all {len(files)} images in the folder ({len(matched)} of {len(plan.prompts)} prompt ids have an "
                   "image named after them)")


# ---- the run -----------------------------------------------------------------------------------------------------
def run_eval(plan: EvalPlan, model: ModelSide, against: ModelSide | None = None, *,
             progress: Progress | None = None, state=None) -> dict | None:
    """Generate what is missing, score, write the reports. Returns eval.json's document on the main process and None
    on the others."""
    t_start = time.perf_counter()
    check_plan(plan, against is not None)
    state = state or sharding.process_state()
    main = state.is_main_process
    progress = progress if (progress is not None and main) else (lambda *a, **k: None)
    sides = {"model": model, **({"against": against} if against is not None else {})}
    folders = {role: plan.image_root / side.folder_name for role, side in sides.items()}
    if main:
        check_resume(plan, folders, sides)
        for role, side in sides.items():
            _prepare_folder(folders[role], side)
    sharding.wait_for_everyone(state)
    prompts = list(plan.prompts)
    todo = {role: [p for p in prompts if not (folders[role] / image_name(p.id, plan.seed_of(p))).is_file()]
            for role in sides}
    if against is not None and folders["model"] == folders["against"]:
        todo["against"] = []  # the same model and settings: A's images are B's (PSNR infinite, as it should be)
    sharding.wait_for_everyone(state)  # every process has listed what exists before anyone writes

    made = {}
    for role, side in sides.items():
        mine = sharding.shard(todo[role], state)
        made[role] = _generate(side, role, mine, folders[role], plan, progress, len(todo[role]))
    per_process = sharding.gather([made], state)
    sharding.wait_for_everyone(state)

    t_score = time.perf_counter()
    results, reference_note = _score(plan, prompts, folders, against is not None, state, progress)
    score_seconds = time.perf_counter() - t_score
    if not main:
        return None
    doc = _document(plan, prompts, sides, folders, todo, per_process, results, reference_note, state,
                    {"score": round(score_seconds, 3), "total": round(time.perf_counter() - t_start, 3)})
    _write_outputs(plan, doc, folders)
    return doc


def _prepare_folder(folder: Path, side: ModelSide) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SETTINGS_FILE
    record = {"format": RUN_FORMAT, "version": RUN_VERSION, "name": side.name, "key": side.key,
              "settings": _jsonable(side.settings)}
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("key") != side.key or old.get("settings") != record["settings"]:
            raise BadInput(f"{folder} holds images made with other settings (its {SETTINGS_FILE} differs); "
                           "remove the folder or use another --images/--out")
        return
    write_json(path, record)


def _generate(side: ModelSide, role: str, prompts: list[Prompt], folder: Path, plan: EvalPlan, progress: Progress,
              total: int) -> dict:
    """This process's share of the missing images of one side; the model opens only if there is one to make."""
    stats = {"made": 0, "seconds": 0.0, "open_seconds": 0.0, "notes": []}
    if not prompts:
        return stats
    label = f"generate {'A' if role == 'model' else 'B'}"
    t0 = time.perf_counter()
    make = side.open()
    stats["open_seconds"] = round(time.perf_counter() - t0, 3)
    try:
        for prompt in prompts:
            seed = plan.seed_of(prompt)
            image = make(prompt, seed)
            save_image(image, folder / image_name(prompt.id, seed), prompt, seed, side)
            stats["made"] += 1
            progress(label, 1, total, prompt.id)
        stats["notes"] = list(getattr(make, "notes", []))
    finally:
        close = getattr(make, "close", None)
        if close is not None:
            close()
        del make
        gc.collect()  # the next side's model must not sit beside this one
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    return stats


def save_image(image, path: Path, prompt: Prompt, seed: int, side: ModelSide) -> None:
    """The PNG, atomically, with what made it in its text metadata."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in (("prompt", prompt.text), ("prompt_id", prompt.id), ("seed", str(seed)),
                       ("model", side.name), ("settings_key", side.key)):
        info.add_text(key, value)
    with atomic_file(path, "wb") as fh:
        image.convert("RGB").save(fh, format="PNG", pnginfo=info)


def _score(plan: EvalPlan, prompts: list[Prompt], folders: dict[str, Path], has_against: bool, state,
           progress: Progress) -> tuple[dict[str, MetricResult] | None, str | None]:
    from .scoring import Evaluation, load_scorers

    scorers = load_scorers(plan.metrics, plan.weights, plan.device, plan.random_weights)
    folder_fid = plan.reference_images is not None and "fid" in plan.metrics
    metrics = tuple(m for m in plan.metrics if not (folder_fid and m == "fid"))
    fid = scorers.get("fid") if folder_fid and not isinstance(scorers.get("fid"), MetricResult) else None

    mine = sharding.shard(prompts, state)
    ev = Evaluation(metrics, scorers, plan.fid_bootstrap)
    features: dict[str, list] = {"model": [], "against": [], "real": []}
    for start in range(0, len(mine), plan.batch_size):
        batch = mine[start:start + plan.batch_size]
        test = [load_image(folders["model"] / image_name(p.id, plan.seed_of(p))) for p in batch]
        ref = [load_image(folders["against"] / image_name(p.id, plan.seed_of(p))) for p in batch] \
            if has_against else None
        ev.add(test, batch, reference=ref)
        if fid is not None:
            features["model"].append(fid.features(test, plan.batch_size))
            if ref is not None:
                features["against"].append(fid.features(ref, plan.batch_size))
        progress("score", len(batch), len(mine))
    note = None
    if folder_fid:
        files, note = reference_files(plan)
        if fid is not None:
            my_files = sharding.shard(files, state)
            for start in range(0, len(my_files), plan.batch_size):
                chunk = [load_image(f) for f in my_files[start:start + plan.batch_size]]
                features["real"].append(fid.features(chunk, plan.batch_size))
                progress("score reference images", len(chunk), len(my_files))
    parts = sharding.gather([{"eval": ev.partial(), "features": features}], state)
    if not state.is_main_process:
        return None, note
    merged = Evaluation.merge([p["eval"] for p in parts], scorers, metrics, plan.fid_bootstrap)
    results = merged.results()
    if folder_fid:
        results.update(_folder_fid(scorers["fid"], parts, has_against, plan.fid_bootstrap, note))
    ordered = {}
    for name in METRICS:  # the metric layer's order; `<name>_reference` is the --against model: call it so
        for key in (name, f"{name}_reference"):
            if key in results:
                result = results[key]
                new_key = key.replace("_reference", "_against")
                result.name = new_key
                if result.skipped:
                    result.skipped = result.skipped.replace(f"skipped {key}:", f"skipped {new_key}:")
                ordered[new_key] = result
    return ordered, note


def _folder_fid(scorer, parts: list[dict], has_against: bool, bootstrap: int, note: str) -> dict:
    import torch

    if isinstance(scorer, MetricResult):  # weights missing: the skip line
        out = {"fid": scorer}
        if has_against:
            out["fid_reference"] = MetricResult.skip("fid_reference", scorer.skipped)
        return out
    real = torch.cat([t for p in parts for t in p["features"]["real"]])
    out = {}
    for role, key in (("model", "fid"), ("against", "fid_reference")):
        if role == "against" and not has_against:
            continue
        fake = torch.cat([t for p in parts for t in p["features"][role]])
        result = scorer.score_features(real, fake, bootstrap=bootstrap)
        result.name = key
        if not result.skipped:
            result.notes.insert(0, f"against --reference-images: {note}")
        out[key] = result
    return out


# ---- the document ------------------------------------------------------------------------------------------------
def _document(plan: EvalPlan, prompts: list[Prompt], sides: dict[str, ModelSide], folders: dict[str, Path],
              todo: dict[str, list], per_process: list[dict], results: dict[str, MetricResult],
              reference_note: str | None, state, timings: dict) -> dict:
    models = {}
    generate_timings = {}
    for role, side in sides.items():
        stats = [p[role] for p in per_process]
        made = sum(s["made"] for s in stats)
        seconds = [s["seconds"] for s in stats]
        models[role] = {"name": side.name, "settings": _jsonable(side.settings), "settings_key": side.key,
                        "images": _relative(folders[role], plan.out), "made": made, "reused": len(prompts) - made,
                        "made_per_process": [s["made"] for s in stats],
                        "notes": sorted({n for s in stats for n in s["notes"]})}
        generate_timings[role] = {"wall_s": round(max(seconds), 3), "process_s": round(sum(seconds), 3),
                                  "per_image_s": round(sum(seconds) / made, 4) if made else None}
    skipped = [r.skipped for r in results.values() if r.skipped]
    return {
        "format": RUN_FORMAT, "version": RUN_VERSION, "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "models": models,
        "prompts": plan.prompts.describe(),
        "seed_base": plan.seed_base, "seed_rule": "prompt_seed(id, seed_base): sha256 of '<base>:<id>'",
        "ids": [p.id for p in prompts], "seeds": [plan.seed_of(p) for p in prompts],
        "metrics": {k: r.to_dict() for k, r in results.items()},
        "real_weights": {k: r.real_weights for k, r in results.items() if k.split("_against")[0] in NEEDS_WEIGHTS
                         and r.ok},
        "skipped": skipped,
        "reference_images": None if plan.reference_images is None else
        {"folder": str(plan.reference_images), "used": reference_note},
        "processes": state.num_processes, "metric_device": plan.device,
        "timings_s": {"generate": generate_timings, **timings},
        "load_average": _load_average(), "versions": versions(),
    }


def _write_outputs(plan: EvalPlan, doc: dict, folders: dict[str, Path]) -> None:
    from .report import eval_markdown, grid_image, plot_metrics

    out = Path(plan.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "manifest.json", {
        "format": RUN_FORMAT + "-manifest", "version": RUN_VERSION, "prompts": doc["prompts"],
        "seed_base": doc["seed_base"], "ids": doc["ids"], "seeds": doc["seeds"],
        "models": {role: {k: m[k] for k in ("name", "settings", "settings_key", "images", "made", "reused")}
                   for role, m in doc["models"].items()}})
    doc["outputs"] = {"json": "eval.json", "markdown": "eval.md", "grid": None, "plot": None}
    if plan.grid_pairs > 0:
        grid_image(doc, folders, plan, out / "eval_grid.png")
        doc["outputs"]["grid"] = "eval_grid.png"
    try:
        if plot_metrics(doc, out / "eval_plot.png"):
            doc["outputs"]["plot"] = "eval_plot.png"
    except ImportError:  # matplotlib comes with the bench extra; the numbers do not need it
        doc["outputs"]["plot_skipped"] = "eval_plot.png not drawn: matplotlib is not installed (pip install matplotlib)"
    write_json(out / "eval.json", doc)
    with atomic_file(out / "eval.md", "w") as fh:
        fh.write(eval_markdown(doc))


def _relative(path: Path, base: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(base).resolve()))
    except ValueError:
        return str(path)


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("pocketsd", "torch", "diffusers", "transformers", "torchmetrics", "accelerate", "numpy", "pillow"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
