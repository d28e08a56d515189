"""Reference numbers for the Swift tests, computed by the Python side's own code.

The Swift loop (Sources/PocketSDKit/Core/Diffusion/) must give the images the Python CLI gives for a seed. What
decides that is not Core ML (the networks are the same files on both sides) but everything around the networks:
torch's CPU random numbers, diffusers' schedulers and pocketsd's loop (`pocketsd.pipeline.generate.generate`). This
script runs exactly that code and writes what it produced, so the Swift tests compare against the real thing:

  rng.json         torch.randn for several seeds and shapes (both of torch's paths: < 16 values and >= 16)
  schedulers.json  timesteps, sigmas and a short run of euler / dpmpp2m / ddim (diffusers) for three spacings
  loop.json        whole runs of pocketsd's loop over small fake networks (text → image, image → image, CFG on/off,
                   no negative prompt vs an explicit one): final latents and the decoded 8-bit pixels
  inpaint.json     masks through `inputs.load_mask` (hole, feathered alpha) and `generate.latent_mask`, and whole
                   inpainting runs over the same fake networks (strength 1.0 from noise and below, paste-back on/off)

The fake networks are simple closed-form functions written twice, here and in Tests/PocketSDKitTests/FakeModels.swift;
a change to one must be made to the other.

    .venv/bin/python swift-app/scripts/make_fixtures.py [NAME ...]   (from the repository root; a few seconds;
                                                                     NAME: rng, schedulers, loop, inpaint; default all)
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "swift-app" / "Tests" / "PocketSDKitTests" / "Fixtures"
sys.path.insert(0, str(ROOT / "python"))

from pocketsd.models.family import SDXL  # noqa: E402
from pocketsd.pipeline.generate import GenerationRequest, generate, make_scheduler  # noqa: E402

SCHEDULER_CONFIG = json.loads((ROOT / "python/pocketsd/data/reference/model/scheduler/scheduler_config.json").read_text())


def floats(t) -> list[float]:
    return [float(x) for x in torch.as_tensor(t).flatten().tolist()]


# ---- torch.randn -----------------------------------------------------------------------------------
def rng_fixture() -> dict:
    cases = []
    for seed in (0, 1, 42, 4294967295):
        for shape in ((7,), (1, 4, 3, 5), (1, 4, 4, 4), (1, 4, 16, 16)):
            g = torch.Generator().manual_seed(seed)
            cases.append({"seed": seed, "shapes": [list(shape)], "values": [floats(torch.randn(shape, generator=g))]})
    # Draws follow each other on one generator (image → image: the encoder sample, then the noise).
    g = torch.Generator().manual_seed(5)
    shapes = [(1, 4, 3, 5), (1, 4, 3, 5), (3,), (1, 4, 4, 4)]
    cases.append({"seed": 5, "shapes": [list(s) for s in shapes],
                  "values": [floats(torch.randn(s, generator=g)) for s in shapes]})
    return {"torch": torch.__version__, "cases": cases}


# ---- schedulers ----------------------------------------------------------------------------------------
def fake_eps(x: torch.Tensor, t: float) -> torch.Tensor:
    return 0.1 * x + 0.0005 * t


def scheduler_fixture() -> dict:
    cases = []
    for spacing in ("leading", "linspace", "trailing"):
        config = dict(SCHEDULER_CONFIG, timestep_spacing=spacing)
        for name in ("euler", "dpmpp2m", "ddim"):
            for steps in (1, 2, 4, 9, 20):
                for strength in (None, 0.6):
                    s = make_scheduler(name, config)
                    s.set_timesteps(steps)
                    timesteps = s.timesteps
                    g = torch.Generator().manual_seed(3)
                    noise = torch.randn((1, 4, 2, 2), generator=g)
                    begin = 0
                    if strength is None:
                        if hasattr(s, "set_begin_index"):
                            s.set_begin_index(0)
                        x = noise * s.init_noise_sigma
                    else:
                        begin = max(steps - min(int(steps * strength), steps), 0)
                        timesteps = s.timesteps[begin:]
                        if len(timesteps) == 0:
                            continue
                        if hasattr(s, "set_begin_index"):
                            s.set_begin_index(begin)
                        original = torch.linspace(-1, 1, 16).reshape(1, 4, 2, 2)
                        x = s.add_noise(original, noise, timesteps[:1])
                    start = x.clone()
                    for t in timesteps:
                        model_in = s.scale_model_input(x, t)
                        x = s.step(fake_eps(model_in, float(t)), t, x, return_dict=False)[0]
                    case = {"scheduler": name, "spacing": spacing, "steps": steps, "strength": strength,
                            "begin_index": begin, "timesteps": floats(s.timesteps),
                            "init_noise_sigma": float(s.init_noise_sigma), "noise": floats(noise),
                            "start": floats(start), "final": floats(x)}
                    if hasattr(s, "sigmas") and name != "ddim":
                        case["sigmas"] = floats(s.sigmas)
                    cases.append(case)
    return {"config": SCHEDULER_CONFIG, "cases": cases}


# ---- the whole loop over fake networks -----------------------------------------------------------------
BOS, EOS, PAD = 49406, 49407, 0


def fake_token_ids(text: str, length: int = 77) -> list[int]:
    body = [ord(c) % 1000 for c in text][: length - 2]
    ids = [BOS] + body + [EOS]
    return ids + [PAD] * (length - len(ids))


class FakeTokenizer:
    model_max_length = 77

    def __call__(self, texts, padding=None, max_length=None, truncation=None, return_tensors=None):
        class Out:  # noqa: D401 - the attribute the loop reads
            pass

        out = Out()
        if isinstance(texts, str):  # truncation_warning's call: unpadded ids
            out.input_ids = [BOS] + [ord(c) % 1000 for c in texts] + [EOS]
            return out
        out.input_ids = torch.tensor([fake_token_ids(t) for t in texts])
        return out

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


HIDDEN = (4, 6)  # hidden width of the two fake text encoders
POOLED = 3


def fake_text(index: int, ids: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
    hidden = np.array([[math.sin(0.01 * i * (d + 1) + 0.5 * index) for d in range(HIDDEN[index])] for i in ids], np.float32)
    pooled = np.array([math.cos(0.001 * sum(ids) + p) for p in range(POOLED)], np.float32) if index == 1 else None
    return hidden, pooled


class FakeBackend:
    name = "fake"
    family = SDXL  # the loop reads time_ids and the pooled encoder from the family (pocketsd.models.family)
    vae_scale_factor = 8
    latent_channels = 4
    scaling_factor = 0.5
    shift_factor = None
    default_size = (24, 40)

    def __init__(self, force_zeros: bool = True):
        self.tokenizers = [FakeTokenizer(), FakeTokenizer()]
        self.scheduler_config = SCHEDULER_CONFIG
        self.force_zeros_for_empty_prompt = force_zeros
        self.events: list[str] = []

    def load(self, component: str) -> None:
        self.events.append(f"load {component}")

    def unload(self, component: str) -> None:
        self.events.append(f"unload {component}")

    def encode_text(self, index, input_ids):
        hidden, pooled = zip(*(fake_text(index, row.tolist()) for row in input_ids))
        return np.stack(hidden), (np.stack(pooled) if pooled[0] is not None else None)

    def unet(self, latents, timestep, encoder_hidden_states, added_cond=None, **extra):
        out = []
        for b in range(latents.shape[0]):
            shift = (0.0005 * float(timestep[b]) + 0.05 * float(encoder_hidden_states[b].mean())
                     + 0.02 * float(added_cond["text_embeds"][b].mean()) + 1e-5 * float(added_cond["time_ids"][b].sum()))
            out.append(0.1 * latents[b] + shift)
        return torch.stack(out)

    def vae_decode(self, latents):
        z = latents[0]
        up = z.repeat_interleave(8, dim=1).repeat_interleave(8, dim=2)
        return torch.tanh(up[:3] + 0.3 * up[3:4])[None]

    def vae_encode(self, images):
        x = images[0]
        _, h, w = x.shape
        blocks = x.reshape(3, h // 8, 8, w // 8, 8).mean(dim=(2, 4))
        mean = torch.stack([0.5 * blocks[c % 3] + 0.1 * c for c in range(4)])
        logvar = torch.stack([torch.full_like(blocks[0], -1.0 - 0.2 * c) for c in range(4)])
        return torch.cat([mean, logvar])[None]


class FakeInpaintBackend(FakeBackend):
    """An inpainting UNet (9 input channels: latents, mask, masked-image latents) over the same fakes."""
    unet_in_channels = 9

    def unet(self, latents, timestep, encoder_hidden_states, added_cond=None, **extra):
        mixed = 0.1 * latents[:, :4] + 0.05 * latents[:, 4:5] + 0.02 * latents[:, 5:9]
        return super().unet(mixed / 0.1, timestep, encoder_hidden_states, added_cond, **extra)


def init_image(height: int, width: int) -> torch.Tensor:
    y, x = np.mgrid[0:height, 0:width]
    planes = [((x * 7 + y * 3 + c * 11) % 17) / 8.0 - 1.0 for c in range(3)]
    return torch.tensor(np.stack(planes)[None], dtype=torch.float32)


def loop_fixture() -> dict:
    cases = [
        dict(scheduler="euler", steps=4, guidance=5.0, seed=1, negative=None),
        dict(scheduler="dpmpp2m", steps=9, guidance=3.5, seed=7, negative="blurry"),
        dict(scheduler="ddim", steps=5, guidance=1.0, seed=2, negative=None),
        dict(scheduler="euler", steps=10, guidance=5.0, seed=3, negative="", strength=0.6),
        dict(scheduler="dpmpp2m", steps=8, guidance=4.0, seed=11, negative=None, strength=0.75),
        dict(scheduler="ddim", steps=6, guidance=2.0, seed=4, negative=None, force_zeros=False),
        dict(scheduler="dpmpp2m", steps=20, guidance=6.0, seed=9, negative=None),
    ]
    out = []
    for case in cases:
        backend = FakeBackend(force_zeros=case.get("force_zeros", True))
        h, w = backend.default_size
        request = GenerationRequest(prompt="a red circle on a white background", negative_prompt=case["negative"],
                                    steps=case["steps"], guidance=case["guidance"], seed=case["seed"],
                                    scheduler=case["scheduler"], height=h, width=w,
                                    init_image=init_image(h, w) if "strength" in case else None,
                                    strength=case.get("strength", 0.8))
        result = generate(backend, request, low_memory=True)
        pixels = np.asarray(result.images[0], dtype=np.uint8)
        out.append({**case, "prompt": request.prompt, "force_zeros": backend.force_zeros_for_empty_prompt,
                    "height": h, "width": w, "timesteps": result.timesteps, "latents": floats(result.latents),
                    "pixels": [int(v) for v in pixels.flatten()], "events": backend.events})
    return {"scaling_factor": FakeBackend.scaling_factor, "cases": out}


def fixture_mask(kind: str, height: int = 24, width: int = 40) -> np.ndarray:
    """8-bit masks at the fake bundle's size, white = repaint: a rectangle off the 8-px grid, and a disc."""
    y, x = np.mgrid[0:height, 0:width]
    if kind == "rect":
        hole = (x >= 13) & (x < 29) & (y >= 5) & (y < 14)
    else:
        hole = (x - 26.5) ** 2 + (y - 13.0) ** 2 <= 36
    return np.where(hole, 255, 0).astype(np.uint8)


