"""The extension inside a real AUTOMATIC1111 webui (set ANYBODY_A1111_DIR to a v1.10.x webui with its venv).

One webui server for the module (``a1111_harness``), a random-weight full-size SD1.5 checkpoint, CPU flags. A
small probe extension written by the test compares the adapter's conditioning with the webui's own in-process.
"""
import base64
import io
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

A1111 = os.environ.get("ANYBODY_A1111_DIR")
pytestmark = pytest.mark.skipif(not A1111, reason="ANYBODY_A1111_DIR is not set: no real webui to run the extension in")

PROBE = '''
import torch
from modules import call_queue, script_callbacks, shared


def _register(demo, app):
    @app.post("/anybody-probe/conditioning")
    def conditioning():
        from anybody.host.a1111 import A1111Host, refresh_embeddings
        from anybody.text.embedding_file import save_embedding

        with call_queue.queue_lock:
            host = A1111Host()
            vec = torch.randn(2, 768, generator=torch.Generator().manual_seed(0)) * 0.3
            prompt = "a photo of {} person, (smiling:1.3), BREAK in a garden"
            ours = host.encode_prompts([prompt.format("<probeword>")], {"<probeword>": {"clip_l": vec}}).context
            save_embedding(host.embeddings_dir() / "probeword.safetensors", {"clip_l": vec}, "sd1", overwrite=True)
            refresh_embeddings()
            with torch.no_grad():
                theirs = shared.sd_model.get_learned_conditioning([prompt.format("probeword")])
                plain = shared.sd_model.get_learned_conditioning(["a photo of probeword person"])
                encoder = host.encoders["clip_l"]
                rows_out, _ = encoder.encode_rows([encoder.rows("a photo of <probeword> person", {"<probeword>": vec})])
            trained = vec.clone().requires_grad_(True)
            with torch.enable_grad():
                host.encode_prompts(["a photo of <probeword> person"], {"<probeword>": {"clip_l": trained}}).context.square().sum().backward()
            return {"nan": [bool(t.isnan().any()) for t in (ours, theirs, rows_out, plain)], "shape": list(ours.shape), "prompt_diff": (ours - theirs.float()).abs().max().nan_to_num(-1).item(),
                    "rows_diff": (rows_out - plain[:, :77].float()).abs().max().nan_to_num(-1).item(),
                    "scale": theirs.abs().max().nan_to_num(-1).item(), "grad_norm": trained.grad.norm().nan_to_num(-1).item(),
                    "still_registered": "<probeword>" in __import__("modules.sd_hijack").sd_hijack.model_hijack.embedding_db.word_embeddings}


    @app.post("/anybody-probe/tab-train")
    def tab_train(body: dict):
        """The tab's Train button handler, wrapped as the tab wraps it, with uploads as gradio hands them over."""
        import types

        from modules.call_queue import wrap_gradio_gpu_call

        from anybody.a1111 import fields, tab

        files = [types.SimpleNamespace(name=path) for path in body["files"]]
        values = {**{k: v for k, v in fields.CROSS_INIT_FIELDS.items() if k != "images"}, "face_model": "none",
                  **body["values"]}
        handler = wrap_gradio_gpu_call(tab.train_from_tab, extra_outputs=[""])
        return list(handler("task(probe)", files, *values.values()))


    @app.post("/anybody-probe/tab-faces")
    def tab_faces(body: dict):
        """The tab's Align and Score handlers, wrapped as the tab wraps them."""
        import types

        from modules.call_queue import wrap_gradio_gpu_call

        from anybody.a1111 import tab

        files = [types.SimpleNamespace(name=path) for path in body["files"]]
        crops, align_html = wrap_gradio_gpu_call(tab.align_from_tab, extra_outputs=[[]])(
            files, body["pack"], "ffhq256", "largest", 0, "error", body.get("border", "black"))
        plot, score_html = wrap_gradio_gpu_call(tab.score_from_tab, extra_outputs=[None])(files, files, body["pack"])
        return {"crops": [list(c.shape) for c in crops], "align": align_html, "plot": list(plot.shape) if plot is not None
                else None, "score": score_html}


    @app.post("/anybody-probe/tab-celeb-basis")
    def tab_celeb_basis(body: dict):
        """The tab's Celeb Basis Train handler, wrapped as the tab wraps it."""
        import types

        from modules.call_queue import wrap_gradio_gpu_call

        from anybody.a1111 import fields, tab

        files = [types.SimpleNamespace(name=path) for path in body["files"]]
        values = {**fields.CELEB_BASIS_FIELDS, **body["values"]}
        handler = wrap_gradio_gpu_call(tab.celeb_basis_from_tab, extra_outputs=[""])
        return list(handler("task(probe)", files, *[values[k] for k in tab.CB_CONTROLS]))


    @app.post("/anybody-probe/magicapture")
    def magicapture_probe(body: dict):
        """MagiCapture on the loaded model with stand-in face detection and parsing (the face stack is tested on its
        own) and a random torch recognizer; then the webui's own Lora loader reads the file."""
        import numpy as np

        import networks
        from anybody.face.detect import Face
        from anybody.face.recognizer import FaceRecognizer
        from anybody.host.a1111 import A1111Host, A1111Sink, refresh_embeddings
        from anybody.methods import magicapture as mc
        from anybody.nets.iresnet import IResNet
        from anybody.train import lora

        def detect(image):
            s = image.shape[0]
            return [Face(np.array([0.15, 0.1, 0.85, 0.9]) * s,
                         np.array([[0.35, 0.4], [0.65, 0.4], [0.5, 0.55], [0.38, 0.7], [0.62, 0.7]]) * s, 0.9)]

        def face_mask(image, face):
            mask = np.zeros(image.shape[:2], np.float32)
            mask[16:48, 16:48] = 1
            return mask

        torch.manual_seed(0)
        net = IResNet((1, 1, 1, 1)).eval().requires_grad_(False)
        tools = mc.FaceTools(detect, face_mask, FaceRecognizer("tiny", lambda x: net(x), "torch", net))
        g = torch.Generator().manual_seed(1)
        photos = [torch.rand(64, 64, 3, generator=g) for _ in range(4)]
        config = mc.MagiCaptureConfig(ti_steps=2, lora_steps=2, resolution=64, save_every=0, preview_every=1,
                                      gradient_checkpointing=body.get("checkpointing", False))
        with call_queue.queue_lock:
            shared.state.begin(job="probe-magicapture")
            try:
                host = A1111Host(A1111Sink("MagiCapture"))
                result = mc.train_magicapture(host, photos[:2], photos[2:], tools, body["subject"], body["style"], config)
            finally:
                shared.state.end()
            refresh_embeddings()
        networks.list_available_networks()
        name = result.lora_path.stem
        loaded = networks.load_network(name, networks.available_networks[name])
        return {"lora": str(result.lora_path), "adapters": len(lora.read_kohya(result.lora_path)),
                "matched": len(loaded.modules), "subject": str(result.subject_path)}


    @app.post("/anybody-probe/stand-in-faces")
    def stand_in_faces():
        """From now on MagiCapture's face tools (detection, parsing) are stand-ins in this webui process and its "fast"
        preset is one step per phase; the recognizer stays the one the request names."""
        import numpy as np

        from anybody.face.detect import Face
        from anybody.methods import magicapture as mc

        def tools(models, parsing_net, recognizer, device, parsing_name=""):
            def detect(image):
                s = image.shape[0]
                return [Face(np.array([0.15, 0.1, 0.85, 0.9]) * s,
                             np.array([[0.35, 0.4], [0.65, 0.4], [0.5, 0.55], [0.38, 0.7], [0.62, 0.7]]) * s, 0.9)]

            def face_mask(image, face):
                mask = np.zeros(image.shape[:2], np.float32)
                mask[16:48, 16:48] = 1
                return mask

            return mc.FaceTools(detect, face_mask, recognizer, "stand-in")

        mc.face_tools = tools
        mc.PRESETS["fast"] = {"ti_steps": 1, "lora_steps": 1}  # this CPU webui trains the full-size UNet
        return {"ok": True}

    @app.post("/anybody-probe/tab-magicapture")
    def tab_magicapture(body: dict):
        import types

        from modules.call_queue import wrap_gradio_gpu_call

        from anybody.a1111 import fields, tab

        values = {**fields.MAGICAPTURE_FIELDS, **body["values"]}
        handler = wrap_gradio_gpu_call(tab.magicapture_from_tab, extra_outputs=[""])
        return list(handler("task(probe)", [types.SimpleNamespace(name=p) for p in body["subjects"]],
                            [types.SimpleNamespace(name=p) for p in body["styles"]], *[values[k] for k in tab.MC_CONTROLS]))


    @app.post("/anybody-probe/pick-checkpoint")
    def pick_checkpoint(body: dict):
        """The checkpoint setting changed as a pick in the page changes it while a job holds the queue (its load waits
        for the job); returns the loaded file and the setting it replaced."""
        before = shared.opts.data.get("sd_model_checkpoint")
        if body.get("title"):
            shared.opts.data["sd_model_checkpoint"] = body["title"]
        return {"loaded": shared.sd_model.sd_checkpoint_info.filename, "setting": before}

    @app.post("/anybody-probe/interrupt-button")
    def interrupt_button():
        """What the page's Interrupt button does (ui_toprow): on a job of several steps, with the default
        'interrupt after current' setting, its first click only asks to stop after the current one."""
        if not shared.state.stopping_generation and shared.state.job_count > 1 and shared.opts.interrupt_after_current:
            shared.state.stop_generating()
            return {"did": "stop_generating"}
        shared.state.interrupt()
        return {"did": "interrupt"}

    @app.get("/anybody-probe/denoised")
    def denoised():
        """What the webui's own samplers denoised since the last call (steps and their batch sizes)."""
        seen = list(DENOISED)
        DENOISED.clear()
        return {"steps": seen}


DENOISED = []
script_callbacks.on_cfg_denoiser(lambda params: DENOISED.append([params.total_sampling_steps, len(params.x)]))
script_callbacks.on_app_started(_register)
'''


