"""Cross Initialization: the spec's acceptance checks (shared/methods/cross_init.md §10) on a tiny SD1.x model."""
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from anybody.assets import read_lines
from anybody.errors import BadInputError, FileExistsAnybodyError, TrainingDivergedError
from anybody.images import image_files, load_images
from anybody.methods import cross_init as ci
from anybody.text.names import name_columns
from anybody.train.engine import step_generator

FAST = ci.CrossInitConfig(steps=4, batch=2, resolution=64, save_every=2, preview_every=2)


def test_bundled_name_list_is_large_and_covers_two_columns(host):
    names = read_lines(ci.DEFAULT_NAMES)
    assert len(names) >= 600
    cols = name_columns(host.encoders["clip_l"].tokenize, names, 2)
    assert len(cols[0]) == len(names) and 0 < len(cols[1]) <= len(names)


def test_columns_are_bpe_positions_and_means_match(host):
    enc = host.encoders["clip_l"]
    names = ["Tom Hanks", "Cher", "Tom Hanks"]  # duplicates count; a one-token name feeds column 1 only
    cols = name_columns(enc.tokenize, names, 2)
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
    ident, path, _ = ci.train_cross_init(host, faces, "alice", FAST)
    assert path == host.embeddings_dir() / "alice.safetensors" and path.is_file()
    assert ident.vectors["clip_l"].shape == (2, 768)
    for n, p in host.encoders["clip_l"].model.named_parameters():
        assert torch.equal(p, before[n]), n  # token table and every encoder weight bit-identical
    assert torch.equal(next(host.unet.parameters()), unet_before)
    assert host.sink.steps == [1, 2, 3, 4] and len(host.sink.previews) == 2
    assert host.sink.previews[0].shape == (64 + 160, 256, 3)  # the sample above its loss curve


