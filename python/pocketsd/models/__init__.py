"""Models of every kind (floor between the core and the stages): what a `--model` names, and loading its
components — plain or compressed — one at a time."""

from .components import ModelComponents, load_compressed_component, load_pipeline  # noqa: F401
from .resolve import ModelSource, hub_snapshot, model_folder, precheck, resolve_model  # noqa: F401
