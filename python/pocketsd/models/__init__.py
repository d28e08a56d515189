"""Models of every kind (floor between the core and the stages): what a `--model` names, and loading its
components — plain or compressed — one at a time; and the model families as data (`family`).

The names below are imported on first use (PEP 562), so `pocketsd.models.family`, which the ground floor
reads, can be imported without pulling in the loaders (which import the ground floor themselves)."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ModelComponents": "components", "load_compressed_component": "components", "load_pipeline": "components",
    "ModelSource": "resolve", "hub_snapshot": "resolve", "model_folder": "resolve", "precheck": "resolve",
    "resolve_model": "resolve",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


__all__ = list(_EXPORTS)
