"""Block-wise distillation: the block reconstruction of BRECQ and Q-Diffusion, with every code frozen.

Whole-network distillation (`palettize.distill`) trains every compressed layer at once against the fp16 network's
output, so it holds a float copy of the whole network: 10 GB for SDXL's UNet. Here the network is cut into blocks
(a few transformer or resnet blocks each) and each block is trained alone:

1. `BlockRecorder` hooks every block while the fp16 pipeline calibrates and writes each block's inputs and outputs
   to disk in fp16 (`safetensors`, one file per block and call), with the network's own call inputs beside them and
   a byte cap over everything;
2. `distill_blocks` then trains one block at a time — its low-rank factors, tables or scales and biases; the codes
   are never touched — to reproduce the fp16 block's outputs. The block's inputs are either the recorded fp16 ones
   (blocks are then independent of each other) or the *student's* own: what the compressed network, with the
   blocks before this one already distilled, feeds it (BRECQ's choice: the block learns to correct the error that
   reaches it). `inputs="best"` trains with both and keeps whichever reproduces the fp16 outputs better on held-out
   student inputs (the undistilled tensors stay when neither helps).

Peak memory is one block in fp32 plus its cache, beside the compressed network (packed codes). Which calls train
and which pick the best step is decided by prompt: the calls of the last calibration batch are held out, so the
held-out texts are never trained on (the caller makes the prompt list's texts unique) and cover every timestep.

Why hand-written: block reconstruction exists in research code (BRECQ, Q-Diffusion, DeepCompressor) bound to its
own quantizer and model classes; none trains a format's small tensors with the codes frozen, which is the point here.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils import _pytree as pytree

from ..errors import BadInput
from .layer import TRAINABLE, CompressedLayer, compressed_layers

DISTILL_MODES = ("block", "whole", "off")
BLOCK_INPUTS = ("best", "student", "fp16")
# a block holds at most this share of the network's compressed weights (finer blocks: less memory, more
# independence; coarser: more of the network's interactions seen) — a UNet gets ~16–40 blocks
BLOCK_SHARE = 1 / 16
# batch rows kept per recorded call (fewer when the byte cap asks): a training step is one call's rows, and the
# student's inputs are recomputed on every kept row, so more rows cost time without adding prompts or timesteps
MAX_ROWS_PER_CALL = 8


# ---- cutting a network into blocks ------------------------------------------------------------------
def find_blocks(model: nn.Module, layer_names, share: float = BLOCK_SHARE) -> list[str]:
    """Module names that cut `model`'s compressible layers into blocks of at most `share` of their weights each
    (a layer larger than that is a block on its own). Every named layer lies in exactly one block. Generic over
    architectures: the cut follows the module tree, never a family's class names."""
    modules = dict(model.named_modules())
    sizes: dict[str, int] = {}
    for name in layer_names:
        n = modules[name].weight.numel()
        parts = name.split(".")
        for i in range(len(parts) + 1):
            key = ".".join(parts[:i])
            sizes[key] = sizes.get(key, 0) + n
    if not sizes:
        return []
    target = max(share * sizes[""], max(modules[n].weight.numel() for n in layer_names))
    blocks: list[str] = []

    def visit(name: str, module: nn.Module) -> None:
        if sizes.get(name, 0) == 0:
            return
        if sizes[name] <= target or isinstance(module, (nn.Linear, nn.Conv2d, CompressedLayer)):
            blocks.append(name)
            return
        for child, sub in module.named_children():
            visit(f"{name}.{child}" if name else child, sub)

    visit("", model)
    return blocks


