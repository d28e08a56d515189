"""Writing artifacts atomically: everything lands in a temp path beside the target and is renamed
into place only when complete, so an error, Ctrl-C or even SIGKILL never leaves a half-written file or folder
at the target (a killed run's temp is named with its pid; the next run's `outputs.check_out` removes it)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import math
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Iterator

from .outputs import is_cleared, resolve, temp_prefix

KILL_ENV = "POCKETSD_KILL_AT"  # test hook: "N" SIGKILLs this process at its N-th kill point
KILL_LOG_ENV = "POCKETSD_KILL_LOG"  # test hook: append every kill point's name to this file
_kill_count = 0


def kill_point(name: str) -> None:
    """A named place where a crash must leave nothing half-written (the kill tests stop the process here).

    Costs one environment lookup when the hooks are unset."""
    global _kill_count
    at, log = os.environ.get(KILL_ENV), os.environ.get(KILL_LOG_ENV)
    if not at and not log:
        return
    _kill_count += 1
    if log:
        with open(log, "a") as fh:
            fh.write(f"{_kill_count} {name}\n")
    if at and at.isdigit() and int(at) == _kill_count:
        os.kill(os.getpid(), signal.SIGKILL)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_dir(target: Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a fresh temp folder beside `target`; on success it replaces `target`.

    An existing `target` is replaced only when it is an empty folder or `outputs.check_out` cleared it (a
    PocketSD artifact of the command's kind, or `--force`): this never deletes a folder nobody vetted."""
    target = resolve(target)
    if target.exists() and overwrite and not is_cleared(target) and not (target.is_dir() and not any(target.iterdir())):
        raise FileExistsError(f"{target} exists and was not cleared for replacement (pocketsd.artifacts.outputs.check_out)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(target), dir=target.parent))
    tmp.chmod(0o755)
    try:
        yield tmp
        kill_point(f"atomic_dir:{target.name}:complete")
        if target.exists() or target.is_symlink():
            if not overwrite:
                raise FileExistsError(target)
            if not _exchange(tmp, target):  # elsewhere: two renames, the old one parked under a pid-tagged name
                old = target.with_name(temp_prefix(target, "old") + "x")
                target.rename(old)
                tmp.rename(target)
                tmp = old
            _remove(tmp)  # now the old artifact
        else:
            tmp.rename(target)
        kill_point(f"atomic_dir:{target.name}:renamed")
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_file(target: Path, mode: str = "wb") -> Iterator:
    """Open a temp file beside `target` for writing; renamed onto `target` when closed cleanly."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(target), dir=target.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_path(target: Path) -> Path:
    """A temp path beside `target` (same suffix, for writers that pick a format from it)."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(target), suffix=target.suffix, dir=target.parent)
    os.close(fd)
    return Path(tmp)


def _finite_json(value):
    """JSON has no NaN or Infinity: non-finite floats are written as null (json.dump would emit `Infinity`)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value


def write_json(path: Path, data: dict) -> None:
    """Valid JSON, atomically (non-finite floats become null)."""
    text = json.dumps(_finite_json(data), indent=2, default=str, allow_nan=False)
    with atomic_file(Path(path), "w") as fh:
        fh.write(text + "\n")


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def folder_bytes(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
