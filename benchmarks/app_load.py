"""The web demo under load: 1, 8 and 32 visitors pressing Generate at once, against a server this script starts.

    python benchmarks/app_load.py                      # the full run: 1, 8, 32 clients × 3 requests, 2 steps
    python benchmarks/app_load.py --smoke              # 1 and 2 clients × 2 requests: shows the script works

The server is a child process (`python benchmarks/app_load.py --serve …`) that builds the page with
`pocketsd.app.ui.build_app` and listens on 127.0.0.1 only — there is no option for another address. Its queue holds
`--queue-size` waiting requests and its model cache is told `--cache-rss-mb`; both are recorded.

Each client is a thread speaking Gradio's own queue protocol over plain HTTP (POST /gradio_api/queue/join, then the
server-sent events of /gradio_api/queue/data), the way the page's JavaScript does, so every answer is classified
exactly: answered (the run's last update says "done in"), queue full (the join is refused with Gradio's 503 "Queue
is full" message — the clean refusal a visitor sees), or error (anything else: an error line in the page's message
box, a failed event, an HTTP error, a timeout). Each client sends `--requests` requests one after another and stops;
every level also has a wall-clock limit (`--level-timeout-s`) after which its clients give up and count what is left
as errors, so the script always stops by itself.

While a level runs, a probe thread loads the plain page (GET /) every 0.5 s and reads the queue's length
(/gradio_api/queue/status); the page-load target is judged on the probes taken while the queue was full. A sampler
reads the server's VmRSS every 0.2 s and its VmHWM (the kernel's own peak) after each level.

Targets (each reported as met or missed in the JSON and the table): 0 errors other than clean queue-full answers;
0 crashes (the server process alive and answering after every level); peak RSS (VmHWM) within the configured cache
limit; a plain page load answered within 2 s while the queue is full.

Writes benchmarks/results/app_load.{json,md} and app_load.png (latency by clients; skipped without matplotlib).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
HOST = "127.0.0.1"  # the only address the server is ever given
PAGE_TARGET_S = 2.0
API = "/gradio_api"


def bad_input(message: str) -> None:
    print(f"app_load: error: {message}", file=sys.stderr)
    raise SystemExit(2)


# ---- the server (child process) ---------------------------------------------------------------------------
def serve(args) -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from pocketsd.app.config import AppConfig
    from pocketsd.app.models import prepare_compressed
    from pocketsd.app.ui import build_app, launch
    from pocketsd.palettize.calibrate import CalibrationSettings
    from pocketsd.palettize.recipes import make_recipe

    # the browser tests' 4-bit model (w4r0, tiny calibration): the quickest honest one, cached under build/app/
    compressed = Path(args.compressed) if args.compressed else prepare_compressed(
        None, REPO / "build", make_recipe("w4r0"), CalibrationSettings(count=2, steps=2, rows_per_layer=32),
        components=("unet",))
    config = AppConfig(compressed=compressed, host=HOST, port=args.port, queue_size=args.queue_size,
                       cache_rss_mb=args.cache_rss_mb, default_steps=args.steps)
    demo = build_app(config)
    signal.signal(signal.SIGTERM, lambda *_: (demo.close(), os._exit(0)))
    launch(demo, config, prevent_thread_lock=True, quiet=True)
    print(f"READY http://{HOST}:{args.port}/", flush=True)
    while True:
        time.sleep(3600)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of `pid` in MB (empty once it is gone)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0]) / 1024  # the kernel reports kB
    except OSError:
        pass
    return out


# ---- the clients ---------------------------------------------------------------------------------------------
@dataclass
class Answer:
    kind: str  # "answered", "queue_full" or "error"
    latency_s: float
    detail: str = ""


@dataclass
class Level:
    clients: int
    requests_per_client: int
    answers: list[Answer] = field(default_factory=list)
    page_probes: list[tuple[float, int, bool]] = field(default_factory=list)  # (seconds, queue length, answered)
    peak_vmrss_mb: float = 0.0
    vmhwm_mb: float | None = None
    server_alive: bool = True
    wall_s: float = 0.0


class Page:
    """What a request needs from the served page: the generate event's number and each input's starting value."""

    def __init__(self, http, base: str):
        config = http.get(base + "config", timeout=30).json()
        components = {c["id"]: c for c in config["components"]}
        dep = next((d for d in config["dependencies"] if d.get("api_name") == "generate"), None)
        if dep is None:
            raise RuntimeError("the page has no 'generate' event")
        self.fn_index = dep["id"]
        self.inputs = [components[i] for i in dep["inputs"]]
        self.trigger_id = dep["targets"][0][0] if dep.get("targets") else None

    def data(self, **by_elem_id) -> list:
        values = []
        for comp in self.inputs:
            props = comp.get("props", {})
            elem = props.get("elem_id")
            if comp.get("type") == "state":
                values.append(None)  # the server keeps state per session; the page itself sends null
            elif elem in by_elem_id:
                values.append(by_elem_id[elem])
            else:
                values.append(props.get("value"))
        return values


def one_request(http, base: str, page: Page, values: dict, deadline: float) -> Answer:
    session = secrets.token_hex(6)
    body = {"data": page.data(**values), "fn_index": page.fn_index, "session_hash": session, "event_data": None,
            "trigger_id": page.trigger_id}
    t0 = time.perf_counter()
    try:
        joined = http.post(f"{base}{API.lstrip('/')}/queue/join", json=body, timeout=30)
        if joined.status_code == 503 and "Queue is full" in joined.text:
            return Answer("queue_full", time.perf_counter() - t0, joined.json().get("detail", ""))
        if joined.status_code != 200:
            return Answer("error", time.perf_counter() - t0, f"join HTTP {joined.status_code}: {joined.text[:200]}")
        event_id = joined.json()["event_id"]
        remaining = max(1.0, deadline - time.monotonic())
        with http.stream("GET", f"{base}{API.lstrip('/')}/queue/data", params={"session_hash": session},
                         timeout=remaining) as stream:
            for line in stream.iter_lines():
                if time.monotonic() > deadline:
                    return Answer("error", time.perf_counter() - t0, "level time limit reached while waiting")
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("event_id") not in (None, event_id) or msg.get("msg") != "process_completed":
                    continue
                latency = time.perf_counter() - t0
                output = msg.get("output") or {}
                if not msg.get("success"):
                    return Answer("error", latency, f"event failed: {str(output.get('error'))[:200]}")
                status, message = (output.get("data") or [None, None])[:2]
                if "psd-error" in str(message or ""):
                    return Answer("error", latency, f"page error: {str(message)[:200]}")
                if "done in" not in str(status or ""):
                    return Answer("error", latency, f"no 'done in' status: {str(status)[:200]}")
                return Answer("answered", latency)
        return Answer("error", time.perf_counter() - t0, "event stream ended without a result")
    except Exception as exc:  # noqa: BLE001 — every failure is one counted, described error
        return Answer("error", time.perf_counter() - t0, f"{type(exc).__name__}: {exc}"[:200])


def run_level(server: subprocess.Popen, base: str, clients: int, requests: int, steps: int, timeout_s: float,
              queue_size: int) -> Level:
    import httpx

    level = Level(clients, requests)
    deadline = time.monotonic() + timeout_s
    lock = threading.Lock()
    done = threading.Event()
    # no proxy from the environment: the server is on this machine
    with httpx.Client(trust_env=False) as http0:
        page = Page(http0, base)

    def client(index: int) -> None:
        with httpx.Client(trust_env=False, limits=httpx.Limits(max_connections=4)) as http:
            for r in range(requests):
                if time.monotonic() > deadline:
                    answer = Answer("error", 0.0, "level time limit reached before sending")
                else:
                    values = {"prompt": f"a red circle on a white background, client {index}", "seed": index * 100 + r,
                              "steps": steps, "compare": False, "model": "4-bit dense"}
                    answer = one_request(http, base, page, values, deadline)
                with lock:
                    level.answers.append(answer)

    def probe() -> None:
        with httpx.Client(trust_env=False) as http:
            while not done.is_set():
                try:
                    waiting = http.get(f"{base}{API.lstrip('/')}/queue/status", timeout=10).json().get("queue_size", 0)
                except Exception:  # noqa: BLE001 — an unanswered status read leaves the queue length unknown
                    waiting = -1
                t0 = time.perf_counter()
                try:
                    ok = http.get(base, timeout=30).status_code == 200
                except Exception:  # noqa: BLE001 — an unanswered page load is recorded as such
                    ok = False
                level.page_probes.append((time.perf_counter() - t0, waiting, ok))
                done.wait(0.5)

    def sample() -> None:
        while not done.is_set():
            rss = proc_status(server.pid).get("VmRSS")
            if rss:
                level.peak_vmrss_mb = max(level.peak_vmrss_mb, rss)
            done.wait(0.2)

    helpers = [threading.Thread(target=probe, daemon=True), threading.Thread(target=sample, daemon=True)]
    workers = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    t0 = time.perf_counter()
    for t in helpers + workers:
        t.start()
    for t in workers:
        t.join(max(0.0, deadline - time.monotonic()) + 30)
    done.set()
    for t in helpers:
        t.join(15)
    level.wall_s = time.perf_counter() - t0
    missing = clients * requests - len(level.answers)
    level.answers += [Answer("error", 0.0, "client still waiting after the time limit")] * max(0, missing)
    level.vmhwm_mb = proc_status(server.pid).get("VmHWM")
    level.server_alive = server.poll() is None and _answers(base)
    return level


def _answers(base: str) -> bool:
    import httpx

    try:
        return httpx.get(base, timeout=30, trust_env=False).status_code == 200
    except Exception:  # noqa: BLE001 — not answering is the finding
        return False


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summarize(level: Level, queue_size: int) -> dict:
    answered = [a.latency_s for a in level.answers if a.kind == "answered"]
    errors = [a.detail for a in level.answers if a.kind == "error"]
    full_probes = [p for p in level.page_probes if p[1] >= queue_size]
    return {
        "clients": level.clients, "requests_per_client": level.requests_per_client,
        "requests_sent": len(level.answers), "answered": len(answered),
        "queue_full": sum(a.kind == "queue_full" for a in level.answers), "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        "latency_p50_s": percentile(answered, 0.5), "latency_p95_s": percentile(answered, 0.95),
        "latency_max_s": max(answered) if answered else None,
        "page_load_p95_s": percentile([p[0] for p in level.page_probes if p[2]], 0.95),
        "page_probes": len(level.page_probes), "page_probes_unanswered": sum(not p[2] for p in level.page_probes),
        "page_probes_while_queue_full": len(full_probes),
        "page_load_max_while_queue_full_s": max((p[0] for p in full_probes), default=None),
        "page_unanswered_while_queue_full": sum(not p[2] for p in full_probes),
        "server_peak_vmrss_mb": round(level.peak_vmrss_mb, 1), "server_vmhwm_mb": level.vmhwm_mb,
        "server_alive_after": level.server_alive, "wall_s": round(level.wall_s, 2),
    }


def judge(levels: list[dict], peak_mb: float | None, limit_mb: float, crashed: bool) -> dict:
    full = [lv for lv in levels if lv["page_probes_while_queue_full"]]
    worst = max((lv["page_load_max_while_queue_full_s"] for lv in full), default=None)
    unanswered = sum(lv["page_unanswered_while_queue_full"] for lv in full)
    return {
        "no_errors_but_queue_full": {"met": sum(lv["errors"] for lv in levels) == 0,
                                     "errors": sum(lv["errors"] for lv in levels)},
        "no_crashes": {"met": not crashed},
        "peak_rss_within_limit": {"met": peak_mb is not None and peak_mb <= limit_mb, "peak_mb": peak_mb,
                                  "limit_mb": limit_mb},
        # judged only where the queue was seen full; otherwise not reached, which a full run is meant to change
        "page_within_2s_while_queue_full": {
            "met": (worst is not None and worst <= PAGE_TARGET_S and unanswered == 0) if full else None,
            "worst_s": worst, "unanswered": unanswered,
            "probes": sum(lv["page_probes_while_queue_full"] for lv in full),
            "note": None if full else "the queue never filled in this run (not judged)"},
    }


def fmt(value) -> str:
    return "—" if value is None else (f"{value:.2f}" if isinstance(value, float) else str(value))


def write_md(result: dict, path: Path) -> None:
    lines = [f"# Web demo under load ({result['mode']} run)", "",
             f"{result['machine']['cores']} cores, load average {result['machine']['loadavg_start']} at start and "
             f"{result['machine']['loadavg_end']} at the end; queue size {result['server']['queue_size']}, cache "
             f"limit {result['server']['cache_rss_mb']:.0f} MB, {result['settings']['steps']} steps per image "
             f"(4-bit dense, one model per request), {result['wall_s']:.0f} s in all. Server start "
             f"{result['server']['start_s']} s; one uncounted warm-up request (the model's first load) took "
             f"{result['server']['warmup']['latency_s']} s. Latency is from joining the queue to the last update, "
             "so it includes the wait in line.", "",
             f"Command: `{result['command']}`", "",
             "| clients | sent | answered | queue full | errors | p50 s | p95 s | page p95 s | page max s (queue full) "
             "| peak VmRSS MB | VmHWM MB |", "|" + "---|" * 11]
    for lv in result["levels"]:
        lines.append("| " + " | ".join(fmt(lv[k]) for k in (
            "clients", "requests_sent", "answered", "queue_full", "errors", "latency_p50_s", "latency_p95_s",
            "page_load_p95_s", "page_load_max_while_queue_full_s", "server_peak_vmrss_mb", "server_vmhwm_mb")) + " |")
    lines += ["", "| target | met | detail |", "|---|---|---|"]
    for name, t in result["targets"].items():
        met = {True: "met", False: "**missed**", None: "not judged"}[t["met"]]
        detail = ", ".join(f"{k} {fmt(v)}" for k, v in t.items() if k != "met" and v is not None)
        lines.append(f"| {name} | {met} | {detail} |")
    errors = sorted({e for lv in result["levels"] for e in lv["error_samples"]})
    if errors:
        lines += ["", "Errors seen:", *[f"- `{e}`" for e in errors]]
    path.write_text("\n".join(lines) + "\n")


def plot(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    levels = [lv for lv in result["levels"] if lv["latency_p50_s"] is not None]
    fig, ax = plt.subplots(figsize=(4.5, 3))
    xs = [lv["clients"] for lv in levels]
    ax.plot(xs, [lv["latency_p50_s"] for lv in levels], "o-", label="p50")
    ax.plot(xs, [lv["latency_p95_s"] for lv in levels], "s--", label="p95")
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("request latency (s)")
    ax.set_title(f"web demo under load ({result['mode']})", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", default="1,8,32", help="concurrency levels, comma-separated (default 1,8,32)")
    ap.add_argument("--requests", type=int, default=3, help="requests each client sends (default 3)")
    ap.add_argument("--steps", type=int, default=2, help="denoising steps per image (default 2)")
    ap.add_argument("--queue-size", type=int, default=8, help="the server's queue size (default 8, the app's)")
    ap.add_argument("--cache-rss-mb", type=float, default=6144.0, help="the server's cache limit (default 6144)")
    ap.add_argument("--level-timeout-s", type=float, default=300.0, help="wall-clock limit per level (default 300)")
    ap.add_argument("--start-timeout-s", type=float, default=900.0,
                    help="how long the server may take to start (default 900: a first start compresses the model)")
    ap.add_argument("--compressed", help="a compressed folder to serve (default: made once under build/app/)")
    ap.add_argument("--smoke", action="store_true", help="1 and 2 clients × 2 requests: only shows the script works")
    ap.add_argument("--out", default=str(RESULTS / "app_load"), help="results path without suffix")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        levels = [int(c) for c in ("1,2" if args.smoke else args.clients).split(",") if c.strip()]
    except ValueError:
        bad_input(f"--clients must be whole numbers separated by commas, got {args.clients!r}")
    requests = 2 if args.smoke else args.requests
    if not levels or min(levels) < 1 or max(levels) > 256:
        bad_input("--clients: each level must be 1..256")
    if not 1 <= requests <= 100 or not 1 <= args.steps <= 50 or not 1 <= args.queue_size <= 1000:
        bad_input("--requests must be 1..100, --steps 1..50 and --queue-size 1..1000")
    for name in ("cache_rss_mb", "level_timeout_s", "start_timeout_s"):
        value = getattr(args, name)
        if not (value == value and 0 < value < 1e7):  # NaN fails the first test
            bad_input(f"--{name.replace('_', '-')} must be a positive number, got {value}")
    if args.serve:
        serve(args)
        return 0

    port = free_port()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", "--port", str(port), "--steps", str(args.steps),
           "--queue-size", str(args.queue_size), "--cache-rss-mb", str(args.cache_rss_mb)]
    if args.compressed:
        cmd += ["--compressed", args.compressed]
    base = f"http://{HOST}:{port}/"
    load_start = os.getloadavg()
    t_all = time.perf_counter()
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO,
                              env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    results, crashed = [], False
    try:
        ready = threading.Event()
        threading.Thread(target=lambda: [ready.set() for line in server.stdout if line.startswith("READY")],
                         daemon=True).start()
        t_start = time.perf_counter()
        while not ready.wait(1.0):
            if server.poll() is not None:
                bad_input(f"the server exited with {server.returncode} before serving (its log is above)")
            if time.perf_counter() - t_start > args.start_timeout_s:
                bad_input(f"the server did not serve within {args.start_timeout_s:g} s")
        start_s = time.perf_counter() - t_start
        print(f"server up on {base} in {start_s:.1f} s (pid {server.pid})", file=sys.stderr)
        # one request before the levels, not counted: the model's first use loads it (tens of seconds), which
        # would otherwise land on whichever level runs first
        warm = run_level(server, base, 1, 1, args.steps, args.level_timeout_s, args.queue_size)
        warmup = {"kind": warm.answers[0].kind, "latency_s": round(warm.answers[0].latency_s, 2),
                  "detail": warm.answers[0].detail}
        print(f"warm-up request: {warmup['kind']} in {warmup['latency_s']} s", file=sys.stderr)
        for clients in levels:
            level = run_level(server, base, clients, requests, args.steps, args.level_timeout_s, args.queue_size)
            summary = summarize(level, args.queue_size)
            results.append(summary)
            print(f"{clients:3d} clients: {summary['answered']}/{summary['requests_sent']} answered, "
                  f"{summary['queue_full']} queue full, {summary['errors']} errors, "
                  f"p50 {fmt(summary['latency_p50_s'])} s, p95 {fmt(summary['latency_p95_s'])} s, "
                  f"page max while full {fmt(summary['page_load_max_while_queue_full_s'])} s, "
                  f"VmHWM {fmt(summary['server_vmhwm_mb'])} MB", file=sys.stderr)
            if not summary["server_alive_after"]:
                crashed = True
                break
    finally:
        peak = proc_status(server.pid).get("VmHWM")
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        elif server.returncode not in (0, None):
            crashed = True
    if peak is None:
        peak = max((lv["server_vmhwm_mb"] or 0 for lv in results), default=None)
    command = " ".join(["python benchmarks/app_load.py", *(sys.argv[1:] if argv is None else argv)])
    from pocketsd.data.model_card import reference_model_record

    result = {
        "reference_model": reference_model_record(),  # the web demo serves the embedded model (its 4-bit form)
        "mode": "smoke" if args.smoke else "full", "command": command, "wall_s": round(time.perf_counter() - t_all, 1),
        "machine": {"cores": os.cpu_count(), "loadavg_start": [round(x, 2) for x in load_start],
                    "loadavg_end": [round(x, 2) for x in os.getloadavg()], "platform": platform.platform(),
                    "python": platform.python_version()},
        "server": {"address": HOST, "queue_size": args.queue_size, "cache_rss_mb": args.cache_rss_mb,
                   "start_s": round(start_s, 1), "warmup": warmup, "peak_vmhwm_mb": peak, "crashed": crashed},
        "settings": {"clients": levels, "requests_per_client": requests, "steps": args.steps,
                     "model": "4-bit dense", "level_timeout_s": args.level_timeout_s},
        "levels": results,
        "targets": judge(results, peak, args.cache_rss_mb, crashed),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    write_md(result, out.with_suffix(".md"))
    plotted = plot(result, out.with_suffix(".png"))
    print(json.dumps(result["targets"], indent=1))
    print(f"wrote {out.with_suffix('.json')}, {out.with_suffix('.md')}" + (f", {out.with_suffix('.png')}" if plotted
                                                                            else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
