"""`pocketsd compress`: a model folder → a compressed model folder, as named steps.

    check_inputs → load → check_budget → calibrate (+ record blocks) → compress (per component) → distill → write

Distillation (codes frozen) is block by block by default: while calibrating, every block's fp16 inputs and outputs
of the UNet and the text encoders are written to a capped cache on disk, and each compressed network is then
distilled one block at a time (`palettize.blockwise`). `--distill whole` is the older pass over the whole UNet
(record_teacher, then `palettize.distill`), which holds an fp32 copy of it.

Everything that can be checked without loading weights is checked first; the folder is written atomically.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from ..artifacts import COMPRESSED
from ..artifacts.compressed import ComponentPayload, write_compressed_model
from ..artifacts.model_folder import NETWORKS, check_weight_files, family_of_folder, read_config
from ..artifacts.outputs import check_out
from ..errors import BadInput
from ..models import model_folder, resolve_model
from ..models.device import resolve_device
from ..models.family import ModelFamily, family_of_denoiser
from ..palettize.calibrate import CalibrationSettings, calibrate
from ..palettize.compress import (ProbePlan, budget_floor_bits, budget_over_layers, check_budget, compress_network,
                                  compress_token_embeddings, plan_probes, progress_total)
from ..palettize.blockwise import (BlockRecorder, block_cache_folder, distill_network, find_blocks, held_out_batches,
                                   remove_cache)
from ..palettize.distill import distill, planned_steps, record_teacher
from ..palettize.layer import compressed_layers, compressed_state_dict
from ..palettize.quantizers import BITS
from ..palettize.recipes import VAE_RECIPES, Recipe, compressible_layers, make_recipe
from .prompts import calibration_prompts
from .vae import compress_vae

# on_progress(task, advance, total, detail): one call per unit of work; `total` sizes the task on first use.
Progress = Callable[[str, int, int, str], None]


# What `--components` may name, and the default: all of them. The VAE is palettized by a fixed recipe and kept only
# if it passes its fidelity gate (`compress.vae`); the text encoders' token tables become int8 codes as well.
COMPRESSIBLE = ("unet", "text_encoder", "text_encoder_2", "vae")
DEFAULT_COMPONENTS = COMPRESSIBLE
# FLUX.1 and SD3 (issue 24): their denoiser is `transformer`, SD3 has a third text encoder (T5). Their default is the
# family's denoiser and every text encoder (`default_components`); the VAE on request.
TRANSFORMER_COMPRESSIBLE = ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "vae")


def default_components(family: ModelFamily) -> tuple[str, ...]:
    """What `pocketsd compress` compresses by default: SD/SDXL's DEFAULT_COMPONENTS, or an MMDiT family's denoiser and
    every text encoder (T5 included)."""
    if family.denoiser_signature == "unet":
        return DEFAULT_COMPONENTS
    return (family.denoiser,) + tuple(t.component for t in family.text_encoders)


def compressible_components(family: ModelFamily) -> tuple[str, ...]:
    return COMPRESSIBLE if family.denoiser_signature == "unet" else TRANSFORMER_COMPRESSIBLE


@dataclass
class CompressOptions:
    out: Path
    model: str | None = None
    recipe: Recipe = field(default_factory=Recipe)  # the UNet's, and every other component's unless given below
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)
    calib_prompts: Path | None = None
    device: str = "cpu"  # where calibration, probes and distillation run ("auto": CUDA, then MPS, then CPU)
    precision: str = "auto"  # the dtype the model is held in while it calibrates (see load_precision)
    components: tuple[str, ...] = DEFAULT_COMPONENTS  # those the model has; a missing default one is skipped
    component_recipes: dict[str, Recipe] = field(default_factory=dict)  # per-component budgets
    force: bool = False  # replace an --out that is not a compressed folder PocketSD wrote

    def recipe_for(self, component: str) -> Recipe:
        return self.vae_recipes()[0] if component == "vae" else self.component_recipes.get(component, self.recipe)

    def vae_recipes(self) -> list[Recipe]:
        """What the VAE is tried at, in order (`compress.vae`): the user's --vae-bits-budget alone, else the fixed
        palettes of VAE_RECIPES (nothing calibrates the VAE — the pipeline samples latents — so by default no budget
        is allocated for it)."""
        if "vae" in self.component_recipes:
            return [self.component_recipes["vae"]]
        return [make_recipe(name) for name in VAE_RECIPES]


def check_inputs(opts: CompressOptions) -> tuple[Path, str]:
    """The source diffusers folder and its spec; every failure is one line, before anything loads."""
    source = resolve_model(opts.model)
    if source.kind == COMPRESSED:
        raise BadInput(f"{opts.model} is already a compressed model; compress its source diffusers folder instead")
    if source.kind not in ("diffusers", "hub"):
        raise BadInput(f"{opts.model} is a {source.kind.replace('_', '-')} model; compress needs a diffusers folder or hub id")
    folder = model_folder(source)
    family = family_of_folder(folder)
    if not (folder / family.denoiser / "config.json").is_file():
        raise BadInput(f"{folder} has no {family.denoiser} ({family.denoiser}/config.json); compress needs a diffusers "
                       f"{family.title} pipeline with its denoiser")
    opts.calibration.check()
    explicit = opts.components != DEFAULT_COMPONENTS
    if not explicit:
        opts.components = default_components(family)
    allowed = compressible_components(family)
    unknown = [c for c in opts.components if c not in allowed]
    repeated = sorted({c for c in opts.components if opts.components.count(c) > 1})
    if repeated:
        raise BadInput(f"--components names {repeated[0]} twice; name each component once")
    if unknown or not opts.components:
        raise BadInput(f"--components {','.join(opts.components)}: choose from {', '.join(allowed)}")
    extra = [c for c in opts.component_recipes if c not in opts.components]
    if extra:
        raise BadInput(f"a budget was given for {extra[0]}, which --components does not include")
    missing = [c for c in opts.components if not (folder / c / "config.json").is_file()]
    if missing and explicit:
        raise BadInput(f"{folder} has no {missing[0]} to compress; drop it from --components")
    opts.components = tuple(c for c in opts.components if c not in missing)
    check_weight_files(folder, opts.components)  # a truncated download fails here, naming the file, not after loading
    check_out(opts.out, COMPRESSED, inputs=[("--model", folder), ("--calib-prompts", opts.calib_prompts)],
              force=opts.force, command="pocketsd compress")
    return folder, source.spec


# Above this many bytes of fp32 weights the pipeline is held in half precision while it calibrates (a real SDXL is
# 14 GB in fp32: more than a 16 GB Mac can hold beside its activations); every decomposition is still computed in
# fp32, one layer at a time. Why not half precision for every model on a CPU: measured on this 2-core AVX2 machine
# (no native bf16; torch 2.13, under load, so as ratios), a 128×640×640 matmul took about as long in bf16/fp16 as in
# fp32 (0.8×), but a 3×3 convolution of 160 channels at 16² took 9.8× (bf16) and 8.6× (fp16) as long, and a UNet
# is mostly convolutions at its high-resolution levels; per op, bf16 kept 50.8 dB and fp16 68.8 dB of SNR against
# fp32. So half precision is paid for only where memory asks for it; bf16 there because its fp32 range cannot
# overflow (SDXL's activations overflow fp16 in places), fp16 on accelerators, where it is native and fast.
HALF_PRECISION_ABOVE = 4 << 30
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def load_precision(folder: Path, precision: str, device: str) -> str:
    """The dtype the model is held in: fp32 when it is small, else bf16 on a CPU and fp16 on an accelerator. Every
    component the pipeline loads counts, compressed or not: they are all resident while it calibrates."""
    if precision != "auto":
        return precision
    from ..artifacts.model_folder import safetensors_stats

    params = sum(safetensors_stats(folder / c)[0] for c in NETWORKS if (folder / c).is_dir())
    if 4 * params <= HALF_PRECISION_ABOVE:
        return "fp32"
    return "bf16" if device == "cpu" else "fp16"


def _pipeline(folder: Path, precision: str = "fp32"):
    import torch
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as dlogging

    dlogging.disable_progress_bar()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    try:
        return DiffusionPipeline.from_pretrained(folder, dtype=dtype)
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInput(f"could not load the model in {folder}: {first[:200]}") from None


def unet_probe_plan(unet, recipe: Recipe, settings: CalibrationSettings, n_prompts: int) -> ProbePlan | None:
    """The budget allocator's probe plan for this UNet (None for a fixed recipe, which probes nothing)."""
    if recipe.bits is not None:
        return None
    cfg = unet.config
    sample = cfg.sample_size if isinstance(cfg.sample_size, (list, tuple)) else (cfg.sample_size, cfg.sample_size)
    latent_factor = family_of_denoiser(cfg).latent_factor  # native pixels = latent pixels × latent_factor²
    calibration = round(settings.unet_evaluations(n_prompts, sample[0] * sample[1] * latent_factor ** 2))
    return plan_probes(len(compressible_layers(unet)[0]), calibration, BITS[recipe.quantizer],
                       settings.unet_calls * settings.unet_call_rows, tuple(sample),
                       2 ** (len(cfg.down_block_types) - 1), settings.max_unet_evaluations)


