"""Timestep-aware calibration (Q-Diffusion): layer-input statistics gathered over the whole sampling schedule.

The fp16 pipeline runs on N prompts for `steps` sampling steps with classifier-free guidance, so every UNet
call holds both the conditional and the unconditional half. A forward pre-hook on each Linear/Conv2d keeps,
per layer and with bounded memory:
  - act_max: per-input-channel max|X_j| over everything seen (for the smoothing scales), and
  - rows: a uniform random subsample of at most `rows_per_layer` input rows — token vectors for a Linear,
    unfolded (in·kh·kw) patches for a Conv2d — on which output errors are measured.
Sampling steps are spread uniformly over the schedule by the scheduler itself; `timesteps` restricts which
calls are recorded: "all", "first25" (the first quarter of sampling, t ≥ 0.75·T: high noise) or "last25"
(t < 0.25·T: low noise) — the Q-Diffusion ablation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BadInput
from ..models.family import FAMILIES, ModelFamily, family_of_denoiser
from .allocate import UNBATCHED
from .recipes import VAE_GATE_IMAGES

TIMESTEP_RANGES = ("all", "first25", "last25")


@dataclass
class LayerStats:
    act_max: torch.Tensor  # (in,)
    rows: torch.Tensor  # (m, in·k) fp16 subsample of inputs
    calls: int = 0


@dataclass
class Calibration:
    stats: dict[str, LayerStats]
    info: dict = field(default_factory=dict)
    # A few whole-network calls (inputs only, batch rows subsampled; for the UNet spread over the recorded
    # timesteps, for a text encoder its token ids): the budget allocator replays them to measure each layer's
    # end-to-end sensitivity.
    unet_inputs: list[dict] = field(default_factory=list)
    # The text encoders' own statistics, by pipeline component name ("text_encoder", "text_encoder_2").
    encoders: dict[str, "Calibration"] = field(default_factory=dict)
    # The first batch's final latents (the denoiser's scale, fp32, CPU): what the compressed VAE's fidelity gate
    # decodes, so the gate sees the model's own pictures without a second sampling run.
    latents: torch.Tensor | None = None

    def rows(self, name: str) -> torch.Tensor | None:
        st = self.stats.get(name)
        return None if st is None else st.rows.float()

    def act_max(self, name: str) -> torch.Tensor | None:
        st = self.stats.get(name)
        return None if st is None else st.act_max


@dataclass(frozen=True)
class CalibrationSettings:
    """How calibration samples: its defaults live here once (the CLI reads them)."""

    count: int = 64  # prompts drawn from the default set
    steps: int = 8  # sampling steps per prompt
    timesteps: str = "all"  # "all" | "first25" | "last25"
    rows_per_layer: int = 512
    batch_size: int = 8
    guidance: float = 5.0
    seed: int = 0
    unet_calls: int = 8  # whole-UNet calls kept for the budget's probes …
    unet_call_rows: int = 4  # … and batch rows kept per call
    max_unet_evaluations: int = 2000  # calibration + probes, in UNet evaluations at native size (see compress.plan_probes)
    size: tuple[int, int] | None = None  # (width, height) to sample at; None: the model's native size

    def unet_evaluations(self, prompts: int, native_pixels: int) -> float:
        """UNet evaluations at native size calibration makes: every prompt at every step, twice with guidance
        (cond + uncond), scaled by the pixels sampled against the native size."""
        scale = 1.0 if self.size is None else self.size[0] * self.size[1] / native_pixels
        return prompts * self.steps * (2 if self.guidance > 1 else 1) * scale

    def check(self) -> "CalibrationSettings":
        if self.timesteps not in TIMESTEP_RANGES:
            raise BadInput(f"--calib-timesteps must be one of {', '.join(TIMESTEP_RANGES)}, got {self.timesteps!r}")
        if not 1 <= self.steps <= 1000:
            raise BadInput(f"--calib-steps must be in 1..1000, got {self.steps}")
        if not 1 <= self.count <= 100_000:
            raise BadInput(f"--calib-count must be in 1..100000, got {self.count}")
        if self.size is not None and any(v % 64 for v in self.size):
            raise BadInput(f"--calib-size {self.size[0]}x{self.size[1]} must be a multiple of 64 on both sides")
        if self.max_unet_evaluations < 1:
            raise BadInput(f"--max-unet-evals must be at least 1, got {self.max_unet_evaluations}")
        return self


def _in_range(t: float, num_train: int, timesteps: str) -> bool:
    if timesteps == "first25":
        return t >= 0.75 * num_train
    if timesteps == "last25":
        return t < 0.25 * num_train
    return True


class _Recorder:
    """Forward pre-hooks collecting LayerStats; `active` is toggled per UNet call by the timestep gate."""

    def __init__(self, modules: dict[str, nn.Module], rows_per_layer: int, rows_per_call: int, seed: int):
        self.modules, self.rows_per_layer, self.rows_per_call = modules, rows_per_layer, rows_per_call
        self.gen = torch.Generator().manual_seed(seed)
        self.active = True
        self.max: dict[str, torch.Tensor] = {}
        self.rows: dict[str, list[torch.Tensor]] = {}
        self.kept: dict[str, int] = {}
        self.calls: dict[str, int] = {}

    def _sample_rows(self, module: nn.Module, x: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-input-channel max|x|, `count` random input rows). For a conv the rows are (in·kh·kw) patches
        gathered at random output positions — never the whole unfolded input, which for an SDXL-size
        activation would be gigabytes."""
        x = x.detach()
        if isinstance(module, nn.Conv2d):
            amax = x.abs().amax(dim=(0, 2, 3))
            (kh, kw), (sh, sw), (ph, pw), (dh, dw) = module.kernel_size, module.stride, module.padding, module.dilation
            b_, c_, h_, w_ = x.shape
            ho, wo = (h_ + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w_ + 2 * pw - dw * (kw - 1) - 1) // sw + 1
            xp = F.pad(x, (pw, pw, ph, ph))
            dev = x.device  # the draws come from the CPU generator (reproducible on any device), indices go to x
            b = torch.randint(b_, (count,), generator=self.gen).to(dev)
            i = (torch.randint(ho, (count,), generator=self.gen)[:, None] * sh + torch.arange(kh)[None] * dh).to(dev)
            j = (torch.randint(wo, (count,), generator=self.gen)[:, None] * sw + torch.arange(kw)[None] * dw).to(dev)
            patches = xp[b[:, None, None, None], torch.arange(c_, device=dev)[None, :, None, None], i[:, None, :, None],
                         j[:, None, None, :]]  # (count, in, kh, kw): the order of weight.reshape(out, -1)
            return amax, patches.reshape(count, -1)
        flat = x.reshape(-1, x.shape[-1])
        return flat.abs().amax(0), flat[torch.randint(flat.shape[0], (count,), generator=self.gen).to(x.device)]

    def hook(self, name: str, gated: bool = True):
        def pre_hook(module, args):
            if gated and not self.active:
                return
            amax, rows = self._sample_rows(module, args[0], self.rows_per_call)
            amax = amax.float().cpu()  # statistics live on the CPU, where the decomposition runs
            self.max[name] = amax if name not in self.max else torch.maximum(self.max[name], amax)
            self.rows.setdefault(name, []).append(rows.to(torch.float16).cpu())
            self.kept[name] = self.kept.get(name, 0) + rows.shape[0]
            self.calls[name] = self.calls.get(name, 0) + 1
            if self.kept[name] > 2 * self.rows_per_layer:  # bound memory: thin as we go
                self._thin(name, self.rows_per_layer)
        return pre_hook

    def _thin(self, name: str, keep: int) -> None:
        allrows = torch.cat(self.rows[name])
        pick = torch.randperm(allrows.shape[0], generator=self.gen)[:keep]
        self.rows[name] = [allrows[pick]]
        self.kept[name] = len(pick)

    def result(self) -> dict[str, LayerStats]:
        out = {}
        for name in self.max:
            self._thin(name, self.rows_per_layer)
            out[name] = LayerStats(self.max[name], self.rows[name][0], self.calls[name])
        return out


