"""The embedded reference model: a small SDXL-architecture pipeline trained by the project."""

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
LORA_DIR = Path(__file__).resolve().parent / "loras"


def reference_model_path() -> Path:
    """Folder of the shipped reference pipeline (diffusers layout)."""
    return WEIGHTS_DIR
