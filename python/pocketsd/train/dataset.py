"""A user's training set: a folder of images and one caption per image, checked before any model loads.

Captions come from, in this order:
- `--captions FILE`: JSON `{"image.png": "caption", …}`, JSON Lines or CSV with `file_name` and `text` (or
  `caption`) columns (the Hugging Face `imagefolder` metadata layout), or plain lines `image.png<TAB>caption`;
- a sidecar text file per image (`cat.png` → `cat.txt`), the kohya/diffusers convention;
- `metadata.jsonl` / `metadata.csv` inside the folder (Hugging Face `imagefolder`).

Every problem is found in one pass and reported as one `BadInput` line that says how to fix it. Images are
prepared as diffusers' SDXL training script does: resized so the short side is the training resolution,
centre-cropped, with the original size and the crop's top-left kept for SDXL's size conditioning.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInput

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
CAPTION_HELP = ("put a caption beside each image as a .txt file of the same name (cat.png → cat.txt), or pass "
                "--captions FILE (JSON {\"cat.png\": \"caption\"}, JSONL/CSV with file_name and text, or lines "
                "'cat.png<TAB>caption')")
MIN_SIDE = 8  # smaller than one latent pixel of any VAE: certainly not a training image
# A LoRA learns a style or a subject from tens to hundreds of images; every image is decoded and held as float32
# pixels at the training size, so the count is bounded up front (10,000 files would be ~120 GB at 1024 px).
MAX_IMAGES = 2000
# Decoded pixels per image (a 100 MP photo is 300 MB as RGB): checked from the file's header, before decoding, so a
# decompression bomb (a few kB of PNG declaring gigapixels) is refused without being inflated.
MAX_PIXELS = 100_000_000
_SHOW = 3


@dataclass(frozen=True)
class Example:
    path: Path
    caption: str


@dataclass
class PreparedImages:
    """Pixels in [-1, 1] (n, 3, H, W) and SDXL's per-image size conditioning."""

    pixels: np.ndarray
    original_sizes: list[tuple[int, int]]  # (height, width) before resizing
    crops_top_left: list[tuple[int, int]]  # (top, left) of the crop in the resized image


def _listing(items: list[str]) -> str:
    more = f" and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return ", ".join(items[:_SHOW]) + more


def _read_caption_table(path: Path) -> dict[str, str]:
    """{file name: caption} from a captions file in any of the accepted layouts."""
    if not path.is_file():
        raise BadInput(f"captions file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"captions file {path} cannot be read as UTF-8 text ({type(exc).__name__})") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(text)
            if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
                raise ValueError('expected a JSON object {"image.png": "caption", …}')
            return {str(k): v for k, v in data.items()}
        if suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            return _rows_to_table(rows)
        if suffix == ".csv":
            return _rows_to_table(list(csv.DictReader(io.StringIO(text))))
        table = {}
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            name, sep, caption = line.partition("\t")
            if not sep:
                raise ValueError(f"line {number} has no TAB between the file name and the caption")
            table[name.strip()] = caption.strip()
        return table
    except (ValueError, json.JSONDecodeError, csv.Error) as exc:
        raise BadInput(f"captions file {path.name}: {str(exc).splitlines()[0]}") from None


def _rows_to_table(rows: list) -> dict[str, str]:
    table = {}
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict) or "file_name" not in row or not ({"text", "caption"} & set(row)):
            raise ValueError(f"row {number} needs file_name and text (or caption) fields")
        table[str(row["file_name"])] = str(row.get("text", row.get("caption")) or "")
    return table


def _lookup(table: dict[str, str], folder: Path, image: Path) -> str | None:
    for key in (image.name, str(image.relative_to(folder)), image.stem):
        if key in table:
            return table[key]
    return None


