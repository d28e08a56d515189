"""ImageReward (Xu et al. 2023, `THUDM/ImageReward`), computed from its released checkpoint without the
`image-reward` package.

Why not the package: it builds BLIP on timm and torchvision (timm requires torchvision), which cannot be installed
next to this torch. ImageReward's model is BLIP's ViT-L/16 image encoder (224 px), BLIP's BERT text encoder with
cross-attention to the image tokens (`med_config.json`), and a 5-layer linear head on the text encoder's first
token, normalised by the released mean and std. transformers ships exactly these BLIP parts (`BlipVisionModel`,
`BlipTextModel`, ported from the same BLIP code), so the checkpoint's keys are renamed onto them (the same renames
transformers' own BLIP conversion script applies) and nothing else is re-implemented:

    reward = (head(text_encoder(tokens, cross-attending to vision(image))[:, 0]) − 0.16717362830052426)
             / 1.0333394966054072

Preprocessing follows ImageReward's: RGB, bicubic resize of the short side to 224, centre crop, CLIP's
mean/std; the prompt is tokenized by BERT's `bert-base-uncased` tokenizer padded/truncated to 35 tokens.

What has been checked here: the key mapping and the forward semantics against an independent plain-torch
implementation of the original BLIP modules (tests/test_eval_metrics.py, tiny random models). What has not: a
score from the real checkpoint against the image-reward package (neither the 1.7 GB checkpoint nor the package
can be had on the development machine). Every result records where its weights came from.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .results import MetricResult
from .stats import mean_interval
from .weights import (BERT_DEFAULT, ENV_IMAGEREWARD, ENV_IMAGEREWARD_TOKENIZER, IMAGEREWARD_REPO, WeightsMissing,
                      bert_download, hub_snapshot, imagereward_cache, imagereward_download, load_state_dict)

REWARD_MEAN = 0.16717362830052426  # released with the checkpoint (ImageReward.py)
REWARD_STD = 1.0333394966054072
MAX_TOKENS = 35
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VIT_HEAD_DIM = 64  # BLIP's ViT-B (768/12) and ViT-L (1024/16) both use 64-wide heads
# Keys of the checkpoint that the reward does not use (BLIP's contrastive projections, buffers).
_UNUSED = re.compile(r"^blip\.(vision_proj|text_proj|itm_head|temp)|position_ids$")


class RewardHead(nn.Module):
    """ImageReward's MLP (keys `mlp.layers.{0,2,4,6,7}`); the dropouts are inactive at inference."""

    def __init__(self, width: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(width, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )

    def forward(self, x):
        return self.layers(x)


class ImageRewardModel(nn.Module):
    def __init__(self, vision_config, text_config):
        super().__init__()
        from transformers.models.blip.modeling_blip import BlipVisionModel
        from transformers.models.blip.modeling_blip_text import BlipTextModel

        self.vision = BlipVisionModel(vision_config)
        self.text = BlipTextModel(text_config, add_pooling_layer=False)
        self.mlp = RewardHead(text_config.hidden_size)

    @torch.inference_mode()
    def forward(self, pixel_values, input_ids, attention_mask) -> torch.Tensor:
        """Normalised reward per image (N,)."""
        image_embeds = self.vision(pixel_values=pixel_values).last_hidden_state
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        text = self.text(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image_embeds,
                         encoder_attention_mask=image_atts, is_decoder=False)  # bidirectional, as BLIP's encoder
        raw = self.mlp(text.last_hidden_state[:, 0, :].float()).squeeze(-1)
        return (raw - REWARD_MEAN) / REWARD_STD


def rename_checkpoint_key(key: str) -> str | None:
    """ImageReward/BLIP key → this module's key (None for keys the reward does not use)."""
    if _UNUSED.search(key):
        return None
    if key.startswith("mlp."):
        return key
    if key.startswith("blip.text_encoder."):
        return "text." + key[len("blip.text_encoder."):]
    if not key.startswith("blip.visual_encoder."):
        return None
    k = key[len("blip.visual_encoder."):]
    fixed = {"cls_token": "embeddings.class_embedding", "pos_embed": "embeddings.position_embedding"}
    if k in fixed:
        return "vision." + fixed[k]
    k = k.replace("patch_embed.proj.", "embeddings.patch_embedding.")
    if k.startswith("norm."):
        k = "post_layernorm." + k[len("norm."):]
    k = re.sub(r"^blocks\.(\d+)\.", r"encoder.layers.\1.", k)
    k = k.replace(".norm1.", ".layer_norm1.").replace(".norm2.", ".layer_norm2.")
    k = k.replace(".attn.qkv.", ".self_attn.qkv.").replace(".attn.proj.", ".self_attn.projection.")
    return "vision." + k


def configs_from_checkpoint(state: dict, med_config: dict):
    """The BLIP vision config from the checkpoint's shapes, the text config from med_config.json (BLIP sets the
    text encoder's cross-attention width to the vision width)."""
    from transformers import BlipTextConfig, BlipVisionConfig

    cls = state["blip.visual_encoder.cls_token"]
    width = int(cls.shape[-1])
    patch = int(state["blip.visual_encoder.patch_embed.proj.weight"].shape[-1])
    tokens = int(state["blip.visual_encoder.pos_embed"].shape[1]) - 1
    side = int(round(math.sqrt(tokens)))
    depth = len({int(m.group(1)) for k in state if (m := re.match(r"blip\.visual_encoder\.blocks\.(\d+)\.", k))})
    vision = BlipVisionConfig(
        hidden_size=width, intermediate_size=int(state["blip.visual_encoder.blocks.0.mlp.fc1.weight"].shape[0]),
        num_hidden_layers=depth, num_attention_heads=max(1, width // VIT_HEAD_DIM), image_size=side * patch,
        patch_size=patch, hidden_act="gelu", layer_norm_eps=1e-6)  # BLIP's ViT: LayerNorm(eps=1e-6), exact GELU
    text = BlipTextConfig(
        vocab_size=med_config["vocab_size"], hidden_size=med_config["hidden_size"],
        encoder_hidden_size=width, intermediate_size=med_config["intermediate_size"],
        num_hidden_layers=med_config["num_hidden_layers"], num_attention_heads=med_config["num_attention_heads"],
        max_position_embeddings=med_config["max_position_embeddings"],
        hidden_act=med_config.get("hidden_act", "gelu"), layer_norm_eps=med_config.get("layer_norm_eps", 1e-12),
        pad_token_id=med_config.get("pad_token_id", 0),
        is_decoder=True)  # makes transformers build the cross-attention layers; forward runs bidirectionally
    return vision, text


def preprocess(image, size: int) -> torch.Tensor:
    """ImageReward's transform: bicubic resize of the short side to `size` (the long side truncated, as
    torchvision's Resize), centre crop, [0, 1], CLIP mean/std. PIL image → (3, size, size)."""
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (x - mean) / std


def _find_checkpoint(given: str | Path | None) -> tuple[Path, Path, str]:
    download = imagereward_download()
    env = os.environ.get(ENV_IMAGEREWARD) or None
    for value, origin in ((given, "argument"), (env, f"${ENV_IMAGEREWARD}")):
        if value is None:
            continue
        path = Path(value).expanduser()
        folder, pt = (path, path / "ImageReward.pt") if path.is_dir() else (path.parent, path)
        if not pt.is_file():
            raise WeightsMissing("image_reward", f"ImageReward.pt not found at {pt} (from {origin}); download with "
                                                 f"`{download}`")
        return pt, folder / "med_config.json", origin
    folders = [imagereward_cache()]
    snapshot = hub_snapshot(IMAGEREWARD_REPO)
    if snapshot is not None:
        folders.append(snapshot)
    for folder in folders:
        if (folder / "ImageReward.pt").is_file():
            return folder / "ImageReward.pt", folder / "med_config.json", "cache"
    raise WeightsMissing("image_reward", f"ImageReward.pt not found at {imagereward_cache()} or in the Hugging Face "
                                         f"cache (or set {ENV_IMAGEREWARD}); download with `{download}`")


def load_tokenizer(given: str | Path | None = None):
    """BERT's uncased tokenizer with BLIP's two added tokens ([DEC] as bos, [ENC]), from a folder or the HF
    cache only."""
    from transformers import AutoTokenizer

    ref = str(given or os.environ.get(ENV_IMAGEREWARD_TOKENIZER) or BERT_DEFAULT)
    folder = Path(ref).expanduser()
    if not folder.is_dir() and (folder.is_absolute() or ref.startswith((".", "~"))):
        raise WeightsMissing("image_reward", f"BERT tokenizer folder not found at {folder}; download with "
                                             f"`{bert_download()}` (or set {ENV_IMAGEREWARD_TOKENIZER})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder) if folder.is_dir() else ref, local_files_only=True)
    except (OSError, ValueError):
        where = f"in {folder}" if folder.is_dir() else f"for {ref} in the Hugging Face cache"
        raise WeightsMissing("image_reward", f"BERT tokenizer not found {where}; download with "
                                             f"`{bert_download()}` (or set {ENV_IMAGEREWARD_TOKENIZER})") from None
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_tokens(["[ENC]"], special_tokens=True)
    return tokenizer


class ImageRewardScorer:
    name = "image_reward"

    def __init__(self, model: ImageRewardModel, tokenizer, real_weights: bool, weights: str, notes=(), device="cpu"):
        self.device = torch.device(device)
        self.model = model.eval().requires_grad_(False).to(self.device)
        self.tokenizer = tokenizer
        self.image_size = int(model.vision.config.image_size)
        self.real_weights = real_weights
        self.weights = weights
        self.notes = list(notes)

    @classmethod
    def load(cls, checkpoint: str | Path | None = None, tokenizer: str | Path | None = None, device="cpu",
             real_weights: bool = True) -> "ImageRewardScorer":
        """`checkpoint`: a folder holding ImageReward.pt and med_config.json, or the .pt with med_config.json beside
        it (then $POCKETSD_IMAGEREWARD, ~/.cache/ImageReward, the HF cache). Raises WeightsMissing.
        `real_weights=False` marks a checkpoint known to be random (the tests' tiny one)."""
        pt, med_path, _ = _find_checkpoint(checkpoint)
        download = imagereward_download()
        if not med_path.is_file():
            raise WeightsMissing(cls.name, f"med_config.json not found at {med_path} (it sits beside ImageReward.pt); "
                                           f"download with `{download}`")
        try:
            med_config = json.loads(med_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise WeightsMissing(cls.name, f"{med_path} is not valid JSON ({exc}); re-download with "
                                           f"`{download}`") from None
        state = load_state_dict(cls.name, pt, download)
        if "blip.visual_encoder.cls_token" not in state:
            raise WeightsMissing(cls.name, f"{pt} is not an ImageReward checkpoint (no blip.visual_encoder "
                                           f"weights); download with `{download}`")
        needed = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "max_position_embeddings")
        lacking = [k for k in needed if not isinstance(med_config.get(k), int)]
        if lacking:
            raise WeightsMissing(cls.name, f"{med_path} lacks {', '.join(lacking)} (BLIP's med_config.json); "
                                           f"re-download with `{download}`")
        tok = load_tokenizer(tokenizer)
        vision_config, text_config = configs_from_checkpoint(state, med_config)
        model = ImageRewardModel(vision_config, text_config)
        own = model.state_dict()
        mapped, unused = {}, []
        for key, value in state.items():
            target = rename_checkpoint_key(key)
            if target is None or target not in own:
                unused.append(key)
                continue
            if tuple(value.shape) != tuple(own[target].shape):
                raise WeightsMissing(cls.name, f"{pt}: {key} has shape {tuple(value.shape)}, the model built from "
                                               f"{med_path.name} expects {tuple(own[target].shape)}")
            mapped[target] = value
        missing = sorted(set(own) - set(mapped))
        if missing:
            raise WeightsMissing(cls.name, f"{pt} lacks {len(missing)} weights the reward needs (first: {missing[0]}); "
                                           f"download with `{download}`")
        model.load_state_dict(mapped)
        notes = [f"{len(unused)} checkpoint tensors unused by the reward (e.g. {unused[0]})"] if unused else []
        return cls(model, tok, real_weights, str(pt), notes, device)

    def rewards(self, images, texts: list[str], batch_size: int = 8) -> list[float]:
        from PIL import Image

        from .metrics import as_uint8_images, image_batches

        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")
        out: list[float] = []
        for batch in image_batches(images, batch_size):
            if not (isinstance(batch, (list, tuple)) and hasattr(batch[0], "convert")):
                batch = [Image.fromarray(a) for a in as_uint8_images(batch).permute(0, 2, 3, 1).numpy()]
            i = len(out)
            pixels = torch.stack([preprocess(im, self.image_size) for im in batch])
            tokens = self.tokenizer(list(texts[i:i + len(batch)]), padding="max_length", truncation=True,
                                    max_length=MAX_TOKENS, return_tensors="pt")
            values = self.model(pixels.to(self.device), tokens["input_ids"].to(self.device),
                                tokens["attention_mask"].to(self.device))
            out.extend(float(v) for v in values.cpu())
        return out

    def score(self, images, texts: list[str]) -> MetricResult:
        values = self.rewards(images, texts)
        return MetricResult.from_interval(self.name, mean_interval(values), values, higher_is_better=True,
                                          real_weights=self.real_weights, weights=self.weights,
                                          notes=list(self.notes))
