"""Distillation of a compressed network's small tensors against its fp16 original, the codes frozen.

Post-training quantization leaves the low-rank factors as an SVD of the weight error and the palette tables as
k-means centroids of the weights: each is the best *per layer*, none is the best for the network's output.
EfficientDM (low-rank quantization-aware fine-tuning of diffusion models) and LoftQ (quantization-aware
low-rank initialisation) train only the low-rank part against the full-precision model; here the same is done
with the format's own small tensors — the factors, and optionally the palette tables or int scales and the
biases — while every code stays byte for byte what compression chose. The saved tensors keep their names and
shapes, so conversion, LoRA merging and Core ML are untouched.

Tensors in, tensors out:
- `record_teacher` runs the fp16 pipeline over calibration prompts and keeps UNet calls spread over the whole
  sampling schedule — conditional and unconditional rows, as pairs — with the fp16 UNet's outputs (the teacher
  is cached: it never runs during training, so memory stays that of one student batch);
- `distill` trains the student (a network of `CompressedLayer`s, put in "train" mode) to match those outputs,
  deterministically for a seed and a step count, stopping early on a time budget; it keeps the tensors of the
  best held-out output SNR (the last prompts' pairs, spread over the whole schedule; `pocketsd compress` makes the
  calibration texts unique, so these texts are never trained on) and writes them back into the fp16 buffers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import BadInput
from .layer import TRAINABLE, compressed_layers, trainable_parameters

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}



@dataclass(frozen=True)
class DistillSettings:
    """How distillation runs; `Recipe` holds the defaults (the `distill_*` fields) and builds this."""

    steps: int = 0  # optimizer steps (0: no distillation) …
    max_epochs: float | None = None  # … but at most this many passes over the training pairs (None: no cap)
    minutes: float | None = None  # time budget for the training loop (None: none)
    clock: str = "wall"  # what `minutes` counts: "wall" clock or this process's "cpu" time (all its threads)
    trainable: tuple[str, ...] = TRAINABLE
    lr: float = 1e-3  # Adam step relative to each tensor's RMS (the train mode's parameters are value / RMS)
    batch_pairs: int = 8  # (unconditional, conditional) row pairs per step
    guided_weight: float = 1.0  # weight of the guided output's error beside the two rows' own errors
    guidance: float = 5.0
    held_out_share: float = 0.125  # share of the prompts kept out of training to pick the best step
    eval_every: int = 25
    seed: int = 0

    def check(self) -> "DistillSettings":
        if not isinstance(self.steps, int) or self.steps < 0 or self.steps > 1_000_000:
            raise BadInput(f"--distill-steps must be an integer in 0..1000000, got {self.steps}")
        if self.minutes is not None and (not math.isfinite(self.minutes) or self.minutes <= 0 or self.minutes > 10_000):
            raise BadInput(f"--distill-minutes must be a number of minutes in (0, 10000], got {self.minutes}")
        if self.clock not in CLOCKS:
            raise BadInput(f"the distillation clock must be one of {', '.join(CLOCKS)}, got {self.clock!r}")
        bad = [t for t in self.trainable if t not in TRAINABLE]
        if bad or not self.trainable:
            raise BadInput(f"--distill-tensors must name some of {', '.join(TRAINABLE)}, got {','.join(self.trainable) or 'nothing'}")
        if not (math.isfinite(self.lr) and 0 < self.lr <= 1):
            raise BadInput(f"--distill-lr must be in (0, 1], got {self.lr}")
        if self.max_epochs is not None and not (math.isfinite(self.max_epochs) and self.max_epochs > 0):
            raise BadInput(f"--distill-epochs must be a positive number, got {self.max_epochs}")
        if not 1 <= self.batch_pairs <= 4096:
            raise BadInput(f"--distill-batch must be in 1..4096, got {self.batch_pairs}")
        return self


# ---- the teacher's calls ----------------------------------------------------------------------------
@dataclass
class TeacherSet:
    """Recorded UNet calls of the fp16 pipeline and the fp16 UNet's outputs on them.

    Rows come in (unconditional, conditional) pairs for the same latent and timestep: row 2k is the
    unconditional half of pair k, row 2k+1 its conditional half. Text conditioning is stored once per prompt
    row of a pipeline batch (`context`), not once per call: on SDXL it is by far the largest input.
    """

    sample: torch.Tensor  # (N, C, H, W)
    timestep: torch.Tensor  # (N,)
    context_index: torch.Tensor  # (N,) long: row of `context`
    target: torch.Tensor  # (N, C, H, W): the teacher's output
    prompt: torch.Tensor  # (N,) long: which prompt the row belongs to (for the held-out split)
    context: dict[str, torch.Tensor]  # encoder_hidden_states and every added_cond_kwargs tensor, by row
    info: dict = field(default_factory=dict)

    @property
    def pairs(self) -> int:
        return self.sample.shape[0] // 2

    def split(self, held_out_share: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(training pair indices, held-out pair indices), split by prompt: the last prompts are held out."""
        prompt_of_pair = self.prompt[0::2]
        prompts = torch.unique(prompt_of_pair)
        n_held = min(len(prompts) - 1, max(1, round(held_out_share * len(prompts)))) if len(prompts) > 1 else 0
        held = set(prompts[len(prompts) - n_held:].tolist()) if n_held else set()
        mask = torch.tensor([int(p) in held for p in prompt_of_pair.tolist()], dtype=torch.bool)
        idx = torch.arange(self.pairs)
        if not held:  # one prompt: nothing to hold out, the "held-out" figure is then measured on training rows
            return idx, idx
        return idx[~mask], idx[mask]

    def batch(self, pairs: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """UNet keyword inputs and targets for these pairs (rows ordered pair by pair: uncond, cond)."""
        rows = torch.stack([2 * pairs, 2 * pairs + 1], 1).reshape(-1)
        ctx = self.context_index[rows]
        inputs = {"sample": self.sample[rows], "timestep": self.timestep[rows],
                  "encoder_hidden_states": self.context["encoder_hidden_states"][ctx]}
        added = {k: v[ctx] for k, v in self.context.items() if k != "encoder_hidden_states"}
        if added:
            inputs["added_cond_kwargs"] = added
        return inputs, self.target[rows]


def record_teacher(pipeline, prompts: list[str], steps: int = 8, guidance: float = 5.0, batch_size: int = 8,
                   seed: int = 0, max_bytes: int = 1 << 30, progress=None) -> TeacherSet:
    """Run the (fp16) `pipeline` on `prompts` with classifier-free guidance and keep its UNet calls and outputs.

    Every sampling step of every prompt is kept as an (unconditional, conditional) pair while the samples and
    targets fit `max_bytes`; beyond that a seeded random subset of each call's prompts is kept, so the whole
    schedule stays covered. progress: optional callable(advance) per sampling step.
    """
    if guidance <= 1:
        raise BadInput("distillation needs classifier-free guidance (guidance > 1) to record both halves")
    if steps < 1 or not prompts:
        raise BadInput("distillation needs at least one prompt and one step")
    unet = pipeline.unet
    c = unet.config.in_channels
    size = getattr(pipeline, "default_sample_size", None) or unet.config.sample_size
    per_pair = 2 * 2 * c * size * size * 4  # two rows, sample + target, fp32
    max_pairs = max(2, max_bytes // per_pair)
    batches = math.ceil(len(prompts) / batch_size)
    keep_per_call = max(1, min(batch_size, max_pairs // max(1, batches * steps)))
    gen = torch.Generator().manual_seed(seed + 7)
    rows: dict[str, list] = {k: [] for k in ("sample", "timestep", "context_index", "target", "prompt")}
    context: dict[str, list[torch.Tensor]] = {}
    state = {"base": 0, "context_rows": 0, "first": True, "offset": 0}

    def hook(_module, args, kwargs, output):
        sample = args[0] if args else kwargs["sample"]
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        out = output[0] if isinstance(output, (tuple, list)) else output.sample
        n = sample.shape[0]
        if n % 2:  # not a guided call (e.g. another caller): nothing to pair
            return
        b = n // 2
        if state["first"]:  # conditioning is the same for every step of a pipeline call: store it once
            state["first"] = False
            state["base"] = state["context_rows"]
            context.setdefault("encoder_hidden_states", []).append(kwargs["encoder_hidden_states"].detach().float().clone())
            for k, v in (kwargs.get("added_cond_kwargs") or {}).items():
                context.setdefault(k, []).append(v.detach().float().clone())
            state["context_rows"] += n
        pick = torch.randperm(b, generator=gen)[:keep_per_call].sort().values
        idx = torch.stack([pick, pick + b], 1).reshape(-1)  # uncond row, then its cond row
        t = torch.as_tensor(t).float().reshape(-1)
        rows["sample"].append(sample[idx].detach().float().clone())
        rows["timestep"].append((t.expand(n) if t.numel() == 1 else t)[idx].clone())
        rows["context_index"].append(idx + state["base"])
        rows["target"].append(out[idx].detach().float().clone())
        rows["prompt"].append((pick + state["offset"]).repeat_interleave(2))

    handle = unet.register_forward_hook(hook, with_kwargs=True)
    if hasattr(pipeline, "set_progress_bar_config"):
        pipeline.set_progress_bar_config(disable=True)

    def on_step(_pipe, _i, _t, kwargs):
        if progress is not None:
            progress(1)
        return kwargs

    try:
        with torch.inference_mode():
            for k in range(batches):
                chunk = prompts[k * batch_size:(k + 1) * batch_size]
                state["first"], state["offset"] = True, k * batch_size
                pipeline(prompt=chunk, num_inference_steps=steps, guidance_scale=guidance, output_type="latent",
                         generator=torch.Generator().manual_seed(seed + k), callback_on_step_end=on_step)
    finally:
        handle.remove()
    if not rows["sample"]:
        raise BadInput("the pipeline made no guided UNet calls to record for distillation")
    teacher = TeacherSet(**{k: torch.cat(v) for k, v in rows.items()},
                         context={k: torch.cat(v) for k, v in context.items()})
    teacher.info = {"prompts": len(prompts), "steps": steps, "guidance": guidance, "seed": seed,
                    "pairs": teacher.pairs, "pairs_per_call": keep_per_call,
                    "timesteps": sorted({round(float(t), 1) for t in teacher.timestep.unique()}, reverse=True)}
    return teacher


# ---- training ---------------------------------------------------------------------------------------
@dataclass
class DistillReport:
    steps_planned: int
    steps_done: int = 0
    stopped_by: str = "steps"  # "steps" | "time"
    time_paced: bool = False  # the time budget, not the step count, set the learning rate at some step
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    held_out_snr_db_before: float = float("nan")
    held_out_snr_db_after: float = float("nan")
    best_step: int = 0
    trainable_tensors: int = 0
    trainable_values: int = 0
    history: list = field(default_factory=list)  # (step, train loss, held-out SNR dB, wall s, cpu s)

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["history"] = [list(h) for h in self.history]
        return d


def _guided_loss(out: torch.Tensor, target: torch.Tensor, guidance: float, guided_weight: float) -> torch.Tensor:
    """Relative squared error of both rows, plus that of the guided output uncond + g·(cond − uncond)
    (what sampling uses: a small error in the difference is amplified g times)."""
    err = (out - target).float()
    loss = err.pow(2).sum() / target.float().pow(2).sum().clamp_min(1e-30)
    if guided_weight:
        ou, oc = out[0::2], out[1::2]
        tu, tc = target[0::2], target[1::2]
        g_out, g_tgt = ou + guidance * (oc - ou), tu + guidance * (tc - tu)
        loss = loss + guided_weight * (g_out - g_tgt).pow(2).sum() / g_tgt.pow(2).sum().clamp_min(1e-30)
    return loss


@torch.no_grad()
def output_snr_db(model: nn.Module, teacher: TeacherSet, pairs: torch.Tensor, chunk: int = 16) -> float:
    """10·log10(Σ target² / Σ error²) of the model's outputs on these pairs (both rows)."""
    sig = err = 0.0
    for i in range(0, len(pairs), chunk):
        inputs, target = teacher.batch(pairs[i:i + chunk])
        out = model(**inputs, return_dict=False)[0]
        sig += float(target.double().pow(2).sum())
        err += float((out.double() - target.double()).pow(2).sum())
    return 10 * math.log10(max(sig, 1e-30) / max(err, 1e-30))


def planned_steps(teacher: TeacherSet, settings: DistillSettings) -> int:
    """The steps `distill` will run unless time stops it: `steps`, capped at `max_epochs` passes over the
    training pairs (a small teacher set is not worth more: the held-out SNR stops rising)."""
    if settings.max_epochs is None or settings.steps == 0:
        return settings.steps
    train_pairs = len(teacher.split(settings.held_out_share)[0])
    return min(settings.steps, max(1, math.ceil(settings.max_epochs * train_pairs / settings.batch_pairs)))


def distill(model: nn.Module, teacher: TeacherSet, settings: DistillSettings, progress=None,
            final_mode: str = "packed") -> DistillReport:
    """Train the compressed layers' small tensors of `model` to match `teacher`; codes stay frozen.

    The learning rate anneals over whichever limit comes first, the steps or the time budget. A run paced
    by its steps alone is deterministic for a seed and a step count (the same threads give the same
    floating-point sums); the report says whether time paced or stopped it (`time_paced`, `stopped_by`).
    The tensors of the best held-out output SNR seen (step 0 included: distillation never leaves the held-out
    error worse) are written back as fp16, then every compressed layer is put in `final_mode`.
    progress: optional callable(advance: int, detail: str), once per step.
    """
    settings.check()
    tick = progress or (lambda n, d="": None)
    layers = compressed_layers(model)
    if not layers:
        raise ValueError("the model has no compressed layers to distill")
    train_pairs, held_pairs = teacher.split(settings.held_out_share)
    steps = planned_steps(teacher, settings)
    report = DistillReport(steps_planned=steps)
    # a fixed, small held-out set, cheap to score, spread evenly over the held-out pairs: pairs are recorded step by
    # step, so the first 64 alone would only cover the start of the schedule (high noise)
    keep = min(len(held_pairs), 64)
    held_pairs = held_pairs[torch.linspace(0, len(held_pairs) - 1, keep).round().long()] if keep else held_pairs
    for layer in layers.values():
        layer.set_mode("train", trainable=settings.trainable)
    params = trainable_parameters(model)
    report.trainable_tensors = len(params)
    report.trainable_values = sum(p.numel() for p in params.values())
    was_training = model.training
    model.eval()  # no dropout: the student must be the deployed function
    t0, c0 = time.perf_counter(), time.process_time()
    best = {k: p.detach().clone() for k, p in params.items()}
    report.held_out_snr_db_before = best_snr = output_snr_db(model, teacher, held_pairs)
    report.history.append((0, float("nan"), best_snr, 0.0, 0.0))
    if not params or steps == 0 or len(train_pairs) == 0:
        report.held_out_snr_db_after = best_snr
        return _finish(model, layers, report, final_mode, was_training, t0, c0)

    opt = torch.optim.Adam(list(params.values()), lr=settings.lr, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(settings.seed)
    clock = CLOCKS[settings.clock]
    start, budget = clock(), None if settings.minutes is None else 60 * settings.minutes
    warmup = max(1, min(steps // 20, 50))
    loss_avg = None
    for step in range(1, steps + 1):
        # the schedule anneals towards whichever limit comes first: the steps, or the time budget
        progress_done = (step - 1) / steps
        if budget is not None:
            spent = (clock() - start) / budget
            if spent >= 1:
                report.stopped_by = "time"
                break
            if spent > progress_done:
                progress_done, report.time_paced = spent, True
        scale = min(1.0, step / warmup) * 0.5 * (1 + math.cos(math.pi * progress_done))
        for g in opt.param_groups:
            g["lr"] = settings.lr * max(scale, 0.02)
        pick = train_pairs[torch.randint(len(train_pairs), (settings.batch_pairs,), generator=gen)]
        inputs, target = teacher.batch(pick)
        with torch.enable_grad():
            out = model(**inputs, return_dict=False)[0]
            loss = _guided_loss(out, target, settings.guidance, settings.guided_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
        report.steps_done = step
        value = float(loss.detach())
        loss_avg = value if loss_avg is None else 0.95 * loss_avg + 0.05 * value
        detail = f"loss {loss_avg:.4f} held-out {best_snr:.2f} dB"
        if step % settings.eval_every == 0 or step == steps:
            snr = output_snr_db(model, teacher, held_pairs)
            report.history.append((step, loss_avg, snr, time.perf_counter() - t0, time.process_time() - c0))
            if snr > best_snr:
                best_snr, report.best_step = snr, step
                best = {k: p.detach().clone() for k, p in params.items()}
            detail = f"loss {loss_avg:.4f} held-out {snr:.2f} dB (best {best_snr:.2f})"
        tick(1, detail)
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(best[k])
    report.held_out_snr_db_after = best_snr
    return _finish(model, layers, report, final_mode, was_training, t0, c0)


def _finish(model, layers, report: DistillReport, final_mode: str, was_training: bool, t0: float, c0: float):
    for layer in layers.values():
        layer.commit_trained()
        layer.set_mode(final_mode)
    model.train(was_training)
    report.seconds = time.perf_counter() - t0
    report.cpu_seconds = time.process_time() - c0
    return report
