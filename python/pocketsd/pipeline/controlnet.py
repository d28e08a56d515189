"""`--controlnet FOLDER`: a diffusers `ControlNetModel` (scribble / canny) that conditions the UNet on a sketch.

The shared loop calls `GenerationRequest.unet_extra(model_in, t, encoder_hidden_states, added_cond)` every step; the
hook built here runs the ControlNet on the same inputs and returns the residuals the UNet adds to its skip
connections (torch backend only: a Core ML UNet has no residual inputs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import BadInput

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")
PICKLE_FILES = ("diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin")


def check_controlnet_folder(folder: Path, unet_config: dict, *, allow_pickle: bool = False) -> dict:
    """Validate `folder` against the UNet it must condition; returns its config. Every mismatch is one line."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise BadInput(f"ControlNet folder {folder} does not exist (give a diffusers ControlNetModel folder)")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise BadInput(f"{folder} has no config.json; a ControlNet folder is what ControlNetModel.save_pretrained writes")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise BadInput(f"{config_file} is not valid JSON ({exc})") from None
    if config.get("_class_name") not in ("ControlNetModel", None):
        raise BadInput(f"{folder} holds a {config.get('_class_name')}, not a ControlNetModel "
                       "(ControlNet-XS, T2I adapters and union ControlNets are not supported)")
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        if any((folder / f).is_file() for f in PICKLE_FILES) and not allow_pickle:
            raise BadInput(f"{folder} has pickle weights (.bin), which can run code when loaded; convert them to "
                           "safetensors or pass --allow-pickle if you trust them")
        if not any((folder / f).is_file() for f in PICKLE_FILES):
            raise BadInput(f"{folder} has no weights ({WEIGHT_FILES[0]})")
    for key in ("cross_attention_dim", "addition_embed_type", "block_out_channels", "in_channels"):
        want, have = unet_config.get(key), config.get(key)
        if key == "block_out_channels":
            want, have = list(want or []), list(have or [])
        if want != have:
            raise BadInput(f"ControlNet {folder.name} was made for another model: {key} is {have}, "
                           f"the UNet's is {want}")
    return config


def load_controlnet(folder: Path, unet_config: dict, *, allow_pickle: bool = False, dtype=None):
    import torch
    from diffusers import ControlNetModel

    check_controlnet_folder(folder, unet_config, allow_pickle=allow_pickle)
    has_safetensors = any((Path(folder) / f).is_file() for f in WEIGHT_FILES)
    try:
        model = ControlNetModel.from_pretrained(str(folder), torch_dtype=dtype or torch.float32,
                                                use_safetensors=has_safetensors)
    except (OSError, ValueError, RuntimeError) as exc:  # damaged weights or shapes that do not match the config
        raise BadInput(f"--controlnet {folder} could not be loaded: {str(exc).splitlines()[0]}") from None
    return model.eval()


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


def controlnet_hook(folder: Path, control_image, backend, *, scale: float = 1.0, allow_pickle: bool = False):
    """`--controlnet FOLDER` for a run: load and check the ControlNet against `backend`'s UNet (torch backend only)
    and return the loop's `unet_extra` conditioned on the PIL `control_image`."""
    components = getattr(backend, "components", None)
    if components is None:
        raise BadInput(f"--controlnet needs the torch backend; the {backend.name} backend cannot take ControlNet residuals")
    controlnet = load_controlnet(Path(folder), dict(components.config("unet")), allow_pickle=allow_pickle,
                                 dtype=getattr(components, "dtype", None))
    device = getattr(backend, "device", None)
    if device is not None:
        controlnet = controlnet.to(device)
    return residuals_hook(controlnet, control_tensor(control_image), scale, device)