def find_examples(folder: Path, captions: Path | None = None) -> list[Example]:
    """The (image, caption) pairs of `folder`, sorted by file name; BadInput on an empty folder or a missing
    caption. Images are not opened here (see `prepare_images`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput(f"image folder {folder} does not exist" if not folder.exists() else f"{folder} is not a folder")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise BadInput(f"no images in {folder} (looked for {', '.join(IMAGE_SUFFIXES)} files at its top level)")
    if len(images) > MAX_IMAGES:  # before any caption or image is read: the refusal costs one listing
        raise BadInput(f"{folder} holds {len(images)} images, over the limit of {MAX_IMAGES} a LoRA trains on; "
                       f"copy a subset (tens to hundreds of images is typical) into another folder")
    table = None
    if captions is not None:
        table = _read_caption_table(Path(captions))
    else:
        meta = next((folder / m for m in METADATA_FILES if (folder / m).is_file()), None)
        if meta is not None:
            table = _read_caption_table(meta)
    examples, missing = [], []
    for image in images:
        caption = _lookup(table, folder, image) if table is not None else None
        sidecar = image.with_suffix(".txt")
        if caption is None and sidecar.is_file():
            try:
                caption = sidecar.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError):
                raise BadInput(f"caption file {sidecar} cannot be read as UTF-8 text") from None
        if not caption or not caption.strip():
            missing.append(image.name)
            continue
        examples.append(Example(image, " ".join(caption.split())))
    if missing:
        where = f"in {Path(captions).name} " if captions is not None else ""
        raise BadInput(f"{len(missing)} of {len(images)} images have no caption {where}({_listing(missing)}): "
                       f"{CAPTION_HELP}")
    return examples


def _why_unreadable(path: Path, exc: Exception) -> str:
    """A short, actionable reason for an image PIL could not decode."""
    from PIL import Image, UnidentifiedImageError

    try:
        if path.stat().st_size == 0:
            return "an empty file"
    except OSError:
        return "cannot be opened"
    if isinstance(exc, Image.DecompressionBombError):
        return f"over {MAX_PIXELS // 1_000_000} MP"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image"
    if "truncated" in str(exc).lower() or isinstance(exc, (EOFError, SyntaxError)):
        return "truncated"
    return type(exc).__name__


def _to_rgb(im):
    """RGB of any PIL mode. 16-bit and 32-bit integer images (16-bit grayscale PNGs) are scaled to 8 bits first:
    PIL's own conversion clips them at 255, which turns a 16-bit image all but white."""
    from PIL import Image

    if im.mode in ("RGBA", "LA", "P", "PA"):  # transparency: onto white, as viewers show it
        im = im.convert("RGBA")
        back = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(back, im).convert("RGB")
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im, dtype=np.float64)
        a = a / 257.0 if a.max(initial=0) > 255 else a  # a 16-bit range; an "I" image with 8-bit values as it is
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        a = a * 255.0 if a.max(initial=0) <= 1.0 else a  # [0, 1] floats, or already 0..255
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    return im.convert("RGB")


def prepare_images(examples: list[Example], resolution: int) -> PreparedImages:
    """Open, orient, resize (short side = `resolution`) and centre-crop every image; BadInput naming every
    image that cannot be read."""
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    pixels, sizes, crops, broken = [], [], [], []
    for ex in examples:
        try:
            with warnings.catch_warnings():
                # PIL warns (on stderr) between its limit and twice it, and raises above; our own, lower limit below
                # is checked from the header first, so its warning would only be a second line
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(ex.path) as im:
                    w0, h0 = im.size
                    if w0 * h0 > MAX_PIXELS:
                        broken.append(f"{ex.path.name} ({w0}×{h0} px, over the {MAX_PIXELS // 1_000_000} MP limit)")
                        continue
                    im.load()
                    im = ImageOps.exif_transpose(im)
                    if min(im.size) < MIN_SIDE:
                        broken.append(f"{ex.path.name} ({im.size[0]}×{im.size[1]} px)")
                        continue
                    rgb = _to_rgb(im)
        except (UnidentifiedImageError, OSError, ValueError, EOFError, SyntaxError, Image.DecompressionBombError) as exc:
            broken.append(f"{ex.path.name} ({_why_unreadable(ex.path, exc)})")
            continue
        w, h = rgb.size
        scale = resolution / min(w, h)
        rw, rh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
        top, left = (rh - resolution) // 2, (rw - resolution) // 2
        # Resize only the region the crop keeps (PIL's `box`, in source pixels): the same pixels as resizing the
        # whole image and cropping, without materialising the whole resized image — an 8×8000 px strip at 1024 px
        # would otherwise become a 1024×1,024,000 image (3 GB) to keep one square of it.
        box = (left * w / rw, top * h / rh, (left + resolution) * w / rw, (top + resolution) * h / rh)
        crop = rgb.resize((resolution, resolution), Image.Resampling.BICUBIC, box=box)
        pixels.append(np.asarray(crop, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0)
        sizes.append((h, w))
        crops.append((top, left))
    if broken:
        raise BadInput(f"{len(broken)} of {len(examples)} images cannot be read as images ({_listing(broken)}); "
                       "remove or re-save them")
    return PreparedImages(np.stack(pixels), sizes, crops)


def pixels_bytes(n_images: int, resolution: int) -> int:
    """What `prepare_images` holds: float32 RGB at the training size, per image."""
    return n_images * 3 * resolution * resolution * 4


def fingerprint(examples: list[Example]) -> str:
    """A digest of the files and captions (what a checkpoint must have been trained on to be resumed)."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(ex.path.name.encode())
        h.update(hashlib.sha256(ex.path.read_bytes()).digest())
        h.update(ex.caption.encode())
    return h.hexdigest()[:16]
