"""FID through torchmetrics' `FrechetInceptionDistance`, with the FID Inception-v3 defined here.

Why the network is written here: torchmetrics' built-in extractor (`feature=2048`) is torch-fidelity's
`FeatureExtractorInceptionV3`, and torch-fidelity requires torchvision, which cannot be installed next to this
torch. torchmetrics accepts any `nn.Module` as `feature`, so this module is the FID Inception — the 2015 TensorFlow
graph's Inception-v3 as pytorch-fid and torch-fidelity port it (TF's average pools that ignore padding, the max
pool in the last block, 1008 classes) — with the same parameter names, so their published weight file
(`pt_inception-2015-12-05-6726825d.pth`) loads key for key. Preprocessing matches torchmetrics' default for
`feature=2048`: uint8 images, bilinear resize to 299×299 with antialiasing, then (x − 128) / 128.

The reported FID is torchmetrics' (means, covariances, the trace of the matrix square root through
`torch.linalg.eigvals` of the 2048×2048 product), fed the features through an identity extractor, so the network
runs once per image set. Bootstrap resamples need the same number hundreds of times, and a general 2048×2048
eigendecomposition takes seconds to tens of seconds on a CPU; `frechet_distance` computes the identical quantity
exactly from symmetric problems — tr √(Σ₁Σ₂) is the nuclear norm of X₁X₂ᵀ/√((n₁−1)(n₂−1)) for centred features
X (an n₁×n₂ SVD) or, when both sets outnumber the features, Σ eigvalsh(√Σ₁ Σ₂ √Σ₁)^½ — and a test checks it
against torchmetrics' value.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .results import MetricResult
from .stats import bootstrap_interval, bootstrap_method
from .weights import (ENV_FID_INCEPTION, INCEPTION_FILES, WeightsMissing, fid_download, load_state_dict,
                      locate_file, sha256_of, torch_hub_checkpoints)

FEATURES = 2048
INPUT_SIZE = 299


class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_tf(x):
    # TensorFlow's 3×3 average pool leaves the zero padding out of the mean.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool_tf(x)),
        ], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b7 = x
        for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """`max_pool=False`: Mixed_7b (TF average pool); `True`: Mixed_7c, where the TF graph has a max pool."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool_tf(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d),
            self.branch_pool(pooled),
        ], 1)


class FidInceptionV3(nn.Module):
    """uint8 (N, 3, H, W) → (N, 2048) pool features. `num_features` tells torchmetrics the width without a dummy
    forward pass."""

    num_features = FEATURES

    def __init__(self, antialias: bool = True):
        super().__init__()
        self.antialias = antialias
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)  # in the weight file; FID reads the pool features before it

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError("FID's Inception takes uint8 images (N, 3, H, W)")
        x = images.to(self.Conv2d_1a_3x3.conv.weight.dtype)
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
                          antialias=self.antialias)
        x = (x - 128) / 128
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1).float()


class _Precomputed(nn.Module):
    """Identity "extractor": torchmetrics' FID over features that were already extracted."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features):
        return features


def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """torchmetrics' FID between two (N, D) feature sets."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = real.double(), fake.double()
    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]))
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """The same FID as `fid_from_features`, exactly, from symmetric problems only (fast enough to bootstrap)."""
    real, fake = real.double(), fake.double()
    n1, n2, d = real.shape[0], fake.shape[0], real.shape[1]
    mu1, mu2 = real.mean(0), fake.mean(0)
    x1, x2 = real - mu1, fake - mu2
    c1, c2 = n1 - 1, n2 - 1
    traces = (x1 * x1).sum() / c1 + (x2 * x2).sum() / c2
    if min(n1, n2) <= d:  # nonzero eig(Σ₁Σ₂) = σ(X₁X₂ᵀ)² / (c₁c₂)
        cross = torch.linalg.svdvals(x1 @ x2.T).sum() / np.sqrt(c1 * c2)
    else:  # eig(Σ₁Σ₂) = eig(√Σ₁ Σ₂ √Σ₁), a symmetric PSD matrix
        w, v = torch.linalg.eigh(x1.T @ x1 / c1)
        root = (v * w.clamp(min=0).sqrt()) @ v.T
        cross = torch.linalg.eigvalsh(root @ (x2.T @ x2 / c2) @ root).clamp(min=0).sqrt().sum()
    diff = mu1 - mu2
    return float(diff @ diff + traces - 2 * cross)


