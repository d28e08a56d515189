"""`--controlnet FOLDER|NAME`: a ControlNet (sketch, depth, …) that conditions the UNet on an image.

The shared loop calls `GenerationRequest.unet_extra(model_in, t, encoder_hidden_states, added_cond)` on every step
inside the control guidance window; the hook built here runs the ControlNet on the same inputs and returns the
residuals the UNet adds to its skip connections and mid block, times `--controlnet-scale` (diffusers multiplies
its residuals by `conditioning_scale` the same way).

- torch backend: a diffusers `ControlNetModel` folder, checked against the UNet before loading.
- Core ML backend: a ControlNet package converted into the bundle (`Resources/controlnet/<Name>.mlpackage`),
  named by NAME or by the folder it was converted from; its outputs feed the UNet package's residual inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..artifacts.bundle import controlnet_name_for
from ..errors import BadInput
from ..models.controlnet import (PICKLE_FILES, WEIGHT_FILES, check_controlnet_folder,  # noqa: F401 (re-exported)
                                 load_controlnet)

# A folder name that says which conditioning a ControlNet was trained on (the config does not record it).
_CONDITIONINGS = ("depth", "canny", "scribble", "sketch", "lineart", "openpose", "pose", "seg", "normal", "tile",
                  "softedge", "hed", "mlsd", "inpaint")


def conditioning_hint(folder: Path) -> str | None:
    """The conditioning a ControlNet's folder name mentions, if exactly one ("depth", "canny", …), else None.
    Hub downloads keep the repo id in the path (models--diffusers--controlnet-depth-sdxl-1.0/snapshots/…)."""
    import re

    tokens = set()
    for part in Path(folder).expanduser().parts[-3:]:
        tokens |= set(re.split(r"[^a-z0-9]+", part.lower()))
    found = {c for c in _CONDITIONINGS if c in tokens}
    if "openpose" in found:
        found.discard("pose")
    return found.pop() if len(found) == 1 else None


def control_tensor(image) -> "torch.Tensor":
    """PIL control image (white strokes on black for scribble) → (1, 3, H, W) in [0, 1], as diffusers feeds it."""
    import torch

    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())[None]


def residuals_hook(controlnet, control_image, scale: float = 1.0, device=None) -> Callable[..., dict]:
    """The loop's `unet_extra`: ControlNet residuals for this step's (possibly CFG-doubled) batch.

    `control_image` is a (1, 3, H, W) tensor in [0, 1] (see `control_tensor`)."""
    import torch

    dtype = controlnet.dtype
    device = device or controlnet.device

    @torch.inference_mode()
    def extra(model_in, t, encoder_hidden_states, added_cond) -> dict:
        cond = control_image.to(device, dtype).expand(model_in.shape[0], -1, -1, -1)
        kw = {}
        if added_cond is not None:
            kw["added_cond_kwargs"] = {k: v.to(device, dtype) for k, v in added_cond.items()}
        down, mid = controlnet(model_in.to(device, dtype), t.to(device), encoder_hidden_states=encoder_hidden_states.to(device, dtype),
                               controlnet_cond=cond, conditioning_scale=scale, return_dict=False, **kw)
        return {"down_block_additional_residuals": list(down), "mid_block_additional_residual": mid}

    return extra


def coreml_residuals_hook(backend, name: str, control_image, scale: float = 1.0) -> Callable[..., dict]:
    """The loop's `unet_extra` for a Core ML bundle: the bundle's ControlNet package `name` on every step, its
    residuals (named as the UNet's extra inputs) scaled on the host — they are linear in the scale."""
    backend.use_controlnet(name)
    cond = control_tensor(control_image)

    def extra(model_in, t, encoder_hidden_states, added_cond) -> dict:
        residuals = backend.controlnet(model_in, t, encoder_hidden_states, added_cond, cond)
        return residuals if scale == 1.0 else {k: v * np.float32(scale) for k, v in residuals.items()}

    return extra


def bundle_controlnet_name(spec: "str | Path", available: list[str]) -> str:
    """Which of a bundle's ControlNets `--controlnet` names: its name, or the folder it was converted from."""
    spec = str(spec)
    candidates = [spec, Path(spec).name, Path(spec).stem, controlnet_name_for(Path(spec))]
    for c in candidates:
        if c in available:
            return c
    raise BadInput(f"the Core ML bundle has no ControlNet {spec!r}; it has: {', '.join(available) or 'none'} "
                   "(add one with `pocketsd convert --controlnet DIR`)")


def controlnet_hook(folder: Path, control_image, backend, *, scale: float = 1.0, allow_pickle: bool = False):
    """`--controlnet FOLDER|NAME` for a run: the loop's `unet_extra` conditioned on the PIL `control_image`.

    torch: load the diffusers ControlNet and check it against `backend`'s UNet. Core ML: select the bundle's
    ControlNet package of that name (or converted from that folder) and check its outputs against the UNet's inputs."""
    if getattr(backend, "name", None) == "coreml":
        return coreml_residuals_hook(backend, bundle_controlnet_name(folder, backend.info.controlnets()),
                                     control_image, scale)
    components = getattr(backend, "components", None)
    if components is None:
        raise BadInput(f"--controlnet needs the torch or coreml backend; the {backend.name} backend cannot take "
                       "ControlNet residuals")
    if not Path(folder).expanduser().is_dir():
        raise BadInput(f"--controlnet {folder}: with the torch backend give a diffusers ControlNetModel folder (a bare "
                       "name selects a ControlNet inside a Core ML bundle)")
    controlnet = load_controlnet(Path(folder), dict(components.config("unet")), allow_pickle=allow_pickle,
                                 dtype=getattr(components, "dtype", None))
    device = getattr(backend, "device", None)
    if device is not None:
        controlnet = controlnet.to(device)
    return residuals_hook(controlnet, control_tensor(control_image), scale, device)
