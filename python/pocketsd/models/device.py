"""`--device auto|cpu|cuda|mps`: which torch device runs the networks.

`auto` picks CUDA, then Apple's MPS, then the CPU. Asking for a device torch cannot see is bad input, said in
one line with what torch does see.
"""

from __future__ import annotations

from ..errors import BadInput

DEVICES = ("auto", "cpu", "cuda", "mps")


def _available() -> dict[str, bool]:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return {"cuda": torch.cuda.is_available(), "mps": bool(mps and mps.is_available()), "cpu": True}


def resolve_device(name: str | None, available: dict[str, bool] | None = None) -> str:
    """The concrete device for `name` ("cpu", "cuda" or "mps"); `available` is injectable for tests."""
    name = (name or "cpu").lower()
    if name not in DEVICES:
        raise BadInput(f"--device must be one of {', '.join(DEVICES)}, got {name!r}")
    seen = available if available is not None else _available()
    if name == "auto":
        return next(d for d in ("cuda", "mps", "cpu") if seen.get(d))
    if not seen.get(name):
        have = ", ".join(d for d in ("cuda", "mps", "cpu") if seen.get(d))
        raise BadInput(f"--device {name}: torch sees no {name.upper()} device here (available: {have}); "
                       "use --device auto or cpu")
    return name
