"""The torch backend: `Backend` (see backend.py) over diffusers/transformers modules on the CPU (or any torch device).

Components come from `pocketsd.models.ModelComponents`, loaded on first use; in low-memory mode the loop unloads
each one after its stage and it is read from disk again the next time it is needed.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from ..errors import BadInput
from ..models import ModelComponents, ModelSource, resolve_model
from ..models.family import ModelFamily, default_size, downscale, latent_side_multiple


def _stage_parts(family: ModelFamily) -> dict[str, tuple[str, ...]]:
    """The component folders each loop stage loads."""
    return {"text_encoder": tuple(t.component for t in family.text_encoders), "unet": (family.denoiser,),
            "vae_decoder": ("vae",), "vae_encoder": ("vae",)}


class TorchBackend:
    name = "torch"

    def __init__(self, components: ModelComponents, *, device: str | torch.device = "cpu",
                 unet_transforms: list[Callable[[Any], Any]] | None = None,
                 transforms: dict[str, list[Callable[[Any], Any]]] | None = None):
        self.components = components
        self.device = torch.device(device)
        self.family = components.model_family
        # Applied to a component every time it is loaded (LoRAs): low-memory mode reloads it per image.
        self.transforms = {part: list(fns) for part, fns in (transforms or {}).items()}
        if unet_transforms:
            self.transforms.setdefault("unet", []).extend(unet_transforms)
        self.tokenizers = [components.get(n) for n in self.family.tokenizers]  # small; kept for the whole run
        self.scheduler_config = components.config("scheduler")
        vae_cfg, unet_cfg = components.config("vae"), components.config(self.family.denoiser)
        self.denoiser_config = unet_cfg  # the loop reads FLUX.1's guidance embedding and a transformer's patch size
        self.vae_scale_factor = downscale(vae_cfg)
        self.latent_channels = int(vae_cfg.get("latent_channels", 4))
        # An inpainting UNet takes 2·C + 1 channels (latents, mask, masked-image latents): generate.py feeds them.
        # FLUX.1's transformer takes packed 2×2 patches: C·4 channels per token.
        self.unet_in_channels = int(unet_cfg.get("in_channels", 4)) // self.family.latent_patch ** 2
        if self.unet_in_channels not in (self.latent_channels, 2 * self.latent_channels + 1):
            raise BadInput(f"{components.folder}: UNet in_channels {self.unet_in_channels} fits neither the VAE's "
                           f"{self.latent_channels} latent channels nor an inpainting UNet's {2 * self.latent_channels + 1} "
                           "(edit/depth-concat UNets are not supported)")
        self.scaling_factor, self.shift_factor = self.family.vae_normalisation(vae_cfg)
        self.default_size = default_size(self.family, unet_cfg, vae_cfg)
        self.size_multiple = self.vae_scale_factor * latent_side_multiple(self.family, unet_cfg)
        self.force_zeros_for_empty_prompt = components.force_zeros_for_empty_prompt
        self._stage_parts = _stage_parts(self.family)

    @property
    def unet_transforms(self) -> list[Callable[[Any], Any]]:
        return self.transforms.setdefault("unet", [])

    # ---- staging ----
    def load(self, component: str) -> None:
        for part in self._parts(component):
            if not self.components.is_loaded(part):
                module = self.components.get(part).to(self.device)
                for transform in self.transforms.get(part, []):
                    module = transform(module) or module
                self.components.put(part, module)

    def unload(self, component: str) -> None:
        import gc

        for part in self._parts(component):
            self.components.release(part, collect=False)
        gc.collect()

    def _parts(self, component: str) -> tuple[str, ...]:
        try:
            return self._stage_parts[component]
        except KeyError:
            raise ValueError(f"unknown component {component!r}") from None

    def module(self, part: str):
        """The torch module `part`, loaded if needed (for callers that need the raw module, e.g. LoRA tools)."""
        self.load(next(k for k, v in self._stage_parts.items() if part in v))
        return self.components.get(part)

    # ---- networks ----
    @torch.inference_mode()
    def encode_text(self, index: int, input_ids):
        spec = self.family.text_encoders[index]
        encoder = self.components.get(spec.component)
        out = encoder(input_ids.to(self.device), output_hidden_states=True)
        penultimate = self.family.penultimate_hidden and not spec.last_hidden
        hidden = out.hidden_states[-2] if penultimate else out[0]  # out[0]: last_hidden_state (normed)
        pooled = None
        if spec.pooled:  # CLIPTextModelWithProjection: text_embeds; CLIPTextModel (FLUX.1): pooler_output
            pooled = out.text_embeds if getattr(out, "text_embeds", None) is not None else out.pooler_output
            pooled = pooled.float().cpu()
        return hidden.float().cpu(), pooled

    @torch.inference_mode()
    def unet(self, latents, timestep, encoder_hidden_states, added_cond: Mapping[str, Any] | None, **extra):
        unet = self.components.get(self.family.denoiser)
        dtype = unet.dtype
        kw = {}
        if self.family.denoiser_signature != "unet":  # a transformer takes its conditioning as keywords
            kw = {k: v.to(self.device, dtype) for k, v in (added_cond or {}).items() if v is not None}
            return unet(hidden_states=latents.to(self.device, dtype), timestep=timestep.to(self.device, dtype),
                        encoder_hidden_states=encoder_hidden_states.to(self.device, dtype), return_dict=False,
                        **kw)[0].float().cpu()
        if added_cond is not None:
            kw["added_cond_kwargs"] = {k: v.to(self.device, dtype) for k, v in added_cond.items()}
        for key, value in extra.items():
            if isinstance(value, (list, tuple)):
                kw[key] = [v.to(self.device, dtype) for v in value]
            elif value is not None:
                kw[key] = value.to(self.device, dtype)
        out = unet(latents.to(self.device, dtype), timestep.to(self.device),
                   encoder_hidden_states=encoder_hidden_states.to(self.device, dtype), return_dict=False, **kw)[0]
        return out.float().cpu()

    @torch.inference_mode()
    def vae_decode(self, latents):
        vae = self.components.get("vae")
        return vae.decode(latents.to(self.device, vae.dtype), return_dict=False)[0].float().cpu()

    @torch.inference_mode()
    def vae_encode(self, images):
        vae = self.components.get("vae")
        dist = vae.encode(images.to(self.device, vae.dtype)).latent_dist
        return torch.cat([dist.mean, dist.logvar], dim=1).float().cpu()


def open_backend(source: ModelSource | str | None, *, low_memory: bool = False, unet_mode: str = "dense",
                 allow_pickle: bool = False, dtype=torch.float32, device="cpu",
                 unet_transforms: list[Callable[[Any], Any]] | None = None, verify: bool = True,
                 transforms: dict[str, list[Callable[[Any], Any]]] | None = None) -> TorchBackend:
    """A torch backend for any model kind except Core ML bundles. Nothing heavy is loaded until first use
    (the loop times loading as its own stage); `low_memory` only changes what the loop unloads."""
    if not isinstance(source, ModelSource):
        source = resolve_model(source)
    comps = ModelComponents(source, allow_pickle=allow_pickle, dtype=dtype, unet_mode=unet_mode, verify=verify)
    return TorchBackend(comps, device=device, unet_transforms=unet_transforms, transforms=transforms)
