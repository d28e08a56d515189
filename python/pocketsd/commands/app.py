"""`pocketsd app` (owner: web demo): fp16 against 4-bit side by side; the server is `app.server.serve`."""

from __future__ import annotations

import argparse

from ..entry import quiet_libraries
from ..errors import BadInput

NAME = "app"
HELP = "web demo: fp16 against 4-bit side by side, with time and memory"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..models.device import DEVICES

    p.add_argument("--model", help="fp16 model: diffusers folder or hub id (default: the embedded reference model)")
    p.add_argument("--compressed", help="its compressed folder (default: made on first start, cached under "
                   "BUILD/app/)")
    p.add_argument("--coreml", help="a Core ML bundle of the model, offered in the model picker on macOS")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only; "
                   "0.0.0.0 opens it to your network, with a warning)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--device", default="cpu", choices=DEVICES,
                   help="torch device (default cpu; auto: CUDA, then Apple MPS, then CPU)")
    p.add_argument("--build-dir", default="build", help="where the compressed model is cached (default build)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest image upload accepted (default 20)")
    p.add_argument("--queue-size", type=int, default=8, help="requests that may wait in line (default 8)")


def run(args) -> int:
    from pathlib import Path

    quiet_libraries()
    if args.max_upload_mb <= 0 or args.queue_size < 1:
        raise BadInput("--max-upload-mb must be positive and --queue-size at least 1")
    from ..app.config import AppConfig
    from ..app.server import serve

    config = AppConfig(model=args.model, compressed=Path(args.compressed) if args.compressed else None,
                       coreml=Path(args.coreml) if args.coreml else None, device=args.device, host=args.host,
                       port=args.port, max_upload_mb=args.max_upload_mb, queue_size=args.queue_size)
    return serve(config, Path(args.build_dir))
