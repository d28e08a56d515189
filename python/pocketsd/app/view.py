"""The numbers under each image, read from the run's report (never measured twice): total time, the per-stage
table, peak memory (RSS; CUDA peak VRAM on CUDA; MPS allocation on a Mac), model bytes and bits per weight, and the
PSNR against fp16; plus the step-time chart's data and the page's message box.

Each row carries `data-field` and the exact `data-value` beside the rounded text, so the browser tests can read
both and hold them to the downloaded report.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any

MB = 2**20


@dataclass(frozen=True)
class Row:
    field: str
    label: str
    value: float
    text: str


def _fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def stats_rows(report: dict[str, Any], psnr_db: float | None = None) -> list[Row]:
    t, mem, model = report["timings_s"], report["memory"], report["model"]
    steps = t.get("unet_steps") or []
    rows = [Row("total_s", "total", t["total"], _fmt_s(t["total"])),
            Row("load_s", "load", t.get("load", 0.0), _fmt_s(t.get("load", 0.0))),
            Row("text_encode_s", "text encode", t.get("text_encode", 0.0), _fmt_s(t.get("text_encode", 0.0)))]
    if "vae_encode" in t:
        rows.append(Row("vae_encode_s", "VAE encode", t["vae_encode"], _fmt_s(t["vae_encode"])))
    if steps:
        mean = sum(steps) / len(steps)
        rows.append(Row("step_mean_s", f"step mean (×{len(steps)})", mean, _fmt_s(mean)))
    rows.append(Row("vae_decode_s", "decode", t.get("vae_decode", 0.0), _fmt_s(t.get("vae_decode", 0.0))))
    rows.append(Row("peak_rss_mb", "peak RSS", mem["peak_rss_mb"], f"{mem['peak_rss_mb']:.0f} MB"))
    for key, label in (("cuda_peak_mb", "CUDA peak VRAM"), ("mps_peak_mb", "MPS allocated"),
                       ("peak_footprint_mb", "peak footprint")):
        if mem.get(key) is not None:
            rows.append(Row(key, label, mem[key], f"{mem[key]:.0f} MB"))
    if model.get("unet_bytes"):
        mb = model["unet_bytes"] / MB
        rows.append(Row("unet_mb", "UNet size", mb, f"{mb:.2f} MB"))
    if model.get("bits_per_weight") is not None:
        rows.append(Row("bits_per_weight", "bits / weight", model["bits_per_weight"], f"{model['bits_per_weight']:.2f}"))
    if psnr_db is not None:
        text = "identical" if math.isinf(psnr_db) else f"{psnr_db:.1f} dB"
        rows.append(Row("psnr_db", "PSNR vs fp16", psnr_db, text))
    return rows


def stats_html(report: dict[str, Any], psnr_db: float | None = None) -> str:
    body = "".join(
        f'<tr data-field="{r.field}"><th>{html.escape(r.label)}</th>'
        f'<td data-value="{r.value!r}">{html.escape(r.text)}</td></tr>' for r in stats_rows(report, psnr_db))
    return f'<table class="psd-stats">{body}</table>'


def step_points(report: dict[str, Any]) -> list[tuple[int, float]]:
    """(step number, milliseconds) for the chart."""
    return [(i + 1, s * 1000.0) for i, s in enumerate(report["timings_s"].get("unet_steps") or [])]


def step_frame(report: dict[str, Any], label: str):
    import pandas as pd  # gradio's plots take data frames (pandas comes with gradio)

    points = step_points(report)
    return pd.DataFrame({"step": [p[0] for p in points], "ms": [p[1] for p in points],
                         "model": [label] * len(points)})


def title_html(label: str, report: dict[str, Any]) -> str:
    loras = ", ".join(f"{r.get('path', '').rsplit('/', 1)[-1]} ×{r.get('scale', 1):g}" for r in report.get("loras") or [])
    extra = f" · LoRA {html.escape(loras)}" if loras else ""
    return f'<h3 class="psd-title">{html.escape(label)}<small> · seed {report["seed"]}{extra}</small></h3>'


def message_html(*, error: str | None = None, warnings: list[str] = (), info: str | None = None) -> str:
    parts = []
    if error:
        parts.append(f'<div class="psd-error" role="alert">⚠ {html.escape(error)}</div>')
    parts += [f'<div class="psd-warning">{html.escape(w)}</div>' for w in warnings]
    if info:
        parts.append(f'<div class="psd-info">{html.escape(info)}</div>')
    return "".join(parts)