def inpaint_fixture() -> dict:
    from PIL import Image

    from pocketsd.pipeline.generate import latent_mask
    from pocketsd.pipeline.inputs import load_mask

    masks = []
    for kind in ("rect", "disc"):
        gray = fixture_mask(kind)
        for blur in (0, 1, 4):
            loaded = load_mask(Image.fromarray(gray, "L"), 40, 24, blur=blur, warn=None)
            masks.append({"kind": kind, "blur": blur, "pixels": [int(v) for v in gray.flatten()],
                          "alpha": floats(torch.from_numpy(loaded.alpha)),
                          "latent": floats(latent_mask(loaded.tensor(), 8))})
    runs = []
    cases = [
        dict(scheduler="euler", steps=4, guidance=5.0, seed=1, strength=1.0, kind="rect", blur=4, paste_back=True),
        dict(scheduler="dpmpp2m", steps=6, guidance=4.0, seed=5, strength=0.75, kind="disc", blur=4, paste_back=True),
        dict(scheduler="ddim", steps=5, guidance=1.0, seed=2, strength=1.0, kind="disc", blur=0, paste_back=False),
        dict(scheduler="euler", steps=8, guidance=3.0, seed=9, strength=0.5, kind="rect", blur=1, paste_back=False),
        dict(scheduler="euler", steps=4, guidance=5.0, seed=3, strength=1.0, kind="disc", blur=4, paste_back=True,
             inpaint_unet=True),
        dict(scheduler="dpmpp2m", steps=6, guidance=4.0, seed=8, strength=0.75, kind="rect", blur=1, paste_back=False,
             inpaint_unet=True),
    ]
    for case in cases:
        backend = FakeInpaintBackend() if case.get("inpaint_unet") else FakeBackend()
        h, w = backend.default_size
        loaded = load_mask(Image.fromarray(fixture_mask(case["kind"]), "L"), w, h, blur=case["blur"], warn=None)
        request = GenerationRequest(prompt="a red circle on a white background", negative_prompt=None,
                                    steps=case["steps"], guidance=case["guidance"], seed=case["seed"],
                                    scheduler=case["scheduler"], height=h, width=w, init_image=init_image(h, w),
                                    strength=case["strength"], mask=loaded.tensor(), paste_back=case["paste_back"])
        result = generate(backend, request, low_memory=True)
        pixels = np.asarray(result.images[0], dtype=np.uint8)
        runs.append({**case, "prompt": request.prompt, "timesteps": result.timesteps, "latents": floats(result.latents),
                     "pixels": [int(v) for v in pixels.flatten()]})
    return {"height": 24, "width": 40, "masks": masks, "runs": runs}


FIXTURES = {"rng": rng_fixture, "schedulers": scheduler_fixture, "loop": loop_fixture, "inpaint": inpaint_fixture}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    names = sys.argv[1:] or list(FIXTURES)
    for name, make in ((name, FIXTURES[name]) for name in names):
        path = OUT / f"{name}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(make(), separators=(",", ":")) + "\n")
        tmp.replace(path)
        print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