class FidScorer:
    name = "fid"

    def __init__(self, model: FidInceptionV3, real_weights: bool, weights: str, sha256: str | None, device="cpu"):
        self.device = torch.device(device)
        self.model = model.eval().requires_grad_(False).to(self.device)
        self.real_weights = real_weights
        self.weights = weights
        self.sha256 = sha256
        self.notes: list[str] = []

    @classmethod
    def load(cls, inception: str | Path | None = None, device="cpu", verify_hash: bool = True,
             antialias: bool = True) -> "FidScorer":
        """Real weights (argument, $POCKETSD_FID_INCEPTION, torch hub cache). Raises WeightsMissing."""
        download = fid_download()
        found = locate_file(cls.name, "FID Inception weights", inception, ENV_FID_INCEPTION,
                            [torch_hub_checkpoints() / name for name in INCEPTION_FILES], download)
        # The file name's suffix follows torch hub's sha256-prefix convention, but pytorch-fid and torch-fidelity
        # download without check_hash, so a mismatch is recorded, not refused; the key/shape check below decides.
        digest, notes = (sha256_of(found.path), []) if verify_hash else (None, [])
        if digest is not None and not digest.startswith("6726825d"):
            notes.append(f"sha256 {digest[:12]}… does not start with 6726825d, the suffix of the published name")
        state = load_state_dict(cls.name, found.path, download)
        model = FidInceptionV3(antialias=antialias)
        wanted = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
        missing = sorted(wanted - set(state))
        if missing:
            raise WeightsMissing(cls.name, f"{found.path} is not the FID Inception weight file (no {missing[0]}); "
                                           f"download with `{download}`")
        bad = [k for k in sorted(wanted) if tuple(state[k].shape) != tuple(model.state_dict()[k].shape)]
        if bad:
            raise WeightsMissing(cls.name, f"{found.path}: {bad[0]} has shape {tuple(state[bad[0]].shape)}, the FID "
                                           f"Inception's is {tuple(model.state_dict()[bad[0]].shape)}; download "
                                           f"with `{download}`")
        model.load_state_dict({k: state[k] for k in wanted}, strict=False)
        scorer = cls(model, True, str(found.path), digest, device)
        scorer.notes = notes
        return scorer

    @classmethod
    def random(cls, seed: int = 0, device="cpu") -> "FidScorer":
        """Random weights (He-normal convs, so activations neither vanish nor explode through 94 layers): runs the
        code path, measures nothing; results carry real_weights=False."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = FidInceptionV3()
            for m in model.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        return cls(model, False, f"random Inception-v3 (seed {seed})", None, device)

    def features(self, images, batch_size: int = 16) -> torch.Tensor:
        """(N, 2048) float64 features of PIL images / arrays / tensors."""
        from .metrics import as_uint8_images, image_batches

        parts = [self.model(as_uint8_images(batch).to(self.device)).double().cpu()
                 for batch in image_batches(images, batch_size)]
        return torch.cat(parts) if parts else torch.zeros(0, self.model.num_features, dtype=torch.float64)

    def score_features(self, real: torch.Tensor, fake: torch.Tensor, bootstrap: int = 0,
                       seed: int = 0) -> MetricResult:
        """FID of two feature sets; with `bootstrap` > 1, a percentile-bootstrap 95 % interval (both sets
        resampled, the same indices for each when they are paired by prompt and have equal size)."""
        if real.shape[0] < 2 or fake.shape[0] < 2:
            return MetricResult.skip(self.name, f"skipped fid: needs at least 2 images per set, got "
                                                f"{real.shape[0]} and {fake.shape[0]}")
        value = fid_from_features(real, fake)
        result = MetricResult(self.name, value=value, n=int(fake.shape[0]), higher_is_better=False,
                              real_weights=self.real_weights, weights=self.weights, weights_sha256=self.sha256,
                              notes=list(self.notes))
        if real.shape[0] < FEATURES:
            result.notes.append(f"{real.shape[0]} images < {FEATURES} features: the covariances are rank-deficient "
                                "and FID is biased upward; compare FIDs only at equal n")
        if bootstrap > 1:
            paired = real.shape[0] == fake.shape[0]

            def stat(idx: np.ndarray) -> float:
                other = idx if paired else np.random.default_rng(int(idx[0])).integers(0, fake.shape[0],
                                                                                       fake.shape[0])
                return frechet_distance(real[idx], fake[other])

            result.low, result.high = bootstrap_interval(stat, real.shape[0], resamples=bootstrap, seed=seed)
            result.interval_method = bootstrap_method(bootstrap)
        else:
            result.notes.append("no interval: FID is a set statistic; ask for a bootstrap (fid_bootstrap > 1)")
        return result

    def score(self, reference, test, bootstrap: int = 0, seed: int = 0) -> MetricResult:
        return self.score_features(self.features(reference), self.features(test), bootstrap, seed)
