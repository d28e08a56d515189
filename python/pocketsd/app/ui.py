"""The page: inputs in tabs (text, sketch, image), the controls, and two result columns (fp16 | 4-bit).

Generation runs in Gradio's queue (one request at a time by default, a bounded line whose place Gradio shows on
the result panels); the work itself runs in a worker thread so the page can show each step as it happens, and
Stop sets the session's cancel event, which the pipeline checks between steps. Every problem a visitor can cause
arrives as a `BadInput` line in the message box; anything else is one line there too, its traceback in the log.
"""

from __future__ import annotations

import atexit
import inspect
import logging
import math
import queue
import random
import secrets
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from ..data import REFERENCE_LORAS
from ..errors import BadInput
from ..pipeline.options import (DEFAULT_GUIDANCE, DEFAULT_SCHEDULER, DEFAULT_STEPS, DEFAULT_STRENGTH, SCHEDULERS,
                                GenerateOptions)
from ..pipeline.presets import load_presets
from ..pipeline.session import GenerationCancelled, resolve_settings
from .compare import ModelResult, Progress, RunLog, check_request, run_models
from .config import AppConfig
from .models import COREML, DENSE, FP16, ModelCache, compare_pair, coreml_runs_here, model_choices
from .uploads import check_upload, sketch_to_file
from .view import message_html, stats_html, step_frame, title_html

log = logging.getLogger("pocketsd.app")

NO_PRESET, NO_LORA = "none", "none"
SOURCES = ("text", "sketch", "image")
SKETCH_SIDE = 384  # the sketchpad's canvas in pixels (the sketch is fitted to the model's size afterwards)
MAX_STEPS_FIELD = 150  # the steps slider's end (the pipeline itself takes up to 1000)
SEED_RANGE = 2**32  # the random button's seeds (any seed up to 2^64-1 can be typed)
PROGRESS_EVERY_S = 0.15  # the status line is refreshed at most this often while steps run

CSS = """
.psd-stats { width: 100%; font-size: 0.9em; border-collapse: collapse; }
.psd-stats th { text-align: left; font-weight: normal; opacity: 0.8; padding: 1px 6px; }
.psd-stats td { text-align: right; font-variant-numeric: tabular-nums; padding: 1px 6px; }
.psd-stats tr[data-field=total_s] td, .psd-stats tr[data-field=psnr_db] td { font-weight: bold; }
.psd-error { color: #b42318; font-weight: 600; }
.psd-warning { color: #b54708; }
.psd-title { margin: 0; } .psd-title small { font-weight: normal; opacity: 0.7; }
#status { min-height: 1.5em; font-variant-numeric: tabular-nums; }
#left-image img, #right-image img { width: 100%; height: 100%; object-fit: contain; }
/* A phone (390 px wide): the columns' min widths (340 and 420 px) would push the page sideways, so below 600 px
   every column takes the full width, the two results stack, and nothing is wider than the screen. */
@media (max-width: 600px) {
  .gradio-container { min-width: 0 !important; padding-left: 6px !important; padding-right: 6px !important; }
  #controls-col, #results-col, #left-col, #right-col { min-width: 0 !important; flex: 1 1 100% !important; }
  #results-row { flex-wrap: wrap !important; }
  .psd-stats { font-size: 0.8em; }
  body { overflow-x: hidden; }
}
"""


@dataclass
class Side:
    """One result column."""

    title: gr.HTML
    image: gr.Image
    stats: gr.HTML
    chart: gr.LinePlot
    png: gr.DownloadButton
    report: gr.DownloadButton

    def components(self) -> list:
        return [self.title, self.image, self.stats, self.chart, self.png, self.report]

    def cleared(self, title: str = "") -> dict:
        return {self.title: title, self.image: None, self.stats: "", self.chart: None,
                self.png: gr.update(value=None, visible=False), self.report: gr.update(value=None, visible=False)}

    def filled(self, result: ModelResult) -> dict:
        report = result.report
        return {self.title: title_html(result.choice.label, report), self.image: str(result.png),
                self.stats: stats_html(report, result.psnr_db), self.chart: step_frame(report, result.choice.label),
                self.png: gr.update(value=str(result.png), visible=True),
                self.report: gr.update(value=str(result.report_path), visible=True)}


