"""The command's face: a rich progress bar over components, then the bundle's sizes."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .bundle import ConvertOptions


def convert_with_progress(opts: ConvertOptions, quiet: bool = False) -> dict:
    from .run import convert_bundle

    console = Console(stderr=True, quiet=quiet)
    n_unet = 2 if opts.chunk_unet else 1
    total = 4 + 1  # text encoders, VAE decoder/encoder, then the UNet (one step, chunks or not)
    del n_unet
    with Progress(TextColumn("[bold]convert"), BarColumn(), TextColumn("{task.completed}/{task.total} {task.description}"),
                  TimeElapsedColumn(), console=console, transient=True, disable=quiet) as bar:
        task = bar.add_task("", total=total)
        manifest = convert_bundle(opts, log=lambda msg: bar.console.print(msg) if not quiet else None,
                                  progress=lambda name: bar.update(task, advance=1, description=name))
    table = Table(title=f"Core ML bundle {opts.out}")
    for col in ("component", "precision", "MB", "convert s", "peak RSS MB", "compressed weights"):
        table.add_column(col)
    for name, c in manifest["components"].items():
        cx = ", ".join(f"{k.replace('constexpr_', '')} {v}" for f in c["census"]["functions"].values()
                       for k, v in f["constexpr"].items()) or "-"
        table.add_row(name, c["compute_precision"], f"{c['bytes'] / 2**20:.2f}", str(c["convert_seconds"]),
                      str(c["peak_rss_mb"]), cx)
    out = Console(quiet=quiet)
    out.print(table)
    out.print(f"total {manifest['total_bytes'] / 2**20:.2f} MB")
    if not manifest.get("compiled"):
        out.print(manifest["compile_hint"])
    return manifest
