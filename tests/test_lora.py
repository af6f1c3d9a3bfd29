"""The pack's LoRA (anybody/train/lora.py): MagiCapture spec §13 checks 1-3 and 14, names both UIs read."""
import pytest
import torch

from anybody.train import lora


@pytest.fixture(scope="module")
def tiny():
    from anybody.host.tiny import tiny_sd1_modules

    unet, _, text_encoder, tokenizer = tiny_sd1_modules(seed=0)
    return unet.eval(), text_encoder.eval(), tokenizer


def _adapters(unet, text_encoder, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (lora.build(unet, "unet", lora.UNET_ATTENTION_TARGETS, generator=g),
            lora.build(text_encoder, "te", lora.TEXT_ATTENTION_TARGETS, generator=g))


def _outputs(unet, text_encoder, ids, x, t):
    hidden = text_encoder(ids)[0]
    return hidden, unet(x, t, encoder_hidden_states=hidden).sample


def test_zero_init_changes_nothing_and_the_first_gradient_reaches_only_up(tiny):
    unet, te, tok = tiny
    ids = torch.tensor([tok("a photo of a person", padding="max_length", max_length=77)["input_ids"]])
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    base = _outputs(unet, te, ids, x, t)
    unet_set, te_set = _adapters(unet, te)
    with lora.hooked(unet, unet_set), lora.hooked(te, te_set):
        adapted = _outputs(unet, te, ids, x, t)
        (adapted[1].square().mean() + adapted[0].square().mean()).backward()
    assert all(torch.equal(a, b) for a, b in zip(base, adapted))  # max abs 0 in fp32
    for _, adapter in [*unet_set.items(), *te_set.items()]:
        assert adapter.down.grad is None or not adapter.down.grad.any()
    assert any(adapter.up.grad.abs().sum() > 0 for _, adapter in unet_set.items())
    assert any(adapter.up.grad.abs().sum() > 0 for _, adapter in te_set.items())
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(base, _outputs(unet, te, ids, x, t)))  # hooks removed


def test_down_init_rank_and_merge_equal_the_adapter_forward(tiny):
    unet, te, _ = tiny
    unet_set, te_set = _adapters(unet, te, seed=1)
    downs = torch.cat([a.down.detach().flatten() for _, a in [*unet_set.items(), *te_set.items()]])
    assert abs(downs.std().item() - 0.25) < 0.25 * 0.05 and all(a.rank == 4 for _, a in unet_set.items())
    for _, adapter in unet_set.items():
        torch.nn.init.normal_(adapter.up, std=0.1)
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([300])
    hidden = torch.randn(1, 77, 768)
    with torch.no_grad(), lora.hooked(unet, unet_set):
        hooked = unet(x, t, encoder_hidden_states=hidden).sample
    weights = {n: p.detach().clone() for n, p in unet.named_parameters()}
    with torch.no_grad(), lora.merged(unet, unet_set):
        merged = unet(x, t, encoder_hidden_states=hidden).sample
    assert torch.allclose(hooked, merged, atol=1e-5) and not torch.allclose(hooked, unet(x, t, encoder_hidden_states=hidden).sample, atol=1e-3)
    assert all(torch.equal(p, weights[n]) for n, p in unet.named_parameters())  # exact originals restored
    name, adapter = next(iter(unet_set.items()))
    w = torch.randn(adapter.up.shape[0], adapter.down.shape[1])
    assert torch.allclose(adapter.weight_function(w), w + adapter.up @ adapter.down)


