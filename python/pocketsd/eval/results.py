"""The record every metric returns: a value with its interval, or a skip that says why; and how a run's images
and eval.json are named and read back (shared by `protocol`, which writes them, and `report`, which shows them).

A record always says whether the metric ran on real weights. Numbers from random-weight networks (the CI path)
carry `real_weights: false` and must never be read as a quality measure.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .stats import Interval


@dataclass
class MetricResult:
    name: str
    value: float | None = None  # the mean of per-image values, or the set-level value (FID)
    low: float | None = None  # 95 % interval
    high: float | None = None
    interval_method: str | None = None
    n: int = 0  # images (pairs for paired metrics)
    per_item: list[float] | None = None  # per image, in input order (None for set-level metrics)
    higher_is_better: bool | None = None
    real_weights: bool = False  # computed with the published weights (False: random weights, or no network)
    weights: str | None = None  # where the weights came from (path or hub id)
    weights_sha256: str | None = None
    skipped: str | None = None  # one line: why it did not run
    notes: list[str] = field(default_factory=list)

    @classmethod
    def skip(cls, name: str, message: str) -> "MetricResult":
        return cls(name=name, skipped=message)

    @classmethod
    def from_interval(cls, name: str, interval: Interval, per_item=None, **kwargs) -> "MetricResult":
        notes = list(kwargs.pop("notes", []))
        if interval.note:
            notes.append(interval.note)
        return cls(name=name, value=interval.mean, low=interval.low, high=interval.high,
                   interval_method=interval.method, n=interval.n,
                   per_item=None if per_item is None else [float(v) for v in per_item], notes=notes, **kwargs)

    @property
    def ok(self) -> bool:
        return self.skipped is None

    def line(self) -> str:
        """One human line: `lpips 0.1234 [0.1100, 0.1368] n=64 (random weights: not a quality measure)`."""
        if self.skipped:
            return self.skipped
        text = f"{self.name} {_fmt(self.value)}"
        if self.low is not None and self.high is not None:
            text += f" [{_fmt(self.low)}, {_fmt(self.high)}]"
        text += f" n={self.n}"
        if not self.real_weights and self.weights is not None:
            text += " (random weights: not a quality measure)"
        return text

    def to_dict(self, per_item: bool = True) -> dict:
        """JSON-safe: non-finite floats become the strings "inf", "-inf", "nan"."""
        out = asdict(self)
        if not per_item:
            out.pop("per_item")
        return _json_safe(out)


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


# ---- a run's files -------------------------------------------------------------------------------
def image_name(prompt_id: str, seed: int) -> str:
    """`<id>_s<seed>.png`; ids with characters a file name cannot carry are cleaned and given a short hash, so two
    ids never share a file."""
    safe = re.sub(r"[^A-Za-z0-9.-]+", "_", prompt_id)[:80]
    if safe != prompt_id:
        safe += "~" + hashlib.sha256(prompt_id.encode("utf-8")).hexdigest()[:8]
    return f"{safe}_s{seed}.png"


def load_image(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def results_of(doc: dict) -> dict[str, MetricResult]:
    """eval.json's metrics back as MetricResult records (for callers that read a finished run)."""
    out = {}
    for key, d in doc["metrics"].items():
        d = dict(d)
        for f in ("value", "low", "high"):
            if isinstance(d.get(f), str):
                d[f] = float(d[f])
        if d.get("per_item"):
            d["per_item"] = [float(v) for v in d["per_item"]]
        out[key] = MetricResult(**d)
    return out