@dataclass
class Cancels:
    """Each browser session's cancel event: armed when Generate is pressed, set by Stop."""

    events: dict[str, threading.Event] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def arm(self, session: str) -> threading.Event:
        with self.lock:
            event = self.events[session] = threading.Event()
            return event

    def get(self, session: str) -> threading.Event:
        with self.lock:
            return self.events.setdefault(session, threading.Event())

    def stop(self, session: str) -> None:
        with self.lock:
            event = self.events.get(session)
        if event is not None:
            event.set()


class SessionFiles:
    """Each visitor's files, kept apart and removed when the visit ends.

    A session's outputs and sketches go to `root/<random 128-bit name>/`: the work folder is served by Gradio's
    file route (allowed_paths), so a name another visitor could guess (a run counter, a seed) would hand them the
    files. The session's uploads (Gradio's own upload folder) are recorded too, and `forget` removes all of it when
    the page is closed (`Blocks.unload`); `forget_all` runs at exit.
    """

    def __init__(self, root: Path):
        self.root = root
        self._folders: dict[str, Path] = {}
        self._uploads: dict[str, set[Path]] = {}
        self._lock = threading.Lock()

    def folder(self, session: str) -> Path:
        with self._lock:
            if session not in self._folders:
                self._folders[session] = self.root / secrets.token_hex(16)
            path = self._folders[session]
        path.mkdir(parents=True, exist_ok=True)
        return path

    def uploaded(self, session: str, path) -> None:
        if path:
            with self._lock:
                self._uploads.setdefault(session, set()).add(Path(path))

    def forget(self, session: str) -> None:
        with self._lock:
            folder = self._folders.pop(session, None)
            uploads = self._uploads.pop(session, set())
        files = list(uploads) + ([p for p in folder.rglob("*") if p.is_file()] if folder and folder.is_dir() else [])
        for path in files:
            _drop_gradio_copy(path)
            if path in uploads:
                path.unlink(missing_ok=True)
                with_parent = path.parent  # Gradio keeps each upload in a folder of its own: remove it when empty
                try:
                    with_parent.rmdir()
                except OSError:
                    pass
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def forget_all(self) -> None:
        for session in list(self._folders) + list(self._uploads):
            self.forget(session)
        shutil.rmtree(self.root, ignore_errors=True)

    def sessions(self) -> int:
        with self._lock:
            return len(set(self._folders) | set(self._uploads))


def _drop_gradio_copy(path: Path) -> None:
    """Remove the copy Gradio made of `path` in its cache when it sent the file to the page (named by a keyed
    digest of the content, so only this process can find it; `delete_cache` catches any left by age)."""
    try:
        from gradio import processing_utils, utils

        if path.is_file():
            copy = Path(utils.get_upload_folder()) / processing_utils.hash_file(path) / path.name
            if copy.resolve() != path.resolve():
                copy.unlink(missing_ok=True)
                try:
                    copy.parent.rmdir()
                except OSError:
                    pass
    except Exception:  # noqa: BLE001 — cleanup is best effort; the age-based cache deletion still runs
        log.debug("could not drop gradio's copy of %s", path, exc_info=True)


MAX_LORA_UPLOAD_MB = 256.0  # a LoRA for SDXL is tens of MB at high rank; the reference LoRAs are far smaller


