"""What a user asks `generate` for, and every check that needs no weights — the one place options are validated.

`check_options` runs before anything is loaded, so a bad option costs nothing and leaves no file behind. The
defaults live here once; the CLI, the web app and domain presets read them from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..artifacts import COMPRESSED
from ..errors import BadInput
from ..models import family
from ..models.family import MAX_SIDE  # noqa: F401  (the one side limit, re-exported for the CLI and the app)

DEFAULT_STEPS, DEFAULT_GUIDANCE, DEFAULT_SCHEDULER, DEFAULT_STRENGTH = 20, 5.0, "euler", 0.8
DEFAULT_INPAINT_STRENGTH = 1.0  # with --mask: the hole is drawn from pure noise (the rest is kept anyway)
# The diffusers scheduler class behind each name (generate.make_scheduler builds them).
SCHEDULER_CLASSES = {"euler": "EulerDiscreteScheduler", "dpmpp2m": "DPMSolverMultistepScheduler",
                     "ddim": "DDIMScheduler"}
SCHEDULERS = tuple(SCHEDULER_CLASSES)
BACKENDS = ("auto", "torch", "coreml")
DEVICES = ("auto", "cpu", "cuda", "mps")
UNET_MODES = ("dense", "packed")
MAX_STEPS = 1000  # the schedulers' training timesteps: more steps than that repeat timesteps
MAX_GUIDANCE = 50.0
MAX_COUNT = 10_000
MAX_LORA_SCALE = 100.0
SEED_MAX = 2**64 - 1
MASK_BLUR, MAX_MASK_BLUR = 4, 64  # (inputs.py reads them from here)
MAX_CONTROLNET_SCALE = 10.0
DEPTH_CONTROLNET_HINT = ("--depth needs a depth ControlNet (--controlnet DIR); this model ships none and "
                         "PocketSD has no depth estimator. For SDXL: `huggingface-cli download diffusers/controlnet-depth-sdxl-1.0 config.json "
                         "diffusion_pytorch_model.fp16.safetensors --local-dir DIR`")


@dataclass
class GenerateOptions:
    prompt: str
    model: str | None = None
    backend: str = "auto"
    compute_units: str | None = None
    device: str = "cpu"
    steps: int | None = None
    guidance: float | None = None
    seed: int = 0
    size: tuple[int, int] | None = None  # (width, height)
    negative: str | None = None
    scheduler: str | None = None
    domain: str | None = None
    loras: list[tuple[Path, float]] = field(default_factory=list)
    image: Path | None = None
    strength: float | None = None
    sketch: Path | None = None
    controlnet: Path | None = None
    mask: Path | None = None  # with image: inpainting (white = repaint)
    mask_blur: int = MASK_BLUR  # px the paste-back feathers outside the mask
    paste_back: bool = True  # the original's pixels outside the (feathered) mask, after decoding
    depth: Path | None = None  # depth map (near = bright) for a depth ControlNet
    depth_invert: bool = False  # the depth map is near = dark
    controlnet_scale: float = 1.0  # diffusers' controlnet_conditioning_scale
    control_guidance_start: float = 0.0  # share of the steps before the ControlNet starts
    control_guidance_end: float = 1.0  # share of the steps after which it stops
    count: int = 1
    out: Path | None = None
    report: Path | None = None
    low_memory: bool = False
    allow_pickle: bool = False
    unet_mode: str = "dense"
    verify: bool = True  # check the model's recorded sha256 digests while loading
    force: bool = False  # overwrite an --out/--report that exists but is not a PocketSD image/report


def parse_size(text: str, flag: str = "--size") -> tuple[int, int]:
    """`WxH` as `generate` takes it: the family module's one parser and side limit, with what decoding costs."""
    note = f" (decoding {MAX_SIDE}x{MAX_SIDE} alone holds ≈ {decode_memory_bytes(MAX_SIDE, MAX_SIDE) / 2**30:.0f} GiB)"
    return family.parse_size(text, flag, note)


def decode_memory_bytes(width: int, height: int) -> int:
    """A rough floor of what SDXL's VAE decoder holds at full resolution: its last up block runs 256- then
    128-channel fp32 activations over every pixel, about three such tensors alive at once (≈ 3 GiB at 1024²)."""
    return 3 * 256 * width * height * 4


def check_size(size: tuple[int, int], vae_scale_factor: int, multiple: int | None = None) -> None:
    """A size the model can take: the UNet halves the latent twice or more, so 8 × the VAE factor keeps every
    level whole (the one image-size rule every stage uses); a transformer gives its own `multiple` (its patch, or
    FLUX.1's 2×2 packing, × the VAE factor)."""
    multiple = multiple or 8 * vae_scale_factor
    w, h = size
    if w % multiple or h % multiple:
        raise BadInput(f"--size {w}x{h} must be a multiple of {multiple} ({multiple // vae_scale_factor} × the VAE's "
                       f"{vae_scale_factor}× factor) "
                       f"in both sides, e.g. {max(multiple, round(w / multiple) * multiple)}x"
                       f"{max(multiple, round(h / multiple) * multiple)}")


