"""Shared fixtures. Tests run on the shipped reference model (small, fast on a CPU)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def ref_model_path() -> Path:
    from pocketsd.data import REFERENCE_MODEL

    path = REFERENCE_MODEL
    if not (path / "model_index.json").is_file():
        pytest.fail("the reference model is not in the package: run `make tiny-model`")
    return path


@pytest.fixture(scope="session")
def ref_pipeline(ref_model_path):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.from_pretrained(ref_model_path, torch_dtype=torch.float32)


@pytest.fixture(scope="session")
def convert_model_path(request) -> Path:
    # POCKETSD_CONVERT_TEST_MODEL runs the conversion tests on another SDXL-layout folder (e.g. a bigger model).
    other = os.environ.get("POCKETSD_CONVERT_TEST_MODEL")
    return Path(other) if other else request.getfixturevalue("ref_model_path")
