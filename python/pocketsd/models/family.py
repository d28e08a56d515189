"""Model families as data: what every stage needs to know about SD 1.x/2.x and SDXL, declared once.

A stage asks the descriptor (`family_of(folder)`, `family_named(manifest["model_type"])`) and never tests a
family name: the components to load, how text is encoded and pooled, whether the denoiser takes SDXL's
micro-conditioning, the latent factor and channels, the VAE's scaling and the tokenizers' padding all come from
here. Adding a family (FLUX.1, SD3) is one more `ModelFamily` below plus whatever new loop it needs — the fields
say what the existing stages will ask of it.

This module is pure data and imports nothing but `errors`: the ground floor (`artifacts`) reads it too, to tell
a model folder's family and to fill in what an old bundle manifest lacks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from ..errors import BadInput

# The largest side, in pixels, any stage generates, converts or trains at (one limit for every command).
MAX_SIDE = 4096

# CLIP's tokenizer files; a tokenizer_config.json that names no pad token pads with end-of-text.
CLIP_PAD_TOKEN = "<|endoftext|>"
CLIP_MAX_LENGTH = 77


@dataclass(frozen=True)
class TextEncoder:
    """One text encoder and its tokenizer, by component folder, with its Core ML package name."""

    component: str
    tokenizer: str
    package: str
    pooled: bool = False  # supplies the pooled text embedding the denoiser is conditioned on
    # Tokens it reads (CLIP: 77; T5: what the family's pipeline passes as `max_sequence_length`).
    max_length: int = 77
    # Whether its token states reach the denoiser (FLUX.1's CLIP-L gives only its pooled embedding).
    tokens: bool = True
    # Its last hidden state (T5, normed) even where the family reads CLIP's penultimate layer (SD3).
    last_hidden: bool = False


@dataclass(frozen=True)
class ModelFamily:
    """Everything PocketSD's stages know about one model family. `name` is the on-disk key (a bundle's
    `model_type`, a LoRA report's `family`); every other field is behaviour a stage reads."""

    name: str
    title: str
    pipelines: tuple[str, ...]          # model_index.json `_class_name`s of this family that the loop runs
    pipeline_class: str                 # the diffusers pipeline that assembles the components
    single_file_types: tuple[str, ...]  # diffusers' inferred model types of a single-file checkpoint
    text_encoders: tuple[TextEncoder, ...]
    # The text state the denoiser reads: the penultimate hidden layer (SDXL, no final layer norm) or the last
    # one, normed (CLIP's last_hidden_state).
    penultimate_hidden: bool
    denoiser: str = "unet"
    denoiser_class: str = "UNet2DConditionModel"
    # The denoiser config's `addition_embed_type` that marks this family (SDXL's "text_time": pooled text plus
    # `time_ids`), None for plain cross-attention conditioning.
    addition_embed_type: str | None = None
    time_ids: int = 0                   # length of the micro-conditioning vector (0: none)
    latent_factor: int = 8              # image pixels per latent pixel
    latent_channels: int = 4
    native_side: int = 512              # what the family was trained at, for messages
    vae_scaling: float = 0.18215        # vae.config.scaling_factor when a config or manifest lacks it
    vae_shift: float | None = None
    force_zeros_for_empty_prompt: bool = False  # the model index default
    # diffusers' scheduler config, for bundles that recorded none (Apple's converter, pocketsd 0.1.0)
    scheduler_config: Mapping = field(default_factory=lambda: MappingProxyType({}))
    pipeline_kwargs: Mapping = field(default_factory=lambda: MappingProxyType({}))  # assembling the pipeline
    # ---- transformer (MMDiT) families: FLUX.1, SD3 (issue 24). The defaults are SD/SDXL's UNet loop. ----
    # Denoiser config values that tell apart families sharing one pipeline class (FLUX.1 schnell and dev: dev has
    # the guidance embedding).
    denoiser_config_match: Mapping = field(default_factory=lambda: MappingProxyType({}))
    # How the text encoders' token states become the denoiser's tokens: "features" (SD/SDXL, and FLUX.1's T5
    # alone: those of every encoder with `tokens` concatenated on the feature axis), "clip_then_t5" (SD3: the CLIP
    # tokens concatenated on features and zero-padded to T5's width, then T5's tokens after them on the sequence
    # axis). Every pooled output is concatenated in encoder order (SD3: CLIP-L then CLIP-G).
    text_layout: str = "features"
    # How the denoiser is called: "unet" (sample, timestep, encoder_hidden_states, added_cond_kwargs) or "mmdit"
    # (hidden_states, timestep, encoder_hidden_states and the conditioning as keywords: pooled_projections, FLUX's
    # guidance and position ids).
    denoiser_signature: str = "unet"
    # Flow matching (FlowMatchEulerDiscreteScheduler: the denoiser predicts a velocity, no input scaling) instead of
    # a noise-prediction UNet schedule.
    flow_matching: bool = False
    # Classifier-free guidance batches [negative, positive]; FLUX.1 is guidance-distilled (dev embeds the scale,
    # schnell ignores it) and runs the positive prompt only.
    classifier_free_guidance: bool = True
    latent_patch: int = 1               # FLUX.1 packs 2×2 latent patches into one token (with position ids)
    timestep_divisor: float = 1.0       # FLUX.1's transformer takes t / 1000
    explicit_sigmas: bool = False       # FLUX.1 passes linspace(1, 1/steps) sigmas to the scheduler
    # Denoiser inputs without a batch axis (FLUX.1's position ids), for the recorded calls the budget replays.
    unbatched_inputs: tuple[str, ...] = ()
    default_steps: int | None = None    # None: generate's own default
    default_guidance: float | None = None
    # Scheduler names generate takes → diffusers class (None: every one generate knows).
    schedulers: Mapping | None = None
    # What generate can start from besides text (the UNet loop's image, sketch, mask, depth and ControlNet inputs).
    inputs: frozenset = frozenset({"image", "sketch", "mask", "depth", "controlnet", "lora"})
    convertible: bool = True            # `pocketsd convert` has a Core ML graph for its denoiser

    @property
    def tokenizers(self) -> tuple[str, ...]:
        return tuple(t.tokenizer for t in self.text_encoders)

    @property
    def components(self) -> tuple[str, ...]:
        """The component folders a complete pipeline of this family has."""
        return (tuple(t.component for t in self.text_encoders) + self.tokenizers
                + (self.denoiser, "vae", "scheduler"))

    @property
    def adapted_components(self) -> tuple[str, ...]:
        """The components a LoRA may adapt, in the order a merge visits them: the denoiser, then each text encoder."""
        return (self.denoiser,) + tuple(t.component for t in self.text_encoders)

    @property
    def pooled_embeddings(self) -> bool:
        return any(t.pooled for t in self.text_encoders)

    def pooled_from(self, index: int) -> bool:
        """Whether text encoder `index` supplies the pooled embedding."""
        return index < len(self.text_encoders) and self.text_encoders[index].pooled

    def vae_normalisation(self, vae_config: Mapping) -> tuple[float, float | None]:
        """(scaling, shift) that take VAE latents to the denoiser's scale, from the VAE config, else the family's."""
        scaling = vae_config.get("scaling_factor")
        shift = vae_config.get("shift_factor", self.vae_shift)
        return float(scaling if scaling is not None else self.vae_scaling), (float(shift) if shift else None)

    def time_ids_for(self, height: int, width: int) -> list[int]:
        """The micro-conditioning of a plain run (original size, crop top-left 0,0, target size), as diffusers."""
        return [height, width, 0, 0, height, width] if self.time_ids else []


