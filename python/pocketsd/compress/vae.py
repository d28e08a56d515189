"""The VAE at compress time: every eligible layer palettized by one fixed recipe, kept only if it passes a gate.

The gate compares pictures, not weights: the compressed VAE against the source VAE on
  - decode: the first calibration batch's final latents (the model's own samples, no second sampling run), and
  - round trip: those decoded images encoded (the posterior's mode) and decoded again,
as image PSNR (data range 1, per image; the gate takes the worst image of either path). Below
`recipes.VAE_MIN_PSNR_DB` the VAE is written uncompressed, and the manifest's "vae_gate" says why.

Precision: both VAEs are loaded from the source folder in fp32 and run in fp32 here, whatever dtype the pipeline is
held in while it calibrates (bf16 at SDXL's size on a CPU): the reference is the source's weights at their own
precision, and SDXL's VAE overflows in fp16 activations (diffusers' `force_upcast`), which would make an fp16
reference meaningless. The compressed weights themselves are fp16 tables/codes like every other component's;
`convert` keeps them as constexpr ops in the VAE packages, computing in fp32 where `force_upcast` says so.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from ..artifacts.compressed import ComponentPayload
from ..artifacts.model_folder import read_config
from ..models.components import component_class
from ..models.family import ModelFamily
from ..palettize.compress import compress_network, progress_total
from ..palettize.layer import compressed_layers, compressed_state_dict, set_mode
from ..palettize.recipes import VAE_MIN_PSNR_DB, Recipe


def _psnr(reference: torch.Tensor, test: torch.Tensor) -> float:
    """PSNR (data range 1) of one image pair in [-1, 1] (torchmetrics', after mapping to [0, 1])."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    to_unit = lambda x: (x.clamp(-1, 1) + 1) / 2  # noqa: E731
    return float(peak_signal_noise_ratio(to_unit(test.double()), to_unit(reference.double()), data_range=1.0))


@torch.inference_mode()
def vae_fidelity(reference, candidate, latents: torch.Tensor, scaling: float, shift: float | None) -> dict:
    """Per-image PSNR of `candidate` against `reference` (two diffusers AutoencoderKL) on the decode of `latents`
    (the denoiser's scale: divided by `scaling`, plus `shift`, as the pipelines do) and on the encode→decode round
    trip of the reference's decoded images. One image at a time (an SDXL decode at 1024² holds GBs in fp32)."""
    decode, roundtrip = [], []
    for z in latents:
        z = z[None].float() / scaling + (shift or 0.0)
        image = reference.decode(z).sample.clamp(-1, 1)
        decode.append(_psnr(image, candidate.decode(z).sample))
        ref_trip = reference.decode(reference.encode(image).latent_dist.mode()).sample
        test_trip = candidate.decode(candidate.encode(image).latent_dist.mode()).sample
        roundtrip.append(_psnr(ref_trip, test_trip))
    return {"decode_psnr_db": [round(v, 3) for v in decode], "roundtrip_psnr_db": [round(v, 3) for v in roundtrip],
            "min_psnr_db": round(min(decode + roundtrip), 3), "images": len(decode),
            "latent_size": list(latents.shape[-2:])}


def compress_vae(folder: Path, family: ModelFamily, recipes: list[Recipe], latents: torch.Tensor | None,
                 min_psnr_db: float = VAE_MIN_PSNR_DB, progress=None) -> tuple[ComponentPayload | None, dict]:
    """(the compressed VAE to write, or None when it stays uncompressed; the gate's record for the manifest).

    `recipes` are tried in order and the first whose VAE passes the gate is kept."""
    started = time.perf_counter()
    cls = component_class(folder, "vae")
    reference = cls.from_pretrained(folder / "vae", torch_dtype=torch.float32).eval().requires_grad_(False)
    scaling, shift = family.vae_normalisation(read_config(folder, "vae"))
    gate = {"threshold_db": min_psnr_db, "compute": "fp32, against the source weights", "tried": [], "passed": False}
    if latents is None or not len(latents):
        gate["reason"] = "no calibration latents to judge a compressed VAE by: the VAE is written uncompressed"
        return None, gate
    for recipe in recipes:
        candidate = copy.deepcopy(reference)
        total = progress_total(candidate, recipe)
        report = compress_network(candidate, recipe, None,
                                  lambda n, detail="": progress and progress("compressing vae", n, total, detail))
        set_mode(candidate, "dense", torch.float32)
        measured = {"recipe": recipe.name, **vae_fidelity(reference, candidate, latents, scaling, shift)}
        measured["passed"] = measured["min_psnr_db"] >= min_psnr_db
        gate["tried"].append(measured)
        if measured["passed"]:
            break
    gate["seconds"] = round(time.perf_counter() - started, 2)
    if not measured["passed"]:
        gate["reason"] = (f"no recipe reached {min_psnr_db:g} dB on its worst image (" +
                          ", ".join(f"{t['recipe']}: {t['min_psnr_db']:.2f} dB" for t in gate["tried"]) +
                          "): the VAE is written uncompressed (the source's weights)")
        return None, gate
    gate.update(passed=True, recipe=recipe.name, min_psnr_db=measured["min_psnr_db"])
    set_mode(candidate, "packed")
    report.recipe["distill"], report.recipe["distill_steps"] = "off", 0
    payload = ComponentPayload(
        state_dict=compressed_state_dict(candidate), config=read_config(folder, "vae"),
        layers=[layer.record() for layer in compressed_layers(candidate).values()], fp16_layers=report.fp16_layers,
        library=type(candidate).__module__.split(".")[0], class_name=type(candidate).__name__, recipe=report.recipe,
        calibration={"note": "no calibration: layer weight error, no smoothing", "gate": gate})
    return payload, gate
