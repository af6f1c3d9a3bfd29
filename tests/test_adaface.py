"""AdaFace (spec shared/methods/adaface.md §11): the networks, the restricted loader and the vector maths, on tiny
networks with the official layouts, including a pickled-module checkpoint with the authors' class names."""
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from anybody.errors import BadInputError, ModelFileError
from anybody.methods import adaface
from anybody.nets import adaface_files
from anybody.nets.clip_text import ClipTextShape, ClipTextTransformer, infer_shape
from anybody.nets.pickle_stubs import load_stubbed, module_tensors

sys.path.insert(0, str(Path(__file__).parent))
from adaface_checkpoints import save_authors_checkpoint, tiny_clip  # noqa: E402


def _clip(width=768, layers=3, copies=None, vocab=49408, seed=0, mlp=32) -> ClipTextTransformer:
    return tiny_clip(width, layers, copies, vocab, seed, mlp)


def test_tokenizer_facts():
    from anybody.host.tiny import clip_tokenizer

    tok = clip_tokenizer()
    assert tok("photo of a id person")["input_ids"] == list(adaface.ARC2FACE_PROMPT)
    ids = tok("photo of a " + ", " * 16)["input_ids"]
    assert ids == list(adaface.COMMA_TEMPLATE) and ids[4:20] == [267] * 16 and ids[20] == 49407


def test_clip_text_matches_transformers():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    hf = CLIPTextModel(CLIPTextConfig(hidden_size=128, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                                      vocab_size=1000, max_position_embeddings=77, hidden_act="quick_gelu")).eval()
    ours = ClipTextTransformer.from_tensors(hf.state_dict())  # heads: 64 wide, as every CLIP text encoder
    ids = torch.randint(0, 1000, (2, 77))
    with torch.no_grad():
        ref = hf(input_ids=ids, output_hidden_states=True)
        states = ours(ours.token_rows(ids))
    for a, b in zip(states, ref.hidden_states):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.final_layer_norm(states[-1]), ref.last_hidden_state, atol=1e-5, rtol=1e-5)


def test_widened_attention_with_identical_copies_is_plain_attention():
    plain = _clip(width=64, layers=2, vocab=100)
    wide = ClipTextTransformer(ClipTextShape(64, 2, 1, 32, 100, 77, (3, 2)))
    state = {}
    for k, v in plain.state_dict().items():
        layer = int(k.split(".")[2]) if k.startswith("encoder.layers.") else None
        if layer is not None and (".k_proj." in k or ".v_proj." in k):
            v = torch.cat([v] * (3, 2)[layer])
        state[k] = v
    wide.load_state_dict(state)
    wide.eval()
    x = torch.randn(1, 77, 64)
    with torch.no_grad():
        torch.testing.assert_close(wide(x)[-1], plain(x)[-1], atol=1e-5, rtol=1e-5)
    assert infer_shape({"text_model." + k: v for k, v in state.items()}).kv_copies == (3, 2)


def test_layer_mixing_weights():
    states = [torch.randn(1, 5, 8) for _ in range(13)]
    assert torch.equal(adaface.mix_last_layers(states, torch.tensor([[0.0], [0.0], [1.0]])), states[-1])
    torch.testing.assert_close(adaface.mix_last_layers(states, torch.tensor([[1.0], [2.0], [4.0]])),
                               adaface.mix_last_layers(states, torch.tensor([[2.0], [4.0], [8.0]])))
    per_channel = torch.rand(3, 8) + 0.1
    expected = sum((per_channel[i] / per_channel.sum(0)) * states[10 + i] for i in range(3))
    torch.testing.assert_close(adaface.mix_last_layers(states, per_channel), expected)


@pytest.fixture(scope="module")
def encoder():
    pad = torch.randn(77, 768)
    return adaface.AdaFaceEncoder(_clip(seed=1), _clip(seed=2, copies=[1, 4, 2]), torch.tensor([[1.0], [2.0], [4.0]]),
                                  pad[adaface.ROWS].clone())


def test_id_vector_is_the_normalised_mean():
    a, b = torch.randn(512), torch.randn(512)
    f = adaface.id_vector(torch.stack([a * 3, b]))
    assert abs(f.norm().item() - 1) < 1e-5
    torch.testing.assert_close(f, torch.nn.functional.normalize(
        torch.nn.functional.normalize(a, dim=0) + torch.nn.functional.normalize(b, dim=0), dim=0))
    with pytest.raises(BadInputError, match="512-wide"):
        adaface.id_vector(torch.randn(2, 256))