def _photo(seed: int, size: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (6, 6, 3)).astype(np.uint8)
    from PIL import Image

    return np.asarray(Image.fromarray(base).resize((size, size), Image.BICUBIC))


@pytest.fixture(scope="module")
def webui(tmp_path_factory):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from a1111_harness import Webui, checkpoint

    cache = Path(os.environ.get("ANYBODY_TEST_CACHE", tmp_path_factory.mktemp("ckpt")))
    server = Webui(Path(A1111), tmp_path_factory.mktemp("webui-data"), checkpoint(cache),
                   extra_extensions={"anybody_probe": PROBE})
    try:
        server.wait()
        yield server
    finally:
        server.stop()


def photos():
    from a1111_harness import png_b64

    return [png_b64(_photo(1)), png_b64(_photo(2))]


TRAIN = {"preset": "custom", "steps": 2, "resolution": 64, "batch": 1, "save_every": 0, "preview_every": 1}


def txt2img(webui, prompt, scripts=None, steps=2):
    body = {"prompt": prompt, "steps": steps, "width": 64, "height": 64, "sampler_name": "Euler", "seed": 7,
            "cfg_scale": 5}
    if scripts is not None:
        body["alwayson_scripts"] = scripts
    out = webui.post("/sdapi/v1/txt2img", body)
    return _pixels(out["images"][0]), json.loads(out["info"])


