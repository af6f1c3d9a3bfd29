"""Frozen weights kept in half precision, arithmetic in fp32: the CPU low-memory mode of the CLI host.

Embedding training needs gradients only for the *inputs* of each layer, never for its weights. So a frozen
Linear/Conv2d can keep its weight in fp16 (lossless for the fp16 checkpoints most people have) and upcast it
per call; the custom backward re-upcasts instead of saving an fp32 copy, so autograd never holds a second,
full-precision set of UNet weights. This is the same trade ComfyUI's "manual cast" makes on small GPUs.
"""
from __future__ import annotations

import threading
import types

import torch
import torch.nn.functional as F
from torch import nn


_scratch = threading.local()


def _upcast(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``weight`` in ``dtype``, written into one reused buffer: layers run one at a time and none keeps the
    result, so this avoids allocating (and page-faulting) gigabytes of fresh memory every step."""
    key = (weight.device, dtype)
    buffers = getattr(_scratch, "buffers", None)
    if buffers is None:
        buffers = _scratch.buffers = {}
    buf = buffers.get(key)
    if buf is None or buf.numel() < weight.numel():
        buf = buffers[key] = torch.empty(weight.numel(), dtype=dtype, device=weight.device)
    return buf[:weight.numel()].view(weight.shape).copy_(weight)


class _HalfLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(weight)
        return F.linear(x, _upcast(weight, x.dtype), None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return grad @ _upcast(weight, grad.dtype), None, None


class _HalfConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(weight)
        ctx.conf = (x.shape, stride, padding, dilation, groups)
        return F.conv2d(x, _upcast(weight, x.dtype), None if bias is None else bias.to(x.dtype), stride, padding, dilation,
                        groups)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        shape, stride, padding, dilation, groups = ctx.conf
        grad_x = torch.nn.grad.conv2d_input(shape, _upcast(weight, grad.dtype), grad, stride, padding, dilation, groups)
        return grad_x, None, None, None, None, None, None


def _linear_forward(self, x):
    return _HalfLinear.apply(x, self.weight, self.bias)


def _conv_forward(self, x):
    return _HalfConv2d.apply(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def keep_weights_in_half(model: nn.Module, dtype: torch.dtype = torch.float16) -> int:
    """Store every frozen Linear/Conv2d weight of ``model`` in ``dtype`` and all else in fp32; returns the bytes
    saved against an all-fp32 model.

    For modules the caller owns (the CLI's own pipeline): it rewrites them in place and is not undone.
    """
    saved = 0
    for module in model.modules():
        halve = (type(module) in (nn.Linear, nn.Conv2d) and not module.weight.requires_grad
                 and getattr(module, "padding_mode", "zeros") == "zeros")
        for p in module.parameters(recurse=False):  # biases, norms, embeddings: small, kept (or made) fp32
            if p.dtype != torch.float32 and not (halve and p is module.weight):
                p.data = p.data.float()
        if not halve:
            continue
        saved += module.weight.numel() * (4 - torch.finfo(dtype).bits // 8)
        module.weight.data = module.weight.data.to(dtype)
        forward = _linear_forward if isinstance(module, nn.Linear) else _conv_forward
        module.forward = types.MethodType(forward, module)
    return saved
