"""Generation: the shared denoising loop (`generate`), its backends (torch, Core ML), inputs, presets and reports.

Import the submodules directly (`from pocketsd.pipeline.generate import generate`); this package stays light so
that `pocketsd --help` does not import torch.
"""
