"""ControlNet folders (diffusers `ControlNetModel`): checked against the UNet they condition, then loaded.

Shared by generation (`--controlnet` on the torch backend) and conversion (`pocketsd convert --controlnet`), so both
refuse a ControlNet made for another model with the same one line, before any weight is read.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..artifacts.model_folder import SHIPPED_CONTROLNETS
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
    unet_config = dict(unet_config)
    in_channels = int(unet_config.get("in_channels", 4))
    if in_channels > 4 and (in_channels - 1) % 2 == 0 and config.get("in_channels") == (in_channels - 1) // 2:
        unet_config["in_channels"] = config["in_channels"]  # an inpainting UNet's ControlNet sees the plain latents
    for key in ("cross_attention_dim", "addition_embed_type", "block_out_channels", "in_channels",
                "layers_per_block", "down_block_types"):
        if key not in config and key in ("layers_per_block", "down_block_types"):
            continue  # diffusers fills its defaults; the residual shapes are checked again when it runs
        want, have = unet_config.get(key), config.get(key)
        if key in ("block_out_channels", "down_block_types"):
            want, have = list(want or []), list(have or [])
        if want != have:
            raise BadInput(f"ControlNet {folder.name} does not fit this UNet: its {key} is {have}, the UNet's is "
                           f"{want} (its block sizes must match the model it conditions)")
    return config


def load_controlnet(folder: Path, unet_config: dict, *, allow_pickle: bool = False, dtype=None):
    """The checked ControlNet in eval mode (safetensors unless `allow_pickle`)."""
    import torch
    from diffusers import ControlNetModel

    check_controlnet_folder(folder, unet_config, allow_pickle=allow_pickle)
    has_safetensors = any((Path(folder) / f).is_file() for f in WEIGHT_FILES)
    # A download of the fp16 file alone (half the size) is diffusers' "fp16" variant.
    only_fp16 = not any((Path(folder) / f).is_file() for f in (WEIGHT_FILES[0], PICKLE_FILES[0]))
    try:
        model = ControlNetModel.from_pretrained(str(folder), torch_dtype=dtype or torch.float32,
                                                use_safetensors=has_safetensors, variant="fp16" if only_fp16 else None)
    except (OSError, ValueError, RuntimeError) as exc:  # damaged weights or shapes that do not match the config
        raise BadInput(f"--controlnet {folder} could not be loaded: {str(exc).splitlines()[0]}") from None
    return model.eval()


def shipped_controlnet(model_folder: Path | None, conditioning: str) -> Path | None:
    """The ControlNet for `conditioning` ("depth", …) that `model_folder` ships beside its components, if any."""
    name = SHIPPED_CONTROLNETS.get(conditioning)
    if model_folder is None or name is None:
        return None
    folder = Path(model_folder) / name
    return folder if (folder / "config.json").is_file() else None
