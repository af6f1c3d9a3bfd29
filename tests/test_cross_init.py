"""Cross Initialization: the spec's acceptance checks (shared/methods/cross_init.md §10) on a tiny SD1.x model."""
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from anybody.assets import read_lines
from anybody.errors import BadInputError, FileExistsAnybodyError, TrainingDivergedError
from anybody.images import image_files, load_images
from anybody.methods import cross_init as ci
from anybody.train.engine import step_generator

FAST = ci.CrossInitConfig(steps=4, batch=2, resolution=64, save_every=2, preview_every=2)


def test_bundled_name_list_is_large_and_covers_two_columns(host):
    names = read_lines(ci.DEFAULT_NAMES)
    assert len(names) >= 600
    cols = ci.name_columns(host.encoders["clip_l"], names, 2)
    assert len(cols[0]) == len(names) and 0 < len(cols[1]) <= len(names)


def test_columns_are_bpe_positions_and_means_match(host):
    enc = host.encoders["clip_l"]
    names = ["Tom Hanks", "Cher", "Tom Hanks"]  # duplicates count; a one-token name feeds column 1 only
    cols = ci.name_columns(enc, names, 2)
    assert len(cols[0]) == 3 and len(cols[1]) == 2
    m = ci.mean_name_rows(enc, names, 2)
    table = enc.model.get_input_embeddings().weight.detach()
    expect = torch.stack([table[cols[0]].mean(0), table[cols[1]].mean(0)])
    assert torch.allclose(m, expect, atol=1e-6)


def test_too_many_vectors_for_the_names_is_a_clear_error(host):
    with pytest.raises(BadInputError, match="at most 1"):
        ci.mean_name_rows(host.encoders["clip_l"], ["Cher"], 2)


def test_init_is_causal_invariant_and_shaped(host):
    enc = host.encoders["clip_l"]
    names = read_lines(ci.DEFAULT_NAMES)
    e0 = ci.cross_init_vectors(enc, names, 2)
    assert e0.shape == (2, 768) and torch.isfinite(e0).all()
    m = ci.mean_name_rows(enc, names, 2)
    variants = [
        [enc.bos, *m, enc.eos] + [0] * 73,                              # pad "!"
        [enc.bos, *m, enc.eos] + [torch.zeros(768)] * 73,               # pad zero vectors
        [enc.bos, *m, enc.eos],                                         # truncated to n + 2 rows
    ]
    with torch.no_grad():
        for rows in variants:
            h, _ = enc.encode_rows([rows])
            assert torch.allclose(h[0, 1:3], e0, rtol=1e-5, atol=1e-5)


def test_init_equals_a_direct_module_call(host):
    enc = host.encoders["clip_l"]
    names = read_lines(ci.DEFAULT_NAMES)
    m = ci.mean_name_rows(enc, names, 2)
    tm = getattr(enc.model, "text_model", enc.model)  # transformers 4 nests it, 5 does not
    with torch.no_grad():
        x = torch.cat([enc.token_rows([enc.bos]), m, enc.token_rows([enc.eos])])[None]
        x = x + tm.embeddings.position_embedding.weight[:4][None]
        mask = torch.full((4, 4), float("-inf")).triu(1)[None, None]
        for layer in tm.encoder.layers:  # causal self-attention, written out
            h = layer.layer_norm1(x)
            q, k, v = (p(h).view(1, 4, 12, 64).transpose(1, 2) for p in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj))
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(1, 4, 768)
            x = x + layer.self_attn.out_proj(a)
            x = x + layer.mlp(layer.layer_norm2(x))
        direct = tm.final_layer_norm(x)[0, 1:3]
    assert torch.allclose(ci.cross_init_vectors(enc, names, 2), direct, atol=1e-4)


def test_regulariser_value_and_gradient():
    init = {"clip_l": torch.randn(2, 768)}
    theta = {"clip_l": init["clip_l"].clone().requires_grad_(True)}
    assert ci.regulariser(theta, init, 1e-5).item() < 1e-8
    with torch.no_grad():
        theta["clip_l"] += torch.randn(2, 768)
    reg = ci.regulariser(theta, init, 1e-5)
    expect = 1e-5 * (theta["clip_l"] - init["clip_l"] + 1e-6).norm(dim=-1).mean()
    assert torch.allclose(reg, expect, rtol=1e-6)
    reg.backward()
    d = theta["clip_l"].detach() - init["clip_l"] + 1e-6
    assert torch.allclose(theta["clip_l"].grad, 1e-5 / 2 * d / d.norm(dim=-1, keepdim=True), rtol=1e-5)


def test_training_writes_a_stock_embedding_and_touches_no_weights(host, faces):
    before = {n: p.detach().clone() for n, p in host.encoders["clip_l"].model.named_parameters()}
    unet_before = next(host.unet.parameters()).detach().clone()
    ident, path = ci.train_cross_init(host, faces, "alice", FAST)
    assert path == host.embeddings_dir() / "alice.safetensors" and path.is_file()
    assert ident.vectors["clip_l"].shape == (2, 768)
    for n, p in host.encoders["clip_l"].model.named_parameters():
        assert torch.equal(p, before[n]), n  # token table and every encoder weight bit-identical
    assert torch.equal(next(host.unet.parameters()), unet_before)
    assert host.sink.steps == [1, 2, 3, 4] and len(host.sink.previews) == 2
    assert host.sink.previews[0].shape == (64, 64, 3)


