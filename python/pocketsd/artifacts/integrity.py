"""sha256 of every artifact file, recorded when written and checked when read.

Hashing is streamed in 4 MiB blocks so a multi-gigabyte weight file is never held in memory twice.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

from ..errors import BadInput

_BLOCK = 4 << 20


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def folder_files(root: Path) -> list[Path]:
    """Every regular file under `root` (or `root` itself), in a fixed order, skipping temp leftovers."""
    root = Path(root)
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and ".tmp-" not in p.name)


def tree_sha256(path: Path) -> str:
    """One digest over a folder (relative paths and contents) or a file — used for `.mlpackage` folders."""
    path = Path(path)
    h = hashlib.sha256()
    for f in folder_files(path):
        h.update(str(f.relative_to(path) if f != path else f.name).encode())
        with open(f, "rb") as fh:
            while block := fh.read(_BLOCK):
                h.update(block)
    return h.hexdigest()


def record_files(root: Path, relative_paths: Iterable[str]) -> dict[str, str]:
    """{relative path: sha256} for files (tree digest for folders) under `root`."""
    root = Path(root)
    out = {}
    for rel in sorted(set(relative_paths)):
        target = root / rel
        out[rel] = tree_sha256(target) if target.is_dir() else file_sha256(target)
    return out


def mismatches(root: Path, recorded: dict[str, str], only: Iterable[str] | None = None) -> list[str]:
    """Relative paths whose content no longer matches the recorded digest (missing files included)."""
    root = Path(root)
    wanted = recorded if only is None else {k: recorded[k] for k in only if k in recorded}
    bad = []
    for rel, digest in wanted.items():
        target = root / rel
        if not target.exists():
            bad.append(f"{rel} (missing)")
            continue
        if not (target.is_file() or target.is_dir()):  # a FIFO or a device: opening it would block or never end
            bad.append(f"{rel} (not a regular file)")
            continue
        actual = tree_sha256(target) if target.is_dir() else file_sha256(target)
        if actual != digest:
            bad.append(rel)
    return bad


def verify(root: Path, recorded: dict[str, str], only: Iterable[str] | None = None, *, what: str = "") -> None:
    """Raise BadInput naming the first damaged file (and how many) when any digest differs."""
    bad = mismatches(root, recorded, only)
    if bad:
        more = f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""
        raise BadInput(f"{Path(root) / bad[0].split(' ')[0]} does not match the sha256 its manifest recorded{more}: "
                       f"the {what or 'artifact'} is damaged or was edited; re-create it (generate and info skip this check with --no-verify)")
