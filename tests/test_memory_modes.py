"""The two memory savers: fp16 frozen weights with fp32 arithmetic (CPU), and gradient checkpointing."""
import copy
from dataclasses import replace

import torch
from torch import nn

from anybody.host.half_weights import keep_weights_in_half
from anybody.host.tiny import tiny_sd1_modules
from anybody.methods import cross_init as ci

FAST = ci.CrossInitConfig(steps=3, batch=2, resolution=64, save_every=0, preview_every=0)


def _unet_pair():
    unet = tiny_sd1_modules(seed=3)[0].eval().requires_grad_(False)
    rounded = copy.deepcopy(unet)
    for m in rounded.modules():  # the exact model the half-weight one computes: fp16-rounded weights, fp32 math
        if type(m) in (nn.Linear, nn.Conv2d):
            m.weight.data = m.weight.data.half().float()
    half = copy.deepcopy(unet)
    saved = keep_weights_in_half(half)
    return rounded, half, saved


def _outputs_and_context_grads(models, seed):
    """Each model's output and the gradient reaching its text context, for one fixed input (fp32 out required)."""
    g = torch.Generator().manual_seed(seed)
    x, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 768, generator=g)
    t = torch.tensor([10, 700])
    outs, grads = [], []
    for model in models:
        c = ctx.clone().requires_grad_(True)
        out = model(x, t, encoder_hidden_states=c).sample
        assert out.dtype == torch.float32
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append(out.detach())
        grads.append(c.grad)
    return outs, grads


def test_half_weights_compute_the_fp16_rounded_model_in_fp32_with_the_same_input_gradients():
    rounded, half, saved = _unet_pair()
    n_weights = sum(m.weight.numel() for m in rounded.modules() if type(m) in (nn.Linear, nn.Conv2d))
    assert saved == 2 * n_weights
    assert all(m.weight.dtype == torch.float16 for m in half.modules() if type(m) in (nn.Linear, nn.Conv2d))
    assert all(p.dtype == torch.float32 for m in half.modules() if type(m) not in (nn.Linear, nn.Conv2d)
               for p in m.parameters(recurse=False))
    outs, grads = _outputs_and_context_grads((rounded, half), seed=0)
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-4)
    assert grads[0].abs().sum() > 0


def test_bf16_matmuls_keep_fp32_activations_and_the_input_gradient_direction():
    """--compute bf16: only the Linear/Conv arithmetic is bf16 (as GPU training); outputs and gradients stay close
    to the fp32 model's and come back in fp32."""
    from anybody.host.half_weights import freeze_weights

    rounded, _, _ = _unet_pair()
    bf16 = copy.deepcopy(rounded)
    assert freeze_weights(bf16, storage=torch.float16, compute=torch.bfloat16) > 0
    outs, grads = _outputs_and_context_grads((rounded, bf16), seed=1)
    assert not torch.equal(outs[0], outs[1])
    torch.testing.assert_close(outs[1], outs[0], atol=0.05, rtol=0.05)
    assert torch.nn.functional.cosine_similarity(grads[0].flatten(), grads[1].flatten(), dim=0) > 0.99


def test_half_weights_leave_trainable_layers_alone():
    layer = nn.Linear(4, 4)
    assert keep_weights_in_half(layer) == 0 and layer.weight.dtype == torch.float32


def test_gradient_checkpointing_trains_the_same_vectors(host, faces, monkeypatch):
    seen = []
    predict = host.predict

    def spy(*args):
        seen.append(host.unet.is_gradient_checkpointing)
        return predict(*args)

    monkeypatch.setattr(host, "predict", spy)
    plain, _, _ = ci.train_cross_init(host, faces, "plain", FAST)
    ckpt, _, _ = ci.train_cross_init(host, faces, "ckpt", replace(FAST, gradient_checkpointing=True))
    assert seen == [False] * FAST.steps + [True] * FAST.steps
    torch.testing.assert_close(ckpt.vectors["clip_l"], plain.vectors["clip_l"], atol=1e-5, rtol=1e-4)
    assert not host.unet.is_gradient_checkpointing, "checkpointing is switched off again after training"


def test_gradient_checkpointing_does_not_change_the_resume_hash(host, faces, RecordingSink):
    host.sink = RecordingSink(cancel_after=1)
    try:
        ci.train_cross_init(host, faces, "gc", FAST)
    except KeyboardInterrupt:
        pass
    host.sink = RecordingSink()
    ci.train_cross_init(host, faces, "gc", replace(FAST, gradient_checkpointing=True), resume=True)
    assert host.sink.steps[0] == 2
