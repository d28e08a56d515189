"""`pocketsd eval` (and `python -m pocketsd.eval`, which `accelerate launch -m pocketsd.eval` runs): the top floor
that wires the pipeline stage's generation into the eval stage's protocol.

Stages never import each other, so the eval protocol (`eval.protocol.run_eval`) takes each model as a
`ModelSide` whose `open()` returns `make(prompt, seed) -> PIL image`; this module builds those sides from
`GenerateOptions` through the one generation path (`GenerationSession.open` → `session.generate`). Benchmarks that
evaluate an in-memory UNet use `model_side(..., unet=…)` from here, so they run the same protocol.

A side's settings — what decides its pixels — are the model (resolved path and a fingerprint of its files: size and
modification time of each, so a model rewritten in place gets new images), steps, guidance, scheduler, size,
negative prompt, backend, compute units, device and UNet mode. The image folder is named by their hash.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
from pathlib import Path

from .errors import BadInput

METRIC_ALIASES = {"clip": "clip_score", "ir": "image_reward", "imagereward": "image_reward",
                  "clip_score": "clip_score", "image_reward": "image_reward"}
DEFAULT_OUT = "pocketsd-eval"
# A prompt longer than this is a file read wrongly (a whole document on one line), not a caption: CLIP reads 77 tokens
# (a few hundred characters) and the rest only fills eval.json and every PNG's metadata.
MAX_PROMPT_CHARS = 10_000


# ---- arguments (cli.py adds the `eval` parser and calls `run_command`) --------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="the model judged (A): any --model of `generate` (default: the reference model)")
    p.add_argument("--against", metavar="MODEL", help="the model A is compared with (B), e.g. the 16-bit original")
    p.add_argument("--prompts", metavar="SET", help="built-in set (pocketsd, reference, reference-all) or a prompt "
                   "file: MJHQ-30K meta_data.json, sDCI.yaml, COCO captions .json, PartiPrompts.tsv, plain text "
                   "(default: reference for the reference model, pocketsd otherwise)")
    p.add_argument("--count", type=int, help="use N prompts of the set, chosen deterministically (default: all)")
    p.add_argument("--subsample-seed", type=int, default=0,
                   help="seed of the subsample (default 0: DeepCompressor's, so MJHQ/sDCI subsets match SVDQuant's)")
    p.add_argument("--categories", help="comma-separated categories to keep (MJHQ, PartiPrompts, pocketsd)")
    p.add_argument("--seed-base", type=int, default=0, help="each prompt's seed is a hash of its id and this (default 0)")
    p.add_argument("--metrics", help="comma-separated: psnr, ssim, lpips, fid, clip, ir, adherence (default: every "
                   "one that applies; those whose weights are missing say what to download)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"run folder: images, eval.json, eval.md, grid, plot "
                   f"(default ./{DEFAULT_OUT}); re-running resumes and reuses the images")
    p.add_argument("--images", metavar="DIR", help="where the image folders go (default OUT/images); share it between "
                   "runs to reuse a model's images")
    p.add_argument("--reference-images", metavar="DIR", help="FID against these images (e.g. MJHQ-30K's) instead "
                   "of B's; images named after the prompt ids are matched to them")
    p.add_argument("--steps", type=int, help="denoising steps (default 20)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance (default 5.0)")
    p.add_argument("--scheduler", choices=["euler", "dpmpp2m", "ddim"], help="default euler")
    p.add_argument("--size", metavar="WxH", help="image size (default: the model's native size)")
    p.add_argument("--negative", help="negative prompt for every image (default none)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "coreml"],
                   help="auto: coreml for a Core ML bundle (macOS), torch otherwise")
    p.add_argument("--compute-units", choices=["all", "cpu_only", "cpu_and_gpu", "cpu_and_ne"],
                   help="Core ML compute units (coreml backend only)")
    p.add_argument("--unet-mode", default="dense", choices=["dense", "packed"], help="compressed models' UNet mode")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="torch device for generation and the metric networks (default auto: CUDA, MPS, then CPU; "
                        "under accelerate each process uses its own GPU)")
    p.add_argument("--allow-pickle", action="store_true", help="allow .ckpt/.bin/.pt checkpoints (can run code)")
    p.add_argument("--lpips-weights", metavar="FILE", help="AlexNet checkpoint (else $POCKETSD_LPIPS_ALEXNET, "
                   "then torch hub's cache)")
    p.add_argument("--fid-weights", metavar="FILE", help="FID Inception weights (else $POCKETSD_FID_INCEPTION, then "
                   "torch hub's cache)")
    p.add_argument("--clip-model", metavar="DIR|ID", help="CLIP model (else $POCKETSD_CLIP_MODEL, then "
                   "openai/clip-vit-large-patch14 in the Hugging Face cache)")
    p.add_argument("--image-reward", metavar="DIR|FILE", help="ImageReward checkpoint (else $POCKETSD_IMAGEREWARD, "
                   "then ~/.cache/ImageReward, then THUDM/ImageReward in the Hugging Face cache)")
    p.add_argument("--image-reward-tokenizer", metavar="DIR|ID", help="BERT tokenizer for ImageReward (else "
                   "$POCKETSD_IMAGEREWARD_TOKENIZER, then bert-base-uncased in the Hugging Face cache)")
    p.add_argument("--fid-bootstrap", type=int, default=100, help="bootstrap resamples for FID's interval "
                   "(default 100; 0: no interval)")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch for the metric networks")
    p.add_argument("--grid", type=int, default=16, help="image pairs in eval_grid.png, worst PSNR first (default 16)")
    p.add_argument("--random-weights", action="store_true", help="testing only: LPIPS and FID on random-weight "
                   "networks, which exercises the code and measures nothing (the report says so)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def parse_metrics(text: str | None) -> tuple[str, ...] | None:
    """`psnr,ssim,clip,ir` → the metric layer's names; None when not given (every metric that applies)."""
    from .eval.scoring import METRICS

    if text is None:
        return None
    out: list[str] = []
    for raw in text.split(","):
        name = raw.strip().lower()
        if not name:
            continue
        name = METRIC_ALIASES.get(name, name)
        if name not in METRICS:
            raise BadInput(f"--metrics: unknown metric {raw.strip()!r}; choose from psnr, ssim, lpips, fid, clip, "
                           "ir, adherence")
        if name not in out:
            out.append(name)
    if not out:
        raise BadInput("--metrics is empty; choose from psnr, ssim, lpips, fid, clip, ir, adherence")
    return tuple(out)


