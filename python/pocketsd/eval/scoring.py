"""The metric layer's entry point: images in, one `MetricResult` per metric out.

One call, for images already in memory:

    scorers = load_scorers(METRICS, MetricWeights(...), device="cuda")   # once; missing weights → skip records
    results = score_images(test_images, prompts, reference=ref_images, scorers=scorers)
    for r in results.values(): print(r.line())

Streaming and sharded (what `pocketsd eval` does): each process adds its images batch by batch as it generates
them — the per-image networks (LPIPS, Inception features, CLIP, ImageReward) run there, on that process's device —
then the processes' partial states (per-image values and Inception features, no images) are gathered and the main
process computes every mean, interval and the FID once:

    ev = Evaluation(scorers=scorers)
    for batch in my_batches: ev.add(test_batch, prompt_batch, reference=reference_batch)
    parts = sharding.gather([ev.partial()])
    if sharding.is_main_process(): results = Evaluation.merge(parts, scorers).results()

| key | compares | needs |
| --- | --- | --- |
| `psnr`, `ssim` | each test image with the reference image of the same prompt and seed (torchmetrics) | `reference` |
| `lpips` | the same pairs (AlexNet LPIPS, `eval.lpips`) | `reference`, AlexNet weights |
| `fid` | the test set against the reference set (`eval.fid`) | `reference`, ≥ 2 images, Inception weights |
| `clip_score`, `clip_score_reference` | each image with its prompt text | CLIP weights |
| `image_reward`, `image_reward_reference` | each image with its prompt text | ImageReward checkpoint + BERT tokenizer |
| `adherence`, `adherence_reference` | colour, shape and background read back from pixels (reference model's grammar) | prompts with `scene` |

Each metric that needs weights and cannot find them is a skip record whose one line says what is missing and the
command that downloads it; nothing is skipped silently and no value is invented. Intervals: see `eval.stats`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .results import MetricResult
from .stats import mean_interval, proportion_interval
from .weights import WeightsMissing

PAIRED = ("psnr", "ssim", "lpips")
SET_LEVEL = ("fid",)
TEXT = ("clip_score", "image_reward")
METRICS = ("psnr", "ssim", "lpips", "fid", "clip_score", "image_reward", "adherence")
NEEDS_WEIGHTS = ("lpips", "fid", "clip_score", "image_reward")
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False, "clip_score": True, "image_reward": True}


@dataclass(frozen=True)
class MetricWeights:
    """Explicit weight locations (None: the environment variable, then the standard cache; see `eval.weights`)."""

    lpips_alexnet: str | Path | None = None
    fid_inception: str | Path | None = None
    clip_model: str | Path | None = None
    image_reward: str | Path | None = None
    image_reward_tokenizer: str | Path | None = None


def load_scorers(metrics: Sequence[str] = METRICS, weights: MetricWeights | None = None, device="cpu",
                 random_weights: bool = False) -> dict[str, object]:
    """One loaded scorer per weight-needing metric asked for, or its skip record (a MetricResult) when its weights
    are missing. `random_weights=True` (CI smoke runs) gives LPIPS and FID random backbones, whose results say
    real_weights=false, and skips CLIP and ImageReward (no random stand-in of their size is worth running)."""
    _check_names(metrics)
    weights = weights or MetricWeights()
    out: dict[str, object] = {}
    for name in metrics:
        if name not in NEEDS_WEIGHTS:
            continue
        try:
            out[name] = _load_one(name, weights, device, random_weights)
        except WeightsMissing as exc:
            out[name] = MetricResult.skip(name, str(exc))
    return out


def _check_names(metrics: Sequence[str]) -> None:
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {', '.join(METRICS)}")


def _load_one(name: str, weights: MetricWeights, device, random_weights: bool):
    if name == "lpips":
        from .lpips import LpipsScorer

        return LpipsScorer.random(device=device) if random_weights else LpipsScorer.load(weights.lpips_alexnet, device)
    if name == "fid":
        from .fid import FidScorer

        return FidScorer.random(device=device) if random_weights else FidScorer.load(weights.fid_inception, device)
    if random_weights:
        raise WeightsMissing(name, "random-weight run: no random stand-in for this network")
    if name == "clip_score":
        from .clip_score import ClipScorer

        return ClipScorer.load(weights.clip_model, device)
    from .image_reward import ImageRewardScorer

    return ImageRewardScorer.load(weights.image_reward, weights.image_reward_tokenizer, device)


class Evaluation:
    """Per-image values and Inception features, accumulated batch by batch; `results()` aggregates them."""

    def __init__(self, metrics: Sequence[str] = METRICS, scorers: dict[str, object] | None = None,
                 fid_bootstrap: int = 0, seed: int = 0):
        _check_names(metrics)
        self.metrics = tuple(metrics)
        self.scorers = scorers if scorers is not None else load_scorers(metrics)
        self.fid_bootstrap = fid_bootstrap
        self.seed = seed
        self.ids: list[str] = []
        self.values: dict[str, list[float]] = {}
        self.features: dict[str, list[torch.Tensor]] = {"test": [], "reference": []}
        self.has_reference: bool | None = None
        self.all_scenes = True

    def _scorer(self, name: str):
        scorer = self.scorers.get(name)
        if scorer is None:
            raise ValueError(f"no scorer loaded for {name} (load_scorers with it first)")
        return None if isinstance(scorer, MetricResult) else scorer

    def add(self, test, prompts: Sequence, reference=None) -> None:
        """One batch: test images (PIL, uint8 arrays or tensors), their prompts (`Prompt` or str) and, if the run
        compares with a reference model, the reference images of the same prompts and seeds."""
        if len(test) != len(prompts):
            raise ValueError(f"{len(test)} test images but {len(prompts)} prompts")
        if reference is not None and len(reference) != len(test):
            raise ValueError(f"{len(reference)} reference images but {len(test)} test images")
        if self.has_reference is None:
            self.has_reference = reference is not None
        elif self.has_reference != (reference is not None):
            raise ValueError("every batch of an evaluation has reference images, or none does")
        start = len(self.ids)
        self.ids += [getattr(p, "id", None) or f"item-{start + k}" for k, p in enumerate(prompts)]
        texts = [getattr(p, "text", p) for p in prompts]
        scenes = [getattr(p, "scene", None) for p in prompts]
        sets = {"": test, "_reference": reference} if reference is not None else {"": test}

        def record(name: str, values: list[float]) -> None:
            self.values.setdefault(name, []).extend(float(v) for v in values)

        for name in self.metrics:
            if name in PAIRED + SET_LEVEL and reference is None:
                continue
            if name == "psnr":
                from .metrics import psnr_per_image

                record(name, psnr_per_image(reference, test))
            elif name == "ssim":
                from .metrics import ssim_per_image

                record(name, ssim_per_image(reference, test))
            elif name == "adherence":
                self.all_scenes = self.all_scenes and all(s is not None for s in scenes)
                if self.all_scenes:
                    for suffix, images in sets.items():
                        record(name + suffix, adherence_hits(images, scenes))
            elif (scorer := self._scorer(name)) is None:
                continue
            elif name == "lpips":
                record(name, scorer.distances(reference, test))
            elif name == "fid":
                self.features["test"].append(scorer.features(test))
                self.features["reference"].append(scorer.features(reference))
            else:  # clip_score, image_reward: each image with its own prompt
                for suffix, images in sets.items():
                    record(name + suffix, scorer.scores(images, texts) if name == "clip_score"
                           else scorer.rewards(images, texts))

    def partial(self) -> dict:
        """This process's state (no images, no networks): what `sharding.gather` carries to the main process."""
        return {"ids": list(self.ids), "values": {k: list(v) for k, v in self.values.items()},
                "features": {k: [t.cpu() for t in v] for k, v in self.features.items()},
                "has_reference": self.has_reference, "all_scenes": self.all_scenes}

    @classmethod
    def merge(cls, partials: Sequence[dict], scorers: dict[str, object], metrics: Sequence[str] = METRICS,
              fid_bootstrap: int = 0, seed: int = 0) -> "Evaluation":
        """The processes' partial states, in rank order, as one evaluation (input order kept for contiguous
        shards)."""
        ev = cls(metrics, scorers, fid_bootstrap, seed)
        for part in partials:
            if not part["ids"]:
                continue
            if ev.has_reference is not None and ev.has_reference != part["has_reference"]:
                raise ValueError("some processes compared with reference images and some did not")
            ev.has_reference = part["has_reference"]
            ev.ids += part["ids"]
            for name, values in part["values"].items():
                ev.values.setdefault(name, []).extend(values)
            for side, tensors in part["features"].items():
                ev.features[side] += tensors
            ev.all_scenes = ev.all_scenes and part["all_scenes"]
        duplicated = len(ev.ids) - len(set(ev.ids))
        if duplicated:
            raise ValueError(f"{duplicated} prompt ids were evaluated twice across processes")
        return ev

    def results(self) -> dict[str, MetricResult]:
        """Every metric asked for: mean and 95 % interval, FID, or the skip record saying why not."""
        out: dict[str, MetricResult] = {}
        n = len(self.ids)
        for name in self.metrics:
            if name in PAIRED + SET_LEVEL and not self.has_reference:
                out[name] = MetricResult.skip(name, f"skipped {name}: no reference images (generate with --against)")
                continue
            if name == "adherence":
                if not self.all_scenes:
                    out[name] = MetricResult.skip(name, "skipped adherence: the prompts are not the reference "
                                                        "model's grammar (use --prompts reference)")
                    continue
                for key in (name, name + "_reference"):
                    if key in self.values:
                        hits = self.values[key]
                        out[key] = MetricResult.from_interval(key, proportion_interval(hits), hits,
                                                              higher_is_better=True)
                continue
            scorer = self.scorers.get(name)
            if isinstance(scorer, MetricResult):  # its weights are missing: the skip record from load_scorers
                out[name] = scorer
                if name in TEXT and self.has_reference:
                    out[f"{name}_reference"] = MetricResult.skip(f"{name}_reference", scorer.skipped)
                continue
            if name == "fid":
                real = torch.cat(self.features["reference"]) if self.features["reference"] else torch.zeros(0, 1)
                fake = torch.cat(self.features["test"]) if self.features["test"] else torch.zeros(0, 1)
                out[name] = scorer.score_features(real, fake, bootstrap=self.fid_bootstrap, seed=self.seed)
                continue
            keys = [name] + ([f"{name}_reference"] if name in TEXT and self.has_reference else [])
            for key in keys:
                values = self.values.get(key, [])
                if len(values) != n or n == 0:
                    raise ValueError(f"{key}: {len(values)} values for {n} images")
                result = MetricResult.from_interval(key, mean_interval(values), values,
                                                    higher_is_better=HIGHER_IS_BETTER[name])
                if scorer is not None:  # a network metric: say which weights made the number
                    result.real_weights = scorer.real_weights
                    result.weights = scorer.weights
                    result.weights_sha256 = getattr(scorer, "sha256", None)
                    result.notes += list(getattr(scorer, "notes", []))
                out[key] = result
        return out