def transformer_probe_plan(transformer, recipe: Recipe, settings: CalibrationSettings, n_prompts: int) -> ProbePlan | None:
    """The probe plan for FLUX.1's / SD3's transformer: its image tokens cannot be average-pooled like a UNet's
    latents, so its probes replay the recorded calls at their own size (fewer samples, then fewer bit widths)."""
    if recipe.bits is not None:
        return None
    calibration = round(settings.unet_evaluations(n_prompts, settings.size[0] * settings.size[1]
                                                  if settings.size else 1))
    return plan_probes(len(compressible_layers(transformer)[0]), calibration, BITS[recipe.quantizer],
                       settings.unet_calls * settings.unet_call_rows, (1, 1), 1, settings.max_unet_evaluations)


def seconds_per_evaluation(unet) -> float:
    """One UNet forward on one sample at its native size, timed (what the estimate multiplies)."""
    import torch

    cfg = unet.config
    side = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    like = dict(device=unet.device, dtype=unet.dtype)
    dev = unet.device
    x = torch.randn(1, cfg.in_channels, side, side, **like)
    ehs = torch.randn(1, 77, cfg.cross_attention_dim, **like)
    kwargs = {}
    time_ids = family_of_denoiser(cfg).time_ids  # pooled text plus micro-conditioning, or neither
    if time_ids:
        pooled = cfg.projection_class_embeddings_input_dim - time_ids * cfg.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled, **like),
                                       "time_ids": torch.zeros(1, time_ids, **like)}
    timed = []
    with torch.inference_mode():
        # twice, the second timed: the first call pays one-off costs (kernel selection, thread pools, lazy
        # initialisation) that made the estimate 100× too high on the reference model
        for _ in range(2):
            t0 = time.perf_counter()
            unet(x, torch.tensor([500.0], device=dev), ehs, return_dict=False, **kwargs)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            timed.append(time.perf_counter() - t0)
    return timed[-1]


