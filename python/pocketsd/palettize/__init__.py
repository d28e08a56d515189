"""4-bit + low-rank compression of the UNet (SVDQuant-style), its on-disk format and runtime layers.

Public entry points: `format.read_compressed`, `format.dequantize_residual`, `artifact.load_compressed_unet`,
`compress.compress_unet`, `format.save_compressed`. Submodules are imported lazily by their users.
"""
