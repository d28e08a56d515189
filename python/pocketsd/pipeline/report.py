"""What a generation run measures and writes: stage timings, peak memory, the JSON report, PNG metadata,
the rich progress bar and the closing table.

Peak memory is the high-water mark over the whole run, not a sample at the end: on Linux the kernel's
per-process high-water mark (VmHWM) is reset at the start of the run by writing "5" to /proc/self/clear_refs and
read at the end; elsewhere `getrusage` gives the lifetime peak; on macOS the physical footprint peak
(`task_vm_info.ledger_phys_footprint_peak`, what Xcode/Jetsam count) is read through ctypes because neither
psutil nor the standard library exposes it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..artifacts import atomic_write_path, write_json

MB = 1024 * 1024


# ---- timings --------------------------------------------------------------------------------------
@dataclass
class RunTimer:
    """Accumulates seconds per named stage; denoising steps are kept one by one."""

    stages: dict[str, float] = field(default_factory=dict)
    unet_steps: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - t0

    def add(self, name: str, seconds: float) -> None:
        self.stages[name] = self.stages.get(name, 0.0) + seconds

    def step(self, seconds: float) -> None:
        self.unet_steps.append(seconds)

    def total(self) -> float:
        return time.perf_counter() - self.started

    def as_dict(self) -> dict[str, Any]:
        """The contract's `timings_s` (extra stages such as vae_encode appear only when they ran)."""
        out: dict[str, Any] = {"load": self.stages.get("load", 0.0), "text_encode": self.stages.get("text_encode", 0.0),
                               "unet_steps": list(self.unet_steps), "vae_decode": self.stages.get("vae_decode", 0.0)}
        for name, secs in self.stages.items():
            out.setdefault(name, secs)
        out["total"] = self.total()
        return out


# ---- memory ---------------------------------------------------------------------------------------
_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _vm_hwm_bytes() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _ru_maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


class _TaskVmInfo(ctypes.Structure):
    # mach/task_info.h `struct task_vm_info` up to rev 3 (ledger_phys_footprint_peak); the buffer passed to
    # task_info is larger so newer kernels can fill later revisions without overrunning.
    _fields_ = [("virtual_size", ctypes.c_uint64), ("region_count", ctypes.c_int32), ("page_size", ctypes.c_int32)] + [
        (name, ctypes.c_uint64) for name in (
            "resident_size", "resident_size_peak", "device", "device_peak", "internal", "internal_peak", "external",
            "external_peak", "reusable", "reusable_peak", "purgeable_volatile_pmap", "purgeable_volatile_resident",
            "purgeable_volatile_virtual", "compressed", "compressed_peak", "compressed_lifetime", "phys_footprint",
            "min_address", "max_address", "ledger_phys_footprint_peak")
    ] + [("_reserved", ctypes.c_uint64 * 32)]


