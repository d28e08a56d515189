"""`pocketsd lora train` (owner: train): a LoRA from a folder of captioned images; the work is `train.lora.train_lora`."""

from __future__ import annotations

import argparse
import sys

from ..entry import quiet_libraries

NAME = "train"
HELP = "train a LoRA from a folder of captioned images (fp16 or compressed model)"


def add_arguments(t: argparse.ArgumentParser) -> None:
    from ..models.device import DEVICES
    from ..train.options import UNET_MODES, TrainOptions as T

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
    t.add_argument("--unet-mode", default=T.unet_mode, choices=UNET_MODES,
                   help="compressed models: packed keeps the 4-bit codes in memory (QLoRA), dense dequantizes once")
    t.add_argument("--device", default="auto", choices=DEVICES,
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


def run(args) -> int:
    from pathlib import Path

    quiet_libraries()
    from ..models.device import resolve_device
    from ..train.lora import train_lora, usage_hint
    from ..train.options import TrainOptions
    from ..ui import task_progress

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
