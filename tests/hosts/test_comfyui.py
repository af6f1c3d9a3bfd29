"""CrossInitTrain inside a real ComfyUI (set ANYBODY_COMFYUI_DIR to a ComfyUI checkout whose Python env is active).

Builds a random-weight SD1.5-detectable checkpoint (320-channel 2-level UNet, full CLIP-L, full SD VAE), loads it
with the stock CheckpointLoaderSimple, trains through the node in ComfyUI's executor, and checks the stock
`embedding:<name>` path.
"""
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

COMFY = os.environ.get("ANYBODY_COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFY, reason="ANYBODY_COMFYUI_DIR is not set: no real ComfyUI to run the node in")
REPO = Path(__file__).resolve().parents[2]


def _tiny_modules():
    """The random SD1.5-detectable modules (seeded, so they can be rebuilt to read their configs)."""
    sys.path.insert(0, str(REPO / "tests"))
    from ldm_checkpoint import comfy_detectable_sd15

    return comfy_detectable_sd15(seed=0)


def _build_checkpoint(path: Path) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from ldm_checkpoint import save_sd1_checkpoint

    save_sd1_checkpoint(path, *_tiny_modules())


@pytest.fixture(scope="module")
def comfy_env(tmp_path_factory):
    sys.path.insert(0, str(REPO / "tests" / "hosts"))
    from comfy_harness import start_comfy

    base = tmp_path_factory.mktemp("comfy")
    (base / "checkpoints").mkdir()
    _build_checkpoint(base / "checkpoints" / "tiny15.safetensors")
    (base / "input").mkdir()
    shutil.copy(REPO / "anybody" / "assets" / "demo_face.jpg", base / "input" / "face.jpg")
    return start_comfy(COMFY, base, ["--cpu"])


def _graph(**train):
    widgets = dict(name="hosttest", preset="custom", steps=4, lr=0.005, batch=2, grad_accum=1, resolution=64, seed=0,
                   save_every=0, preview_every=1, saved_progress="resume", overwrite=False, names_file="bundled (1,180 names)",
                   gradient_checkpointing=False)
    widgets.update(train)
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny15.safetensors"}},
            "2": {"class_type": "LoadImage", "inputs": {"image": "face.jpg"}},
            "3": {"class_type": "AnybodyCrossInitTrain", "inputs": {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2],
                                                                    "images": ["2", 0], **widgets}}}


def _example_workflow():
    """The shipped example's API twin, shrunk to the tiny checkpoint and a few steps."""
    import json

    g = json.loads((REPO / "example_workflows" / "cross_init_train_then_generate.api.json").read_text())
    g["1"]["inputs"]["ckpt_name"] = "tiny15.safetensors"
    g["2"]["inputs"]["image"] = "face.jpg"
    g["3"]["inputs"].update(name="hosttest", preset="custom", steps=4, batch=2, resolution=64, preview_every=1)
    g["4"]["inputs"]["text"] = g["4"]["inputs"]["text"].replace("<my_face>", "<hosttest>")
    g["6"]["inputs"].update(width=64, height=64)
    g["7"]["inputs"].update(steps=2)
    return g


def test_node_trains_on_the_loaded_model_and_stock_embedding_syntax_works(comfy_env):
    ex, errors = comfy_env["run"](_example_workflow())
    assert ex.success, errors
    path = comfy_env["base"] / "embeddings" / "hosttest.safetensors"
    assert path.is_file()
    assert "embedding:hosttest" in ex.history_result["outputs"]["3"]["text"][0]
    assert ex.history_result["outputs"]["9"]["images"], "the sampler ran on the trained identity and saved an image"

    import comfy.sd
    import folder_paths
    from safetensors.torch import load_file

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
        str(comfy_env["base"] / "checkpoints" / "tiny15.safetensors"), output_vae=True, output_clip=True,
        embedding_directory=folder_paths.get_folder_paths("embeddings"))
    encode = comfy_env["nodes"].CLIPTextEncode().encode
    with torch.inference_mode():
        with_id = encode(clip, "a photo of embedding:hosttest person")[0][0][0]
        plain = encode(clip, "a photo of person")[0][0][0]
    assert not torch.allclose(with_id, plain)
    # the stock path equals our injection path on the same CLIP
    from importlib import import_module

    pack = import_module(next(m for m in sys.modules if m.endswith("anybody") and hasattr(sys.modules[m], "NODE_CLASS_MAPPINGS")))
    ComfyHost = sys.modules[pack.__name__ + ".anybody.host.comfy"].ComfyHost
    host = ComfyHost(model, clip, vae)
    vectors = load_file(str(path))["emb_params"]
    with torch.no_grad():
        ours = host.encode_prompts(["a photo of <x> person"], {"<x>": {"clip_l": vectors}}).context
    assert torch.allclose(ours.float().cpu(), with_id.float().cpu(), atol=1e-4)


def _events(ex, kind):
    return [d for ev, d in ex.status_messages if ev == kind]


def test_cancel_is_an_interrupt_and_resume_equals_an_uninterrupted_run(comfy_env):
    import comfy.model_management as mm
    import comfy.utils
    from safetensors.torch import load_file

    def cancel_at_two(value, total, preview, node_id=None, **kw):
        if value >= 2:
            mm.interrupt_current_processing(True)

    comfy.utils.set_progress_bar_global_hook(cancel_at_two)
    try:
        ex, errors = comfy_env["run"](_graph(name="cancelme"))
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        mm.interrupt_current_processing(False)
    assert not ex.success and _events(ex, "execution_interrupted") and not _events(ex, "execution_error"), errors
    state = comfy_env["base"] / "output" / "anybody_training" / "cancelme.state.safetensors"
    assert state.is_file() and not (comfy_env["base"] / "embeddings" / "cancelme.safetensors").exists()
    TrainingState = _pack_module("anybody.train.state").TrainingState
    assert TrainingState(state.parent, "cancelme", {}).saved_step() == 2, "saved at the step the cancel landed on"
    steps = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None, **kw: steps.append(value))
    try:
        ex, errors = comfy_env["run"](_graph(name="cancelme"))
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert ex.success, errors
    assert min(s for s in steps if s) == 3, f"resumed after the saved step 2, reported {steps}"
    ex, errors = comfy_env["run"](_graph(name="uninterrupted"))
    assert ex.success, errors
    resumed = load_file(comfy_env["base"] / "embeddings" / "cancelme.safetensors")["emb_params"]
    full = load_file(comfy_env["base"] / "embeddings" / "uninterrupted.safetensors")["emb_params"]
    torch.testing.assert_close(resumed, full, atol=1e-6, rtol=1e-6)


def test_a_name_list_from_the_models_folder_is_offered_and_used(comfy_env):
    """names_file: any .txt in models/celebrity_names (here the test's registered folder), e.g. wiki_names_v2.txt."""
    from safetensors import safe_open

    folder = comfy_env["base"] / "celebrity_names"
    folder.mkdir(exist_ok=True)
    (folder / "my_names.txt").write_text("Tom Hanks\nMeryl Streep\nDenzel Washington\n")
    node = comfy_env["nodes"].NODE_CLASS_MAPPINGS["AnybodyCrossInitTrain"]
    assert "my_names.txt" in node.INPUT_TYPES()["required"]["names_file"][0]
    ex, errors = comfy_env["run"](_graph(name="ownnames", names_file="my_names.txt", steps=1))
    assert ex.success, errors
    ex, errors = comfy_env["run"](_graph(name="bundlednames", steps=1))
    assert ex.success, errors
    keys = []
    for name in ("ownnames", "bundlednames"):
        with safe_open(str(comfy_env["base"] / "embeddings" / f"{name}.safetensors"), framework="pt") as f:
            keys.append(f.metadata()["anybody.result_key"])
    assert keys[0] != keys[1], "the name list is part of what was trained"


def test_requeue_with_the_same_settings_reuses_the_file_without_training(comfy_env):
    ex, errors = comfy_env["run"](_graph(name="requeue"))
    assert ex.success, errors
    path = comfy_env["base"] / "embeddings" / "requeue.safetensors"
    first = path.stat().st_mtime_ns
    ex, errors = comfy_env["run"](_graph(name="requeue", save_every=3))  # a setting that changes nothing
    assert ex.success, errors
    assert "loaded, not retrained" in ex.history_result["outputs"]["3"]["text"][0]
    assert path.stat().st_mtime_ns == first
    ex, errors = comfy_env["run"](_graph(name="requeue", seed=1))
    assert not ex.success and "other photos, settings" in errors[0]["exception_message"]


def _pack_module(name):
    from importlib import import_module

    pack = import_module(next(m for m in sys.modules if m.endswith("anybody") and hasattr(sys.modules[m], "NODE_CLASS_MAPPINGS")))
    return import_module(f"{pack.__name__}.{name}")  # the pack's own copy of the module, imported if need be


