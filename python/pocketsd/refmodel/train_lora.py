"""Trains one of the two domain LoRAs on the reference model.

    python -m pocketsd.refmodel.train_lora --style poster|blueprint [--model DIR] [--out FILE] [--steps N] [--seed S]

poster: a thick frame in the object's colour; blueprint: a light outline on a blue grid (refmodel/data.py).
The UNet gets rank-8 PEFT adapters (attention, projections, feed-forward and the resnets' second 3×3 conv); the text
encoders stay frozen, so the style words' embeddings are whatever the base model made of them and the LoRA learns
to react to them. Deterministic in its seed. Writes the LoRA in diffusers format (fp16 safetensors, via
`save_lora_weights`), a preview grid and the loss curve to benchmarks/results/lora_<style>.{json,png}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..data import REFERENCE_LORAS, REFERENCE_MODEL
from ..data.model_card import reference_model_record_if_any
from .drawing import make_dataset
from ..data.grammar import Scene
from .train import RESULTS_DIR, TIME_IDS, _progress, encode_latents, encode_text

# PEFT matches these as name suffixes: every attention projection, the transformer's in/out projections, the
# feed-forward pair and the resnets' second 3×3 conv (frames and grids are spatial textures convs draw cheaply;
# conv1 too would push the file past 1 MB for little gain).
TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv2"]
PREVIEW_SCENES = [Scene("red", "circle", "white"), Scene("blue", "square", "black"), Scene("yellow", "triangle", "gray"),
                  Scene("green", "square", "white"), Scene("purple", "circle", "gray"), Scene("orange", "triangle", "black")]


def add_lora(unet, rank: int, seed: int):
    from peft import LoraConfig

    torch.manual_seed(seed)  # PEFT's gaussian init of lora_A draws from the global generator
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=TARGET_MODULES))
    return [p for p in unet.parameters() if p.requires_grad]


def save_lora(unet, out: Path, rank: int) -> None:
    """diffusers-format LoRA (`unet.<module>.lora_A.weight` …) in fp16, written atomically."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    layers = {k: v.detach().to(torch.float16).contiguous() for k, v in layers.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".lora-", dir=out.parent))
    try:
        StableDiffusionXLPipeline.save_lora_weights(
            tmp, unet_lora_layers=layers, safe_serialization=True,
            unet_lora_adapter_metadata={"r": rank, "lora_alpha": rank, "target_modules": TARGET_MODULES},
        )
        written = tmp / "pytorch_lora_weights.safetensors"
        written.chmod(0o644)  # package data: readable by everyone (the temp dir's files are private)
        written.replace(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def train(pipe, style: str, steps: int, batch: int, n_images: int, rank: int, lr: float, seed: int,
          deadline: float) -> tuple[list[float], int, float]:
    """Train until `steps` or the wall-clock `deadline` (time.time()), whichever comes first."""
    scenes, images = make_dataset(n_images, seed, style=style)
    with torch.no_grad():
        latents = encode_latents(pipe.vae, images) * pipe.vae.config.scaling_factor
        comps = {"tokenizer": pipe.tokenizer, "tokenizer_2": pipe.tokenizer_2,
                 "text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2}
        embs, pooled = zip(*(encode_text(comps, [s.caption for s in scenes[i:i + 64]]) for i in range(0, n_images, 64)))
        embs, pooled = torch.cat(embs), torch.cat(pooled)
    unet = pipe.unet
    params = add_lora(unet, rank, seed)
    unet.train()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    alphas = pipe.scheduler.alphas_cumprod.float()
    snr = alphas / (1 - alphas)
    gen = torch.Generator().manual_seed(seed)
    time_ids = torch.tensor([TIME_IDS], dtype=torch.float32).repeat(batch, 1)
    curve: list[float] = []
    start = time.time()
    done = 0
    with _progress() as bar:
        task = bar.add_task(f"LoRA {style}", total=steps, loss=0.0)
        for step in range(steps):
            if time.time() > deadline:
                break
            for g in opt.param_groups:  # short warm-up, then constant: LoRAs converge fast
                g["lr"] = lr * min(1.0, (step + 1) / 30)
            idx = torch.randint(0, n_images, (batch,), generator=gen)
            x0 = latents[idx]
            noise = torch.randn(x0.shape, generator=gen)
            t = torch.randint(0, len(alphas), (batch,), generator=gen)
            a = alphas[t].view(-1, 1, 1, 1)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
            pred = unet(xt, t, embs[idx], added_cond_kwargs={"text_embeds": pooled[idx], "time_ids": time_ids}).sample
            weight = torch.clamp(snr[t], max=5.0) / snr[t]
            loss = (weight * ((pred - noise) ** 2).mean(dim=(1, 2, 3))).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            curve.append(float(loss.detach()))
            done = step + 1
            bar.update(task, advance=1, loss=curve[-1])
            if not sys.stdout.isatty() and done % 50 == 0:
                print(f"lora {style} step {done}/{steps} loss(50) {np.mean(curve[-50:]):.4f}", flush=True)
    unet.eval()
    return curve, done, time.time() - start


def shows_style(image, scene: Scene, style: str) -> bool:
    """Read the style back from pixels. poster: the outer ring has the object's colour; blueprint: the image's
    median colour is the blueprint blue."""
    from .drawing import BLUEPRINT_BLUE
    from ..data.grammar import BACKGROUNDS, COLORS

    px = np.asarray(image.convert("RGB"), dtype=np.float32)
    if style == "poster":
        ring = np.concatenate([px[:5].reshape(-1, 3), px[-5:].reshape(-1, 3), px[:, :5].reshape(-1, 3), px[:, -5:].reshape(-1, 3)])
        palette = {**COLORS, **{f"bg:{k}": v for k, v in BACKGROUNDS.items()}}
        rgb = np.median(ring, axis=0)
        nearest = min(palette, key=lambda k: np.linalg.norm(rgb - np.asarray(palette[k], dtype=np.float32)))
        return nearest == scene.color
    return bool(np.linalg.norm(np.median(px.reshape(-1, 3), axis=0) - np.asarray(BLUEPRINT_BLUE)) < 60)


def preview(model: Path, lora: Path | None, style: str, out: Path, steps: int = 20, seed: int = 0) -> dict:
    """A row without and a row with the LoRA, same prompts and seeds, through the shipped loading path.
    Returns the share of images that show the style, without and with the LoRA."""
    from diffusers import StableDiffusionXLPipeline
    from PIL import Image

    from ..palettize.lora import apply_lora_files

    pipe = StableDiffusionXLPipeline.from_pretrained(model, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    prompts = [s.caption + f", {style} style" for s in PREVIEW_SCENES]
    rows, score = [], {}
    for with_lora in (False, True):
        if with_lora:
            apply_lora_files(pipe.unet, [(lora, 1.0)])
        gens = [torch.Generator().manual_seed(seed + k) for k in range(len(prompts))]
        images = pipe(prompts, num_inference_steps=steps, guidance_scale=5.0, generator=gens).images
        rows.append(images)
        score["with_lora" if with_lora else "without_lora"] = float(np.mean(
            [shows_style(im, sc, style) for im, sc in zip(images, PREVIEW_SCENES)]))
    w, h = rows[0][0].size
    grid = Image.new("RGB", (w * len(prompts), h * 2))
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            grid.paste(im, (c * w, r * h))
    grid.save(out)
    return score


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--style", choices=("poster", "blueprint"), required=True)
    ap.add_argument("--model", type=Path, default=None, help="diffusers folder (default: the reference model)")
    ap.add_argument("--out", type=Path, default=None, help=f"default: {REFERENCE_LORAS}/<style>.safetensors")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-minutes", type=float, default=6.0, help="wall-clock cap from start to saved LoRA")
    ap.add_argument("--results", type=Path, default=RESULTS_DIR)
    ap.add_argument("--no-preview", action="store_true")
    args = ap.parse_args(argv)

    from diffusers import StableDiffusionXLPipeline

    t0 = time.time()
    model = args.model or REFERENCE_MODEL
    out = args.out or REFERENCE_LORAS / f"{args.style}.safetensors"
    seed = args.seed + {"poster": 1, "blueprint": 2}[args.style]
    torch.manual_seed(seed)
    pipe = StableDiffusionXLPipeline.from_pretrained(model, torch_dtype=torch.float32)
    curve, done, seconds = train(pipe, args.style, args.steps, args.batch, args.images, args.rank, args.lr, seed,
                                 t0 + 60 * args.max_minutes - 10)  # 10 s left for saving
    save_lora(pipe.unet, out, args.rank)
    wall = time.time() - t0
    print(f"LoRA {args.style}: {done} steps in {seconds / 60:.1f} min (wall {(time.time() - t0) / 60:.1f} min), {out.stat().st_size / 1e3:.0f} kB → {out}")

    args.results.mkdir(parents=True, exist_ok=True)
    summary = {"style": args.style, "model": str(model), "reference_model": reference_model_record_if_any(model),
               "seed": seed, "rank": args.rank, "lr": args.lr,
               "batch": args.batch, "images": args.images, "steps_planned": args.steps, "steps_done": done,
               "train_minutes": seconds / 60, "wall_minutes": wall / 60, "torch_threads": torch.get_num_threads(), "bytes": out.stat().st_size,
               "target_modules": TARGET_MODULES, "loss_first50": float(np.mean(curve[:50])),
               "loss_last50": float(np.mean(curve[-50:])), "curve": curve}
    if not args.no_preview:
        summary["style_shown"] = preview(model, out, args.style, args.results / f"lora_{args.style}.png")
        print(f"style read back from pixels on the preview prompts: {summary['style_shown']}")
    (args.results / f"lora_{args.style}.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
