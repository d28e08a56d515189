"""Prompt adherence of the reference model: every colour × shape on every background, two seeds.

    python -m pocketsd.refmodel.check [--model DIR] [--steps 20] [--seeds 0 1]

Each image's object colour, shape and background are read back from its pixels alone
(`pocketsd.eval.classify`). Also checks the VAE alone: dataset images encoded and decoded, colour read
back the same way (a colour the VAE cannot carry, the UNet cannot produce). Writes
benchmarks/results/refmodel_adherence.{json,png}.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from PIL import Image

from ..artifacts import write_json
from ..eval.adherence import score_adherence
from ..data import REFERENCE_MODEL
from ..data.grammar import adherence_scenes
from .train import RESULTS_DIR

TARGETS = {"color": 0.85, "shape": 0.70, "background": 0.95}


def generate_scenes(pipe, scenes, seed: int, steps: int, guidance: float, batch: int = 27) -> list[Image.Image]:
    images = []
    for i in range(0, len(scenes), batch):
        chunk = scenes[i : i + batch]
        # One generator per image, seeded alike: image k does not depend on its batch neighbours.
        gens = [torch.Generator().manual_seed(seed) for _ in chunk]
        out = pipe([s.caption for s in chunk], num_inference_steps=steps, guidance_scale=guidance,
                   generator=gens, height=128, width=128)
        images.extend(out.images)
    return images


@torch.no_grad()
def vae_round_trip(vae, n: int = 60, seed: int = 999) -> dict:
    """Share of `n` dataset images whose object colour survives encode → decode, and the mean L1 (pixels in [-1, 1])."""
    from ..eval.classify import classify
    from .drawing import make_dataset

    scenes, images = make_dataset(n, seed)
    x = torch.from_numpy(images)
    recon = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    pixels = ((recon + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    right = sum(classify(Image.fromarray(px)).color == sc.color for px, sc in zip(pixels, scenes))
    return {"images": n, "color_right": right / n, "l1": float((recon - x).abs().mean())}


def contact_sheet(images: list[Image.Image], columns: int = 18) -> Image.Image:
    w, h = images[0].size
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * w, rows * h), (255, 255, 255))
    for k, img in enumerate(images):
        sheet.paste(img, ((k % columns) * w, (k // columns) * h))
    return sheet


def main(argv: list[str] | None = None) -> dict:
    from diffusers import StableDiffusionXLPipeline

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REFERENCE_MODEL)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = ap.parse_args(argv)

    t0 = time.time()
    pipe = StableDiffusionXLPipeline.from_pretrained(args.model, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    scenes = adherence_scenes()
    images, all_scenes = [], []
    for seed in args.seeds:
        images += generate_scenes(pipe, scenes, seed, args.steps, args.guidance)
        all_scenes += scenes
    result = score_adherence(images, all_scenes)
    result.update(model=str(args.model), steps=args.steps, guidance=args.guidance, seeds=args.seeds,
                  scheduler=type(pipe.scheduler).__name__, targets=TARGETS,
                  targets_met={k: result[k] >= v for k, v in TARGETS.items()}, seconds=time.time() - t0,
                  vae_round_trip=vae_round_trip(pipe.vae))
    args.results.mkdir(parents=True, exist_ok=True)
    write_json(args.results / "refmodel_adherence.json", result)
    contact_sheet(images[: len(scenes)]).save(args.results / "refmodel_adherence.png")
    print(f"adherence over {result['n_images']} images: color {result['color']:.1%}  shape {result['shape']:.1%}  "
          f"background {result['background']:.1%}  (targets {TARGETS}); VAE round trip keeps "
          f"{result['vae_round_trip']['color_right']:.0%} of colours")
    return result


if __name__ == "__main__":
    main()
