"""What a command's `--out` may replace — the one guard every writing command calls before any work.

Rule (shared by compress, lora merge, convert, generate and lora train): `--out` may be replaced (or, for a
Core ML bundle, written into) only when it is missing, an empty folder, or an artifact of the same kind that
PocketSD wrote — its `pocketsd.json` (folders), its PNG text chunks or its report's fields (files) say so.
Anything else is refused in one line before any work, unless the user passes `--force`. Whatever `--force`
says, an `--out` that equals or lies inside an input (`--model`, a LoRA, an image…), or holds one, is refused:
writing it would destroy what is being read. The guard also checks that the folder the output lands in can
be written, and removes temp folders a killed run left beside `--out` (`clean_stale_temps`).

`atomic.atomic_dir` replaces an existing folder only when this guard cleared it (`is_cleared`), so no code
path can rmtree a user's folder by accident.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from ..errors import BadInput
from .manifest import COMPRESSED, COREML, MANIFEST

IMAGE, REPORT, LORA, FILE = "image", "report", "lora", "file"  # file kinds (COMPRESSED and COREML are folders)
FOLDER_KINDS = (COMPRESSED, COREML)
_NAMES = {COMPRESSED: "compressed model folder", COREML: "Core ML bundle", IMAGE: "PNG image",
          REPORT: "JSON report", LORA: "LoRA file", FILE: "file"}
LORA_MARKER = "pocketsd_version"  # safetensors metadata key a LoRA written by `pocketsd lora train` carries
_CLEARED: set[Path] = set()  # existing targets this process's guard accepted (atomic_dir may replace them)


def resolve(path: str | Path) -> Path:
    """An absolute, normalised path: `.`, `..`, `~` and symlinks resolved, so `--out .` has a real name."""
    return Path(os.path.expanduser(str(path))).resolve()


def is_cleared(path: Path) -> bool:
    """Whether `path` (or a folder holding it) was cleared by `check_out` in this process."""
    path = resolve(path)
    return any(p == path or p in path.parents for p in _CLEARED)


def clear_for_replacement(path: Path) -> Path:
    """For a tool that owns its output by construction (the reference-model trainers): mark it replaceable."""
    target = resolve(path)
    _CLEARED.add(target)
    return target


def _overlap(target: Path, inputs: Iterable[tuple[str, str | Path | None]], flag: str) -> None:
    for name, value in inputs:
        if value is None or str(value) == "":
            continue
        src = resolve(value)
        if target == src:
            raise BadInput(f"{flag} {target} is the same path as {name}; writing it would destroy the input — "
                           f"give {flag} a new path")
        if src in target.parents:
            raise BadInput(f"{flag} {target} lies inside {name} {src}; write outside the input (e.g. beside it)")
        if target in src.parents:
            raise BadInput(f"{flag} {target} holds {name} {src}; replacing it would destroy the input — give {flag} "
                           "a path that does not contain it")


def _writable_parent(target: Path, flag: str, make_parents: bool, probe: bool = True) -> None:
    parent = target.parent
    if parent == target:
        raise BadInput(f"{flag} {target} is the filesystem root; give a folder or file below it")
    existing = parent
    if not make_parents and not parent.is_dir():
        raise BadInput(f"{flag} {target}: folder {parent} does not exist (create it first)")
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise BadInput(f"{flag} {target}: {existing} is a file, not a folder")
    if not probe:
        return
    try:  # a real probe: os.access says yes to root on read-only mounts and sysfs
        fd, probe = tempfile.mkstemp(prefix=".pocketsd-write-test-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise BadInput(f"{flag} {target}: folder {existing} is not writable ({exc.strerror or type(exc).__name__}); "
                       "check its permissions or pick another folder") from None


def _manifest_kind(folder: Path) -> str | None:
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data.get("kind") if isinstance(data, dict) else None


def _looks_like_partial_bundle(folder: Path) -> bool:
    """A bundle a killed `convert` left before its first manifest: only Resources/ with our files in it."""
    top = {p.name for p in folder.iterdir()}
    if not top <= {"Resources", MANIFEST} or "Resources" not in top:
        return False
    ours = {"vocab.json", "merges.txt"}
    return all(p.name in ours or p.suffix in (".mlpackage", ".mlmodelc") or ".tmp-" in p.name or p.name == "controlnet"
               for p in (folder / "Resources").iterdir())


def written_by_pocketsd(path: Path, kind: str) -> bool:
    """Whether an existing `path` is an artifact of `kind` that PocketSD wrote (so it may be replaced)."""
    path = Path(path)
    if kind in FOLDER_KINDS:
        if not path.is_dir():
            return False
        if not any(path.iterdir()):
            return True  # an empty folder holds nothing to lose
        if _manifest_kind(path) == kind:
            return True
        return kind == COREML and _looks_like_partial_bundle(path)
    if not path.is_file():
        return False
    if kind == IMAGE:
        try:
            from PIL import Image

            with Image.open(path) as im:
                return im.format == "PNG" and str(im.text.get("Software", "")).startswith("pocketsd")
        except Exception:  # not an image at all (PIL raises several types): not ours
            return False
    if kind == REPORT:
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False
        return isinstance(data, dict) and "pocketsd_version" in data and "seed" in data
    if kind == LORA:
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                return LORA_MARKER in (fh.metadata() or {})
        except Exception:  # not a safetensors file at all (safetensors raises its own types): not ours
            return False
    return False


def _sample(folder: Path) -> str:
    names = sorted(p.name for p in folder.iterdir())
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def check_out(out: str | Path, kind: str, *, inputs: Iterable[tuple[str, str | Path | None]] = (),
              force: bool = False, command: str = "pocketsd", flag: str = "--out", probe: bool = True) -> Path:
    """Check `out` for a command writing a `kind` artifact; returns it resolved. Raises BadInput (one line).

    inputs: (name, path) pairs of everything the command reads (`("--model", folder)`, `("--lora", file)`…).
    probe: create and delete a file where the output will land to prove it can be written (once per folder).
    """
    if out is None or str(out).strip() == "":
        raise BadInput(f"{flag} is empty; give a path")
    target = resolve(out)
    _overlap(target, inputs, flag)
    folder_kind = kind in FOLDER_KINDS
    _writable_parent(target, flag, make_parents=folder_kind, probe=probe)
    clean_stale_temps(target)
    if not target.exists():
        return target
    what = _NAMES[kind]
    if folder_kind and not target.is_dir():
        if not force:
            raise BadInput(f"{flag} {out} is an existing file, not a {what}; {command} writes a folder there — give "
                           f"another path (or --force to replace the file)")
    elif not folder_kind and target.is_dir():
        raise BadInput(f"{flag} {out} is a folder; give a file name")
    elif not written_by_pocketsd(target, kind):
        if not force:
            if folder_kind:
                does, do = ("writes into", "write into") if kind == COREML else ("replaces", "replace")
                other = _manifest_kind(target)
                if other in FOLDER_KINDS:  # ours, but another kind: say so (it is not "files PocketSD did not write")
                    raise BadInput(f"{flag} {out} is a {_NAMES[other]} PocketSD wrote, not a {what}; {command} {does} "
                                   f"the whole folder — give a new or empty folder, or --force to {do} it")
                raise BadInput(f"{flag} {out} already holds files PocketSD did not write ({_sample(target)}); {command} "
                               f"{does} the whole folder — give a new or empty folder, or --force to {do} it")
            raise BadInput(f"{flag} {out} already exists and is not a {what} PocketSD wrote; give a new name, or --force "
                           "to overwrite it")
    _CLEARED.add(target)
    return target


def check_distinct(flag_a: str, a: Path | None, flag_b: str, b: Path | None) -> None:
    """Two outputs of one command must not be the same file (`--out x.png --report x.png`)."""
    if a is not None and b is not None and resolve(a) == resolve(b):
        raise BadInput(f"{flag_b} {b} is the same file as {flag_a}; give each its own name")


# ---- temp leftovers of killed runs --------------------------------------------------------------------
def temp_prefix(target: Path, tag: str = "tmp") -> str:
    """`.NAME.tmp-PID-` — the pid tells a later run whether the writer is still alive."""
    return f".{Path(target).name}.{tag}-{os.getpid()}-"


def _pid_of(name: str, base: str) -> int | None:
    """The pid in `.BASE.tmp-PID-xxxx` / `.BASE.old-PID`; None for names without one (older versions)."""
    for tag in (".tmp-", ".old-"):
        head = f".{base}{tag}"
        if name.startswith(head):
            digits = name[len(head):].split("-", 1)[0]
            return int(digits) if digits.isdigit() else None
    return None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def clean_stale_temps(target: Path) -> list[Path]:
    """Remove `.NAME.tmp-*` / `.NAME.old-*` beside `target` left by runs that are no longer alive."""
    target = resolve(target)
    parent = target.parent
    if not parent.is_dir():
        return []
    removed = []
    for pattern in (f".{target.name}.tmp-*", f".{target.name}.old-*"):
        for stale in parent.glob(pattern):
            pid = _pid_of(stale.name, target.name)
            if pid is not None and _alive(pid):
                continue
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed
