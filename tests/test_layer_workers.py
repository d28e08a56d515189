"""Layers decomposed on several worker processes (`palettize.workers`, used by `compress_network`): the bytes do not
depend on the worker count, they are the old one-process path's own bytes at one torch thread, and where the old
path ran its randomized SVD on several threads (the one step whose result depends on the thread count) the weight
error is no worse."""

from __future__ import annotations

import copy
import hashlib
import math

import pytest
import torch
from torch import nn

from pocketsd.palettize.calibrate import Calibration, LayerStats
from pocketsd.palettize.compress import compress_network
from pocketsd.palettize.layer import compressed_layers, compressed_state_dict
from pocketsd.palettize.recipes import make_recipe
from pocketsd.palettize.workers import IN_PROCESS_THREADED, map_layers, one_torch_thread

OLD_DEFAULT_THREADS = 2  # torch's default on this project's 2-core machine: what the old path ran with


def _heavy_tailed(shape, seed):
    """Student-t (ν = 3) weights with a few input channels 8× larger (what real layers look like to a quantizer)."""
    g = torch.Generator().manual_seed(seed)
    fan_in = math.prod(shape[1:])
    w = torch.randn(shape, generator=g) / torch.sqrt(torch.randn((*shape, 3), generator=g).pow(2).sum(-1) / 3)
    w = w * (0.5 / math.sqrt(fan_in))
    w[:, torch.randperm(shape[1], generator=g)[:4]] *= 8
    return w.to(torch.float16).float()


def _network(shapes, seed=0) -> nn.Sequential:
    layers = []
    for i, shape in enumerate(shapes):
        layer = nn.Linear(shape[1], shape[0]) if len(shape) == 2 else nn.Conv2d(shape[1], shape[0], shape[2:])
        with torch.no_grad():
            layer.weight.copy_(_heavy_tailed(shape, seed + i))
        layers.append(layer)
    return nn.Sequential(*layers)


def _calibration(model: nn.Sequential, rows: int = 96, seed: int = 0) -> Calibration:
    g = torch.Generator().manual_seed(seed)
    stats = {}
    for name, m in model.named_children():
        cin, taps = m.weight.shape[1], m.weight[0, 0].numel()
        x = torch.randn(rows, cin, taps, generator=g)
        x[:, :2] *= 20  # two outlier input channels: smoothing's α search has something to find
        stats[name] = LayerStats(act_max=x.abs().amax((0, 2)), rows=x.reshape(rows, -1).to(torch.float16))
    return Calibration(stats)


def _compress(model, recipe, calib, workers, threads=None):
    model = copy.deepcopy(model)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        report = compress_network(model, recipe, calib, workers=workers)
    finally:
        torch.set_num_threads(before)
    return model, report