def test_injection_census_on_an_sd15_shaped_unet_and_text_encoder():
    """Spec §13.3: built on the meta device from the shipped SD1.5 configs (shapes only, no memory)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from anybody.assets import asset_path

    cfg = asset_path("configs", "sd15")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(cfg / "unet"))
        te = CLIPTextModel(CLIPTextConfig.from_json_file(str(cfg / "text_encoder" / "config.json")))
    unet_targets = lora.find_targets(unet, lora.UNET_ATTENTION_TARGETS)
    te_targets = lora.find_targets(te, lora.TEXT_ATTENTION_TARGETS)
    assert len(unet_targets) == 144 and len(te_targets) == 48
    rank = 4
    assert sum(rank * (l.in_features + l.out_features) for _, l in unet_targets) == 1_246_464
    assert sum(rank * (l.in_features + l.out_features) for _, l in te_targets) == 294_912
    to_k = dict(unet_targets)["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"]
    assert (rank, to_k.in_features) == (4, 768)
    names = {lora.kohya_name("unet", p) for p, _ in unet_targets}
    assert "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_0_proj" in names
    assert "lora_te_text_model_encoder_layers_11_self_attn_out_proj" in {
        lora.kohya_name("te", lora.clip_path(p)) for p, _ in te_targets}


def test_ldm_paths_map_to_the_diffusers_paths_of_the_same_layers():
    """Every attention linear of an SD1.5 UNet: the LDM key the checkpoint writer produces maps back to its
    diffusers path (so a ComfyUI/A1111-tree adapter gets the name diffusers and both UIs read)."""
    import sys
    from pathlib import Path

    from diffusers import UNet2DConditionModel

    from anybody.assets import asset_path

    sys.path.insert(0, str(Path(__file__).parent))
    from ldm_checkpoint import unet_to_ldm

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(asset_path("configs", "sd15") / "unet"))
    paths = [p for p, _ in lora.find_targets(unet, lora.UNET_ATTENTION_TARGETS)]
    ldm = unet_to_ldm({f"{p}.weight": torch.zeros(1) for p in paths}, 2, [False, True, True, True])
    assert len(ldm) == 144
    back = {lora.ldm_to_diffusers(k[: -len(".weight")]) for k in ldm}
    assert back == set(paths)
    assert lora.ldm_to_diffusers("diffusion_model.input_blocks.7.1.transformer_blocks.0.attn2.to_q") == \
        "down_blocks.2.attentions.0.transformer_blocks.0.attn2.to_q"
    with pytest.raises(ValueError, match="not a UNet attention layer"):
        lora.ldm_to_diffusers("input_blocks.3.0.op")


def test_kohya_file_loaded_by_diffusers_reproduces_our_adapted_outputs(tiny, tmp_path):
    """Spec §13.14: our kohya export through diffusers' own load_lora_weights gives the hooked outputs."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from anybody.host.tiny import SD_SCHEDULER, tiny_sd1_modules

    unet, vae, te, tok = tiny_sd1_modules(seed=0)
    unet_set, te_set = _adapters(unet, te, seed=2)
    for _, adapter in [*unet_set.items(), *te_set.items()]:
        torch.nn.init.normal_(adapter.up, std=0.05)
    path = lora.save_kohya(tmp_path / "subject.safetensors", lora.kohya_tensors(unet_set, te_set),
                           lora.kohya_metadata(4, "sd_v1", "subject"))
    ids = torch.tensor([tok("a photo of a person", padding="max_length", max_length=77)["input_ids"]])
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([400])
    with torch.no_grad(), lora.hooked(unet, unet_set), lora.hooked(te, te_set):
        ours = _outputs(unet, te, ids, x, t)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
                                   scheduler=DDIMScheduler(**SD_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.load_lora_weights(str(path))
    with torch.no_grad():
        theirs = _outputs(pipe.unet, pipe.text_encoder, ids, x, t)
    assert torch.allclose(ours[0], theirs[0], atol=1e-4) and torch.allclose(ours[1], theirs[1], atol=1e-4)


def test_kohya_round_trip_metadata_and_bad_files(tiny, tmp_path):
    from safetensors import safe_open

    unet, te, _ = tiny
    unet_set, te_set = _adapters(unet, te, seed=3)
    for _, adapter in unet_set.items():
        torch.nn.init.normal_(adapter.up, std=0.05)
    path = lora.save_kohya(tmp_path / "a.safetensors", lora.kohya_tensors(unet_set, te_set),
                           lora.kohya_metadata(4, "sd_v1", "a", {"anybody.method": "magicapture"}))
    with safe_open(str(path), "pt") as f:
        meta, keys = f.metadata(), set(f.keys())
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == "4"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora" and meta["anybody.method"] == "magicapture"
    name = next(iter(dict(unet_set.items())))
    assert {f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"} <= keys
    fresh_unet, fresh_te = _adapters(unet, te, seed=9)
    weights = lora.read_kohya(path)
    assert lora.load_into(fresh_unet, weights) == [] and lora.load_into(fresh_te, weights) == []
    for (_, a), (_, b) in zip(unet_set.items(), fresh_unet.items()):
        assert torch.equal(a.down, b.down) and torch.allclose(a.up, b.up)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "empty.safetensors"))
    from anybody.errors import ModelFileError

    with pytest.raises(ModelFileError, match="no kohya LoRA weights"):
        lora.read_kohya(tmp_path / "empty.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ModelFileError, match="could not be read as a LoRA file"):
        lora.read_kohya(tmp_path / "junk.safetensors")
    wrong = {n: (d[:2], u[:, :2], a) for n, (d, u, a) in weights.items()}
    with pytest.raises(ModelFileError, match="another base model or rank"):
        lora.load_into(fresh_unet, wrong)


def test_adapters_train_through_the_host_and_the_kohya_file_reproduces_the_hosts_output(host, tmp_path):
    """The product's own loop: adapters from ``host.lora_layers`` trained with ``host.training(adapters=...)`` lower
    a fixed denoising loss; the exported file, loaded by diffusers, gives the host's adapted prediction."""
    import torch.nn.functional as F

    from anybody.train import diffusion
    from anybody.train.engine import Trainer

    with torch.inference_mode():  # as a ComfyUI node makes them: the adapters must still train
        sets = lora.for_host(host, lora.MAGICAPTURE_TARGETS, generator=torch.Generator().manual_seed(0))
    assert len(sets["unet"]) > 0 and len(sets["te"]) == 2 * 4  # tiny CLIP: 2 layers x q/k/v/out
    params = {f"{tree}.{n}": p for tree, s in sets.items() for n, p in s.named_parameters()}
    g = torch.Generator().manual_seed(1)
    z0 = torch.randn(4, 4, 8, 8, generator=g)
    probe_t, probe_eps = torch.randint(0, 1000, (8,), generator=g), torch.randn(8, 4, 8, 8, generator=g)

    def probe() -> float:
        a = host.alphas_cumprod.float()[probe_t].view(-1, 1, 1, 1)
        x_t = diffusion.noisy(z0.repeat(2, 1, 1, 1), probe_eps, a)
        with torch.no_grad():
            cond = host.encode_prompts(["a photo of a person"] * 8)
            return F.mse_loss(host.predict(x_t, probe_t, cond), probe_eps).item()

    with host.training(adapters=sets):
        before = probe()
        optimizer = torch.optim.AdamW(list(params.values()), lr=1e-2)
        loss_fn = lambda gen: diffusion.denoising_loss(host, z0, lambda _: host.encode_prompts(["a photo of a person"] * 4), gen)
        Trainer(params, optimizer, loss_fn, host.sink, 15, seed=0).run()
        after = probe()
        x, t = torch.randn(1, 4, 8, 8), torch.tensor([300])
        with torch.no_grad():
            ours = host.predict(x, t, host.encode_prompts(["a photo of a person"]))
    assert after < before - 1e-4, (before, after)
    with torch.no_grad():  # the adapters are gone after training: the host is as it was
        plain = host.predict(x, t, host.encode_prompts(["a photo of a person"]))
    assert not torch.allclose(plain, ours, atol=1e-4)
    path = lora.save_kohya(tmp_path / "trained.safetensors", lora.kohya_tensors(*sets.values()),
                           lora.kohya_metadata(4, "sd_v1", "trained"))
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from anybody.host.tiny import SD_SCHEDULER

    te = host.encoders["clip_l"]
    pipe = StableDiffusionPipeline(vae=host.vae, text_encoder=te.model, tokenizer=te.tokenizer, unet=host.unet,
                                   scheduler=DDIMScheduler(**SD_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.load_lora_weights(str(path))
    try:
        with torch.no_grad():
            hidden, _ = pipe.encode_prompt("a photo of a person", "cpu", 1, False)
            theirs = pipe.unet(x, t, encoder_hidden_states=hidden).sample
        assert torch.allclose(theirs, ours, atol=1e-4)
    finally:
        pipe.unload_lora_weights()  # the session's shared tiny host must leave as it came
    with torch.no_grad():
        assert torch.equal(host.predict(x, t, host.encode_prompts(["a photo of a person"])), plain)
