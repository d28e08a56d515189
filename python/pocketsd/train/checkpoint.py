"""Resumable training checkpoints: everything a killed run needs to continue exactly where it was.

    <out>.checkpoint/
        state.safetensors   the LoRA factors (fp32, by parameter name), AdamW's moments and step counts
                            (`optim.<i>.<name>`), and the training random generator's state (`rng`)
        state.json          step, settings fingerprint, loss curve, time spent, AdamW's param groups

No pickle: tensors go to safetensors, the rest to JSON, so resuming never runs code from a file. The folder is
written beside the old one and renamed into place (`artifacts.atomic_dir`), so a kill at any moment leaves
either the previous checkpoint or the new one, never half of one. Resuming restores the factors, the
optimizer and the generator bit for bit, so a resumed run computes the same steps an uninterrupted run would.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..artifacts import atomic_dir
from ..artifacts.outputs import clear_for_replacement
from ..errors import BadInput

FORMAT = "pocketsd-lora-checkpoint"
VERSION = 1


@dataclass
class TrainState:
    step: int = 0
    curve: list[float] = field(default_factory=list)
    train_seconds: float = 0.0
    cpu_seconds: float = 0.0


def checkpoint_dir(out: Path) -> Path:
    out = Path(out)
    return out.with_name(out.name.removesuffix(".safetensors") + ".checkpoint")


def remove_stale(folder: Path) -> None:
    """Temp folders a killed writer left beside the checkpoint (atomic_dir's `.<name>.tmp-*`/`.old-*`)."""
    for stale in list(folder.parent.glob(f".{folder.name}.tmp-*")) + list(folder.parent.glob(f".{folder.name}.old-*")):
        shutil.rmtree(stale, ignore_errors=True)


def save(folder: Path, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, generator: torch.Generator,
         state: TrainState, settings: dict) -> None:
    from safetensors.torch import save_file

    opt = optimizer.state_dict()
    tensors = {f"param.{name}": p.detach().cpu().contiguous() for name, p in params.items()}
    for index, entry in opt["state"].items():
        for key, value in entry.items():
            value = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
    tensors["rng"] = generator.get_state()
    meta = {"format": FORMAT, "version": VERSION, "step": state.step, "settings": settings, "curve": state.curve,
            "train_seconds": state.train_seconds, "cpu_seconds": state.cpu_seconds,
            "param_groups": opt["param_groups"], "param_names": list(params)}
    remove_stale(folder)
    clear_for_replacement(folder)  # the trainer owns its checkpoint folder (atomic_dir replaces only cleared folders)
    with atomic_dir(folder) as tmp:
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta, indent=1))


def settings_differ(saved: dict, settings: dict) -> list[str]:
    return [f"{k} {saved.get(k)!r} → {settings.get(k)!r}" for k in sorted(set(saved) | set(settings))
            if saved.get(k) != settings.get(k)]


def load(folder: Path, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, generator: torch.Generator,
         settings: dict) -> TrainState:
    """Restore a checkpoint into `params`, `optimizer` and `generator`; BadInput if it belongs to another run."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        meta = json.loads((folder / "state.json").read_text())
        tensors = load_file(str(folder / "state.safetensors"))
    except (OSError, json.JSONDecodeError, SafetensorError) as exc:
        raise BadInput(f"checkpoint {folder} cannot be read ({type(exc).__name__}); delete it to start over") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise BadInput(f"{folder} is not a format-{VERSION} LoRA training checkpoint; delete it to start over")
    changed = settings_differ(meta.get("settings", {}), settings)
    if changed:
        raise BadInput(f"checkpoint {folder} was made with other settings ({'; '.join(changed[:3])}): run with the "
                       "same ones, or delete it to start over")
    if meta.get("param_names") != list(params):
        raise BadInput(f"checkpoint {folder} holds other LoRA layers than this model gives; delete it to start over")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[f"param.{name}"].to(p.device, p.dtype))
    opt_state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            opt_state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
    generator.set_state(tensors["rng"])
    return TrainState(int(meta["step"]), list(meta["curve"]), float(meta["train_seconds"]), float(meta["cpu_seconds"]))