def _train(comfy_env, model, clip, vae, images, name, **widgets):
    """The node called as the executor calls it: inside inference mode, every input by keyword."""
    node = comfy_env["nodes"].NODE_CLASS_MAPPINGS["AnybodyCrossInitTrain"]()
    settings = dict(preset="custom", steps=2, lr=0.005, batch=2, grad_accum=1, resolution=64, seed=0, save_every=0,
                    preview_every=0, saved_progress="resume", overwrite=False, names_file="bundled (1,180 names)",
                    gradient_checkpointing=False)
    settings.update(widgets)
    with torch.inference_mode():
        return node.train(model=model, clip=clip, vae=vae, images=images, name=name, **settings)["result"]


def _load_tiny(comfy_env):
    import comfy.sd
    import folder_paths

    return comfy.sd.load_checkpoint_guess_config(
        str(comfy_env["base"] / "checkpoints" / "tiny15.safetensors"), output_vae=True, output_clip=True,
        embedding_directory=folder_paths.get_folder_paths("embeddings"))[:3]


def _fixed_x0(model, seed=0):
    """What a sampler gets from the graph's MODEL for a fixed input (ComfyUI's own apply_model, x0)."""
    import comfy.model_management as mm

    g = torch.Generator().manual_seed(seed)
    x, context = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 768, generator=g)
    with torch.inference_mode():
        mm.load_models_gpu([model])
        return model.model.apply_model(x, torch.tensor([3.0]), c_crossattn=context,
                                       transformer_options=model.model_options.get("transformer_options", {})).float().clone()


def test_moved_weights_train_and_the_graphs_model_and_clip_stay_as_they_were(comfy_env):
    """A GPU ``load_models_gpu`` moves the loaded model with ``Module.to``: the inference-mode Parameter objects are
    kept and their data swapped (then ``is_inference()`` is False, yet backward fails). Reproduced on the CPU by
    the same swap; training must work, and the graph's MODEL/CLIP must give what they gave before."""
    model, clip, vae = _load_tiny(comfy_env)
    model.model._apply(lambda t: t.clone())  # outside inference mode, exactly what Module.to does on a device move
    clip.cond_stage_model._apply(lambda t: t.clone())
    assert not next(model.model.parameters()).is_inference()
    encode = comfy_env["nodes"].CLIPTextEncode().encode
    params = {id(p) for p in model.model.parameters()}
    x0_before = _fixed_x0(model)
    with torch.inference_mode():
        before = encode(clip, "a photo of <direct> person")[0][0][0]
    clip_out, identity, path = _train(comfy_env, model, clip, vae, torch.rand(2, 64, 64, 3), "direct",
                                      gradient_checkpointing=True, preview_every=1)
    with torch.inference_mode():
        with_word = encode(clip_out, "a photo of <direct> person")[0][0][0]
        with_syntax = encode(clip_out, "a photo of embedding:direct person")[0][0][0]
        stock = encode(clip, "a photo of embedding:direct person")[0][0][0]
        after = encode(clip, "a photo of <direct> person")[0][0][0]
        weighted = encode(clip_out, "a photo of (<direct>:1.2) person")[0][0][0]
    assert torch.equal(before, after), "the input CLIP is not changed"
    assert torch.equal(_fixed_x0(model), x0_before), "the next KSampler sees the MODEL as it was"
    assert {id(p) for p in model.model.parameters()} == params, "no parameter of the graph's MODEL was replaced"
    torch.testing.assert_close(with_word, stock)
    torch.testing.assert_close(with_syntax, stock)
    assert not torch.allclose(with_word, before)
    assert not torch.allclose(weighted, with_word), "prompt weights still apply to the identity"
    from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

    assert not any("forward" in vars(m) for m in model.model.diffusion_model.modules() if isinstance(m, ResBlock))


def test_lora_weights_are_trained_against_and_attention_patches_are_left_out(comfy_env):
    """A weight patch (what LoraLoader adds) is part of the model users sample with, so training sees it, once; an
    attention patch of another node is stripped from the training copy only, and the log says so."""
    model, clip, vae = _load_tiny(comfy_env)
    host_mod = _pack_module("anybody.host.comfy")
    key = "diffusion_model.out.2.weight"
    weight = dict(model.model.named_parameters())[key]
    lora = model.clone()
    lora.add_patches({key: ("diff", (torch.randn(weight.shape) * 0.5,))}, 1.0)
    g = torch.Generator().manual_seed(1)
    x_t, t = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([500])
    plain_host, lora_host = host_mod.ComfyHost(model, clip, vae), host_mod.ComfyHost(lora, clip, vae)
    assert plain_host.fingerprint() != lora_host.fingerprint(), "a LoRA changes what a trained file is reused for"
    skip = clip.clone()
    skip.clip_layer(-2)
    assert host_mod.ComfyHost(model, skip, vae).fingerprint() != plain_host.fingerprint(), "so does clip skip"
    with torch.no_grad():
        cond = plain_host.encode_prompts(["a photo of a person"])
        plain_out = plain_host.predict(x_t, t, cond)
        lora_out = lora_host.predict(x_t, t, cond)
        with lora_host.training():
            lora_train_out = lora_host.predict(x_t, t, cond)
    assert not torch.allclose(plain_out, lora_out)
    torch.testing.assert_close(lora_train_out, lora_out, atol=1e-5, rtol=1e-5)  # patched once, not twice

    calls = []

    def attn2(q, k, v, extra_options):
        calls.append(1)
        return q * 0
    patched = model.clone()
    patched.set_model_attn2_replace(attn2, "input", 1)
    logs = []
    host = host_mod.ComfyHost(patched, clip, vae)
    host.sink.log = logs.append
    with torch.no_grad(), host.training():
        calls.clear()
        torch.testing.assert_close(host.predict(x_t, t, cond), plain_out, atol=1e-5, rtol=1e-5)
    assert not calls and any("not trained through" in line and "patches_replace" in line for line in logs)
    assert patched.model_options["transformer_options"]["patches_replace"], "the graph's MODEL keeps its patch"


def test_the_inputs_hook_backup_stays_with_the_input(comfy_env):
    """clone() shares hook-weight backups (what Hook LoRA nodes leave); loading the training copy must neither take
    them nor write them into the copy: they belong to the input, which restores them itself."""
    model, clip, vae = _load_tiny(comfy_env)
    hooked = model.clone()
    key = "diffusion_model.out.2.weight"
    weight = dict(hooked.model.named_parameters())[key]
    original = weight.detach().clone() + 1.0  # the pre-hook weight a Hook LoRA node would have backed up
    hooked.hook_backup[key] = (original, torch.device("cpu"))
    host = _pack_module("anybody.host.comfy").ComfyHost(hooked, clip, vae)
    with host.training():
        copy_weight = dict(host.active_model().model.named_parameters())[key]
        assert not torch.equal(copy_weight.detach().cpu(), original), "the copy got the input's backup"
    assert key in hooked.hook_backup or torch.equal(dict(hooked.model.named_parameters())[key].detach(), original)


def test_bf16_training_copy_computes_in_bf16_and_leaves_the_graphs_model_alone(comfy_env, monkeypatch):
    """Where the GPU supports bf16, the fp16 UNet's training copy is stored and computed in bf16 (no loss scaling);
    forced here on the CPU to run the same code path."""
    comfy_training = _pack_module("anybody.host.comfy_training")
    monkeypatch.setattr(comfy_training, "bf16_instead_of_fp16", lambda base, device, manual_cast=None: True)
    model, clip, vae = _load_tiny(comfy_env)
    x0_before = _fixed_x0(model)
    host = _pack_module("anybody.host.comfy").ComfyHost(model, clip, vae)
    g = torch.Generator().manual_seed(4)
    x_t, t = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([300])
    with torch.no_grad():
        cond = host.encode_prompts(["a photo of a person"])
        fp32 = host.predict(x_t, t, cond)
        with host.training():
            assert host.compute_dtype == torch.bfloat16
            assert host.active_model().model.diffusion_model.input_blocks[0][0].weight.dtype == torch.bfloat16
            bf16 = host.predict(x_t, t, cond)
    assert host.compute_dtype == torch.float32
    torch.testing.assert_close(bf16, fp32, atol=0.1, rtol=0.1)
    assert not torch.equal(bf16, fp32)
    clip_out, identity, path = _train(comfy_env, model, clip, vae, torch.rand(1, 64, 64, 3), "bf16face")
    assert torch.isfinite(identity.vectors["clip_l"]).all()
    assert torch.equal(_fixed_x0(model), x0_before)


