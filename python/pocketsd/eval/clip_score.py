"""CLIP score: torchmetrics' `clip_score` (100 × cosine of CLIP's projected image and text embeddings, floored at
0) on a transformers `CLIPModel` loaded from local files only (default `openai/clip-vit-large-patch14`, the model
torchmetrics and the SVDQuant evaluation use).

torchmetrics 1.9's `clip_score` reads `model.get_image_features(...)` as a tensor; transformers 5 returns a
`BaseModelOutputWithPooling` there (torchmetrics issue #3407, fixed after 1.9.0 by PR #3408). `_TensorFeatures`
hands torchmetrics the projected embedding tensor under either transformers version, so the metric stays
torchmetrics' own computation.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .results import MetricResult
from .stats import mean_interval
from .weights import CLIP_DEFAULT, ENV_CLIP_MODEL, WeightsMissing, clip_download


class _TensorFeatures(nn.Module):
    """A CLIPModel whose get_image_features / get_text_features return the projected embedding tensor."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config

    @staticmethod
    def _tensor(out) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_image_features(self, *args, **kwargs) -> torch.Tensor:
        return self._tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs) -> torch.Tensor:
        return self._tensor(self.model.get_text_features(*args, **kwargs))


class ClipScorer:
    name = "clip_score"

    def __init__(self, model, processor, real_weights: bool, weights: str, device="cpu"):
        self.device = torch.device(device)
        self.model = _TensorFeatures(model.eval().requires_grad_(False).to(self.device))
        self.processor = processor
        self.real_weights = real_weights
        self.weights = weights

    @classmethod
    def load(cls, model: str | Path | None = None, device="cpu", real_weights: bool = True) -> "ClipScorer":
        """A local folder or a hub id resolved in the Hugging Face cache (argument, $POCKETSD_CLIP_MODEL, then
        openai/clip-vit-large-patch14); safetensors only, never downloads. Raises WeightsMissing.
        `real_weights=False` marks a folder known to hold random weights (the tests' tiny CLIP)."""
        from transformers import CLIPModel, CLIPProcessor

        given = model if model is not None else os.environ.get(ENV_CLIP_MODEL) or CLIP_DEFAULT
        source = Path(given).expanduser()
        is_folder = source.is_dir()
        if not is_folder and (source.is_absolute() or str(given).startswith((".", "~")) or source.exists()):
            raise WeightsMissing(cls.name, f"CLIP model folder not found at {source}")
        ref = str(source) if is_folder else str(given)
        download = clip_download(ref if not is_folder else CLIP_DEFAULT)
        try:
            clip = CLIPModel.from_pretrained(ref, local_files_only=True, use_safetensors=True)
            processor = CLIPProcessor.from_pretrained(ref, local_files_only=True)
        except (OSError, ValueError) as exc:
            if is_folder:
                first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
                where = f"in {ref} ({first})"
            else:  # transformers' own message talks of connecting; nothing here ever connects
                from huggingface_hub.constants import HF_HUB_CACHE

                where = f"for {ref} in the Hugging Face cache {HF_HUB_CACHE}"
            raise WeightsMissing(cls.name, f"CLIP weights not found {where}; download with `{download}`") from None
        return cls(clip, processor, real_weights, ref, device)

    def scores(self, images, texts: list[str]) -> list[float]:
        """torchmetrics' CLIP score of each image with its text."""
        from torchmetrics.functional.multimodal import clip_score

        from .metrics import as_uint8_images, image_batches

        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")

        def loader():
            return self.model, self.processor

        # One image per call: torchmetrics returns the mean of a batch, and the interval needs each image's score.
        scores: list[float] = []
        for batch in image_batches(images, 16):
            for img in as_uint8_images(batch):
                text = texts[len(scores)]
                scores.append(float(clip_score(img.to(self.device), text, model_name_or_path=loader)))
        return scores

    def score(self, images, texts: list[str]) -> MetricResult:
        values = self.scores(images, texts)
        return MetricResult.from_interval(self.name, mean_interval(values), values, higher_is_better=True,
                                          real_weights=self.real_weights, weights=self.weights)
