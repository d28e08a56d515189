"""The Core ML backend: runs a `pocketsd convert` bundle. The only module that calls `MLModel.predict`.

Everything else — tokenization, classifier-free guidance, the scheduler, img2img, decoding to pixels — is the
shared loop in generate.py, the same code the torch backend runs. This module only
  1. finds the bundle's models (`Resources/TextEncoder`, `TextEncoder2`, `Unet` or `UnetChunk1..N`, `VAEDecoder`,
     `VAEEncoder`, as `.mlmodelc` or `.mlpackage`, names as Apple's Swift StableDiffusion package expects) and the
     tokenizer files (`vocab.json`, `merges.txt`),
  2. adapts the loop's torch tensors to each model's fixed input names, shapes, batch and dtypes (read from the
     bundle manifest, or from the model spec), and back.
All Core ML calls sit behind `Predictor` (`predict(dict[str, ndarray]) -> dict[str, ndarray]`); tests run this whole
path on Linux with a fake predictor that serves the torch model's outputs under the bundle's names and shapes.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from ..artifacts import bundle as names
from ..errors import BadInput, PlatformUnsupported
from .coreml_bundle import BundleInfo, TensorSpec, read_bundle

COMPUTE_UNITS = {"all": "ALL", "cpu_only": "CPU_ONLY", "cpu_and_gpu": "CPU_AND_GPU", "cpu_and_ne": "CPU_AND_NE"}


class Predictor(Protocol):
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]

    def predict(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


# (model path, compute units, function name or None, specs from the manifest or None) → Predictor
PredictorFactory = Callable[[Path, str, "str | None", "tuple[dict, dict] | None"], Predictor]


def coreml_unavailable_message(bundle: Path | str, source: str | None = None) -> str:
    model = source or "<the model folder this bundle was converted from>"
    return (f"Core ML prediction needs macOS (this is {sys.platform}); run the same model here with "
            f"`pocketsd generate PROMPT --model {model} --backend torch` (bundle: {bundle})")


class CoreMLPredictor:
    """One `.mlpackage` / `.mlmodelc` loaded with coremltools (macOS only)."""

    def __init__(self, path: Path, compute_units: str = "all", function_name: str | None = None,
                 specs: tuple[dict, dict] | None = None):
        if sys.platform != "darwin":
            raise PlatformUnsupported(coreml_unavailable_message(path))
        import coremltools as ct

        units = getattr(ct.ComputeUnit, COMPUTE_UNITS[compute_units])
        kwargs = {"compute_units": units}
        if function_name:
            kwargs["function_name"] = function_name
        t0 = time.perf_counter()
        if path.suffix == ".mlmodelc":
            self.model = ct.models.CompiledMLModel(str(path), **kwargs)
        else:
            self.model = ct.models.MLModel(str(path), **kwargs)
        # The first load of a model compiles it for the device (the Neural Engine compile can take minutes);
        # later loads hit the OS cache. The backend reports this time apart from the rest of "load".
        self.load_seconds = time.perf_counter() - t0
        self.inputs, self.outputs = specs

    def predict(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.model.predict(feeds)
        return {name: np.asarray(value) for name, value in out.items()}


def _cast(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    return np.ascontiguousarray(array.astype(spec.dtype, copy=False))


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def run_batched(chunks: list[Predictor], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a (possibly chunked) model on feeds whose axis 0 is the batch, whatever batch the model was built for.

    Core ML models have fixed shapes: the batch is cut into slices of the model's batch (the last slice padded by
    repeating its last row, and the padding dropped again). Chunk k+1 takes its inputs from the original feeds plus
    every output of chunk k (as Apple's Swift pipeline does for `UnetChunk1`/`UnetChunk2`).
    """
    total = next(iter(feeds.values())).shape[0]
    batch_input = next((chunks[0].inputs[n] for n in feeds if n in chunks[0].inputs), None)
    model_batch = max(1, int(batch_input.shape[0])) if batch_input is not None and batch_input.shape else total
    results: dict[str, list[np.ndarray]] = {}
    for start in range(0, total, model_batch):
        rows = min(model_batch, total - start)
        merged: dict[str, np.ndarray] = {}
        for name, value in feeds.items():
            part = value[start:start + rows]
            if rows < model_batch:
                part = np.concatenate([part, np.repeat(part[-1:], model_batch - rows, axis=0)])
            merged[name] = part
        out: dict[str, np.ndarray] = {}
        for chunk in chunks:
            missing = [n for n in chunk.inputs if n not in merged]
            if missing:
                raise BadInput(f"the Core ML model needs inputs {missing} the pipeline does not provide; re-convert the bundle")
            out = chunk.predict({n: _cast(merged[n], s) for n, s in chunk.inputs.items()})
            merged.update(out)
        for name, value in out.items():
            results.setdefault(name, []).append(np.asarray(value, dtype=np.float32)[:rows])
    return {name: np.concatenate(parts) for name, parts in results.items()}