def test_v_prediction_from_a_model_sampling_node_is_honoured(comfy_env):
    """ModelSamplingDiscrete (v_prediction + zsnr) replaces the sampling object through the patcher."""
    model, clip, vae = _load_tiny(comfy_env)
    nodes_ms = __import__("comfy_extras.nodes_model_advanced", fromlist=["ModelSamplingDiscrete"])
    node = nodes_ms.ModelSamplingDiscrete()
    patched = node.patch(model, "v_prediction", True)
    patched = patched[0] if isinstance(patched, tuple) else patched.result[0]
    host = _pack_module("anybody.host.comfy").ComfyHost(patched, clip, vae)
    assert host.prediction == "v" and host.alphas_cumprod[-1] < 1e-6, "zero terminal SNR schedule"
    assert _pack_module("anybody.host.comfy").ComfyHost(model, clip, vae).prediction == "eps"


def test_comfy_and_diffusers_hosts_agree_on_the_same_checkpoint(comfy_env, tmp_path):
    """ARCHITECTURE.md §2's invariant: one checkpoint, two hosts -> same conditioning and same predict output."""
    import json
    import shutil

    sys.path.insert(0, str(REPO / "tests"))
    model, clip, vae = _load_tiny(comfy_env)
    comfy_host = _pack_module("anybody.host.comfy").ComfyHost(model, clip, vae)
    from anybody.host.checkpoint import load_checkpoint_host

    config = tmp_path / "config"
    shutil.copytree(REPO / "anybody" / "assets" / "configs" / "sd15", config)
    unet, vae_d, te = _tiny_modules()
    for sub, module in (("unet", unet), ("vae", vae_d)):
        (config / sub / "config.json").write_text(json.dumps(dict(module.config)))
    te.config.to_json_file(config / "text_encoder" / "config.json")
    diffusers_host = load_checkpoint_host(comfy_env["base"] / "checkpoints" / "tiny15.safetensors", out_dir=tmp_path,
                                          config_dir=config, device="cpu")
    prompts = ["a photo of <x> person", "a painting of a cat"]
    vectors = {"<x>": {"clip_l": torch.randn(2, 768, generator=torch.Generator().manual_seed(2))}}
    g = torch.Generator().manual_seed(3)
    x_t, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([20, 900])
    with torch.no_grad():
        c_comfy, c_diff = comfy_host.encode_prompts(prompts, vectors), diffusers_host.encode_prompts(prompts, vectors)
        torch.testing.assert_close(c_comfy.context.cpu(), c_diff.context.cpu(), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(comfy_host.predict(x_t, t, c_diff), diffusers_host.predict(x_t, t, c_diff),
                                   atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(comfy_host.alphas_cumprod, diffusers_host.alphas_cumprod)


def test_identity_of_another_family_is_refused_on_this_clip(comfy_env):
    import comfy.sd

    _, clip, _, _ = comfy.sd.load_checkpoint_guess_config(
        str(comfy_env["base"] / "checkpoints" / "tiny15.safetensors"), output_vae=False, output_clip=True)
    Identity = _pack_module("anybody.identity").Identity
    clip_with_identity = _pack_module("anybody.host.comfy").clip_with_identity
    sdxl = Identity("x", "sdxl", {"clip_l": torch.randn(2, 768), "clip_g": torch.randn(2, 1280)}, "test")
    with pytest.raises(Exception, match="SDXL"):
        clip_with_identity(clip, sdxl)


def _fill_random(module, seed):
    """ComfyUI builds layers without initialising them; give them small random weights and unit norms."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in module.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            else:
                p.fill_(1.0 if "norm" in n and n.endswith("weight") else 0.0)


@pytest.fixture(scope="module")
def sdxl_objects(comfy_env):
    """ComfyUI's own SDXL classes: a narrow SDXL UNet (real 2048 context, 2816 ADM input) and the full-size
    SDXL CLIP-L + CLIP-G, all random, built the way the checkpoint loader builds them."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sd
    import comfy.sdxl_clip
    import comfy.supported_models
    import comfy.supported_models_base
    import folder_paths

    unet_config = {"model_channels": 32, "use_linear_in_transformer": True, "transformer_depth": [0, 1],
                   "transformer_depth_output": [0, 0, 1, 1], "transformer_depth_middle": 1, "channel_mult": [1, 2],
                   "num_res_blocks": [1, 1], "context_dim": 2048, "adm_in_channels": 2816, "num_head_channels": 16,
                   "num_classes": "sequential", "use_spatial_transformer": True, "legacy": False, "in_channels": 4,
                   "out_channels": 4, "image_size": 32, "use_temporal_attention": False,
                   "use_temporal_resblock": False}
    config = comfy.supported_models.SDXL(unet_config)
    config.set_inference_dtype(torch.float32, None)
    base = config.get_model({}, "")
    _fill_random(base, 1)
    model = comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
    target = comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel)
    clip = comfy.sd.CLIP(target=target, embedding_directory=folder_paths.get_folder_paths("embeddings"))
    _fill_random(clip.cond_stage_model, 2)
    _, _, vae, _ = comfy.sd.load_checkpoint_guess_config(
        str(comfy_env["base"] / "checkpoints" / "tiny15.safetensors"), output_vae=True, output_clip=False)
    return model, clip, vae


def test_sdxl_training_writes_clip_l_and_clip_g_and_the_stock_encoder_reads_them(comfy_env, sdxl_objects):
    from safetensors.torch import load_file

    model, clip, vae = sdxl_objects
    encode = comfy_env["nodes"].CLIPTextEncode().encode
    clip_out, identity, path = _train(comfy_env, model, clip, vae, torch.rand(1, 64, 64, 3), "xlface")
    with torch.inference_mode():
        stock = encode(clip, "a photo of embedding:xlface person")[0][0]
        plain = encode(clip, "a photo of person")[0][0]
        with_word = encode(clip_out, "a photo of <xlface> person")[0][0]
    stored = load_file(path)
    assert {k: tuple(v.shape) for k, v in stored.items()} == {"clip_l": (2, 768), "clip_g": (2, 1280)}
    assert stock[0].shape == (1, 77, 2048) and stock[1]["pooled_output"].shape == (1, 1280)
    assert not torch.allclose(stock[0], plain[0])
    torch.testing.assert_close(with_word[0], stock[0])
    torch.testing.assert_close(with_word[1]["pooled_output"], stock[1]["pooled_output"])
    # the stock path equals our differentiable injection path, context and pooled
    host = _pack_module("anybody.host.comfy").ComfyHost(model, clip, vae)
    with torch.no_grad():
        ours = host.encode_prompts(["a photo of <x> person"], {"<x>": dict(stored)})
    torch.testing.assert_close(ours.context.float().cpu(), stock[0].float().cpu(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.pooled.float().cpu(), stock[1]["pooled_output"].float().cpu(), atol=1e-4, rtol=1e-4)


def test_sdxl_identity_on_the_sd15_clip_and_sd15_clip_on_the_sdxl_model_are_refused(comfy_env, sdxl_objects):
    import comfy.sd

    model, clip, vae = sdxl_objects
    _, clip15, _, _ = comfy.sd.load_checkpoint_guess_config(
        str(comfy_env["base"] / "checkpoints" / "tiny15.safetensors"), output_vae=False, output_clip=True)
    with pytest.raises(Exception, match="CLIP is SD1.x.*MODEL expects 2048"):
        _pack_module("anybody.host.comfy").ComfyHost(model, clip15, vae)


def test_face_nodes_find_the_pack_via_extra_paths_and_align_in_the_executor(comfy_env):
    pytest.importorskip("insightface")
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(REPO / "tests"))
    from face_onnx import build_pack, paint_face

    base = comfy_env["base"]
    build_pack(base / "insightface", "testpack")
    photo = np.full((480, 640, 3), 120, np.uint8)
    paint_face(photo, 320, 240, blue=128)
    Image.fromarray(photo).save(base / "input" / "painted.png")
    loader = comfy_env["nodes"].NODE_CLASS_MAPPINGS["AnybodyFaceModelLoader"]
    assert "testpack" in loader.INPUT_TYPES()["required"]["pack"][0]

    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "painted.png"}},
             "2": {"class_type": "AnybodyFaceModelLoader", "inputs": {"pack": "testpack", "provider": "CPU", "det_size": 640}},
             "3": {"class_type": "AnybodyFaceAlign", "inputs": {"face_model": ["2", 0], "images": ["1", 0],
                                                               "template": "ffhq256", "face": "largest", "index": 0,
                                                               "if_no_face": "error"}},
             "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "aligned"}},
             "5": {"class_type": "MaskToImage", "inputs": {"mask": ["3", 1]}},
             "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "facemask"}}}
    ex, errors = comfy_env["run"](graph)
    assert ex.success, errors
    assert ex.history_result["outputs"]["3"]["text"] == ["1/1 face(s) aligned to ffhq256 (256x256)"]
    (saved,) = ex.history_result["outputs"]["4"]["images"]
    assert Image.open(base / "output" / saved["filename"]).size == (256, 256)

    # parsing inside the face boxes FaceAlign found, and the identity score of the photo against itself
    (base / "face_parsing").mkdir(exist_ok=True)
    BiSeNet = _pack_module("anybody.nets.bisenet").BiSeNet
    net = BiSeNet()
    state = {k: (v.abs() + 1 if k.endswith("running_var") else v) for k, v in net.state_dict().items()}
    torch.save(state, base / "face_parsing" / "79999_iter.pth")
    graph.update({
        "7": {"class_type": "AnybodyFaceParse", "inputs": {"parsing_model": "79999_iter.pth", "images": ["1", 0],
                                                          "classes": "1-13", "faces": ["3", 2]}},
        "8": {"class_type": "MaskToImage", "inputs": {"mask": ["7", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "parsed"}},
        "10": {"class_type": "AnybodyIdentityScore", "inputs": {"face_model": ["2", 0], "images": ["1", 0],
                                                               "reference": ["1", 0]}}})
    ex, errors = comfy_env["run"](graph)
    assert ex.success, errors
    (parsed,) = ex.history_result["outputs"]["9"]["images"]
    mask = np.asarray(Image.open(base / "output" / parsed["filename"]))
    assert mask.shape[:2] == (480, 640) and mask[:100].max() == 0, "nothing outside the face box"
    assert ex.history_result["outputs"]["10"]["text"][0].startswith("identity cosine 1.000")

    graph = {k: graph[k] for k in "123456"}
    graph["2"]["inputs"]["pack"] = "antelopev2"  # not installed: the error names the folder and the files
    ex, errors = comfy_env["run"](graph)
    assert not ex.success
    message = errors[0]["exception_message"]
    assert str(base / "insightface" / "models" / "antelopev2") in message and "scrfd_10g_bnkps.onnx" in message


def test_trainer_names_photos_without_a_face_and_crops_to_faces(comfy_env):
    pytest.importorskip("insightface")
    import numpy as np

    sys.path.insert(0, str(REPO / "tests"))
    from face_onnx import build_pack, paint_face

    root = comfy_env["base"] / "insightface_train"
    build_pack(root, "trainpack")
    face_model = _pack_module("anybody.face.models").load_face_models("trainpack", [root], "CPU")
    photo = np.full((480, 640, 3), 120, np.uint8)
    paint_face(photo, 320, 240, blue=128)
    images = torch.from_numpy(np.stack([photo, np.full_like(photo, 90)])).float() / 255
    model, clip, vae = _load_tiny(comfy_env)
    node = comfy_env["nodes"].NODE_CLASS_MAPPINGS["AnybodyCrossInitTrain"]()
    settings = dict(preset="custom", steps=1, lr=0.005, batch=2, grad_accum=1, resolution=64, seed=0, save_every=0,
                    preview_every=0, saved_progress="resume", overwrite=False, names_file="bundled (1,180 names)",
                    gradient_checkpointing=False)
    with torch.inference_mode():
        out = node.train(model=model, clip=clip, vae=vae, images=images, name="facecheck", face_model=face_model,
                         crop_to_face=True, **settings)
    assert out["ui"]["text"][0].startswith("No face found in photo 2:")
    assert out["result"][1].metadata["anybody.source_images"]  # trained (on the face crops)


def test_likeness_curve_renders_with_the_training_copy_and_keeps_the_graphs_model(comfy_env, monkeypatch):
    """likeness_every in the real node: ComfyUI's own sampler on the training copy, decoded by the training decoder,
    scored by the face model, and training goes on after it; the CSV and the file's metadata hold the curve; the
    graph's MODEL samples exactly as before."""
    pytest.importorskip("insightface")
    import json

    import comfy.sample

    import numpy as np
    from safetensors import safe_open

    sys.path.insert(0, str(REPO / "tests"))
    from face_onnx import build_pack, paint_face

    root = comfy_env["base"] / "insightface_likeness"
    build_pack(root, "likepack")
    face_model = _pack_module("anybody.face.models").load_face_models("likepack", [root], "CPU")
    photo = np.full((128, 128, 3), 120, np.uint8)
    paint_face(photo, 48, 48, blue=128)
    images = torch.from_numpy(photo[None]).float() / 255
    model, clip, vae = _load_tiny(comfy_env)
    before = _fixed_x0(model)
    sampled = []
    real_sample = comfy.sample.sample

    def sample(patcher, noise, steps, cfg, sampler_name, scheduler, *args, **kwargs):
        sampled.append((patcher, len(kwargs["sigmas"]) - 1, cfg, sampler_name))
        return real_sample(patcher, noise, steps, cfg, sampler_name, scheduler, *args, **kwargs)

    monkeypatch.setattr(comfy.sample, "sample", sample)
    node = comfy_env["nodes"].NODE_CLASS_MAPPINGS["AnybodyCrossInitTrain"]()
    settings = dict(preset="custom", steps=4, lr=0.005, batch=1, grad_accum=1, resolution=64, seed=0, save_every=0,
                    preview_every=2, saved_progress="resume", overwrite=False, names_file="bundled (1,180 names)",
                    gradient_checkpointing=False, likeness_every=2, likeness_patience=0, keep_best=True)
    with torch.inference_mode():
        out = node.train(model=model, clip=clip, vae=vae, images=images, name="likeness", face_model=face_model,
                         **settings)
    assert [s[1:] for s in sampled] == [(15, 5.0, "ddim")] * 2, "steps 2 and 4, by ComfyUI's sampler (15 DDIM steps)"
    assert all(s[0] is not model and s[0].model is not model.model for s in sampled), "on the training copy"
    path = Path(out["result"][2])
    with safe_open(str(path), "pt") as f:
        curve = json.loads(f.metadata()["anybody.likeness.curve"])
    assert [point[0] for point in curve] == [2, 4]
    rows = (comfy_env["base"] / "output" / "anybody_training" / "likeness.loss.csv").read_text().splitlines()
    assert rows[0] == "step,loss,average,likeness,face_rate" and len(rows) == 5
    assert torch.equal(_fixed_x0(model), before), "the graph's MODEL is untouched"
    (chart,) = out["ui"]["images"]  # the finished curve on the node, from the CSV
    assert chart["type"] == "temp" and (comfy_env["base"] / "temp" / chart["filename"]).is_file()


def test_comfyui_sampler_renders_as_our_ddim_does(comfy_env):
    """Host.sample_ddim here is KSampler's "ddim" on SD's DDIM timesteps (15 steps: 1000 is not a multiple, where
    ComfyUI's ddim_uniform would take 16), so it agrees with our DDIM on the same model up to its ends (noise scaled
    by sigma rather than 1/sqrt(alpha), the last step to sigma 0 rather than alpha_0); each prompt keeps its own
    noise; the latents come back in the host's (scaled) latent space."""
    ComfyHost = _pack_module("anybody.host.comfy").ComfyHost
    ddim_sample = _pack_module("anybody.train.sampling").ddim_sample
    Cond = _pack_module("anybody.host.base").Cond
    model, clip, vae = _load_tiny(comfy_env)
    host = ComfyHost(model, clip, vae)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode(False), torch.no_grad():
        cond = host.encode_prompts(["a photo of a person", "an oil painting of a dog"])
        uncond = host.encode_prompts([""])
        theirs = host.sample_ddim(cond, uncond, noise, 15, 5.0).cpu()
        ours = ddim_sample(host, cond, uncond, noise, 15, 5.0).cpu()
        alone = host.sample_ddim(Cond(cond.context[1:]), uncond, noise[1:], 15, 5.0).cpu()
    gap = ((theirs - ours).norm() / ours.norm()).item()
    assert gap < 0.02, gap  # 0.5 % measured on the tiny model (both ComfyUI versions)
    assert torch.allclose(alone[0], theirs[1], atol=1e-4)
    assert ((theirs[0] - theirs[1]).norm() / ours.norm()).item() > 10 * gap, "the two renders differ far more"


def test_sd2_v_prediction_training_and_the_sigma_to_ddpm_conversion(comfy_env):
    """SD2.x: OpenCLIP-H text encoder (full size, random), a narrow 1024-context UNet, v-prediction."""
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sd
    import comfy.supported_models
    import comfy.supported_models_base
    import comfy.text_encoders.sd2_clip as sd2_clip
    import folder_paths
    from safetensors.torch import load_file

    unet_config = {"model_channels": 32, "use_linear_in_transformer": True, "transformer_depth": [0, 1],
                   "transformer_depth_output": [0, 0, 1, 1], "transformer_depth_middle": 1, "channel_mult": [1, 2],
                   "num_res_blocks": [1, 1], "context_dim": 1024, "adm_in_channels": None, "num_head_channels": 16,
                   "num_classes": None, "use_spatial_transformer": True, "legacy": False, "in_channels": 4,
                   "out_channels": 4, "image_size": 32, "use_temporal_attention": False,
                   "use_temporal_resblock": False}
    config = comfy.supported_models.SD20(unet_config)
    config.set_inference_dtype(torch.float32, None)
    base = comfy.model_base.BaseModel(config, model_type=comfy.model_base.ModelType.V_PREDICTION)
    _fill_random(base, 3)
    model = comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
    clip = comfy.sd.CLIP(target=comfy.supported_models_base.ClipTarget(sd2_clip.SD2Tokenizer, sd2_clip.SD2ClipModel),
                         embedding_directory=folder_paths.get_folder_paths("embeddings"))
    _fill_random(clip.cond_stage_model, 4)
    _, _, vae, _ = comfy.sd.load_checkpoint_guess_config(
        str(comfy_env["base"] / "checkpoints" / "tiny15.safetensors"), output_vae=True, output_clip=False)
    encode = comfy_env["nodes"].CLIPTextEncode().encode
    clip_out, identity, path = _train(comfy_env, model, clip, vae, torch.rand(1, 64, 64, 3), "sd2face")
    with torch.inference_mode():
        stock = encode(clip, "a photo of embedding:sd2face person")[0][0][0]
        with_word = encode(clip_out, "a photo of <sd2face> person")[0][0][0]
    stored = load_file(path)
    assert list(stored) == ["emb_params"] and tuple(stored["emb_params"].shape) == (2, 1024)
    torch.testing.assert_close(with_word, stock)

    host = _pack_module("anybody.host.comfy").ComfyHost(model, clip, vae)
    assert host.family == "sd2" and host.prediction == "v"
    # predict() gives v in DDPM space: exactly what the raw diffusion model outputs at DDPM input x_t, timestep t
    g = torch.Generator().manual_seed(0)
    x_t, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([100, 800])
    with torch.no_grad():
        cond = host.encode_prompts(["a photo of a person"] * 2)
        v = host.predict(x_t, t, cond)
        raw_v = base.diffusion_model(x_t, t.float(), context=cond.context).float()
    torch.testing.assert_close(v, raw_v, atol=1e-4, rtol=1e-4)


def test_adaface_graph_binds_a_face_the_stock_loader_reads_the_same(comfy_env):
    pytest.importorskip("insightface")
    import folder_paths
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(REPO / "tests"))
    from adaface_checkpoints import write_adaface_files
    from face_onnx import build_pack, paint_face

    base = comfy_env["base"]
    write_adaface_files(base / "adamodels")
    folder_paths.add_model_folder_path("adaface", str(base / "adamodels" / "adaface"))  # as extra_model_paths.yaml
    folder_paths.add_model_folder_path("arc2face", str(base / "adamodels" / "arc2face"))
    build_pack(base / "insightface", "adapack")
    photo = np.full((480, 640, 3), 120, np.uint8)
    paint_face(photo, 320, 240, blue=128)
    Image.fromarray(photo).save(base / "input" / "ada_face.png")
    nodes = comfy_env["nodes"].NODE_CLASS_MAPPINGS
    ada_file = _pack_module("anybody.nets.adaface_files").ADAFACE_FILE
    assert ada_file in nodes["AnybodyAdaFaceLoader"].INPUT_TYPES()["required"]["adaface"][0]
    assert "arc2face" in nodes["AnybodyAdaFaceLoader"].INPUT_TYPES()["required"]["arc2face"][0]

    import json

    graph = json.loads((REPO / "example_workflows" / "adaface_face_to_prompt.api.json").read_text())  # the shipped twin
    graph["1"]["inputs"]["ckpt_name"] = "tiny15.safetensors"
    graph["2"]["inputs"]["image"] = "ada_face.png"
    graph["3"]["inputs"].update(pack="adapack", provider="CPU")
    graph["5"]["inputs"].update(name="adahost", save_embedding=True)
    graph["6"]["inputs"]["text"] = "a photo of <adahost> person"
    graph["8"]["inputs"].update(width=64, height=64)
    graph["9"]["inputs"].update(steps=1)
    for _ in range(2):  # queued again: the saved embedding holds the same vectors, so it is kept, not an error
        ex, errors = comfy_env["run"](graph)
        assert ex.success, errors
    text = ex.history_result["outputs"]["5"]["text"][-1]
    assert "adahost (adaface, SD1.x, 16 vectors)" in text and "adahost.safetensors" in text
    saved = folder_paths.get_folder_paths("embeddings")[0] + "/adahost.safetensors"
    vectors = _pack_module("anybody.identity").Identity.load(saved).vectors["clip_l"]
    assert vectors.shape == (16, 768)

    # the returned CLIP's <adahost> equals the stock embedding:adahost of the saved file
    model, clip, vae = _load_tiny(comfy_env)
    with torch.inference_mode():
        bound = nodes["AnybodyAdaFaceEncode"]().encode(
            clip, nodes["AnybodyFaceModelLoader"]().load("adapack", "CPU", 640)[0],
            nodes["AnybodyAdaFaceLoader"]().load(ada_file, "arc2face")[0],
            torch.from_numpy(photo).float()[None] / 255, "adahost", 1.0, False, False)["result"][0]
        ours = nodes["CLIPTextEncode"]().encode(bound, "a photo of <adahost> person")[0][0][0]
        stock = nodes["CLIPTextEncode"]().encode(clip, "a photo of embedding:adahost person")[0][0][0]
        plain = nodes["CLIPTextEncode"]().encode(clip, "a photo of adahost person")[0][0][0]
    assert torch.allclose(ours, stock, atol=1e-5) and not torch.allclose(ours, plain, atol=1e-3)



