"""Prompt sets for calibration and evaluation: one `Prompt` type, readers for the field's prompt files, deterministic
subsampling and per-prompt seeds.

`load_prompt_set(name_or_path, count=None, seed=0)` is the one entry point. It takes

| name or file | what it reads | prompt ids | category |
| --- | --- | --- | --- |
| `pocketsd` (default for every model but the reference model) | `data/prompts/pocketsd.json`, the project's own 288 prompts | `<category>-<nn>` | yes |
| `reference` | the reference model's 54 adherence scenes (`data.grammar.adherence_scenes`), each with its `Scene` | `ref-<color>-<shape>-<background>` | background |
| `reference-all` | every grammar caption (324 scenes, with positions) | `ref-…[-<position>]` | background |
| `reference-held-out` | the 18 adherence scenes of combinations compression never sees (`data.grammar.HELD_OUT_RULE`) | as `reference` | background |
| `reference-in-set` | the other 36 adherence scenes (compression draws its prompts from these combinations) | as `reference` | background |
| MJHQ-30K `meta_data.json` | `{image_id: {"category", "prompt"}}` | the image id | yes |
| sDCI `sDCI.yaml` (SVDQuant's DCI subset, `mit-han-lab/svdquant-datasets`) | `{name: prompt}` | the name | no |
| COCO captions JSON (`captions_val2014.json`, …) | `annotations[].caption`, one caption per image (lowest annotation id) unless `coco_all_captions=True` | `coco-<annotation id>` | no |
| Karpathy's `dataset_coco.json` (what DeepCompressor reads) | `images[].sentences[].raw`, one per image, chosen as DeepCompressor does | `coco-<imgid>` | the split |
| PartiPrompts `PartiPrompts.tsv` | the `Prompt` and `Category` columns | `parti-<row>` (1 = first prompt row) | yes |
| a `.json` file in PocketSD's own format | `{"format": "pocketsd-prompts", "prompts": [{"id", "prompt", "category"}]}` | as written | as written |
| a plain text file (`.txt` or anything else) | one prompt a line; blank lines and lines starting with `#` skipped | `line-<n>` (line number in the file) | no |

Where the field's files come from (run once, online; nothing here downloads):
`hf download playgroundai/MJHQ-30K meta_data.json --repo-type dataset`,
`hf download mit-han-lab/svdquant-datasets sDCI.yaml --repo-type dataset`, COCO's `captions_val2014.json` from
`annotations_trainval2014.zip` on cocodataset.org, `PartiPrompts.tsv` from github.com/google-research/parti.

Subsampling follows DeepCompressor's `max_dataset_size`: the prompts in file order are shuffled by
`random.Random(seed)` and the first `count` kept, then put back in file order. For MJHQ and sDCI with seed 0 this
is the same subset DeepCompressor and SVDQuant evaluate.

`prompt_seed(prompt_id, base)` gives each prompt its generation seed from its id (sha256, so the same on every
machine and process; Python's `hash()` is salted per process), so a subset, a shard or a re-run generates every
prompt with the same noise.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable

from . import PROMPTS_DIR
from .grammar import Scene, adherence_scenes, all_scenes, held_out_scenes, in_set_scenes
from ..errors import BadInput

OWN_FORMAT = "pocketsd-prompts"
OWN_FORMAT_VERSION = 1
DEFAULT_SET = "pocketsd"  # every model but the reference model
REFERENCE_SET = "reference"  # the reference model: its grammar, scored by adherence
HELD_OUT_SET = "reference-held-out"  # … only the combinations compression never sees
IN_SET_SET = "reference-in-set"  # … only those it draws its calibration and distillation prompts from
DEFAULT_SUBSAMPLE_SEED = 0  # DeepCompressor's random.Random(0)


@dataclass(frozen=True)
class Prompt:
    """One prompt: a stable id (seeds and file names derive from it), the text, an optional category and, for the
    reference grammar, the `Scene` the adherence classifier checks the image against."""

    id: str
    text: str
    category: str | None = None
    scene: Scene | None = None


@dataclass(frozen=True)
class PromptSet:
    name: str  # the set's name, or the file it came from
    source: str  # what was read: "builtin:<name>" or the file's path
    format: str  # pocketsd | grammar | mjhq | sdci | coco | coco-karpathy | parti | text
    prompts: tuple[Prompt, ...]
    total: int  # prompts in the source before subsampling
    subsample_seed: int | None = None  # set when `count` cut the set
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self):
        return iter(self.prompts)

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.prompts]

    @property
    def texts(self) -> list[str]:
        return [p.text for p in self.prompts]

    def describe(self) -> dict:
        """What a report records about the set (enough to rebuild it)."""
        return {"name": self.name, "source": self.source, "format": self.format, "count": len(self.prompts),
                "total": self.total, "subsample_seed": self.subsample_seed, "notes": list(self.notes)}


def prompt_seed(prompt_id: str, base: int = 0) -> int:
    """The generation seed of one prompt: sha256 of "<base>:<id>", first 8 bytes, reduced below 2**31 - 1
    (every generator, including numpy's legacy one, accepts it)."""
    digest = hashlib.sha256(f"{int(base)}:{prompt_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % (2**31 - 1)


def subsample(prompts: list[Prompt], count: int | None, seed: int = DEFAULT_SUBSAMPLE_SEED) -> list[Prompt]:
    """`count` prompts chosen as DeepCompressor does (Random(seed).shuffle, first `count`), kept in file order."""
    if count is None or count >= len(prompts):
        return list(prompts)
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    return [prompts[i] for i in sorted(order[:count])]


def builtin_sets() -> list[str]:
    return sorted({DEFAULT_SET, REFERENCE_SET, HELD_OUT_SET, IN_SET_SET, "reference-all",
                   *(p.stem for p in PROMPTS_DIR.glob("*.json"))})


def load_prompt_set(name_or_path: str | Path = DEFAULT_SET, count: int | None = None,
                    seed: int = DEFAULT_SUBSAMPLE_SEED, *, categories: Iterable[str] | None = None,
                    coco_all_captions: bool = False) -> PromptSet:
    """Read a built-in set by name or a prompt file (format from its content and suffix); optionally keep only
    `categories`, then `count` prompts (deterministic in `seed`). Raises BadInput with one line naming the file and
    what is wrong."""
    if count is not None and (not isinstance(count, int) or count < 1):
        raise BadInput(f"prompt count must be a positive integer, got {count!r}")
    name = str(name_or_path)
    if isinstance(name_or_path, str) and name in builtin_sets():
        full = _builtin(name)
    else:
        full = _read_file(Path(name_or_path).expanduser(), coco_all_captions=coco_all_captions)
    _check_unique(full)
    if categories is not None:
        wanted = set(categories)
        have = sorted({p.category for p in full.prompts if p.category})
        unknown = sorted(wanted - set(have))
        if unknown:
            raise BadInput(f"{full.source}: no category {', '.join(unknown)} (it has: {', '.join(have) or 'none'})")
        kept = tuple(p for p in full.prompts if p.category in wanted)
        full = replace(full, prompts=kept, notes=full.notes + (f"categories: {', '.join(sorted(wanted))}",))
    if count is not None and count > len(full.prompts):
        raise BadInput(f"{full.source}: {count} prompts asked for, it has {len(full.prompts)}")
    if count is None or count == len(full.prompts):
        return full
    return replace(full, prompts=tuple(subsample(list(full.prompts), count, seed)), subsample_seed=seed)


def scenes_of(prompt_set: PromptSet | Iterable[Prompt]) -> list[Scene]:
    """The grammar scenes of a reference-model set (for `eval.adherence.score_adherence`)."""
    prompts = list(prompt_set)
    missing = [p.id for p in prompts if p.scene is None]
    if missing:
        raise BadInput(f"prompts {missing[:3]} have no grammar scene; adherence needs the reference set")
    return [p.scene for p in prompts]


# --- built-in sets ---------------------------------------------------------------------------------------------


def _scene_id(scene: Scene) -> str:
    parts = ["ref", scene.color, scene.shape, scene.background]
    if scene.position:
        parts.append(scene.position.split()[-1])  # "in the center" → center, "on the left" → left, …
    if scene.style != "plain":
        parts.append(scene.style)
    return "-".join(parts)


def _grammar_set(name: str, scenes: list[Scene]) -> PromptSet:
    prompts = tuple(Prompt(_scene_id(s), s.caption, s.background, s) for s in scenes)
    return PromptSet(name, f"builtin:{name}", "grammar", prompts, len(prompts))


def _builtin(name: str) -> PromptSet:
    if name == REFERENCE_SET:
        return _grammar_set(name, adherence_scenes())
    if name == "reference-all":
        return _grammar_set(name, all_scenes())
    if name == HELD_OUT_SET:
        return _grammar_set(name, held_out_scenes())
    if name == IN_SET_SET:
        return _grammar_set(name, in_set_scenes())
    path = PROMPTS_DIR / f"{name}.json"
    found = _read_file(path)
    return replace(found, name=name, source=f"builtin:{name}")


# --- files -----------------------------------------------------------------------------------------------------


def _read_file(path: Path, coco_all_captions: bool = False) -> PromptSet:
    if not path.exists():
        sets = ", ".join(builtin_sets())
        raise BadInput(f"{path}: no such prompt file (built-in sets: {sets})")
    if not path.is_file():
        raise BadInput(f"{path}: is not a file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise BadInput(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    suffix = path.suffix.lower()
    if suffix == ".json":
        prompts, fmt = _read_json(path, text, coco_all_captions)
    elif suffix in (".yaml", ".yml"):
        prompts, fmt = _read_sdci(path, text), "sdci"
    elif suffix == ".tsv":
        prompts, fmt = _read_parti(path, text), "parti"
    else:
        prompts, fmt = _read_text(text), "text"
    if not prompts:
        raise BadInput(f"{path}: holds no prompts")
    return PromptSet(path.stem, str(path), fmt, tuple(prompts), len(prompts))


def _read_text(text: str) -> list[Prompt]:
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(Prompt(f"line-{number}", line))
    return out


def _read_json(path: Path, text: str, coco_all_captions: bool) -> tuple[list[Prompt], str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if isinstance(data, dict) and data.get("format") == OWN_FORMAT:
        return _read_own(path, data), "pocketsd"
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        return _read_coco(path, data, coco_all_captions), "coco"
    if isinstance(data, dict) and isinstance(data.get("images"), list) and data["images"] \
            and isinstance(data["images"][0], dict) and "sentences" in data["images"][0]:
        return _read_karpathy(path, data), "coco-karpathy"
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        return _read_mjhq(path, data), "mjhq"
    raise BadInput(f"{path}: JSON of no known prompt format (expected PocketSD's {{\"format\": \"{OWN_FORMAT}\"}}, "
                   "MJHQ-30K meta_data.json, COCO captions or Karpathy's dataset_coco.json)")


def _text_field(path: Path, where: str, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadInput(f"{path}: {where} has no prompt text")
    return " ".join(value.split())  # captions carry stray newlines and double spaces


def _read_own(path: Path, data: dict) -> list[Prompt]:
    version = data.get("version")
    if version != OWN_FORMAT_VERSION:
        raise BadInput(f"{path}: {OWN_FORMAT} version {version!r} is not supported (this PocketSD reads "
                       f"{OWN_FORMAT_VERSION}); update PocketSD")
    items = data.get("prompts")
    if not isinstance(items, list):
        raise BadInput(f"{path}: \"prompts\" must be a list")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
            raise BadInput(f"{path}: prompt {i} has no string \"id\"")
        category = item.get("category")
        out.append(Prompt(item["id"], _text_field(path, f"prompt {item['id']}", item.get("prompt")),
                          category if isinstance(category, str) else None))
    return out


def _read_mjhq(path: Path, data: dict) -> list[Prompt]:
    out = []
    for key, entry in data.items():
        if "prompt" not in entry:
            raise BadInput(f"{path}: entry {key} has no \"prompt\" (MJHQ-30K meta_data.json maps image id → "
                           "{\"category\", \"prompt\"})")
        category = entry.get("category")
        out.append(Prompt(str(key), _text_field(path, f"entry {key}", entry["prompt"]),
                          category if isinstance(category, str) else None))
    return out


def _read_sdci(path: Path, text: str) -> list[Prompt]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "parse error"
        raise BadInput(f"{path}: not valid YAML ({where})") from None
    if not isinstance(data, dict):
        raise BadInput(f"{path}: expected a YAML mapping of name → prompt (sDCI.yaml), got {type(data).__name__}")
    return [Prompt(str(key), _text_field(path, f"entry {key}", value)) for key, value in data.items()]


def _read_coco(path: Path, data: dict, all_captions: bool) -> list[Prompt]:
    annotations = []
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "id" not in ann or "caption" not in ann:
            raise BadInput(f"{path}: annotation {i} lacks \"id\" or \"caption\" (COCO captions format)")
        annotations.append(ann)
    if not all_captions:  # one caption per image, the one with the lowest annotation id, in first-seen image order
        first: dict = {}
        for ann in annotations:
            key = ann.get("image_id", ann["id"])
            if key not in first or ann["id"] < first[key]["id"]:
                first[key] = ann
        annotations = list(first.values())
    return [Prompt(f"coco-{ann['id']}", _text_field(path, f"annotation {ann['id']}", ann["caption"]))
            for ann in annotations]


def _read_karpathy(path: Path, data: dict) -> list[Prompt]:
    out = []
    for i, image in enumerate(data["images"]):
        sentences = image.get("sentences") if isinstance(image, dict) else None
        if not sentences or not isinstance(sentences[0], dict) or "raw" not in sentences[0]:
            raise BadInput(f"{path}: image {i} has no sentences[].raw (Karpathy's dataset_coco.json format)")
        key = image.get("imgid", i)
        stem = str(image.get("filename", key)).rsplit(".", 1)[0]
        raw = sentences[_string_code(stem) % len(sentences)]["raw"]
        out.append(Prompt(f"coco-{key}", _text_field(path, f"image {key}", raw), image.get("split")))
    return out


def _string_code(text: str) -> int:
    """Which of an image's captions DeepCompressor uses: a base-31 polynomial of the file stem modulo 1e9+7."""
    code = 0
    for char in text:
        code = (code * 31 + ord(char)) % 1_000_000_007
    return code


def _read_parti(path: Path, text: str) -> list[Prompt]:
    # QUOTE_NONE: Parti prompts contain double quotes ("Fly an airplane") that are text, not CSV quoting.
    rows = list(csv.reader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or "Prompt" not in rows[0]:
        raise BadInput(f"{path}: the first row must name the columns and include \"Prompt\" (PartiPrompts.tsv)")
    header = rows[0]
    col_prompt = header.index("Prompt")
    col_category = header.index("Category") if "Category" in header else None
    out = []
    for row_number, row in enumerate(rows[1:], start=1):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= col_prompt:
            raise BadInput(f"{path}: row {row_number + 1} has {len(row)} columns, the header {len(header)}")
        category = row[col_category].strip() if col_category is not None and col_category < len(row) else None
        out.append(Prompt(f"parti-{row_number}", _text_field(path, f"row {row_number + 1}", row[col_prompt]),
                          category or None))
    return out


def _check_unique(prompt_set: PromptSet) -> None:
    seen: set[str] = set()
    for p in prompt_set.prompts:
        if p.id in seen:
            raise BadInput(f"{prompt_set.source}: prompt id {p.id!r} appears twice; ids must be unique")
        seen.add(p.id)
