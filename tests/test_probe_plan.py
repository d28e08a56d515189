"""The budget's probe plan scales to SDXL's real size by probing at a smaller latent side (`plan_probes`)."""

from __future__ import annotations

from pocketsd.palettize.compress import plan_probes

PALETTE_BITS = (1, 2, 3, 4, 6, 8)


def test_real_size_sdxl_probes_at_an_eighth_of_the_side():
    # SDXL base: 128² latents, 3 levels (down factor 4); the compressible UNet layers counted on the real config
    plan = plan_probes(layers=794, calibration_evaluations=1024, bits=PALETTE_BITS, available_samples=32,
                       latent_hw=(128, 128), down_factor=4, limit=2000)
    assert plan.total <= 2000
    assert plan.scale == 0.125 and plan.samples == 8 and plan.bits == PALETTE_BITS
    # the same samples at half the side (the smallest side before) would be 16× the probe cost
    assert plan.probe_evaluations * 16 == (1 + 794 * len(PALETTE_BITS)) * plan.samples * 0.5 ** 2


def test_small_latents_keep_whole_levels():
    # 16² latents with a down factor of 4: 1/2 (8²) and 1/4 (4²) keep every level whole, 1/8 (2²) would not
    plan = plan_probes(198, 1024, PALETTE_BITS, 32, (16, 16), 4, limit=10)
    assert plan.scale == 0.25  # over the limit at every rung: the cheapest plan, at the smallest whole side


def test_reference_model_plan_is_unchanged():
    # the reference model's default (198 UNet layers, 16² latents, 1024 calibration evaluations): 2 samples at half
    # the side, as in every reference-model result so far (a quarter of the side is never preferred to it)
    plan = plan_probes(198, 1024, (1, 2, 3, 4, 6), 32, (16, 16), 4, limit=2000)
    assert (plan.samples, plan.scale) == (2, 0.5)


def test_plan_prefers_native_size_when_it_fits():
    plan = plan_probes(10, 100, PALETTE_BITS, 32, (128, 128), 4, limit=100_000)
    assert plan.scale == 1.0 and plan.samples == 32