def _finite(flag: str, value: float | None, low: float, high: float, hint: str = "") -> None:
    if value is None:
        return
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadInput(f"{flag} must be a finite number, got {value}{hint}")
    if value < low:
        raise BadInput(f"{flag} must be ≥ {low:g}{hint}, got {value}")
    if value > high:
        raise BadInput(f"{flag} must be ≤ {high:g}{hint}, got {value}")


def _shipped_depth_controlnet(model: str | None) -> Path | None:
    """The depth ControlNet a local model folder (diffusers or compressed) ships; hub ids and bundles: none."""
    from ..models.controlnet import shipped_controlnet
    from ..models.resolve import resolve_model

    source = resolve_model(model)
    return shipped_controlnet(source.path, "depth") if source.kind in ("diffusers", COMPRESSED) else None


def check_options(opts: GenerateOptions) -> None:
    if not opts.prompt or not opts.prompt.strip():
        raise BadInput("the prompt is empty; say what to draw, e.g. \"a red circle on a white background\"")
    if opts.steps is not None and opts.steps < 1:
        raise BadInput(f"--steps must be at least 1, got {opts.steps}")
    if opts.steps is not None and opts.steps > MAX_STEPS:
        raise BadInput(f"--steps must be at most {MAX_STEPS} (the schedulers' training timesteps), got {opts.steps}")
    _finite("--guidance", opts.guidance, 0.0, MAX_GUIDANCE, " (1 turns guidance off)")
    _finite("--strength", opts.strength, 0.0, 1.0)
    if opts.strength is not None and opts.strength <= 0:
        raise BadInput(f"--strength must be in (0, 1], got {opts.strength}")
    if not 0 <= opts.seed <= SEED_MAX:
        raise BadInput(f"--seed must be in 0..2^64-1, got {opts.seed}")
    if opts.count < 1:
        raise BadInput(f"--count must be at least 1, got {opts.count}")
    if opts.count > MAX_COUNT:
        raise BadInput(f"--count must be at most {MAX_COUNT}, got {opts.count}")
    if opts.seed + opts.count - 1 > SEED_MAX:
        raise BadInput(f"--seed {opts.seed} with --count {opts.count} runs past 2^64-1")
    if opts.backend not in BACKENDS:
        raise BadInput(f"--backend must be one of {', '.join(BACKENDS)}")
    if opts.device not in DEVICES:
        raise BadInput(f"--device must be one of {', '.join(DEVICES)}")
    if opts.unet_mode not in UNET_MODES:
        raise BadInput(f"--unet-mode must be one of {', '.join(UNET_MODES)}")
    if opts.scheduler is not None and opts.scheduler not in SCHEDULERS:
        raise BadInput(f"--scheduler {opts.scheduler!r} is not one of {', '.join(SCHEDULERS)}")
    if opts.image and opts.sketch:
        raise BadInput("give either --image or --sketch, not both")
    if opts.sketch and opts.depth:
        raise BadInput("give either --sketch or --depth, not both (one control image per run)")
    if opts.mask is not None and opts.image is None:
        raise BadInput("--mask needs the image it repaints: add --image FILE (inpainting repaints the mask's white area)")
    if opts.depth is not None and opts.controlnet is None:
        # The model's own depth ControlNet (the reference model ships one) unless the user names another. Filled in
        # here, the one place every caller's options pass, so the report and the checks below see it.
        opts.controlnet = _shipped_depth_controlnet(opts.model)
        if opts.controlnet is None:
            raise BadInput(DEPTH_CONTROLNET_HINT)
    if opts.depth_invert and opts.depth is None:
        raise BadInput("--depth-invert goes with --depth FILE")
    if opts.controlnet and not opts.sketch and not opts.image and not opts.depth:
        raise BadInput("--controlnet needs a control image: pass --sketch FILE or --depth FILE (or --image FILE)")
    if opts.controlnet and opts.mask is not None and not opts.depth:
        raise BadInput("--controlnet with --image/--mask needs its own control image: pass --depth FILE")
    if opts.strength is not None and not (opts.image or opts.sketch):
        raise BadInput("--strength only applies with --image or --sketch")
    if opts.mask is None and (opts.mask_blur != MASK_BLUR or not opts.paste_back):
        raise BadInput("--mask-blur and --no-paste-back only apply with --mask")
    if not isinstance(opts.mask_blur, int) or not 0 <= opts.mask_blur <= MAX_MASK_BLUR:
        raise BadInput(f"--mask-blur must be a whole number of pixels in 0..{MAX_MASK_BLUR}, got {opts.mask_blur}")
    controlnet_flags = (opts.controlnet_scale != 1.0 or opts.control_guidance_start != 0.0
                        or opts.control_guidance_end != 1.0)
    if controlnet_flags and opts.controlnet is None:
        raise BadInput("--controlnet-scale and --control-guidance-start/end only apply with --controlnet")
    _finite("--controlnet-scale", opts.controlnet_scale, 0.0, MAX_CONTROLNET_SCALE)
    _finite("--control-guidance-start", opts.control_guidance_start, 0.0, 1.0)
    _finite("--control-guidance-end", opts.control_guidance_end, 0.0, 1.0)
    if opts.control_guidance_start >= opts.control_guidance_end:
        raise BadInput(f"--control-guidance-start ({opts.control_guidance_start}) must be below --control-guidance-end "
                       f"({opts.control_guidance_end})")
    for flag, path in (("--image", opts.image), ("--sketch", opts.sketch), ("--mask", opts.mask),
                       ("--depth", opts.depth)):
        if path is not None:
            if Path(path).is_dir():
                raise BadInput(f"{flag} {path} is a folder; give an image file")
            if not Path(path).is_file():
                raise BadInput(f"{flag} {path} does not exist")
    if opts.controlnet is not None:
        cn = Path(opts.controlnet).expanduser()
        # A bare name (no folder of that name here) selects a ControlNet inside a Core ML bundle: checked at open.
        bare = len(cn.parts) == 1 and not cn.exists()
        if not bare and not (cn / "config.json").is_file():
            raise BadInput(f"--controlnet {opts.controlnet} is not a diffusers ControlNetModel folder (no config.json)")
    for lora, scale in opts.loras:
        if Path(lora).is_dir():
            raise BadInput(f"--lora {lora} is a folder; give a LoRA .safetensors file")
        if not Path(lora).is_file():
            raise BadInput(f"--lora {lora} does not exist")
        _finite(f"--lora {Path(lora).name} scale", scale, -MAX_LORA_SCALE, MAX_LORA_SCALE)
    for flag, path in (("--out", opts.out), ("--report", opts.report)):
        if path is None:
            continue
        parent = Path(path).expanduser().resolve().parent
        if not parent.is_dir():
            raise BadInput(f"{flag} {path}: folder {parent} does not exist (create it first)")
        if Path(path).is_dir():
            raise BadInput(f"{flag} {path} is a folder; give a file name")
    if opts.out is not None and Path(opts.out).suffix.lower() != ".png":
        raise BadInput(f"--out {opts.out} must end in .png")
    if opts.out is not None and opts.report is not None and \
            Path(opts.out).expanduser().resolve() == Path(opts.report).expanduser().resolve():
        raise BadInput(f"--report {opts.report} is the same file as --out; give the report its own name (.json)")
    check_outputs(opts)


