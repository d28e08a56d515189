"""Layer decompositions on every core: worker processes take whole layers, one torch thread each.

Why a process pool across layers, and not more vectorisation: the k-means already runs over every group of a
layer at once (`quantizers.kmeans_1d`: one batched histogram, one batched Lloyd iteration, one batched
assignment), so no per-group loop is left to vectorise. Its whole-weight steps are torch ops that torch already
spreads over threads; what stays on one core is the rest: the Lloyd iterations and the k-means++ seeding work on
small (groups × starts, bins) numpy arrays and Python loops, where per-call overhead is the cost (Python threads
would queue on the GIL for it), and the randomized SVD's QR is only partly parallel. Layers are independent
(each one's decomposition reads only its own weight and calibration rows), so whole layers on separate
processes keep every core busy for all of a layer's work.

Why one torch thread per layer, also when a single worker runs in this process: `torch.svd_lowrank`'s factors
depend on the intra-op thread count (measured here: different bytes at 1 and at 2 torch threads), so with
torch's default of one thread per core the compressed bytes depended on the machine. With one thread per
layer they are the same for any worker count and any core count (on the same library versions).

Why tensors travel as plain pickled bytes: multiprocessing would otherwise hand them over through /dev/shm
(torch's own reductions), which a default Docker container limits to 64 MB.
"""

from __future__ import annotations

import os
import pickle
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager

import torch

# `workers` value for the path before this module: layers one after another in this process with torch's own
# intra-op threads (the bytes then depend on the thread count). Kept only as benchmarks/sdxl_throughput.py's
# baseline; nothing else should ask for it.
IN_PROCESS_THREADED = 0


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one), the default worker count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextmanager
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _start_worker() -> None:
    torch.set_num_threads(1)


def _run(fn: Callable, blob: bytes) -> bytes:
    return pickle.dumps(fn(*pickle.loads(blob)), protocol=pickle.HIGHEST_PROTOCOL)


def map_layers(fn: Callable, tasks: Iterable[tuple], workers: int | None = None, count: int | None = None) -> Iterator:
    """`fn(*task)` for every task, yielded in task order.

    workers: processes working at once (None: `usable_cpus()`, at most `count`, the number of tasks when known;
    each worker's layer is one more layer in memory); 1 runs in this process; `IN_PROCESS_THREADED` is the old
    path (see above). `fn` must be a module-level function (workers import it by name). Tasks are drawn lazily and
    at most `workers + 1` are in flight, so only that many layers' inputs and results are held at once.
    """
    workers = usable_cpus() if workers is None else workers
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if count is not None and workers != IN_PROCESS_THREADED:
        workers = max(1, min(workers, count))
    if workers == IN_PROCESS_THREADED:
        for task in tasks:
            yield fn(*task)
        return
    if workers == 1:
        for task in tasks:
            with one_torch_thread():
                result = fn(*task)
            yield result
        return
    executor = ProcessPoolExecutor(max_workers=workers, initializer=_start_worker)
    pending: deque = deque()
    try:
        for task in tasks:
            pending.append(executor.submit(_run, fn, pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)))
            if len(pending) > workers:
                yield pickle.loads(pending.popleft().result())
        while pending:
            yield pickle.loads(pending.popleft().result())
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