def test_guidance_anneal_steers_each_sampler_step_by_the_authors_schedule(comfy_env):
    """GuidanceAnneal on a real KSampler run: the guidance each step applied (read back from the cond, uncond and
    result ComfyUI hands its post-cfg hooks) falls 4 -> 1 over the steps, though the KSampler says cfg 1 (so its
    cfg is ignored and the unconditioned pass still runs); the input MODEL is not patched."""
    import comfy.sample
    import nodes as comfy_nodes

    model, clip, vae = _load_tiny(comfy_env)
    (patched,) = comfy_env["nodes"].NODE_CLASS_MAPPINGS["AnybodyGuidanceAnneal"]().patch(model, 4.0, 1.0)
    assert "sampler_cfg_function" not in model.model_options
    applied = []

    def record(args):
        result, cond, uncond = args["denoised"], args["cond_denoised"], args["uncond_denoised"]
        applied.append((((result - uncond) * (cond - uncond)).sum() / ((cond - uncond) ** 2).sum()).item())
        return result

    patched.set_model_sampler_post_cfg_function(record)
    with torch.inference_mode():
        positive = comfy_nodes.CLIPTextEncode().encode(clip, "a photo of a person")[0]
        negative = comfy_nodes.CLIPTextEncode().encode(clip, "")[0]
        noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        comfy.sample.sample(patched, noise, 5, 1.0, "euler", "normal", positive, negative, torch.zeros_like(noise),
                            disable_pbar=True, seed=0)
    assert applied == pytest.approx([4.0, 3.25, 2.5, 1.75, 1.0], abs=1e-4)


