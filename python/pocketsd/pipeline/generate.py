"""The denoising loop shared by every backend: tokenize, encode text, classifier-free guidance, diffusers scheduler,
SDXL micro-conditioning (`time_ids`), optional img2img start, VAE decode.

It follows diffusers' `StableDiffusionXLPipeline` / `StableDiffusionPipeline` (and their img2img variants) step for
step — same random draws in the same order — so on the same weights the final latents match diffusers (a test holds
it to 1e-4). It is written out rather than driving diffusers' pipeline because the Core ML backend, which has no
torch modules, must run exactly the same code: only the network calls go through `Backend` (see backend.py).
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..errors import BadInput
from ..models.family import ModelFamily
from .backend import Backend
from .options import SCHEDULER_CLASSES as SCHEDULERS
from .report import RunTimer




@dataclass
class GenerationRequest:
    prompt: str
    negative_prompt: str | None = None  # None + force_zeros_for_empty_prompt → zero negative embeddings (diffusers)
    steps: int = 20
    guidance: float = 5.0
    seed: int = 0
    height: int | None = None  # None → backend.default_size
    width: int | None = None
    scheduler: str = "euler"
    init_image: torch.Tensor | None = None  # (1,3,H,W) in [-1, 1]: image → image
    strength: float = 0.8  # share of the schedule re-run from the init image (1.0 = from pure noise)
    # Optional ControlNet (or any extra UNet conditioning): called every step with
    # (latent_model_input, t, encoder_hidden_states, added_cond) → dict of extra kwargs for backend.unet.
    unet_extra: Callable[..., dict] | None = None
    # The share of the steps unet_extra conditions (diffusers' control_guidance_start/end): outside it the UNet
    # runs without residuals (the Core ML backend feeds zeros), exactly as a ControlNet at scale 0.
    control_guidance_start: float = 0.0
    control_guidance_end: float = 1.0
    # Inpainting (needs init_image): (1, 1, H, W) in [0, 1], 1 where the image is repainted, feathered outward
    # (inputs.LoadedMask.tensor()). A plain 4-channel UNet repaints by latent blending, an inpainting UNet
    # (2·C + 1 input channels) gets the mask and the masked image's latents as extra channels.
    mask: torch.Tensor | None = None
    paste_back: bool = True  # after decoding, the original's pixels where the feathered mask is 0


@dataclass
class GenerationResult:
    latents: torch.Tensor  # final latents (scaled, as the scheduler leaves them)
    images: list = field(default_factory=list)  # PIL images (empty when decode=False)
    warnings: list[str] = field(default_factory=list)
    timesteps: list[float] = field(default_factory=list)


def make_scheduler(name: str, config, family: ModelFamily | None = None) -> Any:
    import diffusers

    if family is not None and family.schedulers is not None:  # flow matching: the family's own sampler(s) only
        if name not in family.schedulers:
            raise BadInput(f"--scheduler {name}: {family.title} samples by flow matching; choose "
                           f"{' or '.join(family.schedulers)}")
        return getattr(diffusers, family.schedulers[name]).from_config(dict(config))
    if name not in SCHEDULERS:
        raise BadInput(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    config = dict(config)
    # A config saved by another scheduler class lacks these; DDIM's defaults (clip to [-1, 1], alpha_T = 1) are for
    # pixel-space models and would clip latents. SD/SDXL ship clip_sample=False, set_alpha_to_one=False.
    config.setdefault("clip_sample", False)
    config.setdefault("set_alpha_to_one", False)
    return getattr(diffusers, SCHEDULERS[name]).from_config(config)


def _as_tensor(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).float()


# ---- text -----------------------------------------------------------------------------------------
def truncation_warning(tokenizer, prompt: str) -> str | None:
    """The words CLIP will not see (it keeps 77 tokens including start/end), or None if nothing is dropped."""
    max_len = tokenizer.model_max_length
    ids = tokenizer(prompt, truncation=False, padding=False).input_ids
    if len(ids) <= max_len:
        return None
    dropped = tokenizer.decode(ids[max_len - 1:-1], skip_special_tokens=True).strip()
    return f"prompt is longer than {max_len} tokens; these words are dropped: \"{dropped}\""


def _tokenize(tokenizer, texts: list[str], max_length: int | None = None) -> torch.Tensor:
    length = min(tokenizer.model_max_length, max_length or tokenizer.model_max_length)
    return tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids


def _encode(backend: Backend, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The denoiser's text tokens as the family lays them out (SD/SDXL, FLUX.1: the token states of its encoders
    concatenated on the feature axis; SD3: CLIP's, zero-padded to T5's width, then T5's on the sequence axis) and
    every pooled output concatenated (SDXL: CLIP-G's; SD3: CLIP-L's then CLIP-G's; FLUX.1: CLIP-L's)."""
    family = backend.family
    clip, t5, pooled = [], [], []
    for i, tok in enumerate(backend.tokenizers):
        spec = family.text_encoders[i]
        h, p = backend.encode_text(i, _tokenize(tok, texts, spec.max_length))
        if spec.tokens:
            (t5 if spec.last_hidden and family.text_layout == "clip_then_t5" else clip).append(_as_tensor(h))
        if p is not None:
            pooled.append(_as_tensor(p))
    hidden = torch.cat(clip, dim=-1)
    if t5:  # SD3 (diffusers' StableDiffusion3Pipeline.encode_prompt): pad (or cut) CLIP's features to T5's width
        t5_states = torch.cat(t5, dim=-1)
        hidden = torch.nn.functional.pad(hidden, (0, t5_states.shape[-1] - hidden.shape[-1]))
        hidden = torch.cat([hidden, t5_states], dim=-2)
    return hidden, (torch.cat(pooled, dim=-1) if pooled else None)