class _pixels(bytes):
    """The decoded pixels of a base64 PNG (its text chunks hold the infotext, which differs by design)."""

    def __new__(cls, b64):
        from PIL import Image

        with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
            return super().__new__(cls, np.asarray(im.convert("RGB")).tobytes())


def _vectors(path):
    from safetensors.torch import load_file

    return load_file(str(path))["emb_params"]


def test_info_names_family_and_capabilities(webui):
    info = webui.get("/anybody/v1/info")
    assert info["host"] == "a1111" and info["model"]["family"] == "sd1" and info["model"]["problem"] is None
    assert info["capabilities"]["cross_init"] and info["capabilities"]["inject"]
    assert info["embeddings_dir"].startswith(str(webui.data))


def test_adapter_conditioning_equals_the_webuis(webui):
    out = webui.post("/anybody-probe/conditioning", {})
    assert not any(out["nan"]), out
    assert out["shape"] == [1, 154, 768]  # BREAK: two chunks, as the webui makes them
    assert out["prompt_diff"] < 1e-5 * max(1.0, out["scale"]), out
    assert out["rows_diff"] < 1e-4, out  # one chunk through process_tokens == the webui's plain prompt
    assert out["grad_norm"] > 0 and not out["still_registered"]


def test_training_route_writes_an_embedding_the_webui_uses(webui):
    webui.post("/sdapi/v1/options", {"persistent_cond_cache": True})  # the webui's default: conds cached by text
    try:
        _train_and_generate(webui)
    finally:
        webui.post("/sdapi/v1/options", {"persistent_cond_cache": False})


def _train_and_generate(webui):
    unrelated = txt2img(webui, "a red house by the sea")[0]
    before, _ = txt2img(webui, "photo of annie person")
    result = webui.post("/anybody/v1/train/cross-init", {"images": photos(), "name": "annie", **TRAIN})
    assert Path(result["path"]) == webui.data / "embeddings" / "annie.safetensors" and not result["reused"]
    assert result["vectors"] == 2 and result["family"] == "sd1"
    assert "annie" in webui.get("/sdapi/v1/embeddings")["loaded"]
    after, _ = txt2img(webui, "photo of annie person")
    assert after != before  # the new embedding is used at once, though the same prompt's conds were cached
    assert txt2img(webui, "a red house by the sea")[0] == unrelated  # the webui is as it was (weights, attention)
    again = webui.post("/anybody/v1/train/cross-init", {"images": photos(), "name": "annie", **TRAIN})
    assert again["reused"]  # same photos, settings and checkpoint: loaded, not retrained


def test_script_changes_the_image_only_when_an_identity_is_bound(webui):
    if not (webui.data / "embeddings" / "annie.safetensors").exists():
        webui.post("/anybody/v1/train/cross-init", {"images": photos(), "name": "annie", **TRAIN})
    plain, _ = txt2img(webui, "photo of ohwx person")
    off, _ = txt2img(webui, "photo of ohwx person", {"anybody identity": {"args": [False, "annie.safetensors", "ohwx"]}})
    on, info = txt2img(webui, "photo of ohwx person", {"anybody identity": {"args": [True, "annie.safetensors", "ohwx"]}})
    assert off == plain and on != plain
    assert "Anybody: ohwx=annie.safetensors@" in info["infotexts"][0]
    again, _ = txt2img(webui, "photo of ohwx person")
    assert again == plain  # unbound after the generation
    assert "ohwx" not in webui.get("/sdapi/v1/embeddings")["loaded"]


