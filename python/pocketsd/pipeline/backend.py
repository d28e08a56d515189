"""The Backend protocol: the only thing that differs between the torch and the Core ML pipelines.

`pocketsd.pipeline.generate.generate(backend, request)` runs everything else — tokenization, classifier-free
guidance, the diffusers scheduler, img2img start, latent scaling, timing and low-memory staging — the same way for
every backend. A backend only evaluates the networks.

Conventions (read these before implementing a backend):

* **Arrays in:** every argument is a CPU `torch.Tensor` of dtype float32 (token ids: int64), contiguous.
  A Core ML backend converts with `x.numpy()` (and casts to what the model's input spec wants, e.g. float16 / int32).
* **Arrays out:** return a `numpy.ndarray` or a `torch.Tensor`; the loop calls `torch.as_tensor(out).float()`.
* **Batch:** with guidance > 1 the loop batches [negative, positive] along axis 0 (batch 2·N); shapes below use B.
* **Components / stages:** names are `"text_encoder"` (all text encoders together), `"unet"`, `"vae_decoder"`,
  `"vae_encoder"`. The loop calls `load(name)` before using a component (must be idempotent and cheap when loaded)
  and, only when `low_memory` is on, `unload(name)` right after the stage (free it, like Apple's `reduceMemory`).
  Time spent in `load` is reported as the "load" stage.
* **Text encoders:** `tokenizers[i]` tokenizes for text encoder `i` (SDXL: 2, SD 1.x/2.x: 1). The loop pads/truncates
  to `tokenizer.model_max_length` (77) and passes `input_ids` (B, 77) int64 to `encode_text(i, input_ids)`, which returns
  `(hidden_states, pooled)`:
    - SDXL: hidden_states = the penultimate hidden layer (B, 77, D_i)  (diffusers' `hidden_states[-2]`);
      pooled = for the encoder with a projection (text_encoder_2, `CLIPTextModelWithProjection.text_embeds`) a (B, P)
      array, for the other one `None`.
    - SD 1.x/2.x: hidden_states = `last_hidden_state` (B, 77, D) (final layer norm applied), pooled = `None`.
  The loop concatenates the SDXL encoders' hidden states along the last axis ([enc1, enc2] → (B, 77, D1+D2)).
* **UNet:** `unet(latents (B,C,h,w) already scaled by `scheduler.scale_model_input`, timestep (B,) float32,
  encoder_hidden_states (B,77,D), added_cond)` → noise prediction (B,C,h,w) (the model's raw output; for
  v-prediction models the scheduler handles it). `added_cond` is `None` for SD, and for SDXL a dict with
  `"text_embeds"` (B,P) and `"time_ids"` (B,6) float32. `extra` carries optional ControlNet residuals
  (`down_block_additional_residuals`: list of tensors, `mid_block_additional_residual`: tensor — diffusers' names —
  or the bundle's names `additional_residual_{i}` / `mid_block_res_sample`); a backend that cannot take them raises
  `pocketsd.errors.BadInput`. For an inpainting UNet `latents` has 2·C + 1 channels (latents, mask, masked-image
  latents), concatenated by the loop.
* **VAE:** `vae_decode(latents)` gets latents already divided by `scaling_factor` (and shifted, if the config has a
  `shift_factor`) and returns images (B,3,H,W) in [-1, 1] (not clamped is fine). `vae_encode(images)` gets
  images (B,3,H,W) in [-1, 1] and returns the latent distribution's moments (B, 2C, h, w) = concat(mean, logvar) —
  the loop samples from them with the request's generator and applies the scaling factor, exactly as diffusers does
  (Apple's VAEEncoder exports the same moments).

Attributes a backend provides (read once by the loop): see `Backend` below.

How a session opens a backend (pipeline/session.py `_open_backend`):

    pocketsd.pipeline.torch_backend.open_backend(source, *, low_memory=False, unet_mode="dense",
                                                 allow_pickle=False, dtype=torch.float32, unet_transforms=[...])
    pocketsd.pipeline.coreml_backend.CoreMLBackend(bundle, compute_units="all", function_name=None)

`source` is a `pocketsd.models.ModelSource`. LoRAs reach the torch UNet and text encoders as `transforms` (re-applied whenever the
UNet is (re)loaded); on Core ML a domain/LoRA selects a multifunction UNet function.
Everything the loop measures goes through `pocketsd.pipeline.report.RunTimer`; a backend that has its own
figures (e.g. Core ML's first-load / Neural Engine compile time) may expose `report_extras() -> dict`,
which the report keeps under `backend_details` (its "compute_units" also fills the contract's field).
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

from ..models.family import ModelFamily

COMPONENTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")


@runtime_checkable
class Backend(Protocol):
    name: str                         # "torch" | "coreml" (goes into the report)
    family: ModelFamily               # the model family's descriptor (text encoders, conditioning, VAE defaults)
    tokenizers: Sequence[Any]         # transformers CLIPTokenizer(s), one per text encoder
    scheduler_config: Mapping         # the model's scheduler/scheduler_config.json (as a dict)
    vae_scale_factor: int             # 8 for every SD/SDXL VAE: image px per latent px
    latent_channels: int              # 4 (the VAE's latent channels)
    unet_in_channels: int             # latent_channels, or 2·latent_channels + 1 for an inpainting UNet
    scaling_factor: float             # vae.config.scaling_factor
    shift_factor: float | None        # vae.config.shift_factor (None/0 for SD/SDXL)
    default_size: tuple[int, int]     # (height, width) the model was trained at (unet sample_size × vae factor)
    force_zeros_for_empty_prompt: bool  # model_index.json; True: no negative prompt (None) → zero embeds

    def load(self, component: str) -> None:
        """Make `component` ready (idempotent). Called before every stage that needs it."""

    def unload(self, component: str) -> None:
        """Free `component` (only called in low-memory mode). A later `load` must bring it back."""

    def encode_text(self, index: int, input_ids) -> tuple[Any, Any | None]:
        """Text encoder `index` on (B, 77) int64 ids → (hidden_states (B,77,D), pooled (B,P) or None)."""

    def unet(self, latents, timestep, encoder_hidden_states, added_cond: Mapping[str, Any] | None, **extra) -> Any:
        """One UNet evaluation → noise prediction with the shape of `latents`."""

    def vae_decode(self, latents) -> Any:
        """Unscaled latents (B,C,h,w) → images (B,3,H,W) in [-1, 1]."""

    def vae_encode(self, images) -> Any:
        """Images (B,3,H,W) in [-1, 1] → moments (B, 2C, h, w) = concat(mean, logvar) along axis 1."""
