"""The identity evaluation harness: fixed renders, likeness as IdentityScore computes it, CLIP-T as its formula."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("insightface")
pytest.importorskip("onnx")
sys.path.insert(0, str(Path(__file__).parent))
from face_onnx import build_pack, paint_face  # noqa: E402

from anybody import evaluation as ev  # noqa: E402
from anybody.errors import BadInputError  # noqa: E402
from anybody.identity import Identity  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ev.EvalSettings(prompts=("a photo of {word} person", "{word} person in a garden"), seeds=(0, 3), steps=3,
                           resolution=64)


@pytest.fixture(scope="module")
def pack_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    build_pack(root)
    return root


@pytest.fixture(scope="module")
def face_models(pack_root):
    from anybody.face.models import load_face_models

    return load_face_models("testpack", [pack_root], "CPU")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny random transformers CLIPModel saved as a local folder (weights only: the BPE is the pack's)."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64,
                                     "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 77},
                        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
                        projection_dim=16)
    folder = tmp_path_factory.mktemp("clip")
    CLIPModel(config).save_pretrained(str(folder))
    return folder


def _identities():
    g = torch.Generator().manual_seed(5)
    return [Identity(name, "sd1", {"clip_l": torch.randn(2, 768, generator=g) * 0.3}, "test") for name in ("ev_a", "ev_b")]


def _photos():
    photos = []
    for blue in (40, 200):
        image = np.full((96, 96, 3), 110, np.uint8)
        paint_face(image, 32, 32, blue=blue)
        photos.append(torch.from_numpy(image).float() / 255)
    return photos


def test_scores_are_identity_score_on_the_renders_and_clip_t_is_the_cosine(host, face_models, clip_dir, tmp_path,
                                                                          monkeypatch):
    from PIL import Image

    from anybody.face.score import identity_report

    renders = []
    real = host.sample_ddim
    monkeypatch.setattr(host, "sample_ddim", lambda *a, **k: renders.append(1) or real(*a, **k))
    clip = ev.ClipScorer(clip_dir)
    identities = _identities()
    results = ev.evaluate(host, identities, {i.name: _photos() for i in identities}, face_models, SETTINGS, clip,
                          tmp_path)
    assert len(renders) == 2 * 2 * 2, "identities x prompts x seeds"
    for result in results:
        saved = sorted((tmp_path / result.name).glob("*.png"))
        assert [p.name for p in saved] == ["0_0.png", "0_3.png", "1_0.png", "1_3.png"]
        images = [torch.from_numpy(np.array(Image.open(p))).float() / 255 for p in saved]
        expect = identity_report(face_models, images, _photos())
        assert result.report["baseline"] == pytest.approx(expect.baseline)
        assert result.report["face_rate"] == expect.face_rate and result.report["scores"] == pytest.approx(
            expect.scores)
        texts = [ev.plain_prompt(p) for p in SETTINGS.prompts for _ in SETTINGS.seeds]
        assert texts[0] == "a photo of a person" and texts[2] == "a person in a garden"
        with torch.no_grad():
            tokens = clip.tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt")
            both = clip.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                              pixel_values=clip.pixels(torch.stack(images)))
            image_f, text_f = both.image_embeds, both.text_embeds  # the model's own forward: an independent path
        cosine = torch.nn.functional.cosine_similarity(image_f, text_f).mean().item()
        assert result.clip_t == pytest.approx(cosine, abs=2e-3), "PNG rounding aside, the same number"
    again = ev.evaluate(host, identities[:1], {identities[0].name: _photos()}, face_models, SETTINGS, clip)
    assert again[0].report == results[0].report and again[0].clip_t == results[0].clip_t, "fixed seeds: repeatable"
    table = ev.markdown(results)
    assert table.count("\n") == 4 and "| ev_a | test |" in table and "| ev_b | test |" in table


def test_bad_settings_and_missing_references_are_refused(host, face_models):
    identities = _identities()
    with pytest.raises(BadInputError, match="placeholder"):
        ev.evaluate(host, identities, {}, face_models, ev.EvalSettings(prompts=("a photo of a person",)))
    with pytest.raises(BadInputError, match="ev_b"):
        ev.evaluate(host, identities, {"ev_a": _photos()}, face_models, SETTINGS)


def test_the_benchmark_script_writes_json_and_markdown(tmp_path, pack_root):
    from PIL import Image

    for i, identity in enumerate(_identities()):
        identity.save(tmp_path / f"{identity.name}.safetensors")
    refs = tmp_path / "refs"
    refs.mkdir()
    for i, photo in enumerate(_photos()):
        Image.fromarray((photo.numpy() * 255).astype(np.uint8)).save(refs / f"{i}.png")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "identity_eval.py"), "--tiny",
                           "--identity", str(tmp_path / "ev_a.safetensors"), "--identity", str(tmp_path / "ev_b.safetensors"),
                           "--references", str(refs), "--face-pack", "testpack", "--models-root", str(pack_root),
                           "--provider", "CPU", "--steps", "2", "--seeds", "0", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads((out / "results.json").read_text())
    assert [i["name"] for i in data["identities"]] == ["ev_a", "ev_b"] and data["settings"]["seeds"] == [0]
    assert all(len(i["per_prompt"]) == len(ev.DEFAULT_PROMPTS) for i in data["identities"])
    assert (out / "results.md").read_text().startswith("| identity | method | likeness | baseline |")