def test_rows_do_not_depend_on_padding_length(encoder):
    f = adaface.id_vector(torch.randn(1, 512))
    torch.testing.assert_close(encoder.id_prompt(f, 22), encoder.id_prompt(f, 77), atol=1e-5, rtol=1e-5)
    q = encoder.id_prompt(f)
    torch.testing.assert_close(encoder.subject_vectors(q, 21), encoder.subject_vectors(q, 77), atol=1e-5, rtol=1e-5)


def test_vectors_shape_strength_and_determinism(encoder):
    f = adaface.id_vector(torch.randn(2, 512))
    vectors = encoder.encode(f)
    assert vectors.shape == (16, 768) and torch.isfinite(vectors).all()
    assert torch.equal(encoder.encode(f), vectors)  # the same face gives the same vectors
    assert torch.equal(encoder.encode(f, 0.0), encoder.pad_embeddings)
    torch.testing.assert_close(encoder.encode(f, 2.0), 2 * vectors - encoder.pad_embeddings)
    other = adaface.id_vector(torch.randn(1, 512))
    assert not torch.allclose(encoder.encode(other), vectors)
    without_pad = adaface.AdaFaceEncoder(encoder.arc2face, encoder.prompt2token, None, None)
    with pytest.raises(ModelFileError, match="strength 1.0"):
        without_pad.encode(f, 4.0)


# --- the pickled checkpoint, as the authors saved it -----------------------------------------------------------

def _save_authors_checkpoint(path, monkeypatch, prefix, text, pad, joint=False) -> dict:
    save_authors_checkpoint(path, prefix, text, pad, joint)
    assert prefix not in sys.modules  # loading cannot import the authors' classes
    return {"prompt2token_proj.text_model." + k: v for k, v in text.state_dict().items()}


@pytest.mark.parametrize("prefix", ["ldm.modules.subj_basis_generator", "adaface.subj_basis_generator"])
def test_pickled_generator_loads_without_its_code_and_caches(tmp_path, monkeypatch, prefix):
    text, arc = _clip(seed=3, copies=[1, 4, 2]), _clip(seed=4)
    pad = torch.randn(77, 768)
    path = tmp_path / adaface_files.ADAFACE_FILE
    expected = _save_authors_checkpoint(path, monkeypatch, prefix, text, pad)
    (tmp_path / "arc2face" / "encoder").mkdir(parents=True)
    torch.save({"text_model." + k: v for k, v in arc.state_dict().items()},
               tmp_path / "arc2face" / "encoder" / "pytorch_model.bin")

    tensors = adaface_files.subject_generator_tensors(path)
    for key, value in expected.items():
        assert torch.equal(tensors[key], value), key
    assert torch.equal(tensors["pad_embeddings"], pad)
    assert tensors["hidden_state_layer_weights"].shape == (3, 1)
    assert adaface_files.cache_path(path).is_file()

    loaded = adaface_files.load_adaface(path, tmp_path / "arc2face")
    assert loaded.prompt2token.shape.kv_copies == (1, 4, 2)
    assert torch.equal(loaded.pad_embeddings, pad[adaface.ROWS])
    f = adaface.id_vector(torch.randn(1, 512))
    reference = adaface.AdaFaceEncoder(arc, text, torch.tensor([[0.92], [0.95], [2.08]]), pad[adaface.ROWS])
    torch.testing.assert_close(loaded.encode(f, 1.5), reference.encode(f, 1.5), atol=1e-5, rtol=1e-5)

    def no_pickle(path):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(adaface_files, "_from_pickle", no_pickle)
    again = adaface_files.load_adaface(path, tmp_path / "arc2face")
    assert torch.equal(again.encode(f, 1.5), loaded.encode(f, 1.5))  # bit-exact through the cache
    os.utime(path, ns=(1, 1))  # touched, same content: the hash keeps the cache valid
    adaface_files.load_adaface(path, tmp_path / "arc2face")


def test_a_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"string_to_subj_basis_generator_dict": {"z": Payload()}}, path)
    with pytest.raises(ModelFileError, match=r"asks to call (posix|os|nt)\.system"):
        load_stubbed(path)
    assert not marker.exists()

    class Eval:
        def __reduce__(self):
            return (eval, (f"open({str(marker)!r}, 'w')",))

    torch.save([Eval()], path)
    with pytest.raises(ModelFileError, match=r"(__builtin__|builtins)\.eval"):
        load_stubbed(path)
    assert not marker.exists()


