"""The host seam: training and injection are written against :class:`Host` and never import a host module.

An adapter wraps what the host already has loaded (ComfyUI's MODEL/CLIP/VAE, A1111's ``sd_model``, or a
diffusers pipeline for the CLI and the tests) and exposes the few operations the methods need, in DDPM
timestep space and the host's own conditioning layer.
"""
from .base import Cond, Host, TextEncoder

__all__ = ["Cond", "Host", "TextEncoder"]
