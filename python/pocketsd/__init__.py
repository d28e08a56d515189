"""PocketSD: 4-bit + low-rank SDXL for Core ML."""

__version__ = "0.1.0"
