"""The extension on an SDXL checkpoint inside a real AUTOMATIC1111 webui (slow: about 15 GB of RAM and minutes on a
CPU). Runs when ANYBODY_A1111_DIR and ANYBODY_A1111_SDXL_CKPT (an SDXL base checkpoint, random weights are fine)
are set; skipped with the reason otherwise.
"""
import json
import os
import sys
from pathlib import Path

import pytest

A1111, CKPT = os.environ.get("ANYBODY_A1111_DIR"), os.environ.get("ANYBODY_A1111_SDXL_CKPT")
pytestmark = pytest.mark.skipif(not (A1111 and CKPT), reason="ANYBODY_A1111_DIR and ANYBODY_A1111_SDXL_CKPT are "
                                                              "not both set: no real webui with an SDXL checkpoint")

PROBE = '''
import torch
from modules import call_queue, script_callbacks, shared


def _register(demo, app):
    @app.post("/anybody-probe/sdxl-conditioning")
    def conditioning():
        from anybody.host.a1111 import A1111Host, refresh_embeddings
        from anybody.text.embedding_file import save_embedding

        with call_queue.queue_lock, torch.no_grad():
            host = A1111Host()
            g = torch.Generator().manual_seed(0)
            vecs = {"clip_l": torch.randn(2, 768, generator=g) * 0.3, "clip_g": torch.randn(2, 1280, generator=g) * 0.3}
            prompt = "a photo of {} person, (smiling:1.2)"
            ours = host.encode_prompts([prompt.format("<xlword>")], {"<xlword>": vecs})
            save_embedding(host.embeddings_dir() / "xlword.safetensors", vecs, "sdxl", overwrite=True)
            refresh_embeddings()
            theirs = shared.sd_model.get_learned_conditioning([prompt.format("xlword")])
            from modules.prompt_parser import SdConditioning

            small = shared.sd_model.get_learned_conditioning(SdConditioning([prompt.format("xlword")], width=64,
                                                                            height=96))
            return {"small_vector": (host.sdxl_vector(ours.pooled, 96, 64) - small["vector"].float()).abs().max().item(),
                    "sizes_matter": (small["vector"].float() - theirs["vector"].float()).abs().max().item(),"family": host.family, "encoders": sorted(host.encoders),
                    "context": (ours.context - theirs["crossattn"].float()).abs().max().item(),
                    "vector": (ours.pooled - theirs["vector"].float()).abs().max().item(),
                    "widths": [host.encoders[k].width for k in ("clip_l", "clip_g")]}


script_callbacks.on_app_started(_register)
'''


@pytest.fixture(scope="module")
def webui(tmp_path_factory):
    sys.path.insert(0, str(Path(__file__).parent))
    from a1111_harness import Webui

    server = Webui(Path(A1111), tmp_path_factory.mktemp("webui-sdxl"), Path(CKPT),
                   extra_extensions={"anybody_probe_xl": PROBE})
    try:
        server.wait(timeout=1200)
        yield server
    finally:
        server.stop()


def test_sdxl_conditioning_and_adm_vector_equal_the_webuis(webui):
    assert webui.get("/anybody/v1/info")["model"]["family"] == "sdxl"
    out = webui.post("/anybody-probe/sdxl-conditioning", {})
    assert out["encoders"] == ["clip_g", "clip_l"] and out["widths"] == [768, 1280]
    assert out["context"] < 1e-4 and out["vector"] < 1e-4, out
    assert out["small_vector"] < 1e-4 < out["sizes_matter"], out  # the vector for the trained size, as the webui's


def test_sdxl_training_writes_two_encoder_embedding_the_webui_loads(webui):
    import numpy as np
    from a1111_harness import png_b64
    from safetensors import safe_open

    rng = np.random.default_rng(0)
    photos = [png_b64(rng.integers(0, 255, (96, 96, 3)).astype(np.uint8)) for _ in range(2)]
    result = webui.post("/anybody/v1/train/cross-init", {"images": photos, "name": "xlface", "preset": "custom",
                                                         "steps": 2, "resolution": 64, "batch": 1, "save_every": 0,
                                                         "gradient_checkpointing": True})  # sgm blocks wrapped
    assert result["family"] == "sdxl" and result["vectors"] == 2
    with safe_open(result["path"], "pt") as f:
        assert {k: tuple(f.get_tensor(k).shape) for k in f.keys()} == {"clip_l": (2, 768), "clip_g": (2, 1280)}
    assert "xlface" in webui.get("/sdapi/v1/embeddings")["loaded"]
    body = {"prompt": "photo of ohwx", "steps": 1, "width": 64, "height": 64, "sampler_name": "Euler", "seed": 3}
    bound = webui.post("/sdapi/v1/txt2img", {**body, "alwayson_scripts": {
        "anybody identity": {"args": [True, "xlface.safetensors", "ohwx"]}}})
    assert "Anybody: ohwx=xlface.safetensors@" in bound["info"]


def test_sdxl_celeb_basis_trains_a_head_per_encoder_and_binds_without_a_table_warning(webui):
    pytest.importorskip("onnx")
    import numpy as np
    from a1111_harness import png_b64
    from safetensors import safe_open

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from face_onnx import build_pack, paint_face

    build_pack(webui.data / "models" / "insightface", "xlpack")
    photo = np.full((480, 640, 3), 110, np.uint8)
    paint_face(photo, 320, 240, blue=90)
    result = webui.post("/anybody/v1/train/celeb-basis", {
        "images": [png_b64(photo)], "names": "xlceleb", "face_model": "xlpack", "steps": 2, "resolution": 64,
        "views": 2, "save_every": 0, "likeness_every": 2})
    assert result["family"] == "sdxl" and any("experimental" in w for w in result["warnings"]), result
    with safe_open(result["people"][0]["path"], "pt") as f:
        assert {k: tuple(f.get_tensor(k).shape) for k in f.keys()} == {"clip_l": (2, 768), "clip_g": (2, 1280)}
        assert {"anybody.token_table.clip_l", "anybody.token_table.clip_g"} <= set(f.metadata())
        # the likeness curve rendered the two-encoder vectors through the webui's own SDXL txt2img
        assert [point[0] for point in json.loads(f.metadata()["anybody.likeness.curve"])] == [2]
    body = {"prompt": "photo of ohwx", "steps": 1, "width": 64, "height": 64, "sampler_name": "Euler", "seed": 3}
    bound = webui.post("/sdapi/v1/txt2img", {**body, "alwayson_scripts": {
        "anybody identity": {"args": [True, "xlceleb.safetensors", "ohwx"]}}})
    assert "Anybody: ohwx=xlceleb.safetensors@" in bound["info"] and "token table differs" not in bound["info"]
