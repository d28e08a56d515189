"""The web demo in a real browser: the app runs in-process on a free port and Playwright drives Debian's Chromium
(`/usr/bin/chromium`; never `playwright install`), as a visitor would — typing, clicking, uploading, drawing
with the mouse, downloading.

Without Chromium these tests skip with the reason, except in CI (`POCKETSD_CI` or `CI` set: `.ci/run` installs
Chromium), where they fail instead. The 4-bit model is the reference model compressed with a fixed fast recipe,
made once and cached under build/app/ (or given by POCKETSD_APP_TEST_COMPRESSED). Few steps, 128×128 images.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
IN_CI = bool(os.environ.get("POCKETSD_CI") or os.environ.get("CI"))
CHROMIUM = os.environ.get("POCKETSD_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
WAIT_MS = 240_000  # a generation on a busy 2-core machine; seconds on a quiet one
PROMPT = "a blue square on a white background, on the right"
SKETCH_SIDE = 384  # pocketsd.app.ui.SKETCH_SIDE (not imported here: gradio may be missing when this module loads)


def _require(ok: bool, reason: str) -> None:
    if not ok:
        if IN_CI:
            pytest.fail(f"{reason} (CI must run the browser tests: .ci/run installs Chromium)")
        pytest.skip(reason)


_require(Path(CHROMIUM).is_file(), "Chromium is not installed: `apt-get install chromium` (Debian) to run the "
                                   "web demo's browser tests")
try:
    import gradio  # noqa: F401
    from playwright.sync_api import TimeoutError as PlaywrightTimeout, expect, sync_playwright
except ImportError as exc:  # pragma: no cover - `make setup` installs both
    _require(False, f"{exc.name} is not installed: run `make setup` (the app and test extras)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def compressed() -> Path:
    given = os.environ.get("POCKETSD_APP_TEST_COMPRESSED")
    if given:
        return Path(given)
    from pocketsd.app.models import prepare_compressed
    from pocketsd.palettize.calibrate import CalibrationSettings
    from pocketsd.palettize.recipes import make_recipe

    # w4r0 with a tiny calibration: the quickest honest 4-bit model (the page's figures are whatever it measures)
    return prepare_compressed(None, REPO / "build", make_recipe("w4r0"),
                              CalibrationSettings(count=2, steps=2, rows_per_layer=32), components=("unet",))


@pytest.fixture(scope="module")
def app(compressed, tmp_path_factory):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from pocketsd.app.config import AppConfig
    from pocketsd.app.ui import build_app, launch

    config = AppConfig(compressed=compressed, port=_free_port(), default_steps=2, max_upload_mb=0.5,
                       work_dir=tmp_path_factory.mktemp("app"))
    demo = build_app(config)
    launch(demo, config, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{config.port}/"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    demo.pocketsd_url = url
    yield demo
    demo.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--disable-gpu", "--disable-background-networking",
                                                              "--disable-component-update"])
        yield b
        b.close()


@pytest.fixture
def page(app, browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    pg.goto(app.pocketsd_url)
    pg.locator("#go").wait_for()
    yield pg
    assert "Traceback" not in pg.content()  # whatever happened, the page never shows a stack trace
    context.close()


# ---- driving the page ------------------------------------------------------------------------------------------
def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def set_prompt(page, text: str) -> None:
    page.locator("#prompt textarea").fill(text)


def pick(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def single_model(page, label: str) -> None:
    page.locator("#compare input[type=checkbox]").uncheck()
    page.locator("#model").get_by_text(label, exact=True).click()


def generate(page, side: str = "left", field: str = "total_s") -> None:
    page.locator("#go").click()
    expect(page.locator(f"#{side}-stats [data-field={field}]")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#status")).to_contain_text("done in")  # the run's last update has landed


def stats(page, side: str) -> dict[str, tuple[float, str]]:
    rows = page.locator(f"#{side}-stats tr").evaluate_all(
        "rows => rows.map(r => [r.dataset.field, r.querySelector('td').dataset.value, r.querySelector('td').innerText])")
    return {f: (float(v), t) for f, v, t in rows}


def download(page, elem_id: str) -> Path:
    """Click a download button and return the file the browser saved. The button resolves its file's URL
    asynchronously after an update, so a click landing in that instant does nothing: click again, as a person would."""
    for _ in range(3):
        try:
            with page.expect_download(timeout=15_000) as info:
                page.locator(f"#{elem_id}").click()
            return Path(info.value.path())
        except PlaywrightTimeout:
            pass
    button = page.locator(f"#{elem_id}")
    raise AssertionError(f"no download from #{elem_id} after 3 clicks; button: "
                         f"{button.evaluate('e => e.outerHTML') if button.count() else 'absent'}; status: "
                         f"{page.locator('#status').inner_text()!r}; message: {page.locator('#message').inner_text()!r}")


def object_centroid(image: Image.Image) -> tuple[float, float]:
    """Centre of the pixels that differ from the border colour, as fractions of width and height."""
    px = np.asarray(image.convert("RGB"), dtype=np.float32)
    border = np.concatenate([px[:3].reshape(-1, 3), px[-3:].reshape(-1, 3), px[:, :3].reshape(-1, 3),
                             px[:, -3:].reshape(-1, 3)])
    mask = np.linalg.norm(px - np.median(border, axis=0), axis=-1) > 60
    assert mask.sum() > 0.01 * mask.size, "no object in the image"
    ys, xs = np.nonzero(mask)
    return xs.mean() / mask.shape[1], ys.mean() / mask.shape[0]


# ---- the tests -----------------------------------------------------------------------------------------------
def test_compare_shows_both_images_with_time_and_memory_from_the_report(page):
    from pocketsd.eval.metrics import image_psnr
    from pocketsd.pipeline.report import read_png_metadata

    set_prompt(page, PROMPT)
    set_number(page, "seed", 3)
    generate(page, "right", "psnr_db")
    expect(page.locator("#left-image img")).to_be_visible()
    expect(page.locator("#right-image img")).to_be_visible()
    expect(page.locator("#gallery img")).to_have_count(2)
    reports, pngs = {}, {}
    for side in ("left", "right"):
        reports[side] = json.loads(download(page, f"{side}-json").read_text())
        pngs[side] = Image.open(download(page, f"{side}-png"))
        shown, report = stats(page, side), reports[side]
        for field, (value, text) in shown.items():  # every figure is a number with its unit, never empty
            assert text.strip() and text.split()[0].replace(".", "", 1).isdigit(), (field, text)
        t, mem, model = report["timings_s"], report["memory"], report["model"]
        assert shown["total_s"][0] == t["total"] > 0
        assert shown["load_s"][0] == t["load"] and shown["vae_decode_s"][0] == t["vae_decode"]
        assert shown["text_encode_s"][0] == t["text_encode"]
        assert len(t["unet_steps"]) == 2 and shown["step_mean_s"][0] == pytest.approx(sum(t["unet_steps"]) / 2)
        assert shown["peak_rss_mb"][0] == mem["peak_rss_mb"] > 100
        assert shown["peak_rss_mb"][1] == f"{mem['peak_rss_mb']:.0f} MB"
        assert shown["unet_mb"][0] == pytest.approx(model["unet_bytes"] / 2**20)
        assert shown["bits_per_weight"][0] == model["bits_per_weight"]
        assert "cuda_peak_mb" not in shown and mem["cuda_peak_mb"] is None  # CPU here: no VRAM row to show
        assert (report["seed"], report["steps"], report["prompt"]) == (3, 2, PROMPT)
        meta = read_png_metadata(download(page, f"{side}-png"))
        assert meta["prompt"] == PROMPT and meta["seed"] == "3"
    assert reports["left"]["model"]["kind"] == "diffusers" and reports["right"]["model"]["kind"] == "compressed"
    assert reports["right"]["model"]["bits_per_weight"] < 5 < reports["left"]["model"]["bits_per_weight"]
    assert reports["right"]["model"]["unet_bytes"] < reports["left"]["model"]["unet_bytes"] / 3
    psnr = image_psnr([pngs["left"]], [pngs["right"]])
    assert stats(page, "right")["psnr_db"][0] == pytest.approx(psnr, abs=1e-6)
    assert reports["right"]["comparison"]["image_psnr_db"] == pytest.approx(psnr, abs=1e-6)
    expect(page.locator("#left-chart")).to_contain_text("step time")


def test_preset_fills_the_controls_and_shows_the_expanded_prompt(page):
    from pocketsd.pipeline.presets import load_presets

    preset = load_presets()["blueprint"]
    set_prompt(page, "a green circle on a white background")
    pick(page, "domain", "blueprint")
    expect(page.locator("#expanded textarea")).to_have_value(preset.expand("a green circle on a white background"))
    expect(page.locator("#steps input[type=number]")).to_have_value(str(preset.steps))
    expect(page.locator("#preset-note")).to_contain_text("blueprint.safetensors")
    pick(page, "domain", "none")
    expect(page.locator("#expanded textarea")).to_have_value("a green circle on a white background")


def test_lora_style_runs_on_the_4bit_model(page):
    set_prompt(page, "a red triangle on a white background")
    pick(page, "lora", "poster")
    single_model(page, "4-bit dense")
    generate(page)
    expect(page.locator("#left-title")).to_contain_text("LoRA poster.safetensors ×1")
    report = json.loads(download(page, "left-json").read_text())
    [record] = report["loras"]
    assert record["file"] == "poster.safetensors" and record["scale"] == 1.0
    assert record["lowrank_concat"] > 0  # appended to the 4-bit layers' low-rank branches, not re-quantized
    assert report["model"]["kind"] == "compressed" and report["unet_mode"] == "dense"
    expect(page.locator("#right-title")).to_contain_text("compare is off")


def test_upload_an_image_and_generate(page, tmp_path):
    source = tmp_path / "circle-right.png"
    img = Image.new("RGB", (128, 128), (245, 245, 245))
    ImageDraw.Draw(img).ellipse((76, 40, 120, 84), fill=(220, 40, 40))
    img.save(source)
    set_prompt(page, "a red circle on a white background, on the right")
    page.get_by_role("tab", name="Image").click()
    page.locator("#upload input[type=file]").set_input_files(str(source))
    expect(page.locator("#upload-preview img")).to_be_visible()
    set_number(page, "strength", 0.5)
    single_model(page, "fp16")
    generate(page)
    report = json.loads(download(page, "left-json").read_text())
    assert Path(report["input"]["image"]).name == source.name and report["input"]["strength"] == 0.5
    assert "vae_encode_s" in stats(page, "left")  # the image went through the VAE encoder
    x, _ = object_centroid(Image.open(download(page, "left-png")))
    assert x > 0.55  # the uploaded layout (object on the right) is kept


def test_sketch_a_stroke_and_the_result_keeps_its_layout(page):
    set_prompt(page, "a red square on a white background")
    page.get_by_role("tab", name="Sketch").click()
    page.locator("#sketch button[aria-label=Brush]").click()
    box = page.locator("#sketch canvas").last.bounding_box()
    # the paper is the canvas_size square, centred in the canvas element at the zoom the pad shows ("75%")
    zoom = float(page.locator("#sketch [role=button]", has_text="%").inner_text().strip().rstrip("%")) / 100
    side = SKETCH_SIDE * zoom
    left, top = box["x"] + (box["width"] - side) / 2, box["y"] + (box["height"] - side) / 2
    corners = [(0.12, 0.35), (0.42, 0.35), (0.42, 0.65), (0.12, 0.65), (0.12, 0.35)]  # a square on the left
    points = [(left + fx * side, top + fy * side) for fx, fy in corners]
    page.mouse.move(*points[0])
    page.mouse.down()
    for pt in points[1:]:
        page.mouse.move(*pt, steps=12)
    page.mouse.up()
    single_model(page, "fp16")
    set_number(page, "steps", 4)
    generate(page)
    report = json.loads(download(page, "left-json").read_text())
    assert report["input"]["sketch"] and report["input"]["strength"] == pytest.approx(0.65)
    x, y = object_centroid(Image.open(download(page, "left-png")))
    assert x < 0.45 and 0.3 < y < 0.7  # where the stroke was: left half, middle band


def test_bad_input_is_a_message_in_the_page(page, tmp_path):
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (600, 600, 3), dtype=np.uint8)).save(noise)
    assert noise.stat().st_size > 0.5 * 2**20
    page.get_by_role("tab", name="Image").click()
    page.locator("#upload input[type=file]").set_input_files(str(noise))
    expect(page.locator("#message .psd-error")).to_contain_text("noise.png is 1.0 MB, over the 0.5 MB limit")
    page.locator("#go").click()  # the refused file was dropped: generating asks for an image, makes none
    expect(page.locator("#message .psd-error")).to_contain_text("no image uploaded")
    expect(page.locator("#left-image img")).to_have_count(0)

    broken = tmp_path / "broken.png"
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64), "white").save(good)
    broken.write_bytes(good.read_bytes()[:70])
    page.locator("#upload input[type=file]").set_input_files(str(broken))
    expect(page.locator("#message .psd-error")).to_contain_text("broken.png")

    page.get_by_role("tab", name="Sketch").click()
    page.locator("#go").click()
    expect(page.locator("#message .psd-error")).to_contain_text("the sketch is empty")

    page.get_by_role("tab", name="Text").click()
    set_prompt(page, "a red circle on a white background " + "on a gray background " * 20 + "yellow triangle")
    single_model(page, "fp16")
    set_number(page, "steps", 1)
    generate(page)
    expect(page.locator("#message .psd-warning")).to_contain_text("these words are dropped")
    expect(page.locator("#message .psd-warning")).to_contain_text('yellow triangle"')


def test_stop_cancels_and_the_next_visitor_waits_in_line(page, browser, app):
    other = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    other.goto(app.pocketsd_url)
    single_model(other, "fp16")
    set_number(other, "steps", 1)
    set_number(page, "steps", 150)  # both models, 150 steps each: long enough to queue behind and to stop
    page.locator("#go").click()
    expect(page.locator("#status")).to_contain_text("step", timeout=WAIT_MS)
    other.locator("#go").click()
    expect(other.locator("#left-image [data-testid=status-tracker]")).to_contain_text(
        "queue", timeout=30_000)  # its place in line, shown by Gradio's queue on the result panels
    page.locator("#stop").click()
    expect(page.locator("#message")).to_contain_text("Stopped: cancelled after step", timeout=60_000)
    expect(page.locator("#right-image img")).to_have_count(0)  # the 4-bit model never ran
    expect(other.locator("#left-stats [data-field=total_s]")).to_be_visible(timeout=WAIT_MS)  # then it ran
    other.context.close()


PHONE = {"width": 390, "height": 844}  # an iPhone 12–15's CSS viewport


def test_phone_sized_page_shows_everything_without_sideways_scrolling(app, browser):
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    try:
        pg = context.new_page()
        pg.set_default_timeout(30_000)
        pg.goto(app.pocketsd_url)
        set_prompt(pg, PROMPT)
        pg.locator("#go").scroll_into_view_if_needed()
        generate(pg, "right", "psnr_db")  # compare mode: both images and both stat tables
        for selector in ("#go", "#left-image img", "#right-image img", "#left-stats table", "#right-stats table"):
            item = pg.locator(selector)
            item.scroll_into_view_if_needed()
            expect(item).to_be_visible()
            box = item.bounding_box()
            assert box["width"] > 20, (selector, box)  # shown at a usable size, not squeezed to nothing
            assert box["x"] >= -0.5 and box["x"] + box["width"] <= PHONE["width"] + 0.5, (selector, box)
        widths = pg.evaluate("[document.documentElement.scrollWidth, document.body.scrollWidth]")
        assert max(widths) <= PHONE["width"], f"the page is {max(widths)} px wide on a {PHONE['width']} px screen"
        pg.evaluate("window.scrollTo(500, window.scrollY)")
        assert pg.evaluate("window.scrollX") == 0  # nothing to scroll sideways to
        assert "Traceback" not in pg.content()
    finally:
        context.close()
