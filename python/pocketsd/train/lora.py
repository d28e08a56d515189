"""`pocketsd lora train`: a LoRA from a folder of captioned images, on an fp16 or a compressed SDXL/SD model.

The loop is diffusers' text-to-image LoRA recipe (train_text_to_image_lora_sdxl.py): frozen VAE latents and
(unless `--text-encoders`) frozen text embeddings computed once, DDPM noise at uniform timesteps, ε or v target
from the model's own scheduler config, min-SNR-γ weighting, AdamW on the LoRA factors only, SDXL's size/crop
conditioning per image. On a compressed model the UNet's compressed layers stay as stored — 4-bit codes,
tables, scales and their low-rank branch frozen ("packed": codes in memory, dequantized per use) — and only the
new factors learn (`adapters.py`), so the result merges into that model without re-quantizing.

Every random draw comes from one generator whose state is checkpointed with the factors and AdamW's moments
(`checkpoint.py`): a run killed and resumed computes the same LoRA as one that never stopped.
"""

from __future__ import annotations

import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from .. import __version__
from ..artifacts import COMPRESSED, COREML, write_json
from ..errors import BadInput
from ..models import ModelComponents, precheck, resolve_model
from ..models.family import downscale
from . import checkpoint as ckpt
from .adapters import TEXT_TARGETS, UNET_TARGETS, add_lora, lora_state_dict, trainable_named
from .dataset import find_examples, fingerprint, prepare_images
from .options import TrainOptions, check_options

Progress = Callable[[str, int, int, str], None]
TASK = "LoRA training"


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def _rss_mb() -> float:
    import psutil

    return round(psutil.Process().memory_info().rss / 2**20, 1)


def _held_bytes(module: torch.nn.Module) -> int:
    """Bytes of every tensor a module holds (parameters and buffers, derived ones included)."""
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---- the model ------------------------------------------------------------------------------------------
def open_model(opts: TrainOptions) -> ModelComponents:
    source = resolve_model(opts.model)
    if source.kind == COREML:
        raise BadInput(f"{source.spec} is a Core ML bundle, which cannot be trained; train on the diffusers or "
                       "compressed folder it was converted from")
    precheck(source, opts.allow_pickle)
    return ModelComponents(source, allow_pickle=opts.allow_pickle, unet_mode=opts.unet_mode)


def check_outputs(opts: TrainOptions) -> None:
    """The --out guard (`artifacts.outputs.check_out`) for the LoRA and its report, before any work: neither may be
    the model or the captions file or lie inside the model, nor replace a file PocketSD did not write (unless
    --force); stale temps of a killed run beside them are removed."""
    from ..artifacts.outputs import LORA, REPORT, check_distinct, check_out

    inputs = [("--model", resolve_model(opts.model).path), ("--captions", opts.captions)]
    check_distinct("--out", opts.out, "--report", opts.report_path)
    check_out(opts.out, LORA, inputs=inputs, force=opts.force, command="pocketsd lora train")
    check_out(opts.report_path, REPORT, inputs=inputs, force=opts.force, command="pocketsd lora train",
              flag="--report", probe=Path(opts.report_path).parent.resolve() != Path(opts.out).parent.resolve())


def native_resolution(comps: ModelComponents) -> tuple[int, int, int]:
    """(native image size, VAE downscale, the latent multiple the UNet needs)."""
    unet, vae = comps.config("unet"), comps.config("vae")
    vae_scale, multiple = downscale(vae), downscale(unet)
    sample = unet.get("sample_size", 64)
    sample = sample[0] if isinstance(sample, (list, tuple)) else sample
    return int(sample) * vae_scale, vae_scale, multiple


def check_resolution(resolution: int, vae_scale: int, multiple: int) -> None:
    step = vae_scale * multiple
    if resolution % step:
        raise BadInput(f"--resolution {resolution} does not fit this model: use a multiple of {step} "
                       f"(e.g. {max(step, resolution // step * step)})")