def test_adaface_refuses_an_sdxl_clip(comfy_env, sdxl_objects):
    node = comfy_env["nodes"].NODE_CLASS_MAPPINGS["AnybodyAdaFaceEncode"]()
    with pytest.raises(Exception, match="AdaFace makes SD1.x prompt vectors .* this CLIP is SDXL"):
        node.encode(sdxl_objects[1], None, None, torch.zeros(1, 64, 64, 3), "x", 1.0, False, False)


def test_celeb_basis_example_trains_two_people_and_one_prompt_uses_both(comfy_env):
    pytest.importorskip("insightface")
    import json

    import folder_paths
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(REPO / "tests"))
    from face_onnx import build_pack, paint_face

    base = comfy_env["base"]
    build_pack(base / "insightface", "celebpack")
    for name, blue in (("alice", 40), ("bob", 200)):
        photo = np.full((480, 640, 3), 100 + blue // 4, np.uint8)
        paint_face(photo, 320, 240, blue=blue)
        Image.fromarray(photo).save(base / "input" / f"cb_{name}.png")
    IResNet = _pack_module("anybody.nets.iresnet").IResNet
    torch.manual_seed(0)
    (base / "face_recognition").mkdir(exist_ok=True)
    folder_paths.add_model_folder_path("face_recognition", str(base / "face_recognition"))  # as extra_model_paths.yaml
    net_state = {k: (v.abs() + 1 if k.endswith("running_var") else v) for k, v in IResNet((1, 1, 1, 1)).state_dict().items()}
    torch.save(net_state, base / "face_recognition" / "glint360k_cosface_r100_fp16_0.1.pth")
    nodes = comfy_env["nodes"].NODE_CLASS_MAPPINGS
    assert "glint360k_cosface_r100_fp16_0.1.pth" in nodes["AnybodyFaceRecognizerLoader"].INPUT_TYPES()["required"]["recognizer"][0]

    graph = json.loads((REPO / "example_workflows" / "celeb_basis_two_people.api.json").read_text())  # the shipped twin
    graph["1"]["inputs"]["ckpt_name"] = "tiny15.safetensors"
    graph["2"]["inputs"]["image"], graph["3"]["inputs"]["image"] = "cb_alice.png", "cb_bob.png"
    graph["5"]["inputs"].update(pack="celebpack", provider="CPU")
    graph["7"]["inputs"].update(names="cb_alice, cb_bob", steps=2, resolution=64, views=2, preview_every=1)
    graph["8"]["inputs"]["text"] = "a photo of <cb_alice> person and <cb_bob> person"
    graph["10"]["inputs"].update(width=64, height=64)
    graph["11"]["inputs"].update(steps=1)
    ex, errors = comfy_env["run"](graph)
    assert ex.success, errors
    text = ex.history_result["outputs"]["7"]["text"][-1]
    assert "<cb_alice>, <cb_bob> -> 2 file(s)" in text and "not retrained" not in text
    assert ex.history_result["outputs"]["13"]["images"], "one prompt with both people sampled and saved an image"
    folder = Path(folder_paths.get_folder_paths("embeddings")[0])
    identity_cls = _pack_module("anybody.identity").Identity
    alice, bob = (identity_cls.load(folder / f"{n}.safetensors") for n in ("cb_alice", "cb_bob"))
    assert alice.vectors["clip_l"].shape == bob.vectors["clip_l"].shape == (2, 768)
    assert not torch.equal(alice.vectors["clip_l"], bob.vectors["clip_l"])
    assert alice.metadata["anybody.celeb_basis.people"] == "cb_alice,cb_bob"

    graph["7"]["inputs"]["preview_every"] = 2  # the node runs again (an input changed) but the result cannot differ
    ex, errors = comfy_env["run"](graph)
    assert ex.success, errors
    assert "not retrained" in ex.history_result["outputs"]["7"]["text"][-1], ex.history_result["outputs"]["7"]

    # the node's CLIP reads both people exactly as the stock loader reads the saved files
    model, clip, vae = _load_tiny(comfy_env)
    face_model = nodes["AnybodyFaceModelLoader"]().load("celebpack", "CPU", 640)[0]
    photos = torch.stack([torch.from_numpy(np.asarray(Image.open(base / "input" / f"cb_{n}.png"))).float() / 255
                          for n in ("alice", "bob")])
    with torch.inference_mode():
        out = nodes["AnybodyCelebBasisEmbed"]().train(
            model, clip, vae, face_model, photos, "cb_alice, cb_bob", 2, 0.01, 2, 64, 23, 100, 1, "resume", False,
            recognizer=nodes["AnybodyFaceRecognizerLoader"]().load("glint360k_cosface_r100_fp16_0.1.pth")[0], views=2)
        assert "not retrained" in out["ui"]["text"][-1]
        both = out["result"][0]
        ours = nodes["CLIPTextEncode"]().encode(both, "a photo of <cb_alice> person and <cb_bob> person")[0][0][0]
        stock = nodes["CLIPTextEncode"]().encode(clip, "a photo of embedding:cb_alice person and embedding:cb_bob person")[0][0][0]
    assert torch.allclose(ours, stock, atol=1e-5)
    assert [i.name for i in out["result"][1]] == ["cb_alice", "cb_bob"]


def test_celeb_basis_on_sdxl_trains_a_head_per_encoder_and_the_stock_encoder_reads_both(comfy_env, sdxl_objects):
    pytest.importorskip("insightface")
    import numpy as np

    sys.path.insert(0, str(REPO / "tests"))
    from face_onnx import build_pack, paint_face

    root = comfy_env["base"] / "insightface_cbxl"
    build_pack(root, "cbxlpack")
    face_model = _pack_module("anybody.face.models").load_face_models("cbxlpack", [root], "CPU")
    photo = np.full((480, 640, 3), 110, np.uint8)
    paint_face(photo, 320, 240, blue=90)
    model, clip, vae = sdxl_objects
    node = comfy_env["nodes"].NODE_CLASS_MAPPINGS["AnybodyCelebBasisEmbed"]()
    with torch.inference_mode():
        out = node.train(model, clip, vae, face_model, torch.from_numpy(photo)[None].float() / 255, "cbxl", 1, 0.01, 2,
                         64, 23, 0, 1, "resume", False, views=2)
        encode = comfy_env["nodes"].CLIPTextEncode().encode
        ours = encode(out["result"][0], "a photo of <cbxl> person")[0][0]
        stock = encode(clip, "a photo of embedding:cbxl person")[0][0]
    assert any("SDXL" in line and "experimental" in line for line in out["ui"]["text"]), out["ui"]["text"]
    (identity,) = out["result"][1]
    assert identity.vectors["clip_l"].shape == (2, 768) and identity.vectors["clip_g"].shape == (2, 1280)
    assert "anybody.celeb_basis.clip_g.basis" in identity.metadata
    torch.testing.assert_close(ours[0], stock[0])
    torch.testing.assert_close(ours[1]["pooled_output"], stock[1]["pooled_output"])


def test_lora_trained_through_the_host_loads_in_the_stock_lora_loader_with_the_same_output(comfy_env, caplog):
    """Adapters on the training copies (ComfyUI weight wrappers), trained a few steps; the kohya file through the
    stock LoraLoader gives the UNet output and the conditioning our in-memory adapters gave. The graph's MODEL is
    untouched, and level-chosen attention capture works through ComfyUI's attn2 patches."""
    import logging

    lora = _pack_module("anybody.train.lora")
    diffusion = _pack_module("anybody.train.diffusion")
    Trainer = _pack_module("anybody.train.engine").Trainer
    model, clip, vae = _load_tiny(comfy_env)
    before = _fixed_x0(model)
    host = _pack_module("anybody.host.comfy").ComfyHost(model, clip, vae)
    with torch.inference_mode():  # as the executor runs a node
        sets = lora.for_host(host, lora.MAGICAPTURE_TARGETS, generator=torch.Generator().manual_seed(0))
        names = {n for s in sets.values() for n, _ in s.items()}
        assert any(n.startswith("lora_unet_down_blocks_") for n in names)
        assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in names
        params = {f"{tree}.{n}": p for tree, s in sets.items() for n, p in s.named_parameters()}
        g = torch.Generator().manual_seed(1)
        x, t = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([300])
        with host.training(adapters=sets):
            z0 = torch.randn(2, 4, 8, 8, generator=g)
            encode = lambda _: host.encode_prompts(["a photo of a person"] * 2)
            Trainer(params, torch.optim.AdamW(list(params.values()), lr=1e-2),
                    lambda gen: diffusion.denoising_loss(host, z0, encode, gen), host.sink, 3, seed=0).run()
            assert all(p.abs().sum() > 0 for n, p in params.items() if n.endswith(".up"))
            with torch.no_grad():
                cond = host.encode_prompts(["a photo of a person"])
                ours = host.predict(x, t, cond)
                with host.cross_attention_maps(level=0) as store:  # this tiny UNet: attention on level 0 only
                    captured = host.predict(x, t, cond)
                maps = store.stacked()
        assert torch.allclose(captured, ours, atol=1e-5) and maps.shape[-1] == 77
        assert torch.allclose(maps.sum(-1), torch.ones_like(maps.sum(-1)), atol=1e-4)
    assert torch.equal(_fixed_x0(model), before)  # the graph's MODEL never saw the adapters
    path = lora.save_kohya(comfy_env["base"] / "trained_lora.safetensors", lora.kohya_tensors(*sets.values()),
                           lora.kohya_metadata(4, "sd_v1", "trained_lora"))
    import comfy.sd
    import comfy.utils

    with caplog.at_level(logging.WARNING), torch.inference_mode():
        model2, clip2 = comfy.sd.load_lora_for_models(model, clip, comfy.utils.load_torch_file(str(path)), 1.0, 1.0)
    assert not [r for r in caplog.records if "lora key not loaded" in r.getMessage()]
    stock = _pack_module("anybody.host.comfy").ComfyHost(model2, clip2, vae)
    with torch.inference_mode():
        theirs_cond = stock.encode_prompts(["a photo of a person"])
        theirs = stock.predict(x, t, theirs_cond)
    # the stock loader merges the LoRA into the CLIP's stored weights, rounding them to their dtype
    stored = clip.cond_stage_model.clip_l.transformer.text_model.encoder.layers[0].self_attn.q_proj.weight.dtype
    scale = cond.context.abs().max()
    tolerance = (1e-3 if stored == torch.float16 else 2e-5) * scale
    assert torch.allclose(theirs_cond.context, cond.context, atol=tolerance) and scale > 1, stored
    assert torch.allclose(theirs, ours, atol=1e-4)


def test_magicapture_node_trains_both_phases_and_returns_stock_lora_patched_model_and_clip(comfy_env, monkeypatch):
    """The node in ComfyUI: training copies with LoRA weight wrappers, attn2 capture patches, a differentiable decode
    through a copy of the graph's VAE, then the kohya file applied by the stock loader at the node's strengths. The
    face detector and parsing are stand-ins (the face stack has tests of its own); the recognizer is a real IResNet."""
    import numpy as np

    magicapture = _pack_module("anybody.methods.magicapture")
    Face = _pack_module("anybody.face.detect").Face
    recognizer_mod = _pack_module("anybody.face.recognizer")
    IResNet = _pack_module("anybody.nets.iresnet").IResNet

    def stand_in(models, parsing_net, recognizer, device, parsing_name=""):
        def detect(image):
            s = image.shape[0]
            return [Face(np.array([0.15, 0.1, 0.85, 0.9]) * s,
                         np.array([[0.35, 0.4], [0.65, 0.4], [0.5, 0.55], [0.38, 0.7], [0.62, 0.7]]) * s, 0.9)]

        def face_mask(image, face):
            mask = np.zeros(image.shape[:2], np.float32)
            mask[image.shape[0] // 4: 3 * image.shape[0] // 4, image.shape[1] // 4: 3 * image.shape[1] // 4] = 1
            return mask

        return magicapture.FaceTools(detect, face_mask, recognizer)

    monkeypatch.setattr(magicapture, "face_tools", stand_in)
    (comfy_env["base"] / "face_parsing").mkdir(exist_ok=True)
    if not (comfy_env["base"] / "face_parsing" / "79999_iter.pth").exists():
        BiSeNet = _pack_module("anybody.nets.bisenet").BiSeNet
        torch.save({k: (v.abs() + 1 if k.endswith("running_var") else v) for k, v in BiSeNet().state_dict().items()},
                   comfy_env["base"] / "face_parsing" / "79999_iter.pth")
    torch.manual_seed(0)
    net = IResNet((1, 1, 1, 1)).eval().requires_grad_(False)
    recognizer = recognizer_mod.FaceRecognizer("tiny r", lambda x: net(x.to(next(net.parameters()).device)), "torch", net)
    model, clip, vae = _load_tiny(comfy_env)
    before = _fixed_x0(model)
    g = torch.Generator().manual_seed(3)
    subjects, styles = torch.rand(2, 64, 64, 3, generator=g), torch.rand(3, 64, 64, 3, generator=g)
    node = comfy_env["nodes"].NODE_CLASS_MAPPINGS["AnybodyMagiCaptureLoRA"]()
    args = dict(model=model, clip=clip, vae=vae, subject_images=subjects, style_images=styles, face_model=None,
                recognizer=recognizer, parsing_model="79999_iter.pth", subject_name="mc_ana", style_name="mc_look",
                preset="fast", resolution=64, seed=42, save_every=0, preview_every=0, saved_progress="resume",
                overwrite=False, gradient_checkpointing=False, unet_strength=0.6, text_strength=0.9)
    monkeypatch.setattr(magicapture, "PRESETS", {**magicapture.PRESETS, "fast": {"ti_steps": 2, "lora_steps": 2}})
    with torch.inference_mode():
        out = node.train(**args)
    out_model, out_clip, lora_path = out["result"]
    assert lora_path.endswith("mc_ana_mc_look.safetensors") and "with style <mc_look>" in out["ui"]["text"][0]
    assert torch.equal(_fixed_x0(model), before)  # the input MODEL is unchanged
    assert not torch.equal(_fixed_x0(out_model), before)  # the returned one carries the LoRA
    encode = comfy_env["nodes"].CLIPTextEncode().encode
    with torch.inference_mode():
        ours = encode(out_clip, "A photo of a <mc_ana> person with style <mc_look>")[0][0][0]
        stock = encode(out_clip, "A photo of a embedding:mc_ana person with style embedding:mc_look")[0][0][0]
        plain = encode(clip, "A photo of a embedding:mc_ana person with style embedding:mc_look")[0][0][0]
    assert torch.allclose(ours, stock, atol=1e-5) and not torch.allclose(ours, plain, atol=1e-3)
    with torch.inference_mode():
        again = node.train(**args)
    assert "not retrained" in again["ui"]["text"][0]
    with torch.inference_mode():  # checkpointed blocks recompute the captured attention in the backward pass
        checkpointed = node.train(**{**args, "subject_name": "mc_ck", "style_name": "mc_cklook", "gradient_checkpointing": True})
    assert checkpointed["result"][2].endswith("mc_ck_mc_cklook.safetensors")

    # the shipped example's API twin, shrunk, in the executor: trains anew (other names), samples with the result
    import json

    from PIL import Image

    sys.path.insert(0, str(REPO / "tests"))
    from face_onnx import build_pack

    base = comfy_env["base"]
    build_pack(base / "insightface", "mcpack")
    (base / "face_recognition").mkdir(exist_ok=True)
    import folder_paths

    folder_paths.add_model_folder_path("face_recognition", str(base / "face_recognition"))
    torch.save(net.state_dict(), base / "face_recognition" / "ms1mv3_arcface_r100_fp16.pth")
    for name, image in (("selfie_1", subjects[0]), ("selfie_2", subjects[1]), ("style_1", styles[0]), ("style_2", styles[1])):
        Image.fromarray((image.numpy() * 255).astype(np.uint8)).save(base / "input" / f"{name}.png")
    graph = json.loads((REPO / "example_workflows" / "magicapture_subject_in_style.api.json").read_text())
    graph["1"]["inputs"]["ckpt_name"] = "tiny15.safetensors"
    for node_id, name in (("2", "selfie_1"), ("3", "selfie_2"), ("5", "style_1"), ("6", "style_2")):
        graph[node_id]["inputs"]["image"] = f"{name}.png"
    graph["8"]["inputs"].update(pack="mcpack", provider="CPU")
    graph["10"]["inputs"].update(preset="fast", resolution=64, subject_name="mc_ex", style_name="mc_exstyle",
                                 preview_every=1)
    graph["11"]["inputs"]["text"] = "A photo of a <mc_ex> person with style <mc_exstyle>"
    graph["13"]["inputs"].update(width=64, height=64)
    graph["14"]["inputs"].update(steps=1)
    ex, errors = comfy_env["run"](graph)
    assert ex.success, errors
    assert ex.history_result["outputs"]["16"]["images"]
    assert (Path(folder_paths.get_folder_paths("loras")[0]) / "mc_ex_mc_exstyle.safetensors").is_file()


def test_face_restore_runs_codeformer_on_the_faces_and_upscales_the_rest(comfy_env):
    """The node with a real CodeFormer network (spandrel-extra-arches, random weights in the official file layout:
    ``params_ema``), on a photo where the test detector finds one face."""
    pytest.importorskip("insightface")
    arches = pytest.importorskip("spandrel_extra_arches.architectures.CodeFormer")
    import cv2
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(REPO / "tests"))
    from face_onnx import build_pack, paint_face

    base = comfy_env["base"]
    build_pack(base / "insightface", "restorepack")
    photo = np.full((256, 320, 3), 90, np.uint8)
    photo[::7] = 160  # texture, so a bilinear upscale and a restored face are told apart
    paint_face(photo, 160, 128, blue=64)
    Image.fromarray(photo).save(base / "input" / "restore_me.png")
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "restore_me.png"}},
             "2": {"class_type": "AnybodyFaceModelLoader", "inputs": {"pack": "restorepack", "provider": "CPU",
                                                                     "det_size": 640}},
             "3": {"class_type": "AnybodyFaceRestore", "inputs": {"face_model": ["2", 0], "images": ["1", 0],
                                                                 "codeformer": "codeformer.pth", "fidelity": 0.5,
                                                                 "upscale": 2, "faces": "all"}},
             "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "restored"}}}
    ex, errors = comfy_env["run"](graph)
    assert not ex.success, "no weights yet"
    message = errors[0]["exception_message"]
    assert "codeformer.pth" in message and str(base / "facerestore_models") in message and "sczhou" in message

    torch.manual_seed(0)
    net = arches.CodeFormer(dim_embd=64, n_layers=1, codebook_size=64)
    (base / "facerestore_models").mkdir(exist_ok=True)
    torch.save({"params_ema": net.state_dict()}, base / "facerestore_models" / "codeformer.pth")
    outputs = {}
    for fidelity in (0.5, 1.0):
        graph["3"]["inputs"]["fidelity"] = fidelity
        ex, errors = comfy_env["run"](graph)
        assert ex.success, errors
        (saved,) = ex.history_result["outputs"]["4"]["images"]
        outputs[fidelity] = np.asarray(Image.open(base / "output" / saved["filename"])).astype(np.int16)
    out = outputs[0.5]
    assert out.shape == (512, 640, 3)
    upscaled = cv2.resize(photo, (640, 512), interpolation=cv2.INTER_LINEAR).astype(np.int16)
    assert np.array_equal(out[:40, :40], upscaled[:40, :40]), "away from the face: the bilinear upscale"
    face = (slice(256 + 4, 256 + 28), slice(320 + 4, 320 + 28))  # the painted face, upscaled
    assert np.abs(out[face] - upscaled[face]).mean() > 5, "the face went through the restorer"
    assert np.abs(outputs[1.0][face] - out[face]).mean() > 0, "fidelity reaches the network"

    # blending limited to the parsed face, as the official paste-back (random parsing weights: any mask will do)
    (base / "face_parsing").mkdir(exist_ok=True)
    parser = _pack_module("anybody.nets.bisenet").BiSeNet()
    torch.save({k: (v.abs() + 1 if k.endswith("running_var") else v) for k, v in parser.state_dict().items()},
               base / "face_parsing" / "parser_for_restore.pth")
    graph["3"]["inputs"]["parsing_model"] = "parser_for_restore.pth"
    ex, errors = comfy_env["run"](graph)
    assert ex.success, errors
    (saved,) = ex.history_result["outputs"]["4"]["images"]
    parsed = np.asarray(Image.open(base / "output" / saved["filename"])).astype(np.int16)
    assert np.array_equal(parsed[:40, :40], upscaled[:40, :40])
    assert np.all(np.abs(parsed - upscaled) <= np.abs(outputs[1.0] - upscaled) + 2), "never more than the square"