def test_interrupt_then_resume_equals_an_uninterrupted_run(webui):
    settings = {**TRAIN, "steps": 4, "seed": 3}
    unrelated = txt2img(webui, "a red house by the sea")[0]
    whole = webui.post("/anybody/v1/train/cross-init", {"images": photos(), "name": "whole", **settings})

    seen = {}

    def interrupt_after_first_step():
        for _ in range(600):
            progress = webui.get("/sdapi/v1/progress?skip_current_image=false")
            state = progress["state"]
            if state.get("job_no", 0) >= 1 and state.get("job_count", 0) == 4:
                seen.update(preview=progress["current_image"], text=progress["textinfo"], progress=progress["progress"])
                seen["button"] = webui.post("/anybody-probe/interrupt-button", {})["did"]  # the page's first click
                return
            time.sleep(0.2)

    stopper = threading.Thread(target=interrupt_after_first_step)
    stopper.start()
    status, body = webui.request("POST", "/anybody/v1/train/cross-init", {"images": photos(), "name": "split", **settings})
    stopper.join()
    assert status == 409 and body["error"] == "interrupted", body
    assert seen["button"] == "stop_generating", "training stops at the step boundary the page's first click asks for"
    assert seen["preview"] and seen["text"].startswith("Cross-Init: step") and 0 < seen["progress"] < 1, seen
    assert not (webui.data / "embeddings" / "split.safetensors").exists()
    assert txt2img(webui, "a red house by the sea")[0] == unrelated  # interrupted training left the webui as it was
    resumed = webui.post("/anybody/v1/train/cross-init", {"images": photos(), "name": "split", **settings,
                                                          "saved_progress": "resume"})
    assert np.allclose(_vectors(resumed["path"]).numpy(), _vectors(whole["path"]).numpy(), atol=1e-6)


@pytest.mark.parametrize("body, words", [
    ({"images": []}, "non-empty list"),
    ({"images": [base64.b64encode(b"not an image at all").decode()]}, "images[0] is not an image"),
    ({"name": "../escape"}, "contains a path"),
    ({"stepz": 3}, "Unknown field"),
    ({"batch": "eight"}, "'batch' must be int"),
])
def test_bad_requests_are_clear_400s(webui, body, words):
    status, answer = webui.request("POST", "/anybody/v1/train/cross-init", {"images": photos(), **TRAIN, **body})
    assert status == 400 and words in answer["detail"], answer


def test_sdxl_identity_on_sd15_is_refused_in_the_job_comment(webui):
    import torch
    from safetensors.torch import save_file

    (webui.data / "embeddings").mkdir(exist_ok=True)
    save_file({"clip_l": torch.zeros(2, 768) + 0.1, "clip_g": torch.zeros(2, 1280) + 0.1},
              str(webui.data / "embeddings" / "xl_face.safetensors"))
    plain, _ = txt2img(webui, "photo of ohwx person")
    image, info = txt2img(webui, "photo of ohwx person",
                          {"anybody identity": {"args": [True, "xl_face.safetensors", "ohwx"]}})
    assert image == plain
    assert "made for SDXL" in json.dumps(info), info


def test_training_while_a_generation_runs_is_refused(webui):
    done = {}
    runner = threading.Thread(target=lambda: done.setdefault("r", webui.request("POST", "/sdapi/v1/txt2img", {
        "prompt": "a long one", "steps": 40, "width": 64, "height": 64, "sampler_name": "Euler", "seed": 1})))
    runner.start()
    for _ in range(300):
        if webui.get("/sdapi/v1/progress?skip_current_image=true")["state"].get("job_count", 0) > 0:
            break
        time.sleep(0.1)
    status, answer = webui.request("POST", "/anybody/v1/train/cross-init", {"images": photos(), "name": "busy", **TRAIN})
    webui.post("/sdapi/v1/interrupt", {})
    runner.join()
    assert status == 409 and answer["error"] == "busy" and "busy" in answer["detail"], answer


def _painted_photo():
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from face_onnx import paint_face

    photo = np.full((480, 640, 3), 120, np.uint8)
    paint_face(photo, 320, 240, blue=128)
    return photo


