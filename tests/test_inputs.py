"""Image and sketch inputs: every bad image gets one clear line, odd formats are converted, sketches keep their layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from pocketsd.errors import BadInput
from pocketsd.eval.classify import classify
from pocketsd.pipeline import inputs
from pocketsd.pipeline.inputs import check_strength, clean_lines, load_image, load_sketch, prompt_colors

SIZE = 128


def quiet(_msg):
    pass


# ---- bad images: one line, no traceback ------------------------------------------------------------
def test_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is text, not a PNG")
    with pytest.raises(BadInput, match="not an image"):
        load_image(path, SIZE, SIZE, warn=quiet)


def test_missing_file(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        load_image(tmp_path / "nope.png", SIZE, SIZE, warn=quiet)


def test_truncated_image(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInput, match="damaged or truncated"):
        load_image(tmp_path / "cut.jpg", SIZE, SIZE, warn=quiet)


def test_one_pixel_image(tmp_path):
    Image.new("RGB", (1, 1), (255, 0, 0)).save(tmp_path / "dot.png")
    with pytest.raises(BadInput, match="1×1"):
        load_image(tmp_path / "dot.png", SIZE, SIZE, warn=quiet)


def test_decompression_bomb(tmp_path):
    # 20000×20000 = 400 MP in a tiny file: refused from the header, before decoding a single row.
    path = _png_header_only(tmp_path / "bomb.png", 20000, 20000)
    assert path.stat().st_size < 100_000
    with pytest.raises(BadInput, match="too large|downscale"):
        load_image(path, SIZE, SIZE, warn=quiet)


def _png_header_only(path, width, height):
    """A PNG that claims width×height (8-bit RGB) with one tiny compressed row: what a decompression bomb looks like
    from the outside. Written by hand because drawing a real 400 MP image just to test the guard is slow."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" + b"\0" * 3 * width)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_huge_image_below_pillows_bomb_limit_is_refused_by_ours(tmp_path):
    path = _png_header_only(tmp_path / "big.png", 9000, 9000)  # 81 MP: Pillow would start decoding it
    with pytest.raises(BadInput, match="9000×9000"):
        load_image(path, SIZE, SIZE, warn=quiet)


