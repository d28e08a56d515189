"""What a visitor hands the page, checked before anything loads: uploaded images and sketchpad drawings.

Each problem becomes one `BadInput` line the page shows in its message box: a file over the size limit (checked on
the bytes, before decoding), over the pixel limit (read from the header, before decoding), not an image or broken
(`pipeline.inputs.open_image` decodes it fully), or a sketch with nothing drawn. What passes is a file path, the
same kind of input the CLI hands the pipeline.
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import BadInput
from ..pipeline.inputs import open_image

_counter = itertools.count(1)
_counter_lock = threading.Lock()


def _mb(nbytes: float) -> str:
    return f"{nbytes / 2**20:.1f} MB"


def check_upload(path: str | Path | None, max_bytes: int, max_pixels: int) -> Path:
    """An uploaded image file that is within the limits and decodes; its path."""
    if path is None or str(path) == "":
        raise BadInput("no image uploaded: drop a PNG or JPEG on the Image tab first")
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise BadInput(f"the upload {name} is gone from the server; upload it again")
    size = path.stat().st_size
    if size > max_bytes:
        raise BadInput(f"the upload {name} is {_mb(size)}, over the {_mb(max_bytes)} limit; send a smaller image")
    try:
        with Image.open(path) as img:  # reads the header only: the pixel count is known before any decoding
            width, height = img.size
    except Exception:
        raise BadInput(f"the upload {name} is not an image this page can read (PNG, JPEG, WebP, …)") from None
    if width * height > max_pixels:
        raise BadInput(f"the upload {name} is {width}×{height} pixels, over the {max_pixels / 1e6:.1f} MP limit; "
                       "downscale it first")
    open_image(path)  # the pipeline's own full decode: broken or truncated files become one line here
    return path


def sketch_to_file(value, out_dir: Path) -> Path:
    """The sketchpad's drawing (Gradio's editor value: background, layers, composite) as a PNG in `out_dir`."""
    composite = value.get("composite") if isinstance(value, dict) else value
    if composite is None:
        raise BadInput("the sketch is empty: pick the brush and draw an outline on the Sketch tab")
    img = composite if isinstance(composite, Image.Image) else Image.open(composite) if isinstance(
        composite, (str, Path)) else Image.fromarray(np.asarray(composite))
    if img.mode in ("RGBA", "LA", "P"):
        # strokes on a transparent canvas: lay them on white paper, as the pad shows them
        rgba = img.convert("RGBA")
        paper = Image.new("RGB", rgba.size, (255, 255, 255))
        paper.paste(rgba, mask=rgba.getchannel("A"))
        img = paper
    gray = np.asarray(img.convert("L"))
    if int(gray.max()) - int(gray.min()) < 32:
        raise BadInput("the sketch is empty: pick the brush and draw an outline on the Sketch tab")
    out_dir.mkdir(parents=True, exist_ok=True)
    with _counter_lock:
        n = next(_counter)
    path = out_dir / f"sketch-{n:04d}.png"
    img.convert("RGB").save(path)
    return path