def _random_mediapipe_file(path: Path) -> None:
    """ComfyUI's MediaPipe face model file layout (detector_short/full, mesh, blendshapes, canonical geometry,
    topology) with random weights: real code paths, meaningless detections."""
    import numpy as np
    from safetensors.torch import save_file

    from comfy_extras.mediapipe.face_landmarker import FaceLandmarker

    torch.manual_seed(0)
    state = {}
    for variant in ("short", "full"):
        model = FaceLandmarker(detector_variant=variant)
        state.update({f"detector_{variant}.{k}": v.float().clone() for k, v in model.detector.state_dict().items()})
        if variant == "short":
            state.update({f"mesh.{k}": v.float().clone() for k, v in model.mesh.state_dict().items()})
            state.update({f"blendshapes.{k}": v.float().clone() for k, v in model.blendshapes.state_dict().items()})
    rng = np.random.default_rng(0)
    for part in ("face_oval", "left_eye", "right_eye", "left_eyebrow", "right_eyebrow", "lips", "irises", "nose",
                 "tesselation"):
        state[f"topology.{part}"] = torch.from_numpy(rng.integers(0, 478, (8, 2)).astype(np.int32))
    state["canonical_vertices"] = torch.from_numpy(rng.normal(size=(478, 3)).astype(np.float32))
    state["procrustes_indices"] = torch.arange(0, 468, 10, dtype=torch.int32)
    state["procrustes_weights"] = torch.ones(47)
    path.parent.mkdir(exist_ok=True)
    save_file(state, str(path))