def test_bad_adaface_files_are_named(tmp_path, monkeypatch):
    path = tmp_path / "ada.pt"
    with pytest.raises(ModelFileError, match=adaface_files.ADAFACE_FILE):
        adaface_files.subject_generator_tensors(path)
    text = _clip(width=64, layers=2, vocab=100)
    _save_authors_checkpoint(path, monkeypatch, "ldm.modules.subj_basis_generator", text, torch.randn(77, 64))
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        adaface_files.subject_generator_tensors(truncated)
    (tmp_path / "arc").mkdir()
    with pytest.raises(ModelFileError, match="Arc2Face encoder not found"):
        adaface_files.load_adaface(path, tmp_path / "arc")
    torch.save({"text_model." + k: v for k, v in text.state_dict().items()}, tmp_path / "arc" / "pytorch_model.bin")
    with pytest.raises(ModelFileError, match="768-wide"):
        adaface_files.load_adaface(path, tmp_path / "arc")
    joint = tmp_path / "joint.pt"
    _save_authors_checkpoint(joint, monkeypatch, "adaface.subj_basis_generator", _clip(width=64, layers=2, vocab=100),
                             torch.randn(77, 64), joint=True)
    with pytest.raises(ModelFileError, match="2025 joint"):
        adaface_files.subject_generator_tensors(joint)
    state = {"text_model." + k: v for k, v in text.state_dict().items()}
    state["text_model.encoder.layers.1.self_attn.k_proj.weight"] = torch.randn(100, 64)
    with pytest.raises(ModelFileError, match="not a multiple of the width"):
        infer_shape(state)


def test_stub_tree_walk_matches_state_dict(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).half()
    torch.save(model, tmp_path / "whole_module.pt")
    tensors = module_tensors(load_stubbed(tmp_path / "whole_module.pt"))
    assert set(tensors) == set(model.state_dict())
    assert all(torch.equal(tensors[k], v) for k, v in model.state_dict().items())


def test_injection_places_the_16_vectors_where_the_word_stands():
    from anybody.host.tiny import clip_tokenizer
    from anybody.text.prompt import prompt_rows

    tok = clip_tokenizer()
    vectors = torch.randn(16, 768)
    rows = prompt_rows("a <z> person", {"<z>": vectors}, lambda t: tok(t, add_special_tokens=False)["input_ids"],
                       49406, 49407, 49407)
    assert len(rows) == 77 and rows[0] == 49406 and rows[1] == tok("a", add_special_tokens=False)["input_ids"][0]
    assert all(torch.equal(rows[2 + i], vectors[i]) for i in range(16))
    assert rows[18] == tok("person", add_special_tokens=False)["input_ids"][0] and rows[19] == 49407


def test_photos_become_an_sd1_identity_and_faceless_photos_are_named(tmp_path, encoder):
    pytest.importorskip("insightface")
    pytest.importorskip("onnx")
    import numpy as np
    from face_onnx import build_pack, paint_face

    from anybody.face.models import load_face_models

    build_pack(tmp_path)
    faces = load_face_models("testpack", [tmp_path], "CPU")
    photo = np.full((480, 640, 3), 120, np.uint8)
    paint_face(photo, 320, 240, blue=128)
    blank = np.full((480, 640, 3), 90, np.uint8)
    identity, missing = adaface.adaface_identity(encoder, faces, [torch.from_numpy(photo).float() / 255,
                                                                 torch.from_numpy(blank).float() / 255], "ada_face", 1.0)
    assert missing == [1] and identity.family == "sd1" and identity.vectors["clip_l"].shape == (16, 768)
    assert identity.metadata["anybody.faces"] == "1" and identity.method == "adaface"
    path = identity.save(tmp_path / "ada_face.safetensors")
    from anybody.identity import Identity

    assert torch.equal(Identity.load(path).vectors["clip_l"], identity.vectors["clip_l"])
    with pytest.raises(BadInputError, match="No face was found in the photo"):
        adaface.adaface_identity(encoder, faces, [torch.from_numpy(blank).float() / 255], "x")
    with pytest.raises(BadInputError, match="outside 0-10"):
        adaface.adaface_identity(encoder, faces, [torch.from_numpy(photo).float() / 255], "x", 11.0)