def test_face_routes_use_the_webuis_insightface_folder(webui):
    pytest.importorskip("onnx")
    from a1111_harness import png_b64

    import sys

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from face_onnx import build_pack

    status, answer = webui.request("POST", "/anybody/v1/align", {"images": [png_b64(_painted_photo())]})
    folder = webui.data / "models" / "insightface" / "models" / "antelopev2"
    assert status == 400 and str(folder) in answer["detail"] and "scrfd_10g_bnkps.onnx" in answer["detail"], answer
    build_pack(webui.data / "models" / "insightface", "testpack")
    assert "testpack" in webui.get("/anybody/v1/info")["model_files"]["insightface_packs"]
    photo = png_b64(_painted_photo())
    aligned = webui.post("/anybody/v1/align", {"images": [photo], "face_model": "testpack", "template": "ffhq256"})
    assert aligned["found"] == 1 and len(aligned["crops"]) == 1 and aligned["faces"][0]["found"]
    from PIL import Image

    assert Image.open(io.BytesIO(base64.b64decode(aligned["crops"][0]))).size == (256, 256)
    score = webui.post("/anybody/v1/identity-score", {"images": [photo], "reference": [photo], "face_model": "testpack"})
    assert abs(score["mean"] - 1.0) < 1e-3 and score["plot"]
    from PIL import Image as PILImage

    PILImage.fromarray(_painted_photo()).save(webui.data / "painted.png")
    in_tab = webui.post("/anybody-probe/tab-faces", {"files": [str(webui.data / "painted.png")], "pack": "testpack",
                                                     "border": "reflect"})
    assert in_tab["crops"] == [[256, 256, 3]] and "1/1 face(s) aligned to ffhq256" in in_tab["align"], in_tab
    assert in_tab["plot"] and "identity cosine 1.000" in in_tab["score"], in_tab
    blank = png_b64(np.full((96, 96, 3), 90, np.uint8))
    trained = webui.post("/anybody/v1/train/cross-init", {"images": [photo, blank], "name": "faced", **TRAIN,
                                                          "face_model": "testpack"})
    assert trained["warnings"] and trained["warnings"][0].startswith("No face found in photo 2:"), trained
    # the likeness curve: rendered by the webui's own txt2img processing on the model being trained (its DDIM
    # sampler: 15 steps, both prompts in one batch, each evaluation), scored by the pack, kept in the file; training
    # goes on after the first evaluation
    webui.get("/anybody-probe/denoised")
    liked = webui.post("/anybody/v1/train/cross-init", {"images": [photo], "name": "liked", **TRAIN,
                                                        "face_model": "testpack", "likeness_every": 1})
    from safetensors import safe_open

    with safe_open(liked["path"], "pt") as f:
        curve = json.loads(f.metadata()["anybody.likeness.curve"])
    assert [point[0] for point in curve] == [1, 2] and "likeness" in liked, liked
    assert webui.get("/anybody-probe/denoised")["steps"] == [[15, 4]] * 30  # per step: 2 prompts + 2 unconds
    # another checkpoint picked in the page meanwhile: the renders must not load it into the model being trained
    current = webui.post("/anybody-probe/pick-checkpoint", {})
    other = webui.data / "models" / "Stable-diffusion" / "picked_meanwhile.safetensors"
    other.parent.mkdir(parents=True, exist_ok=True)
    other.symlink_to(current["loaded"])
    webui.post("/sdapi/v1/refresh-checkpoints", {})
    picked = next(m["title"] for m in webui.get("/sdapi/v1/sd-models") if m["model_name"] == "picked_meanwhile")
    webui.post("/anybody-probe/pick-checkpoint", {"title": picked})
    webui.post("/anybody/v1/train/cross-init", {"images": [photo], "name": "liked_pinned", **TRAIN,
                                                "face_model": "testpack", "likeness_every": 1})
    after = webui.post("/anybody-probe/pick-checkpoint", {"title": current["setting"]})
    assert after == {"loaded": current["loaded"], "setting": picked}, after


