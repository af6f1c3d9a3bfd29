"""Frozen weights stored in half precision, matmuls in a chosen compute dtype: the CPU modes of the CLI host.

Embedding training needs gradients only for the *inputs* of each layer, never for its weights. So a frozen
Linear/Conv2d can keep its weight in fp16 (lossless for the fp16 checkpoints most people have) and convert it
per call into one reused buffer; the custom backward converts again instead of saving a copy, so autograd never
holds a second set of UNet weights. This is the same trade ComfyUI's "manual cast" makes on small GPUs.

``compute`` is the dtype of the matmul/convolution only: fp32 (exact: the fp16-rounded model computed in fp32) or
bf16 (what GPU training uses; on CPUs with native bf16 instructions, e.g. AVX512-BF16/AMX, several times faster).
Activations entering and leaving each layer, norms, softmax and residuals stay in fp32.
"""
from __future__ import annotations

import threading
import types

import torch
import torch.nn.functional as F
from torch import nn


_scratch = threading.local()


def _convert(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``weight`` in ``dtype``, written into one reused buffer: layers run one at a time and none keeps the
    result, so this avoids allocating (and page-faulting) gigabytes of fresh memory every step."""
    if weight.dtype == dtype:
        return weight
    key = (weight.device, dtype)
    buffers = getattr(_scratch, "buffers", None)
    if buffers is None:
        buffers = _scratch.buffers = {}
    buf = buffers.get(key)
    if buf is None or buf.numel() < weight.numel():
        buf = buffers[key] = torch.empty(weight.numel(), dtype=dtype, device=weight.device)
    return buf[:weight.numel()].view(weight.shape).copy_(weight)


class _FrozenLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, compute):
        ctx.save_for_backward(weight)
        ctx.compute, ctx.x_dtype = compute, x.dtype
        out = F.linear(x.to(compute), _convert(weight, compute), None if bias is None else bias.to(compute))
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return (grad.to(ctx.compute) @ _convert(weight, ctx.compute)).to(ctx.x_dtype), None, None, None


class _FrozenConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, compute):
        ctx.save_for_backward(weight)
        ctx.conf = (x.shape, stride, padding, dilation, groups)
        ctx.compute, ctx.x_dtype = compute, x.dtype
        out = F.conv2d(x.to(compute), _convert(weight, compute), None if bias is None else bias.to(compute), stride,
                       padding, dilation, groups)
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        shape, stride, padding, dilation, groups = ctx.conf
        grad_x = torch.nn.grad.conv2d_input(shape, _convert(weight, ctx.compute), grad.to(ctx.compute), stride, padding,
                                            dilation, groups)
        return grad_x.to(ctx.x_dtype), None, None, None, None, None, None, None


def _linear_forward(self, x):
    return _FrozenLinear.apply(x, self.weight, self.bias, self._anybody_compute or x.dtype)


def _conv_forward(self, x):
    return _FrozenConv2d.apply(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                               self._anybody_compute or x.dtype)


def cpu_has_native_bf16() -> bool:
    """True where bf16 matmuls run on dedicated instructions (AVX512-BF16 / AMX); elsewhere bf16 is slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def freeze_weights(model: nn.Module, storage: torch.dtype | None = torch.float16,
                   compute: torch.dtype | None = None) -> int:
    """Route every frozen Linear/Conv2d of ``model`` through the functions above: weights stored in ``storage``
    (None: as they are), matmuls in ``compute`` (None: the input's dtype); all other parameters become fp32.
    Returns the bytes saved against an all-fp32 model.

    For modules the caller owns (the CLI's own pipeline): it rewrites them in place and is not undone.
    """
    saved = 0
    for module in model.modules():
        frozen = (type(module) in (nn.Linear, nn.Conv2d) and not module.weight.requires_grad
                  and getattr(module, "padding_mode", "zeros") == "zeros")
        for p in module.parameters(recurse=False):  # biases, norms, embeddings: small, kept (or made) fp32
            if p.dtype != torch.float32 and not (frozen and p is module.weight):
                p.data = p.data.float()
        if not frozen:
            continue
        if storage is not None and module.weight.dtype != storage:
            saved += module.weight.numel() * (module.weight.element_size() - torch.finfo(storage).bits // 8)
            module.weight.data = module.weight.data.to(storage)
        module._anybody_compute = compute
        forward = _linear_forward if isinstance(module, nn.Linear) else _conv_forward
        module.forward = types.MethodType(forward, module)
    return saved


def keep_weights_in_half(model: nn.Module, dtype: torch.dtype = torch.float16) -> int:
    """fp16 storage, fp32 arithmetic: exact for fp16 checkpoints (the low-memory mode's default)."""
    return freeze_weights(model, storage=dtype, compute=None)