def test_mediapipe_face_model_and_landmarks_feed_the_face_nodes(comfy_env):
    """On ComfyUI releases with the MediaPipe face nodes: our node is registered, ComfyUI's own model serves as the
    detector (also with gradients on, as inside a training run) and its FACE_LANDMARKS feed FaceAlign."""
    pytest.importorskip("comfy_extras.nodes_mediapipe")
    import numpy as np

    nodes = comfy_env["nodes"].NODE_CLASS_MAPPINGS
    assert "AnybodyFaceModelFromMediaPipe" in nodes
    _random_mediapipe_file(comfy_env["base"] / "detection" / "mp_random.safetensors")
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "face.jpg"}},
             "2": {"class_type": "LoadMediaPipeFaceLandmarker", "inputs": {"model_name": "mp_random.safetensors"}},
             "3": {"class_type": "MediaPipeFaceLandmarker", "inputs": {
                 "face_detection_model": ["2", 0], "image": ["1", 0], "detector_variant": "short", "num_faces": 1,
                 "min_confidence": 0.05, "missing_frame_fallback": "empty"}},
             "4": {"class_type": "AnybodyFaceModelFromMediaPipe", "inputs": {
                 "face_detection_model": ["2", 0], "detector_variant": "short", "min_confidence": 0.05}},
             "5": {"class_type": "AnybodyFaceAlign", "inputs": {
                 "face_model": ["4", 0], "images": ["1", 0], "template": "ffhq256", "face": "largest", "index": 0,
                 "if_no_face": "pass_through", "face_landmarks": ["3", 0]}},
             "6": {"class_type": "AnybodyFaceAlign", "inputs": {
                 "face_model": ["4", 0], "images": ["1", 0], "template": "ffhq256", "face": "largest", "index": 0,
                 "if_no_face": "pass_through"}},
             "7": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "mp_landmarks"}},
             "8": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "mp_detector"}}}
    ex, errors = comfy_env["run"](graph)
    assert ex.success, errors
    for node_id in ("5", "6"):
        assert ex.history_result["outputs"][node_id]["text"] == ["1/1 face(s) aligned to ffhq256 (256x256)"]

    face_model = nodes["AnybodyFaceModelFromMediaPipe"]().build(
        _comfy_mediapipe_model(comfy_env["base"] / "detection" / "mp_random.safetensors"), "short", 0.05)[0]
    photo = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(comfy_env["base"] / "input" / "face.jpg"))
    with torch.inference_mode(False), torch.enable_grad():  # as inside a training run (likeness renders, x0 faces)
        faces = _pack_module("anybody.face.detect").detect_faces(face_model, np.ascontiguousarray(photo[..., :3]))
    assert faces and faces[0].landmarks.shape == (5, 2)


