"""Where each metric's network weights live, and the one-line message when they do not.

Nothing here downloads. Each metric looks in order at: an explicit argument, its environment variable, then the
standard cache the field's own tools fill. If an argument or a variable names a path that does not exist, the
search stops there (a typo must not silently fall back to some other file).

| metric | environment variable | default location | download (run once, online) |
| --- | --- | --- | --- |
| LPIPS (AlexNet backbone) | `POCKETSD_LPIPS_ALEXNET` (file) | `$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth` (torchvision's checkpoint) | `LPIPS_DOWNLOAD` below |
| LPIPS (linear heads) | — | shipped inside torchmetrics (`torchmetrics/functional/image/lpips_models/alex.pth`) | comes with `pip install torchmetrics` |
| FID (Inception-v3, TF 2015 weights) | `POCKETSD_FID_INCEPTION` (file) | `$TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth` (pytorch-fid) or `weights-inception-2015-12-05-6726825d.pth` (torch-fidelity) | `FID_DOWNLOAD` |
| CLIP score | `POCKETSD_CLIP_MODEL` (folder or hub id) | `openai/clip-vit-large-patch14` in the Hugging Face cache | `CLIP_DOWNLOAD` |
| ImageReward | `POCKETSD_IMAGEREWARD` (folder with `ImageReward.pt` + `med_config.json`, or the `.pt`) | `~/.cache/ImageReward/` (the image-reward package's folder), then `THUDM/ImageReward` in the Hugging Face cache | `IMAGEREWARD_DOWNLOAD` |
| ImageReward (BERT tokenizer) | `POCKETSD_IMAGEREWARD_TOKENIZER` (folder or hub id) | `bert-base-uncased` in the Hugging Face cache | `BERT_DOWNLOAD` |

`$TORCH_HOME` defaults to `~/.cache/torch`. The `.pth` files are read with `torch.load(weights_only=True)`, torch's
restricted unpickler that builds tensors only and runs no code, so they need no `--allow-pickle`. torchvision's
AlexNet file is refused unless its sha256 starts with the `7be5be79` its name carries (torchvision itself checks
that); the Inception file's sha256 is recorded and a mismatch noted (pytorch-fid does not check it), and every
file must hold exactly the tensors (names and shapes) the network needs.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
INCEPTION_FILES = ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth")
INCEPTION_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
CLIP_DEFAULT = "openai/clip-vit-large-patch14"
CLIP_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json",
              "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json")
IMAGEREWARD_REPO = "THUDM/ImageReward"
IMAGEREWARD_FILES = ("ImageReward.pt", "med_config.json")
BERT_DEFAULT = "bert-base-uncased"
BERT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt")

ENV_LPIPS_ALEXNET = "POCKETSD_LPIPS_ALEXNET"
ENV_FID_INCEPTION = "POCKETSD_FID_INCEPTION"
ENV_CLIP_MODEL = "POCKETSD_CLIP_MODEL"
ENV_IMAGEREWARD = "POCKETSD_IMAGEREWARD"
ENV_IMAGEREWARD_TOKENIZER = "POCKETSD_IMAGEREWARD_TOKENIZER"


def torch_hub_checkpoints() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def imagereward_cache() -> Path:
    return Path("~/.cache/ImageReward").expanduser()


def lpips_download() -> str:
    return f"curl -L --create-dirs -o {torch_hub_checkpoints() / ALEXNET_FILE} {ALEXNET_URL}"


def fid_download() -> str:
    return f"curl -L --create-dirs -o {torch_hub_checkpoints() / INCEPTION_FILES[0]} {INCEPTION_URL}"


def clip_download(repo_id: str = CLIP_DEFAULT) -> str:
    return f"hf download {repo_id} {' '.join(CLIP_FILES)}"


def imagereward_download() -> str:
    return f"hf download {IMAGEREWARD_REPO} {' '.join(IMAGEREWARD_FILES)} --local-dir {imagereward_cache()}"


def bert_download(repo_id: str = BERT_DEFAULT) -> str:
    return f"hf download {repo_id} {' '.join(BERT_FILES)}"


class WeightsMissing(Exception):
    """A metric's weights are not on this machine (or are not the right file). The message is the one line the
    skip record carries: `skipped <metric>: <what> not found at <where>; download with <command>`."""

    def __init__(self, metric: str, message: str):
        super().__init__(f"skipped {metric}: {message}")
        self.metric = metric


@dataclass(frozen=True)
class Located:
    path: Path
    origin: str  # "argument", "$POCKETSD_…", "torch hub cache", "Hugging Face cache", …


def locate_file(metric: str, what: str, explicit: str | Path | None, env_var: str, candidates: list[Path],
                download: str) -> Located:
    """The first of: `explicit`, `$env_var`, then the candidates that exists, or WeightsMissing."""
    for given, origin in ((explicit, "argument"), (os.environ.get(env_var) or None, f"${env_var}")):
        if given is None:
            continue
        path = Path(given).expanduser()
        if path.is_file():
            return Located(path, origin)
        raise WeightsMissing(metric, f"{what} not found at {path} (from {origin}); download with `{download}`")
    for path in candidates:
        if path.is_file():
            return Located(path, "cache")
    where = " or ".join(str(p) for p in candidates)
    raise WeightsMissing(metric, f"{what} not found at {where} (or set {env_var}); download with `{download}`")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_hub_hash(metric: str, path: Path, expected_prefix: str, download: str) -> str:
    """sha256 of the file; WeightsMissing if it does not start with the prefix the published name carries."""
    digest = sha256_of(path)
    if not digest.startswith(expected_prefix):
        raise WeightsMissing(metric, f"{path} has sha256 {digest[:12]}…, the published file starts with "
                                     f"{expected_prefix}; re-download with `{download}`")
    return digest


def load_state_dict(metric: str, path: Path, download: str) -> dict:
    """A tensor state dict from .safetensors, or from .pth/.pt through torch's restricted (weights-only) loader."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated download, an HTML error page, a pickle with code in it …
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise WeightsMissing(metric, f"{path} could not be read as a weights file ({type(exc).__name__}: "
                                     f"{first}); re-download with `{download}`") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsMissing(metric, f"{path} holds no tensor state dict; re-download with `{download}`")
    return state


def hub_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder of a Hugging Face repo, or None; never downloads."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached, or no huggingface_hub: the caller reports what is missing
        return None