def check_outputs(opts: GenerateOptions) -> None:
    """Every PNG and report this run will write may be written (`artifacts.outputs.check_out`): not an input, not
    a file PocketSD did not write (unless --force), in a writable folder."""
    from ..artifacts.outputs import IMAGE, REPORT, check_distinct, check_out

    model = Path(opts.model).expanduser() if opts.model and Path(opts.model).expanduser().exists() else None
    inputs = [("--model", model), *((flag, getattr(opts, name, None)) for flag, name in (
        ("--image", "image"), ("--sketch", "sketch"), ("--mask", "mask"), ("--depth", "depth"),
        ("--controlnet", "controlnet"))), *(("--lora", p) for p, _ in opts.loras)]
    for seed in range(opts.seed, opts.seed + min(opts.count, MAX_COUNT)):
        png, report = output_paths(opts, seed)
        check_distinct("--out", png, "--report", report)
        first = seed == opts.seed  # every seed's files share the first one's folders: probe those once
        check_out(png, IMAGE, inputs=inputs, force=opts.force, command="pocketsd generate", probe=first)
        check_out(report, REPORT, inputs=inputs, force=opts.force, command="pocketsd generate", flag="--report",
                  probe=first)


def output_paths(opts: GenerateOptions, seed: int) -> tuple[Path, Path]:
    """PNG and report path for the image with `seed` (with --count > 1 each file gets its seed appended)."""
    multi = opts.count > 1
    if opts.out is None:
        png = Path(f"pocketsd-{seed}.png")
    else:
        png = Path(opts.out).expanduser()
        png = png.with_name(f"{png.stem}-{seed}{png.suffix}") if multi else png
    if opts.report is None:
        rep = png.with_suffix(".json")
    else:
        rep = Path(opts.report).expanduser()
        rep = rep.with_name(f"{rep.stem}-{seed}{rep.suffix}") if multi else rep
    return png, rep
