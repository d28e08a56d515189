"""The `pocketsd` command: argument parsing and messages only; the work lives in the stages.

Exit codes (shared/CONTRACT.md): 0 done, 2 bad input (one line on stderr), 1 anything else.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from .entry import OneLineParser as _OneLineParser
from .entry import quiet_libraries as _quiet_libraries
from .entry import run_entry
from .errors import BadInput


# ---- generate (owner: generation) -------------------------------------------------------------
def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="text/image/sketch → image with any model kind")
    p.add_argument("prompt", help="what to draw, e.g. \"a red circle on a white background\"")
    p.add_argument("--model", help="diffusers folder, compressed folder, Core ML bundle, .safetensors file or hub id "
                   "(default: the embedded reference model)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "coreml"],
                   help="auto: coreml for a Core ML bundle, torch otherwise")
    p.add_argument("--compute-units", choices=["all", "cpu_only", "cpu_and_gpu", "cpu_and_ne"],
                   help="Core ML compute units (coreml backend only; default all)")
    p.add_argument("--steps", type=int, help="denoising steps (default 20, or the domain's)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 5.0; ≤ 1 turns it off)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", metavar="WxH", help="image size (default: the model's native size)")
    p.add_argument("--negative", help="negative prompt (default: none — zero embeddings for SDXL, as diffusers)")
    p.add_argument("--scheduler", choices=["euler", "dpmpp2m", "ddim"], help="default euler (or the domain's)")
    p.add_argument("--domain", help="domain preset (see `pocketsd domains`)")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]", help="LoRA file; repeatable")
    p.add_argument("--image", help="starting image (image → image)")
    p.add_argument("--strength", type=float, help="with --image/--sketch: how much to repaint, (0, 1] (default 0.8)")
    p.add_argument("--sketch", help="line drawing to follow (sketch → image)")
    p.add_argument("--controlnet", help="ControlNet conditioning on --sketch/--depth (or --image): a diffusers "
                   "ControlNetModel folder (torch), or the name of one converted into a Core ML bundle")
    p.add_argument("--controlnet-scale", type=float, default=1.0, help="ControlNet residual scale (default 1.0)")
    p.add_argument("--control-guidance-start", type=float, default=0.0,
                   help="share of the steps before the ControlNet starts (default 0.0)")
    p.add_argument("--control-guidance-end", type=float, default=1.0,
                   help="share of the steps after which the ControlNet stops (default 1.0)")
    p.add_argument("--mask", help="with --image: inpainting mask, white where the image is repainted")
    from .pipeline.options import MASK_BLUR

    p.add_argument("--mask-blur", type=int, default=MASK_BLUR,
                   help=f"px the paste-back feathers outside the mask (default {MASK_BLUR})")
    p.add_argument("--no-paste-back", action="store_true",
                   help="keep the decoded pixels outside the mask instead of the original's")
    p.add_argument("--depth", help="depth map (near = bright, any bit depth) for a depth ControlNet (--controlnet)")
    p.add_argument("--depth-invert", action="store_true", help="the depth map is near = dark")
    p.add_argument("--count", type=int, default=1, help="images to make with seeds SEED, SEED+1, … (models load once)")
    p.add_argument("--out", help="output PNG (default pocketsd-<seed>.png)")
    p.add_argument("--report", help="JSON report path (default: the PNG path with .json)")
    p.add_argument("--low-memory", action="store_true", help="load each component only while it is needed")
    p.add_argument("--allow-pickle", action="store_true", help="allow .ckpt/.bin/.pt checkpoints (can run code)")
    p.add_argument("--unet-mode", default="dense", choices=["dense", "packed"],
                   help="compressed models: dense (dequantize once, fast) or packed (4-bit in memory)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"],
                   help="torch device (default cpu; auto: CUDA, then Apple MPS, then CPU)")
    p.add_argument("--no-verify", action="store_true", help="skip checking the model's recorded sha256 digests")
    p.add_argument("--force", action="store_true",
                   help="overwrite an --out/--report file that exists but is not a PocketSD image/report")
    p.add_argument("--quiet", action="store_true", help="no progress bar or table (the report is still written)")
    p.set_defaults(func=_run_generate)


def _parse_lora(text: str):
    from .palettize.lora import parse_lora_arg

    return parse_lora_arg(text)


def _run_generate(args) -> int:
    from pathlib import Path

    _quiet_libraries()
    from rich.console import Console

    from .pipeline.options import GenerateOptions, parse_size
    from .pipeline.run import run

    opts = GenerateOptions(
        prompt=args.prompt, model=args.model, backend=args.backend, compute_units=args.compute_units,
        steps=args.steps, guidance=args.guidance, seed=args.seed, size=parse_size(args.size) if args.size else None,
        negative=args.negative, scheduler=args.scheduler, domain=args.domain,
        loras=[_parse_lora(x) for x in args.lora], image=Path(args.image) if args.image else None,
        strength=args.strength, sketch=Path(args.sketch) if args.sketch else None,
        controlnet=Path(args.controlnet) if args.controlnet else None, count=args.count,
        controlnet_scale=args.controlnet_scale, control_guidance_start=args.control_guidance_start,
        control_guidance_end=args.control_guidance_end, mask=Path(args.mask) if args.mask else None,
        mask_blur=args.mask_blur, paste_back=not args.no_paste_back, depth=Path(args.depth) if args.depth else None,
        depth_invert=args.depth_invert,
        out=Path(args.out) if args.out else None, report=Path(args.report) if args.report else None,
        low_memory=args.low_memory, allow_pickle=args.allow_pickle, unet_mode=args.unet_mode, device=args.device,
        verify=not args.no_verify, force=args.force)
    console = None if args.quiet else Console(stderr=False)
    reports = run(opts, progress=not args.quiet, console=console)
    for rep in reports:
        print(f"wrote {rep['output']}")
    return 0


# ---- compress / info of compressed folders (owner: palettize) --------------------------------
def _add_compress(sub) -> None:
    from .palettize.calibrate import CalibrationSettings as C
    from .palettize.recipes import DEFAULT_BUDGET, FIXED, MAX_BUDGET, Recipe as R

    p = sub.add_parser("compress", help="4-bit + low-rank compression of a model's UNet and text encoders")
    p.add_argument("--model", default=None, help="diffusers folder or cached hub id (default: the reference model)")
    p.add_argument("--out", required=True, help="compressed model folder to write (replaced atomically; an existing "
                   "folder only if it is a compressed folder PocketSD wrote, or with --force)")
    p.add_argument("--force", action="store_true", help="replace --out even if it is not a compressed folder "
                   "PocketSD wrote (never the --model folder itself)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--recipe", default=None, help=f"fixed recipe: {', '.join(FIXED)} (default: the budget)")
    how.add_argument("--bits-budget", type=float, default=None,
                     help=f"effective bits per parameter to allocate ranks and bit widths under (default {DEFAULT_BUDGET:g}, "
                          f"at most {MAX_BUDGET:g})")
    p.add_argument("--quantizer", default=R.quantizer, choices=["palette", "int4", "int"],
                   help="palette: k-means LUT per group of output channels; int4: symmetric ints, scale per input block")
    p.add_argument("--group-size", type=int, default=R.group_size,
                   help=f"palette: output channels sharing a table (default {R.group_size})")
    p.add_argument("--block-size", type=int, default=R.block_size,
                   help=f"int4: input channels sharing a scale (default {R.block_size})")
    p.add_argument("--no-smoothing", action="store_true", help="disable activation smoothing (alpha = 0)")
    p.add_argument("--refine-iters", type=int, default=R.refine_iters,
                   help=f"low-rank refinement rounds (default {R.refine_iters})")
    p.add_argument("--calib-prompts", default=None, help="file with one calibration prompt per line")
    p.add_argument("--calib-count", type=int, default=C.count,
                   help=f"default calibration prompts to draw (default {C.count})")
    p.add_argument("--calib-steps", type=int, default=C.steps,
                   help=f"sampling steps per calibration prompt (default {C.steps})")
    p.add_argument("--calib-timesteps", default=C.timesteps, choices=["all", "first25", "last25"],
                   help="record layer inputs over all timesteps or only the first/last quarter of sampling")
    p.add_argument("--distill", default=R.distill, choices=["block", "whole", "off"],
                   help=f"after quantizing, train the low-rank factors, tables and biases against the fp16 model, codes "
                        f"frozen: block by block for the UNet and text encoders (one block in fp32 at a time), or the "
                        f"whole UNet at once (an fp32 copy of it) (default {R.distill})")
    p.add_argument("--distill-inputs", default=R.distill_inputs, choices=["best", "student", "fp16"],
                   help=f"block mode: train each block on the recorded fp16 inputs, on what the compressed blocks before "
                        f"it feed it, or both, keeping the better (default {R.distill_inputs})")
    p.add_argument("--distill-cache-gb", type=float, default=R.distill_cache_gb,
                   help=f"block mode: disk cap for the recorded fp16 block inputs and outputs, in GB "
                        f"(default {R.distill_cache_gb:g})")
    p.add_argument("--distill-steps", type=int, default=R.distill_steps,
                   help=f"distillation steps (per block in block mode; default {R.distill_steps}; 0: off)")
    p.add_argument("--distill-epochs", type=float, default=R.distill_epochs,
                   help=f"… but at most this many passes over the recorded fp16 outputs (default {R.distill_epochs:g})")
    p.add_argument("--distill-minutes", type=float, default=R.distill_minutes,
                   help=f"stop distilling after this many minutes of wall clock (default {R.distill_minutes:g})")
    p.add_argument("--distill-tensors", default=",".join(R.distill_tensors),
                   help="which small tensors to train: any of lowrank, table (palette tables or int4 scales), bias "
                        f"(default {','.join(R.distill_tensors)})")
    p.add_argument("--distill-lr", type=float, default=R.distill_lr,
                   help=f"Adam step relative to each tensor's RMS (default {R.distill_lr:g})")
    p.add_argument("--distill-batch", type=int, default=R.distill_batch,
                   help=f"(unconditional, conditional) pairs per step (default {R.distill_batch})")
    p.add_argument("--distill-seed", type=int, default=R.distill_seed, help="distillation seed (default 0)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"],
                   help="where calibration and the budget's probes run (default cpu; auto: CUDA, then MPS, then CPU)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="dtype the model is held in while it calibrates (auto: fp32 up to 4 GB of fp32 weights, else "
                        "bf16 on the CPU, fp16 on a GPU); every decomposition is computed in fp32")
    p.add_argument("--calib-size", metavar="WxH", help="image size calibration samples at (default: native)")
    p.add_argument("--max-unet-evals", type=int, default=C.max_unet_evaluations,
                   help=f"UNet evaluations at native size that calibration and the budget's probes may take "
                        f"(default {C.max_unet_evaluations}; probes use fewer samples or half the latent size to fit)")
    p.add_argument("--components", default="unet,text_encoder,text_encoder_2",
                   help="what to compress: any of unet, text_encoder, text_encoder_2, vae (default: the UNet and "
                        "both text encoders)")
    for component in ("text_encoder", "text_encoder_2", "vae"):
        flag = component.replace("_", "-")
        p.add_argument(f"--{flag}-bits-budget", type=float, default=None, dest=f"{component}_bits_budget",
                       help=f"budget for the {component} (default: the UNet's --bits-budget or --recipe)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_compress)


def _parse_size(text: str | None, flag: str) -> tuple[int, int] | None:
    if text is None:
        return None
    from .pipeline.options import parse_size

    return parse_size(text, flag)


def _run_compress(args) -> int:
    from pathlib import Path

    _quiet_libraries()
    from .compress.run import CompressOptions, compress_model, summary_line
    from .palettize.calibrate import CalibrationSettings
    from .palettize.recipes import make_recipe
    from .ui import task_progress

    recipe = make_recipe(args.recipe, args.bits_budget, args.quantizer, args.group_size, args.block_size,
                         smoothing=not args.no_smoothing, refine_iters=args.refine_iters,
                         distill=args.distill, distill_inputs=args.distill_inputs,
                         distill_cache_gb=args.distill_cache_gb,
                         distill_steps=args.distill_steps, distill_epochs=args.distill_epochs,
                         distill_minutes=args.distill_minutes,
                         distill_tensors=args.distill_tensors, distill_lr=args.distill_lr,
                         distill_batch=args.distill_batch, distill_seed=args.distill_seed)
    components = tuple(c.strip() for c in args.components.split(",") if c.strip())
    component_recipes = {
        c: make_recipe(None, getattr(args, f"{c}_bits_budget"), args.quantizer, args.group_size, args.block_size,
                       smoothing=not args.no_smoothing, refine_iters=args.refine_iters)
        for c in ("text_encoder", "text_encoder_2", "vae") if getattr(args, f"{c}_bits_budget") is not None}
    opts = CompressOptions(out=Path(args.out), model=args.model, recipe=recipe,
                           calibration=CalibrationSettings(count=args.calib_count, steps=args.calib_steps,
                                                           timesteps=args.calib_timesteps,
                                                           max_unet_evaluations=args.max_unet_evals,
                                                           size=_parse_size(args.calib_size, "--calib-size")),
                           calib_prompts=Path(args.calib_prompts) if args.calib_prompts else None, force=args.force,
                           components=components, component_recipes=component_recipes, device=args.device,
                           precision=args.precision)
    with task_progress(not args.quiet) as on_progress:
        manifest = compress_model(opts, on_progress, on_note=lambda m: print(f"pocketsd: {m}", file=sys.stderr))
    print(summary_line(manifest))
    print(f"wrote {args.out} (took {sum(manifest['timings_s'].values()):.0f} s); inspect it with `pocketsd info {args.out}`")
    return 0


def _add_lora(sub) -> None:
    p = sub.add_parser("lora", help="LoRA tools (train a style; merge into a compressed model's low-rank branches)")
    lsub = p.add_subparsers(dest="lora_command", required=True, parser_class=_OneLineParser)
    m = lsub.add_parser("merge", help="append LoRAs to a compressed model's low-rank branches (no re-quantizing)")
    m.add_argument("--model", required=True, help="compressed model folder (from `pocketsd compress`)")
    m.add_argument("--lora", action="append", required=True, metavar="FILE[:SCALE]",
                   help="LoRA .safetensors (diffusers/PEFT or kohya keys), optional scale; repeatable")
    m.add_argument("--out", required=True, help="new compressed model folder (written atomically)")
    m.add_argument("--force", action="store_true", help="replace --out even if it is not a compressed folder "
                   "PocketSD wrote (never --model itself)")
    m.set_defaults(func=_run_lora_merge)
    _add_lora_train(lsub)


def _run_lora_merge(args) -> int:
    import time
    from pathlib import Path

    _quiet_libraries()
    from .compress.lora_merge import merge_loras

    start = time.time()
    manifest = merge_loras(args.model, [_parse_lora(x) for x in args.lora], Path(args.out), force=args.force)
    for rec in [r for r in manifest["loras"] if r.get("merged_utc") == manifest["created_utc"]]:
        print(f"merged {rec['file']} ×{rec['scale']:g} into the {rec.get('component', 'unet')}: {rec['lowrank_concat']} "
              f"low-rank branches widened by rank {rec['rank']}, {rec['dense_fused']} fp16 layers fused")
    acc = manifest["components"]["unet"]["accounting"]
    print(f"wrote {args.out} in {time.time() - start:.1f} s (UNet {acc['total_bytes'] / 1e6:.2f} MB, "
          f"{acc['bits_per_param']:.2f} bits/param)")
    return 0


# ---- lora train (owner: train) -----------------------------------------------------------------
def _add_lora_train(lsub) -> None:
    from .train.options import TrainOptions as T

    t = lsub.add_parser("train", help="train a LoRA from a folder of captioned images (fp16 or compressed model)")
    t.add_argument("--images", required=True, help="folder of training images (.png/.jpg/.jpeg/.webp/.bmp)")
    t.add_argument("--captions", help="captions file: JSON {file: caption}, JSONL/CSV with file_name,text, or "
                   "'file<TAB>caption' lines (default: a .txt beside each image, or the folder's metadata.jsonl)")
    t.add_argument("--model", help="diffusers or compressed folder (default: the embedded reference model); on a "
                   "compressed model the 4-bit codes and branches stay frozen and only the LoRA learns")
    t.add_argument("--out", required=True, help="the LoRA to write (.safetensors, diffusers/PEFT keys)")
    t.add_argument("--rank", type=int, default=T.rank, help=f"LoRA rank (default {T.rank})")
    t.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: the rank, i.e. scale 1)")
    t.add_argument("--steps", type=int, default=T.steps, help=f"optimizer steps (default {T.steps})")
    t.add_argument("--lr", type=float, default=T.lr, help=f"AdamW learning rate (default {T.lr:g})")
    t.add_argument("--batch", type=int, default=T.batch, help=f"images per step (default {T.batch})")
    t.add_argument("--resolution", type=int, default=None, help="training size in pixels (default: the model's native)")
    t.add_argument("--text-encoders", action="store_true", help="also train LoRAs on the text encoders' attention")
    t.add_argument("--unet-mode", default=T.unet_mode, choices=["packed", "dense"],
                   help="compressed models: packed keeps the 4-bit codes in memory (QLoRA), dense dequantizes once")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="torch device (default auto: CUDA, then Apple MPS, then CPU)")
    t.add_argument("--seed", type=int, default=T.seed, help="seed of the LoRA's initial values and every random draw")
    t.add_argument("--checkpoint-every", type=int, default=T.checkpoint_every,
                   help=f"save a resumable checkpoint (<out>.checkpoint/) every K steps (default {T.checkpoint_every})")
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint of an interrupted run")
    t.add_argument("--keep-checkpoint", action="store_true", help="keep the checkpoint after the LoRA is written")
    t.add_argument("--preview-every", type=int, default=None,
                   help="render preview images (<out>.previews/) every K steps (default: with each checkpoint; 0: never)")
    t.add_argument("--preview-prompt", action="append", default=[], metavar="PROMPT",
                   help="a preview prompt; repeatable (default: the first four captions)")
    t.add_argument("--preview-steps", type=int, default=T.preview_steps, help="denoising steps per preview image")
    t.add_argument("--snr-gamma", type=float, default=T.snr_gamma, help="min-SNR loss weighting gamma (default 5)")
    t.add_argument("--gradient-checkpointing", action="store_true", help="recompute UNet activations: less memory, slower")
    t.add_argument("--allow-pickle", action="store_true", help="allow .ckpt/.bin/.pt checkpoints (can run code)")
    t.add_argument("--report", help="JSON report path (default: the LoRA path with .json)")
    t.add_argument("--force", action="store_true", help="replace --out/--report even if PocketSD did not write them "
                   "(never --model or --captions)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_run_lora_train)


def _run_lora_train(args) -> int:
    from pathlib import Path

    _quiet_libraries()
    from .models.device import resolve_device
    from .train.lora import train_lora, usage_hint
    from .train.options import TrainOptions
    from .ui import task_progress

    opts = TrainOptions(
        images=Path(args.images), out=Path(args.out), captions=Path(args.captions) if args.captions else None,
        model=args.model, rank=args.rank, alpha=args.alpha, steps=args.steps, lr=args.lr, batch=args.batch,
        resolution=args.resolution, text_encoders=args.text_encoders, unet_mode=args.unet_mode,
        device=resolve_device(args.device), seed=args.seed, checkpoint_every=args.checkpoint_every, resume=args.resume,
        keep_checkpoint=args.keep_checkpoint, preview_every=args.preview_every, preview_prompts=args.preview_prompt,
        preview_steps=args.preview_steps, snr_gamma=args.snr_gamma, gradient_checkpointing=args.gradient_checkpointing,
        allow_pickle=args.allow_pickle, report=Path(args.report) if args.report else None, force=args.force)
    with task_progress(not args.quiet) as on_progress:
        report = train_lora(opts, on_progress, log=lambda msg: print(msg, file=sys.stderr))
    print(f"wrote {report['output']}: {report['layers']} UNet layers at rank {opts.rank}, {report['bytes'] / 1e3:.0f} kB, "
          f"{report['steps']} steps in {report['train_seconds'] / 60:.1f} min on {report['device']}, loss "
          f"{report['loss_first10']:.4f} → {report['loss_last10']:.4f}, peak RSS {report['peak_rss_mb']:.0f} MB")
    print(usage_hint(opts.out))
    return 0


# ---- convert (owner: convert) -----------------------------------------------------------------
def _add_convert(sub) -> None:
    from .convert import DEFAULT_TARGET, TARGETS

    p = sub.add_parser("convert", help="Core ML conversion of every component into a bundle")
    p.add_argument("--model", help="diffusers or compressed model folder, or a cached hub id (default: the reference model)")
    p.add_argument("--out", required=True, help="bundle folder (Resources/ + pocketsd.json)")
    p.add_argument("--size", metavar="WxH", help="image size the packages are fixed to (default: the model's native size)")
    p.add_argument("--target", default=DEFAULT_TARGET, choices=list(TARGETS),
                   help="minimum deployment target (default iOS18: grouped LUTs and int4 blocks need iOS18/macOS15)")
    p.add_argument("--attention", default="split-einsum", choices=["split-einsum", "original"],
                   help="split-einsum: Neural Engine layout (default); original: diffusers' attention, for the GPU")
    p.add_argument("--chunk-unet", action="store_true", help="split the UNet into UnetChunk1/UnetChunk2 of about equal size (iOS)")
    p.add_argument("--unet-batch-one", action="store_true",
                   help="UNet with batch 1 (two calls per step for CFG) instead of batch 2")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                   help="bake a LoRA into the UNet's low-rank branches; repeatable")
    p.add_argument("--lora-functions", metavar="A.safetensors,B.safetensors",
                   help="one multifunction Unet: function 'main' plus one per LoRA, sharing the 4-bit weights")
    p.add_argument("--force", action="store_true", help="re-convert components that are already done, and write into "
                   "an --out folder that is not a Core ML bundle PocketSD wrote")
    p.add_argument("--only", metavar="NAME,NAME", help="convert only these components (e.g. Unet,VAEDecoder)")
    p.add_argument("--controlnet", action="append", default=[], metavar="[NAME=]DIR",
                   help="diffusers ControlNet folder → Resources/controlnet/NAME.mlpackage (the Unet gets its residual "
                        "inputs); repeatable")
    p.add_argument("--controlnet-recipe", metavar="RECIPE|BITS",
                   help="compress the ControlNets: a fixed recipe (w4r32, w4r16, …) or a bits-per-parameter budget")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_convert)


def _quiet_converter() -> None:
    """coremltools and torch.export print 40–60 lines per package (version notices, tqdm bars over ops and passes,
    int64→int32 notes, FutureWarnings); our own log and bar say what is happening, so the last line stays ours.
    `pocketsd --debug convert …` (or POCKETSD_DEBUG=1) shows them all."""
    import logging
    import warnings

    if os.environ.get("POCKETSD_DEBUG") or "--debug" in sys.argv[1:]:
        return
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def _run_convert(args) -> int:
    from pathlib import Path

    _quiet_libraries()
    _quiet_converter()
    from .convert.bundle import ConvertOptions
    from .ui import convert_with_progress

    size = None
    if args.size:
        from .models.family import parse_size

        size = parse_size(args.size)
    opts = ConvertOptions(
        model=args.model, out=Path(args.out), size=size, target=args.target, attention=args.attention,
        chunk_unet=args.chunk_unet, unet_batch_one=args.unet_batch_one, loras=[_parse_lora(x) for x in args.lora],
        lora_functions=[Path(x) for x in args.lora_functions.split(",") if x] if args.lora_functions else [],
        force=args.force, only=[x for x in args.only.split(",") if x] if args.only else None,
        controlnets=[_parse_controlnet(x) for x in args.controlnet], controlnet_recipe=args.controlnet_recipe)
    convert_with_progress(opts, quiet=args.quiet)
    return 0


def _parse_controlnet(text: str):
    """`[NAME=]DIR` → (name or None, folder)."""
    from pathlib import Path

    name, sep, folder = text.partition("=")
    if sep and name and "/" not in name and not Path(text).exists():
        return name, Path(folder)
    return None, Path(text)


# ---- domains / bench (owner: generation extras) -----------------------------------------------
def _add_domains(sub) -> None:
    p = sub.add_parser("domains", help="list the domain presets")
    p.add_argument("--json", action="store_true", help="print the presets as JSON instead of a table")
    p.set_defaults(func=_run_domains)


def _run_domains(args) -> int:
    import dataclasses
    import json

    from rich.console import Console

    from .pipeline.presets import load_presets, presets_table

    presets = load_presets()
    if args.json:
        print(json.dumps([dataclasses.asdict(p) for p in presets.values()], indent=2))
    else:
        Console().print(presets_table(presets))
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="time and measure generation across model kinds")
    p.add_argument("--model", help="diffusers model folder (default: the embedded reference model)")
    p.add_argument("--compressed", help="its compressed folder; default: made now with `pocketsd compress`")
    p.add_argument("--keep-compressed", metavar="DIR", help="compress into DIR and keep it (reused if it exists)")
    p.add_argument("--steps", type=int, default=20, help="denoising steps per image (default 20)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per prompt (default 2)")
    p.add_argument("--prompts", type=int, default=3, help="how many of the fixed prompts (1-3, default 3)")
    p.add_argument("--threads", type=int, help="torch threads (default: min(2, CPUs))")
    p.add_argument("--kinds", default="fp16,compressed-dense,compressed-packed",
                   help="comma-separated subset of fp16, compressed-dense, compressed-packed")
    p.add_argument("--out-dir", help="where generate.json/.md/.png go (default: benchmarks/results in a source "
                   "checkout, else ./pocketsd-bench)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"],
                   help="torch device (default cpu; auto: CUDA, then MPS, then CPU)")
    p.set_defaults(func=_run_bench)


def _run_bench(args) -> int:
    from pathlib import Path

    from rich.console import Console

    from .bench import KINDS as known
    from .bench import PROMPTS, default_out_dir, markdown, run_bench

    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    if not kinds or any(k not in known for k in kinds):
        raise BadInput(f"--kinds {args.kinds!r}: choose from {', '.join(known)}")
    if args.steps < 1 or args.seeds < 1 or not 1 <= args.prompts <= len(PROMPTS):
        raise BadInput(f"--steps and --seeds must be ≥ 1 and --prompts in 1..{len(PROMPTS)}")
    out_dir = Path(args.out_dir) if args.out_dir else default_out_dir()
    if not out_dir.parent.is_dir():
        raise BadInput(f"--out-dir {out_dir}: folder {out_dir.parent} does not exist")
    console = Console(stderr=True)
    doc = run_bench(args.model, args.compressed, out_dir, steps=args.steps, prompts=PROMPTS[: args.prompts],
                    seeds=tuple(range(args.seeds)), threads=args.threads, kinds=kinds,
                    keep_compressed=Path(args.keep_compressed) if args.keep_compressed else None,
                    progress=lambda msg: console.log(msg), device=args.device)
    print(markdown(doc))
    print(f"wrote {out_dir / 'generate.json'} and {out_dir / 'generate.md'}")
    return 0


# ---- eval (owner: eval protocol; the command lives in evaluate.py) ----------------------------
def _add_eval(sub) -> None:
    from .evaluate import add_arguments

    p = sub.add_parser("eval", help="quality protocol: generate with two models on the same seeds, then PSNR, SSIM, "
                       "LPIPS, FID, CLIP score, ImageReward, adherence")
    add_arguments(p)
    p.set_defaults(func=_run_eval)


def _run_eval(args) -> int:
    _quiet_libraries()
    from .evaluate import run_command

    return run_command(args)


# ---- info (shared: dispatches on the kind of path) --------------------------------------------
def _bench_harness():
    """The harness behind `pocketsd bench` (`pocketsd.bench`, part of the package: it works from a wheel)."""
    from . import bench

    return bench


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="describe a model folder, compressed folder or Core ML bundle")
    p.add_argument("path")
    p.add_argument("--memory", action="store_true", help="Core ML bundle: resident model bytes per stage "
                   "for the default and low-memory schedules")
    p.add_argument("--budget-mb", type=float, help="with --memory: say whether each stage fits this many MB")
    p.add_argument("--no-verify", action="store_true", help="skip checking recorded sha256 digests")
    p.set_defaults(func=_run_info)


def _run_info(args) -> int:
    import math

    _quiet_libraries()
    from .info import describe

    if args.budget_mb is not None and (not math.isfinite(args.budget_mb) or args.budget_mb <= 0):
        raise BadInput(f"--budget-mb must be a positive number, got {args.budget_mb}")
    if args.budget_mb is not None and not args.memory:
        raise BadInput("--budget-mb goes with --memory")
    from .info import DamagedArtifact

    try:
        print(describe(args.path, memory=args.memory, budget_mb=args.budget_mb, verify=not args.no_verify))
    except DamagedArtifact as exc:
        print(exc.description)  # what the artifact is, then the one error line
        raise
    return 0


# ---- app (owner: web demo) -----------------------------------------------------------------------
def _add_app(sub) -> None:
    p = sub.add_parser("app", help="web demo: fp16 against 4-bit side by side, with time and memory")
    p.add_argument("--model", help="fp16 model: diffusers folder or hub id (default: the embedded reference model)")
    p.add_argument("--compressed", help="its compressed folder (default: made on first start, cached under "
                   "BUILD/app/)")
    p.add_argument("--coreml", help="a Core ML bundle of the model, offered in the model picker on macOS")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only; "
                   "0.0.0.0 opens it to your network, with a warning)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"],
                   help="torch device (default cpu; auto: CUDA, then Apple MPS, then CPU)")
    p.add_argument("--build-dir", default="build", help="where the compressed model is cached (default build)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest image upload accepted (default 20)")
    p.add_argument("--queue-size", type=int, default=8, help="requests that may wait in line (default 8)")
    p.set_defaults(func=_run_app)


def _run_app(args) -> int:
    from pathlib import Path

    _quiet_libraries()
    if args.max_upload_mb <= 0 or args.queue_size < 1:
        raise BadInput("--max-upload-mb must be positive and --queue-size at least 1")
    from .app.config import AppConfig
    from .app.server import serve

    config = AppConfig(model=args.model, compressed=Path(args.compressed) if args.compressed else None,
                       coreml=Path(args.coreml) if args.coreml else None, device=args.device, host=args.host,
                       port=args.port, max_upload_mb=args.max_upload_mb, queue_size=args.queue_size)
    return serve(config, Path(args.build_dir))


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="pocketsd", description="SDXL in 4-bit + low-rank, for Core ML")
    parser.add_argument("--version", action="version", version=f"pocketsd {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    for add in (_add_generate, _add_compress, _add_convert, _add_lora, _add_domains, _add_info, _add_bench,
                _add_eval, _add_app):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_entry(build_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
