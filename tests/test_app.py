"""The web demo's parts without a browser: the session cache, upload and sketch checks, the numbers under each
image, model choices, the address warning, the CLI's refusals, and a real run of the comparison on the reference
model (two forms, PSNR, report, cancel, the truncation warning). The page itself is driven in
test_app_browser.py."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pocketsd.errors import BadInput

# ---- the session cache -----------------------------------------------------------------------------------
class FakeSession:
    opened = 0

    def __init__(self, opts):
        FakeSession.opened += 1
        self.opts = opts


def _cache(max_models=4, max_rss=1e9, rss=lambda: 100.0):
    from pocketsd.app.models import ModelCache

    return ModelCache(max_models, max_rss, rss_mb=rss, opener=FakeSession)


def _opts(**kw):
    from pocketsd.pipeline.options import GenerateOptions

    return GenerateOptions(**{"prompt": "a red circle on a white background", **kw})


def test_cache_reuses_a_session_per_model_mode_and_lora_set(tmp_path):
    from pocketsd.data import REFERENCE_LORAS

    cache = _cache()
    poster = REFERENCE_LORAS / "poster.safetensors"
    with cache.use(_opts()) as a:
        pass
    with cache.use(_opts(seed=5, steps=3)) as b:  # per-image fields do not open another model
        pass
    assert a is b and len(cache) == 1
    with cache.use(_opts(loras=[(poster, 1.0)])) as c:
        pass
    with cache.use(_opts(loras=[(poster, 0.5)])) as d:
        pass
    with cache.use(_opts(domain="poster-style")) as e:  # the preset brings poster ×1.0: the same LoRA set as c
        pass
    with cache.use(_opts(unet_mode="packed")) as f:
        pass
    assert len({id(x) for x in (a, c, d, f)}) == 4 and e is c
    assert cache.is_loaded(_opts()) and a.generated == 2


def test_cache_evicts_least_recently_used_by_count_and_by_memory():
    rss = {"mb": 100.0}
    cache = _cache(max_models=2, max_rss=500.0, rss=lambda: rss["mb"])
    first, second, third = _opts(), _opts(unet_mode="packed"), _opts(backend="torch")
    for o in (first, second):
        with cache.use(o):
            pass
    with cache.use(first):  # first is now the most recent
        pass
    with cache.use(third):
        pass
    assert first in cache and third in cache and second not in cache  # over the count: the oldest idle went
    rss["mb"] = 900.0  # over the memory budget: idle entries go until one is left
    with cache.use(second):
        pass
    assert len(cache) == 1 and second in cache


def test_cache_never_evicts_a_model_in_use():
    cache = _cache(max_models=1)
    with cache.use(_opts()) as busy:
        with cache.use(_opts(unet_mode="packed")):
            pass
        assert busy.key in [e.key for e in cache._entries.values()]
    assert len(cache) == 1


def test_one_generation_per_model_at_a_time():
    cache = _cache()
    inside, peak, lock = [0], [0], threading.Lock()

    def work():
        with cache.use(_opts()):
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            threading.Event().wait(0.05)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 1


# ---- the compressed reference model, made once ----------------------------------------------------------
def test_prepare_compressed_makes_once_and_keys_by_options(tmp_path, monkeypatch):
    import pocketsd.app.models as M
    from pocketsd.palettize.calibrate import CalibrationSettings
    from pocketsd.palettize.recipes import make_recipe

    made = []

    def fake_compress(opts, on_progress=None):  # the real stage runs in the browser tests' fixture
        made.append(opts)
        opts.out.mkdir(parents=True)
        (opts.out / "pocketsd.json").write_text("{}")

    monkeypatch.setattr(M, "compress_model", fake_compress)
    calib = CalibrationSettings(count=2, steps=2)
    a = M.prepare_compressed(None, tmp_path, make_recipe("w4r0"), calib)
    b = M.prepare_compressed(None, tmp_path, make_recipe("w4r0"), calib)
    c = M.prepare_compressed(None, tmp_path, make_recipe("w4r32"), calib)
    assert a == b != c and len(made) == 2
    assert made[0].components == ("unet",)  # the page compares the UNet: the text encoders stay fp16 by default
    assert a.parent == tmp_path / "app" and a.name.startswith("reference-w4r0-")
    with pytest.raises(BadInput, match="compressed"):
        M.prepare_compressed(str(a), tmp_path)


# ---- uploads and sketches ---------------------------------------------------------------------------------
def test_upload_limits_broken_and_good_files(tmp_path):
    from pocketsd.app.uploads import check_upload

    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(good)
    assert check_upload(good, 10**6, 10**6) == good
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(noise)
    with pytest.raises(BadInput, match=r"noise.png is 0\.3 MB, over the 0\.1 MB limit"):
        check_upload(noise, 100 * 1024, 10**9)
    huge = tmp_path / "huge.png"
    Image.new("1", (5000, 4000)).save(huge)  # 20 MP in a few kB: refused from the header, before decoding
    assert huge.stat().st_size < 100_000
    with pytest.raises(BadInput, match="5000×4000 pixels, over the 16.8 MP limit"):
        check_upload(huge, 10**8, 4096 * 4096)
    broken = tmp_path / "broken.png"
    broken.write_bytes(good.read_bytes()[:60])
    with pytest.raises(BadInput, match="broken.png"):
        check_upload(broken, 10**6, 10**6)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(BadInput, match="not an image"):
        check_upload(text, 10**6, 10**6)
    with pytest.raises(BadInput, match="no image uploaded"):
        check_upload(None, 10**6, 10**6)


def test_sketch_empty_refused_and_strokes_kept(tmp_path):
    from pocketsd.app.uploads import sketch_to_file

    with pytest.raises(BadInput, match="the sketch is empty"):
        sketch_to_file(None, tmp_path)
    with pytest.raises(BadInput, match="the sketch is empty"):
        sketch_to_file({"background": None, "layers": [], "composite": Image.new("RGB", (64, 64), "white")}, tmp_path)
    strokes = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    strokes.paste((0, 0, 0, 255), (8, 8, 30, 30))
    path = sketch_to_file({"background": None, "layers": [strokes], "composite": strokes}, tmp_path)
    saved = np.asarray(Image.open(path))
    assert saved.shape == (64, 64, 3) and saved[10, 10].tolist() == [0, 0, 0] and saved[50, 50].tolist() == [255] * 3


# ---- what the page shows -----------------------------------------------------------------------------------
REPORT = {"seed": 3, "loras": [], "timings_s": {"load": 1.5, "text_encode": 0.01, "unet_steps": [0.03, 0.05],
                                                 "vae_decode": 0.02, "total": 2.25},
          "memory": {"peak_rss_mb": 512.4, "peak_footprint_mb": None, "cuda_peak_mb": 80.0, "mps_peak_mb": None},
          "model": {"unet_bytes": 3 * 2**20, "bits_per_weight": 4.41}}


def test_stats_rows_come_from_the_report():
    from pocketsd.app.view import stats_html, stats_rows

    rows = {r.field: r for r in stats_rows(REPORT, psnr_db=31.25)}
    assert rows["total_s"].value == 2.25 and rows["total_s"].text == "2.25 s"
    assert rows["step_mean_s"].value == pytest.approx(0.04) and rows["step_mean_s"].label == "step mean (×2)"
    assert rows["cuda_peak_mb"].text == "80 MB" and "mps_peak_mb" not in rows  # only the device's own counter
    assert rows["unet_mb"].value == 3.0 and rows["bits_per_weight"].text == "4.41" and rows["psnr_db"].text == "31.2 dB"
    html = stats_html(REPORT)
    assert 'data-field="total_s"' in html and 'data-value="2.25"' in html and "psnr_db" not in html
    assert stats_rows(REPORT, math.inf)[-1].text == "identical"


def test_messages_are_escaped():
    from pocketsd.app.view import message_html

    out = message_html(error="<b>bad</b>", warnings=["w & x"])
    assert "&lt;b&gt;" in out and "w &amp; x" in out and 'role="alert"' in out


def test_model_choices_offer_core_ml_only_on_macos(monkeypatch, tmp_path):
    import pocketsd.app.models as M
    from pocketsd.app.config import AppConfig

    config = AppConfig(compressed=tmp_path / "c", coreml=tmp_path / "bundle")
    monkeypatch.setattr(M.sys, "platform", "linux")
    assert list(M.model_choices(config)) == [M.FP16, M.DENSE, M.PACKED]
    monkeypatch.setattr(M.sys, "platform", "darwin")
    choices = M.model_choices(config)
    assert list(choices) == [M.FP16, M.DENSE, M.PACKED, M.COREML] and choices[M.COREML].backend == "coreml"
    assert [c.label for c in M.compare_pair(choices, M.FP16)] == [M.FP16, M.DENSE]
    assert [c.label for c in M.compare_pair(choices, M.PACKED)] == [M.FP16, M.PACKED]


def test_host_warning_only_off_loopback():
    from pocketsd.app.server import host_warning, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert host_warning("127.0.0.1") is None
    assert "every device on your networks" in host_warning("0.0.0.0")
    assert "no login" in host_warning("192.168.1.20")


def test_launch_waits_for_a_slow_page_and_a_silent_one_is_one_line():
    """Gradio's own start-up check gives up after one 3 s request (on a busy machine it raised a ValueError asking
    for a share link); the app's check waits for a page that answers late, and one that never answers is BadInput."""
    import http.server
    import socket
    import time

    from pocketsd.app.ui import wait_until_serving

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            time.sleep(3.5)  # longer than gradio's one request
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        t0 = time.monotonic()
        wait_until_serving(f"http://127.0.0.1:{server.server_port}/", timeout_s=20)
        assert time.monotonic() - t0 >= 3.5
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # bound, never listening: nothing answers
        with pytest.raises(BadInput, match=f"127.0.0.1:{closed}/ did not answer within 0.5 s"):
            wait_until_serving(f"http://127.0.0.1:{closed}/", timeout_s=0.5)


