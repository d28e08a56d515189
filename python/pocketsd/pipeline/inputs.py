"""Image inputs of `generate`: a starting image (`--image`), a line drawing (`--sketch`), an inpainting mask
(`--mask`) and a depth map (`--depth`).

Everything a user can hand us goes through `open_image`, which turns every way an image file can be wrong
(missing, not an image, truncated, absurdly small or large) into a one-line `BadInput`, and every unusual but
usable mode (CMYK, 16-bit, palette, alpha, multi-frame, EXIF-rotated) into plain 8-bit RGB with a note.
Notes are returned (and printed through `warn`) so the caller can also keep them in the report.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageColor, ImageOps, UnidentifiedImageError
from scipy import ndimage

from ..errors import BadInput
from ..data.grammar import BACKGROUNDS, COLORS
from .options import MASK_BLUR

MIN_SIDE = 16                     # smaller images carry no layout worth keeping
MAX_PIXELS = 64 * 1024 * 1024     # 64 MP: far above any SD size, far below a decompression bomb
ASPECT_TOLERANCE = 0.01           # relative aspect difference that still counts as "same aspect"
SKETCH_STRENGTH = 0.65            # denoise strength for sketches: repaints texture, keeps the layout (benchmarks/sketch.py)
DEFAULT_OBJECT_RGB = (128, 128, 128)
DEFAULT_BACKGROUND_RGB = (245, 245, 245)

Warn = Callable[[str], None]


def _stderr_warn(message: str) -> None:
    print(f"pocketsd: warning: {message}", file=sys.stderr)


# ---- opening and normalising ------------------------------------------------------------------
def open_image(path: "str | Path | Image.Image", notes: list[str] | None = None) -> Image.Image:
    """Open, check and fully decode an image file; returns its first frame with EXIF orientation applied.

    An already-decoded PIL image (the web app's uploads and sketchpad) gets the same size checks."""
    notes = notes if notes is not None else []
    if isinstance(path, Image.Image):
        width, height = path.size
        if width * height > MAX_PIXELS:
            raise BadInput(f"the image is {width}×{height} pixels, more than the {MAX_PIXELS // 2**20} MP accepted; "
                           "downscale it first")
        if min(width, height) < MIN_SIDE:
            raise BadInput(f"the image is {width}×{height} pixels; give one at least {MIN_SIDE}×{MIN_SIDE}")
        return path.copy()
    path = Path(path).expanduser()
    if not path.is_file():
        raise BadInput(f"image {path} does not exist")
    try:
        # Turn Pillow's decompression-bomb warning into an error too; our own limit below is stricter anyway.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            width, height = img.size  # read from the header: nothing decoded yet
            if width * height > MAX_PIXELS:
                raise BadInput(
                    f"image {path.name} is {width}×{height} pixels, more than the {MAX_PIXELS // 2**20} MP this "
                    "command accepts; downscale it first"
                )
            if min(width, height) < MIN_SIDE:
                raise BadInput(f"image {path.name} is {width}×{height} pixels; give one at least {MIN_SIDE}×{MIN_SIDE}")
            if getattr(img, "n_frames", 1) > 1:
                notes.append(f"{path.name} has {img.n_frames} frames; using the first")
            img.seek(0)
            img.load()
    except BadInput:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadInput(f"image {path.name} is too large to decode safely (decompression bomb guard); downscale it first") from None
    except UnidentifiedImageError:
        raise BadInput(f"{path.name} is not an image Pillow can read (PNG, JPEG, WebP, TIFF, …)") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data surfaces as these
        raise BadInput(f"image {path.name} is damaged or truncated ({exc})") from None
    return ImageOps.exif_transpose(img)


def to_rgb(img: Image.Image, notes: list[str], matte: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any Pillow mode → 8-bit RGB. Alpha is composited over `matte`; 16/32-bit is rescaled, not clipped."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # Pillow's convert() clips high-bit-depth values at 255 (a washed-out white image); rescale by range.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        if mode == "F":
            top = max(float(arr.max()), 1e-12)
        notes.append(f"{mode} image (high bit depth) reduced to 8-bit RGB")
        gray = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        if img.mode == "RGB":
            return img
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        if rgba.getchannel("A").getextrema()[0] < 255:
            notes.append(f"image has transparency; composited over RGB{matte}")
        base = Image.new("RGB", rgba.size, matte)
        base.paste(rgba, mask=rgba.getchannel("A"))
        return base
    if mode == "CMYK":
        notes.append("CMYK image converted to RGB (colors may shift slightly)")
    elif mode not in ("L", "1"):
        notes.append(f"{mode} image converted to RGB")
    return img.convert("RGB")


def fit_to_size(img: Image.Image, width: int, height: int, notes: list[str], *, pad=None) -> Image.Image:
    """Resize to width×height. Different aspect: center-crop (or pad with `pad`), with a note."""
    w, h = img.size
    if abs((w / h) / (width / height) - 1.0) > ASPECT_TOLERANCE:
        how = "padded" if pad is not None else "center-cropped"
        notes.append(f"input is {w}×{h} (aspect {w / h:.2f}) but --size is {width}×{height} (aspect {width / height:.2f}); {how} to fit")
    if pad is not None:
        return ImageOps.pad(img, (width, height), Image.Resampling.LANCZOS, color=pad)
    return ImageOps.fit(img, (width, height), Image.Resampling.LANCZOS)


@dataclass
class LoadedImage:
    image: Image.Image          # RGB, exactly width×height
    source_size: tuple[int, int]
    notes: list[str] = field(default_factory=list)


def load_image(path: str | Path, width: int, height: int, warn: Warn | None = _stderr_warn) -> LoadedImage:
    """`--image FILE`: any readable image → RGB at width×height (center-cropped when the aspect differs)."""
    notes: list[str] = []
    img = open_image(path, notes)
    source = img.size
    img = fit_to_size(to_rgb(img, notes), width, height, notes)
    for note in notes:
        warn and warn(note)
    return LoadedImage(img, source, notes)


def image_to_tensor(img: Image.Image):
    """PIL RGB → float32 torch tensor (1, 3, H, W) in [-1, 1] (what the VAE encoder takes)."""
    import torch

    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())[None]


def check_strength(strength: float) -> float:
    if not 0.0 < strength <= 1.0:
        raise BadInput(f"--strength must be in (0, 1], got {strength} (0.3 keeps the image, 1.0 ignores it)")
    return float(strength)


# ---- sketches ---------------------------------------------------------------------------------
def otsu_threshold(gray: np.ndarray) -> float:
    """Otsu's threshold of an 8-bit image (a few lines of numpy; not worth a scikit-image dependency)."""
    hist = np.bincount(gray.ravel(), minlength=256).astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * levels)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(np.argmax(between)) + 0.5