# ---- what flows through a block: pytrees of tensors and constants ------------------------------------
def _is_float(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point()


@dataclass
class _Call:
    """One recorded call of a block or network: its tensors live on disk, its structure and constants here."""

    path: Path
    spec: object  # pytree spec of (args, kwargs, output)
    constants: dict[int, object]  # leaf index → a non-tensor leaf (None, ints, flags)
    dtypes: dict[int, torch.dtype]  # leaf index → the dtype the network ran in
    batch: int  # which calibration batch (prompt group) the call came from

    def load(self, dtype: torch.dtype | None = None, device="cpu"):
        """(args, kwargs, output) with float tensors in `dtype` (None: the dtype the network ran in)."""
        tensors = load_file(str(self.path), device=str(device))
        leaves = []
        for i in range(len(self.constants) + len(tensors)):
            if i in self.constants:
                leaves.append(self.constants[i])
                continue
            t = tensors[str(i)]
            leaves.append(t.to(dtype or self.dtypes[i]) if t.is_floating_point() else t)
        return pytree.tree_unflatten(leaves, self.spec)


def _save_call(path: Path, tree, rows: torch.Tensor | None, batch_rows: int | None, batch: int) -> tuple[_Call, int]:
    """Write `tree`'s tensors (float ones in fp16; batch rows `rows` of tensors whose first dim is the batch)."""
    leaves, spec = pytree.tree_flatten(tree)
    tensors, constants, dtypes = {}, {}, {}
    for i, leaf in enumerate(leaves):
        if not isinstance(leaf, torch.Tensor):
            constants[i] = leaf
            continue
        t = leaf.detach()
        if rows is not None and t.dim() and t.shape[0] == batch_rows:
            t = t[rows.to(t.device)]
        dtypes[i] = t.dtype
        tensors[str(i)] = (t.to(torch.float16) if t.is_floating_point() else t).cpu().contiguous()
    save_file(tensors, str(path))
    return _Call(path, spec, constants, dtypes, batch), sum(t.numel() * t.element_size() for t in tensors.values())


class BlockRecorder:
    """Records, while a pipeline runs, every block's (inputs, output) and each network's call inputs.

    networks: {component name: (network, block names)}. cap_bytes bounds the files over all networks: the
    denoiser (the network called every step) gets most of it, each other network a tenth; batch rows are
    subsampled (the same rows for a network's inputs and all its blocks) to stay under it.
    """

    def __init__(self, networks: dict[str, tuple[nn.Module, list[str]]], folder: Path, cap_bytes: int,
                 calls_per_batch: dict[str, int], batches: int, seed: int = 0):
        self.folder, self.networks = Path(folder), networks
        self.calls: dict[str, dict[str, list[_Call]]] = {n: {"": [], **{b: [] for b in blocks}}
                                                          for n, (_, blocks) in networks.items()}
        self.order: dict[str, list[str]] = {n: [] for n in networks}  # blocks in the order they ran
        others = max(0, len(networks) - 1)
        self.budget = {n: (cap_bytes / 10 if calls_per_batch.get(n, 1) <= 2 and others else
                           cap_bytes * (1 - 0.1 * others)) for n in networks}
        self.expected_calls = {n: max(1, calls_per_batch.get(n, 1) * batches) for n in networks}
        self.bytes = {n: 0 for n in networks}
        self.rows_per_call = {n: MAX_ROWS_PER_CALL for n in networks}
        self.sized: set[str] = set()
        self.gen = torch.Generator().manual_seed(seed + 11)
        self.batch = 0
        self._current: dict[str, tuple[torch.Tensor | None, int, int]] = {}  # network → (rows, batch size, call #)
        self._handles = []

    def set_batch(self, batch: int) -> None:
        self.batch = batch

    def __enter__(self) -> "BlockRecorder":
        for name, (network, blocks) in self.networks.items():
            (self.folder / name).mkdir(parents=True, exist_ok=True)
            self._handles.append(network.register_forward_pre_hook(self._network_hook(name), with_kwargs=True))
            self._handles.append(network.register_forward_hook(self._network_done(name), with_kwargs=True))
            for block in blocks:
                module = network.get_submodule(block)
                self._handles.append(module.register_forward_hook(self._block_hook(name, block), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _network_hook(self, name: str):
        def hook(_module, args, kwargs):
            leaves = [x for x in pytree.tree_flatten((args, kwargs))[0] if isinstance(x, torch.Tensor) and x.dim()]
            batch_rows = leaves[0].shape[0] if leaves else 1
            keep = self.rows_per_call[name]
            rows = None
            if keep < batch_rows:
                rows = torch.randperm(batch_rows, generator=self.gen)[:keep].sort().values
            index = len(self.calls[name][""])
            call, size = _save_call(self.folder / name / f"net-{index:05d}.safetensors", (args, kwargs, None), rows,
                                    batch_rows, self.batch)
            self.calls[name][""].append(call)
            self.bytes[name] += size
            self._current[name] = (rows, batch_rows, index)
        return hook

    def _network_done(self, name: str):
        def hook(_module, _args, _kwargs, _output):
            rows, batch_rows, index = self._current.pop(name)
            if name not in self.sized:  # first call: size every later call's rows to the byte budget
                self.sized.add(name)
                per_row = self.bytes[name] / max(1, min(batch_rows, MAX_ROWS_PER_CALL))
                self.rows_per_call[name] = int(max(1, min(MAX_ROWS_PER_CALL, self.budget[name] //
                                                          max(1.0, per_row * self.expected_calls[name]))))
        return hook

    def _block_hook(self, name: str, block: str):
        def hook(_module, args, kwargs, output):
            if name not in self._current:  # the block ran outside its network's call: not a recorded call
                return
            rows, batch_rows, index = self._current[name]
            if index == 0:
                self.order[name].append(block)
            call, size = _save_call(self.folder / name / f"{block or 'root'}-{index:05d}.safetensors",
                                    (args, kwargs, output), rows, batch_rows, self.batch)
            self.calls[name][block].append(call)
            self.bytes[name] += size
        return hook

    def info(self) -> dict:
        return {name: {"calls": len(self.calls[name][""]), "rows_per_call": self.rows_per_call[name],
                       "bytes": self.bytes[name], "blocks": len(self.order[name])} for name in self.networks}


CACHE_PREFIX = "pocketsd-blocks-"


def held_out_batches(batches) -> set[int]:
    """The calibration batches whose calls pick the best step and are never trained on: the last one, when there
    is more than one (one rule, read by `distill_network` and by the manifest's record of the texts)."""
    batches = set(batches)
    return {max(batches)} if len(batches) > 1 else set()


def block_cache_folder(parent: Path | None = None) -> Path:
    """A fresh folder for the cache, named after this process (removed by the caller when done). Caches that a
    killed run left behind (their process is gone) are removed first, so a SIGKILL never leaves gigabytes in /tmp
    for longer than the next run."""
    root = Path(parent or tempfile.gettempdir())
    for stale in root.glob(f"{CACHE_PREFIX}*-*"):
        pid = stale.name[len(CACHE_PREFIX):].split("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{CACHE_PREFIX}{os.getpid()}-", dir=root))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_cache(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


# ---- training one block ------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockDistillSettings:
    steps: int = 600  # optimizer steps per block (and per input source) …
    max_epochs: float | None = 10.0  # … but at most this many passes over the block's training calls
    minutes: float | None = None  # wall-clock budget over all blocks, shared by compressed weights
    trainable: tuple[str, ...] = TRAINABLE
    lr: float = 1e-3  # Adam step relative to each tensor's RMS
    inputs: str = "best"  # "best" | "student" | "fp16"
    student_refreshes: int = 4  # network passes that refresh the student's block inputs (see stages_of)
    eval_every: int = 25
    seed: int = 0

    def check(self) -> "BlockDistillSettings":
        if self.inputs not in BLOCK_INPUTS:
            raise BadInput(f"--distill-inputs must be one of {', '.join(BLOCK_INPUTS)}, got {self.inputs!r}")
        if not isinstance(self.steps, int) or not 0 <= self.steps <= 1_000_000:
            raise BadInput(f"--distill-steps must be an integer in 0..1000000, got {self.steps}")
        if not (math.isfinite(self.lr) and 0 < self.lr <= 1):
            raise BadInput(f"--distill-lr must be in (0, 1], got {self.lr}")
        return self


@dataclass
class BlockReport:
    block: str
    weights: int
    kept: str = "start"  # "start" | "fp16" | "student": which tensors were kept
    snr_db_before: float = float("nan")  # block-output SNR on held-out calls (student inputs), before …
    snr_db_after: float = float("nan")  # … and after
    tried: dict = field(default_factory=dict)  # input source → (best held-out SNR dB, steps done, best step)
    seconds: float = 0.0


def _float_leaves(tree) -> list[torch.Tensor]:
    return [x for x in pytree.tree_flatten(tree)[0] if _is_float(x)]


def _relative_error(out, target) -> torch.Tensor:
    """Σ‖out − target‖² / Σ‖target‖² over every float tensor of the block's output."""
    outs, tgts = _float_leaves(out), _float_leaves(target)
    err = sum((o.float() - t.float()).pow(2).sum() for o, t in zip(outs, tgts))
    sig = sum(t.float().pow(2).sum() for t in tgts)
    return err / torch.as_tensor(sig).clamp_min(1e-30)


def _plain_tensors(block: nn.Module) -> list[tuple[dict, str]]:
    """The block's own float parameters and buffers outside its compressed layers (norms, fp16-kept layers), as
    (store, key) slots. A compressed layer has no submodules, so skipping it skips all its tensors."""
    return [(store, key) for module in block.modules() if not isinstance(module, CompressedLayer)
            for store in (module._parameters, module._buffers)
            for key, t in store.items() if t is not None and t.is_floating_point()]


class _Fp32Block:
    """Holds a block's plain tensors in fp32 while it trains (a bf16/fp16 pipeline trains in fp32) and puts them
    back in their own dtype after; compressed layers keep their fp16 storage (that is the format)."""

    def __init__(self, block: nn.Module):
        self.slots = _plain_tensors(block)
        self.dtypes = [store[key].dtype for store, key in self.slots]

    def __enter__(self):
        for store, key in self.slots:
            t = store[key]
            if t.dtype != torch.float32:
                store[key] = nn.Parameter(t.detach().float(), requires_grad=False) if isinstance(t, nn.Parameter) \
                    else t.float()
        return self

    def __exit__(self, *exc):
        for (store, key), dtype in zip(self.slots, self.dtypes):
            t = store[key]
            if t.dtype != dtype:
                store[key] = nn.Parameter(t.detach().to(dtype), requires_grad=False) if isinstance(t, nn.Parameter) \
                    else t.to(dtype)


def _same_inputs(a: list, b: list, tolerance: float = 2e-3) -> bool:
    """True when two input sets differ by no more than fp16 storage rounding (relative)."""
    err = sig = 0.0
    for x, y in zip(a, b):
        for u, v in zip(_float_leaves(x), _float_leaves(y)):
            err += float((u.float() - v.float()).pow(2).sum())
            sig += float(v.float().pow(2).sum())
    return err <= (tolerance ** 2) * max(sig, 1e-30)


class _Stop(Exception):
    pass


def capture_student_inputs(network: nn.Module, blocks: list[str], net_calls: list[_Call], folder: Path,
                           dtype: torch.dtype, device) -> dict[str, list[_Call]]:
    """What each of `blocks` receives when the compressed network, as it is now, runs on each recorded network
    call: one forward per call (stopped after the last of `blocks`), each block's (args, kwargs) written to
    `folder` like the recorder's files. Returns block → its calls, in the order of `net_calls`."""
    folder.mkdir(parents=True, exist_ok=True)
    got: dict[str, list[_Call]] = {b: [] for b in blocks}
    remaining: set[str] = set()

    def hook_for(name: str):
        def hook(_module, args, kwargs):
            index = len(got[name])
            call, _ = _save_call(folder / f"{name or 'root'}-{index:05d}.safetensors", (args, kwargs, None), None,
                                 None, current[0])
            got[name].append(call)
            remaining.discard(name)
            if not remaining:  # nothing after the last block of this stage is needed
                raise _Stop
        return hook

    current = [0]
    handles = [(network.get_submodule(b) if b else network).register_forward_pre_hook(hook_for(b), with_kwargs=True)
               for b in blocks]
    try:
        with torch.no_grad():
            for call in net_calls:
                remaining.update(blocks)
                current[0] = call.batch
                args, kwargs, _ = call.load(dtype, device)
                try:
                    network(*args, **kwargs)
                except _Stop:
                    continue
                if remaining:
                    raise RuntimeError(f"blocks {sorted(remaining)[:3]} did not run during the network's forward")
    finally:
        for h in handles:
            h.remove()
    return got


def stages_of(order: list[str], weights: dict[str, int], count: int) -> list[list[str]]:
    """`order` cut into about `count` runs of consecutive blocks with similar compressed weights: the student's
    inputs are refreshed once per stage (one network pass), so a block sees the distilled blocks of every earlier
    stage — BRECQ's sequential inputs at `count` network passes instead of one per block."""
    total = sum(weights[b] for b in order) or 1
    stages, current, acc = [], [], 0
    for b in order:
        current.append(b)
        acc += weights[b]
        if acc >= total * (len(stages) + 1) / count and len(stages) < count - 1:
            stages.append(current)
            current = []
    if current:
        stages.append(current)
    return stages


def _train_one(block: nn.Module, layers: dict[str, CompressedLayer], train: list[tuple], held: list[tuple],
               settings: BlockDistillSettings, steps: int, seconds: float | None, seed: int) -> tuple[dict, float, int, int]:
    """Train the block's small tensors on `train` [(args, kwargs, target)]; returns (best tensors, best held-out
    SNR dB, steps done, best step). Deterministic for a seed and step count (time may stop it earlier)."""
    params = {f"{n}.{k}": p for n, layer in layers.items() for k, p in layer.trained.items()}

    def held_snr() -> float:
        with torch.no_grad():
            err = sum(float(_relative_error(block(*a, **k), t)) for a, k, t in held) / max(1, len(held))
        return -10 * math.log10(max(err, 1e-30))

    best = {k: p.detach().clone() for k, p in params.items()}
    best_snr, best_step, done = held_snr(), 0, 0
    if not params or steps == 0 or not train:
        return best, best_snr, 0, 0
    opt = torch.optim.Adam(list(params.values()), lr=settings.lr, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(seed)
    start, warmup = time.perf_counter(), max(1, min(steps // 20, 50))
    evaluated = 0
    for step in range(1, steps + 1):
        progress = (step - 1) / steps
        if seconds is not None:
            spent = (time.perf_counter() - start) / seconds
            if spent >= 1:
                break
            progress = max(progress, spent)
        scale = min(1.0, step / warmup) * 0.5 * (1 + math.cos(math.pi * progress))
        for g in opt.param_groups:
            g["lr"] = settings.lr * max(scale, 0.02)
        args, kwargs, target = train[int(torch.randint(len(train), (1,), generator=gen))]
        with torch.enable_grad():
            loss = _relative_error(block(*args, **kwargs), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
        done = step
        if step % settings.eval_every == 0 or step == steps:
            evaluated = step
            snr = held_snr()
            if snr > best_snr:
                best_snr, best_step = snr, step
                best = {k: p.detach().clone() for k, p in params.items()}
    if done and evaluated != done:  # stopped by time between two evaluations: judge where it stopped
        snr = held_snr()
        if snr > best_snr:
            best_snr, best_step = snr, done
            best = {k: p.detach().clone() for k, p in params.items()}
    return best, best_snr, done, best_step


def _set_params(layers: dict[str, CompressedLayer], values: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, layer in layers.items():
            for k, p in layer.trained.items():
                p.copy_(values[f"{n}.{k}"])


def distill_network(network: nn.Module, recorder_calls: dict[str, list[_Call]], order: list[str],
                    settings: BlockDistillSettings, student_folder: Path, progress=None,
                    final_mode: str = "packed") -> dict:
    """Distil every block of `network` in the order they ran, one at a time (see the module docstring).

    recorder_calls: a `BlockRecorder`'s calls for this network ("" → the network's own inputs, block → its calls).
    student_folder: where the student's block inputs are written (inside the cache; the caller removes it).
    progress: optional callable(advance, detail) once per block. Returns a JSON-ready report."""
    settings.check()
    tick = progress or (lambda n, d="": None)
    all_layers = compressed_layers(network)
    device = next(network.parameters()).device
    net_dtype = next((p.dtype for p in network.parameters() if p.is_floating_point()), torch.float32)
    net_calls = recorder_calls[""]
    for layer in all_layers.values():  # fresh from compression a layer has no compute tensors yet
        layer.set_mode(final_mode, net_dtype)
    held_batches = held_out_batches(c.batch for c in net_calls)
    weights = {b: sum(l.numel for n, l in all_layers.items() if n == b or n.startswith(b + ".") or not b)
               for b in order}
    total = sum(weights.values()) or 1
    budget = None if settings.minutes is None else 60 * settings.minutes
    reports, t_all = [], time.perf_counter()
    use_student = settings.inputs in ("student", "best")
    stages = stages_of(order, weights, settings.student_refreshes)
    first_of_stage = {stage[0]: stage for stage in stages}
    student: dict[str, list[_Call]] = {}
    refresh_seconds = 0.0
    for index, name in enumerate(order):
        if use_student and name in first_of_stage:
            t1 = time.perf_counter()
            for old in student.values():
                for call in old:
                    call.path.unlink(missing_ok=True)
            student = capture_student_inputs(network, first_of_stage[name], net_calls,
                                             Path(student_folder) / f"stage-{index:03d}", net_dtype, device)
            refresh_seconds += time.perf_counter() - t1
        t0 = time.perf_counter()
        block = network.get_submodule(name) if name else network
        layers = {n: l for n, l in all_layers.items() if n == name or n.startswith(name + ".") or not name}
        report = BlockReport(name or "(root)", weights[name])
        calls = recorder_calls[name]
        fp16_in = [c.load(torch.float32, device) for c in calls]
        targets = [out for _, _, out in fp16_in]
        is_held = [c.batch in held_batches for c in calls]
        if not held_batches:  # one prompt batch: nothing to hold out, judged on the training calls
            is_held = [True] * len(calls)
        sources = {"fp16": [(a, k) for a, k, _ in fp16_in]}
        if use_student:
            got = [c.load(torch.float32, device) for c in student[name]]
            sources["student"] = [(a, k) for a, k, _ in got]
            if settings.inputs == "student":
                del sources["fp16"]
            elif _same_inputs(sources["student"], sources["fp16"]):
                del sources["student"]  # only fp16-kept layers before this block: one training is enough
        judge = sources.get("student", sources["fp16"])
        held = [(a, k, t) for (a, k), t, h in zip(judge, targets, is_held) if h]
        n_train = sum(1 for h in is_held if not h) if held_batches else len(calls)
        steps = settings.steps if settings.max_epochs is None else \
            min(settings.steps, max(1, math.ceil(settings.max_epochs * n_train)))
        share = weights[name] / total
        seconds = None if budget is None else max(1.0, budget * share / len(sources))
        for layer in layers.values():
            layer.set_mode("train", trainable=settings.trainable)
        with _Fp32Block(block):
            block_was_training = block.training
            block.eval()
            start = {f"{n}.{k}": p.detach().clone() for n, l in layers.items() for k, p in l.trained.items()}
            _, start_snr, _, _ = _train_one(block, layers, [], held, settings, 0, None, 0)
            report.snr_db_before = best_snr = start_snr
            best_values = start
            for source, inputs in sources.items():
                _set_params(layers, start)
                train = [(a, k, t) for (a, k), t, h in zip(inputs, targets, is_held) if not h or not held_batches]
                values, snr, done, best_step = _train_one(block, layers, train, held, settings, steps,
                                                          seconds, settings.seed + 1000 * index)
                report.tried[source] = {"held_out_snr_db": round(snr, 3), "steps_done": done, "steps_planned": steps,
                                       "best_step": best_step}
                if snr > best_snr:
                    best_snr, best_values, report.kept = snr, values, source
            _set_params(layers, best_values)
            for layer in layers.values():
                layer.commit_trained()
                layer.set_mode(final_mode, net_dtype)
            block.train(block_was_training)
        report.snr_db_after = best_snr
        report.seconds = time.perf_counter() - t0
        reports.append(report)
        tick(1, f"{name or 'root'}: {report.snr_db_before:.1f} → {best_snr:.1f} dB ({report.kept})")
        del fp16_in, targets, sources
    return {"mode": "block", "inputs": settings.inputs, "blocks": [r.__dict__ for r in reports],
            "held_out": "the calls of the last calibration batch (its prompt texts are never trained on)"
            if held_batches else "none (one calibration batch): judged on the training calls",
            "steps_per_block": settings.steps, "max_epochs": settings.max_epochs,
            "student_refreshes": len(stages) if use_student else 0, "student_refresh_seconds": round(refresh_seconds, 2),
            "seconds": round(time.perf_counter() - t_all, 2),
            "trainable": list(settings.trainable), "lr": settings.lr, "seed": settings.seed}
