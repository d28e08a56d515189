"""What a finished `pocketsd eval` run shows a person: eval.md (one table, the skips, the settings), the grid of
image pairs (A | B per prompt, worst PSNR first) and a plot of the per-image values.

A metric computed with random-weight networks (the CI path) says so in every place its number appears; a metric
without a network (PSNR, SSIM, adherence) says that it needs none.
"""

from __future__ import annotations

import math
from pathlib import Path

from .results import MetricResult, _fmt, image_name, load_image, results_of

LABELS = {"psnr": "PSNR (A vs B, dB)", "ssim": "SSIM (A vs B)", "lpips": "LPIPS (A vs B)", "fid": "FID",
          "clip_score": "CLIP score", "image_reward": "ImageReward", "adherence": "adherence"}
UNITS_NOTE = {"adherence": "share of images whose colour, shape and background all read back as the prompt asked"}


def _metric(doc: dict, key: str) -> MetricResult:

    return results_of({"metrics": {key: doc["metrics"][key]}})[key]


def _side(key: str) -> str:
    return "B" if key.endswith("_against") else "A"


def _base(key: str) -> str:
    return key[: -len("_against")] if key.endswith("_against") else key


def weights_cell(r: MetricResult) -> str:
    if r.skipped:
        return "—"
    if r.weights is None:
        return "none needed"
    if r.real_weights:
        return f"real ({Path(r.weights).name})"
    return f"**random — not a quality measure** ({r.weights})"


def eval_markdown(doc: dict) -> str:
    a = doc["models"]["model"]
    b = doc["models"].get("against")
    p = doc["prompts"]
    subset = f", subsample seed {p['subsample_seed']}" if p.get("subsample_seed") is not None else ""
    lines = ["# pocketsd eval", "",
             f"- **A** (`--model`): {a['name']} — images in `{a['images']}` ({a['made']} made, {a['reused']} reused)"]
    if b:
        lines.append(f"- **B** (`--against`): {b['name']} — images in `{b['images']}` ({b['made']} made, "
                     f"{b['reused']} reused)")
    lines += [f"- prompts: {p['name']} ({p['format']}, {p['source']}): {p['count']} of {p['total']}{subset}; "
              f"seed per prompt {doc['seed_rule'].replace('seed_base', str(doc['seed_base']))}",
              f"- settings A: {_settings_line(a['settings'])}"]
    if b:
        lines.append(f"- settings B: {_settings_line(b['settings'])}")
    if doc.get("reference_images"):
        lines.append(f"- FID reference images: `{doc['reference_images']['folder']}` — "
                     f"{doc['reference_images']['used']}")
    lines += [f"- {doc['processes']} process(es); metric networks on {doc['metric_device']}", "",
              "| metric | model | mean / value | 95 % interval | n | network weights |",
              "| --- | --- | ---: | --- | ---: | --- |"]
    for key in doc["metrics"]:
        r = _metric(doc, key)
        if r.skipped:
            continue
        interval = f"[{_fmt(r.low)}, {_fmt(r.high)}]" if r.low is not None else "—"
        lines.append(f"| {LABELS.get(_base(key), _base(key))} | {_side(key)} | {_fmt(r.value)} | {interval} | {r.n} | "
                     f"{weights_cell(r)} |")
    intervals = sorted({(_base(k), m.get("interval_method")) for k, m in doc["metrics"].items()
                        if m.get("interval_method")})
    if intervals:
        lines += ["", "Intervals: " + "; ".join(f"{k}: {how}" for k, how in intervals) + "."]
    for key in doc["metrics"]:
        if _base(key) in UNITS_NOTE and not doc["metrics"][key].get("skipped"):
            lines.append(f"{LABELS[_base(key)].capitalize()}: {UNITS_NOTE[_base(key)]}.")
            break
    notes = sorted({f"{k}: {n}" for k, m in doc["metrics"].items() for n in m.get("notes") or []})
    if notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in notes]
    if doc["skipped"]:
        lines += ["", "Skipped (nothing was measured for these; each line says what is missing):"]
        lines += [f"- {s}" for s in doc["skipped"]]
    if any(not m.get("real_weights") and m.get("weights") and not m.get("skipped") for m in doc["metrics"].values()):
        lines += ["", "**Rows marked random ran on random-weight networks to exercise the code; their numbers "
                      "measure nothing.**"]
    t = doc["timings_s"]
    gen = "; ".join(f"{'A' if role == 'model' else 'B'} {g['wall_s']:.1f} s"
                    + (f" ({g['per_image_s']:.2f} s/image)" if g.get("per_image_s") else "")
                    for role, g in t["generate"].items())
    load = doc.get("load_average")
    lines += ["", f"Timings: generate {gen}; score {t['score']:.1f} s; total {t['total']:.1f} s"
              + (f" (load average {load[0]:.2f} at the end)" if load else "") + "."]
    outputs = doc.get("outputs") or {}
    if outputs.get("grid"):
        lines += ["", f"![A | B, worst PSNR first]({outputs['grid']})"]
    if outputs.get("plot"):
        lines += ["", f"![per-image values]({outputs['plot']})"]
    elif outputs.get("plot_skipped"):
        lines += ["", outputs["plot_skipped"] + "."]
    return "\n".join(lines) + "\n"


