"""LPIPS (AlexNet), the perceptual distance SVDQuant and DeepCompressor report, without torchvision.

torchmetrics' `LearnedPerceptualImagePatchSimilarity` builds its backbone through torchvision, which cannot be
installed next to this torch. So the five AlexNet conv layers are defined here, laid out exactly as torchvision's
`alexnet().features` (indices 0–12) so that torchvision's own checkpoint loads into them key for key; everything
after the backbone is torchmetrics' (its `ScalingLayer`, its `NetLinLayer` and the linear-head weights it ships,
`lpips_models/alex.pth`). A test checks that this module gives the same numbers as torchmetrics' `_LPIPS` on the
same backbone.

Inputs are images in [0, 1] (N, 3, H, W); the distance of each pair is returned (0 for identical images).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import nn

from .results import MetricResult
from .stats import mean_interval
from .weights import (ALEXNET_FILE, ENV_LPIPS_ALEXNET, WeightsMissing, check_hub_hash, load_state_dict,
                      locate_file, lpips_download, sha256_of, torch_hub_checkpoints)

CHANNELS = (64, 192, 384, 256, 256)
# Where each of LPIPS's five taps ends in torchvision's `features` Sequential (after each conv's ReLU).
_TAP_ENDS = (2, 5, 8, 10, 12)


class AlexNetFeatures(nn.Module):
    """torchvision's AlexNet `features` (same indices, so `features.N.weight` keys load), returning the five
    ReLU outputs LPIPS compares."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps, start = [], 0
        for end in _TAP_ENDS:
            for layer in self.features[start:end]:
                x = layer(x)
            taps.append(x)
            start = end
        return taps


def torchmetrics_heads_file() -> Path:
    from torchmetrics.functional.image import lpips as tm_lpips

    return Path(inspect.getfile(tm_lpips)).parent / "lpips_models" / "alex.pth"


class Lpips(nn.Module):
    """LPIPS distance: scale, AlexNet taps, unit-normalise channels, squared difference, learned 1×1 weights,
    spatial mean, sum over taps."""

    def __init__(self, backbone: AlexNetFeatures, heads: dict[str, torch.Tensor]):
        super().__init__()
        from torchmetrics.functional.image.lpips import NetLinLayer, ScalingLayer

        self.scaling_layer = ScalingLayer()
        self.net = backbone
        self.lins = nn.ModuleList([NetLinLayer(c, use_dropout=True) for c in CHANNELS])
        own = {f"lin{i}.model.1.weight": f"{i}.model.1.weight" for i in range(len(CHANNELS))}
        missing = sorted(set(own) - set(heads))
        if missing:
            raise ValueError(f"LPIPS head weights lack {missing}")
        self.lins.load_state_dict({own[k]: heads[k] for k in own})
        self.eval().requires_grad_(False)

    @torch.inference_mode()
    def forward(self, img0: torch.Tensor, img1: torch.Tensor) -> torch.Tensor:
        """Per-pair distance of two (N, 3, H, W) batches in [0, 1]."""
        x0 = self.scaling_layer(2 * img0 - 1)
        x1 = self.scaling_layer(2 * img1 - 1)
        total = torch.zeros(img0.shape[0], device=img0.device, dtype=img0.dtype)
        for lin, f0, f1 in zip(self.lins, self.net(x0), self.net(x1)):
            d = (_unit(f0) - _unit(f1)) ** 2
            total = total + lin(d).mean(dim=(1, 2, 3))
        return total


def _unit(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    # LPIPS's channel normalisation: eps inside the square root, as the reference implementation has it.
    return features / torch.sqrt(eps + torch.sum(features**2, dim=1, keepdim=True))


class LpipsScorer:
    """Loaded LPIPS with where its weights came from. `score(reference, test)` → MetricResult."""

    name = "lpips"

    def __init__(self, model: Lpips, real_weights: bool, weights: str, sha256: str | None, device="cpu"):
        self.model = model.to(device)
        self.real_weights = real_weights
        self.weights = weights
        self.sha256 = sha256
        self.device = torch.device(device)
        self.notes: list[str] = []

    @classmethod
    def load(cls, alexnet: str | Path | None = None, device="cpu", verify_hash: bool = True) -> "LpipsScorer":
        """Real weights: torchvision's AlexNet checkpoint (argument, $POCKETSD_LPIPS_ALEXNET, torch hub cache)
        and torchmetrics' heads. Raises WeightsMissing."""
        download = lpips_download()
        found = locate_file(cls.name, "AlexNet weights", alexnet, ENV_LPIPS_ALEXNET,
                            [torch_hub_checkpoints() / ALEXNET_FILE], download)
        digest, notes = None, []
        if verify_hash and found.path.name == ALEXNET_FILE:  # torchvision checks this name's hash; so do we
            digest = check_hub_hash(cls.name, found.path, "7be5be79", download)
        elif verify_hash:
            digest = sha256_of(found.path)
            if not digest.startswith("7be5be79"):
                notes.append(f"sha256 {digest[:12]}… is not torchvision's published AlexNet file (7be5be79…)")
        state = load_state_dict(cls.name, found.path, download)
        backbone = AlexNetFeatures()
        own = backbone.state_dict()
        bad = [k for k in own if k not in state or tuple(state[k].shape) != tuple(own[k].shape)]
        if bad:
            raise WeightsMissing(cls.name, f"{found.path} is not torchvision's AlexNet checkpoint ({bad[0]} missing "
                                           f"or of another shape); download with `{download}`")
        backbone.load_state_dict({k: state[k] for k in own})
        scorer = cls(Lpips(backbone, _heads()), True, str(found.path), digest, device)
        scorer.notes = notes
        return scorer

    @classmethod
    def random(cls, seed: int = 0, device="cpu") -> "LpipsScorer":
        """Random AlexNet (torch's default init, seeded) with torchmetrics' real heads: runs the code path, measures
        nothing. Its results carry real_weights=False."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            backbone = AlexNetFeatures()
        return cls(Lpips(backbone, _heads()), False, f"random AlexNet (seed {seed})", None, device)

    def distances(self, reference, test, batch_size: int = 16) -> list[float]:
        from .metrics import as_float_images, image_batches

        if len(reference) != len(test):
            raise ValueError(f"LPIPS compares pairs: {len(reference)} reference and {len(test)} test images")
        values: list[float] = []
        for ref_batch, test_batch in zip(image_batches(reference, batch_size), image_batches(test, batch_size)):
            a, b = as_float_images(ref_batch), as_float_images(test_batch)
            if a.shape != b.shape:
                raise ValueError(f"LPIPS compares pairs of the same size: {tuple(a.shape)} vs {tuple(b.shape)}")
            values.extend(float(v) for v in self.model(a.to(self.device), b.to(self.device)).cpu())
        return values

    def score(self, reference, test) -> MetricResult:
        values = self.distances(reference, test)
        return MetricResult.from_interval(self.name, mean_interval(values), values, higher_is_better=False,
                                          real_weights=self.real_weights, weights=self.weights,
                                          weights_sha256=self.sha256, notes=list(self.notes))


def _heads() -> dict[str, torch.Tensor]:
    path = torchmetrics_heads_file()
    if not path.is_file():
        raise WeightsMissing("lpips", f"torchmetrics' LPIPS heads not found at {path}; reinstall with "
                                      "`pip install --force-reinstall torchmetrics`")
    return load_state_dict("lpips", path, "pip install --force-reinstall torchmetrics")