WORK_SIDE = 1024  # sketches are cleaned at no more than this many pixels a side


def ink_mask(gray: np.ndarray) -> np.ndarray:
    """8-bit grayscale drawing → boolean mask of the strokes, whatever the polarity (Otsu threshold)."""
    if int(gray.max()) - int(gray.min()) < 32:
        raise BadInput("the sketch is blank (no contrast between lines and paper); draw lines on a plain background")
    ink = gray < otsu_threshold(gray)
    # Lines are the minority of pixels whatever the polarity: light-on-dark drawings get inverted here.
    return ~ink if ink.mean() > 0.5 else ink


def _shrink_keeping_strokes(ink: np.ndarray) -> np.ndarray:
    """Downscale a huge stroke mask by block-max, so a 1-px line in a 4000-px drawing is still there."""
    k = int(np.ceil(max(ink.shape) / WORK_SIDE))
    if k <= 1:
        return ink
    h, w = ink.shape
    padded = np.zeros((-(-h // k) * k, -(-w // k) * k), dtype=bool)
    padded[:h, :w] = ink
    return padded.reshape(padded.shape[0] // k, k, padded.shape[1] // k, k).any(axis=(1, 3))


def clean_lines(gray: np.ndarray) -> np.ndarray:
    """8-bit grayscale drawing → boolean mask of its lines, thin lines thickened (at ≤ WORK_SIDE px a side)."""
    ink = _shrink_keeping_strokes(ink_mask(gray))
    # A pen ~1 % of the image wide: thinner strokes vanish when resized to --size and downsampled 8× by the VAE.
    width = max(1, round(min(ink.shape) / 100))
    ink = ndimage.binary_dilation(ink, iterations=width)
    return ndimage.binary_closing(ink, iterations=width)  # close small gaps so outlines become closed


_BACKGROUND_WORDS = ("background", "backdrop", "ground")


def prompt_colors(prompt: str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(object RGB, background RGB) from the color words of a prompt ("a red square on a gray background").

    The reference model's palette comes first (its exact colors), then CSS color names; a color word followed
    by "background"/"backdrop" names the background, the first other one names the object.
    """
    words = [w.strip(".,;:!?\"'()").lower() for w in prompt.split()]

    def rgb(word: str, palette: dict) -> tuple[int, int, int] | None:
        if word in palette:
            return tuple(palette[word])
        if word in COLORS:
            return tuple(COLORS[word])
        try:
            return ImageColor.getrgb(word)[:3]
        except ValueError:
            return None

    obj = bg = None
    for i, word in enumerate(words):
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if nxt in _BACKGROUND_WORDS:
            bg = bg or rgb(word, BACKGROUNDS)
        elif obj is None and word not in _BACKGROUND_WORDS:
            obj = rgb(word, COLORS)
    return obj or DEFAULT_OBJECT_RGB, bg or DEFAULT_BACKGROUND_RGB


@dataclass
class Sketch:
    lines: np.ndarray            # bool (H, W): the cleaned strokes
    region: np.ndarray           # bool (H, W): strokes plus every area they enclose
    start: Image.Image           # starting image for image → image (filled shape on the prompt's background)
    control: Image.Image         # white strokes on black: the scribble ControlNet convention
    strength: float
    notes: list[str] = field(default_factory=list)


def load_sketch(path: str | Path, width: int, height: int, prompt: str, strength: float | None = None,
                warn: Warn | None = _stderr_warn) -> Sketch:
    """`--sketch FILE`: clean the drawing and turn it into a starting image whose layout the denoiser keeps."""
    notes: list[str] = []
    img = to_rgb(open_image(path, notes), notes)
    strokes = clean_lines(np.asarray(img.convert("L")))
    # Resize the stroke mask, padding (not cropping) to the target aspect so no stroke is cut off.
    fitted = fit_to_size(Image.fromarray(strokes.astype(np.uint8) * 255, "L"), width, height, notes, pad=0)
    lines = np.asarray(fitted) > 64
    lines = ndimage.binary_closing(ndimage.binary_dilation(lines), iterations=1)
    region = ndimage.binary_fill_holes(lines)
    if region.sum() <= lines.sum() * 1.05:
        notes.append("the sketch has no closed outline; using the strokes themselves as the shape")
    obj, bg = prompt_colors(prompt)
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = bg
    canvas[region] = obj
    control = np.zeros((height, width, 3), dtype=np.uint8)
    control[lines] = 255
    for note in notes:
        warn and warn(note)
    return Sketch(lines, region, Image.fromarray(canvas, "RGB"), Image.fromarray(control, "RGB"),
                  check_strength(SKETCH_STRENGTH if strength is None else strength), notes)


# ---- inpainting masks -------------------------------------------------------------------------
MASK_ASPECT_LIMIT = 2.0       # a mask whose aspect is more than 2× off the image's cannot be lined up with it
_MID_GREY = (32, 224)         # a gray level strictly between these is neither "keep" (black) nor "repaint" (white)
MAX_MID_GREY_SHARE = 0.25     # more mid-grey pixels than this: a photo, not a mask


@dataclass
class LoadedMask:
    hole: np.ndarray             # bool (H, W): the pixels to repaint (white in the mask file)
    alpha: np.ndarray            # float32 (H, W) in [0, 1]: 1 in the hole, falling to 0 `blur` px outside it
    source_size: tuple[int, int]
    notes: list[str] = field(default_factory=list)

    def tensor(self):
        """(1, 1, H, W) float32 torch tensor of `alpha` (what `GenerationRequest.mask` takes)."""
        import torch

        return torch.from_numpy(self.alpha.copy())[None, None]


def _mask_gray(img: Image.Image, notes: list[str]) -> np.ndarray:
    """8-bit gray (H, W) where white = repaint, whatever the file's mode and polarity convention.

    Masks with transparency come two ways, read apart by what the opaque pixels hold:
    - strokes on a transparent layer (opaque pixels all one colour): the strokes are the area to repaint;
    - a photo with a hole cut out (OpenAI's edit API, editors' "erase"): the transparent pixels are.
    Everything else is read by brightness."""
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"))
        opaque = alpha >= 128
        if 0 < opaque.sum() < opaque.size:
            colour = np.asarray(rgba.convert("L"))[opaque]
            if int(colour.max()) - int(colour.min()) < 32:
                notes.append("the mask is strokes on a transparent layer: the strokes are the area to repaint")
                return np.where(opaque, 255, 0).astype(np.uint8)
            notes.append("the mask is an image with transparent pixels: those are the area to repaint")
            return np.where(opaque, 0, 255).astype(np.uint8)
    return np.asarray(to_rgb(img, notes).convert("L"))


def load_mask(path: "str | Path | Image.Image", width: int, height: int, image_size: tuple[int, int] | None = None,
              blur: int = MASK_BLUR, warn: Warn | None = _stderr_warn) -> LoadedMask:
    """`--mask FILE`: white where the image is repainted, black where it is kept.

    It is cropped and resized exactly as `load_image` crops and resizes the image (`image_size` is the image
    file's own size), so the two stay lined up; a mask of another aspect is center-cropped with a warning,
    one too far off to line up is refused. Empty and full masks are refused: nothing to repaint, or
    text → image. `alpha` feathers the hole's edge outward over `blur` pixels for the paste-back."""
    notes: list[str] = []
    img = open_image(path, notes)
    name = getattr(path, "name", "the mask") if not isinstance(path, Image.Image) else "the mask"
    source = img.size
    gray = _mask_gray(img, notes)
    mid = float(np.mean((gray > _MID_GREY[0]) & (gray < _MID_GREY[1])))
    if mid > MAX_MID_GREY_SHARE:
        raise BadInput(f"mask {name} is not black and white ({mid:.0%} of it is mid-gray); paint the area to repaint "
                       "white on black")
    if image_size is not None and tuple(image_size) != tuple(source):
        (iw, ih), (mw, mh) = image_size, source
        ratio = (mw / mh) / (iw / ih)
        if max(ratio, 1 / ratio) > MASK_ASPECT_LIMIT:
            raise BadInput(f"mask {name} is {mw}×{mh} but the image is {iw}×{ih}: shapes too different to line up "
                           "(resized with the image it would cover another part); give a mask the image's size")
        if abs(ratio - 1.0) > ASPECT_TOLERANCE:
            notes.append(f"mask {name} is {mw}×{mh} but the image is {iw}×{ih} (another aspect); center-cropped, "
                         "so its edges may not line up with the image's")
    fitted = np.asarray(fit_to_size(Image.fromarray(gray, "L"), width, height, []))
    hole = fitted >= 128
    if not hole.any():
        raise BadInput(f"mask {name} is empty after resizing to {width}×{height}: nothing to repaint (white marks the "
                       "area to repaint, black what to keep)")
    if hole.all():
        raise BadInput(f"mask {name} covers the whole image: that is text → image (drop --image and --mask) or "
                       "image → image (drop --mask)")
    blur = int(blur)
    if blur > 0:
        outside = ndimage.distance_transform_edt(~hole)  # pixels from the hole (0 inside it)
        t = np.clip(1.0 - outside / (blur + 1), 0.0, 1.0)
        alpha = (t * t * (3 - 2 * t)).astype(np.float32)  # smoothstep: no visible kink where the feather ends
    else:
        alpha = hole.astype(np.float32)
    for note in notes:
        warn and warn(note)
    return LoadedMask(hole, alpha, source, notes)


# ---- depth maps -------------------------------------------------------------------------------
@dataclass
class LoadedDepth:
    depth: np.ndarray            # float32 (H, W) in [0, 1], near = 1
    control: Image.Image         # 8-bit gray as RGB: what a depth ControlNet is fed (near = bright)
    source_size: tuple[int, int]
    notes: list[str] = field(default_factory=list)


def _depth_values(img: Image.Image, notes: list[str]) -> np.ndarray:
    """A depth map at its full bit depth as float (H, W); colour maps are read by their brightness."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return np.asarray(img, dtype=np.float64)
    if img.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV"):
        rgb = np.asarray(to_rgb(img, []), dtype=np.int16)
        if np.abs(rgb - rgb.mean(axis=-1, keepdims=True)).max() > 8:
            notes.append("the depth map is in colour; using its brightness as depth (near = bright)")
        return np.asarray(to_rgb(img, []).convert("L"), dtype=np.float64)
    return np.asarray(img.convert("L"), dtype=np.float64)


def load_depth(path: "str | Path | Image.Image", width: int, height: int, invert: bool = False,
               warn: Warn | None = _stderr_warn) -> LoadedDepth:
    """`--depth FILE`: a depth map of any bit depth (8/16-bit, float TIFF), near = bright (`invert`: near = dark).

    Stretched to its own range, as diffusers' depth ControlNets were trained (DPT depth normalised per image),
    center-cropped and resized like `--image`."""
    notes: list[str] = []
    img = open_image(path, notes)
    name = getattr(path, "name", "the depth map") if not isinstance(path, Image.Image) else "the depth map"
    values = _depth_values(img, notes)
    if not np.isfinite(values).all():
        raise BadInput(f"depth map {name} has NaN or infinite values; fill them before passing it")
    low, high = float(values.min()), float(values.max())
    if high - low <= 1e-12 * max(abs(high), 1.0):
        raise BadInput(f"depth map {name} is flat (every pixel is {low:g}): there is no depth to follow")
    depth = (values - low) / (high - low)
    if invert:
        depth = 1.0 - depth
    fitted = fit_to_size(Image.fromarray(depth.astype(np.float32), "F"), width, height, notes)
    depth = np.clip(np.asarray(fitted, dtype=np.float32), 0.0, 1.0)
    gray = (depth * 255.0 + 0.5).astype(np.uint8)
    for note in notes:
        warn and warn(note)
    return LoadedDepth(depth, Image.fromarray(gray, "L").convert("RGB"), img.size, notes)