def test_tab_builds_in_the_page_with_its_controls(tmp_path_factory):
    """The webui with its UI (not --nowebui): the page's gradio config has the tab and its controls."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from a1111_harness import Webui, checkpoint

    cache = Path(os.environ.get("ANYBODY_TEST_CACHE", tmp_path_factory.mktemp("ckpt")))
    server = Webui(Path(A1111), tmp_path_factory.mktemp("webui-ui"), checkpoint(cache), ui=True)
    try:
        server.wait()
        config = server.get("/config")
        ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
        labels = {c.get("props", {}).get("label") for c in config["components"]}
        assert {"anybody_train", "anybody_name", "anybody_train_photos", "anybody_align", "anybody_score",
                "anybody_saved_progress", "anybody_train_gallery", "anybody_adaface", "anybody_adaface_photos",
                "anybody_adaface_strength", "anybody_cb_train", "anybody_cb_names", "anybody_cb_photos",
                "anybody_cb_gallery", "anybody_cb_recognizer", "anybody_mc_train", "anybody_mc_subjects",
                "anybody_mc_styles", "anybody_mc_gallery"} <= ids
        assert {"Anybody identity", "Identity (embedding file)", "Word in the prompt", "AdaFace strength",
                "...or a face photo (AdaFace, SD1.x, no training)"} <= labels  # the script, in txt2img and img2img
        assert not [line for line in server.tail(2000).splitlines() if "error" in line.lower() and "anybody" in line.lower()]
        page = urllib_get(server.url + "/")
        assert "javascript/anybody.js" in page or "anybody.js" in page
    finally:
        server.stop()


def urllib_get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=120) as resp:
        return resp.read().decode("utf-8", "replace")


def test_tab_train_button_trains_and_reports_in_the_tab(webui, tmp_path):
    from PIL import Image

    files = []
    for i in (1, 2):
        files.append(str(tmp_path / f"face{i}.png"))
        Image.fromarray(_photo(i)).save(files[-1])
    values = {"name": "tabbed", "preset": "custom", "steps": 2, "resolution": 64, "batch": 1, "save_every": 0}
    text, html = webui.post("/anybody-probe/tab-train", {"files": files, "values": values})
    html = __import__("html").unescape(html)
    assert "Trained 'tabbed': 2 vectors" in html and "Write tabbed in a txt2img prompt" in html, html
    assert "tabbed" in webui.get("/sdapi/v1/embeddings")["loaded"]
    (tmp_path / "notes.txt").write_text("not a photo")
    _, html = webui.post("/anybody-probe/tab-train", {"files": [str(tmp_path / "notes.txt")], "values": values})
    html = __import__("html").unescape(html)
    assert "class='error'" in html and "notes.txt is not a readable image" in html, html
    _, html = webui.post("/anybody-probe/tab-train", {"files": files, "values": {**values, "name": "../up"}})
    assert "class='error'" in __import__("html").unescape(html) and "contains a path" in __import__("html").unescape(html), html


def test_medvram_is_refused_with_the_remedy(tmp_path_factory):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from a1111_harness import Webui, checkpoint

    cache = Path(os.environ.get("ANYBODY_TEST_CACHE", tmp_path_factory.mktemp("ckpt")))
    server = Webui(Path(A1111), tmp_path_factory.mktemp("webui-medvram"), checkpoint(cache), flags=["--medvram"])
    try:
        server.wait()
        status, answer = server.request("POST", "/anybody/v1/train/cross-init", {"images": photos(), "name": "m", **TRAIN})
        assert status == 400 and "--medvram" in answer["detail"] and "Restart the webui without" in answer["detail"]
        assert not (server.data / "outputs" / "anybody_training").exists() or not any(
            (server.data / "outputs" / "anybody_training").iterdir())
    finally:
        server.stop()


def test_adaface_route_tab_and_face_binding(webui):
    pytest.importorskip("onnx")
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from a1111_harness import png_b64
    from adaface_checkpoints import write_adaface_files
    from face_onnx import build_pack

    write_adaface_files(webui.data / "models")
    build_pack(webui.data / "models" / "insightface", "adapack")
    photo = png_b64(_painted_photo())
    info = webui.get("/anybody/v1/info")
    assert info["capabilities"]["adaface"] and info["model_files"]["adaface"] == [
        "subjects-celebrity2024-05-16T17-22-46_zero3-ada-30000.pt"], info
    before, _ = txt2img(webui, "photo of adaroute person")
    result = webui.post("/anybody/v1/adaface", {"images": [photo], "name": "adaroute", "face_model": "adapack"})
    assert result["vectors"] == 16 and result["family"] == "sd1" and Path(result["path"]).is_file()
    assert "adaroute" in webui.get("/sdapi/v1/embeddings")["loaded"]
    assert txt2img(webui, "photo of adaroute person")[0] != before

    plain, _ = txt2img(webui, "photo of ohwx person")
    bound, info = txt2img(webui, "photo of ohwx person", {"anybody identity": {"args": [True, "", "ohwx", photo, 1.0]}})
    assert bound != plain and 'Anybody: "ohwx=face:' in info["infotexts"][0], info["infotexts"][0]  # quoted: it has a colon
    assert txt2img(webui, "photo of ohwx person")[0] == plain

    for body, words in (({"strength": "x"}, "'strength' must be float"), ({"adaface": "../x.pt"}, "not a path"),
                        ({"adaface": "missing.pt"}, "missing.pt"), ({"face_model": "nopack"}, "nopack")):
        status, answer = webui.request("POST", "/anybody/v1/adaface", {"images": [photo], "name": "bad", **body})
        assert status == 400 and words in answer["detail"], answer


def test_celeb_basis_route_trains_two_people_one_prompt_uses_both_and_foreign_tables_are_warned(webui):
    pytest.importorskip("onnx")
    import sys

    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from a1111_harness import png_b64
    from face_onnx import build_pack, paint_face

    from anybody.nets.iresnet import IResNet

    build_pack(webui.data / "models" / "insightface", "cbpack")
    folder = webui.data / "models" / "face_recognition"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save({k: (v.abs() + 1 if k.endswith("running_var") else v) for k, v in IResNet((1, 1, 1, 1)).state_dict().items()},
               folder / "glint360k_cosface_r100_fp16_0.1.pth")
    photos_of = []
    for blue in (40, 200):
        photo = np.full((480, 640, 3), 100 + blue // 4, np.uint8)
        paint_face(photo, 320, 240, blue=blue)
        photos_of.append(png_b64(photo))
    info = webui.get("/anybody/v1/info")
    assert info["capabilities"]["celeb_basis"] and info["model_files"]["face_recognition"] == [
        "glint360k_cosface_r100_fp16_0.1.pth"], info
    body = {"images": photos_of, "names": "cbanne, cbbert", "face_model": "cbpack", "steps": 2, "resolution": 64,
            "views": 2, "save_every": 0, "preview_every": 1}  # recognizer "auto": the file in models/face_recognition
    before, _ = txt2img(webui, "a photo of cbanne person and cbbert person")
    result = webui.post("/anybody/v1/train/celeb-basis", body)
    assert [p["name"] for p in result["people"]] == ["cbanne", "cbbert"] and not result["reused"], result
    assert result["family"] == "sd1" and result["steps"] == 4 and not result["warnings"], result  # the file, not the pack
    loaded = webui.get("/sdapi/v1/embeddings")["loaded"]
    assert loaded["cbanne"]["vectors"] == 2 and loaded["cbbert"]["vectors"] == 2
    assert txt2img(webui, "a photo of cbanne person and cbbert person")[0] != before
    assert webui.post("/anybody/v1/train/celeb-basis", body)["reused"]
    status, answer = webui.request("POST", "/anybody/v1/train/celeb-basis", {**body, "names": "a, b, c"})
    assert status == 400 and "3 names for 2 photos" in answer["detail"], answer

    # an identity trained on another token table: bound by the script, it still applies, with a clear warning
    path = Path(result["people"][0]["path"])
    with safe_open(str(path), framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    meta["anybody.token_table.clip_l"] = "0123456789abcdef"
    save_file(tensors, str(webui.data / "embeddings" / "foreign.safetensors"), metadata=meta)
    image, info = txt2img(webui, "photo of ohwx person", {"anybody identity": {"args": [True, "foreign.safetensors", "ohwx"]}})
    assert "token table differs" in json.dumps(info), info

    # the tab's button: one person from two uploaded photos
    from PIL import Image

    files = []
    for i, b64 in enumerate(photos_of):
        files.append(str(webui.data / f"cb_tab_{i}.png"))
        Image.open(io.BytesIO(base64.b64decode(b64))).save(files[-1])
    values = {"names": "cbtab", "face_model": "cbpack", "steps": 1, "resolution": 64, "views": 2, "save_every": 0,
              "recognizer": "pack"}
    _, html = webui.post("/anybody-probe/tab-celeb-basis", {"files": files, "values": values})
    html = __import__("html").unescape(html)
    assert "Trained cbtab (sd1)" in html and "face pack's recognizer" in html and "a photo of cbtab person" in html, html
    assert "cbtab" in webui.get("/sdapi/v1/embeddings")["loaded"]


def test_magicapture_trains_on_the_webuis_model_and_its_own_lora_loader_reads_every_key(webui):
    """LoRA as forward hooks on the loaded model, the five attention layers captured over the webui's attention,
    the VAE decoded with gradients through a copy; the kohya file matches every module in the webui's Lora."""
    out = webui.post("/anybody-probe/magicapture", {"subject": "mcw_ana", "style": "mcw_look"})
    assert out["lora"].endswith("mcw_ana_mcw_look.safetensors") and out["adapters"] == out["matched"] > 100, out
    assert Path(out["lora"]).parent.name == "Lora"  # the webui's own LoRA folder
    prompt = "A photo of a mcw_ana person with style mcw_look"
    plain, _ = txt2img(webui, prompt)
    with_lora, _ = txt2img(webui, prompt + " <lora:mcw_ana_mcw_look:0.9:0.6>")
    assert with_lora != plain
    again = webui.post("/anybody-probe/magicapture", {"subject": "mcw_ck", "style": "mcw_cklook", "checkpointing": True})
    assert again["adapters"] == again["matched"]