def pipeline_denoiser(pipeline) -> tuple[nn.Module, ModelFamily | None]:
    """The pipeline's denoiser (a UNet, or FLUX.1's / SD3's transformer) and the family its config belongs to (None
    for a UNet no family describes: it is calibrated as a UNet, as before families existed)."""
    for name in dict.fromkeys(f.denoiser for f in FAMILIES.values()):
        module = getattr(pipeline, name, None)
        if module is not None:
            try:
                return module, family_of_denoiser({**module.config, "_class_name": type(module).__name__})
            except BadInput:
                return module, None
    raise BadInput(f"{type(pipeline).__name__} has no denoiser PocketSD knows (UNet or transformer)")


def _transformer_call(kwargs, rows: int, gen: torch.Generator, family: ModelFamily) -> dict:
    """The tensors of one transformer call (keyword arguments, as diffusers' FLUX.1 and SD3 pipelines pass them),
    keeping `rows` random batch rows; the inputs without a batch axis (FLUX.1's position ids) whole."""
    sample = kwargs["hidden_states"]
    pick = torch.randperm(sample.shape[0], generator=gen)[:rows]
    call = {"hidden_states": sample[pick].clone()}  # first: the probe counts its samples on the first tensor
    for key, value in kwargs.items():
        if isinstance(value, torch.Tensor) and key not in call:
            call[key] = value.clone() if key in family.unbatched_inputs else value[pick].clone()
    call[UNBATCHED] = tuple(k for k in family.unbatched_inputs if k in call)
    return call


