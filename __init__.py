"""ComfyUI entry point for the Anybody pack. Imports nothing heavy: the core loads when a node runs.

V1 node classes (NODE_CLASS_MAPPINGS): identical behaviour on every ComfyUI we support (0.3.60 -> current);
the V3 ``comfy_api.latest`` schema is still labelled in flux upstream.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
