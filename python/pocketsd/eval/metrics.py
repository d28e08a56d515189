"""Image and latent fidelity metrics shared by the benchmarks and tests.

- `latent_psnr`: Apple's mixed-bit palettization protocol, 20·log10(max|ref| / RMSE) on the UNet's output latents.
- `image_psnr` / `image_ssim`: final images against the fp16 model's, via torchmetrics (the well-kept implementations).
- `adherence`: the share of images whose colour and shape `pocketsd.eval.classify` reads back as the prompt asked.
- `psnr_per_image` / `ssim_per_image`: one value per pair (for means with intervals, see `eval.scoring`).
- `as_float_images` / `as_uint8_images` / `image_batches`: the image conversions the metric modules share.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import torch


def _as_float_images(images) -> torch.Tensor:
    """PIL images / uint8 HWC arrays / float NCHW tensors in [0, 1] → float32 NCHW tensor in [0, 1]."""
    if isinstance(images, torch.Tensor):
        t = images.detach().float()
        return t if t.ndim == 4 else t.unsqueeze(0)
    if not isinstance(images, (list, tuple)):
        images = [images]
    arrays = [np.asarray(im.convert("RGB") if hasattr(im, "convert") else im, dtype=np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def as_float_images(images) -> torch.Tensor:
    """PIL images, uint8 HWC arrays, or a float NCHW tensor in [0, 1] (or a uint8 NCHW tensor) → float32 NCHW in [0, 1]."""
    if isinstance(images, torch.Tensor) and images.dtype == torch.uint8:
        t = images if images.ndim == 4 else images.unsqueeze(0)
        return t.float() / 255.0
    return _as_float_images(images)


def as_uint8_images(images) -> torch.Tensor:
    """Same inputs → uint8 NCHW (what FID's Inception and CLIP's processor take)."""
    if isinstance(images, torch.Tensor) and images.dtype == torch.uint8:
        return images if images.ndim == 4 else images.unsqueeze(0)
    if isinstance(images, (list, tuple)) and images and not isinstance(images[0], torch.Tensor):
        arrays = [np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images]
        if all(a.dtype == np.uint8 for a in arrays):
            return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return (as_float_images(images).clamp(0, 1) * 255.0).round().to(torch.uint8)


def image_batches(images, batch_size: int):
    """Consecutive slices of a list of images or of an NCHW tensor, so a large set is converted a batch at a time."""
    n = len(images)
    for start in range(0, n, batch_size):
        yield images[start:start + batch_size]


def psnr_per_image(reference, test) -> list[float]:
    """PSNR (data range 1) of each test image against its reference; inf where they are identical."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    ref, out = as_float_images(reference), as_float_images(test)
    if ref.shape != out.shape:
        raise ValueError(f"PSNR compares pairs of the same size: {tuple(ref.shape)} vs {tuple(out.shape)}")
    values = peak_signal_noise_ratio(out, ref, data_range=1.0, reduction="none", dim=(1, 2, 3))
    return [float(v) for v in values.reshape(-1)]


def ssim_per_image(reference, test) -> list[float]:
    """SSIM (Gaussian window, data range 1) of each test image against its reference."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    # float64: in float32 the variance E[x²] − μ² of flat regions comes out a hair negative, torchmetrics clamps it
    # to 0 but not the covariance, and identical images score 0.998 instead of 1.
    ref, out = as_float_images(reference).double(), as_float_images(test).double()
    if ref.shape != out.shape:
        raise ValueError(f"SSIM compares pairs of the same size: {tuple(ref.shape)} vs {tuple(out.shape)}")
    values = structural_similarity_index_measure(out, ref, data_range=1.0, reduction="none")
    return [float(v) for v in values.reshape(-1)]


def latent_psnr(reference: torch.Tensor, test: torch.Tensor) -> float:
    """20·log10(max|ref| / RMSE) over the whole tensor (Apple's MBP sensitivity measure)."""
    ref, out = reference.detach().double(), test.detach().double()
    rmse = torch.sqrt(torch.mean((ref - out) ** 2)).item()
    peak = ref.abs().max().item()
    if rmse == 0.0:
        return math.inf
    return 20.0 * math.log10(peak / rmse)


def image_psnr(reference, test) -> float:
    """Mean per-image PSNR (data range 1) of `test` against `reference`."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    ref, out = _as_float_images(reference), _as_float_images(test)
    values = [peak_signal_noise_ratio(o[None], r[None], data_range=1.0).item() for r, o in zip(ref, out)]
    return float(np.mean(values))


def image_ssim(reference, test) -> float:
    """Mean SSIM (Gaussian window, data range 1) of `test` against `reference`."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    ref, out = _as_float_images(reference), _as_float_images(test)
    return float(structural_similarity_index_measure(out, ref, data_range=1.0).item())


def adherence(images: Iterable, scenes: Sequence) -> float:
    """Share (0–100) of images whose colour and shape are read back as the scene asked."""
    from .classify import classify

    hits = total = 0
    for image, scene in zip(images, scenes):
        reading = classify(image)
        hits += int(reading.color == scene.color and reading.shape == scene.shape)
        total += 1
    return 100.0 * hits / max(1, total)
