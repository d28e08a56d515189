"""What one `pocketsd convert` will do, decided and checked before any weight is loaded: a `ConvertPlan`.

The plan is the one object the conversion steps pass around (instead of argparse options plus loose
arguments): the source, the sizes, the packages to write, what each is fingerprinted by for resuming.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from ..artifacts import COMPRESSED, COREML
from ..artifacts import bundle as names
from ..artifacts.compressed import read_compressed_model
from ..artifacts.model_folder import MODEL_INDEX, check_weight_files, family_of_folder, read_config
from ..artifacts.outputs import check_out
from ..errors import BadInput
from ..models import model_folder, resolve_model
from ..models.family import MAX_SIDE, ModelFamily, check_side, downscale  # noqa: F401  (MAX_SIDE: one limit)
from ..palettize.lora import check_lora_files, check_lora_scale, read_lora
from . import TARGETS
from .bundle import ConvertOptions

# Targets whose Core ML opset has the grouped lookup tables and int4 blocks our compressed layers use.
COMPRESSED_TARGETS = ("iOS18", "macOS15")


@dataclass
class ConvertPlan:
    opts: ConvertOptions
    spec: str
    kind: str  # "diffusers" | "compressed"
    source: Path
    family: ModelFamily
    unet_config: SimpleNamespace
    vae_config: dict
    image_hw: tuple[int, int]
    latent_hw: tuple[int, int]
    loras: list[tuple[Path, float]] = field(default_factory=list)
    compressed: set[str] = field(default_factory=set)  # components stored compressed in the source folder
    controlnets: list[tuple[str, Path]] = field(default_factory=list)  # (bundle name, diffusers folder), checked
    controlnet_recipe: object = None  # palettize Recipe compressing the ControlNets, or None: they stay fp16

    @property
    def out(self) -> Path:
        return Path(self.opts.out)

    @property
    def resources(self) -> Path:
        return self.out / names.RESOURCES

    @property
    def text_encoder_folders(self) -> dict[str, str]:
        """{Core ML package: component folder} of the family's text encoders."""
        return {t.package: t.component for t in self.family.text_encoders}

    @property
    def unet_packages(self) -> list[str]:
        return list(names.UNET_CHUNKS) if self.opts.chunk_unet else [names.UNET]

    @property
    def text_encoders(self) -> list[str]:
        return [n for n, folder in self.text_encoder_folders.items() if (self.source / folder).is_dir()]

    def packages(self) -> list[str]:
        return (self.text_encoders + [names.VAE_DECODER, names.VAE_ENCODER] + self.unet_packages
                + [names.controlnet_package(n) for n, _ in self.controlnets])

    def wanted(self, package: str) -> bool:
        return self.opts.only is None or package in self.opts.only

    @property
    def base_fingerprint(self) -> dict:
        return {"target": self.opts.target, "size": [self.image_hw[1], self.image_hw[0]]}


def _folder_digest(f: Path) -> str:
    """Cheap identity of a component's source files (names, sizes, mtimes): a changed model re-converts."""
    files = [f] if f.is_file() else sorted(p for p in f.rglob("*") if p.is_file())
    return ";".join(f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in files)


def source_digest(plan: ConvertPlan, package: str) -> str:
    if package in plan.text_encoder_folders:
        return _folder_digest(plan.source / plan.text_encoder_folders[package])
    if package in (names.VAE_DECODER, names.VAE_ENCODER):
        return _folder_digest(plan.source / "vae")
    for name, folder in plan.controlnets:
        if package == names.controlnet_package(name):
            return _folder_digest(folder)
    return _folder_digest(plan.source / plan.family.denoiser)


def _check_controlnets(opts: ConvertOptions, unet_config: dict) -> list[tuple[str, Path]]:
    """Each --controlnet folder checked against the UNet (configs only) and given its bundle name."""
    import re

    from ..models.controlnet import check_controlnet_folder

    out: list[tuple[str, Path]] = []
    for name, folder in opts.controlnets:
        folder = Path(folder).expanduser()
        check_controlnet_folder(folder, unet_config)
        name = name or names.controlnet_name_for(folder)
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
            raise BadInput(f"ControlNet name {name!r} is not a file name (letters, digits, _ . -)")
        if any(n == name for n, _ in out):
            raise BadInput(f"two ControlNets are named {name!r}; name them apart with --controlnet NAME=DIR")
        out.append((name, folder))
    return out


def controlnet_recipe(text: str):
    """`--controlnet-recipe`: a fixed recipe name (w4r32, …) or a bits-per-parameter budget ("4.5")."""
    from ..palettize.recipes import make_recipe

    try:
        budget = float(text)
    except ValueError:
        return make_recipe(text)
    return make_recipe(None, budget)