class CoreMLBackend:
    """`Backend` (see backend.py) over a Core ML bundle."""

    name = "coreml"

    def __init__(self, bundle: str | Path, *, compute_units: str = "all", function_name: str | None = None,
                 predictor_factory: PredictorFactory | None = None, verify: bool = True):
        if compute_units not in COMPUTE_UNITS:
            raise BadInput(f"--compute-units {compute_units!r} is not one of {', '.join(COMPUTE_UNITS)}")
        self.info: BundleInfo = read_bundle(bundle)
        if verify:  # every package against the sha256 the converter recorded, before Core ML reads any
            self.info.verify()
        if predictor_factory is None and sys.platform != "darwin":
            raise PlatformUnsupported(coreml_unavailable_message(bundle, self.info.source_model))
        self.factory = predictor_factory or CoreMLPredictor
        self.compute_units = compute_units
        self.function_name = function_name
        if function_name and not self.info.unet_functions():
            raise BadInput(f"this bundle's UNet has no functions to select ({function_name!r}); re-convert with the LoRA/domain baked in")
        if function_name and function_name not in self.info.unet_functions():
            raise BadInput(f"the bundle's UNet has no function {function_name!r}; it has: {', '.join(self.info.unet_functions())}")
        info = self.info
        self.family = info.model_family
        self.tokenizers = info.tokenizers()
        self.hidden_name = names.text_hidden_name(info.model_family.penultimate_hidden)
        self.scheduler_config = info.scheduler_config
        self.vae_scale_factor = info.vae_scale_factor
        self.scaling_factor = info.scaling_factor
        self.shift_factor = info.shift_factor
        self.force_zeros_for_empty_prompt = info.force_zeros_for_empty_prompt
        sample = info.unet_input(names.SAMPLE)
        self.unet_in_channels = int(sample.shape[1])  # 2·C + 1 for an inpainting UNet
        decoder_in = info.specs(names.VAE_DECODER)[0].get(names.DECODER_IN) if names.VAE_DECODER in info.components else None
        self.latent_channels = int(decoder_in.shape[1]) if decoder_in is not None and decoder_in.shape else self.unet_in_channels
        self.default_size = (int(sample.shape[2]) * self.vae_scale_factor, int(sample.shape[3]) * self.vae_scale_factor)
        self._loaded: dict[str, list[Predictor]] = {}
        self.first_load_s: dict[str, float] = {}  # per component: the first load's time (device compile included)
        self.controlnet_name: str | None = None  # a bundled ControlNet, loaded and freed with the UNet
        self._controlnet: Predictor | None = None

    # ---- loading --------------------------------------------------------------------------------
    def load(self, component: str) -> None:
        if component in self._loaded:
            return
        packages = self.info.models_for(component)
        if not packages:
            raise BadInput(f"the Core ML bundle has no {component} model; re-run `pocketsd convert` with it included")
        t0 = time.perf_counter()
        predictors = []
        for model in packages:
            function = self.function_name if model.startswith("Unet") else None
            predictors.append(self.factory(self.info.model_path(model), self.compute_units, function,
                                           self.info.specs(model)))
        if component == "unet" and self.controlnet_name:  # the denoise stage holds the ControlNet too (memory plan)
            package = names.controlnet_package(self.controlnet_name)
            self._controlnet = self.factory(self.info.model_path(package), self.compute_units, None,
                                            self.info.specs(package))
        self._loaded[component] = predictors
        self.first_load_s.setdefault(component, time.perf_counter() - t0)

    def unload(self, component: str) -> None:
        # Dropping the last reference frees the model (Apple's reduceMemory does the same per stage).
        self._loaded.pop(component, None)
        if component == "unet":
            self._controlnet = None

    def _models(self, component: str) -> list[Predictor]:
        self.load(component)
        return self._loaded[component]

    # ---- networks -------------------------------------------------------------------------------
    def encode_text(self, index: int, input_ids):
        predictors = self._models("text_encoder")
        if index >= len(predictors):
            raise BadInput(f"the bundle has {len(predictors)} text encoder(s) but the pipeline asked for number {index + 1}")
        out = run_batched([predictors[index]], {names.INPUT_IDS: _to_numpy(input_ids)})
        # only the encoder with a projection (SDXL's TextEncoder2) supplies the pooled text embedding
        keep_pooled = self.family.pooled_from(index)
        return out[self.hidden_name], (out[names.POOLED] if keep_pooled else None)

    def _unet_feeds(self, latents, timestep, encoder_hidden_states, added_cond) -> dict[str, np.ndarray]:
        hidden = _to_numpy(encoder_hidden_states)
        if len(self.info.unet_input(names.ENCODER_HIDDEN_STATES).shape) == 4:  # Apple's (B, D, 1, 77) layout
            hidden = hidden.transpose(0, 2, 1)[:, :, None, :]
        feeds = {names.SAMPLE: _to_numpy(latents), names.TIMESTEP: _to_numpy(timestep),
                 names.ENCODER_HIDDEN_STATES: hidden}
        if added_cond:
            feeds[names.TEXT_EMBEDS] = _to_numpy(added_cond["text_embeds"])
            feeds[names.TIME_IDS] = _to_numpy(added_cond["time_ids"])
        return feeds

    def unet_residual_inputs(self) -> dict[str, TensorSpec]:
        """The UNet packages' ControlNet residual inputs (empty for a bundle converted without a ControlNet)."""
        specs: dict[str, TensorSpec] = {}
        for model in self.info.models_for("unet"):
            specs.update({n: s for n, s in self.info.specs(model)[0].items() if names.is_residual(n)})
        return specs

    def _residual_feeds(self, extra: dict, batch: int) -> dict[str, np.ndarray]:
        """ControlNet residuals under the UNet's input names: diffusers' keyword names or the bundle's own are
        accepted; a UNet with residual inputs gets zeros for the ones not given (no ControlNet, or outside its
        guidance window) — adding zero is what diffusers' UNet does without residuals."""
        named: dict[str, np.ndarray] = {}
        for key, value in extra.items():
            if key == "down_block_additional_residuals":
                named.update({names.down_residual(i): _to_numpy(v) for i, v in enumerate(value)})
            elif key == "mid_block_additional_residual":
                named[names.MID_RESIDUAL] = _to_numpy(value)
            elif names.is_residual(key):
                named[key] = _to_numpy(value)
            else:
                raise BadInput(f"the Core ML UNet has no input for {key!r}")
        wanted = self.unet_residual_inputs()
        if named and not wanted:
            raise BadInput("this bundle's UNet takes no ControlNet residuals; re-run `pocketsd convert` with "
                           "--controlnet DIR to give it the inputs")
        unknown = sorted(set(named) - set(wanted))
        if unknown:
            raise BadInput(f"the ControlNet gives {len(named)} residuals but the bundle's UNet takes {len(wanted)} "
                           f"({unknown[0]} has no input): it was made for another UNet")
        for name, spec in wanted.items():
            value = named.get(name)
            if value is None:
                named[name] = np.zeros((batch, *spec.shape[1:]), dtype=np.float32)
            elif tuple(value.shape[1:]) != tuple(spec.shape[1:]):
                raise BadInput(f"ControlNet residual {name} is {tuple(value.shape[1:])}, the bundle's UNet takes "
                               f"{tuple(spec.shape[1:])}: the ControlNet's block sizes do not fit this UNet")
        return named

    def unet(self, latents, timestep, encoder_hidden_states, added_cond=None, **extra):
        chunks = self._models("unet")
        feeds = self._unet_feeds(latents, timestep, encoder_hidden_states, added_cond)
        feeds.update(self._residual_feeds(extra, feeds[names.SAMPLE].shape[0]))
        return run_batched(chunks, feeds)[names.NOISE_PRED]

    # ---- ControlNet -----------------------------------------------------------------------------
    def use_controlnet(self, name: str) -> None:
        """Select the bundle's ControlNet `name` (Resources/controlnet/<name>.mlpackage); it loads with the UNet.
        Its outputs must be residual inputs of the UNet, with the same shapes."""
        available = self.info.controlnets()
        if name not in available:
            raise BadInput(f"the Core ML bundle has no ControlNet {name!r}; it has: {', '.join(available) or 'none'} "
                           "(add one with `pocketsd convert --controlnet DIR`)")
        _, outputs = self.info.specs(names.controlnet_package(name))
        wanted = self.unet_residual_inputs()
        if not wanted:
            raise BadInput(f"this bundle's UNet takes no ControlNet residuals, so ControlNet {name} cannot condition it; "
                           "re-run `pocketsd convert` with --controlnet")
        for out_name, spec in outputs.items():
            have = wanted.get(out_name)
            if have is None or tuple(have.shape[1:]) != tuple(spec.shape[1:]):
                raise BadInput(f"ControlNet {name}'s output {out_name} {tuple(spec.shape[1:])} fits no input of the bundle's "
                               "UNet: its block sizes do not fit this UNet")
        if self.controlnet_name != name:
            self.unload("unet")  # reloads with the ControlNet next time
        self.controlnet_name = name

    def controlnet(self, latents, timestep, encoder_hidden_states, added_cond, cond) -> dict[str, np.ndarray]:
        """The selected ControlNet on one step's inputs (the UNet's, plus the (1, 3, H, W) conditioning image in
        [0, 1]) → its residuals by name, unscaled."""
        if not self.controlnet_name:
            raise BadInput("no ControlNet selected (use_controlnet)")
        self.load("unet")
        feeds = self._unet_feeds(latents, timestep, encoder_hidden_states, added_cond)
        image = _to_numpy(cond)
        feeds[names.CONTROLNET_COND] = np.repeat(image, feeds[names.SAMPLE].shape[0] // image.shape[0], axis=0)
        return run_batched([self._controlnet], feeds)

    def vae_decode(self, latents):
        (model,) = self._models("vae_decoder")
        return run_batched([model], {names.DECODER_IN: _to_numpy(latents)})[names.DECODER_OUT]

    def vae_encode(self, images):
        (model,) = self._models("vae_encoder")
        return run_batched([model], {names.ENCODER_IN: _to_numpy(images)})[names.ENCODER_OUT]

    def report_extras(self) -> dict[str, Any]:
        """What the report adds for this backend: compute units, UNet function, first-load (compile) seconds."""
        return {"compute_units": self.compute_units, "unet_function": self.function_name,
                "first_load_s": dict(self.first_load_s)}