def _bytes(model) -> dict[str, str]:
    return {k: hashlib.sha256(t.detach().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
            for k, t in compressed_state_dict(model).items()}


# a 320-wide layer takes svd_factors' randomized path (min side > 256, 4·rank ≤ min side) — the step that depends on
# torch's thread count — beside small ones that take the exact Gram-matrix path, a conv among them
FIXED_SHAPES = [(320, 320), (48, 64), (32, 16, 3, 3)]
BUDGET_SHAPES = [(64, 96), (96, 64), (32, 16, 3, 3)]  # all on the exact SVD path


@pytest.fixture(scope="module")
def fixed_net():
    net = _network(FIXED_SHAPES)
    return net, _calibration(net)


@pytest.fixture(scope="module")
def fixed_two_workers(fixed_net):
    net, calib = fixed_net
    return _compress(net, make_recipe("w4r32"), calib, workers=2)[0]


def test_fixed_recipe_bytes_do_not_depend_on_the_worker_count(fixed_net, fixed_two_workers):
    net, calib = fixed_net
    one, _ = _compress(net, make_recipe("w4r32"), calib, workers=1)
    assert _bytes(one) == _bytes(fixed_two_workers)
    assert [layer.record() for layer in compressed_layers(one).values()] == \
        [layer.record() for layer in compressed_layers(fixed_two_workers).values()]


def test_workers_give_the_old_paths_own_bytes_at_one_torch_thread(fixed_net, fixed_two_workers):
    """Exact equivalence: the per-layer algorithm is unchanged, only where and on how many threads it runs."""
    net, calib = fixed_net
    old, _ = _compress(net, make_recipe("w4r32"), calib, workers=IN_PROCESS_THREADED, threads=1)
    assert _bytes(old) == _bytes(fixed_two_workers)


def test_budget_bytes_match_across_worker_counts_and_the_old_threaded_path():
    """The budget's measuring pass and its final pass both go through the workers; on layers whose SVD takes the
    exact path the old path's bytes come out the same even with several torch threads."""
    net = _network(BUDGET_SHAPES, seed=7)
    calib = _calibration(net, seed=7)
    recipe = make_recipe(bits_budget=4.5)
    two, _ = _compress(net, recipe, calib, workers=2)
    one, _ = _compress(net, recipe, calib, workers=1)
    old, _ = _compress(net, recipe, calib, workers=IN_PROCESS_THREADED, threads=OLD_DEFAULT_THREADS)
    assert _bytes(two) == _bytes(one) == _bytes(old)
    records = [[layer.record() for layer in compressed_layers(m).values()] for m in (two, one, old)]
    assert records[0] == records[1] == records[2]
    assert len({(r.bits, r.rank) for r in records[0]}) > 1, "the budget gave every layer the same choice"


def _weight_mse(original: nn.Module, compressed: nn.Module) -> float:
    """Mean squared weight error, Ŵ rebuilt from the compressed layers' stored codes, tables and factors."""
    err = count = 0
    for name, layer in compressed_layers(compressed).items():
        w = original.get_submodule(name).weight.detach().double()
        err += float((w - layer.effective_weight().double()).pow(2).sum())
        count += w.numel()
    return err / count


def test_weight_error_is_no_worse_than_the_old_path_with_several_threads():
    """Where the bytes differ (randomized SVD on several threads in the old path), the new path's weight MSE on
    seeded heavy-tailed matrices of SDXL shapes (640×640, 640×1280, 1280×640 at half size) is not
    significantly worse: the mean log-ratio new/old is at most two standard errors above zero."""
    shapes = [(320, 320), (320, 640), (640, 320)]
    recipe = make_recipe("w4r32")
    log_ratios, differing = [], 0
    for seed in range(2):
        for i, shape in enumerate(shapes):
            net = _network([shape], seed=100 * seed + i)
            new, _ = _compress(net, recipe, None, workers=2)
            old, _ = _compress(net, recipe, None, workers=IN_PROCESS_THREADED, threads=OLD_DEFAULT_THREADS)
            differing += _bytes(new) != _bytes(old)
            log_ratios.append(math.log(_weight_mse(net, new) / _weight_mse(net, old)))
    mean = sum(log_ratios) / len(log_ratios)
    spread = math.sqrt(sum((x - mean) ** 2 for x in log_ratios) / (len(log_ratios) - 1))
    stderr = spread / math.sqrt(len(log_ratios))
    assert mean <= 2 * stderr, f"new/old weight MSE log-ratios {log_ratios} ({differing} of {len(log_ratios)} differ)"


def test_results_come_back_in_task_order_and_errors_reach_the_caller():
    tasks = [(range(n),) for n in range(7)]  # more tasks than workers, of different lengths
    assert list(map_layers(sum, tasks, workers=2)) == [n * (n - 1) // 2 for n in range(7)]
    with pytest.raises(ValueError, match="math domain error"):
        list(map_layers(math.sqrt, [(4.0,), (-1.0,), (9.0,)], workers=2))


def test_one_torch_thread_restores_the_callers_setting():
    before = torch.get_num_threads()
    with one_torch_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
