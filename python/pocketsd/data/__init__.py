"""Ground-floor data shipped inside the package: the reference model's weights and LoRAs, its caption grammar,
the domain presets and the prompt sets. Paths only; nothing here imports anything above it."""

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
REFERENCE_DIR = DATA_DIR / "reference"
REFERENCE_MODEL = REFERENCE_DIR / "model"  # a diffusers SDXL folder (plus controlnet/ when trained)
REFERENCE_LORAS = REFERENCE_DIR / "loras"
DOMAINS_FILE = DATA_DIR / "domains.json"
PROMPTS_DIR = DATA_DIR / "prompts"
