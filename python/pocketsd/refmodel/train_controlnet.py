"""Trains the reference model's sketch or depth ControlNet on the CPU (`--condition`, default sketch).

    python -m pocketsd.refmodel.train_controlnet [--condition sketch|depth] [--base DIR] [--max-minutes M]
        [--steps N] [--seed S] [--out DIR]

sketch: the condition is the object's outline, written to MODEL/controlnet and refmodel_controlnet.{json,png}.
depth: the condition is the scene's depth map (`refmodel.depth`: a floor plane and each object at its own depth,
near = bright), put through `pipeline.inputs.load_depth` as a user's `--depth` is; written to
MODEL/controlnet_depth (where `pocketsd generate --depth` finds it) and refmodel_controlnet_depth.{json,png}. Its
drawings follow the base model's data grammar (`p_position`/`p_pair` from the base's model_card.json; version 1 has
none and drew single objects, half of them with a position).

The ControlNet starts as a copy of the trained UNet's encoder (`ControlNetModel.from_unet`, as diffusers'
training script does: zero convolutions on its outputs, so step 0 changes nothing); the UNet, VAE and text
encoders stay frozen. Its training pairs are the base model's procedural drawings (`drawing.make_dataset`) and
a hand-drawn-looking outline of each drawing's object — wobbly strokes, corners drawn as separate strokes,
gaps and overshoots, pens of every width, dark on light or light on dark, now and then a filled scribble —
put through `pipeline.inputs.load_sketch`, the very function that cleans a user's `--sketch`, so the
ControlNet sees at training time exactly what a user's drawing becomes at generation time.

Objective as the base model's (`train.py`): ε-prediction, min-SNR-5 weighting, 10 % caption dropout as
zeroed embeddings. Deterministic in its seed and step count (`--max-minutes` can only stop it earlier).
Writes the ControlNet in fp16 safetensors to the reference model's `controlnet/` folder, atomically, and the
training curve, held-out losses and timings to benchmarks/results/refmodel_controlnet.{json,png}.

Resumable: every `--checkpoint-every` steps the whole training state (weights, optimizer, random generator, step,
curves) goes to `<out>.train-state.pt`; a run that finds it continues from it and draws the batches the
uninterrupted run would have. A run that reaches its planned steps deletes it; one stopped by `--max-minutes` or
killed keeps it, so the same command run again continues.
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..artifacts import atomic_dir, write_json
from ..artifacts.outputs import clear_for_replacement
from ..data import REFERENCE_MODEL
from ..data.grammar import BACKGROUNDS
from ..data.model_card import reference_model_card, reference_model_record
from .drawing import IMAGE_SIZE, make_dataset
from .train import RESULTS_DIR, TIME_IDS, _lr_at, _progress, encode_latents, encode_text

CONTROLNET_DIR = REFERENCE_MODEL / "controlnet"
# The conditioning embedding's widths (diffusers' default is (16, 32, 96, 256), sized for SD's 320-wide UNet):
# four levels for the VAE's 8× downsampling, the last one the UNet's first block width.
COND_CHANNELS = (16, 32, 64, 128)
CAPTION_DROPOUT = 0.1


# ---- sketches: what a user draws --------------------------------------------------------------
def object_box(image: np.ndarray, background: str) -> tuple[float, float, float]:
    """Centre (x, y) and half-extent, in pixels, of the object drawn in `image` (CHW in [-1, 1]).

    Read from the pixels (the box of every pixel at least half-way from the background colour to the object's)
    rather than from the drawing's random draws, so the outline is the edge of what was actually drawn."""
    rgb = (image.transpose(1, 2, 0) + 1.0) * 127.5
    dist = np.linalg.norm(rgb - np.asarray(BACKGROUNDS[background], dtype=np.float32), axis=-1)
    ys, xs = np.nonzero(dist > 0.5 * dist.max())
    half = ((xs.max() - xs.min() + 1) + (ys.max() - ys.min() + 1)) / 4
    return (xs.max() + xs.min() + 1) / 2, (ys.max() + ys.min() + 1) / 2, half


def _corners(shape: str, cx: float, cy: float, half: float) -> list[tuple[float, float]]:
    if shape == "triangle":  # drawing.py's triangle: apex up, base on the box's bottom edge
        return [(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
    return [(cx - half, cy - half), (cx + half, cy - half), (cx + half, cy + half), (cx - half, cy + half)]


def _wobble(rng: random.Random, amplitude: float):
    """A smooth random offset along the stroke (s in [0, 1)): a few low sine harmonics, periodic in s."""
    terms = [(rng.uniform(0, amplitude) / k, k, rng.uniform(0, 2 * math.pi)) for k in (2, 3, 5)]
    return lambda s: sum(a * math.sin(2 * math.pi * k * s + phase) for a, k, phase in terms)


def outline_strokes(shape: str, cx: float, cy: float, half: float, rng: random.Random) -> list[list[tuple[float, float]]]:
    """Hand-drawn-looking strokes around the shape (pixel coordinates): wobbly, not quite closed or overshooting;
    polygons now and then drawn edge by edge with the ends crossing at the corners."""
    wobble = _wobble(rng, 0.05 * half)
    if shape == "circle":
        rx, ry = half * rng.uniform(0.95, 1.05), half * rng.uniform(0.95, 1.05)
        start, n = rng.uniform(0, 2 * math.pi), 72
        end = 1.0 + rng.choice((0.0, rng.uniform(-0.06, 0.0), rng.uniform(0.0, 0.1)))  # closed, gap or overshoot
        pts = []
        for k in range(int(n * end) + 1):
            s = k / n
            r = 1 + wobble(s) / half
            pts.append((cx + rx * r * math.cos(start + 2 * math.pi * s), cy + ry * r * math.sin(start + 2 * math.pi * s)))
        return [pts]
    corners = [(x + rng.gauss(0, 0.04 * half), y + rng.gauss(0, 0.04 * half)) for x, y in _corners(shape, cx, cy, half)]
    edges = list(zip(corners, corners[1:] + corners[:1]))
    strokes = []
    if rng.random() < 0.4:  # edge by edge, each stroke a little past its corners
        for k, ((x0, y0), (x1, y1)) in enumerate(edges):
            a, b = rng.uniform(-0.03, 0.08), rng.uniform(-0.03, 0.08)
            stroke = []
            for j in range(9):
                u = -a + (1 + a + b) * j / 8
                nx, ny = -(y1 - y0), x1 - x0  # normal, for the wobble
                norm = math.hypot(nx, ny) or 1.0
                w = wobble((k + u) / len(edges))
                stroke.append((x0 + u * (x1 - x0) + w * nx / norm, y0 + u * (y1 - y0) + w * ny / norm))
            strokes.append(stroke)
        return strokes
    pts = []
    for k, ((x0, y0), (x1, y1)) in enumerate(edges):
        nx, ny = -(y1 - y0), x1 - x0
        norm = math.hypot(nx, ny) or 1.0
        for j in range(8):
            u = j / 8
            w = wobble((k + u) / len(edges))
            pts.append((x0 + u * (x1 - x0) + w * nx / norm, y0 + u * (y1 - y0) + w * ny / norm))
    shift = rng.randrange(len(pts))
    pts = pts[shift:] + pts[:shift]
    end = rng.choice((0, rng.randint(-3, 0), rng.randint(0, 4)))  # closed, a gap or an overshoot (in points)
    return [pts + pts[: max(1, end + 1)]] if end >= 0 else [pts[: len(pts) + end]]


def draw_sketch(shape: str, cx: float, cy: float, half: float, rng: random.Random) -> Image.Image:
    """A user's drawing of the shape at (cx, cy, half) in IMAGE_SIZE coordinates: grayscale paper of a random size,
    pen of a random width, dark ink on light paper or (one in six) light on dark, (one in ten) filled in."""
    paper = rng.choice((128, 192, 256, 300, 384, 512, 640))
    k = paper / IMAGE_SIZE
    ink, background = rng.randint(0, 90), rng.randint(200, 255)
    if rng.random() < 1 / 6:
        ink, background = 255 - ink, 255 - background
    img = Image.new("L", (paper, paper), background)
    d = ImageDraw.Draw(img)
    strokes = [[(x * k, y * k) for x, y in s] for s in outline_strokes(shape, cx, cy, half, rng)]
    if rng.random() < 0.1:
        d.polygon([p for s in strokes for p in s], fill=ink)
    width = max(1, round(rng.uniform(0.004, 0.025) * paper))
    for s in strokes:
        d.line(s, fill=ink, width=width, joint="curve")
    return img


def sketch_controls(sketches: list[Image.Image], size: int = IMAGE_SIZE) -> np.ndarray:
    """Each drawing through `load_sketch` (the user's path) → (n, size, size) uint8 masks of the cleaned strokes."""
    from ..pipeline.inputs import load_sketch

    out = np.zeros((len(sketches), size, size), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sketch.png"
        for i, img in enumerate(sketches):
            img.save(path, compress_level=1)
            out[i] = load_sketch(path, size, size, "", warn=None).lines
    return out


def make_controlnet_dataset(n: int, seed: int):
    """`n` procedural drawings (scenes, images) and a user-like outline sketch of each one's object."""
    scenes, images = make_dataset(n, seed)
    rng = random.Random(seed + 1)
    sketches = [draw_sketch(sc.shape, *object_box(im, sc.background), rng) for sc, im in zip(scenes, images)]
    return scenes, images, sketch_controls(sketches)


def make_depth_dataset(n: int, seed: int, p_position: float = 0.5, p_pair: float = 0.0):
    """`n` procedural drawings (scenes, images) and each one's depth map as `--depth` would feed it (uint8)."""
    from .depth import depth_controls, depth_dataset

    scenes, images, depths = depth_dataset(n, seed, p_position, p_pair)
    return scenes, images, depth_controls(depths)


@dataclass(frozen=True)
class Condition:
    """What a ControlNet is trained to follow: how its training pairs are made and where it and its curve go."""
    name: str
    folder: str          # its folder inside the model folder
    results_stem: str    # benchmarks/results/<stem>.{json,png}
    make_dataset: Callable  # (n, seed, grammar: dict) → (scenes, images, uint8 control maps (n, H, W))


CONDITIONS = {
    "sketch": Condition("sketch", "controlnet", "refmodel_controlnet",
                        lambda n, seed, grammar: make_controlnet_dataset(n, seed)),
    "depth": Condition("depth", "controlnet_depth", "refmodel_controlnet_depth",
                       lambda n, seed, grammar: make_depth_dataset(n, seed, grammar["p_position"], grammar["p_pair"])),
}
# Version 1's data grammar (it has no model card): single objects, half of them with a position word.
V1_GRAMMAR = {"p_position": 0.5, "p_pair": 0.0}


def control_batch(masks: np.ndarray) -> torch.Tensor:
    """uint8 masks → (n, 3, H, W) in [0, 1]: white strokes on black, as `controlnet.control_tensor` feeds it."""
    return torch.from_numpy(masks).float().unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


# ---- training ---------------------------------------------------------------------------------
def build_controlnet(unet, seed: int):
    from diffusers import ControlNetModel

    torch.manual_seed(seed)  # the conditioning embedding's initial weights come from the global generator
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=COND_CHANNELS)


def _noised(latents, alphas, idx, gen, sampling: str = "uniform"):
    x0 = latents[idx]
    noise = torch.randn(x0.shape, generator=gen)
    t = _timesteps(len(idx), len(alphas), gen, sampling)
    a = alphas[t].view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise, noise, t


def _timesteps(n: int, total: int, gen, sampling: str) -> torch.Tensor:
    """Uniform (the base model's), or cubic as in T2I-Adapter: t = (1 − u³)·T puts most draws at high noise,
    where the layout a sketch fixes is decided."""
    if sampling == "cubic":
        u = torch.rand(n, generator=gen)
        return ((1 - u ** 3) * total).long().clamp(0, total - 1)
    return torch.randint(0, total, (n,), generator=gen)


def _weighted_loss(pred, noise, snr_t) -> torch.Tensor:
    weight = torch.clamp(snr_t, max=5.0) / snr_t  # min-SNR-5, as the base model
    return (weight * ((pred - noise) ** 2).mean(dim=(1, 2, 3))).mean()


def _predict(unet, controlnet, xt, t, emb, pooled, cond):
    added = {"text_embeds": pooled, "time_ids": torch.tensor([TIME_IDS], dtype=torch.float32).repeat(len(xt), 1)}
    if controlnet is None:
        return unet(xt, t, emb, added_cond_kwargs=added).sample
    down, mid = controlnet(xt, t, emb, controlnet_cond=cond, added_cond_kwargs=added, return_dict=False)
    return unet(xt, t, emb, added_cond_kwargs=added, down_block_additional_residuals=down,
                mid_block_additional_residual=mid).sample


@torch.no_grad()
def held_out_loss(unet, controlnet, batch: dict, snr) -> dict:
    """Losses on a fixed held-out batch (same noise and timesteps every time); controlnet=None: the UNet alone.

    `loss`: the training objective. `x0_high_noise`: the error of the predicted clean latents where t ≥ 600 —
    where the layout is decided, and where an ε loss hardly registers it (ε ≈ x_t there; x0 error is scaled by SNR)."""
    t = batch["t"]
    pred = _predict(unet, controlnet, batch["xt"], t, batch["emb"], batch["pooled"], batch["cond"])
    alphas = (snr / (1 + snr))[t].view(-1, 1, 1, 1)
    x0 = (batch["xt"] - (1 - alphas).sqrt() * pred) / alphas.sqrt()
    high = t >= 600
    return {"loss": float(_weighted_loss(pred, batch["noise"], snr[t])),
            "x0_high_noise": float(((x0 - batch["x0"]) ** 2)[high].mean())}


def train(unet, controlnet, data: dict, held_out: dict, snr, steps: int, batch: int, lr: float, seed: int,
          deadline: float | None, curves: dict, sampling: str = "uniform", eval_every: int = 100,
          state_path: Path | None = None, checkpoint_every: int = 100) -> int:
    """Train `controlnet` (in place) until `steps` or the wall-clock `deadline`; returns the steps done in all
    (counting those of a run it resumed from `state_path`, which it saves every `checkpoint_every` steps)."""
    unet.requires_grad_(False).eval()
    controlnet.train()
    params = list(controlnet.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    alphas = snr / (1 + snr)
    gen = torch.Generator().manual_seed(seed)
    latents, emb_all, pooled_all, masks = data["latents"], data["emb"], data["pooled"], data["masks"]
    done = 0
    if state_path is not None and state_path.exists():
        # weights_only: the state holds tensors, numbers and lists only (never arbitrary pickled objects).
        state = torch.load(state_path, weights_only=True)
        controlnet.load_state_dict(state["controlnet"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        done = int(state["step"])
        curves["loss"][:], curves["held_out"][:] = state["curves"]["loss"], state["curves"]["held_out"]
        print(f"resumed from {state_path} at step {done}", flush=True)
    curves["resumed_at_step"] = done

    def save_state() -> None:
        tmp = state_path.with_name(state_path.name + ".partial")
        torch.save({"controlnet": controlnet.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
                    "step": done, "curves": {"loss": list(curves["loss"]), "held_out": list(curves["held_out"])}}, tmp)
        tmp.replace(state_path)

    with _progress() as bar:
        task = bar.add_task("ControlNet", total=steps, loss=0.0, completed=done)
        for step in range(done, steps):
            if deadline is not None and time.time() > deadline:
                break
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, steps, lr, 100)
            idx = torch.randint(0, len(latents), (batch,), generator=gen)
            xt, noise, t = _noised(latents, alphas, idx, gen, sampling)
            keep = (torch.rand(batch, generator=gen) > CAPTION_DROPOUT).float()
            emb, pooled = emb_all[idx] * keep.view(-1, 1, 1), pooled_all[idx] * keep.view(-1, 1)
            pred = _predict(unet, controlnet, xt, t, emb, pooled, control_batch(masks[idx.numpy()]))
            loss = _weighted_loss(pred, noise, snr[t])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            curves["loss"].append(float(loss.detach()))
            done = step + 1
            bar.update(task, advance=1, loss=curves["loss"][-1])
            if done % eval_every == 0 or done == steps:
                controlnet.eval()
                curves["held_out"].append([done, held_out_loss(unet, controlnet, held_out, snr)])
                controlnet.train()
                if not sys.stdout.isatty():  # rich only redraws on a terminal; training often runs in a log
                    h = curves["held_out"][-1][1]
                    print(f"controlnet step {done}/{steps} loss({eval_every}) {np.mean(curves['loss'][-eval_every:]):.4f} "
                          f"held-out {h['loss']:.4f}, x0 at high noise {h['x0_high_noise']:.4f} at {time.strftime('%H:%M:%S')}", flush=True)
            if state_path is not None and done % checkpoint_every == 0:
                save_state()
    if state_path is not None and 0 < done < steps:
        save_state()  # stopped by the deadline: the next run continues from here
    controlnet.eval()
    return done


def prepare(pipe, n: int, seed: int, condition: Condition = CONDITIONS["sketch"], grammar: dict = V1_GRAMMAR) -> dict:
    """Latents, text embeddings and control maps of `n` drawings (the frozen parts run once, up front)."""
    scenes, images, masks = condition.make_dataset(n, seed, grammar)
    with torch.no_grad():
        latents = encode_latents(pipe.vae, images) * pipe.vae.config.scaling_factor
        comps = {"tokenizer": pipe.tokenizer, "tokenizer_2": pipe.tokenizer_2,
                 "text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2}
        embs, pooled = zip(*(encode_text(comps, [s.caption for s in scenes[i:i + 128]]) for i in range(0, n, 128)))
    return {"latents": latents, "emb": torch.cat(embs), "pooled": torch.cat(pooled), "masks": masks, "scenes": scenes}


def fixed_batch(data: dict, snr, seed: int) -> dict:
    """The held-out batch: every drawing with one fixed noise and timestep."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.arange(len(data["latents"]))
    xt, noise, t = _noised(data["latents"], snr / (1 + snr), idx, gen)
    return {"xt": xt, "x0": data["latents"], "noise": noise, "t": t, "emb": data["emb"], "pooled": data["pooled"],
            "cond": control_batch(data["masks"])}


def save_controlnet(controlnet, out: Path) -> None:
    """fp16 safetensors (`ControlNetModel.save_pretrained`), written beside `out` and renamed into place."""
    half = copy.deepcopy(controlnet).to(torch.float16)
    clear_for_replacement(out)  # the trainer owns its output folder (atomic_dir replaces only cleared folders)
    with atomic_dir(out) as tmp:
        half.save_pretrained(tmp, safe_serialization=True)
        for f in tmp.iterdir():
            f.chmod(0o644)  # package data: readable by everyone (the weights file is written private)


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.5))
    v = np.asarray(curves["loss"])
    k = max(1, len(v) // 50)
    ax.plot(v, alpha=0.25, label="training loss")
    ax.plot(np.arange(len(v) - k + 1) + k // 2, np.convolve(v, np.ones(k) / k, mode="valid"), label=f"mean of {k}")
    steps = [s for s, _ in curves["held_out"]]
    for axis, key, title in ((ax, "loss", "min-SNR-weighted ε loss"), (ax2, "x0_high_noise", "x0 error at t ≥ 600 (held out)")):
        axis.plot(steps, [h[key] for _, h in curves["held_out"]], "o-", label="held out, with ControlNet")
        axis.axhline(curves["held_out_unet_alone"][key], color="gray", ls="--", label="held out, UNet alone")
        axis.set_xlabel("step")
        axis.set_title(title)
        axis.legend(fontsize=8)
    ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", "--base", type=Path, default=REFERENCE_MODEL,
                    help="the diffusers SDXL folder whose UNet it conditions")
    ap.add_argument("--condition", choices=list(CONDITIONS), default="sketch",
                    help="what the ControlNet follows: the object's outline or the scene's depth map")
    ap.add_argument("--out", type=Path, default=None,
                    help="default: MODEL/controlnet (sketch) or MODEL/controlnet_depth (depth)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--images", type=int, default=6000, help="training drawings (each with its own sketch)")
    ap.add_argument("--held-out", type=int, default=96)
    ap.add_argument("--t-sampling", choices=("uniform", "cubic"), default="cubic")
    ap.add_argument("--max-minutes", type=float, default=None, help="wall-clock cap from start to saved weights")
    # One thread by default: on this model's small layers a second thread buys ~1.5× on an idle machine, but on a
    # shared one OpenMP threads spinning at every barrier made a step 10-20× slower (measured; see the JSON's
    # uptime); and a fixed count keeps the weights bit-for-bit reproducible from one machine to the next.
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--results", type=Path, default=RESULTS_DIR)
    ap.add_argument("--checkpoint-every", type=int, default=100,
                    help="steps between saves of the training state to OUT.train-state.pt (a rerun resumes from it)")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.checkpoint_every < 1 or args.images < 1 or args.held_out < 1:
        ap.error("--steps, --checkpoint-every, --images and --held-out must be at least 1")
    if not (args.model / "unet").is_dir():
        ap.error(f"--model/--base {args.model} is not a diffusers SDXL folder (it has no unet/)")
    condition = CONDITIONS[args.condition]
    card = reference_model_card(args.model)
    grammar = {k: card.get("grammar", {}).get(k, V1_GRAMMAR[k]) for k in V1_GRAMMAR}

    from diffusers import StableDiffusionXLPipeline

    t0, cpu0 = time.time(), time.process_time()
    load_before = _uptime()
    torch.set_num_threads(args.threads)
    out = args.out or args.model / condition.folder
    state_path = out.with_name(out.name + ".train-state.pt")
    out.parent.mkdir(parents=True, exist_ok=True)
    pipe = StableDiffusionXLPipeline.from_pretrained(args.model, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    data = prepare(pipe, args.images, args.seed + 200, condition, grammar)
    held = prepare(pipe, args.held_out, args.seed + 300, condition, grammar)
    alphas = pipe.scheduler.alphas_cumprod.float()
    snr = alphas / (1 - alphas)
    held_batch = fixed_batch(held, snr, args.seed + 301)
    t_data, cpu_data = time.time() - t0, time.process_time() - cpu0
    print(f"data: {args.images} drawings and {condition.name} maps in {t_data / 60:.1f} min", flush=True)

    controlnet = build_controlnet(pipe.unet, args.seed)
    curves = {"loss": [], "held_out": [], "held_out_unet_alone": held_out_loss(pipe.unet, None, held_batch, snr)}
    curves["held_out"].append([0, held_out_loss(pipe.unet, controlnet, held_batch, snr)])
    print(f"held out, UNet alone: loss {curves['held_out_unet_alone']['loss']:.4f}, "
          f"x0 at high noise {curves['held_out_unet_alone']['x0_high_noise']:.4f}", flush=True)
    deadline = None if args.max_minutes is None else t0 + 60 * args.max_minutes - 20  # 20 s left for saving
    t1, cpu1 = time.time(), time.process_time()
    done = train(pipe.unet, controlnet, data, held_batch, snr, args.steps, args.batch, args.lr, args.seed, deadline, curves,
                 sampling=args.t_sampling, state_path=state_path, checkpoint_every=args.checkpoint_every)
    t_train, cpu_train = time.time() - t1, time.process_time() - cpu1
    save_controlnet(controlnet, out)
    if done >= args.steps:
        state_path.unlink(missing_ok=True)  # finished: nothing to resume
    wall, cpu = time.time() - t0, time.process_time() - cpu0

    args.results.mkdir(parents=True, exist_ok=True)
    unet_alone, with_cn = curves["held_out_unet_alone"], curves["held_out"][-1][1]
    summary = {
        "command": "python -m pocketsd.refmodel.train_controlnet " + " ".join(argv if argv is not None else sys.argv[1:]),
        "condition": condition.name, "model": str(args.model),
        "reference_model": reference_model_record(args.model), "data_grammar": grammar, "out": str(out), "seed": args.seed, "steps_planned": args.steps, "steps_done": done,
        "batch": args.batch, "lr": args.lr, "images": args.images, "held_out_images": args.held_out,
        "conditioning_embedding_out_channels": list(COND_CHANNELS), "caption_dropout": CAPTION_DROPOUT,
        "parameters": sum(p.numel() for p in controlnet.parameters()),
        "weights_bytes": sum(f.stat().st_size for f in out.rglob("*") if f.is_file()),
        "held_out": {"unet_alone": unet_alone, "with_controlnet": with_cn,
                     "ratio": {k: with_cn[k] / unet_alone[k] for k in with_cn}},
        "t_sampling": args.t_sampling,
        "wall_minutes": {"data": t_data / 60, "train": t_train / 60, "total": wall / 60},
        "cpu_minutes": {"data": cpu_data / 60, "train": cpu_train / 60, "total": cpu / 60},
        "resumed_at_step": curves["resumed_at_step"],
        "seconds_per_step": t_train / max(done - curves["resumed_at_step"], 1), "torch_threads": torch.get_num_threads(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "uptime_before": load_before, "uptime_after": _uptime(),
        "curves": curves,
    }
    write_json(args.results / f"{condition.results_stem}.json", summary)
    plot(curves, args.results / f"{condition.results_stem}.png")
    print(f"ControlNet: {done} steps in {t_train / 60:.1f} min (wall {wall / 60:.1f} min, CPU {cpu / 60:.1f} min); "
          f"held-out x0 error at high noise {with_cn['x0_high_noise']:.4f} against {unet_alone['x0_high_noise']:.4f} "
          f"for the UNet alone → {out}")


if __name__ == "__main__":
    main()