def test_optimizer_is_adamw_with_paper_lr_and_decay(host, faces, monkeypatch):
    seen = {}
    real = torch.optim.AdamW

    def spy(params, **kw):
        seen.update(kw)
        return real(params, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", spy)
    ci.train_cross_init(host, faces, "bob", replace(FAST, steps=1))
    assert seen["lr"] == 0.005 and seen["weight_decay"] == 0.01 and ci.CrossInitConfig().steps == 320


def test_loss_falls_on_a_fixed_probe(host, faces):
    """A few steps at a raised lr must lower the denoising loss on fixed (t, noise) pairs."""
    enc = host.encoders["clip_l"]
    init = ci.cross_init_vectors(enc, read_lines(ci.DEFAULT_NAMES), 2)
    mean, _ = host.encode_images(ci.square_batch(faces, 64))
    g = torch.Generator().manual_seed(123)
    t = torch.randint(0, 1000, (8,), generator=g)
    eps = torch.randn(8, 4, 8, 8, generator=g)
    a = host.alphas_cumprod.float()[t].view(-1, 1, 1, 1)
    z0 = mean[torch.arange(8) % len(mean)]
    x_t = a.sqrt() * z0 + (1 - a).sqrt() * eps

    def probe(theta):
        cond = host.encode_prompts(["a photo of face of <x> person"] * 8, {"<x>": {"clip_l": theta}})
        return F.mse_loss(host.predict(x_t, t, cond), eps)

    theta = init.clone().requires_grad_(True)
    opt = torch.optim.AdamW([theta], lr=0.05)
    start = probe(theta).item()
    for _ in range(15):
        opt.zero_grad()
        probe(theta).backward()
        opt.step()
    assert probe(theta).item() < start - 1e-4


def test_cancel_then_resume_is_exact(host, faces, RecordingSink):
    cfg = replace(FAST, steps=6, save_every=100)
    full, _ = ci.train_cross_init(host, faces, "full", cfg)
    host.sink = RecordingSink(cancel_after=3)
    with pytest.raises(KeyboardInterrupt):
        ci.train_cross_init(host, faces, "half", cfg)
    assert not (host.embeddings_dir() / "half.safetensors").exists()
    assert (host.state_dir() / "half.state.json").is_file()
    host.sink = RecordingSink()
    resumed, _ = ci.train_cross_init(host, faces, "half", cfg, resume=True)
    assert host.sink.steps == [4, 5, 6]
    assert torch.equal(resumed.vectors["clip_l"], full.vectors["clip_l"])


def test_resume_with_different_settings_is_refused(host, faces, RecordingSink):
    host.sink = RecordingSink(cancel_after=1)
    with pytest.raises(KeyboardInterrupt):
        ci.train_cross_init(host, faces, "carol", FAST)
    with pytest.raises(BadInputError, match="lr"):
        ci.train_cross_init(host, faces, "carol", replace(FAST, lr=0.01), resume=True)


def test_nan_loss_is_a_clear_error_and_writes_nothing(host, faces, monkeypatch):
    monkeypatch.setattr(host, "predict", lambda x_t, t, cond: torch.full_like(x_t, float("nan")))
    with pytest.raises(TrainingDivergedError, match="step 1"):
        ci.train_cross_init(host, faces, "nan", FAST)
    assert not (host.embeddings_dir() / "nan.safetensors").exists()
    assert not (host.state_dir() / "nan.state.json").exists()


def test_existing_embedding_is_not_overwritten(host, faces):
    ci.train_cross_init(host, faces, "dave", replace(FAST, steps=1))
    with pytest.raises(FileExistsAnybodyError, match="overwrite"):
        ci.train_cross_init(host, faces, "dave", replace(FAST, steps=1))


@pytest.mark.parametrize("images,match", [
    (torch.zeros(0, 64, 64, 3), "No images"),
    (torch.zeros(1, 1, 1, 3), "1x1"),
])
def test_bad_images_are_clear_errors_and_write_nothing(host, images, match):
    with pytest.raises(BadInputError, match=match):
        ci.train_cross_init(host, images, "eve", FAST)
    assert not host.embeddings_dir().exists()


def test_unsafe_name_writes_nothing(host, faces):
    with pytest.raises(BadInputError, match="path"):
        ci.train_cross_init(host, faces, "../evil", FAST)
    assert not host.embeddings_dir().exists()


def test_image_folder_errors(tmp_path):
    with pytest.raises(BadInputError, match="No images"):
        image_files(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(BadInputError, match="notes.txt"):
        load_images(image_files(tmp_path))


def test_step_randomness_depends_only_on_seed_and_step():
    a = torch.rand(3, generator=step_generator(7, 5))
    assert torch.equal(a, torch.rand(3, generator=step_generator(7, 5)))
    assert not torch.equal(a, torch.rand(3, generator=step_generator(7, 6)))