def test_cli_bad_image_exits_2_with_one_line(tmp_path, capsys):
    from pocketsd.cli import main

    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    code = main(["generate", "a red circle on a white background", "--image", str(tmp_path / "bad.png"),
                 "--steps", "1", "--out", str(tmp_path / "o.png"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "bad.png" in err
    assert not (tmp_path / "o.png").exists()


# ---- conversions with a note ------------------------------------------------------------------------
@pytest.mark.parametrize("mode, make, expect_note, pixel", [
    ("CMYK", lambda: Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "CMYK", (255, 0, 0)),
    ("I;16", lambda: Image.fromarray(np.full((64, 64), 65535, dtype=np.uint16)), "8-bit", (255, 255, 255)),
    ("RGBA", lambda: Image.new("RGBA", (64, 64), (255, 0, 0, 0)), "transparency", (255, 255, 255)),
    ("LA", lambda: Image.new("LA", (64, 64), (0, 128)), "transparency", (127, 127, 127)),
])
def test_modes_convert_to_rgb_with_a_note(tmp_path, mode, make, expect_note, pixel):
    path = tmp_path / ("img.tif" if mode == "CMYK" else "img.png")
    make().save(path)
    notes = []
    got = load_image(path, 64, 64, warn=notes.append)
    assert got.image.mode == "RGB" and got.image.size == (64, 64)
    assert any(expect_note in n for n in notes)
    assert np.abs(np.subtract(got.image.getpixel((10, 10)), pixel)).max() <= 2


def test_sixteen_bit_is_rescaled_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    row = np.asarray(load_image(tmp_path / "ramp16.png", 64, 64, warn=quiet).image)[0, :, 0]
    assert row[0] == 0 and row[-1] == 255 and 100 < row[32] < 160  # a ramp, not a white sheet


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (64, 64), 1)
    img.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    img.info["transparency"] = 0
    img.save(tmp_path / "pal.png", transparency=0)
    got = load_image(tmp_path / "pal.png", 64, 64, warn=quiet)
    assert got.image.mode == "RGB" and got.image.getpixel((5, 5)) == (200, 30, 30)


def test_aspect_mismatch_center_crops_with_warning(tmp_path):
    img = Image.new("RGB", (300, 100), (0, 0, 255))
    img.paste((255, 0, 0), (100, 0, 200, 100))  # red middle third: what a center crop keeps
    img.save(tmp_path / "wide.png")
    notes = []
    got = load_image(tmp_path / "wide.png", SIZE, SIZE, warn=notes.append)
    assert got.image.size == (SIZE, SIZE) and got.source_size == (300, 100)
    assert len(notes) == 1 and "center-cropped" in notes[0]
    assert got.image.getpixel((SIZE // 2, SIZE // 2))[0] > 200


def test_same_aspect_resizes_silently(tmp_path):
    Image.new("RGB", (512, 512), (10, 200, 10)).save(tmp_path / "sq.png")
    notes = []
    got = load_image(tmp_path / "sq.png", SIZE, SIZE, warn=notes.append)
    assert notes == [] and got.image.size == (SIZE, SIZE)
    t = inputs.image_to_tensor(got.image)
    assert t.shape == (1, 3, SIZE, SIZE) and -1.0 <= float(t.min()) and float(t.max()) <= 1.0


def test_strength_bounds():
    assert check_strength(0.5) == 0.5
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(BadInput, match="strength"):
            check_strength(bad)


# ---- sketches ---------------------------------------------------------------------------------------
def draw_square_sketch(path, size=(600, 400), dark_on_light=True, width=1):
    """A hand-drawn-looking square outline: thin, slightly wobbly lines, off-center paper of another aspect."""
    paper, ink = (250, 12) if dark_on_light else (8, 235)
    img = Image.new("L", size, paper)
    d = ImageDraw.Draw(img)
    w, h = size
    side = int(min(w, h) * 0.5)
    x0, y0 = (w - side) // 2, (h - side) // 2
    pts = [(x0, y0), (x0 + side, y0 + 2), (x0 + side - 1, y0 + side), (x0 + 2, y0 + side - 1), (x0, y0)]
    d.line(pts, fill=ink, width=width)
    img.save(path)
    return path


@pytest.mark.parametrize("dark_on_light, size", [(True, (600, 400)), (False, (97, 131)), (True, (2000, 2000))])
def test_sketch_cleaning_finds_the_square(tmp_path, dark_on_light, size):
    path = draw_square_sketch(tmp_path / "s.png", size, dark_on_light)
    sk = load_sketch(path, SIZE, SIZE, "a red square on a gray background", warn=quiet)
    assert sk.lines.shape == (SIZE, SIZE)
    assert sk.lines.mean() < 0.15  # strokes, not the paper (polarity handled)
    assert sk.region.sum() > 4 * sk.lines.sum() * 0.5  # the closed outline got filled
    reading = classify(sk.start)
    assert (reading.shape, reading.color, reading.background) == ("square", "red", "gray")
    assert sk.control.getpixel((0, 0)) == (0, 0, 0)  # scribble convention: white strokes on black


def test_thin_lines_are_dilated():
    gray = np.full((256, 256), 255, dtype=np.uint8)
    gray[128, 20:236] = 0  # a 1-px line
    lines = clean_lines(gray)
    assert lines[:, 128].sum() >= 3  # now several pixels thick: survives the VAE's 8× downsampling


def test_blank_sketch_is_bad_input(tmp_path):
    Image.new("L", (200, 200), 255).save(tmp_path / "blank.png")
    with pytest.raises(BadInput, match="blank"):
        load_sketch(tmp_path / "blank.png", SIZE, SIZE, "a red square", warn=quiet)


def test_prompt_colors():
    assert prompt_colors("a blue circle on a black background") == ((40, 80, 220), (20, 20, 20))
    assert prompt_colors("a teal vase on a white backdrop, studio light")[1] == (245, 245, 245)
    assert prompt_colors("a teal vase")[0] == (0, 128, 128)  # CSS names beyond the reference palette
    assert prompt_colors("something") == (inputs.DEFAULT_OBJECT_RGB, inputs.DEFAULT_BACKGROUND_RGB)


def test_sketch_of_a_square_generates_a_square(tmp_path, ref_model_path):
    """End to end through `pocketsd generate --sketch` on the reference model: the pixel classifier reads a square,
    and it sits where the sketch put it (top-left), which the prompt does not say: the layout came from the sketch."""
    from scipy import ndimage

    from pocketsd.eval.classify import object_mask
    from pocketsd.pipeline.options import GenerateOptions as RunOptions
    from pocketsd.pipeline.run import run

    img = Image.new("L", (300, 300), 250)
    ImageDraw.Draw(img).rectangle((30, 30, 140, 140), outline=10, width=2)  # a square, thin lines, top-left
    img.save(tmp_path / "square.png")
    for seed in (0, 1):
        (report,) = run(RunOptions(prompt="a green square on a white background", sketch=tmp_path / "square.png",
                                   seed=seed, steps=12, out=tmp_path / f"out{seed}.png"), warn=quiet, progress=False)
        assert report["input"]["strength"] == inputs.SKETCH_STRENGTH
        out = Image.open(report["output"]).convert("RGB")
        reading = classify(out)
        assert (reading.shape, reading.color, reading.background) == ("square", "green", "white"), (seed, reading)
        cy, cx = ndimage.center_of_mass(object_mask(np.asarray(out, dtype=np.float32), np.array([245.0, 245.0, 245.0])))
        assert cx < SIZE / 2 and cy < SIZE / 2, (seed, cx, cy)


# ---- ControlNet --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def controlnet_folder(tmp_path_factory, ref_pipeline):
    from diffusers import ControlNetModel

    folder = tmp_path_factory.mktemp("cn") / "scribble"
    ControlNetModel.from_unet(ref_pipeline.unet).save_pretrained(folder, safe_serialization=True)
    return folder


def test_controlnet_folder_is_checked(tmp_path, controlnet_folder, ref_pipeline):
    import json
    import shutil

    from pocketsd.pipeline.controlnet import check_controlnet_folder

    unet_cfg = dict(ref_pipeline.unet.config)
    assert check_controlnet_folder(controlnet_folder, unet_cfg)["_class_name"] == "ControlNetModel"
    with pytest.raises(BadInput, match="does not exist"):
        check_controlnet_folder(tmp_path / "none", unet_cfg)
    other = tmp_path / "other"
    shutil.copytree(controlnet_folder, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["cross_attention_dim"] = 2048
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BadInput, match="cross_attention_dim"):
        check_controlnet_folder(other, unet_cfg)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(controlnet_folder / "config.json", pickled)
    (pickled / "diffusion_pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(BadInput, match="allow-pickle"):
        check_controlnet_folder(pickled, unet_cfg)


def test_controlnet_residuals_reach_the_unet(tmp_path, controlnet_folder, ref_model_path):
    """A fresh ControlNet (zero convolutions) leaves the result unchanged; once its output convolutions are
    non-zero the result moves: the residuals flow through the shared loop into the UNet."""
    from pocketsd.pipeline.controlnet import controlnet_hook, load_controlnet, residuals_hook, control_tensor
    from pocketsd.pipeline.generate import GenerationRequest, generate
    from pocketsd.pipeline.torch_backend import open_backend

    backend = open_backend(str(ref_model_path))
    path = draw_square_sketch(tmp_path / "sq.png", (256, 256))
    sk = load_sketch(path, SIZE, SIZE, "a red square on a white background", warn=quiet)
    kw = dict(prompt="a red square on a white background", steps=2, guidance=5.0, seed=0)
    plain = generate(backend, GenerationRequest(**kw)).latents
    zero = generate(backend, GenerationRequest(**kw, unet_extra=controlnet_hook(controlnet_folder, sk.control, backend))).latents
    assert torch.allclose(plain, zero, atol=1e-5)
    cn = load_controlnet(controlnet_folder, dict(backend.components.config("unet")))
    with torch.no_grad():
        cn.controlnet_mid_block.weight.normal_(0, 0.05)
    moved = generate(backend, GenerationRequest(**kw, unet_extra=residuals_hook(cn, control_tensor(sk.control)))).latents
    assert (moved - plain).abs().max() > 1e-3


def test_cli_sketch_with_controlnet(tmp_path, controlnet_folder, capsys):
    from pocketsd.cli import main

    path = draw_square_sketch(tmp_path / "sq.png", (200, 200))
    out = tmp_path / "cn.png"
    assert main(["generate", "a red square on a white background", "--sketch", str(path), "--controlnet",
                 str(controlnet_folder), "--steps", "1", "--out", str(out), "--quiet"]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["input"]["controlnet"] == str(controlnet_folder) and report["input"]["sketch"] == str(path)