def default_metrics(has_against: bool, has_reference_images: bool, has_scenes: bool) -> tuple[str, ...]:
    """Every metric that can run on this comparison; the ones whose weights are missing become skip lines."""
    from .eval.scoring import METRICS, PAIRED

    out = []
    for name in METRICS:
        if name in PAIRED and not has_against:
            continue
        if name == "fid" and not (has_against or has_reference_images):
            continue
        if name == "adherence" and not has_scenes:
            continue
        out.append(name)
    return tuple(out)


# ---- the sides: generation through the pipeline's one session ------------------------------------------------------
class SessionImages:
    """`make(prompt, seed)` over one `GenerationSession` (the model opens once). Generation warnings are counted,
    not printed per image (a 5,000-prompt run would drown in them), and end up in eval.json as notes."""

    def __init__(self, opts, unet=None):
        from .pipeline.session import GenerationSession

        self.opts = opts
        self.session = GenerationSession.open(opts)
        if unet is not None:
            # an in-memory UNet (a benchmark's method): the backend's load hook hands it over in place of the file's
            self.session.backend.unet_transforms.append(lambda _loaded: unet)
        self.warnings: dict[str, int] = {}

    def _warn(self, message: str) -> None:
        self.warnings[message] = self.warnings.get(message, 0) + 1

    def __call__(self, prompt, seed: int):
        opts = dataclasses.replace(self.opts, prompt=prompt.text)
        return self.session.generate(opts, seed, warn=self._warn).image

    @property
    def notes(self) -> list[str]:
        return [f"{count}× {message}" for message, count in sorted(self.warnings.items())]

    def close(self) -> None:
        self.session = None