def _comfy_mediapipe_model(path: Path):
    import comfy.utils
    from comfy_extras.nodes_mediapipe import FaceLandmarkerModel

    return FaceLandmarkerModel(comfy.utils.load_torch_file(str(path), safe_load=True))


def test_rig_nodes_personalize_then_render_edits(comfy_env):
    """DiffusionRig end to end in the executor, on the shipped example graph: the user's FLAME/DECA files (official
    layouts, random values, a sphere for a head), a stage-1 model file, RigPersonalize on an album of two photos
    (then re-queued: loaded, not retrained), RigRender with a target photo and sliders, pasted back into the photo."""
    pytest.importorskip("insightface")
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(REPO / "tests"))
    from face_onnx import build_pack, paint_face
    from rig_files import write_rig_files

    base = comfy_env["base"]
    write_rig_files(base, lambda name: _pack_module(f"anybody.{name}"))
    build_pack(base / "insightface", "rigpack")
    for i, (x, y) in enumerate(((160, 160), (144, 176), (176, 144))):
        photo = np.full((320, 320, 3), 60 + 40 * i, np.uint8)
        paint_face(photo, x, y, blue=255)
        Image.fromarray(photo).save(base / "input" / f"rig_{i}.png")

    import json

    graph = json.loads((REPO / "example_workflows" / "rig_render_edits.api.json").read_text())  # the shipped example
    graph["1"]["inputs"].update(pack="rigpack", provider="CPU")
    graph["3"]["inputs"]["model_file"] = "stage1.pt"
    graph["4"]["inputs"]["image"], graph["13"]["inputs"]["image"] = "rig_0.png", "rig_1.png"
    graph["5"]["inputs"].update(name="rig_host", steps=3, batch=2, learning_rate=1e-4, save_every=0, preview_every=1)
    graph["6"]["inputs"]["image"], graph["7"]["inputs"]["image"] = "rig_0.png", "rig_2.png"
    graph["8"]["inputs"].update(edit_expression=False, yaw=20.0, seed=3, paste_back=True)
    graph["11"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 2], "filename_prefix": "rig_normals"}}
    ex, errors = comfy_env["run"](graph)
    assert ex.success, errors
    model_path = base / "diffusionrig" / "rig_host.safetensors"
    from safetensors import safe_open

    with safe_open(str(model_path), framework="pt") as f:
        meta = f.metadata()
    assert meta["anybody.stage"] == "2" and len(json_list(meta["anybody.mean_shape"])) == 100
    outputs = ex.history_result["outputs"]
    assert outputs["8"]["text"][0].splitlines() == ["photo 1: reconstruction", "photo 1: light of target 1",
                                                     "photo 1: pose of target 1", "photo 1: sliders"]
    edits = [np.asarray(Image.open(base / "output" / e["filename"])) for e in outputs["9"]["images"]]
    assert len(edits) == 4 and edits[0].shape == (320, 320, 3), "pasted back at the photo's size"
    normals = np.asarray(Image.open(base / "output" / outputs["11"]["images"][0]["filename"]))
    assert normals.shape == (256, 256, 3) and normals[..., 2].max() > 245, "the sphere faces the camera (n_z ~ 1)"
    assert (normals[:8, :8] == 0).all(), "no head there: black"
    assert outputs["5"]["images"], "the finished stage-2 curve is the trainer's UI image"

    stamp = model_path.stat().st_mtime_ns
    ex, errors = comfy_env["run"](graph)  # re-queued with the same album and settings: loaded, not retrained
    assert ex.success, errors
    assert model_path.stat().st_mtime_ns == stamp and "already trained" in ex.history_result["outputs"]["5"]["text"][0]


def json_list(text):
    import json

    return json.loads(text)