def encode_prompts(backend: Backend, request: GenerationRequest, do_cfg: bool, warn: Callable[[str], None]):
    """(prompt_embeds, pooled) with the negative first when guiding, as diffusers batches them."""
    msg = truncation_warning(backend.tokenizers[0], request.prompt)
    if msg:
        warn(msg)
    embeds, pooled = _encode(backend, [request.prompt])
    if not do_cfg:
        return embeds, pooled
    if request.negative_prompt is None and backend.force_zeros_for_empty_prompt:
        neg_embeds, neg_pooled = torch.zeros_like(embeds), (torch.zeros_like(pooled) if pooled is not None else None)
    else:
        neg_embeds, neg_pooled = _encode(backend, [request.negative_prompt or ""])
    embeds = torch.cat([neg_embeds, embeds])
    if pooled is not None:
        pooled = torch.cat([neg_pooled, pooled])
    return embeds, pooled


# ---- staging --------------------------------------------------------------------------------------
class _Stages:
    """load → use → (low-memory) unload, with the load time counted apart from the work."""

    def __init__(self, backend: Backend, timer: RunTimer, low_memory: bool):
        self.backend, self.timer, self.low_memory = backend, timer, low_memory

    def run(self, component: str, stage: str, fn: Callable[[], Any]) -> Any:
        with self.timer.stage("load"):
            self.backend.load(component)
        with self.timer.stage(stage):
            out = fn()
        if self.low_memory:
            self.backend.unload(component)
        return out


def _step_kwargs(scheduler, generator) -> dict:
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs = {}
    if "eta" in params:
        kwargs["eta"] = 0.0
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


def _unscale(backend: Backend, latents: torch.Tensor) -> torch.Tensor:
    latents = latents / backend.scaling_factor
    return latents + backend.shift_factor if backend.shift_factor else latents


def _encode_init_image(backend, stages, image: torch.Tensor, generator) -> torch.Tensor:
    moments = _as_tensor(stages.run("vae_encoder", "vae_encode", lambda: backend.vae_encode(image.float())))
    mean, logvar = torch.chunk(moments, 2, dim=1)
    std = torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))  # diffusers' DiagonalGaussianDistribution
    sample = mean + std * torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
    if backend.shift_factor:
        sample = sample - backend.shift_factor
    return sample * backend.scaling_factor


def to_pil(images: torch.Tensor) -> list:
    from PIL import Image

    arr = (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().numpy()
    return [Image.fromarray((a * 255).round().astype("uint8")) for a in arr]


def _strength_timesteps(scheduler, request: GenerationRequest):
    """diffusers' img2img and inpainting start: skip the first (1 - strength) of the schedule."""
    init_steps = min(int(request.steps * request.strength), request.steps)
    t_start = max(request.steps - init_steps, 0)
    timesteps = scheduler.timesteps[t_start * scheduler.order:]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start * scheduler.order)
    if len(timesteps) == 0:
        raise BadInput(f"--strength {request.strength} with {request.steps} steps leaves no step to run; raise either")
    return timesteps


def control_active(i: int, n: int, start: float, end: float) -> bool:
    """Whether step i of n is inside the ControlNet's [start, end] share of the schedule (diffusers' rule)."""
    return not (i / n < start or (i + 1) / n > end)