_CLIP_L = TextEncoder("text_encoder", "tokenizer", "TextEncoder")

SD = ModelFamily(
    name="sd", title="Stable Diffusion 1.x/2.x",
    pipelines=("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"),
    pipeline_class="StableDiffusionPipeline", single_file_types=("v1", "v2"),
    text_encoders=(_CLIP_L,), penultimate_hidden=False, native_side=512, vae_scaling=0.18215,
    pipeline_kwargs=MappingProxyType({"safety_checker": None, "feature_extractor": None,
                                      "requires_safety_checker": False}),
)

SDXL = ModelFamily(
    name="sdxl", title="Stable Diffusion XL",
    pipelines=("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"),
    pipeline_class="StableDiffusionXLPipeline", single_file_types=("xl_base",),
    text_encoders=(_CLIP_L, TextEncoder("text_encoder_2", "tokenizer_2", "TextEncoder2", pooled=True)),
    penultimate_hidden=True, addition_embed_type="text_time", time_ids=6, native_side=1024, vae_scaling=0.13025,
    force_zeros_for_empty_prompt=True,
    scheduler_config=MappingProxyType({
        "_class_name": "EulerDiscreteScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
        "beta_end": 0.012, "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "steps_offset": 1,
        "timestep_spacing": "leading"}),
    pipeline_kwargs=MappingProxyType({"add_watermarker": False}),
)