def model_fingerprint(path: Path | None) -> str | None:
    """sha256 over (relative path, size, mtime) of every file of a model: cheap for any size, and it changes when a
    model is rewritten in place."""
    if path is None:
        return None
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for f in files:
        st = f.stat()
        rel = f.name if f == path else str(f.relative_to(path))
        digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def unet_fingerprint(unet) -> str:
    """sha256 of an in-memory UNet's state dict (names, shapes, bytes)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in unet.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def model_side(opts, *, name: str | None = None, unet=None, unet_name: str | None = None):
    """A `ModelSide` for the eval protocol: generation with `opts` (a `GenerateOptions`; its prompt is replaced per
    image) — optionally with `unet` in place of the model's own UNet."""
    from .artifacts import COREML
    from .eval.protocol import ModelSide
    from .models import precheck, resolve_model
    from .models.resolve import hub_snapshot
    from .models.device import resolve_device
    from .pipeline.session import resolve_settings

    source = resolve_model(opts.model)
    precheck(source, opts.allow_pickle)
    if source.kind == COREML and sys.platform != "darwin":  # fail before any image folder is made
        raise BadInput(f"{source.spec} is a Core ML bundle: Core ML prediction needs macOS (this is {sys.platform}); "
                       "here, evaluate the model folder it was converted from (the torch backend)")
    path = hub_snapshot(source.spec) if source.kind == "hub" else source.path
    resolved = resolve_settings(opts)
    settings = {
        "model": source.spec, "kind": source.kind, "path": str(path), "fingerprint": model_fingerprint(path),
        "steps": resolved.steps, "guidance": resolved.guidance, "scheduler": resolved.scheduler,
        "size": list(opts.size) if opts.size else None, "negative": opts.negative, "backend": opts.backend,
        "compute_units": opts.compute_units, "device": resolve_device(opts.device), "unet_mode": opts.unet_mode,
    }
    if unet is not None:
        settings["unet"] = unet_name or "in-memory UNet"
        settings["unet_fingerprint"] = unet_fingerprint(unet)
    label = name or (unet_name if unet is not None and unet_name else source.spec)
    return ModelSide(label, settings, lambda: SessionImages(opts, unet))


def generate_options(args, model: str | None):
    from .pipeline.options import GenerateOptions, check_options, parse_size

    opts = GenerateOptions(prompt="(each prompt of the set)", model=model, backend=args.backend,
                           compute_units=args.compute_units, device=args.device, steps=args.steps,
                           guidance=args.guidance, size=parse_size(args.size) if args.size else None,
                           negative=args.negative, scheduler=args.scheduler, allow_pickle=args.allow_pickle,
                           unet_mode=args.unet_mode)
    check_options(opts)
    return opts


