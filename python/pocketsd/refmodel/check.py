"""Prompt adherence of the reference model: every colour × shape on every background, positions, two objects.

    python -m pocketsd.refmodel.check [--model DIR] [--steps 20] [--seeds 0 1] [--positions 60] [--pairs 12]
    python -m pocketsd.refmodel.check --attributes 2 --positions 3 --pairs 2 --steps 4 --seeds 0 --results /tmp/x  # smoke

Three sections, every image read back from its pixels alone (`pocketsd.eval.classify`), each over every seed:

- attributes: the 54 colour × shape × background prompts; the object's colour, shape and background;
- positions: `--positions` prompts, `on the left / on the right / at the top / at the bottom` in turn with rotating
  colours, shapes and backgrounds (`position_scenes`); the share whose object lands on the asked side;
- two objects: `--pairs` prompts with a second object on the opposite side (`pair_scenes`); each half of the image
  read alone (left/right or top/bottom), the share with both objects right.

Also checks the VAE alone: dataset images encoded and decoded, colour read back the same way (a colour the VAE
cannot carry, the UNet cannot produce). Records the model's version and card (`reference_model`). Writes
benchmarks/results/refmodel_adherence.{json,png} (the contact sheet: the attribute prompts of the first seed, then
the position and two-object prompts of the first seed).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from PIL import Image

from ..artifacts import write_json
from ..eval.adherence import score_adherence, score_pairs, score_positions
from ..data import REFERENCE_MODEL
from ..data.grammar import BACKGROUNDS, COLORS, OPPOSITE, SHAPES, Scene, adherence_scenes
from ..data.model_card import reference_model_record
from ..errors import BadInput
from .train import RESULTS_DIR

# Issue 26: positions followed in ≥ 85 % of the position prompts, with colour, shape and background kept at these.
TARGETS = {"color": 0.95, "shape": 0.85, "background": 0.98, "position": 0.85}
SIDE_POSITIONS = tuple(OPPOSITE)  # on the left, on the right, at the top, at the bottom
DEFAULT_POSITION_PROMPTS = 60
DEFAULT_PAIR_PROMPTS = 12


def position_scenes(n: int = DEFAULT_POSITION_PROMPTS) -> list[Scene]:
    """`n` one-object prompts, the four side positions in turn; within each side the colour steps by one (offset by
    the side, so every side meets every colour) and the shape and background run through their 9 pairs."""
    colors = list(COLORS)
    backgrounds = list(BACKGROUNDS)
    scenes = []
    for i in range(n):
        side, j = i % len(SIDE_POSITIONS), i // len(SIDE_POSITIONS)
        scenes.append(Scene(colors[(j + side) % len(colors)], SHAPES[j % len(SHAPES)],
                            backgrounds[(j // len(SHAPES)) % len(backgrounds)], SIDE_POSITIONS[side]))
    return scenes


def pair_scenes(n: int = DEFAULT_PAIR_PROMPTS) -> list[Scene]:
    """`n` two-object prompts (version 2's grammar): the first object's side in turn, the second object of another
    colour and the next shape on the opposite side, backgrounds rotating."""
    colors = list(COLORS)
    backgrounds = list(BACKGROUNDS)
    scenes = []
    for i in range(n):
        side, j = i % len(SIDE_POSITIONS), i // len(SIDE_POSITIONS)
        first = (j + side) % len(colors)
        second = (colors[(first + 1 + j) % len(colors)], SHAPES[(i + 1) % len(SHAPES)])
        scenes.append(Scene(colors[first], SHAPES[i % len(SHAPES)], backgrounds[(i + j) % len(backgrounds)],
                            SIDE_POSITIONS[side], second=second))
    return scenes


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
    ap.add_argument("--attributes", type=int, default=len(adherence_scenes()),
                    help="attribute prompts, the first N of the 54 (fewer only for a smoke run)")
    ap.add_argument("--positions", type=int, default=DEFAULT_POSITION_PROMPTS,
                    help="position prompts (the sides in turn); 0 skips the section")
    ap.add_argument("--pairs", type=int, default=DEFAULT_PAIR_PROMPTS, help="two-object prompts; 0 skips the section")
    ap.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = ap.parse_args(argv)
    if not (args.model / "model_index.json").is_file():
        ap.error(f"--model {args.model} is not a diffusers model folder (no model_index.json): pass a reference model")
    if not 1 <= args.attributes <= len(adherence_scenes()) or args.positions < 0 or args.pairs < 0 or args.steps < 1:
        ap.error(f"--attributes must be in 1..{len(adherence_scenes())}, --positions and --pairs ≥ 0, --steps ≥ 1")
    try:
        reference_model = reference_model_record(args.model)  # read before the long run: a damaged card stops it
    except BadInput as exc:
        ap.error(str(exc))

    t0 = time.time()
    pipe = StableDiffusionXLPipeline.from_pretrained(args.model, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    sections = {"attributes": adherence_scenes()[: args.attributes], "positions": position_scenes(args.positions),
                "pairs": pair_scenes(args.pairs)}
    images = {name: [] for name in sections}
    scenes = {name: [] for name in sections}
    for seed in args.seeds:
        for name, prompts in sections.items():
            if prompts:
                images[name] += generate_scenes(pipe, prompts, seed, args.steps, args.guidance)
                scenes[name] += prompts
    result = score_adherence(images["attributes"], scenes["attributes"])
    positions = score_positions(images["positions"], scenes["positions"]) if scenes["positions"] else None
    pairs = score_pairs(images["pairs"], scenes["pairs"]) if scenes["pairs"] else None
    figures = dict(result, position=positions["side_right"] if positions else None)
    result.update(model=str(args.model), reference_model=reference_model, steps=args.steps,
                  special_run=args.attributes < len(adherence_scenes()),
                  guidance=args.guidance, seeds=args.seeds, scheduler=type(pipe.scheduler).__name__, targets=TARGETS,
                  targets_met={k: None if figures[k] is None else figures[k] >= v for k, v in TARGETS.items()},
                  positions=positions, pairs=pairs, seconds=time.time() - t0, vae_round_trip=vae_round_trip(pipe.vae))
    args.results.mkdir(parents=True, exist_ok=True)
    write_json(args.results / "refmodel_adherence.json", result)
    first_seed = [im for name, prompts in sections.items() for im in images[name][: len(prompts)]]
    contact_sheet(first_seed).save(args.results / "refmodel_adherence.png")
    line = (f"adherence over {result['n_images']} images: color {result['color']:.1%}  shape {result['shape']:.1%}  "
            f"background {result['background']:.1%}")
    if positions:
        line += f"; on the asked side {positions['side_right']:.1%} of {positions['n_images']}"
    if pairs:
        line += f"; two objects both right {pairs['both_right']:.1%} of {pairs['n_images']}"
    print(line + f" (targets {TARGETS}); VAE round trip keeps {result['vae_round_trip']['color_right']:.0%} of colours")
    return result

if __name__ == "__main__":
    main()
