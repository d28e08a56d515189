"""`pocketsd app`: make (or check) the 4-bit model, then serve the page.

It listens on 127.0.0.1 unless told otherwise: the page runs models on this machine's CPU/GPU for whoever reaches
it, so offering it to the network is an explicit `--host`, said out loud in a warning.
"""

from __future__ import annotations

import atexit
import importlib.util
import ipaddress
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from ..artifacts import COMPRESSED
from ..errors import BadInput
from ..models import resolve_model
from .config import AppConfig

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_warning(host: str) -> str | None:
    """The warning for a non-loopback address (None on loopback)."""
    if is_loopback(host):
        return None
    everyone = host in ("0.0.0.0", "::")
    return (f"listening on {host}: {'every device on your networks' if everyone else 'devices that reach this address'}"
            " can open the page and run models on this machine; there is no login. Use --host 127.0.0.1 to keep "
            "it to this machine.")


def lan_urls(port: int) -> list[str]:
    """Addresses other devices on the same network can try (best effort: the machine's own interface address)."""
    urls = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET address: no packet is sent, the OS just picks the outgoing interface
            urls.append(f"http://{s.getsockname()[0]}:{port}")
    except OSError:
        pass
    return urls


def check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise BadInput(f"--port must be in 1..65535, got {port}")


def prepare_models(config: AppConfig, build_dir: Path, *, progress: bool = True, recipe=None,
                   calibration=None) -> AppConfig:
    """Fill `config.compressed`: the given folder checked, or the fp16 model's compressed form made once under
    `build_dir/app/` (a few minutes the first time; a bar shows the work)."""
    fp16 = resolve_model(config.model)  # a bad --model fails here, in one line, before anything else
    if fp16.kind not in ("diffusers", "hub", "single_file"):
        raise BadInput(f"--model {config.model} is a {fp16.kind} model; give the fp16 model (a diffusers folder) as "
                       "--model and its compressed form as --compressed")
    if config.compressed is not None:
        kind = resolve_model(str(config.compressed)).kind
        if kind != COMPRESSED:
            raise BadInput(f"--compressed {config.compressed} is a {kind} model, not a compressed folder; make one "
                           "with `pocketsd compress --out DIR`")
    else:
        from ..ui import task_progress
        from .models import prepare_compressed

        with task_progress(progress) as tick:
            config.compressed = prepare_compressed(config.model, build_dir, recipe=recipe, calibration=calibration,
                                                   on_progress=tick)
    if config.coreml is not None and resolve_model(str(config.coreml)).kind != "coreml":
        raise BadInput(f"--coreml {config.coreml} is not a Core ML bundle (make one with `pocketsd convert`)")
    return config


def serve(config: AppConfig, build_dir: Path = Path("build")) -> int:
    """Prepare, build and serve until Ctrl-C."""
    check_port(config.port)
    if importlib.util.find_spec("gradio") is None:
        raise BadInput("the web demo needs gradio: run `make setup` (or pip install -e '.[app]')")
    warning = host_warning(config.host)
    prepare_models(config, build_dir)
    if config.work_dir is None:
        config.work_dir = Path(tempfile.mkdtemp(prefix="pocketsd-app-"))
        atexit.register(shutil.rmtree, config.work_dir, ignore_errors=True)
    from .ui import build_app, coreml_note, launch

    note = coreml_note(config)
    if note:
        print(f"pocketsd: note: {note}", file=sys.stderr)
    demo = build_app(config)
    if warning:
        print(f"pocketsd: warning: {warning}", file=sys.stderr)
    print(f"pocketsd app: fp16 {config.model or 'reference model'} against {config.compressed}", file=sys.stderr)
    print(f"open http://{'127.0.0.1' if config.host in ('0.0.0.0', '::') else config.host}:{config.port}",
          file=sys.stderr)
    if not is_loopback(config.host):
        for url in lan_urls(config.port):
            print(f"from another device on this network: {url}", file=sys.stderr)
    try:
        launch(demo, config, quiet=True)
    except OSError as exc:  # the port is taken, or the address is not this machine's
        raise BadInput(f"cannot listen on {config.host}:{config.port} ({exc.strerror or exc}); pick another --port "
                       "or --host") from None
    return 0