def check_lora_upload(path) -> Path:
    """An uploaded LoRA file that is a safetensors file of LoRA factors, checked from its header and key names.

    The full read (key formats, shapes against the model) is the pipeline's own `read_lora`, when the LoRA is applied
    at generation; a file it refuses is one BadInput line then. The upload check stays light on purpose: it runs
    outside the queue, in Gradio's request threads, and must not load tensors or diffusers there."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise BadInput(f"the LoRA upload {path.name} is gone from the server; upload it again")
    if path.suffix.lower() != ".safetensors":
        raise BadInput(f"the LoRA upload {path.name} is not a .safetensors file")
    if path.stat().st_size > MAX_LORA_UPLOAD_MB * 2**20:
        raise BadInput(f"the LoRA upload {path.name} is over the {MAX_LORA_UPLOAD_MB:g} MB limit")
    try:
        with safe_open(str(path), framework="pt") as fh:
            keys = list(fh.keys())
    except Exception as exc:  # noqa: BLE001 — a file the reader cannot parse is the visitor's input, one line
        log.info("LoRA upload %s refused: %s", path.name, exc)
        raise BadInput(f"the LoRA upload {path.name} is not a readable safetensors file") from None
    if not any("lora" in k.lower() for k in keys):
        raise BadInput(f"the LoRA upload {path.name} holds no LoRA factors ({len(keys)} tensors, none named lora)")
    return path


def _lora_files() -> dict[str, Path]:
    return {p.stem: p for p in sorted(Path(REFERENCE_LORAS).glob("*.safetensors"))}


def build_options(*, source: str, prompt: str, domain: str, lora: str, lora_scale: float, seed, steps, guidance,
                  scheduler: str, negative: str, upload, strength, sketch, config: AppConfig, sketch_dir: Path,
                  loras: dict[str, Path], lora_upload=None) -> GenerateOptions:
    """The page's fields as the pipeline's options (what the CLI builds from its flags)."""
    if seed is None or (isinstance(seed, float) and not math.isfinite(seed)) or int(seed) != seed:
        raise BadInput("the seed must be a whole number")  # NaN/inf from the number box would crash int()
    lora_list = []
    if lora_upload:  # the visitor's own LoRA file takes the place of the picked one
        lora_list.append((check_lora_upload(lora_upload), float(lora_scale)))
    elif lora and lora != NO_LORA:
        if lora not in loras:
            raise BadInput(f"unknown LoRA {lora!r}; pick one of {', '.join(loras) or 'none'}")
        lora_list.append((loras[lora], float(lora_scale)))
    image = sketch_file = None
    strength_value = None
    if source == "image":
        image = check_upload(upload, config.max_upload_bytes, config.max_upload_pixels)
        strength_value = float(strength)
    elif source == "sketch":
        sketch_file = sketch_to_file(sketch, sketch_dir)
    elif source != "text":
        raise BadInput(f"unknown input {source!r}")
    return GenerateOptions(
        prompt=prompt or "", domain=None if domain in (None, "", NO_PRESET) else domain, loras=lora_list,
        seed=int(seed), steps=int(steps) if steps is not None else None,
        guidance=float(guidance) if guidance is not None else None, scheduler=scheduler or None,
        negative=negative if negative else None, image=image, strength=strength_value, sketch=sketch_file,
        device=config.device)


def expanded_prompt(prompt: str, domain: str) -> str:
    try:
        settings = resolve_settings(GenerateOptions(prompt=prompt or "", domain=None if domain == NO_PRESET else domain))
    except BadInput as exc:
        return f"({exc})"
    return settings.expanded_prompt


def build_app(config: AppConfig, cache: ModelCache | None = None) -> gr.Blocks:
    """The page for `config` (its `compressed` folder must already exist; `server.prepare_models` makes it)."""
    choices = model_choices(config)
    cache = cache or ModelCache(config.cache_models, config.cache_rss_mb)
    work_dir = Path(config.work_dir or tempfile.mkdtemp(prefix="pocketsd-app-"))
    config.work_dir = work_dir
    files = SessionFiles(work_dir / "sessions")
    atexit.register(files.forget_all)  # a server stopped with visitors still on the page leaves nothing behind
    presets = load_presets()
    loras = _lora_files()
    cancels = Cancels()
    start_steps = config.default_steps or DEFAULT_STEPS

    # delete_cache: Gradio's copies of the files it sent go after an hour even if a page never says goodbye, and
    # all of them when the server stops
    with gr.Blocks(title="PocketSD — fp16 against 4-bit", delete_cache=(600, 3600)) as demo:
        demo.pocketsd_cache = cache  # the tests and the server read these
        demo.pocketsd_work_dir = work_dir
        demo.pocketsd_files = files
        gr.Markdown("## PocketSD — the same prompt and seed on fp16 and on the 4-bit + low-rank model\n"
                    "Time per stage, peak memory, model size and the 4-bit image's PSNR against fp16, "
                    f"measured on this machine ({config.device}).")
        source = gr.State("text")
        history = gr.State([])
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=340, elem_id="controls-col"):
                prompt = gr.Textbox(label="Prompt", value="a red circle on a white background, on the left",
                                    lines=2, elem_id="prompt")
                with gr.Tabs(elem_id="inputs"):
                    with gr.Tab("Text", id="text", elem_id="tab-text") as tab_text:
                        gr.Markdown("Text → image: the prompt alone.")
                    with gr.Tab("Sketch", id="sketch", elem_id="tab-sketch") as tab_sketch:
                        sketch = gr.Sketchpad(label="Draw an outline (mouse or finger)", type="pil", image_mode="RGB",
                                              canvas_size=(SKETCH_SIDE, SKETCH_SIDE), elem_id="sketch",
                                              layers=False, transforms=(), buttons=[],
                                              brush=gr.Brush(colors=["#000000"], color_mode="fixed", default_size=8))
                    with gr.Tab("Image", id="image", elem_id="tab-image") as tab_image:
                        upload = gr.File(label=f"Image (up to {config.max_upload_mb:g} MB)", file_count="single",
                                         type="filepath", elem_id="upload")
                        preview = gr.Image(label="uploaded", interactive=False, height=160, elem_id="upload-preview")
                        strength = gr.Slider(0.05, 1.0, value=DEFAULT_STRENGTH, step=0.05, label="Strength",
                                             info="how much to repaint (1 = ignore the image)", elem_id="strength")
                with gr.Row():
                    domain = gr.Dropdown([NO_PRESET] + list(presets), value=NO_PRESET, label="Domain preset",
                                         elem_id="domain")
                    lora = gr.Dropdown([NO_LORA] + list(loras), value=NO_LORA, label="LoRA style", elem_id="lora")
                    lora_scale = gr.Slider(-2.0, 2.0, value=1.0, step=0.1, label="LoRA scale", elem_id="lora-scale")
                lora_upload = gr.File(label="…or your own LoRA (.safetensors; seen by you only)", file_count="single",
                                      file_types=[".safetensors"], type="filepath", elem_id="lora-upload", height=90)
                expanded = gr.Textbox(label="Expanded prompt", interactive=False, elem_id="expanded",
                                      value=expanded_prompt(prompt.value, NO_PRESET))
                preset_note = gr.Markdown("", elem_id="preset-note")
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", elem_id="seed", scale=3)
                    random_seed = gr.Button("random", elem_id="random-seed", scale=1, min_width=60)
                with gr.Row():
                    steps = gr.Slider(1, MAX_STEPS_FIELD, value=start_steps, step=1, label="Steps", elem_id="steps")
                    guidance = gr.Slider(0.0, 20.0, value=DEFAULT_GUIDANCE, step=0.5, label="Guidance",
                                         elem_id="guidance")
                with gr.Row():
                    scheduler = gr.Dropdown(list(SCHEDULERS), value=DEFAULT_SCHEDULER, label="Scheduler",
                                            elem_id="scheduler")
                    negative = gr.Textbox(label="Negative prompt", value="", elem_id="negative")
                with gr.Row():
                    model = gr.Radio(list(choices), value=DENSE, label="Model", elem_id="model",
                                     info="compare mode sets this 4-bit form beside fp16")
                    compare = gr.Checkbox(value=True, label="Compare with fp16 (side by side)", elem_id="compare")
                with gr.Row():
                    go = gr.Button("Generate", variant="primary", elem_id="go")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
                status = gr.HTML("", elem_id="status")
                message = gr.HTML("", elem_id="message")
            with gr.Column(scale=3, min_width=420, elem_id="results-col"):
                sides = []
                with gr.Row(equal_height=False, elem_id="results-row"):
                    for name in ("left", "right"):
                        with gr.Column(min_width=200, elem_id=f"{name}-col"):
                            sides.append(Side(
                                title=gr.HTML("", elem_id=f"{name}-title"),
                                image=gr.Image(label="image", type="filepath", format="png", interactive=False,
                                               height=256, elem_id=f"{name}-image"),
                                stats=gr.HTML("", elem_id=f"{name}-stats"),
                                chart=gr.LinePlot(x="step", y="ms", color="model", title="step time (ms)",
                                                  height=150, elem_id=f"{name}-chart", show_label=False),
                                png=gr.DownloadButton("PNG", visible=False, elem_id=f"{name}-png", size="sm"),
                                report=gr.DownloadButton("JSON report", visible=False, elem_id=f"{name}-json",
                                                         size="sm")))
                gallery = gr.Gallery(label="This visit", columns=8, height=150, elem_id="gallery",
                                     object_fit="contain")

        # ---- small events: answered at once, outside the queue ------------------------------------
        tab_text.select(lambda: "text", None, source, queue=False)
        tab_sketch.select(lambda: "sketch", None, source, queue=False)
        tab_image.select(lambda: "image", None, source, queue=False)
        random_seed.click(lambda: random.randrange(SEED_RANGE), None, seed, queue=False)

        def on_preset(name: str, text: str):
            if name == NO_PRESET:
                return (start_steps, DEFAULT_GUIDANCE, DEFAULT_SCHEDULER, "", expanded_prompt(text, name), "")
            p = presets[name]
            note = f"**{p.title}** — {p.description}"
            if p.lora is not None:
                note += f" Brings the LoRA `{p.lora.file}` ×{p.lora.scale:g}."
            return p.steps, p.guidance, p.scheduler, p.negative_prompt, expanded_prompt(text, name), note

        domain.change(on_preset, [domain, prompt], [steps, guidance, scheduler, negative, expanded, preset_note],
                      queue=False)
        prompt.change(expanded_prompt, [prompt, domain], expanded, queue=False)

        def on_upload(path, request: gr.Request):
            if path is None:
                return None, None, ""
            files.uploaded(request.session_hash, path)
            try:
                checked = str(check_upload(path, config.max_upload_bytes, config.max_upload_pixels))
                return gr.update(), checked, ""
            except BadInput as exc:  # the refused file is dropped, so the next one can be picked at once
                return None, None, message_html(error=str(exc))

        upload.upload(on_upload, upload, [upload, preview, message], queue=False)

        def on_lora_upload(path, request: gr.Request):
            if path is None:
                return None, ""
            files.uploaded(request.session_hash, path)
            try:
                check_lora_upload(path)
                return gr.update(), ""
            except BadInput as exc:  # dropped, as a refused image is
                return None, message_html(error=str(exc))

        lora_upload.upload(on_lora_upload, lora_upload, [lora_upload, message], queue=False)

        def on_leave(request: gr.Request):
            # the tab was closed or reloaded: this visit's uploads, outputs and sketches go now
            files.forget(request.session_hash)

        demo.unload(on_leave)

        def arm(request: gr.Request):
            cancels.arm(request.session_hash)
            return "waiting for a free slot…"

        def halt(request: gr.Request):
            cancels.stop(request.session_hash)
            return "stopping after the current step…"

        # ---- generation: queued ----------------------------------------------------------------------
        outputs = [status, message, gallery, history] + [c for s in sides for c in s.components()]

        def generate(src, prompt_text, domain_name, lora_name, lora_s, seed_value, steps_value, guidance_value,
                     scheduler_name, negative_text, picked, compare_on, upload_path, strength_value, sketch_value,
                     lora_path, past, request: gr.Request):
            cancel = cancels.get(request.session_hash)
            own = files.folder(request.session_hash)
            runlog = RunLog()
            clear = {**sides[0].cleared(), **sides[1].cleared()}
            try:
                base = build_options(source=src, prompt=prompt_text, domain=domain_name, lora=lora_name,
                                     lora_scale=lora_s, seed=seed_value, steps=steps_value, guidance=guidance_value,
                                     scheduler=scheduler_name, negative=negative_text, upload=upload_path,
                                     strength=strength_value, sketch=sketch_value, config=config,
                                     sketch_dir=own / "sketches", loras=loras, lora_upload=lora_path)
                run = compare_pair(choices, picked) if compare_on else [choices[picked]]
                check_request(base, run)
            except BadInput as exc:
                yield {**clear, status: "", message: message_html(error=str(exc))}
                return
            # `shown` is everything the result panels hold; every yield that ends a stage sends all of it, because
            # Gradio may fold quick successive yields of a generator into one and a partial update would be lost.
            shown = {**clear, sides[1].title: "" if len(run) > 1 else "<p><i>compare is off</i></p>"}
            yield {**shown, status: "starting…", message: ""}
            t0 = time.perf_counter()
            events: queue.Queue = queue.Queue()
            worker = threading.Thread(target=_work, daemon=True, name="pocketsd-app-generate",
                                      args=(events, base, run, cache, own / "outputs", cancel, runlog))
            worker.start()
            past = list(past or [])
            try:
                last_status = 0.0
                while True:
                    kind, payload = events.get()
                    if kind == "progress":
                        now = time.perf_counter()
                        newest = events.empty()
                        if payload.stage == "loading":
                            yield {status: f"{payload.label}: loading the model (first use)…"}
                        elif newest or now - last_status >= PROGRESS_EVERY_S or payload.step == payload.total:
                            last_status = now
                            yield {status: f"{payload.label}: step {payload.step} of {payload.total}"}
                        continue
                    if kind == "result":
                        past.append((str(payload.png), f"{payload.choice.label} · seed {payload.report['seed']}"))
                        shown.update(sides[run.index(payload.choice)].filled(payload))
                        shown.update({gallery: list(reversed(past)), history: past})
                        yield {**shown, message: message_html(warnings=runlog.warnings)}
                        continue
                    if kind == "done":
                        end = {status: f"done in {time.perf_counter() - t0:.2f} s",
                               message: message_html(warnings=runlog.warnings)}
                    elif kind == "cancelled":
                        end = {status: "", message: message_html(info=f"Stopped: {payload}", warnings=runlog.warnings)}
                    elif kind == "bad_input":
                        end = {status: "", message: message_html(error=payload, warnings=runlog.warnings)}
                    else:  # "failed"
                        end = {status: "", message: message_html(
                            error=f"generation failed: {payload} (details in the server's log)")}
                    yield {**shown, **end}
                    return
            finally:
                cancel.set()  # the page went away or the run ended: a worker still running stops at its next step
                worker.join(timeout=60)

        inputs = [source, prompt, domain, lora, lora_scale, seed, steps, guidance, scheduler, negative, model,
                  compare, upload, strength, sketch, lora_upload, history]
        go.click(arm, None, status, queue=False).then(
            generate, inputs, outputs, concurrency_limit=1, concurrency_id="generate", show_progress="full")
        stop.click(halt, None, status, queue=False)
    return demo


def _work(events: queue.Queue, base: GenerateOptions, run, cache: ModelCache, out_dir: Path,
          cancel: threading.Event, runlog: RunLog) -> None:
    """The worker thread: every model of the request through the pipeline, each event onto `events`."""
    try:
        for result in run_models(base, run, cache, out_dir, cancel=cancel, log=runlog,
                                 on_progress=lambda p: events.put(("progress", p))):
            events.put(("result", result))
        events.put(("done", None))
    except GenerationCancelled as exc:
        events.put(("cancelled", str(exc)))
    except BadInput as exc:
        events.put(("bad_input", str(exc)))
    except Exception as exc:  # noqa: BLE001 — one line in the page, the traceback in the server's log
        log.exception("generation failed")
        events.put(("failed", f"{type(exc).__name__}: {exc}"))


def launch(demo: gr.Blocks, config: AppConfig, *, prevent_thread_lock: bool = False, quiet: bool = False):
    """Queue and serve `demo` as `config` says (the bounded queue, the upload cap, the work folder).

    Gradio checks that its own page answers with one 3-second request and, when that times out (a busy machine:
    seen at load average 17 on 2 cores), raises a ValueError asking for a share link. Its check is skipped and
    `wait_until_serving` waits up to SERVE_CHECK_S instead; a page that never answers is one BadInput line."""
    demo.queue(max_size=config.queue_size, default_concurrency_limit=1)
    # Gradio's own cap refuses absurd uploads before they reach the disk; the page's limit (with its own message)
    # is checked by uploads.check_upload, so the cap sits well above it.
    cap_bytes = int(max(2 * config.max_upload_bytes, config.max_upload_bytes + 10 * 2**20))
    options = dict(server_name=config.host, server_port=config.port, prevent_thread_lock=True, quiet=quiet, css=CSS,
                   max_file_size=cap_bytes, show_error=False, footer_links=[], inbrowser=False,
                   allowed_paths=[str(Path(config.work_dir) / "sessions")])  # visitors' random folders, nothing else
    if "_frontend" in inspect.signature(demo.launch).parameters:
        options["_frontend"] = False  # only gates that one-shot reachability check (gradio 6.31)
    result = demo.launch(**options)
    try:
        wait_until_serving(demo.local_url or f"http://127.0.0.1:{config.port}/")
    except BadInput:
        demo.close()
        raise
    if not prevent_thread_lock:
        demo.block_thread()  # what gradio's launch does itself when not told otherwise (Ctrl-C closes the server)
    return result


SERVE_CHECK_S = 60.0  # how long launch waits for the page to answer its first request


def wait_until_serving(url: str, timeout_s: float = SERVE_CHECK_S) -> None:
    """Poll `url` (directly, never through a proxy from the environment) until it answers, or raise BadInput."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            opener.open(url, timeout=10).close()
            return
        except urllib.error.HTTPError:
            return  # it answered (an error status is still the server speaking)
        except OSError as exc:
            if time.monotonic() > deadline:
                raise BadInput(f"the page at {url} did not answer within {timeout_s:g} s ({exc}); is the machine "
                               "overloaded, or is the address not this machine's?") from None
            time.sleep(0.25)


def coreml_note(config: AppConfig) -> str | None:
    if config.coreml is not None and not coreml_runs_here():
        return f"the Core ML bundle {config.coreml} is not offered: Core ML runs on macOS only"
    return None


__all__ = ["build_app", "launch", "build_options", "expanded_prompt", "FP16", "DENSE", "COREML"]