def test_optimizer_is_adamw_with_paper_lr_and_decay(host, faces, monkeypatch):
    seen = {}
    real = torch.optim.AdamW

    def spy(params, **kw):
        seen.update(kw)
        return real(params, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", spy)
    ci.train_cross_init(host, faces, "bob", replace(FAST, steps=1))
    assert seen["lr"] == 0.005 and seen["weight_decay"] == 0.01 and ci.CrossInitConfig().steps == 320


def test_training_lowers_the_denoising_loss_on_a_fixed_probe(host, faces):
    """The product's own loop (train_cross_init) must lower the loss on fixed (t, noise) pairs it never saw."""
    init = ci.cross_init_vectors(host.encoders["clip_l"], read_lines(ci.DEFAULT_NAMES), 2)
    trained, _, _ = ci.train_cross_init(host, faces, "probe", replace(FAST, steps=12, lr=0.05, batch=4))
    mean, _ = host.encode_images(ci.square_batch(faces, 64))
    g = torch.Generator().manual_seed(123)
    t = torch.randint(0, 1000, (8,), generator=g)
    eps = torch.randn(8, 4, 8, 8, generator=g)
    a = host.alphas_cumprod.float()[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * mean[torch.arange(8) % len(mean)] + (1 - a).sqrt() * eps

    def probe(vectors):
        with torch.no_grad():
            cond = host.encode_prompts(["a photo of face of <x> person"] * 8, {"<x>": {"clip_l": vectors}})
            return F.mse_loss(host.predict(x_t, t, cond), eps).item()

    assert probe(trained.vectors["clip_l"]) < probe(init) - 1e-4


def test_loss_scaling_is_exact_in_fp32_and_backs_off_on_overflow(host, faces, monkeypatch):
    """fp16 hosts scale the loss; in fp32 a power-of-two scale must give the very same vectors, and a scale so
    large that gradients overflow must be lowered and the same step computed again."""
    from anybody.train import loss_scale

    plain, _, _ = ci.train_cross_init(host, faces, "unscaled", FAST)
    monkeypatch.setattr(host, "compute_dtype", torch.float16)  # the engine now scales; arithmetic stays fp32
    scaled, _, _ = ci.train_cross_init(host, faces, "scaled", FAST)
    assert torch.equal(scaled.vectors["clip_l"], plain.vectors["clip_l"])
    seen = []
    real = loss_scale.LossScale.overflowed

    def spy(self):
        seen.append(self.scale)
        return real(self)

    monkeypatch.setattr(loss_scale.LossScale, "overflowed", spy)
    monkeypatch.setattr(ci, "LossScale", lambda: loss_scale.LossScale(scale=2.0**140))
    huge, _, _ = ci.train_cross_init(host, faces, "huge", FAST)
    assert seen and seen[0] == 2.0**140
    torch.testing.assert_close(huge.vectors["clip_l"], plain.vectors["clip_l"], atol=1e-5, rtol=1e-5)


def test_cancel_then_resume_is_exact(host, faces, RecordingSink):
    cfg = replace(FAST, steps=6, save_every=100)
    full, _, _ = ci.train_cross_init(host, faces, "full", cfg)
    host.sink = RecordingSink(cancel_after=3)
    with pytest.raises(KeyboardInterrupt):
        ci.train_cross_init(host, faces, "half", cfg)
    assert not (host.embeddings_dir() / "half.safetensors").exists()
    assert (host.state_dir() / "half.state.safetensors").is_file()
    host.sink = RecordingSink()
    resumed, _, _ = ci.train_cross_init(host, faces, "half", cfg, resume=True)
    assert host.sink.steps == [4, 5, 6]
    assert torch.equal(resumed.vectors["clip_l"], full.vectors["clip_l"])


def test_saved_progress_is_never_discarded_silently(host, faces, RecordingSink):
    """A stopped run's progress survives a run without resume (an error says what to choose); restart discards it;
    a finished run leaves no progress behind."""
    host.sink = RecordingSink(cancel_after=2)
    with pytest.raises(KeyboardInterrupt):
        ci.train_cross_init(host, faces, "kept", FAST)
    state = host.state_dir() / "kept.state.safetensors"
    before = state.read_bytes()
    host.sink = RecordingSink()
    with pytest.raises(BadInputError, match=r"saved progress from a stopped run \(step 2.*--resume.*--restart"):
        ci.train_cross_init(host, faces, "kept", FAST)
    assert state.read_bytes() == before
    redone = ci.train_cross_init(host, faces, "kept", replace(FAST, lr=0.01), restart=True)
    assert not redone.reused and host.sink.steps == [1, 2, 3, 4] and not state.exists()
    assert any("Discarded the saved progress" in line for line in host.sink.logs)


def test_a_kill_at_any_instant_leaves_a_resumable_state(host, faces, monkeypatch, RecordingSink):
    """One file, written atomically: a save that dies half way leaves the previous complete save, which resumes."""
    from anybody.train import state as state_mod

    host.sink = RecordingSink(cancel_after=2)
    with pytest.raises(KeyboardInterrupt):
        ci.train_cross_init(host, faces, "killed", replace(FAST, save_every=1))
    real = state_mod.atomic_write

    def dies_while_writing(path, write, overwrite=False):
        def partial(tmp):
            write(tmp)
            raise OSError("killed while saving")
        return real(path, partial, overwrite)

    monkeypatch.setattr(state_mod, "atomic_write", dies_while_writing)
    from anybody.errors import ProgressNotSavedError

    host.sink = RecordingSink(cancel_after=3)
    with pytest.raises(ProgressNotSavedError, match="killed while saving"):
        ci.train_cross_init(host, faces, "killed", replace(FAST, save_every=1), resume=True)
    monkeypatch.undo()
    assert state_mod.TrainingState(host.state_dir(), "killed", {}).saved_step() == 2
    host.sink = RecordingSink()
    resumed = ci.train_cross_init(host, faces, "killed", replace(FAST, save_every=1), resume=True)
    assert host.sink.steps == [3, 4]
    full = ci.train_cross_init(host, faces, "unkilled", replace(FAST, save_every=1))
    assert torch.equal(resumed.identity.vectors["clip_l"], full.identity.vectors["clip_l"])


@pytest.mark.parametrize("lr", [1e38, float("inf"), float("nan"), 0.0, -0.1])
def test_unusable_learning_rates_are_refused_before_anything_runs(host, faces, lr):
    with pytest.raises(BadInputError, match="learning rate"):
        ci.train_cross_init(host, faces, "bad_lr", replace(FAST, lr=lr))
    assert not host.embeddings_dir().exists() and not host.state_dir().exists()


def test_vectors_that_become_non_finite_are_never_kept(host, faces, monkeypatch):
    """A finite gradient and an update that overflows (forced here) stop the run; nothing is written or saved."""
    real_step = torch.optim.AdamW.step

    def overflowing_step(self, closure=None):
        out = real_step(self, closure)
        if self.state and next(iter(self.state.values()))["step"] >= 2:
            for group in self.param_groups:
                for p in group["params"]:
                    p.data.fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", overflowing_step)
    with pytest.raises(TrainingDivergedError, match="became NaN/inf in step 2"):
        ci.train_cross_init(host, faces, "overflow", replace(FAST, save_every=1))
    assert not (host.embeddings_dir() / "overflow.safetensors").exists()
    from anybody.train.state import TrainingState

    assert TrainingState(host.state_dir(), "overflow", {}).saved_step() == 1, "the last finite progress is kept"


def test_vectors_grown_far_beyond_their_start_are_warned_about(host, faces):
    trained = ci.train_cross_init(host, faces, "big_lr", replace(FAST, lr=500.0))
    assert torch.isfinite(trained.identity.vectors["clip_l"]).all()
    assert any("grew to" in line for line in host.sink.logs)


def test_resume_with_different_settings_is_refused(host, faces, RecordingSink):
    host.sink = RecordingSink(cancel_after=1)
    with pytest.raises(KeyboardInterrupt):
        ci.train_cross_init(host, faces, "carol", FAST)
    host.sink = RecordingSink()  # a new run of the node gets a new sink
    with pytest.raises(BadInputError, match="lr"):
        ci.train_cross_init(host, faces, "carol", replace(FAST, lr=0.01), resume=True)


def test_nan_loss_is_a_clear_error_and_writes_nothing(host, faces, monkeypatch):
    real = host.predict
    monkeypatch.setattr(host, "predict", lambda x_t, t, cond: real(x_t, t, cond) * float("nan"))
    with pytest.raises(TrainingDivergedError, match="step 1"):
        ci.train_cross_init(host, faces, "nan", FAST)
    assert not (host.embeddings_dir() / "nan.safetensors").exists()
    assert not (host.state_dir() / "nan.state.safetensors").exists()


def test_out_of_memory_is_a_clear_error_with_the_state_saved_and_no_file(host, faces, monkeypatch):
    from anybody.errors import OutOfMemoryAnybodyError

    real, calls = host.predict, []

    def predict(x_t, t, cond):
        calls.append(1)
        if len(calls) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(x_t, t, cond)

    monkeypatch.setattr(host, "predict", predict)
    with pytest.raises(OutOfMemoryAnybodyError, match="Lower 'batch'.*gradient_checkpointing") as err:
        ci.train_cross_init(host, faces, "oom", replace(FAST, save_every=0))
    assert "state of step 2 saved" in str(err.value)
    assert not (host.embeddings_dir() / "oom.safetensors").exists()
    from anybody.train.state import TrainingState

    assert TrainingState(host.state_dir(), "oom", {}).saved_step() == 2


def test_cancel_before_training_starts_is_honoured_and_claims_no_saved_state(host, faces, RecordingSink):
    class CancelAtOnce(RecordingSink):
        def check_cancel(self):
            raise KeyboardInterrupt()

    host.sink = CancelAtOnce()
    with pytest.raises(KeyboardInterrupt):
        ci.train_cross_init(host, faces, "early", FAST)
    assert not (host.state_dir() / "early.state.safetensors").exists()
    assert not any("saved" in line for line in host.sink.logs)


def test_requeue_with_the_same_settings_reuses_the_file_and_other_settings_are_refused(host, faces, RecordingSink):
    first = ci.train_cross_init(host, faces, "dave", replace(FAST, steps=1))
    assert not first.reused
    host.sink = RecordingSink()
    again = ci.train_cross_init(host, faces, "dave", replace(FAST, steps=1, save_every=7))  # save_every: no effect
    assert again.reused and host.sink.steps == [], "loaded, not retrained"
    assert torch.equal(again.identity.vectors["clip_l"], first.identity.vectors["clip_l"])
    assert any("not retrained" in line for line in host.sink.logs)
    with pytest.raises(FileExistsAnybodyError, match="other photos, settings"):
        ci.train_cross_init(host, faces, "dave", replace(FAST, steps=2))
    with pytest.raises(FileExistsAnybodyError):
        ci.train_cross_init(host, faces.flip(1), "dave", replace(FAST, steps=1))
    redone = ci.train_cross_init(host, faces, "dave", replace(FAST, steps=2), overwrite=True)
    assert not redone.reused and ci.train_cross_init(host, faces, "dave", replace(FAST, steps=2)).reused


def test_family_default_resolution_and_bad_resolutions(host, faces):
    from types import SimpleNamespace as Host

    assert ci.default_resolution(host) == 512
    assert ci.default_resolution(Host(family="sdxl", prediction="eps")) == 1024
    assert ci.default_resolution(Host(family="sd2", prediction="v")) == 768
    assert ci.default_resolution(Host(family="sd2", prediction="eps")) == 512
    for bad in (-64, 32, 100):
        with pytest.raises(BadInputError, match="multiple of 64"):
            ci.train_cross_init(host, faces, "res", replace(FAST, resolution=bad))


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


def test_a_failing_progress_save_keeps_the_last_good_one_and_says_so(host, faces, monkeypatch):
    from anybody.errors import ProgressNotSavedError
    from anybody.train import state as state_mod

    real, saves = state_mod.atomic_write, []

    def disk_full_after_first(path, write, overwrite=False):
        saves.append(path)
        if len(saves) > 1:
            raise OSError(28, "No space left on device")
        return real(path, write, overwrite)

    monkeypatch.setattr(state_mod, "atomic_write", disk_full_after_first)
    with pytest.raises(ProgressNotSavedError, match="step 2.*No space left.*last saved progress there is kept"):
        ci.train_cross_init(host, faces, "fulldisk", replace(FAST, save_every=1))
    assert state_mod.TrainingState(host.state_dir(), "fulldisk", {}).saved_step() == 1
    assert not (host.embeddings_dir() / "fulldisk.safetensors").exists()


def test_saved_progress_with_missing_parts_is_a_clear_error(host, faces, RecordingSink):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from anybody.errors import ModelFileError

    host.sink = RecordingSink(cancel_after=1)
    with pytest.raises(KeyboardInterrupt):
        ci.train_cross_init(host, faces, "partial", FAST)
    path = host.state_dir() / "partial.state.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = json.loads(f.metadata()["anybody.state"]), {k: f.get_tensor(k) for k in f.keys()}
    del meta["param_groups"]
    save_file({k: v for k, v in tensors.items() if not k.startswith("param.")}, str(path),
              metadata={"anybody.state": json.dumps(meta)})
    host.sink = RecordingSink()
    with pytest.raises(ModelFileError, match="incomplete.*start over"):
        ci.train_cross_init(host, faces, "partial", FAST, resume=True)
    path.write_bytes(b"\x00garbage")
    with pytest.raises(ModelFileError, match="cannot be read"):
        ci.train_cross_init(host, faces, "partial", FAST, resume=True)


def test_a_model_that_ignores_the_trained_vectors_is_an_error_not_a_silent_no_op(host, faces, monkeypatch):
    """What an attention kernel without a backward pass (ComfyUI --use-sage-attention) does to training."""
    from anybody.errors import NoGradientError

    real = host.predict
    monkeypatch.setattr(host, "predict", lambda x_t, t, cond: real(x_t, t, type(cond)(cond.context.detach(), None)))
    with pytest.raises(NoGradientError, match="No gradient reaches the identity vectors.*sage"):
        ci.train_cross_init(host, faces, "nograd", FAST)
    assert not (host.embeddings_dir() / "nograd.safetensors").exists()


def test_an_identity_can_seed_training(host, faces):
    from anybody.errors import WrongModelFamilyError
    from anybody.identity import Identity

    width = host.encoders["clip_l"].width
    start = torch.randn(16, width, generator=torch.Generator().manual_seed(5)) * 0.3
    seed = Identity("seedface", "sd1", {"clip_l": start}, "adaface")
    one_step = replace(FAST, steps=1, lr=1e-4)
    seeded, _, _ = ci.train_cross_init(host, faces, "seeded", one_step, init_identity=seed)
    assert seeded.vectors["clip_l"].shape == (16, width)
    assert (seeded.vectors["clip_l"] - start).abs().max() < 1e-3  # one small step away from the seed
    assert any("starting from the identity 'seedface' (adaface, 16 vectors)" in m for m in host.sink.logs)
    with pytest.raises(FileExistsAnybodyError):  # the same name without the seed is another result
        ci.train_cross_init(host, faces, "seeded", one_step)
    xl = Identity("xl", "sdxl", {"clip_l": torch.randn(2, 768), "clip_g": torch.randn(2, 1280)}, "adaface")
    with pytest.raises(WrongModelFamilyError):
        ci.train_cross_init(host, faces, "xlseed", one_step, init_identity=xl)
