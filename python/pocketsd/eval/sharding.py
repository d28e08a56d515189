"""Spread prompts over `accelerate` processes and bring the results back, so that

    accelerate launch --num_processes N -m pocketsd.eval …

generates on N GPUs (or `torchrun --nproc_per_node N -m pocketsd.eval …` on N CPU processes) and computes the
metrics once, on the main process. A plain `python -m pocketsd.eval …` is one process and the same code path.

- `shard(items)`: this process's contiguous share (`PartialState.split_between_processes`, no padding, so no
  prompt is generated twice).
- `gather(local)`: every process's items, in rank order, on every process (`accelerate.utils.gather_object`).
- `map_sharded(fn, items)`: `[fn(x) for x in items]`, computed across the processes, returned in input order on
  every process; equal to the one-process run for any pure `fn`.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def process_state(cpu: bool | None = None):
    """accelerate's PartialState: which process this is, of how many (1 of 1 without a launcher).

    accelerate only forms a multi-process CPU group (gloo) when told it runs on the CPU, and `accelerate launch
    --cpu` starts several CPU processes only through mpirun; so several CPU processes come from `torchrun
    --nproc_per_node N` and are recognised here (a launcher's WORLD_SIZE > 1 and no CUDA)."""
    import torch
    from accelerate import PartialState

    check_launch_env()
    if cpu is None:
        cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    return PartialState(cpu=True) if cpu else PartialState()


def check_launch_env(env=None) -> None:
    """A launcher's variables that disagree (WORLD_SIZE without RANK or MASTER_ADDR, a RANK outside the world) would
    make accelerate fail after the model loads, or wait forever for processes that never come: refused up front."""
    from ..errors import BadInput

    env = os.environ if env is None else env
    raw = env.get("WORLD_SIZE")
    if raw is None:
        return
    try:
        world = int(raw)
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", env.get("RANK", "0")))
    except ValueError:
        raise BadInput(f"WORLD_SIZE={raw!r}, RANK={env.get('RANK')!r}, LOCAL_RANK={env.get('LOCAL_RANK')!r} must be "
                       "whole numbers (set by torchrun or accelerate launch; unset them for one process)") from None
    if world < 1:
        raise BadInput(f"WORLD_SIZE={world} must be at least 1 (unset it for one process)")
    if world == 1:
        return
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
    if missing:
        raise BadInput(f"WORLD_SIZE={world} is set but not {', '.join(missing)}: start the shards with `torchrun "
                       "--nproc_per_node N -m pocketsd.eval …` or `accelerate launch`, or unset WORLD_SIZE")
    if not (0 <= rank < world and 0 <= local < world):
        raise BadInput(f"RANK={rank} (LOCAL_RANK={local}) is outside WORLD_SIZE={world}: the shards disagree on how "
                       "many processes there are; start them all with one torchrun/accelerate launch")


def is_main_process(state=None) -> bool:
    return (state or process_state()).is_main_process


def shard(items: Sequence[T], state=None) -> list[T]:
    state = state or process_state()
    with state.split_between_processes(list(items), apply_padding=False) as mine:
        return list(mine)


def gather(local: list, state=None) -> list:
    from accelerate.utils import gather_object

    state = state or process_state()
    if state.num_processes == 1:
        return list(local)
    return list(gather_object(list(local)))


def map_sharded(fn: Callable[[T], R], items: Sequence[T], state=None) -> list[R]:
    """Apply `fn` to this process's share; gather (index, result) pairs and put them back in input order."""
    state = state or process_state()
    indexed = list(enumerate(items))
    mine = shard(indexed, state)
    done = gather([(i, fn(x)) for i, x in mine], state)
    ordered = sorted(done, key=lambda pair: pair[0])
    if [i for i, _ in ordered] != list(range(len(items))):
        raise RuntimeError(f"gathered {len(ordered)} results for {len(items)} items: a process lost or repeated work")
    return [r for _, r in ordered]


def wait_for_everyone(state=None) -> None:
    (state or process_state()).wait_for_everyone()


def finish(state=None) -> None:
    """End a multi-process run cleanly: wait for every process, then tear the process group down. A process that
    exits with gloo's threads still running is killed by C++'s `terminate` (SIGABRT, "terminate called without an
    active exception"), which fails the launch although every process had finished its work."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        (state or process_state()).wait_for_everyone()
        dist.destroy_process_group()
