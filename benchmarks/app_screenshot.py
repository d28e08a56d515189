"""The README's screenshot of the web demo's compare mode, taken in a real browser after a real generation.

    python benchmarks/app_screenshot.py [--out docs/app-compare.png] [--prompt TEXT] [--seed N] [--steps N]
                                        [--compressed DIR] [--build-dir build] [--width 1400] [--colors 256]

It prepares the models exactly as `pocketsd app` does (the embedded reference model as fp16, its compressed form
made once and cached under BUILD/app/, or --compressed), serves the page in-process on a free 127.0.0.1 port,
opens it in Debian's Chromium with Playwright (never `playwright install`; POCKETSD_CHROMIUM overrides the binary),
types the prompt and seed, presses Generate with compare mode on (its default), waits until both images, their
figures and step charts are shown, and saves a screenshot of the page. The screenshot is reduced to a palette of
--colors colours so the committed PNG stays small.

Beside the PNG it writes OUT with `.json`: the two models' reports (the figures the page shows), the load average
before and after (the machine may be shared), torch's thread count, the Chromium version and the command.
Run it as `nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/app_screenshot.py` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "app-compare.png"
DEFAULT_PROMPT = "a red circle on a white background, on the left"  # the page's own starting prompt
WAIT_MS = 600_000  # two models' generations on a busy 2-core machine
PAGE_WAIT_MS = 180_000  # any other wait (the page's first render, a click's answer) on a busy machine


def _fail(message: str) -> None:
    print(f"app_screenshot: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _shown(path: Path) -> str:
    """A path as the record shows it: relative to the repository when inside it."""
    path = path.resolve()
    return str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)


def _shrink(raw: Path, out: Path, colors: int) -> None:
    """Write `raw` to `out` (atomically) as a palette PNG of `colors` colours."""
    from PIL import Image

    from pocketsd.artifacts.atomic import atomic_write_path

    image = Image.open(raw).convert("RGB")
    small = image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    tmp = atomic_write_path(out)
    try:
        small.save(tmp, format="PNG", optimize=True)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--prompt", default=DEFAULT_PROMPT)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--steps", type=int, default=None, help="default: the pipeline's default (as the page starts)")
    ap.add_argument("--compressed", type=Path, default=None, help="the 4-bit folder (default: made like `make app`)")
    ap.add_argument("--build-dir", type=Path, default=REPO / "build")
    ap.add_argument("--width", type=int, default=1400, help="browser viewport width in CSS pixels")
    ap.add_argument("--colors", type=int, default=256, help="palette size of the saved PNG (2..256)")
    args = ap.parse_args(argv)
    if not 2 <= args.colors <= 256:
        _fail("--colors must be in 2..256")
    if args.steps is not None and not 1 <= args.steps <= 150:
        _fail("--steps must be in 1..150 (the page's slider)")
    if args.seed < 0:
        _fail("--seed must be 0 or more")
    chromium = os.environ.get("POCKETSD_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).is_file():
        _fail("Chromium is not installed: `apt-get install chromium` (Debian), or set POCKETSD_CHROMIUM")
    try:
        import gradio  # noqa: F401
        from playwright.sync_api import TimeoutError as PlaywrightTimeout, expect, sync_playwright
    except ImportError as exc:
        _fail(f"{exc.name} is not installed: run `make setup` (the app and test extras)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(args.out.parent, os.W_OK):
        _fail(f"cannot write to {args.out.parent}")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

    import torch

    from pocketsd.app.config import AppConfig
    from pocketsd.app.server import prepare_models
    from pocketsd.app.ui import build_app, launch
    from pocketsd.artifacts.atomic import write_json
    from pocketsd.errors import BadInput

    work = Path(tempfile.mkdtemp(prefix="pocketsd-screenshot-"))
    try:
        config = AppConfig(compressed=args.compressed, port=_free_port(), work_dir=work / "app",
                           default_steps=args.steps)
        try:
            prepare_models(config, args.build_dir)  # what `pocketsd app` does first (a bar while compressing)
        except BadInput as exc:
            _fail(str(exc))
        demo = build_app(config)
        launch(demo, config, prevent_thread_lock=True, quiet=True)
        url = f"http://127.0.0.1:{config.port}/"
        try:
            _wait_for(url)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, timeout=PAGE_WAIT_MS, args=[
                    "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
                page = browser.new_page(viewport={"width": args.width, "height": 1000})
                page.set_default_timeout(PAGE_WAIT_MS)  # a busy machine renders the page slowly
                page.goto(url)
                page.locator("#go").wait_for()
                page.locator("#prompt textarea").fill(args.prompt)
                seed_box = page.locator("#seed input[type=number]")
                seed_box.fill(str(args.seed))
                seed_box.press("Tab")
                load_before = os.getloadavg()
                t0 = time.perf_counter()
                page.locator("#go").click()
                expect(page.locator("#right-stats [data-field=psnr_db]")).to_be_visible(timeout=WAIT_MS)
                expect(page.locator("#status")).to_contain_text("done in", timeout=PAGE_WAIT_MS)
                wall = time.perf_counter() - t0
                load_after = os.getloadavg()
                for side in ("left", "right"):  # the step charts draw after the data lands
                    page.locator(f"#{side}-chart canvas, #{side}-chart svg").first.wait_for()
                expect(page.locator("#gallery img")).to_have_count(2, timeout=PAGE_WAIT_MS)
                page.wait_for_timeout(1500)  # let the last layout pass and fonts settle
                raw = work / "raw.png"
                page.screenshot(path=str(raw), full_page=True)
                version = browser.version
                browser.close()
        except (PlaywrightTimeout, AssertionError) as exc:  # expect(...) raises AssertionError when it times out
            print(f"app_screenshot: error: the page did not get there in time: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 1
        finally:
            demo.close()
        reports = sorted((work / "app" / "outputs").glob("*.json"))
        if len(reports) != 2:
            _fail(f"expected the two models' reports, found {len(reports)}")
        by_kind = {}
        for path in reports:
            report = json.loads(path.read_text())
            by_kind["fp16" if report["model"]["kind"] != "compressed" else "4-bit"] = report
        _shrink(raw, args.out, args.colors)
        record = {
            "screenshot": _shown(args.out),
            "command": " ".join(["python benchmarks/app_screenshot.py", *(sys.argv[1:] if argv is None else argv)]),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "loadavg_before": load_before, "loadavg_after": load_after,
                        "note": "a shared machine: other jobs ran at the same time"},
            "browser": f"Chromium {version} (Playwright)",
            "compressed": _shown(Path(config.compressed)),
            "wall_s_generate_click_to_done": wall,
            "reports": by_kind,
        }
        write_json(args.out.with_suffix(".json"), record)
        size_kb = args.out.stat().st_size / 1024
        f16, q4 = by_kind["fp16"], by_kind["4-bit"]
        print(f"wrote {args.out} ({size_kb:.0f} KB) and {args.out.with_suffix('.json').name}: fp16 "
              f"{f16['timings_s']['total']:.2f} s, 4-bit {q4['timings_s']['total']:.2f} s, PSNR "
              f"{q4.get('comparison', {}).get('image_psnr_db')} dB, load average {load_after[0]:.2f}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