def distillation_memory_shortfall(unet, device: str) -> str | None:
    """Why distillation cannot run here, or None. Its train mode holds every compressed layer's frozen residual in
    fp32 (4 bytes per UNet weight: 10 GB for SDXL's 2.6 B), beside the pipeline already loaded; on the CPU that
    must fit in the memory available now (with a fifth spare), or the run is killed for memory at the end."""
    if device != "cpu":
        return None  # an accelerator's memory is checked by the allocator, which raises instead of killing
    import psutil

    need = 4 * sum(p.numel() for p in unet.parameters())
    available = psutil.virtual_memory().available
    if need <= 0.8 * available:
        return None
    return (f"its fp32 training copy of the UNet needs {need / 1e9:.1f} GB and {available / 1e9:.1f} GB is available "
            f"(run it on a GPU with --device cuda, or pass --distill-steps 0 to silence this)")


def inherited_budgets(opts: CompressOptions, networks: dict, note: Callable[[str], None],
                      denoiser: str = "unet") -> dict[str, Recipe]:
    """Per-component recipes, where a component without its own budget flag inherits the UNet's budget as bits per
    compressed weight when, as bits per parameter, it is below what the component can reach (its fp16 leftovers,
    such as token embeddings, are too large a share). A budget given for the component itself is kept as given."""
    recipes = dict(opts.component_recipes)
    for name, network in networks.items():
        recipe = opts.recipe_for(name)
        if name == denoiser or name in recipes or recipe.bits_budget is None:
            continue
        if recipe.bits_budget >= budget_floor_bits(network, recipe):
            continue
        bits = budget_over_layers(network, recipe.bits_budget)
        inherited = replace(recipe, bits_budget=round(bits, 3), name=f"budget{bits:.2f}")
        if inherited.bits_budget < budget_floor_bits(network, inherited):
            continue  # out of reach even per weight: check_budget refuses it in one line
        recipes[name] = inherited
        note(f"{name}: {recipe.bits_budget:g} bits per parameter is below what its fp16 leftovers allow; its layers "
             f"get {recipe.bits_budget:g} bits per weight instead ({bits:.2f} bits per parameter of the {name}; "
             f"--{name.replace('_', '-')}-bits-budget sets it)")
    return recipes