def latent_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """Pixel mask (1, 1, H, W) → latent mask (1, 1, H/f, W/f): a latent cell is repainted when any of its pixels
    is (max-pooling, so the repainted latents cover the whole feathered edge the paste-back blends over).
    On a mask drawn on the 8-px grid this equals diffusers' nearest-neighbour resize."""
    return torch.nn.functional.max_pool2d((mask > 0).float(), kernel_size=factor, stride=factor)


@dataclass
class _Inpaint:
    """What inpainting carries through the denoising loop."""

    mask: torch.Tensor               # latent mask (1, 1, h, w)
    image_latents: torch.Tensor | None  # the original's latents (plain UNet: blended back in every step)
    noise: torch.Tensor              # the starting noise (re-used to noise the original to each step's level)
    unet_channels: torch.Tensor | None  # inpainting UNet: [mask, masked-image latents] for one batch row


def _check_unet_channels(backend: Backend, request: GenerationRequest) -> bool:
    """True when the backend's UNet is an inpainting UNet; refuses a request it cannot run."""
    unet_in = int(getattr(backend, "unet_in_channels", backend.latent_channels))
    latent = backend.latent_channels
    if request.mask is not None and request.init_image is None:
        raise BadInput("a mask needs the image it repaints: pass --image FILE with --mask")
    if unet_in == latent:
        return False
    if unet_in == 2 * latent + 1:
        if request.mask is None:
            raise BadInput(f"this model's UNet is an inpainting UNet ({unet_in} input channels: latents, mask and "
                           "masked-image latents); give --image FILE --mask FILE")
        return True
    raise BadInput(f"the UNet takes {unet_in} input channels, the VAE makes {latent}-channel latents: only plain "
                   f"({latent}) and inpainting ({2 * latent + 1}) UNets are supported")


def _start_inpainting(backend, stages, scheduler, request: GenerationRequest, shape, generator, inpaint_unet: bool):
    """diffusers' StableDiffusionXLInpaintPipeline start, random draws in its order: (timesteps, latents, state)."""
    timesteps = _strength_timesteps(scheduler, request)
    from_noise = request.strength == 1.0
    image_latents = None
    if not inpaint_unet or not from_noise:  # a plain UNet blends the original back in; strength < 1 starts from it
        image_latents = _encode_init_image(backend, stages, request.init_image, generator)
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    if from_noise:
        latents = noise * scheduler.init_noise_sigma
    else:
        latents = scheduler.add_noise(image_latents, noise, timesteps[:1])
    mask = latent_mask(request.mask.float(), backend.vae_scale_factor)
    if mask.shape[-2:] != shape[-2:]:
        raise BadInput(f"the mask is {request.mask.shape[-1]}×{request.mask.shape[-2]} px, the image "
                       f"{shape[-1] * backend.vae_scale_factor}×{shape[-2] * backend.vae_scale_factor}: resize it with the image")
    channels = None
    if inpaint_unet:
        masked_image = request.init_image.float() * (request.mask <= 0)  # repainted pixels blanked (0 = mid gray)
        masked_latents = _encode_init_image(backend, stages, masked_image, generator)
        channels = torch.cat([mask, masked_latents], dim=1)
    return timesteps, latents, _Inpaint(mask, image_latents, noise, channels)