def test_cli_refuses_bad_app_options_in_one_line(tmp_path, capsys):
    from pocketsd.cli import main

    assert main(["app", "--port", "70000"]) == 2
    assert main(["app", "--compressed", str(tmp_path)]) == 2
    assert main(["app", "--max-upload-mb", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("pocketsd: error: ") for line in err)
    assert "70000" in err[0] and "is a folder but not a diffusers pipeline" in err[1]


def test_page_options_are_the_pipelines_options(tmp_path):
    from pocketsd.app.config import AppConfig
    from pocketsd.app.ui import build_options

    loras = {"poster": Path("/x/poster.safetensors")}
    common = dict(prompt="a red circle", domain="none", lora="poster", lora_scale=0.5, seed=7, steps=3, guidance=2.0,
                  scheduler="ddim", negative="", upload=None, strength=0.8, sketch=None, config=AppConfig(),
                  sketch_dir=tmp_path, loras=loras)
    opts = build_options(source="text", **common)
    assert (opts.seed, opts.steps, opts.guidance, opts.scheduler, opts.negative, opts.domain) == (7, 3, 2.0, "ddim",
                                                                                                   None, None)
    assert opts.loras == [(loras["poster"], 0.5)] and opts.image is None and opts.strength is None
    with pytest.raises(BadInput, match="no image uploaded"):
        build_options(source="image", **common)
    with pytest.raises(BadInput, match="the sketch is empty"):
        build_options(source="sketch", **common)


# ---- a real comparison on the reference model ----------------------------------------------------------------
def test_run_models_compares_saves_and_cancels(tmp_path):
    from pocketsd.app.compare import RunLog, run_models
    from pocketsd.app.models import FP16, ModelCache, ModelChoice
    from pocketsd.pipeline.session import GenerationCancelled

    cache = ModelCache(2, None)
    # the same fp16 model twice: the second image must equal the first (identical, infinite PSNR)
    pair = [ModelChoice(FP16, None), ModelChoice("again", None, backend="torch")]
    words = "on a gray background " * 20 + "yellow triangle"  # words the reference tokenizer knows, 100+ tokens
    runlog = RunLog()
    results = list(run_models(_opts(steps=2, seed=4, prompt=f"a red circle on a white background {words}"), pair,
                              cache, tmp_path, log=runlog))
    assert [r.choice.label for r in results] == [FP16, "again"]
    first, second = results
    assert first.psnr_db is None and second.psnr_db == math.inf
    assert second.report["comparison"] == {"reference_model": FP16, "image_psnr_db": None, "identical": True}
    saved = json.loads(second.report_path.read_text())
    assert saved["seed"] == 4 and saved["steps"] == 2 and saved["output"] == str(second.png)
    assert Image.open(first.png).text["prompt"].startswith("a red circle")
    assert len(runlog.warnings) == 1 and runlog.warnings[0].endswith('yellow triangle"')  # said once though both models warned

    cancel = threading.Event()
    steps_seen = []

    def progress(p):
        if p.stage == "denoising":
            steps_seen.append(p.step)
            cancel.set()

    before = set(tmp_path.iterdir())
    with pytest.raises(GenerationCancelled, match="after step 1 of 50"):
        list(run_models(_opts(steps=50), pair[:1], cache, tmp_path, cancel=cancel, on_progress=progress))
    assert steps_seen == [1] and set(tmp_path.iterdir()) == before  # nothing written for a stopped run
    with pytest.raises(BadInput, match="--steps must be at least 1"):
        list(run_models(_opts(steps=0), pair, cache, tmp_path))


def test_lora_upload_is_checked_and_used_in_place_of_the_picked_one(tmp_path):
    from pocketsd.app.config import AppConfig
    from pocketsd.app.ui import build_options, check_lora_upload
    from pocketsd.data import REFERENCE_LORAS

    good = tmp_path / "mine.safetensors"
    good.write_bytes((REFERENCE_LORAS / "poster.safetensors").read_bytes())
    assert check_lora_upload(good) == good
    for name, data, words in (("junk.safetensors", b"\x00" * 64, "junk.safetensors is not a readable"),
                              ("style.txt", b"hello", "not a .safetensors file"),
                              ("empty.safetensors", b"", "empty.safetensors")):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(BadInput, match=words) as exc:
            check_lora_upload(path)
        assert "\n" not in str(exc.value)
    with pytest.raises(BadInput, match="gone from the server"):
        check_lora_upload(tmp_path / "missing.safetensors")
    loras = {"poster": REFERENCE_LORAS / "poster.safetensors"}
    opts = build_options(source="text", prompt="a red circle", domain="none", lora="poster", lora_scale=0.5, seed=1,
                         steps=2, guidance=5.0, scheduler=None, negative="", upload=None, strength=None, sketch=None,
                         config=AppConfig(), sketch_dir=tmp_path, loras=loras, lora_upload=str(good))
    assert opts.loras == [(good, 0.5)]  # the visitor's own file, at the page's scale


def test_each_visit_gets_its_own_unguessable_folder_removed_when_it_ends(tmp_path):
    from pocketsd.app.ui import SessionFiles

    files = SessionFiles(tmp_path / "sessions")
    a, b = files.folder("session-a"), files.folder("session-b")
    assert a != b and a.parent == b.parent == tmp_path / "sessions" and len(a.name) == 32
    assert files.folder("session-a") == a  # the same visit keeps its folder
    (a / "out.png").write_bytes(b"a")
    (b / "out.png").write_bytes(b"b")
    upload = tmp_path / "upload" / "h" / "a.png"
    upload.parent.mkdir(parents=True)
    upload.write_bytes(b"a")
    files.uploaded("session-a", upload)
    files.forget("session-a")
    assert not a.exists() and not upload.exists() and not upload.parent.exists()
    assert (b / "out.png").read_bytes() == b"b" and files.sessions() == 1  # the other visit is untouched