def _settings_line(settings: dict) -> str:
    shown = {k: v for k, v in settings.items() if k not in ("fingerprint", "path") and v is not None}
    return ", ".join(f"{k} {v}" for k, v in shown.items())


# ---- the grid ----------------------------------------------------------------------------------------------------
def grid_order(doc: dict) -> list[int]:
    """Prompt indices, worst PSNR first (prompt order when there is no PSNR)."""
    psnr = doc["metrics"].get("psnr") or {}
    values = psnr.get("per_item")
    n = len(doc["ids"])
    if not values or psnr.get("skipped"):
        return list(range(n))
    as_float = [float(v) for v in values]
    return sorted(range(n), key=lambda i: (as_float[i], i))


def grid_image(doc: dict, folders: dict[str, Path], plan, path: Path, tile: int = 192, per_row: int = 4) -> None:
    """A | B per prompt (A alone without --against), worst PSNR first, `plan.grid_pairs` pairs, captioned."""
    from PIL import Image, ImageDraw

    from ..artifacts import atomic_file

    order = grid_order(doc)[: plan.grid_pairs]
    psnr = (doc["metrics"].get("psnr") or {}).get("per_item")
    roles = [r for r in ("model", "against") if r in folders]
    caption = 14
    cell_w, cell_h = tile * len(roles), tile + caption
    cols = min(per_row, max(1, len(order)))
    rows = max(1, math.ceil(len(order) / cols))
    sheet = Image.new("RGB", (cols * cell_w + (cols - 1) * 6, rows * cell_h + (rows - 1) * 6), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, i in enumerate(order):
        x, y = (k % cols) * (cell_w + 6), (k // cols) * (cell_h + 6)
        pid, seed = doc["ids"][i], doc["seeds"][i]
        for j, role in enumerate(roles):
            im = load_image(folders[role] / image_name(pid, seed))
            im.thumbnail((tile, tile))
            sheet.paste(im, (x + j * tile, y + caption))
        text = pid if psnr is None else f"{pid}  {_fmt(float(psnr[i]))} dB"
        draw.text((x + 2, y + 1), text[: cell_w // 6], fill=(0, 0, 0))
    with atomic_file(path, "wb") as fh:
        sheet.save(fh, format="PNG")


# ---- the plot ----------------------------------------------------------------------------------------------------
def plot_metrics(doc: dict, path: Path) -> bool:
    """One panel per metric: per-image histograms (A and B overlaid) with mean and interval, or bars with intervals
    for set-level and 0/1 metrics. False if no metric produced a number."""
    groups: dict[str, list[MetricResult]] = {}
    for key in doc["metrics"]:
        r = _metric(doc, key)
        if not r.skipped and r.value is not None:
            groups.setdefault(_base(key), []).append(r)
    if not groups:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..artifacts import atomic_write_path

    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.4), squeeze=False)
    for ax, (base, results) in zip(axes[0], groups.items()):
        random = any(r.weights and not r.real_weights for r in results)
        title = LABELS.get(base, base) + (" — RANDOM WEIGHTS" if random else "")
        if base in ("fid", "adherence") or not all(r.per_item for r in results):
            names = [_side(r.name) for r in results]
            values = [r.value for r in results]
            # max(0, …): a Wilson bound at 0 % or 100 % can sit a rounding error inside the share itself
            err = [[max(0.0, r.value - (r.low if r.low is not None else r.value)) for r in results],
                   [max(0.0, (r.high if r.high is not None else r.value) - r.value) for r in results]]
            ax.bar(names, values, yerr=err, capsize=6, color=["tab:blue", "tab:orange"][: len(results)])
            ax.set_title(title, fontsize=9)
        else:
            for r, colour in zip(results, ("tab:blue", "tab:orange")):
                finite = [v for v in r.per_item if math.isfinite(v)]
                if finite:
                    ax.hist(finite, bins=min(30, max(5, len(finite) // 3)), alpha=0.55, color=colour,
                            label=f"{_side(r.name)}: {_fmt(r.value)}")
                if r.value is not None and math.isfinite(r.value):
                    ax.axvline(r.value, color=colour, lw=1.5)
                if r.low is not None:
                    ax.axvspan(r.low, r.high, color=colour, alpha=0.15)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
            else:  # every value infinite (identical images): nothing to draw
                ax.text(0.5, 0.5, "all values infinite\n(identical images)", ha="center", va="center",
                        transform=ax.transAxes, fontsize=8)
            ax.set_title(title, fontsize=9)
            ax.set_ylabel("images")
        ax.grid(alpha=0.3)
    fig.suptitle(f"pocketsd eval: {doc['models']['model']['name']}"
                 + (f" vs {doc['models']['against']['name']}" if "against" in doc["models"] else "")
                 + f" — {len(doc['ids'])} prompts", fontsize=10)
    fig.tight_layout()
    tmp = atomic_write_path(path)
    try:
        fig.savefig(tmp, dpi=100)
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return True