# ---- FLUX.1 and SD3: MMDiT transformers on flow matching, a 16-channel VAE, CLIP and T5 text encoders ----------
_FLOW_EULER = MappingProxyType({"euler": "FlowMatchEulerDiscreteScheduler"})
_T5_FLUX = TextEncoder("text_encoder_2", "tokenizer_2", "TextEncoderT5", max_length=512, last_hidden=True)
_FLUX_COMMON = dict(
    pipelines=("FluxPipeline",), pipeline_class="FluxPipeline", single_file_types=(),
    # CLIP-L (CLIPTextModel) gives only its pooled output; T5-XXL gives the tokens
    text_encoders=(TextEncoder("text_encoder", "tokenizer", "TextEncoder", pooled=True, tokens=False), _T5_FLUX),
    penultimate_hidden=False, denoiser="transformer", denoiser_class="FluxTransformer2DModel", latent_channels=16,
    native_side=1024, vae_scaling=0.3611, vae_shift=0.1159, denoiser_signature="mmdit", flow_matching=True,
    classifier_free_guidance=False, latent_patch=2, timestep_divisor=1000.0, explicit_sigmas=True,
    unbatched_inputs=("txt_ids", "img_ids"), schedulers=_FLOW_EULER, inputs=frozenset(), convertible=False,
)
FLUX_SCHNELL = ModelFamily(
    name="flux-schnell", title="FLUX.1 [schnell]", denoiser_config_match=MappingProxyType({"guidance_embeds": False}),
    default_steps=4, default_guidance=0.0, **_FLUX_COMMON,
    scheduler_config=MappingProxyType({"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000,
                                       "shift": 1.0, "use_dynamic_shifting": False}),
)
FLUX_DEV = ModelFamily(
    name="flux-dev", title="FLUX.1 [dev]", denoiser_config_match=MappingProxyType({"guidance_embeds": True}),
    default_steps=28, default_guidance=3.5, **_FLUX_COMMON,
    scheduler_config=MappingProxyType({"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000,
                                       "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5,
                                       "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}),
)
SD3 = ModelFamily(
    name="sd3", title="Stable Diffusion 3", pipelines=("StableDiffusion3Pipeline",),
    pipeline_class="StableDiffusion3Pipeline", single_file_types=(),
    # CLIP-L and CLIP-G (both with projection: pooled outputs concatenated), then T5-XXL
    text_encoders=(TextEncoder("text_encoder", "tokenizer", "TextEncoder", pooled=True),
                   TextEncoder("text_encoder_2", "tokenizer_2", "TextEncoder2", pooled=True),
                   TextEncoder("text_encoder_3", "tokenizer_3", "TextEncoderT5", max_length=256, last_hidden=True)),
    penultimate_hidden=True, denoiser="transformer", denoiser_class="SD3Transformer2DModel", latent_channels=16,
    native_side=1024, vae_scaling=1.5305, vae_shift=0.0609, text_layout="clip_then_t5", denoiser_signature="mmdit",
    flow_matching=True,
    default_steps=28, default_guidance=7.0, schedulers=_FLOW_EULER, inputs=frozenset(), convertible=False,
    scheduler_config=MappingProxyType({"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000,
                                       "shift": 3.0}),
)

FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (SDXL, SD, FLUX_SCHNELL, FLUX_DEV, SD3)}
# What a bundle or manifest that records no family was made from: pocketsd 0.1.0 converted SDXL only.
LEGACY = SDXL
# The denoiser conditionings some family has (a UNet with another `addition_embed_type` is not supported).
DENOISER_EMBED_TYPES = frozenset(f.addition_embed_type for f in FAMILIES.values())
SUPPORTED_TEXT = ("supported: Stable Diffusion XL (base), Stable Diffusion 1.x/2.x, FLUX.1 (schnell, dev) and "
                  "Stable Diffusion 3 pipelines")


def family_named(name: str | None) -> ModelFamily:
    """The family a manifest or report names (None: an old manifest from before families were recorded)."""
    if name is None:
        return LEGACY
    try:
        return FAMILIES[name]
    except KeyError:
        raise BadInput(f"unknown model family {name!r} ({SUPPORTED_TEXT})") from None


def matches_denoiser(family: ModelFamily, config: Mapping | None) -> bool:
    """Whether a denoiser config has the values that mark `family` among those sharing its pipeline class (a
    config that does not say is taken at diffusers' default: no guidance embedding)."""
    if not family.denoiser_config_match:
        return True
    config = config or {}
    return all(bool(config.get(key, False)) == bool(value) for key, value in family.denoiser_config_match.items())


def family_of_index(index: Mapping, where: object = "the model", denoiser_config: Mapping | None = None) -> ModelFamily:
    """The family of a model_index.json's contents (and, where families share a pipeline class, of the denoiser's
    config: FLUX.1 schnell or dev); anything the loop cannot run is a BadInput."""
    name = index.get("_class_name", "?")
    family = next((f for f in FAMILIES.values() if name in f.pipelines and matches_denoiser(f, denoiser_config)), None)
    def named(component: str) -> bool:
        entry = index.get(component)
        return isinstance(entry, list) and len(entry) == 2 and bool(entry[1])

    if family is None or not all(named(t.component) for t in family.text_encoders):
        # the SDXL refiner shares the XL pipeline classes but lacks the first text encoder (and is conditioned on an
        # aesthetic score): it needs another loop
        raise BadInput(f"{where}: model family {name} is not supported ({SUPPORTED_TEXT})")
    return family


def family_of_denoiser(config) -> ModelFamily:
    """The family whose conditioning a UNet (or ControlNet) config takes, from its `addition_embed_type` (a dict,
    a diffusers config or any object with the attribute)."""
    if not isinstance(config, Mapping):
        config = {key: getattr(config, key, None) for key in ("_class_name", "addition_embed_type",
                                                              *(k for f in FAMILIES.values() for k in f.denoiser_config_match))}
    transformer = next((f for f in FAMILIES.values() if f.denoiser_class == config.get("_class_name")
                        and f.denoiser_class != SD.denoiser_class and matches_denoiser(f, config)), None)
    if transformer is not None:
        return transformer
    kind = config.get("addition_embed_type")
    for family in FAMILIES.values():
        if family.denoiser_class == SD.denoiser_class and family.addition_embed_type == kind:
            return family
    raise BadInput(f"a UNet with addition_embed_type {kind!r} is not supported ({SUPPORTED_TEXT})")


def takes_time_ids(config) -> bool:
    """Whether a UNet/ControlNet config is conditioned on pooled text and `time_ids` (SDXL-style)."""
    return bool(family_of_denoiser(config).time_ids)


def family_of_package_names(packages) -> ModelFamily:
    """The family of a bundle known only by its Core ML package names (made by another converter)."""
    present = set(packages)
    convertible = [f for f in FAMILIES.values() if f.convertible]
    complete = [f for f in convertible if all(t.package in present for t in f.text_encoders)]
    if complete:  # the family with the most encoders whose packages are all there
        return max(complete, key=lambda f: len(f.text_encoders))
    return min(convertible, key=lambda f: len(f.text_encoders))


def family_of_single_file(model_type: str) -> ModelFamily | None:
    """The family of diffusers' inferred single-file model type, None for one the loop cannot run."""
    return next((f for f in FAMILIES.values() if model_type in f.single_file_types), None)


def family_of(source) -> ModelFamily:
    """The family of a model index (model_index.json's contents) or of a denoiser config (a dict with the UNet's
    keys, or a diffusers config object). A model folder: `artifacts.model_folder.family_of_folder`, which reads
    the files (this module reads none, so the ground floor can import it)."""
    config = source if isinstance(source, Mapping) else dict(getattr(source, "config", source))
    if "_class_name" in config and any(config["_class_name"] in f.pipelines for f in FAMILIES.values()):
        return family_of_index(config)
    return family_of_denoiser(config)


def tokenizer_settings(config: Mapping | None) -> dict:
    """What a CLIP tokenizer needs beyond its vocabulary, from its tokenizer_config.json (None: none there): the
    pad token (SDXL's second tokenizer pads with "!", CLIP's with end-of-text) and the length, at most CLIP's 77."""
    config = config or {}
    pad = config.get("pad_token", CLIP_PAD_TOKEN)
    pad = pad.get("content", CLIP_PAD_TOKEN) if isinstance(pad, Mapping) else pad
    return {"pad_token": pad, "model_max_length": min(int(config.get("model_max_length", CLIP_MAX_LENGTH)),
                                                      CLIP_MAX_LENGTH)}


# ---- the image-size rule ------------------------------------------------------------------------------
def downscale(config: Mapping) -> int:
    """How much a VAE or UNet shrinks a side: 2 per level after the first (diffusers' block_out_channels)."""
    levels = config.get("block_out_channels") or config.get("down_block_types") or [0] * 4
    return 2 ** (len(levels) - 1)


def size_multiple(vae_config: Mapping, unet_config: Mapping) -> int:
    """Pixels a side must be a multiple of so that every UNet level stays whole."""
    return downscale(vae_config) * downscale(unet_config)


def default_size(family: ModelFamily, denoiser_config: Mapping, vae_config: Mapping) -> tuple[int, int]:
    """(height, width) a model generates at when none is asked: its denoiser's sample size in pixels (UNets, SD3),
    else its VAE's sample size (FLUX.1's transformer records none), else the family's native side."""
    factor = downscale(vae_config)
    sample = denoiser_config.get("sample_size")
    if sample:
        sample = sample if isinstance(sample, (list, tuple)) else (sample, sample)
        return int(sample[0]) * factor, int(sample[1]) * factor
    side = vae_config.get("sample_size") or family.native_side
    side = side if isinstance(side, (list, tuple)) else (side, side)
    return int(side[0]), int(side[1])


def latent_side_multiple(family: ModelFamily, denoiser_config: Mapping) -> int:
    """Latent pixels a side must be a multiple of for the denoiser: a UNet's levels (2 per level after the first),
    a transformer's patch (SD3: 2) or FLUX.1's 2×2 packing."""
    if family.denoiser_signature == "unet":
        # At least 8 latent pixels (64 px at 8×), the one size rule every UNet stage uses (calibration, Core ML
        # conversion, generation), even where fewer levels would stay whole (the reference model's 3 levels: 4).
        return max(8, downscale(denoiser_config))
    return max(int(denoiser_config.get("patch_size") or 1), family.latent_patch)


def check_side(width: int, height: int, flag: str = "--size", note: str = "") -> None:
    """The one limit on any side: positive and at most MAX_SIDE."""
    if width <= 0 or height <= 0:
        raise BadInput(f"{flag} {width}x{height} must be positive")
    if max(width, height) > MAX_SIDE:
        raise BadInput(f"{flag} {width}x{height} is over the {MAX_SIDE} px per side pocketsd works at{note}")


def parse_size(text: str, flag: str = "--size", note: str = "") -> tuple[int, int]:
    """`WxH` (or W×H) → (width, height), checked against the one side limit."""
    try:
        w, h = (int(v) for v in str(text).lower().replace("×", "x").split("x"))
    except ValueError:
        raise BadInput(f"{flag} {text!r} is not WIDTHxHEIGHT (WxH in pixels, e.g. 128x128)") from None
    check_side(w, h, flag, note)
    return w, h


__all__ = ["MAX_SIDE", "CLIP_PAD_TOKEN", "CLIP_MAX_LENGTH", "TextEncoder", "ModelFamily", "SD", "SDXL", "FLUX_SCHNELL", "FLUX_DEV", "SD3",
           "FAMILIES", "matches_denoiser",
           "LEGACY", "SUPPORTED_TEXT", "family_named", "family_of", "family_of_index", "family_of_denoiser",
           "family_of_package_names", "family_of_single_file", "default_size", "latent_side_multiple", "takes_time_ids", "DENOISER_EMBED_TYPES", "downscale", "size_multiple", "check_side", "tokenizer_settings",
           "parse_size"]