def test_magicapture_route_and_tab_train_a_subject_and_a_style(webui):
    pytest.importorskip("onnx")
    import sys

    import torch
    from PIL import Image

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from a1111_harness import png_b64
    from face_onnx import build_pack

    from anybody.nets.bisenet import BiSeNet
    from anybody.nets.iresnet import IResNet

    build_pack(webui.data / "models" / "insightface", "mcpack")
    for folder, name, net in (("face_recognition", "ms1mv3_arcface_r100_fp16.pth", IResNet((1, 1, 1, 1))),
                              ("face_parsing", "79999_iter.pth", BiSeNet())):
        (webui.data / "models" / folder).mkdir(parents=True, exist_ok=True)
        if not (webui.data / "models" / folder / name).exists():
            torch.save({k: (v.abs() + 1 if k.endswith("running_var") else v) for k, v in net.state_dict().items()},
                       webui.data / "models" / folder / name)
    webui.post("/anybody-probe/stand-in-faces", {})
    rng = np.random.default_rng(5)
    photos = [rng.integers(0, 255, (64, 64, 3)).astype(np.uint8) for _ in range(4)]
    body = {"subject_images": [png_b64(p) for p in photos[:2]], "style_images": [png_b64(p) for p in photos[2:]],
            "subject_name": "mcr_ana", "style_name": "mcr_look", "preset": "fast", "resolution": 64,
            "face_model": "mcpack", "save_every": 0, "preview_every": 0}
    status, answer = webui.request("POST", "/anybody/v1/train/magicapture", {**body, "style_images": []})
    assert status == 400 and "'style_images' must be a non-empty list" in answer["detail"], answer
    status, answer = webui.request("POST", "/anybody/v1/train/magicapture", {**body, "preset": "huge"})
    assert status == 400 and "'preset' must be one of paper, fast" in answer["detail"], answer
    assert webui.get("/anybody/v1/info")["capabilities"]["magicapture"]
    result = webui.post("/anybody/v1/train/magicapture", {**body, "preset": "fast", "seed": 1})
    assert result["lora"].endswith("mcr_ana_mcr_look.safetensors") and not result["reused"], result
    assert "<lora:mcr_ana_mcr_look:0.9:0.6>" in result["prompt"]
    loaded = webui.get("/sdapi/v1/embeddings")["loaded"]
    assert "mcr_ana" in loaded and "mcr_look" in loaded
    files = []
    for i, p in enumerate(photos):
        files.append(str(webui.data / f"mc_tab_{i}.png"))
        Image.fromarray(p).save(files[-1])
    values = {"subject_name": "mct_ana", "style_name": "mct_look", "preset": "fast", "resolution": 64,
              "face_model": "mcpack", "save_every": 0, "preview_every": 0}
    _, html = webui.post("/anybody-probe/tab-magicapture", {"subjects": files[:2], "styles": files[2:], "values": values})
    html = __import__("html").unescape(html)
    assert "Trained: " in html and "mct_ana_mct_look.safetensors" in html, html