def test_cli_writes_the_embedding(tmp_path, capsys):
    pytest.importorskip("insightface")
    pytest.importorskip("onnx")
    import numpy as np
    from face_onnx import build_pack, paint_face
    from PIL import Image

    from adaface_checkpoints import write_adaface_files
    from anybody.cli import main
    from anybody.identity import Identity

    write_adaface_files(tmp_path / "models")
    build_pack(tmp_path / "insightface")
    (tmp_path / "photos").mkdir()
    photo = np.full((480, 640, 3), 120, np.uint8)
    paint_face(photo, 320, 240, blue=128)
    Image.fromarray(photo).save(tmp_path / "photos" / "me.png")
    args = [str(tmp_path / "photos"), "--name", "me", "--adaface", str(tmp_path / "models" / "adaface" /
            adaface_files.ADAFACE_FILE), "--arc2face", str(tmp_path / "models" / "arc2face"), "--pack", "testpack",
            "--models-root", str(tmp_path / "insightface"), "--provider", "CPU", "--out", str(tmp_path / "out")]
    assert main(["adaface", *args]) == 0
    saved = Identity.load(tmp_path / "out" / "embeddings" / "me.safetensors")
    assert saved.vectors["clip_l"].shape == (16, 768) and saved.method == "adaface"
    assert main(["adaface", *args]) == 2 and "already exists" in capsys.readouterr().err


def test_the_face_models_see_bgr_as_insightface_expects(tmp_path, monkeypatch):
    pytest.importorskip("insightface")
    pytest.importorskip("onnx")
    import numpy as np
    from face_onnx import build_pack, paint_face

    from anybody.face.models import load_face_models

    build_pack(tmp_path)
    faces = load_face_models("testpack", [tmp_path], "CPU")
    photo = np.zeros((480, 640, 3), np.uint8)
    photo[...] = (150, 60, 90)  # R, G, B differ everywhere
    paint_face(photo, 320, 240, blue=128)
    seen = {}
    detect, get_feat = faces.detector.detect, faces.recognizer.get_feat
    monkeypatch.setattr(faces.detector, "detect", lambda img, **k: (seen.setdefault("det", img.copy()), detect(img, **k))[1])
    monkeypatch.setattr(faces.recognizer, "get_feat", lambda crops: (seen.setdefault("rec", [c.copy() for c in crops]),
                                                                      get_feat(crops))[1])
    adaface.face_id_vector(faces, [torch.from_numpy(photo).float() / 255])
    det = seen["det"]  # AdaFace's view: padded to a square, 512 px, nearest (spec §4.1); black bars above and below
    assert det.shape == (512, 512, 3) and tuple(det[10, 10]) == (0, 0, 0)
    assert tuple(det[100, 10]) == (90, 60, 150) and tuple(det[262, 262]) == (128, 0, 255)  # BGR
    assert tuple(seen["rec"][0][0, 0]) == (90, 60, 150)  # the aligned crop's background, in BGR too