def prompt_split(prompts: list[str], batch_size: int) -> dict[str, list[str]]:
    """The texts block distillation trains on and those it picks its best step on (`held_out_batches`), recorded in
    the manifest so the split can be checked on texts."""
    batch_of = [i // batch_size for i in range(len(prompts))]
    held = held_out_batches(batch_of)
    return {"trained": [p for p, b in zip(prompts, batch_of) if b not in held],
            "held_out": [p for p, b in zip(prompts, batch_of) if b in held]}


def _calibrate(opts: CompressOptions, pipe, networks: dict, layers: dict, prompts: list[str], block_networks: dict,
               cache: Path | None, tick: Progress, timings: dict, denoiser: str = "unet"):
    """Calibration statistics, and (block mode) the blocks' fp16 inputs and outputs recorded in `cache` meanwhile."""
    settings = opts.calibration
    t0 = time.perf_counter()
    calls = math.ceil(len(prompts) / settings.batch_size) * settings.steps
    encoders = {name: layers[name] for name in networks if name.startswith("text_encoder")}
    recorder = None
    if block_networks:
        # the denoiser runs once per step, a text encoder once (or twice, with a negative prompt) per batch
        per_batch = {name: settings.steps if name == denoiser else 2 for name in block_networks}
        recorder = BlockRecorder(block_networks, cache, int(opts.recipe.distill_cache_gb * 1e9), per_batch,
                                 math.ceil(len(prompts) / settings.batch_size), settings.seed)
        recorder.__enter__()
    try:
        calib = calibrate(pipe, layers.get(denoiser, {}), prompts, settings.steps, settings.timesteps,
                          settings.rows_per_layer, settings.batch_size, settings.guidance, settings.seed,
                          progress=lambda n: tick("calibrating", n, calls, ""), encoder_modules=encoders,
                          unet_calls=settings.unet_calls, unet_call_rows=settings.unet_call_rows, size=settings.size,
                          on_batch=recorder.set_batch if recorder else None)
    finally:
        if recorder is not None:
            recorder.__exit__(None, None, None)
    timings["calibrate"] = time.perf_counter() - t0
    return calib, recorder


def _record_whole_teacher(opts: CompressOptions, pipe, networks: dict, prompts: list[str], mode: str, device: str,
                          note, tick: Progress, timings: dict):
    """`--distill whole`: the fp16 pipeline's UNet calls and outputs, recorded before anything is compressed
    (or why it cannot run here). Returns (teacher, settings, skipped reason)."""
    recipe = opts.recipe_for("unet")
    if mode != "whole" or "unet" not in networks:
        return None, None, None
    skipped = distillation_memory_shortfall(networks["unet"], device)
    if skipped:
        note(f"distillation skipped: {skipped}")
        return None, None, skipped
    settings = opts.calibration
    calls = math.ceil(len(prompts) / settings.batch_size) * settings.steps
    t0 = time.perf_counter()
    teacher = record_teacher(pipe, prompts, settings.steps, settings.guidance, settings.batch_size, settings.seed,
                             progress=lambda n: tick("recording fp16 outputs", n, calls, ""))
    timings["record_teacher"] = time.perf_counter() - t0
    return teacher, recipe.distill_settings(settings.guidance), None


def compress_model(opts: CompressOptions, on_progress: Progress | None = None,
                   on_note: Callable[[str], None] | None = None) -> dict:
    """Run the stage; returns the written manifest (with per-step seconds under "timings_s").

    on_note(message): the plan (UNet evaluations and a time estimate) before the heavy work starts."""
    note = on_note or (lambda message: None)
    tick = on_progress or (lambda task, n, total, detail="": None)
    folder, spec = check_inputs(opts)
    family = family_of_folder(folder)
    denoiser = family.denoiser  # "unet", or FLUX.1's / SD3's "transformer"
    mode = opts.recipe.distill if opts.recipe.distills else "off"
    if family.denoiser_signature != "unet":
        if mode == "whole":
            raise BadInput(f"--distill whole replays a UNet pipeline; for {family.title} use --distill block or off")
        if opts.calibration.size is None:  # its pipeline's own default would be its native 1024 px whatever the model
            from ..models.family import default_size

            height, width = default_size(family, read_config(folder, denoiser), read_config(folder, "vae"))
            opts = replace(opts, calibration=replace(opts.calibration, size=(width, height)))
    # unique texts: block distillation holds out the last batch's prompts, which must never be trained on
    prompts = list(dict.fromkeys(calibration_prompts(folder, opts.calibration, opts.calib_prompts)))
    timings = {}

    t0 = time.perf_counter()
    device = resolve_device(opts.device)
    if opts.precision not in PRECISIONS:
        raise BadInput(f"--precision must be one of {', '.join(PRECISIONS)}, got {opts.precision!r}")
    precision = load_precision(folder, opts.precision, device)
    pipe = _pipeline(folder, precision).to(device)
    networks = {name: getattr(pipe, name).eval() for name in opts.components}
    if denoiser in networks:  # the budget as given first, then what the other components inherit from it
        check_budget(networks[denoiser], opts.recipe_for(denoiser), what=f"the {denoiser}")
    opts = replace(opts, component_recipes=inherited_budgets(opts, networks, note, denoiser))
    for name, network in networks.items():  # before calibrating: a budget the quantizer cannot reach fails fast
        check_budget(network, opts.recipe_for(name), what=f"the {name}")
    timings["load"] = time.perf_counter() - t0

    settings = opts.calibration
    plan = None
    if denoiser in networks and family.denoiser_signature != "unet":
        plan = transformer_probe_plan(networks[denoiser], opts.recipe_for(denoiser), settings, len(prompts))
        if plan is not None:  # no time estimate: seconds_per_evaluation builds UNet inputs
            over = " — over the limit even at the cheapest probe" if plan.total > plan.limit else ""
            note(f"plan: {plan.describe().replace('UNet', family.denoiser_class)}{over}")
        plan_timed = None
    else:
        plan = plan_timed = unet_probe_plan(networks["unet"], opts.recipe_for("unet"), settings, len(prompts)) \
            if "unet" in networks else None
    if plan_timed is not None:
        per_eval = seconds_per_evaluation(networks["unet"])
        over = " — over the limit even at the cheapest probe" if plan.total > plan.limit else ""
        note(f"plan: {plan.describe()}{over}; about {plan.total * per_eval / 60:.0f} min of UNet time here "
             f"({per_eval:.2f} s per evaluation)")

    layers = {name: compressible_layers(network)[0] for name, network in networks.items()}
    # block mode distils every network the pipeline runs while calibrating (the VAE does not run: latents out)
    block_networks = {name: (network, find_blocks(network, list(layers[name])))
                      for name, network in networks.items()
                      if mode == "block" and name != "vae" and opts.recipe_for(name).distills and layers[name]}
    cache = block_cache_folder() if block_networks else None
    try:
        calib, recorder = _calibrate(opts, pipe, networks, layers, prompts, block_networks, cache, tick, timings,
                                     denoiser)
        teacher, distill_settings, distill_skipped = _record_whole_teacher(opts, pipe, networks, prompts, mode, device,
                                                                           note, tick, timings)
        payloads, vae_gate = {}, None
        weights = {name: sum(m.weight.numel() for m in layers[name].values()) for name in block_networks}
        # `layers` holds every float layer: dropped here, each one is freed as compress_network replaces it (else
        # the float network and its compressed copy would both be resident until the end)
        del layers
        for name, network in networks.items():
            if name == "vae":  # from the source's own fp32 weights, gated by image PSNR (see compress.vae)
                t0 = time.perf_counter()
                payload, vae_gate = compress_vae(folder, family_of_folder(folder), opts.vae_recipes(), calib.latents,
                                                 progress=tick)
                timings["compress_vae"] = time.perf_counter() - t0
                if payload is not None:
                    payloads[name] = payload
                else:
                    note(f"vae: kept uncompressed — {vae_gate['reason']}")
                continue
            component_calib = calib if name == denoiser else calib.encoders.get(name)
            recipe = opts.recipe_for(name)
            t0 = time.perf_counter()
            total = progress_total(network, recipe)
            report = compress_network(network, recipe, component_calib,
                                      lambda n, detail="", task=f"compressing {name}": tick(task, n, total, detail),
                                      probe=plan if name == denoiser else None)
            timings["compress"] = timings.get("compress", 0.0) + time.perf_counter() - t0
            info = {**component_calib.info, **report.allocation} if component_calib is not None else \
                {"note": "no calibration: layer weight error, no smoothing"}
            report.recipe["distill"] = "off"
            if name in block_networks:
                share = None if recipe.distill_minutes is None else \
                    recipe.distill_minutes * weights[name] / max(1, sum(weights.values()))
                order = recorder.order[name]
                t1 = time.perf_counter()
                info["distillation"] = distill_network(
                    network, recorder.calls[name], order, recipe.block_distill_settings(share), cache / f"student-{name}",
                    lambda n, detail="", task=f"distilling {name}": tick(task, n, len(order), detail))
                info["distillation"]["cache"] = recorder.info()[name]
                info["distillation"]["prompts"] = prompt_split(prompts, opts.calibration.batch_size)
                timings["distill"] = timings.get("distill", 0.0) + time.perf_counter() - t1
                report.recipe["distill"] = "block"
            elif name == "unet" and distill_skipped:
                report.recipe["distill_steps"] = 0
                report.recipe["distill_skipped"] = distill_skipped
            elif name == "unet" and teacher is not None:
                t1, steps = time.perf_counter(), planned_steps(teacher, distill_settings)
                done = distill(network, teacher, distill_settings,
                               lambda n, detail="": tick("distilling", n, steps, detail))
                timings["distill"] = time.perf_counter() - t1
                info["distillation"] = {**done.to_dict(), "mode": "whole", "teacher": teacher.info,
                                        "note": "layer snr_db values were measured before distillation"}
                report.recipe["distill"] = "whole"
                teacher = None  # free the recorded calls before the next component
            if report.recipe["distill"] == "off":
                report.recipe["distill_steps"] = 0
            if name.startswith("text_encoder"):  # after distillation: the table precedes every block
                embedding = compress_token_embeddings(network)
                if embedding is not None:
                    report.recipe["token_embedding"] = embedding
            payloads[name] = ComponentPayload(
                state_dict=compressed_state_dict(network), config=read_config(folder, name),
                layers=[layer.record() for layer in compressed_layers(network).values()],
                fp16_layers=report.fp16_layers, library=type(network).__module__.split(".")[0],
                class_name=type(network).__name__, recipe=report.recipe, calibration=info)
    finally:
        if cache is not None:
            remove_cache(cache)
    del pipe, networks, calib

    t0 = time.perf_counter()
    manifest = write_compressed_model(opts.out, folder, payloads, source={"spec": spec, "path": str(folder)},
                                      extra={"timings_s": {k: round(v, 2) for k, v in timings.items()}, "device": device,
                                             "precision": precision,
                                             **({"vae_gate": vae_gate} if vae_gate is not None else {})})
    manifest["timings_s"]["write"] = round(time.perf_counter() - t0, 2)
    return manifest


def summary_line(manifest: dict) -> str:
    lines = []
    for name, comp in manifest["components"].items():
        acc = comp["accounting"]
        snrs = [r["snr_db"] for r in comp["layers"] if r.get("snr_db") is not None]
        mean_snr = sum(snrs) / len(snrs) if snrs else float("nan")
        lines.append(f"{name} {comp['recipe'].get('name')}: {len(comp['layers'])} layers compressed, "
                     f"{acc['bits_per_param']:.3f} bits/param, {acc['total_bytes']:,} bytes "
                     f"({acc['compression_vs_fp16']:.2f}x smaller than fp16), mean layer output SNR {mean_snr:.1f} dB")
    return "\n".join(lines)
