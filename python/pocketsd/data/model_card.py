"""The reference model's version and model card (`model_card.json` beside its weights).

`python -m pocketsd.refmodel.train --finetune` writes the card for version 2 and later: version, the model it
started from, the data grammar (share of captions with a position, share of two-object scenes) and the training
steps. Version 1 shipped without a card, so a folder with none is version 1. Every benchmark that evaluates the
reference model records `reference_model_record(folder)` in its results, so a figure stays traceable to the weights
that made it after a new version lands. Ground floor: reads JSON only.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import BadInput
from . import REFERENCE_MODEL

MODEL_CARD_FILE = "model_card.json"
VERSION_WITHOUT_CARD = 1  # the first reference model shipped without a card
# The card's facts that a results file keeps (the rest, such as run minutes and load, stays in the card itself).
RECORDED_FACTS = ("base", "grammar", "unet_steps")


def reference_model_card(folder: Path | str = REFERENCE_MODEL) -> dict:
    """The folder's model card with its `version` (an int); `{"version": 1}` when the folder has no card."""
    path = Path(folder) / MODEL_CARD_FILE
    if not path.is_file():
        return {"version": VERSION_WITHOUT_CARD}
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadInput(f"{path} is not readable JSON ({exc}); restore it from the model's release") from exc
    if not isinstance(card, dict) or not isinstance(card.get("version"), int):
        raise BadInput(f"{path} has no integer \"version\"; restore it from the model's release")
    return card


def reference_model_version(folder: Path | str = REFERENCE_MODEL) -> int:
    return reference_model_card(folder)["version"]


def is_reference_model_folder(folder: Path | str) -> bool:
    """The embedded reference model, or a folder with a model card (a version of it trained elsewhere)."""
    folder = Path(folder)
    return (folder / MODEL_CARD_FILE).is_file() or folder.resolve() == REFERENCE_MODEL.resolve()


def reference_model_record(folder: Path | str | None = None) -> dict:
    """What a results file records about the reference model it evaluated: `version`, the folder, and the card's
    grammar and training steps when it has a card. `None` means the embedded reference model."""
    folder = Path(folder) if folder is not None else REFERENCE_MODEL
    card = reference_model_card(folder)
    record = {"version": card["version"], "folder": str(folder), "card": MODEL_CARD_FILE if len(card) > 1 else None}
    record.update({k: card[k] for k in RECORDED_FACTS if k in card})
    return record


def reference_model_record_if_any(folder: Path | str | None) -> dict | None:
    """`reference_model_record` for a reference model folder, None for any other model and for no folder (a hub
    model): a results file then says the run did not measure the reference model."""
    return reference_model_record(folder) if folder is not None and is_reference_model_folder(folder) else None