def _sizes(opts: ConvertOptions, unet_cfg, vae_cfg: dict) -> tuple[tuple[int, int], tuple[int, int]]:
    vae_factor = downscale(vae_cfg)
    if opts.size is None:
        side = unet_cfg.sample_size * vae_factor
        width, height = side, side
    else:
        width, height = opts.size
    unet_factor = downscale({"down_block_types": unet_cfg.down_block_types})
    need = vae_factor * unet_factor
    check_side(width, height)
    if width % need or height % need:
        raise BadInput(f"size {width}x{height} does not fit this model: width and height must be positive multiples "
                       f"of {need} (VAE ×{vae_factor}, UNet ×{unet_factor})")
    return (height, width), (height // vae_factor, width // vae_factor)


def make_plan(opts: ConvertOptions) -> ConvertPlan:
    """Check every option against the source model (configs only) and decide what to convert."""
    from diffusers import UNet2DConditionModel

    from .unet_graph import check_supported, validate_latent_size

    if opts.target not in TARGETS:
        raise BadInput(f"unknown --target {opts.target!r}; choose one of {', '.join(TARGETS)}")
    if opts.attention not in ("split-einsum", "original"):
        raise BadInput(f"unknown --attention {opts.attention!r}; choose split-einsum or original")
    source = resolve_model(opts.model)
    if source.kind == COREML:
        raise BadInput(f"{opts.model} is already a Core ML bundle; give a diffusers or compressed model folder")
    if source.kind == "single_file":
        raise BadInput(f"{opts.model} is a single-file checkpoint; convert it to a diffusers folder first "
                       "(diffusers' StableDiffusionXLPipeline.from_single_file(...).save_pretrained(DIR))")
    path = model_folder(source)
    kind = COMPRESSED if source.kind == COMPRESSED else "diffusers"
    if (path / MODEL_INDEX).is_file() and not family_of_folder(path).convertible:
        title = family_of_folder(path).title
        raise BadInput(f"{opts.model} is a {title} model: Core ML conversion of its transformer is not supported yet "
                       f"(generate runs it with --backend torch)")
    if kind == "diffusers" and not (path / "unet" / "config.json").is_file():
        raise BadInput(f"{opts.model} has no UNet (no unet/config.json); give a full SD/SDXL pipeline folder")
    family = family_of_folder(path)
    check_weight_files(path)  # a truncated download fails now, naming the file, not after converting other packages
    compressed_components: set[str] = set()
    if kind == COMPRESSED:
        compressed = read_compressed_model(path)
        compressed_components = set(compressed.components)
        if opts.target not in COMPRESSED_TARGETS:
            raise BadInput(f"--target {opts.target} cannot hold compressed weights: grouped lookup tables and int4 "
                           f"blocks need {' or '.join(COMPRESSED_TARGETS)}; use --target iOS18 (or macOS15)")
    unet_dict = json.loads((path / "unet" / "config.json").read_text())
    unet_cfg = SimpleNamespace(**{**UNet2DConditionModel.load_config(path / "unet"), **unet_dict})
    vae_cfg = read_config(path, "vae")
    check_supported(unet_cfg)
    image_hw, latent_hw = _sizes(opts, unet_cfg, vae_cfg)
    validate_latent_size(unet_cfg, latent_hw)
    loras = [(Path(p), float(s)) for p, s in opts.loras]
    for p, s in loras:
        check_lora_scale(p, s)
    for p in [p for p, _ in loras] + list(opts.lora_functions):
        if not Path(p).is_file():
            raise BadInput(f"LoRA file {p} does not exist")
    check_out(opts.out, COREML, inputs=[("--model", path), *(("--lora", p) for p, _ in loras),
                                        *(("--lora-functions", p) for p in opts.lora_functions)],
              force=opts.force, command="pocketsd convert")
    # Before any component converts: a LoRA that does not fit the UNet fails now, not after the text encoders.
    check_lora_files([*loras, *((p, 1.0) for p in opts.lora_functions)], unet_dict)
    if kind == COMPRESSED:  # a damaged file fails now, naming it, not after the other components converted
        compressed.verify()
    for lora_file in opts.lora_functions:
        parts = [c for c in read_lora(lora_file).components if c != "unet"]
        if parts:
            raise BadInput(f"LoRA {Path(lora_file).name} has {parts[0]} layers, which a multifunction UNet cannot carry; "
                           "bake it into every package with --lora instead")
    controlnets = _check_controlnets(opts, vars(unet_cfg))
    recipe = controlnet_recipe(opts.controlnet_recipe) if opts.controlnet_recipe is not None else None
    if recipe is not None and not controlnets:
        raise BadInput("--controlnet-recipe compresses the ControlNets given with --controlnet DIR; none was given")
    if recipe is not None and opts.target not in COMPRESSED_TARGETS:
        raise BadInput(f"--target {opts.target} cannot hold compressed weights; use --target iOS18 (or macOS15)")
    plan = ConvertPlan(opts, opts.model or "reference", kind, path, family, unet_cfg, vae_cfg, image_hw, latent_hw, loras,
                       compressed_components, controlnets, recipe)
    known = [names.TEXT_ENCODERS[0], names.TEXT_ENCODERS[1], names.VAE_DECODER, names.VAE_ENCODER, names.UNET,
             *names.UNET_CHUNKS, *[names.controlnet_package(n) for n, _ in controlnets]]
    unknown = [n for n in (opts.only or []) if n not in known]
    if unknown:
        raise BadInput(f"unknown component {unknown[0]!r} for --only; choose from {', '.join(known)}")
    return plan
