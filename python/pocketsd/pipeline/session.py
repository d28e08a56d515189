"""A generation session: one model opened once, then any number of images — the one generation path the CLI
and the web app share.

    session = GenerationSession.open(GenerateOptions(prompt, model=…, loras=…, domain=…))   # nothing heavy yet
    output = session.generate(opts, seed, on_step=…, cancel=event)                        # one image + report
    save_output(output, png_path, report_path)

`generate` reads like diffusers' `StableDiffusionXLPipeline.__call__`: resolve the settings (domain preset) →
prepare the inputs (image / sketch / ControlNet) → the shared loop (`generate.generate`: text encode → prepare
latents → denoise → decode) → the report. Validation happened before, in `options.check_options`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..artifacts import COMPRESSED, COREML, folder_bytes
from ..artifacts.bundle import read_bundle_manifest
from ..artifacts.compressed import read_compressed_model
from ..artifacts.model_folder import safetensors_stats
from ..errors import BadInput
from ..models import ModelSource, precheck, resolve_model
from .options import (DEFAULT_GUIDANCE, DEFAULT_INPAINT_STRENGTH, DEFAULT_SCHEDULER, DEFAULT_STEPS, DEFAULT_STRENGTH,
                      GenerateOptions, check_size)
from .presets import DomainSettings, apply_domain


class GenerationCancelled(Exception):
    """Raised between steps when the caller's cancel event is set (the web app's Stop button)."""


@dataclass
class GenerationOutput:
    image: Any  # PIL image
    report: dict
    result: Any  # generate.GenerationResult (latents, timesteps, warnings)


def _stderr_warn(msg: str) -> None:
    import sys

    print(f"pocketsd: warning: {msg}", file=sys.stderr)


# ---- what the report says about the model ----------------------------------------------------------
def model_facts(source: ModelSource, folder: Path | None) -> dict[str, Any]:
    """UNet bytes on disk and bits per weight, read from the artifact's own manifest or measured."""
    facts: dict[str, Any] = {"path": str(folder or source.path or source.spec), "kind": source.kind,
                             "unet_bytes": 0, "bits_per_weight": None}
    if folder is None:
        if source.path is not None and source.path.is_file():
            facts["unet_bytes"] = source.path.stat().st_size  # the whole single-file checkpoint
        return facts
    denoiser = "unet"
    if source.kind != COREML:  # the family's denoiser: a UNet, or FLUX.1's / SD3's transformer
        from ..artifacts.model_folder import family_of_folder

        denoiser = family_of_folder(folder).denoiser
    if source.kind == COMPRESSED:
        acc = read_compressed_model(folder).components[denoiser].accounting
        facts["unet_bytes"], facts["bits_per_weight"] = int(acc["total_bytes"]), acc["bits_per_param"]
    elif source.kind == COREML:
        bundle = read_bundle_manifest(folder)
        facts["unet_bytes"] = sum(int(bundle.components[n].get("weight_bytes") or 0) for n in bundle.unet_packages())
        acc = (bundle.manifest.get("compressed_source") or {}).get("accounting") or {}
        facts["bits_per_weight"] = acc.get("bits_per_param")
    elif (folder / denoiser).is_dir():
        params, nbytes, _ = safetensors_stats(folder / denoiser)
        facts["unet_bytes"] = folder_bytes(folder / denoiser)
        facts["bits_per_weight"] = round(8 * nbytes / params, 3) if params else None
    return facts


