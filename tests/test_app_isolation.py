"""Two visitors at once, in two browser contexts (separate cookies and Gradio sessions): the first uploads an image
and a LoRA of its own and generates; the second never sees either — not in its page or gallery, and not by asking
Gradio's file route for names it could guess. When the first visitor leaves, its uploads and outputs are removed.

Runs the app and Chromium as test_app_browser.py does (its fixtures; it skips or, in CI, fails the same way).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from PIL import Image, ImageDraw

# the browser tests' fixtures (server, Chromium) and page helpers; importing them also applies their skip/fail rule
from test_app_browser import (app, browser, compressed, download, generate, set_number,  # noqa: F401
                              set_prompt, single_model)
from playwright.sync_api import expect

SECRET = "secret-visitor-a"  # in every name visitor A gives the page, so any leak is easy to spot
LEAVE_S = 90  # Gradio notices a closed page when its heartbeat stream drops (seconds; more on a loaded machine)


def _visitor(browser, url: str):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(url)
    page.locator("#go").wait_for()
    return context, page


def _status(context, url: str, path: str) -> int:
    return context.request.get(f"{url}gradio_api/file={quote(path)}", fail_on_status_code=False).status


def test_uploads_and_outputs_stay_with_their_visitor_and_go_when_it_leaves(app, browser, tmp_path):
    from pocketsd.data import REFERENCE_LORAS

    url, work, files = app.pocketsd_url, Path(app.pocketsd_work_dir), app.pocketsd_files
    image = tmp_path / f"{SECRET}-image.png"
    img = Image.new("RGB", (128, 128), (245, 245, 245))
    ImageDraw.Draw(img).ellipse((20, 40, 64, 84), fill=(220, 40, 40))
    img.save(image)
    lora = tmp_path / f"{SECRET}-style.safetensors"
    shutil.copy(REFERENCE_LORAS / "poster.safetensors", lora)

    a_context, a = _visitor(browser, url)
    b_context, b = _visitor(browser, url)
    try:
        # ---- visitor A: own image, own LoRA, one image on the 4-bit model
        set_prompt(a, "a red circle on a white background, on the left")
        a.get_by_role("tab", name="Image").click()
        a.locator("#upload input[type=file]").set_input_files(str(image))
        expect(a.locator("#upload-preview img")).to_be_visible()
        a.locator("#lora-upload input[type=file]").set_input_files(str(lora))
        expect(a.locator("#lora-upload")).to_contain_text(lora.name)
        single_model(a, "4-bit dense")
        set_number(a, "seed", 11)
        generate(a)
        report = json.loads(download(a, "left-json").read_text())
        [record] = report["loras"]
        assert Path(record["path"]).name == lora.name and record["lowrank_concat"] > 0  # A's LoRA really ran
        uploaded_image, uploaded_lora = Path(report["input"]["image"]), Path(record["path"])
        assert uploaded_image.name == image.name and uploaded_image.is_file() and uploaded_lora.is_file()
        shown = a.locator("#left-image img").get_attribute("src")
        assert "/gradio_api/file=" in shown
        assert a_context.request.get(shown).status == 200  # the route serves a file whose exact name is known

        # ---- visitor B: nothing of A's, before and after its own run
        expect(b.locator("#gallery img")).to_have_count(0)
        set_prompt(b, "a blue square on a white background")
        single_model(b, "fp16")
        generate(b)
        expect(b.locator("#gallery img")).to_have_count(1)  # its own image only
        assert SECRET not in b.content()
        assert json.loads(download(b, "left-json").read_text())["loras"] == []  # A's LoRA never reached B's runs

        # ---- B guesses where A's files would be: the work folder's old and new layouts, the upload folder
        sessions = work / "sessions"
        [a_folder] = [p for p in sessions.iterdir() if any(p.rglob("*seed11.png"))]
        a_output = next(a_folder.rglob("*seed11.png"))
        guesses = [str(work / "outputs" / "0001-4-bit-dense-seed11.png"), str(work / "outputs"), str(sessions),
                   str(sessions / a_output.name), str(sessions / "outputs" / a_output.name),
                   str(uploaded_image.parent.parent / image.name), str(uploaded_lora.parent.parent / lora.name),
                   str(sessions / lora.name), str(work / "sketches")]
        for guess in guesses:
            assert _status(b_context, url, guess) in (403, 404), guess
        assert len(a_folder.name) == 32  # 128 random bits between the served root and A's files

        # ---- A leaves: its uploads, outputs and Gradio's copies of them go
        a_context.close()
        deadline = time.monotonic() + LEAVE_S
        while a_folder.exists() or uploaded_image.exists() or uploaded_lora.exists():
            assert time.monotonic() < deadline, f"visitor A's files are still there {LEAVE_S} s after it left"
            time.sleep(1)
        assert _status(b_context, url, shown.split("file=", 1)[1]) in (403, 404)  # the image A was shown
        expect(b.locator("#gallery img")).to_have_count(1)  # B's own visit is untouched
        assert any(p.rglob("*.png") for p in sessions.iterdir())  # B's files are still there
    finally:
        for context in (a_context, b_context):
            try:
                context.close()
            except Exception:  # noqa: BLE001 — already closed above
                pass


def test_files_of_every_visit_are_removed_at_exit(tmp_path):
    from pocketsd.app.ui import SessionFiles

    files = SessionFiles(tmp_path / "sessions")
    out = files.folder("visit-1") / "outputs"
    out.mkdir()
    (out / "x.png").write_bytes(b"png")
    upload = tmp_path / "gradio-upload" / "abc" / "y.png"
    upload.parent.mkdir(parents=True)
    upload.write_bytes(b"png")
    files.uploaded("visit-2", upload)
    assert files.sessions() == 2
    files.forget_all()  # what build_app registers with atexit
    assert not (tmp_path / "sessions").exists() and not upload.exists() and files.sessions() == 0
