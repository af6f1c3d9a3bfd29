"""CrossInitTrain inside a real ComfyUI (set ANYBODY_COMFYUI_DIR to a ComfyUI checkout whose Python env is active).

Builds a random-weight SD1.5-detectable checkpoint (320-channel 2-level UNet, full CLIP-L, full SD VAE), loads it
with the stock CheckpointLoaderSimple, trains through the node in ComfyUI's executor, and checks the stock
`embedding:<name>` path.
"""
import asyncio
import os
import shutil
import sys
import uuid
from pathlib import Path

import pytest
import torch

COMFY = os.environ.get("ANYBODY_COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFY, reason="ANYBODY_COMFYUI_DIR is not set: no real ComfyUI to run the node in")
REPO = Path(__file__).resolve().parents[2]


def _build_checkpoint(path: Path) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    sys.path.insert(0, str(REPO / "tests"))
    from ldm_checkpoint import save_sd1_checkpoint

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, layers_per_block=1, block_out_channels=(320, 640),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=768,
                                attention_head_dim=8)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    te = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                      num_attention_heads=12, hidden_act="quick_gelu", max_position_embeddings=77))
    save_sd1_checkpoint(path, unet, vae, te)


@pytest.fixture(scope="module")
def comfy_env(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy")
    for sub in ("checkpoints", "embeddings", "custom_nodes", "input", "output", "temp", "user"):
        (base / sub).mkdir()
    _build_checkpoint(base / "checkpoints" / "tiny15.safetensors")
    (base / "custom_nodes" / "anybody").symlink_to(REPO, target_is_directory=True)
    shutil.copy(REPO / "anybody" / "assets" / "demo_face.jpg", base / "input" / "face.jpg")

    sys.path.insert(0, COMFY)
    argv, sys.argv = sys.argv, ["main.py", "--cpu"]
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.cli_args  # noqa: F401  (parses --cpu)

    sys.argv = argv
    import folder_paths
    import utils.extra_config  # noqa: F401  (as main.py does, before anything can shadow the 'utils' package)

    folder_paths.set_output_directory(str(base / "output"))
    folder_paths.set_input_directory(str(base / "input"))
    folder_paths.set_temp_directory(str(base / "temp"))
    folder_paths.folder_names_and_paths["checkpoints"] = ([str(base / "checkpoints")], {".safetensors"})
    folder_paths.folder_names_and_paths["embeddings"] = ([str(base / "embeddings")], {".safetensors", ".pt"})
    folder_paths.folder_names_and_paths["custom_nodes"] = ([str(base / "custom_nodes")], set())
    folder_paths.add_model_folder_path("insightface", str(base / "insightface"))  # as extra_model_paths.yaml does
    folder_paths.add_model_folder_path("face_parsing", str(base / "face_parsing"))
    import execution
    import nodes
    import server

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server.PromptServer(loop)
    loop.run_until_complete(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    assert "AnybodyCrossInitTrain" in nodes.NODE_CLASS_MAPPINGS, "the pack failed to import (see the log)"

    class Stub:
        client_id, last_node_id = None, None

        def send_sync(self, *a, **k):
            pass

        def queue_updated(self):
            pass

    import inspect

    takes = inspect.signature(execution.PromptExecutor.__init__).parameters  # cache_size before 0.3.6x
    cache = {"cache_args": {"lru": 0, "ram": 0, "ram_inactive": 0}} if "cache_args" in takes else {"cache_size": 0}

    def run(prompt):
        pid = str(uuid.uuid4())
        valid, err, outputs, node_errors = loop.run_until_complete(execution.validate_prompt(pid, prompt, None))
        assert valid, (err, node_errors)
        ex = execution.PromptExecutor(Stub(), cache_type=execution.CacheType.CLASSIC, **cache)
        loop.run_until_complete(ex.execute_async(prompt, pid, {}, outputs))
        errors = [d for ev, d in ex.status_messages if ev in ("execution_error", "execution_interrupted")]
        return ex, errors

    return {"base": base, "run": run, "nodes": nodes}


def _graph(**train):
    widgets = dict(name="hosttest", preset="custom", steps=4, lr=0.005, batch=2, grad_accum=1, resolution=64, seed=0,
                   save_every=0, preview_every=1, resume=False, overwrite=False, prompt="a photo of {} person")
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


def test_cancel_saves_state_and_resume_finishes(comfy_env):
    import comfy.model_management as mm
    import comfy.utils

    def cancel_at_two(value, total, preview, node_id=None, **kw):
        if value >= 2:
            mm.interrupt_current_processing(True)

    comfy.utils.set_progress_bar_global_hook(cancel_at_two)
    try:
        ex, errors = comfy_env["run"](_graph(name="cancelme"))
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        mm.interrupt_current_processing(False)
    assert not ex.success
    state = comfy_env["base"] / "output" / "anybody_training" / "cancelme.state.json"
    assert state.is_file() and not (comfy_env["base"] / "embeddings" / "cancelme.safetensors").exists()
    ex, errors = comfy_env["run"](_graph(name="cancelme", resume=True))
    assert ex.success, errors
    assert (comfy_env["base"] / "embeddings" / "cancelme.safetensors").is_file()


def _pack_module(name):
    from importlib import import_module

    pack = import_module(next(m for m in sys.modules if m.endswith("anybody") and hasattr(sys.modules[m], "NODE_CLASS_MAPPINGS")))
    return import_module(f"{pack.__name__}.{name}")  # the pack's own copy of the module, imported if need be


def test_returned_clip_applies_the_identity_and_the_input_clip_is_untouched(comfy_env):
    """Node called on host objects as the executor would (inference mode), with gradient checkpointing on."""
    import comfy.sd
    import folder_paths

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
        str(comfy_env["base"] / "checkpoints" / "tiny15.safetensors"), output_vae=True, output_clip=True,
        embedding_directory=folder_paths.get_folder_paths("embeddings"))
    encode = comfy_env["nodes"].CLIPTextEncode().encode
    node = comfy_env["nodes"].NODE_CLASS_MAPPINGS["AnybodyCrossInitTrain"]()
    images = torch.rand(2, 64, 64, 3)
    with torch.inference_mode():
        before = encode(clip, "a photo of <direct> person")[0][0][0]
        out = node.train(model, clip, vae, images, "direct", "custom", 2, 0.005, 2, 1, 64, 0, 0, 0, False, False,
                         "a photo of {} person", gradient_checkpointing=True)["result"]
        identity, prompt, path, clip_out = out
        with_word = encode(clip_out, "a photo of <direct> person")[0][0][0]
        with_syntax = encode(clip_out, "a photo of embedding:direct person")[0][0][0]
        stock = encode(clip, "a photo of embedding:direct person")[0][0][0]
        after = encode(clip, "a photo of <direct> person")[0][0][0]
        weighted = encode(clip_out, "a photo of (<direct>:1.2) person")[0][0][0]
    assert torch.equal(before, after), "the input CLIP is not changed"
    torch.testing.assert_close(with_word, stock)
    torch.testing.assert_close(with_syntax, stock)
    assert not torch.allclose(with_word, before)
    assert not torch.allclose(weighted, with_word), "prompt weights still apply to the identity"
    # the UNet's blocks are back to their class forward after checkpointed training
    from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

    assert not any("forward" in vars(m) for m in model.model.diffusion_model.modules() if isinstance(m, ResBlock))


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
    node = comfy_env["nodes"].NODE_CLASS_MAPPINGS["AnybodyCrossInitTrain"]()
    encode = comfy_env["nodes"].CLIPTextEncode().encode
    with torch.inference_mode():
        out = node.train(model, clip, vae, torch.rand(1, 64, 64, 3), "xlface", "custom", 2, 0.005, 2, 1, 64, 0, 0, 0,
                         False, False, "a photo of {} person")["result"]
        identity, prompt, path, clip_out = out
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
    node = comfy_env["nodes"].NODE_CLASS_MAPPINGS["AnybodyCrossInitTrain"]()
    encode = comfy_env["nodes"].CLIPTextEncode().encode
    with torch.inference_mode():
        identity, prompt, path, clip_out = node.train(model, clip, vae, torch.rand(1, 64, 64, 3), "sd2face", "custom", 2,
                                                      0.005, 2, 1, 64, 0, 0, 0, False, False, "a photo of {} person")["result"]
        stock = encode(clip, "a photo of embedding:sd2face person")[0][0][0]
        with_word = encode(clip_out, "a photo of <sd2face> person")[0][0][0]
    stored = load_file(path)
    assert list(stored) == ["emb_params"] and tuple(stored["emb_params"].shape) == (2, 1024)
    torch.testing.assert_close(with_word, stock)

    host = _pack_module("anybody.host.comfy").ComfyHost(model, clip, vae)
    assert host.family == "sd2" and host.prediction == "v"
    # predict() gives v in DDPM space; turning it back into x0 must give exactly ComfyUI's own denoised x0
    g = torch.Generator().manual_seed(0)
    x_t, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([100, 800])
    with torch.no_grad():
        cond = host.encode_prompts(["a photo of a person"] * 2)
        v = host.predict(x_t, t, cond)
        a = host.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        sigma = ((1 - a) / a).sqrt()
        x0_comfy = base.apply_model(x_t / a.sqrt(), sigma.view(-1), c_crossattn=cond.context).float()
    torch.testing.assert_close(a.sqrt() * x_t - (1 - a).sqrt() * v, x0_comfy, atol=1e-4, rtol=1e-4)