# ---- the session -------------------------------------------------------------------------------------
class GenerationSession:
    """A model opened for generation with fixed LoRAs, backend, device and memory mode."""

    def __init__(self, backend, source: ModelSource, facts: dict, lora_records: list[dict], *, low_memory: bool,
                 unet_mode: str, device: str, controlnet: Path | None, allow_pickle: bool, load_seconds: float,
                 startup_rss_mb: float | None):
        self.backend, self.source, self.facts = backend, source, facts
        self.lora_records, self.low_memory, self.unet_mode = lora_records, low_memory, unet_mode
        self.device, self.controlnet, self.allow_pickle = device, controlnet, allow_pickle
        self.load_seconds, self.startup_rss_mb = load_seconds, startup_rss_mb
        self.startup_seconds = 0.0  # library imports a caller timed before opening (the CLI), reported once

    @classmethod
    def open(cls, opts: GenerateOptions) -> "GenerationSession":
        """Resolve the model and open its backend (components load on first use, timed as "load")."""
        from ..models.device import resolve_device

        startup_rss_mb = _current_rss_mb()  # what the libraries alone hold, before any weights
        source = resolve_model(opts.model)
        precheck(source, opts.allow_pickle)
        device = resolve_device(opts.device)
        loras = domain_loras(opts)
        records: list[dict] = []
        t0 = time.perf_counter()
        if source.kind != COREML:  # a family's missing inputs are refused before anything loads
            check_family_inputs(opts, family_of_source(source))
        backend = _open_backend(opts, source, loras, opts.domain, records, device)
        folder = None if source.kind == "single_file" else (
            source.path if source.kind == COREML else backend.components.folder)
        return cls(backend, source, model_facts(source, folder), records, low_memory=opts.low_memory,
                   unet_mode=opts.unet_mode, device=device, controlnet=opts.controlnet,
                   allow_pickle=opts.allow_pickle, load_seconds=time.perf_counter() - t0,
                   startup_rss_mb=startup_rss_mb)

    def settings(self, opts: GenerateOptions) -> DomainSettings:
        return resolve_settings(opts, self.backend.family)

    def generate(self, opts: GenerateOptions, seed: int | None = None, *, warn: Callable[[str], None] | None = None,
                 on_step: Callable[[int, int, float], None] | None = None,
                 cancel: threading.Event | None = None) -> GenerationOutput:
        """One image for `opts` (its per-image fields; model fields were fixed at `open`)."""
        from .generate import GenerationRequest, generate
        from .report import PeakMemory, RunTimer

        warn = warn if warn is not None else _stderr_warn
        seed = opts.seed if seed is None else seed
        memory, timer = PeakMemory(self.device), RunTimer()
        if self.load_seconds:  # the backend's own opening belongs to the first image's load
            timer.add("load", self.load_seconds)
            self.load_seconds = 0.0
        if self.startup_seconds:
            timer.add("startup", self.startup_seconds)
            self.startup_seconds = 0.0
        settings = resolve_settings(opts, self.backend.family)
        height, width = self.image_size(opts)
        request = GenerationRequest(prompt=settings.expanded_prompt, negative_prompt=settings.negative_prompt,
                                    steps=settings.steps, guidance=settings.guidance, seed=seed, height=height,
                                    width=width, scheduler=settings.scheduler)
        input_notes = self.prepare_inputs(opts, request, settings, warn)

        def step(i: int, total: int, seconds: float) -> None:
            memory.sample()
            if on_step is not None:
                on_step(i, total, seconds)
            if cancel is not None and cancel.is_set():
                raise GenerationCancelled(f"cancelled after step {i + 1} of {total}")

        result = generate(self.backend, request, timer=timer, low_memory=self.low_memory, on_step=step, warn=warn)
        report = self.build_report(opts, settings, request, timer, memory, result.warnings + input_notes)
        return GenerationOutput(result.images[0], report, result)

    # -- steps -----------------------------------------------------------------------------------------
    def image_size(self, opts: GenerateOptions) -> tuple[int, int]:
        """(height, width): the requested size checked against the model, or the model's native size."""
        if opts.size is None:
            return self.backend.default_size
        check_size(opts.size, self.backend.vae_scale_factor, getattr(self.backend, "size_multiple", None))
        return opts.size[1], opts.size[0]

    def prepare_inputs(self, opts: GenerateOptions, request, settings: DomainSettings, warn) -> list[str]:
        """Image → image, inpainting, sketch → image, depth → image, ControlNet: fill the request's starting image,
        mask or UNet conditioning."""
        from .inputs import check_strength, image_to_tensor, load_depth, load_image, load_mask, load_sketch

        notes: list[str] = []
        control = None  # the ControlNet's conditioning image, if one runs
        if opts.image is not None:
            loaded = load_image(opts.image, request.width, request.height, warn=warn)
            notes += loaded.notes
            if self.controlnet and opts.depth is None and opts.mask is None:
                control = loaded.image  # --controlnet with --image alone: the image is the control image
            else:
                request.init_image = image_to_tensor(loaded.image)
                strength = DEFAULT_STRENGTH
                if opts.mask is not None:
                    mask = load_mask(opts.mask, request.width, request.height, image_size=loaded.source_size,
                                     blur=opts.mask_blur, warn=warn)
                    notes += mask.notes
                    request.mask, request.paste_back = mask.tensor(), opts.paste_back
                    strength = DEFAULT_INPAINT_STRENGTH
                request.strength = check_strength(opts.strength if opts.strength is not None else strength)
        elif opts.sketch is not None:
            sketch = load_sketch(opts.sketch, request.width, request.height, settings.expanded_prompt, opts.strength,
                                 warn=warn)
            notes += sketch.notes
            if self.controlnet:
                control = sketch.control
            else:
                request.init_image, request.strength = image_to_tensor(sketch.start), sketch.strength
        if opts.depth is not None:
            depth = load_depth(opts.depth, request.width, request.height, invert=opts.depth_invert, warn=warn)
            notes += depth.notes
            control = depth.control
            notes += self._conditioning_note("depth", warn)
        if control is not None:
            request.unet_extra = self._controlnet_hook(control, opts.controlnet_scale)
            request.control_guidance_start = opts.control_guidance_start
            request.control_guidance_end = opts.control_guidance_end
        return notes

    def _conditioning_note(self, wanted: str, warn) -> list[str]:
        """A warning when the ControlNet's folder name says it was trained on another conditioning."""
        from .controlnet import conditioning_hint

        hint = conditioning_hint(Path(self.controlnet)) if self.controlnet else None
        if hint is None or hint == wanted:
            return []
        note = f"--controlnet {Path(self.controlnet).name} looks like a {hint} ControlNet, not a {wanted} one"
        warn(note)
        return [note]

    def _controlnet_hook(self, control_image, scale: float = 1.0):
        from .controlnet import controlnet_hook  # checks the folder against the UNet and gates pickle weights

        return controlnet_hook(Path(self.controlnet), control_image, self.backend, scale=scale,
                               allow_pickle=self.allow_pickle)

    def build_report(self, opts: GenerateOptions, settings: DomainSettings, request, timer, memory,
                     warnings: list[str]) -> dict:
        extras = self.backend.report_extras() if hasattr(self.backend, "report_extras") else {}
        report = {
            "pocketsd_version": __version__, "prompt": settings.prompt, "expanded_prompt": settings.expanded_prompt,
            "negative_prompt": settings.negative_prompt, "seed": request.seed, "steps": request.steps,
            "guidance": request.guidance, "scheduler": request.scheduler, "size": [request.width, request.height],
            "backend": self.backend.name, "compute_units": extras.get("compute_units"), "domain": settings.domain,
            "loras": self.lora_records, "model": dict(self.facts), "timings_s": timer.as_dict(), "device": self.device,
            "memory": {**memory.read(), "rss_after_startup_mb": self.startup_rss_mb}, "output": None,
            "input": {"image": _describe_input(opts.image), "sketch": _describe_input(opts.sketch),
                      "strength": request.strength if request.init_image is not None else None,
                      "controlnet": str(self.controlnet) if self.controlnet else None,
                      "mask": _describe_input(opts.mask), "depth": _describe_input(opts.depth),
                      **({"mask_blur": opts.mask_blur, "paste_back": opts.paste_back} if opts.mask else {}),
                      **({"depth_invert": opts.depth_invert} if opts.depth else {}),
                      **({"controlnet_scale": opts.controlnet_scale,
                          "control_guidance": [opts.control_guidance_start, opts.control_guidance_end]}
                         if request.unet_extra is not None else {})},
            "low_memory": self.low_memory, "unet_mode": self.unet_mode if self.source.kind == COMPRESSED else None,
            "memory_method": memory.method, "torch_threads": _torch_threads(), "warnings": warnings,
        }
        if extras:
            report["backend_details"] = extras
        return report


