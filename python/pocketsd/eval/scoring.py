"""The metric layer's entry point: images in, one `MetricResult` per metric out.

    scorers = load_scorers(METRICS, MetricWeights(...), device="cuda")    # once; missing weights → skip records
    results = score_images(test_images, prompts, reference=ref_images, scorers=scorers)
    for r in results.values(): print(r.line())

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

from .results import MetricResult
from .stats import mean_interval, proportion_interval
from .weights import WeightsMissing

PAIRED = ("psnr", "ssim", "lpips")
SET_LEVEL = ("fid",)
TEXT = ("clip_score", "image_reward")
METRICS = ("psnr", "ssim", "lpips", "fid", "clip_score", "image_reward", "adherence")
NEEDS_WEIGHTS = ("lpips", "fid", "clip_score", "image_reward")


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
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {', '.join(METRICS)}")
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


def score_images(test, prompts: Sequence, reference=None, metrics: Sequence[str] = METRICS,
                 scorers: dict[str, object] | None = None, weights: MetricWeights | None = None, device="cpu",
                 fid_bootstrap: int = 0, seed: int = 0) -> dict[str, MetricResult]:
    """Every metric asked for, for `test` images (PIL images, uint8 arrays or tensors, one per prompt) and
    optionally `reference` images generated from the same prompts and seeds. `prompts`: `Prompt` objects or
    strings, in image order. Metrics that need a reference (or scenes) and have none are skip records too."""
    scorers = scorers if scorers is not None else load_scorers(metrics, weights, device)
    texts = [getattr(p, "text", p) for p in prompts]
    scenes = [getattr(p, "scene", None) for p in prompts]
    n_test = len(test)
    if n_test != len(texts):
        raise ValueError(f"{n_test} test images but {len(texts)} prompts")
    if reference is not None and len(reference) != n_test:
        raise ValueError(f"{len(reference)} reference images but {n_test} test images")

    results: dict[str, MetricResult] = {}
    for name in metrics:
        if name in PAIRED + SET_LEVEL and reference is None:
            results[name] = MetricResult.skip(name, f"skipped {name}: no reference images (generate with --against)")
            continue
        if name == "psnr":
            from .metrics import psnr_per_image

            values = psnr_per_image(reference, test)
            results[name] = MetricResult.from_interval(name, mean_interval(values), values, higher_is_better=True)
        elif name == "ssim":
            from .metrics import ssim_per_image

            values = ssim_per_image(reference, test)
            results[name] = MetricResult.from_interval(name, mean_interval(values), values, higher_is_better=True)
        elif name == "adherence":
            if any(s is None for s in scenes):
                results[name] = MetricResult.skip(name, "skipped adherence: the prompts are not the reference "
                                                        "model's grammar (use --prompts reference)")
                continue
            results[name] = adherence_result(test, scenes)
            if reference is not None:
                results["adherence_reference"] = adherence_result(reference, scenes, "adherence_reference")
        else:
            scorer = scorers.get(name)
            if scorer is None:
                raise ValueError(f"no scorer loaded for {name}")
            if isinstance(scorer, MetricResult):  # the skip record from load_scorers
                results[name] = scorer
                if name in TEXT and reference is not None:
                    results[f"{name}_reference"] = MetricResult.skip(f"{name}_reference", scorer.skipped)
                continue
            if name == "lpips":
                results[name] = scorer.score(reference, test)
            elif name == "fid":
                results[name] = scorer.score(reference, test, bootstrap=fid_bootstrap, seed=seed)
            else:
                results[name] = scorer.score(test, texts)
                if reference is not None:
                    ref = scorer.score(reference, texts)
                    ref.name = f"{name}_reference"
                    results[ref.name] = ref
    return results


def adherence_result(images, scenes, name: str = "adherence") -> MetricResult:
    """Share of images whose colour, shape and background all read back as the scene asked (Wilson interval)."""
    from .classify import classify

    hits = []
    for image, scene in zip(_as_pil(images), scenes):
        r = classify(image)
        hits.append(int(r.color == scene.color and r.shape == scene.shape and r.background == scene.background))
    return MetricResult.from_interval(name, proportion_interval(hits), hits, higher_is_better=True)


def _as_pil(images):
    if isinstance(images, (list, tuple)) and images and hasattr(images[0], "convert"):
        return list(images)
    from PIL import Image

    from .metrics import as_uint8_images

    return [Image.fromarray(a) for a in as_uint8_images(images).permute(0, 2, 3, 1).numpy()]