def _target_dims(comps: ModelComponents, name: str, targets: list[str]) -> list[tuple[str, int, int]]:
    """(module name, input width, output width) of every layer a LoRA with `targets` adapts in component `name`,
    read from a skeleton built from the config on the meta device (no weight is read). A conv's input width is
    in·kh·kw, the width of its LoRA down matrix. Compressed layers have the shapes of the modules they replace."""
    from torch import nn

    from ..models.components import component_class, skeleton

    module = skeleton(component_class(comps.folder, name), comps.config(name))
    dims = []
    for mod_name, mod in module.named_modules():
        if not any(mod_name == t or mod_name.endswith("." + t) for t in targets):  # PEFT's suffix match
            continue
        if isinstance(mod, nn.Linear):
            dims.append((mod_name, mod.in_features, mod.out_features))
        elif isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1]
            dims.append((mod_name, mod.in_channels * k // mod.groups, mod.out_channels))
    return dims


# AdamW on fp32 factors: the factor, its gradient and two moments (4 + 4 + 8 bytes a parameter).
BYTES_PER_LORA_PARAM = 16


def check_rank(opts: TrainOptions, comps: ModelComponents) -> int:
    """--rank against the model, before any weight loads: it may not exceed the narrowest adapted layer (a LoRA
    wider than min(in, out) adds no expressive power, only memory), and the factors with their gradients and AdamW
    moments must fit in the memory this machine has free. Returns the LoRA's parameter count."""
    import psutil

    dims = _target_dims(comps, "unet", UNET_TARGETS)
    if opts.text_encoders:
        for name in ("text_encoder", "text_encoder_2"):
            if name in comps.index:
                dims += [(f"{name}.{n}", i, o) for n, i, o in _target_dims(comps, name, TEXT_TARGETS)]
    if not dims:
        raise BadInput(f"{comps.source.spec}: no UNet layer matches the LoRA targets ({', '.join(UNET_TARGETS)})")
    name, d_in, d_out = min(dims, key=lambda d: min(d[1], d[2]))
    limit = min(d_in, d_out)
    if opts.rank > limit:
        raise BadInput(f"--rank {opts.rank} is larger than the narrowest layer the LoRA adapts ({name}: {d_in} → "
                       f"{d_out}); use --rank ≤ {limit}")
    per_rank = sum(i + o for _, i, o in dims)
    need = opts.rank * per_rank * BYTES_PER_LORA_PARAM
    free = psutil.virtual_memory().available
    if need > free // 2:  # the other half: the model, activations, latents and the images
        fits = max(1, free // 2 // (per_rank * BYTES_PER_LORA_PARAM))
        raise BadInput(f"--rank {opts.rank} needs {need / 2**30:.1f} GB for the LoRA's factors, gradients and AdamW "
                       f"moments, more than half the {free / 2**30:.1f} GB free here; use --rank ≤ {fits}")
    return opts.rank * per_rank


def check_data_memory(n_images: int, resolution: int) -> None:
    """The prepared images are held whole (float32 RGB at the training size): refuse a set that cannot fit."""
    import psutil

    from .dataset import pixels_bytes

    need = pixels_bytes(n_images, resolution)
    free = psutil.virtual_memory().available
    if need > free // 2:
        fits = max(1, free // 2 // pixels_bytes(1, resolution))
        raise BadInput(f"{n_images} images at {resolution} px need {need / 2**30:.1f} GB as training pixels, more than "
                       f"half the {free / 2**30:.1f} GB free here; use at most {fits} images or a lower --resolution")


class TextConditioning:
    """The text encoders' conditioning for SDXL (both encoders' penultimate states + pooled projection) or
    SD 1.x/2.x (the last hidden state), as diffusers' pipelines compute it."""

    def __init__(self, comps: ModelComponents, device: str):
        self.family, self.device = comps.model_family, device
        self.pairs = [(comps.get(t.tokenizer), comps.get(t.component).to(device)) for t in self.family.text_encoders]

    def ids(self, captions: list[str]) -> list[torch.Tensor]:
        return [tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                    return_tensors="pt").input_ids for tok, _ in self.pairs]

    def encode(self, ids: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.family.penultimate_hidden:  # one encoder, its last (normed) hidden state, no pooled text
            return self.pairs[0][1](ids[0].to(self.device))[0], None
        hidden, pooled = [], None
        for (_, enc), chunk in zip(self.pairs, ids):
            out = enc(chunk.to(self.device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = out[0]
        return torch.cat(hidden, dim=-1), pooled

    @torch.no_grad()
    def encode_all(self, captions: list[str], chunk: int = 32) -> tuple[torch.Tensor, torch.Tensor | None]:
        parts = [self.encode(self.ids(captions[i:i + chunk])) for i in range(0, len(captions), chunk)]
        hidden = torch.cat([h for h, _ in parts]).cpu()
        pooled = torch.cat([p for _, p in parts]).cpu() if parts[0][1] is not None else None
        return hidden, pooled

    def encoders(self) -> list[torch.nn.Module]:
        return [enc for _, enc in self.pairs]


@torch.no_grad()
def encode_latents(comps: ModelComponents, pixels, device: str, chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's latent distribution (mean, std), so every step can draw a fresh sample as diffusers'
    uncached training does, at the cost of one encoding."""
    vae = comps.get("vae").to(device)
    means, stds = [], []
    for i in range(0, len(pixels), chunk):
        dist = vae.encode(torch.from_numpy(pixels[i:i + chunk]).to(device)).latent_dist
        means.append(dist.mean.cpu())
        stds.append(dist.std.cpu())
    return torch.cat(means), torch.cat(stds)


# ---- the loop ---------------------------------------------------------------------------------------------
def _settings(opts: TrainOptions, comps: ModelComponents, data_digest: str, resolution: int) -> dict:
    """What a checkpoint must match to be resumed (everything that changes the computed steps but their count)."""
    return {"model": str(comps.folder if comps.source.kind != "single_file" else comps.source.path),
            "unet_mode": opts.unet_mode if comps.compressed is not None else None, "data": data_digest,
            "rank": opts.rank, "alpha": opts.lora_alpha, "lr": opts.lr, "batch": opts.batch, "resolution": resolution,
            "text_encoders": opts.text_encoders, "seed": opts.seed, "snr_gamma": opts.snr_gamma,
            "warmup_steps": opts.warmup_steps, "targets": UNET_TARGETS + (TEXT_TARGETS if opts.text_encoders else [])}


def _loss(pred, target, timesteps, scheduler, snr_gamma) -> torch.Tensor:
    per_sample = ((pred.float() - target.float()) ** 2).mean(dim=list(range(1, pred.ndim)))
    if snr_gamma is None:
        return per_sample.mean()
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, timesteps)
    weight = torch.clamp(snr, max=snr_gamma)
    weight = weight / (snr + 1) if scheduler.config.prediction_type == "v_prediction" else weight / snr
    return (per_sample * weight.to(per_sample.device)).mean()


def train_lora(opts: TrainOptions, on_progress: Progress | None = None, log: Callable[[str], None] = print) -> dict:
    """Train, checkpoint, preview and write the LoRA; returns the run's report (also written as JSON)."""
    started, cpu_started = time.time(), _cpu_seconds()
    check_options(opts)
    check_outputs(opts)
    on_progress = on_progress or (lambda *a: None)
    out = Path(opts.out)
    ck_dir = ckpt.checkpoint_dir(out)
    if ck_dir.exists() and not opts.resume:
        raise BadInput(f"a checkpoint of an earlier run is at {ck_dir}: pass --resume to continue it, or delete it "
                       "to start over")
    examples = find_examples(opts.images, opts.captions)
    comps = open_model(opts)
    native, vae_scale, multiple = native_resolution(comps)
    resolution = opts.resolution or native
    check_resolution(resolution, vae_scale, multiple)
    check_rank(opts, comps)
    check_data_memory(len(examples), resolution)
    prepared = prepare_images(examples, resolution)
    device = opts.device
    import diffusers
    import peft  # noqa: F401  (imported here so the RSS below is the libraries' alone)

    rss_before_weights = _rss_mb()

    # Frozen inputs, computed once: latent distributions, and text embeddings unless the encoders learn too.
    means, stds = encode_latents(comps, prepared.pixels, device)
    vae_config = comps.get("vae").config
    scaling, shift = comps.model_family.vae_normalisation(vae_config)
    shift = shift or 0.0
    comps.release("vae")
    captions = [ex.caption for ex in examples]
    preview_prompts = list(opts.preview_prompts) or captions[:4]
    text = TextConditioning(comps, device)
    negative = text.encode_all([""])
    if opts.text_encoders:
        caption_ids = text.ids(captions)
        hidden = pooled = None
    else:
        hidden, pooled = text.encode_all(captions)
        preview_cond = text.encode_all(preview_prompts)
        for encoder in comps.model_family.text_encoders:
            comps.release(encoder.component)
        text = None
    time_ids = torch.tensor([list(o) + list(c) + [resolution, resolution]
                             for o, c in zip(prepared.original_sizes, prepared.crops_top_left)], dtype=torch.float32)

    unet = comps.get("unet")
    params = add_lora(unet, opts.rank, opts.lora_alpha, UNET_TARGETS, opts.seed)
    modules = {"unet": unet}
    if opts.text_encoders:
        for k, enc in enumerate(text.encoders()):
            params += add_lora(enc, opts.rank, opts.lora_alpha, TEXT_TARGETS, opts.seed + 1 + k)
            modules[comps.model_family.text_encoders[k].component] = enc
    unet.to(device)
    if opts.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    named = {f"{m}.{n}": p for m, mod in modules.items() for n, p in trainable_named(mod).items()}
    optimizer = torch.optim.AdamW(list(named.values()), lr=opts.lr, weight_decay=1e-2)
    scheduler = diffusers.DDPMScheduler.from_config(comps.config("scheduler"))
    prediction = scheduler.config.prediction_type
    generator = torch.Generator().manual_seed(opts.seed)
    settings = _settings(opts, comps, fingerprint(examples), resolution)

    state = ckpt.TrainState()
    if ck_dir.exists():
        state = ckpt.load(ck_dir, named, optimizer, generator, settings)
        if state.step > opts.steps:
            raise BadInput(f"the checkpoint at {ck_dir} is at step {state.step}, past --steps {opts.steps}; "
                           f"give --steps ≥ {state.step}")
        log(f"resumed from {ck_dir} at step {state.step}")
    elif opts.resume:
        log(f"no checkpoint at {ck_dir}; starting at step 0")
    n_params = sum(p.numel() for p in named.values())
    unet_bytes_held = _held_bytes(unet)
    previews: list[str] = []
    preview_seconds = 0.0

    def preview(step: int) -> None:
        nonlocal preview_seconds
        from .preview import render_previews

        t0 = time.time()
        cond = text.encode_all(preview_prompts) if text is not None else preview_cond
        path = out.with_name(out.name.removesuffix(".safetensors") + ".previews") / f"step_{step:06d}.png"
        render_previews(comps, unet, cond, negative, preview_prompts, resolution, opts.preview_steps, opts.seed, path,
                        device, text_encoders=modules if opts.text_encoders else None)
        previews.append(str(path))
        unet.train()
        preview_seconds += time.time() - t0

    on_progress(TASK, state.step, opts.steps, "resumed" if state.step else "")
    unet.train()
    for enc in (text.encoders() if text is not None else []):
        enc.train()
    loop_wall, loop_cpu = time.time(), _cpu_seconds()
    n = len(examples)
    for step in range(state.step, opts.steps):
        for group in optimizer.param_groups:
            group["lr"] = opts.lr * min(1.0, (step + 1) / max(1, opts.warmup_steps))
        idx = torch.randint(0, n, (opts.batch,), generator=generator)
        sample = means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=generator)
        x0 = (sample - shift) * scaling
        noise = torch.randn(x0.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (opts.batch,), generator=generator)
        noisy = scheduler.add_noise(x0, noise, timesteps)
        target = scheduler.get_velocity(x0, noise, timesteps) if prediction == "v_prediction" else noise
        if text is not None:
            cond, cond_pooled = text.encode([ids[idx] for ids in caption_ids])
        else:
            cond, cond_pooled = hidden[idx].to(device), (pooled[idx].to(device) if pooled is not None else None)
        extra = {}
        if comps.model_family.time_ids:
            extra["added_cond_kwargs"] = {"text_embeds": cond_pooled, "time_ids": time_ids[idx].to(device)}
        pred = unet(noisy.to(device), timesteps.to(device), cond, **extra).sample
        loss = _loss(pred, target.to(device), timesteps, scheduler, opts.snr_gamma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(named.values()), 1.0)
        optimizer.step()
        value = float(loss.detach())
        if value != value:  # NaN: the run has diverged; a checkpoint of it would only resume the divergence
            raise RuntimeError(f"the loss became NaN at step {step + 1}; lower --lr (now {opts.lr:g})")
        state.curve.append(value)
        state.step = step + 1
        on_progress(TASK, 1, opts.steps, f"loss {value:.4f}")
        now_wall, now_cpu = time.time(), _cpu_seconds()
        state.train_seconds += now_wall - loop_wall
        state.cpu_seconds += now_cpu - loop_cpu
        if state.step % opts.checkpoint_every == 0 and state.step < opts.steps:
            ckpt.save(ck_dir, named, optimizer, generator, state, settings)
        if opts.preview_interval and state.step % opts.preview_interval == 0:
            preview(state.step)
        loop_wall, loop_cpu = time.time(), _cpu_seconds()
    if opts.preview_interval and (not previews or not previews[-1].endswith(f"step_{state.step:06d}.png")):
        preview(state.step)

    from .export import write_lora

    unet.eval()
    layers = write_lora(out, comps, modules, opts.rank, opts.lora_alpha)
    if ck_dir.exists() and not opts.keep_checkpoint:
        shutil.rmtree(ck_dir, ignore_errors=True)
    curve = state.curve
    report = {
        "pocketsd_version": __version__, "seed": opts.seed,
        "output": str(out), "bytes": out.stat().st_size, "layers": layers, "trainable_parameters": n_params,
        "model": {"spec": comps.source.spec, "kind": comps.source.kind, "family": comps.family,
                  "unet_mode": opts.unet_mode if comps.source.kind == COMPRESSED else None},
        "data": {"images": n, "folder": str(opts.images), "resolution": resolution, "digest": settings["data"]},
        "settings": settings, "steps": state.step, "device": device, "torch_threads": torch.get_num_threads(),
        "loss_first10": sum(curve[:10]) / max(1, len(curve[:10])), "loss_last10": sum(curve[-10:]) / max(1, len(curve[-10:])),
        "curve": curve, "train_seconds": round(state.train_seconds, 2), "train_cpu_seconds": round(state.cpu_seconds, 2),
        "preview_seconds": round(preview_seconds, 2), "previews": previews,
        "process_seconds": round(time.time() - started, 2), "process_cpu_seconds": round(_cpu_seconds() - cpu_started, 2),
        "peak_rss_mb": _peak_rss_mb(), "memory_method": "getrusage ru_maxrss (process lifetime)",
        "rss_before_weights_mb": rss_before_weights, "unet_bytes_held": unet_bytes_held,
    }
    write_json(opts.report_path, report)
    return report


def usage_hint(out: Path) -> str:
    return (f"use it with `pocketsd generate \"…\" --lora {out}` or merge it into a compressed model with "
            f"`pocketsd lora merge --model DIR --lora {out} --out DIR2`")


__all__ = ["TrainOptions", "train_lora", "usage_hint"]