def macos_footprint_bytes() -> tuple[int, int] | None:
    """(current, peak) physical footprint on macOS, or None elsewhere / on failure. Best effort."""
    if sys.platform != "darwin":
        return None
    try:
        libc = ctypes.CDLL("/usr/lib/libSystem.B.dylib")
        task = ctypes.c_uint.in_dll(libc, "mach_task_self_")
        info = _TaskVmInfo()
        count = ctypes.c_uint(ctypes.sizeof(_TaskVmInfo) // 4)  # in natural_t units
        TASK_VM_INFO = 22
        libc.task_info.argtypes = [ctypes.c_uint, ctypes.c_int, ctypes.POINTER(_TaskVmInfo), ctypes.POINTER(ctypes.c_uint)]
        libc.task_info.restype = ctypes.c_int
        kr = libc.task_info(task.value, TASK_VM_INFO, ctypes.byref(info), ctypes.byref(count))
        if kr != 0:
            return None
        filled = count.value * 4  # the kernel reports how much of the struct (its revision) it filled
        if filled < _TaskVmInfo.phys_footprint.offset + 8:
            return None
        has_peak = filled >= _TaskVmInfo.ledger_phys_footprint_peak.offset + 8  # revision 3 and later
        peak = info.ledger_phys_footprint_peak if has_peak else info.phys_footprint
        return int(info.phys_footprint), int(max(peak, info.phys_footprint))
    except (OSError, ValueError, AttributeError):
        return None


class PeakMemory:
    """Peak memory from `start()` to `read()`: resident memory always; accelerator memory where there is one
    (CUDA: the allocator's own peak; Apple MPS: the driver's allocation, sampled by `sample()` every step)."""

    def __init__(self, device: str = "cpu") -> None:
        self.method = "getrusage (process lifetime)"
        self.device = device
        self.start()

    def start(self) -> None:
        self.mps_peak = None
        if self.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
        try:
            _CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS (Linux ≥ 4.0)
            if _vm_hwm_bytes() is not None:
                self.method = "VmHWM reset via /proc/self/clear_refs"
                return
        except OSError:
            pass
        self.method = "getrusage (process lifetime)"

    def sample(self) -> None:
        """Called between steps: MPS has no peak counter of its own."""
        if self.device == "mps":
            import torch

            now = torch.mps.driver_allocated_memory()
            self.mps_peak = max(self.mps_peak or 0, now)

    def peak_rss_bytes(self) -> int:
        if self.method.startswith("VmHWM"):
            hwm = _vm_hwm_bytes()
            if hwm is not None:
                return hwm
        try:
            peak = _ru_maxrss_bytes()
        except (OSError, ValueError):
            peak = 0
        try:  # never report less than what is resident right now
            import psutil

            peak = max(peak, psutil.Process().memory_info().rss)
        except Exception:  # psutil missing or sandboxed: the kernel figure stands
            pass
        return peak

    def read(self) -> dict[str, float | None]:
        foot = macos_footprint_bytes()
        cuda = None
        if self.device == "cuda":
            import torch

            cuda = torch.cuda.max_memory_allocated() / MB
        self.sample()
        return {"peak_rss_mb": round(self.peak_rss_bytes() / MB, 1),
                "peak_footprint_mb": round(foot[1] / MB, 1) if foot else None,
                "cuda_peak_mb": round(cuda, 1) if cuda is not None else None,
                "mps_peak_mb": round(self.mps_peak / MB, 1) if self.mps_peak is not None else None}


# ---- outputs --------------------------------------------------------------------------------------
PNG_TEXT_KEYS = ("prompt", "expanded_prompt", "negative_prompt", "seed", "steps", "guidance", "scheduler", "model")


def save_png(image, path: Path, metadata: dict[str, Any]) -> None:
    """Write `image` (PIL) to `path` atomically with text chunks for the generation parameters."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key in PNG_TEXT_KEYS:
        value = metadata.get(key)
        if value is not None:
            info.add_text(f"pocketsd:{key}" if key != "prompt" else "prompt", str(value))
    info.add_text("Software", f"pocketsd {metadata.get('pocketsd_version', '')}".strip())
    tmp = atomic_write_path(Path(path))
    try:
        image.save(tmp, format="PNG", pnginfo=info)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_png_metadata(path: Path) -> dict[str, str]:
    from PIL import Image

    with Image.open(path) as im:
        return {k.removeprefix("pocketsd:"): v for k, v in im.text.items()}


def write_report(path: Path, report: dict[str, Any]) -> None:
    write_json(Path(path), report)


# ---- console --------------------------------------------------------------------------------------
def step_progress(total: int, console=None, description: str = "denoising"):
    """A rich progress bar over denoising steps; returns (progress, advance_fn). Use as a context manager."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, transient=True)
    task = progress.add_task(description, total=total)

    def advance(i: int, steps: int, _seconds: float = 0.0) -> None:  # the loop's on_step(i, total, seconds)
        progress.update(task, total=steps, completed=i + 1)

    return progress, advance


def _fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def summary_table(report: dict[str, Any]):
    """The closing table (rich): load, text encode, per-step mean/min/max, VAE decode, total, memory, model size."""
    from rich.table import Table

    t = report["timings_s"]
    steps = t.get("unet_steps") or []
    table = Table(title=f"pocketsd generate — {Path(report['output']).name}", show_header=True, header_style="bold")
    table.add_column("stage")
    table.add_column("value", justify="right")
    table.add_row("load", _fmt_s(t.get("load", 0.0)))
    for name in sorted(k for k in t if k not in ("load", "text_encode", "unet_steps", "vae_decode", "total")):
        table.add_row(name.replace("_", " "), _fmt_s(t[name]))
    table.add_row("text encode", _fmt_s(t.get("text_encode", 0.0)))
    if steps:
        table.add_row(f"UNet step ×{len(steps)} (mean / min / max)",
                      f"{_fmt_s(sum(steps) / len(steps))} / {_fmt_s(min(steps))} / {_fmt_s(max(steps))}")
    table.add_row("VAE decode", _fmt_s(t.get("vae_decode", 0.0)))
    table.add_row("total", _fmt_s(t.get("total", 0.0)))
    mem = report["memory"]
    table.add_row("peak RSS", f"{mem['peak_rss_mb']:.0f} MB")
    if mem.get("peak_footprint_mb") is not None:
        table.add_row("peak physical footprint", f"{mem['peak_footprint_mb']:.0f} MB")
    model = report["model"]
    if model.get("unet_bytes"):
        table.add_row("UNet bytes", f"{model['unet_bytes'] / MB:.2f} MB")
    if model.get("bits_per_weight") is not None:
        table.add_row("bits per weight (UNet)", f"{model['bits_per_weight']:.2f}")
    return table
