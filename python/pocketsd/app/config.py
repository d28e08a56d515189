"""What the web demo is told when it starts: models, address, limits. One dataclass, its defaults once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..models.family import MAX_SIDE

DEFAULT_HOST = "127.0.0.1"  # reachable from this machine only; anything else is an explicit --host
DEFAULT_PORT = 7860
MAX_UPLOAD_MB = 20.0
MAX_UPLOAD_PIXELS = MAX_SIDE * MAX_SIDE  # 16.8 MP: far above the model's size, far below a decompression bomb
QUEUE_SIZE = 8  # requests waiting in line before the page says the queue is full
CACHE_MODELS = 4  # opened models kept at most (each also evicted when memory runs short)


@dataclass
class AppConfig:
    model: str | None = None  # the fp16 model (None: the embedded reference model)
    compressed: Path | None = None  # its compressed form (None: made once under build/ and cached)
    coreml: Path | None = None  # a Core ML bundle of the same model (offered on macOS only)
    device: str = "cpu"
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    max_upload_mb: float = MAX_UPLOAD_MB
    max_upload_pixels: int = MAX_UPLOAD_PIXELS
    queue_size: int = QUEUE_SIZE
    cache_models: int = CACHE_MODELS
    cache_rss_mb: float | None = None  # evict models while the process holds more (None: 60 % of the RAM)
    work_dir: Path | None = None  # generated PNGs and reports (None: a temp folder removed at exit)
    default_steps: int | None = None  # the steps field's starting value (None: the pipeline's default)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
