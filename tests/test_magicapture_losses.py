"""MagiCapture's losses, masks and schedules: the spec's acceptance checks 5-13 and 15 (shared/methods/magicapture.md)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anybody.methods import magicapture_losses as mc
from anybody.train import diffusion


def _soft(binary):
    """The training pipeline's soft mask at the loss resolution (nearest 64 -> 64 is the identity)."""
    return mc.latent_mask(binary[None], tuple(binary.shape))[0, 0]


def _region(seed=0, size=64):
    g = torch.Generator().manual_seed(seed)
    blob = F.interpolate(torch.rand(1, 1, 4, 4, generator=g), size=(size, size), mode="bilinear")[0, 0]
    return (blob > 0.5).float()


# --- §13.5, 13.6 attention refocusing --------------------------------------------------------------------------

def test_refocus_gradient_reaches_only_the_placeholder_columns_and_positions_that_touch_the_outside():
    binary = torch.zeros(64, 64)
    binary[8:40, 16:56] = 1.0  # the token's region, on the 4-pixel grid of the 16 -> 64 upsampling
    maps = torch.rand(40, 16, 16, 77, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    loss = mc.refocus_loss(maps, {mc.SUBJECT: 5}, {mc.SUBJECT: _soft(binary)})
    loss.backward()
    grad = maps.grad
    assert grad[..., 5].abs().sum() > 0
    assert not torch.cat([grad[..., :5], grad[..., 6:]], dim=-1).any()  # other tokens: exactly zero
    # a 16x16 position whose bilinear footprint lies inside the region gets no gradient; an outside one does
    footprint = F.interpolate(torch.eye(256).view(256, 1, 16, 16), size=(64, 64), mode="bilinear",
                              align_corners=False).view(16, 16, 64, 64).abs() > 0
    touches_outside = (footprint & (binary < 0.5)).flatten(2).any(-1)
    column = grad[..., 5].abs().sum(0)
    assert not column[~touches_outside].any() and (column[touches_outside] > 0).float().mean() > 0.9


def test_refocus_value_is_the_floor_for_perfect_maps_and_large_for_noise():
    binary = _region(1)
    region = _soft(binary)
    perfect = F.avg_pool2d(binary[None, None], 4)[0, 0]  # maps that are the region's indicator at 16x16
    perfect = (perfect > 0.5).float().expand(40, 16, 16)[..., None]
    # post-upsampling stage on 64x64 maps, as the spec asks: indicator maps leave only the 0.01 floor
    indicator = binary.expand(40, 64, 64)[..., None]
    assert mc.refocus_loss(indicator, {mc.STYLE: 0}, {mc.STYLE: region}) <= 1e-4
    noise = torch.rand(40, 64, 64, 1, generator=torch.Generator().manual_seed(2))
    assert mc.refocus_loss(noise, {mc.STYLE: 0}, {mc.STYLE: region}) > 0.05
    assert mc.refocus_loss(perfect, {mc.STYLE: 0}, {mc.STYLE: region}) < mc.refocus_loss(
        noise[:, ::4, ::4], {mc.STYLE: 0}, {mc.STYLE: region})
    assert mc.refocus_loss(noise, {}, {mc.STYLE: region}) == 0  # the token is not in the prompt


def test_refocus_targets_route_each_token_to_its_region():
    m = _soft(_region(3))
    assert set(mc.refocus_targets("instance", m)) == {mc.SUBJECT} and mc.refocus_targets("instance", m)[mc.SUBJECT] is m
    assert set(mc.refocus_targets("style", m)) == {mc.STYLE}
    both = mc.refocus_targets("both", m)
    assert torch.equal(both[mc.SUBJECT], 1 - m) and both[mc.STYLE] is m
    with pytest.raises(ValueError, match="unknown sample kind"):
        mc.refocus_targets("portrait", m)


# --- §13.8 masked reconstruction, masks -------------------------------------------------------------------------

def test_masked_mse_is_plain_mse_without_a_mask_and_region_size_free_with_one():
    g = torch.Generator().manual_seed(4)
    pred, target = torch.randn(2, 4, 64, 64, generator=g), torch.randn(2, 4, 64, 64, generator=g)
    assert torch.allclose(mc.masked_mse(pred, target, torch.ones(2, 1, 64, 64)), F.mse_loss(pred, target))
    for size in (4, 20, 60):
        m = torch.zeros(1, 1, 64, 64)
        m[..., :size, :size] = 1
        error = torch.where(m.bool().expand(1, 4, 64, 64), torch.full((1, 4, 64, 64), 0.3), torch.randn(1, 4, 64, 64))
        assert torch.allclose(mc.masked_mse(error, torch.zeros_like(error), m), torch.tensor(0.09))


def test_latent_mask_is_nearest_pixel_8i_8j_softened_per_sample_or_over_the_batch():
    mask = torch.zeros(2, 512, 512)
    mask[0, 100:300, 100:300] = 1.0
    mask[1] = 0.5  # a sample whose largest weight is 0.5
    small = mc.latent_mask(mask, (64, 64))
    assert small.shape == (2, 1, 64, 64)
    expected0 = (mask[0, ::8, ::8] + 0.01) / 1.01
    assert torch.allclose(small[0, 0], expected0) and torch.allclose(small[1], torch.ones(1, 64, 64))
    as_built = mc.latent_mask(mask, (64, 64), per_sample=False)  # the official single max over the batch
    assert torch.allclose(as_built[1], torch.full((1, 64, 64), 0.51 / 1.01))


# --- §13.9 x0, §13.10 timesteps --------------------------------------------------------------------------------

@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_x0_from_the_true_noise_is_the_clean_latent(prediction):
    from anybody.host.diffusers import _alphas_cumprod
    from anybody.host.tiny import SD_SCHEDULER

    alphas = _alphas_cumprod(SD_SCHEDULER).float()
    assert abs(alphas[799].item() - 0.0372) < 5e-4
    g = torch.Generator().manual_seed(5)
    z0, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    a = alphas[torch.tensor([0, 400, 799])].view(-1, 1, 1, 1)
    x_t = diffusion.noisy(z0, eps, a)
    truth = diffusion.target(prediction, z0, eps, a)
    assert torch.allclose(diffusion.x0_from(prediction, x_t, truth, a), z0, atol=1e-4)


def test_timesteps_are_uniform_over_the_range_asked_for():
    t = mc.sample_timesteps(20000, 800, torch.Generator().manual_seed(6))
    assert t.min() == 0 and t.max() == 799 and abs(t.float().mean().item() - 399.5) < 10


# --- §13.11 textual inversion, §13.12 style weighting, §13.13 schedules ----------------------------------------

def test_norm_rule_and_style_token_init():
    e = torch.nn.functional.normalize(torch.randn(2, 768), dim=-1)
    assert torch.allclose(mc.pull_norms(e, lr=2e-3).norm(dim=-1), torch.full((2,), 0.88))  # lam 0.2, |e| 1
    assert torch.allclose(mc.pull_norms(e, lr=0.5).norm(dim=-1), torch.full((2,), 0.4))  # lam capped at 1
    style = mc.style_token_init(768, torch.Generator().manual_seed(0))
    assert style.shape == (1, 768) and abs(style.norm().item() - 0.47) < 0.05


def test_style_weighting_doubles_style_and_composed_samples_in_the_first_half_only():
    assert [mc.style_weight(k, 0.49) for k in mc.KINDS] == [1.0, 2.0, 2.0]
    assert [mc.style_weight(k, 0.5) for k in mc.KINDS] == [1.0, 1.0, 1.0]


def test_learning_rates_are_the_papers_and_decay_to_zero_at_the_last_update():
    from anybody.methods.magicapture import MagiCaptureConfig

    c = MagiCaptureConfig()
    assert (c.ti_steps, c.ti_lr, c.ti_timesteps) == (1200, 2e-3, 1000)
    assert (c.lora_steps, c.unet_lr, c.text_lr, c.token_lr, c.lora_timesteps) == (1500, 4e-4, 4e-5, 1e-4, 800)
    assert (c.id_weight, c.attention_weight, c.style_weight, c.rank, c.max_grad_norm) == (0.25, 2.5, 2.0, 4, 1.0)
    rates = [mc.decayed_lr(2e-3, k, 1200) for k in range(1200)]
    assert rates[-1] == 0.0 and rates[0] == pytest.approx(2e-3 * 1199 / 1200)
    assert all(a > b for a, b in zip(rates, rates[1:]))


# --- §2 sample list ----------------------------------------------------------------------------------------------

def test_sample_list_mixes_the_three_kinds_about_evenly():
    items = mc.compose_items(5, 6, torch.Generator().manual_seed(0))
    kinds = [i.kind for i in items]
    assert (kinds.count("instance"), kinds.count("style"), kinds.count("both")) == (5, 6, 5)  # the repo's sample data
    pairs = [(i.subject, i.style) for i in items if i.kind == "both"]
    assert len(set(pairs)) == len(pairs)
    items = mc.compose_items(2, 7, torch.Generator().manual_seed(0), with_both=False)
    assert [i.kind for i in items].count("instance") == 6 and not any(i.kind == "both" for i in items)  # r = 3
    assert all(len(mc.TEMPLATES[k]) == n for k, n in (("instance", 10), ("style", 7), ("both", 10)))
    assert all("{S}" in t for t in mc.TEMPLATES["instance"]) and all("{T}" in t for t in mc.TEMPLATES["style"])


# --- §13.15 identity loss ---------------------------------------------------------------------------------------

def test_identity_loss_values_and_gradient_through_a_differentiable_warp():
    from anybody.face.align import warp_differentiable

    ref = torch.randn(1, 512)
    assert mc.identity_loss(ref.clone(), ref).abs() < 1e-6
    orthogonal = torch.zeros(1, 512)
    orthogonal[0, 0], ref2 = 1.0, torch.zeros(1, 512)
    ref2[0, 1] = 1.0
    assert torch.isclose(mc.identity_loss(orthogonal, ref2), torch.tensor(1.0))
    # predicted image -> warp to 112 with a detected face's matrix -> a stub recognizer -> loss: gradient reaches it
    torch.manual_seed(0)
    stub = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 8, 8), torch.nn.Flatten(), torch.nn.Linear(8 * 14 * 14, 512))
    image = torch.rand(1, 3, 128, 128, requires_grad=True)
    matrix = np.array([[[0.8, 0.1, 5.0], [-0.1, 0.8, 10.0]]])
    loss = mc.identity_loss(stub(warp_differentiable(image, matrix, 112) * 2 - 1), ref)
    loss.backward()
    assert image.grad.abs().sum() > 0 and 0 < loss.item() < 2