def paste_back(decoded: torch.Tensor, init_image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The original wherever the feathered mask is 0, the generated image where it is 1, blended between."""
    mask = mask.to(decoded.dtype)
    return init_image.to(decoded.dtype) * (1 - mask) + decoded * mask


# ---- flow matching (FLUX.1, SD3) ------------------------------------------------------------------
def pack_latents(latents: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) → (B, H/p·W/p, C·p²): FLUX.1's 2×2 patches as tokens (diffusers' FluxPipeline._pack_latents)."""
    if patch == 1:
        return latents
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // patch) * (w // patch), c * patch * patch)


def unpack_latents(latents: torch.Tensor, patch: int, height: int, width: int) -> torch.Tensor:
    """The inverse of `pack_latents` for latents `height` × `width`."""
    if patch == 1:
        return latents
    b, _, channels = latents.shape
    x = latents.view(b, height // patch, width // patch, channels // patch ** 2, patch, patch)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, channels // patch ** 2, height, width)


def latent_position_ids(height: int, width: int) -> torch.Tensor:
    """FLUX.1's image-token positions (tokens, 3): (0, row, column) per packed patch, row-major."""
    ids = torch.zeros(height, width, 3)
    ids[..., 1] += torch.arange(height)[:, None]
    ids[..., 2] += torch.arange(width)[None, :]
    return ids.reshape(height * width, 3)


def set_flow_timesteps(scheduler, family: ModelFamily, steps: int, image_tokens: int) -> None:
    """The schedule diffusers' FLUX.1 / SD3 pipelines set: FLUX.1 passes sigmas linspace(1, 1/steps); the shift
    `mu` grows with the image's token count where the scheduler shifts by resolution (FLUX.1 dev)."""
    config = scheduler.config
    kwargs: dict[str, Any] = {}
    if family.explicit_sigmas and not config.get("use_flow_sigmas", False):
        kwargs["sigmas"] = np.linspace(1.0, 1 / steps, steps)
    if config.get("use_dynamic_shifting", False):  # diffusers' calculate_shift, with its defaults
        base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
        base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
        slope = (max_shift - base_shift) / (max_len - base_len)
        kwargs["mu"] = image_tokens * slope + base_shift - slope * base_len
    scheduler.set_timesteps(None if "sigmas" in kwargs else steps, device="cpu", **kwargs)


def check_family_request(family: ModelFamily, request: GenerationRequest) -> None:
    """A start the family's loop does not have (FLUX.1 and SD3 run text → image only) is refused in one line."""
    if request.init_image is not None and "image" not in family.inputs:
        raise BadInput(f"{family.title} runs text → image only here: image → image, sketch and inpainting are not "
                       "supported for it yet (drop --image/--sketch/--mask)")
    if request.unet_extra is not None and "controlnet" not in family.inputs:
        raise BadInput(f"{family.title} takes no ControlNet or depth conditioning here (drop --controlnet/--depth)")


# ---- the loop -------------------------------------------------------------------------------------
def check_finite(tensor: torch.Tensor, stage: str) -> torch.Tensor:
    """NaN or ±inf would be written as an all-black PNG: stop instead, naming the stage that produced them."""
    if not bool(torch.isfinite(tensor).all()):
        raise BadInput(f"{stage} produced NaN/inf values; nothing was written (the model's weights or a LoRA scale "
                       "overflow — check the model with `pocketsd info`, or lower --lora scales)")
    return tensor


def check_steps(steps: int, scheduler) -> None:
    """More steps than the schedule's training timesteps would repeat timesteps (DDIM refuses them outright)."""
    limit = int(getattr(scheduler.config, "num_train_timesteps", 1000) or 1000)
    if steps > limit:
        raise BadInput(f"--steps {steps} is more than this model's scheduler has timesteps ({limit}); use at most {limit}")


def generate(backend: Backend, request: GenerationRequest, *, timer: RunTimer | None = None,
             low_memory: bool = False, on_step: Callable[[int, int, float], None] | None = None,
             warn: Callable[[str], None] | None = None, decode: bool = True) -> GenerationResult:
    """One image for `request`. `on_step(i, total, seconds)` runs after every scheduler step."""
    timer = timer if timer is not None else RunTimer()
    warnings: list[str] = []

    def _warn(msg: str) -> None:
        warnings.append(msg)
        if warn is not None:
            warn(msg)

    height, width = request.height or backend.default_size[0], request.width or backend.default_size[1]
    family = backend.family
    check_family_request(family, request)
    # FLUX.1 is guidance-distilled: one batch row, the scale goes to its guidance embedding (dev) or nowhere (schnell)
    do_cfg = request.guidance > 1.0 and family.classifier_free_guidance
    inpaint_unet = _check_unet_channels(backend, request)
    stages = _Stages(backend, timer, low_memory)
    generator = torch.Generator(device="cpu").manual_seed(int(request.seed))

    scheduler = make_scheduler(request.scheduler, backend.scheduler_config, family)
    check_steps(request.steps, scheduler)
    embeds, pooled = stages.run("text_encoder", "text_encode", lambda: encode_prompts(backend, request, do_cfg, _warn))
    check_finite(embeds, "text encoding")

    patch = family.latent_patch  # FLUX.1: latent sides a multiple of 2 (diffusers' prepare_latents)
    latent_hw = (patch * (height // (backend.vae_scale_factor * patch)),
                 patch * (width // (backend.vae_scale_factor * patch)))
    shape = (1, backend.latent_channels, *latent_hw)
    if family.flow_matching:
        token_side = max(patch, int(getattr(backend, "denoiser_config", {}).get("patch_size") or 1))
        set_flow_timesteps(scheduler, family, request.steps, (latent_hw[0] // token_side) * (latent_hw[1] // token_side))
    else:
        scheduler.set_timesteps(request.steps, device="cpu")
    timesteps = scheduler.timesteps

    inpaint = None
    if request.mask is not None:
        timesteps, latents, inpaint = _start_inpainting(backend, stages, scheduler, request, shape, generator,
                                                        inpaint_unet)
    elif request.init_image is None:
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)
        latents = torch.randn(shape, generator=generator, dtype=torch.float32)
        latents = pack_latents(latents * getattr(scheduler, "init_noise_sigma", 1.0), patch)
    else:
        timesteps = _strength_timesteps(scheduler, request)
        init_latents = _encode_init_image(backend, stages, request.init_image, generator)
        noise = torch.randn(init_latents.shape, generator=generator, dtype=torch.float32)
        latents = scheduler.add_noise(init_latents, noise, timesteps[:1])

    added_cond = None
    if family.denoiser_signature == "mmdit":  # pooled text, FLUX.1 dev's guidance scale, FLUX.1's position ids
        added_cond = {"pooled_projections": pooled}
        if getattr(backend, "denoiser_config", {}).get("guidance_embeds"):
            added_cond["guidance"] = torch.full([embeds.shape[0]], float(request.guidance))
        if patch > 1:
            added_cond["txt_ids"] = torch.zeros(embeds.shape[1], 3)
            added_cond["img_ids"] = latent_position_ids(latent_hw[0] // patch, latent_hw[1] // patch)
    elif backend.family.time_ids:
        # micro-conditioning: original size, crop top-left, target size (diffusers' defaults for a plain run)
        time_ids = torch.tensor([backend.family.time_ids_for(height, width)], dtype=torch.float32)
        added_cond = {"text_embeds": pooled, "time_ids": time_ids.repeat(embeds.shape[0], 1)}

    step_kwargs = _step_kwargs(scheduler, generator)

    def denoise() -> torch.Tensor:
        nonlocal latents
        for i, t in enumerate(timesteps):
            t0 = time.perf_counter()
            model_in = torch.cat([latents] * 2) if do_cfg else latents
            if hasattr(scheduler, "scale_model_input"):  # flow matching scales nothing
                model_in = scheduler.scale_model_input(model_in, t)
            t_batch = t.to(torch.float32).expand(model_in.shape[0]).contiguous()
            if family.timestep_divisor != 1:
                t_batch = t_batch / family.timestep_divisor
            extra = {}
            if request.unet_extra and control_active(i, len(timesteps), request.control_guidance_start,
                                                     request.control_guidance_end):
                extra = request.unet_extra(model_in, t_batch, embeds, added_cond)
            if inpaint is not None and inpaint.unet_channels is not None:
                model_in = torch.cat([model_in, inpaint.unet_channels.expand(model_in.shape[0], -1, -1, -1)], dim=1)
            noise_pred = _as_tensor(backend.unet(model_in, t_batch, embeds, added_cond, **extra))
            if do_cfg:
                uncond, text = noise_pred.chunk(2)
                noise_pred = uncond + request.guidance * (text - uncond)
            latents = scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=False)[0]
            check_finite(latents, f"the UNet (denoising step {i + 1} of {len(timesteps)})")
            if inpaint is not None and inpaint.image_latents is not None and inpaint.unet_channels is None:
                # A plain UNet: outside the mask, the original noised to the level of the next step (diffusers).
                kept = inpaint.image_latents
                if i < len(timesteps) - 1:
                    kept = scheduler.add_noise(kept, inpaint.noise, timesteps[i + 1:i + 2])
                latents = (1 - inpaint.mask) * kept + inpaint.mask * latents
            seconds = time.perf_counter() - t0
            timer.step(seconds)
            if on_step is not None:
                on_step(i, len(timesteps), seconds)
        return latents

    stages.run("unet", "denoise", denoise)
    timer.stages.pop("denoise", None)  # the per-step list carries it; "denoise" would double count in the table
    latents = unpack_latents(latents, patch, *latent_hw)

    images = []
    if decode:
        decoded = stages.run("vae_decoder", "vae_decode", lambda: _as_tensor(backend.vae_decode(_unscale(backend, latents))))
        check_finite(decoded, "the VAE decoder")
        if request.mask is not None and request.paste_back:
            decoded = paste_back(decoded, request.init_image, request.mask)
        images = to_pil(decoded)
    return GenerationResult(latents=latents, images=images, warnings=warnings,
                            timesteps=[float(t) for t in timesteps])