# ---- the command -------------------------------------------------------------------------------------------------
def build_plan(args):
    """Every check that needs no weights, in the order a user would fix them; returns (plan, A, B)."""
    from .data import REFERENCE_MODEL
    from .data.prompt_sets import DEFAULT_SET, REFERENCE_SET, load_prompt_set
    from .eval.protocol import EvalPlan, check_plan
    from .eval.scoring import MetricWeights
    from .models import resolve_model
    from .models.device import resolve_device

    metrics = parse_metrics(args.metrics)
    if args.count is not None and args.count < 1:
        raise BadInput(f"--count must be at least 1, got {args.count}")
    if not 0 <= args.seed_base < 2**63:
        raise BadInput(f"--seed-base must be in 0..2^63-1, got {args.seed_base}")
    for flag, value in (("--batch-size", args.batch_size), ):
        if value < 1:
            raise BadInput(f"{flag} must be at least 1, got {value}")
    model_spec = args.model
    opts_a = generate_options(args, model_spec)
    source = resolve_model(model_spec)
    is_reference = source.path is not None and Path(source.path).resolve() == REFERENCE_MODEL.resolve()
    opts_b = None
    if args.against is not None:
        try:
            resolve_model(args.against)
        except BadInput as exc:
            raise BadInput(f"--against: {exc}") from None
        opts_b = dataclasses.replace(opts_a, model=args.against)
    categories = [c.strip() for c in args.categories.split(",") if c.strip()] if args.categories else None
    prompts = load_prompt_set(args.prompts or (REFERENCE_SET if is_reference else DEFAULT_SET), count=args.count,
                              seed=args.subsample_seed, categories=categories)
    check_prompts(prompts)
    has_scenes = all(p.scene is not None for p in prompts)
    if metrics is None:
        metrics = default_metrics(opts_b is not None, args.reference_images is not None, has_scenes)
    device = resolve_device(args.device)
    plan = EvalPlan(prompts=prompts, out=Path(args.out), metrics=metrics, seed_base=args.seed_base,
                    images=Path(args.images) if args.images else None,
                    reference_images=Path(args.reference_images) if args.reference_images else None,
                    weights=MetricWeights(args.lpips_weights, args.fid_weights, args.clip_model, args.image_reward,
                                          args.image_reward_tokenizer),
                    random_weights=args.random_weights, device=device, fid_bootstrap=args.fid_bootstrap,
                    batch_size=args.batch_size, grid_pairs=args.grid)
    check_plan(plan, opts_b is not None)
    side_a = model_side(opts_a)
    side_b = None
    if opts_b is not None:
        try:
            side_b = model_side(opts_b)
        except BadInput as exc:
            raise BadInput(f"--against: {exc}") from None
    return plan, side_a, side_b


def check_prompts(prompts) -> None:
    """A prompt file's lines, before anything generates: none huge, and in a plain text file no line twice (its ids
    are line numbers, so a repeated line would be generated and counted twice in every mean)."""
    for p in prompts:
        if len(p.text) > MAX_PROMPT_CHARS:
            raise BadInput(f"{prompts.source}: prompt {p.id} is {len(p.text):,} characters, over the "
                           f"{MAX_PROMPT_CHARS:,} limit (one prompt a line; CLIP reads only the first 77 tokens)")
    if prompts.format == "text":
        first: dict[str, str] = {}
        for p in prompts:
            if p.text in first:
                raise BadInput(f"{prompts.source}: {p.id} repeats {first[p.text]} ({p.text[:60]!r}); remove the "
                               "repeated line (each prompt must count once in the means)")
            first[p.text] = p.id


def run_command(args) -> int:
    """`pocketsd eval …`: the plan, the run (sharded when launched with accelerate/torchrun), the summary."""
    from .eval import sharding
    from .eval.protocol import run_eval

    state = sharding.process_state()  # first: under accelerate this pins each process's GPU
    plan, side_a, side_b = build_plan(args)
    from .ui import task_progress

    with task_progress(not args.quiet and state.is_main_process) as progress:
        doc = run_eval(plan, side_a, side_b, progress=progress, state=state)
    if doc is None:
        return 0
    print_summary(doc, plan.out)
    return 0


def print_summary(doc: dict, out: Path) -> None:
    from .eval.protocol import results_of

    for key, result in results_of(doc).items():
        line = result.line() if result.skipped else result.line().replace(result.name, key, 1)
        print(line)
    made = ", ".join(f"{'A' if role == 'model' else 'B'} {m['made']} made / {m['reused']} reused"
                     for role, m in doc["models"].items())
    print(f"images: {made}")
    if doc["outputs"].get("plot_skipped"):
        print(doc["outputs"]["plot_skipped"])
    print(f"wrote {Path(out) / 'eval.json'}, {Path(out) / 'eval.md'}"
          + "".join(f", {Path(out) / doc['outputs'][k]}" for k in ("grid", "plot") if doc["outputs"].get(k)))