def resolve_settings(opts: GenerateOptions, family=None) -> DomainSettings:
    """The domain preset applied to what the user left unset, then the model family's defaults (FLUX.1 schnell: 4
    steps), then generate's."""
    settings = apply_domain(opts.domain, opts.prompt, negative=opts.negative, steps=opts.steps,
                            guidance=opts.guidance, scheduler=opts.scheduler, loras=list(opts.loras))
    if opts.negative is None and not settings.negative_prompt:
        # a preset without a negative prompt is "no negative prompt" (zero embeddings on SDXL), not an explicit ""
        settings.negative_prompt = None
    steps, guidance = DEFAULT_STEPS, DEFAULT_GUIDANCE
    if family is not None:
        steps = family.default_steps if family.default_steps is not None else steps
        guidance = family.default_guidance if family.default_guidance is not None else guidance
    settings.steps = settings.steps if settings.steps is not None else steps
    settings.guidance = settings.guidance if settings.guidance is not None else guidance
    settings.scheduler = settings.scheduler or DEFAULT_SCHEDULER
    return settings


def family_of_source(source: ModelSource):
    """The family of a model folder-like source, read from its files (no weights); None for a single file."""
    from ..artifacts.model_folder import family_of_folder
    from ..models import model_folder

    if source.kind == "single_file":
        return None
    return family_of_folder(model_folder(source))


