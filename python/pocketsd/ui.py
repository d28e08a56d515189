"""The commands' face (top floor): rich progress bars fed by the stages' progress callbacks, and closing tables.

Stages never draw anything themselves; they call back with (task, advance, total, detail) or a package name.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .artifacts.atomic import kill_point  # the kill tests' hook: stages report progress here


@contextlib.contextmanager
def task_progress(enabled: bool = True) -> Iterator:
    """A callback(task, advance, total, detail) drawing one bar per task name; a no-op when disabled."""
    if not enabled:
        yield lambda task, n, total, detail="": kill_point(f"progress:{task}")
        return
    with Progress(TextColumn("[bold]{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.fields[detail]}"), console=Console(stderr=True)) as bar:
        tasks: dict[str, int] = {}

        def advance(task: str, n: int, total: int, detail: str = "") -> None:
            kill_point(f"progress:{task}")
            if task not in tasks:
                tasks[task] = bar.add_task(task, total=total, detail="")
            bar.update(tasks[task], advance=n, detail=detail[-48:])

        yield advance


def convert_with_progress(opts, quiet: bool = False) -> dict:
    """`pocketsd convert` with a bar over packages, then the bundle's sizes."""
    from .convert.run import convert_bundle

    console = Console(stderr=True, quiet=quiet)
    total = 4 + 1 + len(opts.controlnets)  # text encoders, VAE decoder/encoder, the UNet (chunks or not), ControlNets
    with Progress(TextColumn("[bold]convert"), BarColumn(), TextColumn("{task.completed}/{task.total} {task.description}"),
                  TimeElapsedColumn(), console=console, transient=True, disable=quiet) as bar:
        task = bar.add_task("", total=total)
        def log(msg: str) -> None:
            kill_point(f"convert:{msg.split(':')[0]}")
            if not quiet:
                bar.console.print(msg)

        def progress(name: str) -> None:
            kill_point(f"convert:done:{name}")
            bar.update(task, advance=1, description=name)

        manifest = convert_bundle(opts, log=log, progress=progress)
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
