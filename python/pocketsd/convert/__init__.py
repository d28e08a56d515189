"""Core ML conversion: every component of a model or compressed model → a bundle Apple's Swift package loads.

Light on import (the CLI reads TARGETS while building its parser); the work is in the submodules.
"""

# minimum_deployment_target names → coremltools' ct.target attribute. iOS18/macOS15 are the default:
# grouped lookup tables (constexpr_lut_to_dense) and int4 blocks (constexpr_blockwise_shift_scale) need them.
TARGETS = ("iOS18", "macOS15", "iOS17", "macOS14", "iOS16", "macOS13")
DEFAULT_TARGET = "iOS18"