def _unet_call(args, kwargs, rows: int, gen: torch.Generator) -> dict:
    """The tensors of one UNet call, keeping `rows` random batch rows (same rows across all inputs)."""
    sample = args[0]
    pick = torch.randperm(sample.shape[0], generator=gen)[:rows]
    t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
    t = torch.as_tensor(t)
    call = {"sample": sample[pick].clone(), "timestep": t[pick].clone() if t.dim() else t.clone(),
            "encoder_hidden_states": kwargs["encoder_hidden_states"][pick].clone()}
    added = kwargs.get("added_cond_kwargs")
    if added:
        call["added_cond_kwargs"] = {k: v[pick].clone() for k, v in added.items()}
    return call


def calibrate(pipeline, modules: dict[str, nn.Module], prompts: list[str], steps: int = 8,
              timesteps: str = "all", rows_per_layer: int = 512, batch_size: int = 8, guidance: float = 5.0,
              seed: int = 0, progress=None, unet_calls: int = 8, unet_call_rows: int = 4,
              max_row_bytes: int = 2 << 30, encoder_modules: dict[str, dict[str, nn.Module]] | None = None,
              encoder_calls: int = 4, size: tuple[int, int] | None = None, on_batch=None,
              keep_latents: int = VAE_GATE_IMAGES) -> Calibration:
    """Run `pipeline` (any diffusers text-to-image pipeline with a UNet) and collect statistics of `modules`
    (the UNet's layers) and, when given, of `encoder_modules` ({"text_encoder": {name: layer}, …}).

    Text encoders run once per prompt batch, not per step, so their layers are recorded on every call (the
    timestep gate is the UNet's); their first `encoder_calls` batches of token ids are kept for the probes.
    progress: optional callable(advance: int) called once per sampling step of each batch.
    on_batch: optional callable(batch index) before each prompt batch runs (block-wise distillation's recorder
    tags its calls with it, to hold out whole prompts).
    keep_latents: how many of the first batch's final latents to keep (`Calibration.latents`).
    """
    if timesteps not in TIMESTEP_RANGES:
        raise BadInput(f"--calib-timesteps must be one of {', '.join(TIMESTEP_RANGES)}, got {timesteps!r}")
    if steps < 1 or not prompts:
        raise BadInput("calibration needs at least one prompt and one step")
    # Bound the kept rows (fp16, up to 2× before thinning) to `max_row_bytes` over all layers: on SDXL's
    # ~800 layers averaging ~3000 inputs wide, 512 rows each would otherwise hold ~5 GB.
    total_width = sum(m.weight[0].numel() for m in modules.values()) or 1
    rows_per_layer = int(min(rows_per_layer, max(64, max_row_bytes // (4 * total_width))))
    batches = math.ceil(len(prompts) / batch_size)
    recorded_share = 1.0 if timesteps == "all" else 0.25
    expected_calls = max(1, int(batches * steps * recorded_share))
    rows_per_call = max(8, math.ceil(2 * rows_per_layer / expected_calls))
    rec = _Recorder(modules, rows_per_layer, rows_per_call, seed)
    num_train = int(getattr(pipeline.scheduler.config, "num_train_timesteps", 1000))

    calls: list[dict] = []
    call_gen = torch.Generator().manual_seed(seed + 1)

    def gate(_module, args, kwargs):
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if t is not None:  # FLUX.1's transformer is given t / 1000: back to the scheduler's scale
            t = float(torch.as_tensor(t).float().reshape(-1)[0]) * (family.timestep_divisor if family else 1.0)
        rec.active = t is None or _in_range(t, num_train, timesteps)
        # keep the recorded calls of the first batch: they span the (selected part of the) schedule
        if first_batch[0]:
            step = first_batch[1]
            first_batch[1] += 1
            if rec.active and step % every == 0 and len(calls) < unet_calls and "encoder_hidden_states" in kwargs:
                transformer = family is not None and family.denoiser_signature != "unet"
                calls.append(_transformer_call(kwargs, unet_call_rows, call_gen, family) if transformer
                             else _unet_call(args, kwargs, unet_call_rows, call_gen))

    first_batch = [True, 0]  # (still in the first batch, UNet calls seen in it)
    final_latents = None
    every = max(1, math.ceil(steps / max(unet_calls, 1)))

    denoiser, family = pipeline_denoiser(pipeline)
    handles = [denoiser.register_forward_pre_hook(gate, with_kwargs=True)]
    handles += [m.register_forward_pre_hook(rec.hook(n)) for n, m in modules.items()]
    encoder_recs, encoder_ids = {}, {}
    for component, layers in (encoder_modules or {}).items():
        # every token of every prompt is a row: rows per call sized so each batch contributes its share
        enc_rec = _Recorder(layers, rows_per_layer, max(8, math.ceil(2 * rows_per_layer / max(batches, 1))), seed + 7)
        encoder_recs[component], encoder_ids[component] = enc_rec, []
        handles += [m.register_forward_pre_hook(enc_rec.hook(n, gated=False)) for n, m in layers.items()]

        def keep_ids(_module, args, kwargs, ids=encoder_ids[component]):
            input_ids = args[0] if args else kwargs.get("input_ids")
            if input_ids is not None and len(ids) < encoder_calls:
                ids.append(input_ids.detach().clone())

        handles.append(getattr(pipeline, component).register_forward_pre_hook(keep_ids, with_kwargs=True))
    if hasattr(pipeline, "set_progress_bar_config"):
        pipeline.set_progress_bar_config(disable=True)

    def on_step(_pipe, _i, _t, kwargs):
        if progress is not None:
            progress(1)
        return kwargs

    try:
        with torch.inference_mode():
            for b in range(batches):
                chunk = prompts[b * batch_size:(b + 1) * batch_size]
                if on_batch is not None:
                    on_batch(b)
                hw = {} if size is None else {"width": size[0], "height": size[1]}
                result = pipeline(prompt=chunk, num_inference_steps=steps, guidance_scale=guidance,
                                  output_type="latent", generator=torch.Generator().manual_seed(seed + b),
                                  callback_on_step_end=on_step, **hw)
                if first_batch[0] and keep_latents:
                    final_latents = result.images[:keep_latents].detach().float().cpu().clone()
                first_batch[0] = False
    finally:
        for h in handles:
            h.remove()
    stats = rec.result()
    info = {"prompts": len(prompts), "steps": steps, "timesteps": timesteps, "guidance": guidance,
            "size": list(size) if size else "native",
            "rows_per_layer": rows_per_layer, "seed": seed, "cfg": "cond+uncond" if guidance > 1 else "cond"}
    info["unet_calls_kept"] = len(calls)
    encoders = {c: Calibration(r.result(), {"prompts": len(prompts), "rows_per_layer": rows_per_layer, "seed": seed,
                                            "calls_kept": len(encoder_ids[c])}, [{"input_ids": i} for i in encoder_ids[c]])
                for c, r in encoder_recs.items()}
    return Calibration(stats, info, calls, encoders, final_latents)