def test_rig_routes_personalize_an_album_then_render_edits(webui):
    """DiffusionRig through the webui's routes: the user's files in the webui's models folders (official layouts,
    random values, a sphere for a head), stage 2 on an album (then asked again: loaded, not retrained), and the
    edits of a photo with a target, pasted back; bad requests are clear 400s."""
    pytest.importorskip("onnx")
    import importlib
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from a1111_harness import png_b64
    from face_onnx import build_pack, paint_face
    from rig_files import write_rig_files

    models = webui.data / "models"
    write_rig_files(models, lambda name: importlib.import_module(f"anybody.{name}"))
    build_pack(models / "insightface", "rigpack")
    photos = []
    for i, (x, y) in enumerate(((160, 160), (144, 176), (176, 144))):
        photo = np.full((320, 320, 3), 60 + 40 * i, np.uint8)
        paint_face(photo, x, y, blue=255)
        photos.append(png_b64(photo))
    body = {"images": photos[:2], "face_model": "rigpack", "rig_model": "stage1.pt", "name": "rigroute", "steps": 2,
            "batch": 2, "learning_rate": 1e-4, "save_every": 0, "preview_every": 0}
    trained = webui.post("/anybody/v1/train/rig-personalize", body)
    assert Path(trained["path"]).is_file() and "stage 2" in trained["model"] and not trained["reused"], trained
    assert webui.post("/anybody/v1/train/rig-personalize", body)["reused"]

    render = webui.post("/anybody/v1/rig/render", {
        "images": [photos[0]], "target_images": [photos[2]], "face_model": "rigpack",
        "rig_model": "rigroute.safetensors", "edit_expression": False, "yaw": 15.0, "paste_back": True})
    assert render["labels"] == ["photo 1: reconstruction", "photo 1: light of target 1", "photo 1: pose of target 1",
                                "photo 1: sliders"]
    from PIL import Image
    import base64
    import io

    first = np.asarray(Image.open(io.BytesIO(base64.b64decode(render["images"][0]))))
    assert first.shape == (320, 320, 3) and len(render["normals"]) == 4 and len(render["albedo"]) == 4
    buffers_only = webui.post("/anybody/v1/rig/render", {"images": [photos[0]], "face_model": "rigpack"})
    assert buffers_only["model"] is None and len(buffers_only["images"]) == 1

    for extra, words in (({"rig_model": "nope.pt"}, "nope.pt"), ({"flame_model": "../generic_model.pkl"}, "not a path"),
                         ({"yaw": "left"}, "'yaw' must be float"), ({"deca_model": "missing.tar"}, "missing.tar")):
        status, answer = webui.request("POST", "/anybody/v1/rig/render",
                                       {"images": [photos[0]], "face_model": "rigpack", **extra})
        assert status == 400 and words in answer["detail"], answer