# What generate takes beyond text, by option: (flag, family input it needs).
FAMILY_INPUTS = (("image", "--image", "image"), ("sketch", "--sketch", "sketch"), ("mask", "--mask", "mask"),
                 ("depth", "--depth", "depth"), ("controlnet", "--controlnet", "controlnet"),
                 ("loras", "--lora", "lora"), ("domain", "--domain", "lora"))


def check_family_inputs(opts: GenerateOptions, family) -> None:
    """An input the family's loop does not take (FLUX.1 and SD3: text only) is refused in one line."""
    if family is None:
        return
    for attr, flag, needs in FAMILY_INPUTS:
        if getattr(opts, attr, None) and needs not in family.inputs:
            raise BadInput(f"{flag} is not supported for {family.title} models yet (they run text → image only; "
                           "image → image, sketch, inpainting, ControlNet, LoRA and domain presets are SD/SDXL only)")


def domain_loras(opts: GenerateOptions) -> list[tuple[Path, float]]:
    """The user's LoRAs plus the domain preset's (what the opened model carries)."""
    return resolve_settings(opts).loras


def _open_backend(opts: GenerateOptions, source: ModelSource, loras, domain, lora_records: list[dict], device: str):
    backend = opts.backend
    if backend == "auto":
        backend = "coreml" if source.kind == COREML else "torch"
    if backend == "coreml":
        if source.kind != COREML:
            raise BadInput(f"--backend coreml runs a Core ML bundle; make one with `pocketsd convert --model {source.spec} "
                           "--out BUNDLE` and pass --model BUNDLE")
        from .coreml_backend import CoreMLBackend

        function = None
        if domain or loras:
            functions = read_bundle_manifest(source.path).unet_functions()
            wanted = [domain] + [Path(p).stem for p, _ in loras]
            function = next((w for w in wanted if w and w in functions), None)
            if function is None:
                raise BadInput(f"the bundle's UNet has no function for {', '.join(w for w in wanted if w)}; it has: "
                               f"{', '.join(functions) or 'none'} (convert with the LoRA merged)")
            lora_records[:] = [{"path": str(p), "scale": s, "unet_function": function} for p, s in loras]
        return CoreMLBackend(source.path, compute_units=opts.compute_units or "all", function_name=function,
                             verify=opts.verify)
    if source.kind == COREML:
        raise BadInput(f"{source.spec} is a Core ML bundle, which needs --backend coreml on macOS; "
                       "on this machine run the model folder it was converted from with --backend torch")
    if opts.compute_units:
        raise BadInput("--compute-units applies to --backend coreml only")
    from .torch_backend import open_backend

    transforms = {part: [_lora_transform(loras, lora_records, part)]
                  for part in ("unet", "text_encoder", "text_encoder_2")} if loras else {}
    return open_backend(source, low_memory=opts.low_memory, unet_mode=opts.unet_mode, allow_pickle=opts.allow_pickle,
                        transforms=transforms, device=device, verify=opts.verify)


def _lora_transform(loras: list[tuple[Path, float]], records: list[dict], component: str) -> Callable:
    """Apply the LoRAs' `component` layers whenever that component is (re)loaded; the report keeps one record
    per LoRA and component (replaced, not appended, when low-memory mode reloads it)."""
    def apply(module):
        from ..palettize.lora import apply_lora_files

        got = apply_lora_files(module, [(str(p), s) for p, s in loras], component)
        records[:] = [r for r in records if r.get("component", "unet") != component] + got
        return module

    return apply


def save_output(output: GenerationOutput, png_path: Path, report_path: Path) -> None:
    """The PNG (with its text metadata) and the JSON report beside it, each written atomically."""
    from .report import save_png, write_report

    output.report["output"] = str(png_path)
    facts = output.report["model"]
    save_png(output.image, png_path, {**output.report, "model": f"{facts['path']} ({facts['kind']})"})
    try:
        write_report(report_path, output.report)
    except BaseException:
        Path(png_path).unlink(missing_ok=True)
        raise


def _describe_input(value) -> str | None:
    if value is None:
        return None
    return str(value) if isinstance(value, (str, Path)) else f"<{type(value).__name__} {getattr(value, 'size', '')}>"


def _current_rss_mb() -> float | None:
    try:
        import psutil

        return round(psutil.Process().memory_info().rss / 2**20, 1)
    except Exception:
        return None


def _torch_threads() -> int | None:
    try:
        import torch

        return torch.get_num_threads()
    except Exception:
        return None
