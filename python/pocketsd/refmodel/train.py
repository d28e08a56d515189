"""Trains the reference model from nothing: VAE, then UNet and both text encoders together.

    python -m pocketsd.refmodel.train [--out DIR] [--unet-steps N] [--seed S]

Deterministic in its seed and step counts. Writes the fp16 pipeline in the diffusers layout
(loadable by `StableDiffusionXLPipeline.from_pretrained`) and the loss curves to
benchmarks/results/refmodel_training.{json,png}.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..artifacts import atomic_dir
from ..artifacts.outputs import clear_for_replacement
from ..data import REFERENCE_MODEL
from ..data.model_card import MODEL_CARD_FILE
from .architecture import IMAGE_SIZE, assemble_pipeline, build_components
from .drawing import make_dataset
from ..data.grammar import STYLES
from .tokenizer import write_tokenizer

RESULTS_DIR = Path(__file__).resolve().parents[3] / "benchmarks" / "results"
COLOUR_WEIGHT = 4.0  # weight of the 8×8 block-mean loss in the colour polish (see polish_decoder)
TIME_IDS = (IMAGE_SIZE, IMAGE_SIZE, 0, 0, IMAGE_SIZE, IMAGE_SIZE)  # SDXL micro-conditioning


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn(),
    )


def _log_line(stage: str, step: int, total: int, curve: list) -> None:
    # A plain line now and then: rich only redraws on a terminal, and training often runs in a log.
    if not sys.stdout.isatty() and (step + 1) % 100 == 0:
        print(f"{stage} step {step + 1}/{total} loss(100) {np.mean(curve[-100:]):.4f} at {time.strftime('%H:%M:%S')}", flush=True)


def _lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def _vae_images(seed: int) -> torch.Tensor:
    # Styled images are in the VAE's data so the style LoRAs' grids and frames survive decoding.
    n_per_style = {"plain": 2400, "poster": 400, "blueprint": 400}
    return torch.from_numpy(np.concatenate([make_dataset(n, seed + 1 + i, style)[1] for i, (style, n) in enumerate(n_per_style.items())]))


def _reconstruction_stage(name: str, params, steps: int, lr: float, warmup: int, batch: int, seed: int,
                          curve: list, loss_fn) -> None:
    """The loop every VAE stage shares; `loss_fn(x, gen)` returns (loss to minimise, reconstruction loss)."""
    data = _vae_images(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    with _progress() as bar:
        task = bar.add_task(name, total=steps, loss=0.0)
        for step in range(steps):
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, steps, lr, warmup)
            x = data[torch.randint(0, len(data), (batch,), generator=gen)]
            loss, rec = loss_fn(x, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            curve.append(float(rec.detach()))
            bar.update(task, advance=1, loss=curve[-1])
            _log_line(name, step, steps, curve)


def _reconstruction_loss(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(recon, x) + F.mse_loss(recon, x)


def train_vae(vae, steps: int, batch: int, seed: int, curve: list) -> None:
    def loss_fn(x, gen):
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        rec = _reconstruction_loss(vae.decode(z).sample, x)
        return rec + 1e-6 * posterior.kl().mean(), rec

    vae.train()
    _reconstruction_stage("vae", vae.parameters(), steps, 1e-3, 50, batch, seed, curve, loss_fn)
    vae.eval()


def polish_decoder(vae, steps: int, batch: int, seed: int, curve: list, lr: float = 5e-4,
                   colour_weight: float = 0.0) -> None:
    """More decoder training on the frozen encoder's latent means.

    The UNet learns the encoder's latents, so once they are fixed the decoder can keep improving
    on its own (sharper edges, exact colours) without the UNet noticing. `colour_weight` adds the error
    of 8×8 block means: the decoder's GroupNorm removes each group's image-wide mean, and the colour
    shifts that leaves (red → orange on dark backgrounds) are small per pixel but decide what colour an
    object reads as; the plain pixel loss is dominated by edges.
    """
    def loss_fn(x, gen):
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
        recon = vae.decode(z).sample
        rec = _reconstruction_loss(recon, x)
        if colour_weight:
            return rec + colour_weight * F.mse_loss(F.avg_pool2d(recon, 8), F.avg_pool2d(x, 8)), rec
        return rec, rec

    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    vae.eval()
    vae.decoder.train()
    _reconstruction_stage("decoder-polish", params, steps, lr, 20, batch, seed + 11, curve, loss_fn)
    vae.eval()


@torch.no_grad()
def encode_latents(vae, images: np.ndarray, batch: int = 128) -> torch.Tensor:
    out = [vae.encode(torch.from_numpy(images[i : i + batch])).latent_dist.mean for i in range(0, len(images), batch)]
    return torch.cat(out)


def encode_text(components: dict, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's conditioning: both encoders' penultimate hidden states side by side, plus the pooled projection."""
    hidden, pooled = [], None
    for tok, enc in ((components["tokenizer"], components["text_encoder"]), (components["tokenizer_2"], components["text_encoder_2"])):
        ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        out = enc(ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        pooled = out[0]
    return torch.cat(hidden, dim=-1), pooled


def train_denoiser(components: dict, latents: torch.Tensor, captions: list[str], steps: int, batch: int,
                   seed: int, curve: list, lr: float = 4e-4, max_minutes: float | None = None,
                   checkpoint=None, checkpoint_every: int = 1000, warmup: int = 200,
                   state_path: Path | None = None, high_noise_share: float = 0.0) -> tuple[dict, int]:
    """UNet and both text encoders, ε-prediction with min-SNR-5 weighting; returns EMA weights.

    With `state_path`, every checkpoint also saves the whole training state there (weights, EMA, optimizer, step,
    random generator, loss curve), and a run that finds one resumes from it: a killed run loses at most
    `checkpoint_every` steps, and the resumed run draws the same batches the uninterrupted one would have.

    `high_noise_share`: that share of each batch draws its timestep from the noisier half of the schedule, where
    the picture's layout (which side an object is on) is decided; 0 draws uniformly, as version 1 did."""
    unet, te1, te2 = components["unet"], components["text_encoder"], components["text_encoder_2"]
    modules = {"unet": unet, "text_encoder": te1, "text_encoder_2": te2}
    params = [p for m in modules.values() for p in m.parameters()]
    for m in modules.values():
        m.train()
    ema = {k: copy.deepcopy(m).eval().requires_grad_(False) for k, m in modules.items()}
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    sched = components["scheduler"]
    alphas = sched.alphas_cumprod.float()
    snr = alphas / (1 - alphas)
    gen = torch.Generator().manual_seed(seed)
    time_ids = torch.tensor([TIME_IDS], dtype=torch.float32).repeat(batch, 1)
    start = time.time()
    done = 0
    if state_path is not None and state_path.exists():
        # weights_only: the state holds tensors, numbers and lists only (never arbitrary pickled objects).
        state = torch.load(state_path, weights_only=True)
        for k, m in modules.items():
            m.load_state_dict(state["modules"][k])
            ema[k].load_state_dict(state["ema"][k])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        done = int(state["step"])
        curve[:] = state["curve"]
        print(f"resumed from {state_path} at step {done}", flush=True)

    def save_state() -> None:
        tmp = state_path.with_name(state_path.name + ".partial")
        torch.save({"modules": {k: m.state_dict() for k, m in modules.items()},
                    "ema": {k: m.state_dict() for k, m in ema.items()}, "optimizer": opt.state_dict(),
                    "generator": gen.get_state(), "step": done, "curve": list(curve)}, tmp)
        tmp.replace(state_path)

    with _progress() as bar:
        task = bar.add_task("UNet + text encoders", total=steps, loss=0.0, completed=done)
        for step in range(done, steps):
            if max_minutes is not None and time.time() - start > 60 * max_minutes:
                break
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, steps, lr, warmup)
            idx = torch.randint(0, len(latents), (batch,), generator=gen)
            x0 = latents[idx]
            noise = torch.randn(x0.shape, generator=gen)
            t = torch.randint(0, len(alphas), (batch,), generator=gen)
            if high_noise_share:
                n_high = int(round(high_noise_share * batch))
                t[:n_high] = torch.randint(len(alphas) // 2, len(alphas), (n_high,), generator=gen)
            a = alphas[t].view(-1, 1, 1, 1)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
            emb, pooled = encode_text(components, [captions[i] for i in idx.tolist()])
            # Caption dropout as zeroed embeddings: the pipeline's force_zeros_for_empty_prompt.
            keep = (torch.rand(batch, generator=gen) > 0.1).float()
            emb, pooled = emb * keep.view(-1, 1, 1), pooled * keep.view(-1, 1)
            pred = unet(xt, t, emb, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
            weight = torch.clamp(snr[t], max=5.0) / snr[t]
            loss = (weight * ((pred - noise) ** 2).mean(dim=(1, 2, 3))).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            decay = min(0.999, (1 + step) / (10 + step))
            with torch.no_grad():
                for k, m in modules.items():
                    for pe, p in zip(ema[k].parameters(), m.parameters()):
                        pe.lerp_(p, 1 - decay)
            curve.append(float(loss.detach()))
            done = step + 1
            bar.update(task, advance=1, loss=curve[-1])
            _log_line("unet", step, steps, curve)
            if done % checkpoint_every == 0:
                if state_path is not None:
                    save_state()
                if checkpoint is not None:
                    checkpoint(ema)
    if state_path is not None and done > 0:
        save_state()
    return ema, done


def save_pipeline(components: dict, out: Path) -> None:
    """fp16 safetensors in the diffusers layout, written beside `out` and renamed into place."""
    pipe = assemble_pipeline({k: (copy.deepcopy(v).to(torch.float16) if isinstance(v, torch.nn.Module) else v) for k, v in components.items()})
    clear_for_replacement(out)  # the trainer owns its output folder (atomic_dir replaces only cleared folders)
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)


def plot_curves(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.5))
    for ax, (name, values) in zip(np.atleast_1d(axes), curves.items()):
        v = np.asarray(values)
        k = max(1, len(v) // 100)
        smooth = np.convolve(v, np.ones(k) / k, mode="valid")
        ax.plot(v, alpha=0.3)
        ax.plot(np.arange(len(smooth)) + k // 2, smooth)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REFERENCE_MODEL)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vae-steps", type=int, default=600)
    ap.add_argument("--unet-steps", type=int, default=3500)
    ap.add_argument("--unet-images", type=int, default=16000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-minutes", type=float, default=None, help="cap on the whole run: the UNet stage (last) stops early to keep it")
    ap.add_argument("--results", type=Path, default=RESULTS_DIR)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--polish-steps", type=int, default=600, help="decoder-only steps on the frozen encoder's latents")
    ap.add_argument("--colour-polish", type=Path, default=None, metavar="DIR",
                    help="only continue training DIR's VAE decoder with the colour loss (latents unchanged) and save it in place")
    ap.add_argument("--colour-polish-steps", type=int, default=1200)
    ap.add_argument("--finetune", type=Path, default=None, metavar="DIR",
                    help="continue training DIR's UNet and text encoders (VAE frozen) on the data mix below; "
                         "writes --out and a model card, resumable from --out's training state")
    ap.add_argument("--p-position", type=float, default=0.5, help="share of one-object captions with a position")
    ap.add_argument("--p-pair", type=float, default=0.0, help="share of two-object scenes (version 2's grammar)")
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--high-noise-share", type=float, default=0.0,
                    help="share of each batch trained at the noisier half of the schedule (layout); 0 = uniform")
    ap.add_argument("--version", type=int, default=1, help="the model version the card records")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.colour_polish is not None:
        return _colour_polish(args)
    if args.finetune is not None:
        return _finetune(args)
    t0 = time.time()
    tok_dir = Path(tempfile.mkdtemp()) / "tokenizer"
    write_tokenizer(tok_dir)
    components = build_components(tok_dir, seed=args.seed)
    curves: dict[str, list[float]] = {"vae_reconstruction": [], "decoder_polish": [], "unet_loss": []}

    train_vae(components["vae"], args.vae_steps, 16, args.seed, curves["vae_reconstruction"])
    polish_decoder(components["vae"], args.polish_steps, 16, args.seed, curves["decoder_polish"])
    t_vae = time.time() - t0

    scenes, images = make_dataset(args.unet_images, args.seed + 100)
    raw = encode_latents(components["vae"], images)
    scale = float(1.0 / raw.std())
    components["vae"].register_to_config(scaling_factor=scale)
    latents = raw * scale
    captions = [s.caption for s in scenes]
    t_data = time.time() - t0 - t_vae

    def checkpoint(ema):
        snapshot = dict(components, **ema)
        save_pipeline(snapshot, args.out)

    # The UNet goes last so that a cap on the whole run only ever shortens this stage.
    unet_minutes = None if args.max_minutes is None else args.max_minutes - (time.time() - t0) / 60 - 0.5
    ema, done = train_denoiser(components, latents, captions, args.unet_steps, args.batch, args.seed,
                               curves["unet_loss"], max_minutes=unet_minutes, checkpoint=checkpoint)
    components.update(ema)
    t_unet = time.time() - t0 - t_vae - t_data
    save_pipeline(components, args.out)
    total = time.time() - t0

    args.results.mkdir(parents=True, exist_ok=True)
    summary = {
        "seed": args.seed, "vae_steps": args.vae_steps, "unet_steps_planned": args.unet_steps, "unet_steps_done": done,
        "batch": args.batch, "unet_images": args.unet_images, "vae_scaling_factor": scale, "styles_in_vae_data": list(STYLES),
        "polish_steps": args.polish_steps,
        "minutes": {"vae_and_decoder_polish": t_vae / 60, "data": t_data / 60, "unet": t_unet / 60, "total": total / 60},
        "torch_threads": torch.get_num_threads(),
        "weights_bytes": sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file()),
        "curves": curves,
    }
    (args.results / "refmodel_training.json").write_text(json.dumps(summary, indent=1))
    plot_curves(curves, args.results / "refmodel_training.png")
    print(f"trained in {total / 60:.1f} min; weights {summary['weights_bytes'] / 1e6:.1f} MB → {args.out}")


def load_components(folder: Path) -> dict:
    """A saved reference pipeline's components in fp32, for further training."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    return {k: v for k, v in pipe.components.items() if k in
            ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "unet", "vae", "scheduler")}


def _finetune(args) -> None:
    """Version 2 and later: the saved model's UNet and text encoders trained further on a new data mix.

    The VAE (and so its latent scale) stays: the decoder, the ControlNets' latents and the LoRAs' VAE data keep
    meaning what they meant. A killed run resumes from `<out>.train-state.pt`."""
    t0 = time.time()
    components = load_components(args.finetune)
    for m in ("unet", "text_encoder", "text_encoder_2"):
        components[m].float()
    components["vae"].float().eval().requires_grad_(False)
    scenes, images = make_dataset(args.unet_images, args.seed + 200, p_position=args.p_position, p_pair=args.p_pair)
    with torch.no_grad():
        latents = encode_latents(components["vae"], images) * float(components["vae"].config.scaling_factor)
    captions = [s.caption for s in scenes]
    t_data = time.time() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    state_path = args.out.with_name(args.out.name + ".train-state.pt")
    curve: list[float] = []

    def checkpoint(ema):
        save_pipeline(dict(components, **ema), args.out)

    minutes = None if args.max_minutes is None else args.max_minutes - t_data / 60 - 0.5
    ema, done = train_denoiser(components, latents, captions, args.unet_steps, args.batch, args.seed + 200, curve,
                               lr=args.lr, max_minutes=minutes, checkpoint=checkpoint, checkpoint_every=250,
                               warmup=100, state_path=state_path, high_noise_share=args.high_noise_share)
    components.update(ema)
    save_pipeline(components, args.out)
    total = time.time() - t0
    base_card = args.finetune / MODEL_CARD_FILE
    base = json.loads(base_card.read_text()) if base_card.exists() else {"version": 1, "unet_steps": 3500}
    card = {
        "version": args.version, "base": {"version": base["version"], "folder": str(args.finetune)},
        "grammar": {"p_position": args.p_position, "p_pair": args.p_pair, "images": args.unet_images,
                    "caption_example": next((c for c in captions if ", a " in c), captions[0])},
        "unet_steps": {"this_run": done, "planned": args.unet_steps, "before": base.get("unet_steps", {})},
        "lr": args.lr, "batch": args.batch, "seed": args.seed, "minutes": total / 60,
        "high_noise_share": args.high_noise_share,
        "torch_threads": torch.get_num_threads(), "load_average_at_end": list(os.getloadavg()),
    }
    (args.out / MODEL_CARD_FILE).write_text(json.dumps(card, indent=1))
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"refmodel_training_v{args.version}.json").write_text(json.dumps(dict(card, curves={"unet_loss": curve}), indent=1))
    plot_curves({"unet_loss": curve}, args.results / f"refmodel_training_v{args.version}.png")
    print(f"fine-tuned {done} steps in {total / 60:.1f} min → {args.out}")


def _colour_polish(args) -> None:
    """The last training stage, run on a saved pipeline: the decoder only, so the UNet's latents stay."""
    from diffusers import AutoencoderKL

    t0 = time.time()
    vae = AutoencoderKL.from_pretrained(args.colour_polish / "vae", torch_dtype=torch.float32)
    curve: list[float] = []
    polish_decoder(vae, args.colour_polish_steps, 16, args.seed + 1, curve, lr=3e-4, colour_weight=COLOUR_WEIGHT)
    clear_for_replacement(args.colour_polish / "vae")
    with atomic_dir(args.colour_polish / "vae") as tmp:
        vae.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "refmodel_colour_polish.json").write_text(json.dumps(
        {"steps": args.colour_polish_steps, "colour_weight": COLOUR_WEIGHT, "minutes": (time.time() - t0) / 60,
         "torch_threads": torch.get_num_threads(), "curve": curve}, indent=1))
    print(f"decoder colour-polished in {(time.time() - t0) / 60:.1f} min → {args.colour_polish / 'vae'}")


if __name__ == "__main__":
    main()
