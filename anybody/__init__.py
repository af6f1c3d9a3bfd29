"""Anybody: put anybody into Stable Diffusion from a few photos, inside the tools people already use.

The core imports with only torch, numpy and safetensors; host libraries are imported where used.
"""
__version__ = "0.1.0"
