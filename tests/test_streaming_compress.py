"""Streaming compress (issue 20, item 3): a network never holds its float layers and their compressed copies all at
once. Measured at scale by benchmarks/streaming_memory.py; here the mechanism, by reference counting: each float
layer is freed as soon as its compressed layer replaces it."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch import nn


@pytest.mark.parametrize("recipe", ["w4r32", "budget"])
def test_each_float_layer_is_freed_as_soon_as_it_is_replaced(recipe):
    from pocketsd.palettize.compress import compress_network
    from pocketsd.palettize.recipes import make_recipe

    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(128, 128) for _ in range(5)])
    floats = [weakref.ref(m) for m in model]
    alive = []

    def progress(n, detail=""):
        if not detail.startswith("measuring"):  # a layer was just replaced (the budget measures every layer first)
            alive.append(sum(r() is not None for r in floats))

    compress_network(model, make_recipe(recipe) if recipe != "budget" else make_recipe(bits_budget=4.5),
                     progress=progress, workers=1)
    # after the i-th replacement (0-based): the n - i - 1 layers not yet replaced, the one just replaced (the loop
    # still names it) and at most one before it (CPython's dict-items and zip iterators keep their last tuple until
    # the next step) — never all n, which is what holding every float layer to the end looks like
    n = len(floats)
    assert len(alive) == n
    assert all(count <= n - i + 1 for i, count in enumerate(alive)), alive
    del progress
    assert all(r() is None for r in floats)
