"""Domain presets: a short prompt expanded for a use (product shot, poster, logo, …) plus sensible defaults.

The presets live in one data file, `pocketsd/data/domains.json`, so the Swift app can ship the same file.
A preset holds a prompt template (`{prompt}` is replaced by the user's words), a negative prompt, default
steps / guidance / scheduler and optionally a LoRA with its scale. Options the user gives explicitly always win:
`apply_domain` only fills what was left unset (None).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..data import DOMAINS_FILE, REFERENCE_LORAS as LORA_DIR
from ..errors import BadInput
from .options import SCHEDULERS

PLACEHOLDER = "{prompt}"


@dataclass(frozen=True)
class LoraRef:
    file: str     # relative to the reference model's LoRA folder (pocketsd/data/reference/loras), or absolute
    scale: float

    @property
    def path(self) -> Path:
        p = Path(self.file).expanduser()
        return p if p.is_absolute() else LORA_DIR / p


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    description: str
    prompt_template: str
    negative_prompt: str
    steps: int
    guidance: float
    scheduler: str
    lora: LoraRef | None = None

    def expand(self, prompt: str) -> str:
        # str.replace, not str.format: a user's prompt may itself contain braces.
        return self.prompt_template.replace(PLACEHOLDER, prompt.strip())


@dataclass
class DomainSettings:
    """What a generation request looks like after a preset (or none) was applied."""

    domain: str | None
    prompt: str
    expanded_prompt: str
    negative_prompt: str | None
    steps: int | None
    guidance: float | None
    scheduler: str | None
    loras: list[tuple[Path, float]] = field(default_factory=list)


def _preset_from_dict(entry: dict, source: Path) -> Preset:
    where = f"{source.name}: preset {entry.get('name', '?')!r}"
    try:
        lora = entry.get("lora")
        preset = Preset(
            name=str(entry["name"]),
            title=str(entry.get("title", entry["name"])),
            description=str(entry.get("description", "")),
            prompt_template=str(entry["prompt_template"]),
            negative_prompt=str(entry.get("negative_prompt") or ""),
            steps=int(entry["steps"]),
            guidance=float(entry["guidance"]),
            scheduler=str(entry["scheduler"]),
            lora=LoraRef(str(lora["file"]), float(lora.get("scale", 1.0))) if lora else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise BadInput(f"{where} is malformed ({type(exc).__name__}: {exc})") from None
    if preset.prompt_template.count(PLACEHOLDER) != 1:
        raise BadInput(f"{where}: prompt_template must contain {PLACEHOLDER} exactly once")
    if preset.scheduler not in SCHEDULERS:
        raise BadInput(f"{where}: scheduler {preset.scheduler!r} is not one of {', '.join(SCHEDULERS)}")
    if preset.steps < 1 or preset.guidance < 0:
        raise BadInput(f"{where}: steps must be ≥ 1 and guidance ≥ 0")
    return preset


def load_presets(path: Path | None = None) -> dict[str, Preset]:
    """All presets of a domains file, in file order, validated."""
    path = Path(path) if path else DOMAINS_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BadInput(f"domains file {path} does not exist") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise BadInput(f"domains file {path} is not valid JSON ({exc})") from None
    presets: dict[str, Preset] = {}
    for entry in data.get("domains", []):
        preset = _preset_from_dict(entry, path)
        if preset.name in presets:
            raise BadInput(f"{path.name}: preset {preset.name!r} is defined twice")
        presets[preset.name] = preset
    return presets


def get_preset(name: str, path: Path | None = None) -> Preset:
    presets = load_presets(path)
    key = name.strip().lower()
    if key not in presets:
        raise BadInput(f"unknown domain {name!r}; known domains: {', '.join(presets)} (see `pocketsd domains`)")
    return presets[key]


def apply_domain(
    domain: str | None,
    prompt: str,
    *,
    negative: str | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    scheduler: str | None = None,
    loras: list[tuple[Path, float]] | tuple = (),
    path: Path | None = None,
) -> DomainSettings:
    """Fill unset options from the preset `domain` (None: no preset, everything passes through unchanged).

    The preset's LoRA is added after the user's, unless the user already gave the same file (their scale wins).
    """
    loras = [(Path(p), float(s)) for p, s in loras]
    if not domain:
        return DomainSettings(None, prompt, prompt, negative, steps, guidance, scheduler, loras)
    preset = get_preset(domain, path)
    if preset.lora is not None:
        given = {p.resolve() for p, _ in loras}
        if preset.lora.path.resolve() not in given:
            if not preset.lora.path.is_file():
                raise BadInput(
                    f"domain {preset.name!r} needs the LoRA {preset.lora.path}, which is missing "
                    "(reinstall the package or pass --lora FILE)"
                )
            loras.append((preset.lora.path, preset.lora.scale))
    return DomainSettings(
        domain=preset.name,
        prompt=prompt,
        expanded_prompt=preset.expand(prompt),
        negative_prompt=negative if negative is not None else preset.negative_prompt,
        steps=steps if steps is not None else preset.steps,
        guidance=guidance if guidance is not None else preset.guidance,
        scheduler=scheduler if scheduler is not None else preset.scheduler,
        loras=loras,
    )


def presets_table(presets: dict[str, Preset]):
    """A rich table of the presets (for `pocketsd domains`)."""
    from rich.table import Table

    table = Table(title="Domain presets (generate --domain NAME)", show_lines=False)
    for col in ("name", "title", "prompt template", "steps", "guidance", "scheduler", "LoRA"):
        table.add_column(col, overflow="fold", no_wrap=col == "name")
    for p in presets.values():
        if p.lora is None:
            lora = "-"
        else:
            lora = f"{p.lora.file} ×{p.lora.scale:g}" + ("" if p.lora.path.is_file() else " (not installed)")
        table.add_row(p.name, p.title, p.prompt_template, str(p.steps), f"{p.guidance:g}", p.scheduler, lora)
    return table