def score_images(test, prompts: Sequence, reference=None, metrics: Sequence[str] = METRICS,
                 scorers: dict[str, object] | None = None, weights: MetricWeights | None = None, device="cpu",
                 fid_bootstrap: int = 0, seed: int = 0, batch_size: int = 16) -> dict[str, MetricResult]:
    """Every metric asked for, for `test` images (one per prompt, in order) and optionally the `reference` images
    of the same prompts and seeds. Metrics that need a reference (or scenes) and have none are skip records too."""
    scorers = scorers if scorers is not None else load_scorers(metrics, weights, device)
    ev = Evaluation(metrics, scorers, fid_bootstrap, seed)
    from .metrics import image_batches

    prompts = list(prompts)
    if len(test) != len(prompts):
        raise ValueError(f"{len(test)} test images but {len(prompts)} prompts")
    refs = image_batches(reference, batch_size) if reference is not None else None
    for i, batch in enumerate(image_batches(test, batch_size)):
        ev.add(batch, prompts[i * batch_size:(i + 1) * batch_size], reference=next(refs) if refs else None)
    return ev.results()


def adherence_hits(images, scenes) -> list[int]:
    """1 where an image's colour, shape and background all read back as its scene asked."""
    from .classify import classify

    hits = []
    for image, scene in zip(_as_pil(images), scenes):
        r = classify(image)
        hits.append(int(r.color == scene.color and r.shape == scene.shape and r.background == scene.background))
    return hits


def _as_pil(images):
    if isinstance(images, (list, tuple)) and images and hasattr(images[0], "convert"):
        return list(images)
    from PIL import Image

    from .metrics import as_uint8_images

    return [Image.fromarray(a) for a in as_uint8_images(images).permute(0, 2, 3, 1).numpy()]