def test_widened_attention_matches_the_written_formula_with_distinct_copies():
    """Copy m of token t uses k/v rows [m*768:(m+1)*768]; all copies of a token share the causal mask and one softmax."""
    from anybody.nets.clip_text import MultiKVAttention

    torch.manual_seed(0)
    width, heads, copies, t = 128, 2, 3, 7
    attn = MultiKVAttention(width, heads, copies).eval()
    x = torch.randn(1, t, width)
    with torch.no_grad():
        q = attn.q_proj(x)[0].view(t, heads, -1)
        k = attn.k_proj(x)[0].view(t, copies, heads, -1)  # token, copy, head, dim
        v = attn.v_proj(x)[0].view(t, copies, heads, -1)
        logits = torch.einsum("shd,tmhd->hstm", q, k) / (width // heads) ** 0.5
        future = torch.arange(t)[None, :] > torch.arange(t)[:, None]  # [s, t]
        logits = logits.masked_fill(future[None, :, :, None], float("-inf"))
        p = logits.reshape(heads, t, t * copies).softmax(-1).reshape(heads, t, t, copies)
        out = attn.out_proj(torch.einsum("hstm,tmhd->shd", p, v).reshape(t, width))
        torch.testing.assert_close(attn(x)[0], out, atol=1e-5, rtol=1e-5)


def test_crafted_files_cannot_allocate_decompress_or_loop(tmp_path):
    import functools
    import zipfile

    class Grab:
        def __reduce__(self):
            return (torch.UntypedStorage, (10**11,))  # 100 GB if it were called

    torch.save({"x": Grab()}, tmp_path / "grab.pt")
    from anybody.nets.pickle_stubs import Stub

    assert isinstance(load_stubbed(tmp_path / "grab.pt")["x"], Stub)  # named, never called: nothing allocated

    torch.save({"w": torch.ones(1000)}, tmp_path / "plain.pt")
    with zipfile.ZipFile(tmp_path / "plain.pt") as src, zipfile.ZipFile(tmp_path / "deflated.pt", "w",
                                                                         zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            dst.writestr(item.filename, src.read(item.filename))
    with pytest.raises(ModelFileError, match="not what torch.save writes"):
        load_stubbed(tmp_path / "deflated.pt")

    loop = nn.Module()
    loop.weight = nn.Parameter(torch.ones(2))
    loop._modules["again"] = loop
    torch.save(loop, tmp_path / "loop.pt")
    assert set(module_tensors(load_stubbed(tmp_path / "loop.pt"))) == {"weight"}

    ordinary = {"hook": functools.partial(torch.add, other=1), "method": torch.Tensor.detach, "w": torch.ones(3)}
    torch.save(ordinary, tmp_path / "ordinary.pt")
    assert torch.equal(load_stubbed(tmp_path / "ordinary.pt")["w"], torch.ones(3))  # inert stubs, not refusals


def test_cache_follows_the_content_of_the_source(tmp_path, monkeypatch):
    text = _clip(width=64, layers=2, vocab=100)
    path = tmp_path / "ada.pt"
    save_authors_checkpoint(path, "ldm.modules.subj_basis_generator", text, torch.randn(77, 64))
    first = adaface_files.subject_generator_tensors(path)
    other = _clip(width=64, layers=2, vocab=100, seed=9)
    stat = path.stat()
    save_authors_checkpoint(path, "ldm.modules.subj_basis_generator", other, torch.randn(77, 64))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime, other content
    second = adaface_files.subject_generator_tensors(path)
    key = "prompt2token_proj.text_model.embeddings.token_embedding.weight"
    assert not torch.equal(first[key], second[key]) and torch.equal(second[key], other.embeddings.token_embedding.weight)


def test_annealed_guidance_falls_linearly_from_4_to_1_over_the_steps():
    """Spec check 9 (the authors' NeurIPS evaluation): g_0 = 4, g_49 = 1, linear in between."""
    from anybody.methods.adaface import annealed_guidance

    scales = [annealed_guidance(i, 50) for i in range(50)]
    assert scales[0] == 4.0 and scales[49] == 1.0
    assert all(abs(g - (4 - 3 * i / 49)) < 1e-12 for i, g in enumerate(scales))
    assert annealed_guidance(0, 1) == 4.0 and annealed_guidance(7, 5, 6.0, 2.0) == 2.0


def test_comfyui_guidance_hook_finds_the_step_from_the_sigma_and_mixes_as_cfg_does():
    """The ComfyUI sampler_cfg_function: the step is the sigma's place among the sampled sigmas (the closing 0 is
    never denoised), and the result, in ComfyUI's x - denoised form, is uncond + g (cond - uncond)."""
    from anybody.errors import AnybodyError
    from anybody.host.comfy import AnnealedGuidance

    sigmas = torch.tensor([14.6, 7.0, 3.0, 1.0, 0.3, 0.0])
    hook = AnnealedGuidance(4.0, 1.0)
    assert [hook.scale(torch.tensor([s, s]), sigmas) for s in sigmas[:-1]] == [4.0, 3.25, 2.5, 1.75, 1.0]
    assert hook.scale(torch.tensor([2.9]), sigmas) == 2.5, "a sigma between steps (heun) takes the nearest step's"
    cond, uncond = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    args = {"cond": cond, "uncond": uncond, "sigma": torch.tensor([3.0, 3.0]),
            "model_options": {"transformer_options": {"sample_sigmas": sigmas}}}
    assert torch.allclose(hook(args), uncond + 2.5 * (cond - uncond))
    with pytest.raises(AnybodyError, match="sample_sigmas"):
        hook({**args, "model_options": {}})
