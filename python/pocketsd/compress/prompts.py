"""Which prompts calibration samples: a user's file (one prompt per line, or any prompt-set file
`pocketsd.data.prompt_sets` reads), the reference model's own grammar, or the project's shipped set."""

from __future__ import annotations

from pathlib import Path

from ..data import REFERENCE_MODEL
from ..errors import BadInput
from ..palettize.calibrate import CalibrationSettings


def read_prompt_file(path: Path) -> list[str]:
    """One prompt per non-empty line (lines starting with # are comments)."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"calibration prompt file {path} does not exist")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"calibration prompt file {path} is not readable text ({type(exc).__name__})") from None
    prompts = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if not prompts:
        raise BadInput(f"calibration prompt file {path} has no prompts (one per line)")
    return prompts


def is_reference_model(folder: Path) -> bool:
    try:
        return Path(folder).resolve() == REFERENCE_MODEL.resolve()
    except OSError:
        return False


def calibration_prompts(folder: Path, settings: CalibrationSettings, prompt_file: Path | None = None) -> list[str]:
    """The reference model calibrates on its caption grammar (the only words it knows); every other model on
    the project's shipped prompt set; a user's file wins over both."""
    if prompt_file is not None:
        if Path(prompt_file).suffix.lower() in (".json", ".tsv", ".yaml", ".yml"):  # MJHQ, COCO, Parti, sDCI, ours
            from ..data.prompt_sets import load_prompt_set

            return load_prompt_set(Path(prompt_file)).texts
        return read_prompt_file(prompt_file)
    if is_reference_model(folder):
        from ..data.grammar import calibration_prompts as grammar_prompts

        return grammar_prompts(settings.count, settings.seed)
    from ..data.prompt_sets import DEFAULT_SET, load_prompt_set

    return load_prompt_set(DEFAULT_SET, count=settings.count, seed=settings.seed).texts
