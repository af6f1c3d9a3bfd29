"""MagiCapture's training run in the product's loop (tiny model, stand-in face tools)."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from anybody.errors import BadInputError, WrongModelFamilyError
from anybody.face.detect import Face
from anybody.face.recognizer import FaceRecognizer
from anybody.identity import Identity
from anybody.methods import magicapture as mc
from anybody.nets.iresnet import IResNet
from anybody.train import lora

FAST = mc.MagiCaptureConfig(ti_steps=3, lora_steps=3, resolution=64, save_every=0, preview_every=2)  # tiny UNet: level 0


def _face(size=64):
    box = np.array([0.15, 0.1, 0.85, 0.9]) * size
    marks = np.array([[0.35, 0.4], [0.65, 0.4], [0.5, 0.55], [0.38, 0.7], [0.62, 0.7]]) * size
    return Face(box, marks, 0.9)


@pytest.fixture(scope="module")
def tools():
    torch.manual_seed(0)
    net = IResNet((1, 1, 1, 1)).eval().requires_grad_(False)

    def face_mask(image, face):
        mask = np.zeros(image.shape[:2], np.float32)
        x0, y0, x1, y1 = face.box.astype(int)
        mask[y0 + 6:y1 - 6, x0 + 6:x1 - 6] = 1.0
        return mask

    return mc.FaceTools(lambda image: [_face(image.shape[0])], face_mask,
                        FaceRecognizer("tiny", lambda x: net(x), "torch", net))


@pytest.fixture
def photos():
    g = torch.Generator().manual_seed(2)
    return [torch.rand(80, 64, 3, generator=g) for _ in range(2)], [torch.rand(64, 72, 3, generator=g) for _ in range(3)]


def test_word_positions_find_each_placeholder_row(host):
    enc = host.encoders["clip_l"]
    positions = mc.word_positions(enc, "a photo of a <s> person in the style of <t>", ["<s>", "<t>"])
    tokens = enc.tokenize("a photo of a")
    assert positions["<s>"] == 1 + len(tokens) and positions["<t>"] > positions["<s>"]


def test_samples_are_the_three_kinds_with_their_regions_and_references(host, tools, photos):
    subjects, styles = photos
    samples = mc.prepare_samples(host, subjects, styles, tools, ("<s>", "<t>"), 64, torch.Generator().manual_seed(0))
    kinds = [s.kind for s in samples]
    assert (kinds.count("instance"), kinds.count("style"), kinds.count("both")) == (2, 3, 2)
    for s in samples:
        assert s.latent.shape == (4, 8, 8) and s.mask.shape == (1, 8, 8)
        centre, corner = s.mask[0, 4, 4].item(), s.mask[0, 0, 0].item()
        if s.kind == "instance":
            assert centre == pytest.approx(1.0) and corner == pytest.approx(0.01 / 1.01) and "<s>" in s.prompt
            assert s.reference is not None
        else:
            assert corner == pytest.approx(1.0) and centre == pytest.approx(0.01 / 1.01) and "<t>" in s.prompt
        assert (s.reference is not None) == (s.kind != "style")
    assert all("<s>" in s.prompt and "<t>" in s.prompt for s in samples if s.kind == "both")


def test_training_writes_a_kohya_lora_and_two_embeddings_and_touches_no_weights(host, tools, photos):
    subjects, styles = photos
    before = [p.detach().clone() for p in host.unet.parameters()]
    result = mc.train_magicapture(host, subjects, styles, tools, "ana", "passport", FAST)
    assert all(torch.equal(p, q) for p, q in zip(host.unet.parameters(), before))
    assert result.lora_path == host.loras_dir() / "ana_passport.safetensors" and result.lora_path.is_file()
    assert host.sink.steps == list(range(1, 7)) and host.sink.previews
    weights = lora.read_kohya(result.lora_path)
    assert any(n.startswith("lora_unet_") for n in weights) and any(n.startswith("lora_te_") for n in weights)
    subject, style = Identity.load(result.subject_path), Identity.load(result.style_path)
    assert subject.vectors["clip_l"].shape == style.vectors["clip_l"].shape == (1, 768)
    assert any("identity term skipped in" in m for m in host.sink.logs)
    again = mc.train_magicapture(host, subjects, styles, tools, "ana", "passport", FAST)
    assert again.reused and torch.equal(again.subject.vectors["clip_l"], subject.vectors["clip_l"])


def test_cancel_in_phase_two_then_resume_is_exact(host, tools, photos, RecordingSink):
    subjects, styles = photos
    full = mc.train_magicapture(host, subjects, styles, tools, "full", "look", FAST)
    host.sink = RecordingSink(cancel_after=4)
    with pytest.raises(KeyboardInterrupt):
        mc.train_magicapture(host, subjects, styles, tools, "half", "look2", FAST)
    assert (host.state_dir() / "magicapture.half+look2.phase2.state.safetensors").is_file()
    host.sink = RecordingSink()
    with pytest.raises(BadInputError, match="saved progress"):
        mc.train_magicapture(host, subjects, styles, tools, "half", "look2", FAST)
    resumed = mc.train_magicapture(host, subjects, styles, tools, "half", "look2", FAST, resume=True)
    assert host.sink.steps == [5, 6]
    assert torch.equal(resumed.subject.vectors["clip_l"], full.subject.vectors["clip_l"])
    a, b = lora.read_kohya(resumed.lora_path), lora.read_kohya(full.lora_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k][1], b[k][1]) and torch.equal(a[k][0], b[k][0]) for k in a)
    assert not list(host.state_dir().glob("magicapture.half+look2.*.safetensors")), "saved progress is removed"
    curves = sorted(p.name for p in host.state_dir().glob("magicapture.half+look2.*.loss.csv"))
    assert curves == ["magicapture.half+look2.phase1.loss.csv", "magicapture.half+look2.phase2.loss.csv"]


def test_bad_inputs_are_refused_before_training(host, tools, photos):
    subjects, styles = photos
    with pytest.raises(BadInputError, match="No style photos"):
        mc.train_magicapture(host, subjects, [], tools, "a", "b", FAST)
    with pytest.raises(BadInputError, match="different names"):
        mc.train_magicapture(host, subjects, styles, tools, "a", "a", FAST)
    faceless = mc.FaceTools(lambda image: [] if image.mean() > 200 else [_face(image.shape[0])], tools.face_mask,
                            tools.recognizer)
    white = torch.ones(64, 64, 3)
    with pytest.raises(BadInputError, match="No face found in style photo 4"):
        mc.train_magicapture(host, subjects, [*styles, white], faceless, "a", "b", FAST)
    onnx = mc.FaceTools(tools.detect, tools.face_mask, FaceRecognizer("glintr100.onnx", lambda x: x, "onnx"))
    with pytest.raises(BadInputError, match="torch face recognizer"):
        mc.train_magicapture(host, subjects, styles, onnx, "a", "b", FAST)
    empty_mask = mc.FaceTools(tools.detect, lambda image, face: np.zeros(image.shape[:2], np.float32), tools.recognizer)
    with pytest.raises(BadInputError, match="no face pixels in subject photo"):
        mc.train_magicapture(host, subjects, styles, empty_mask, "a", "b", FAST)
    assert host.sink.steps == [] and not list(host.embeddings_dir().glob("*"))


def test_sdxl_is_refused_with_a_clear_message(tmp_path, tools, photos, RecordingSink):
    from anybody.host.tiny import tiny_host

    xl = tiny_host(tmp_path, sink=RecordingSink(), family="sdxl")
    with pytest.raises(WrongModelFamilyError, match="SD1.x"):
        mc.train_magicapture(xl, *photos, tools, "a", "b", FAST)


def test_schedule_decays_every_group_to_zero_and_clips_the_lora_gradient(host, tools, photos, monkeypatch):
    """The optimizer sees the paper's rates decayed linearly (0 at the last update) and the LoRA gradient clipped."""
    seen, clipped = [], []
    real_step = torch.optim.AdamW.step

    def spy(self, *a, **k):
        seen.append([g["lr"] for g in self.param_groups])
        return real_step(self, *a, **k)

    real_clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda p, n: clipped.append(n) or real_clip(p, n))
    mc.train_magicapture(host, *photos, tools, "sched", "look", replace(FAST, ti_steps=2, lora_steps=2))
    assert seen[0] == [pytest.approx(2e-3 / 2)] and seen[1] == [0.0]
    assert seen[2] == [pytest.approx(2e-4), pytest.approx(2e-5), pytest.approx(5e-5)] and seen[3] == [0.0, 0.0, 0.0]
    assert clipped == [1.0, 1.0]


def test_phases_draw_their_timesteps_and_weight_style_samples_by_their_own_progress(host, tools, photos, monkeypatch):
    from anybody.methods import magicapture_losses as losses

    uppers, progress = [], []
    real_t, real_w = losses.sample_timesteps, losses.style_weight
    monkeypatch.setattr(losses, "sample_timesteps", lambda n, upper, gen: uppers.append(upper) or real_t(n, upper, gen))
    monkeypatch.setattr(losses, "style_weight", lambda kind, p, w=2.0: progress.append(p) or real_w(kind, p, w))
    mc.train_magicapture(host, *photos, tools, "tsteps", "look", replace(FAST, ti_steps=4, lora_steps=2))
    assert uppers == [1000] * 4 + [800] * 2
    assert progress == [0.0, 0.25, 0.5, 0.75, 0.0, 0.5]


def test_gradient_checkpointing_gives_the_same_training(host, tools, photos):
    """Phase 2 recomputes the captured attention layers in the backward pass: the capture must still be in place."""
    plain = mc.train_magicapture(host, *photos, tools, "ck_a", "ck_s", FAST)
    checkpointed = mc.train_magicapture(host, *photos, tools, "ck_b", "ck_t", replace(FAST, gradient_checkpointing=True))
    torch.testing.assert_close(checkpointed.subject.vectors["clip_l"], plain.subject.vectors["clip_l"])
    a, b = lora.read_kohya(plain.lora_path), lora.read_kohya(checkpointed.lora_path)
    assert all(torch.allclose(a[k][1], b[k][1], atol=1e-6) for k in a)


def test_training_works_when_called_under_inference_mode_as_comfyui_runs_nodes(host, tools, photos):
    """Tokens, samples and adapters made under the caller's inference mode must still train (a real-ComfyUI failure,
    reproduced here)."""
    with torch.inference_mode():  # a recognizer loaded by a loader node: inference-mode weights
        net = IResNet((1, 1, 1, 1)).eval()
        loaded = mc.FaceTools(tools.detect, tools.face_mask, FaceRecognizer("loaded", lambda x: net(x), "torch", net))
        result = mc.train_magicapture(host, *photos, loaded, "inf_a", "inf_b", replace(FAST, ti_steps=1, lora_steps=1))
    assert result.lora_path.is_file() and any("identity term skipped in 0 of" in m for m in host.sink.logs)


def test_cli_trains_a_subject_and_a_style(tools, tmp_path, monkeypatch, capsys):
    from PIL import Image

    from anybody.cli import main
    from anybody.host import checkpoint
    from anybody.host.tiny import tiny_host
    from anybody.nets.bisenet import BiSeNet

    for folder, count in (("me", 2), ("passport", 2)):
        (tmp_path / folder).mkdir()
        for i in range(count):
            Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
                tmp_path / folder / f"{i}.png")
    torch.save(tools.recognizer.module.state_dict(), tmp_path / "r.pth")
    torch.save({k: (v.abs() + 1 if k.endswith("running_var") else v) for k, v in BiSeNet().state_dict().items()},
               tmp_path / "79999_iter.pth")
    monkeypatch.setattr(checkpoint, "detect_family", lambda path: "sd1")
    monkeypatch.setattr(checkpoint, "load_checkpoint_host", lambda path, out_dir, **kw: tiny_host(out_dir))
    monkeypatch.setattr(mc, "face_tools", lambda models, parsing, recognizer, device, parsing_name="": mc.FaceTools(
        tools.detect, tools.face_mask, recognizer))
    monkeypatch.setattr("anybody.face.models.load_face_models", lambda *a, **k: None)
    monkeypatch.setattr(mc, "PRESETS", {**mc.PRESETS, "fast": {"ti_steps": 1, "lora_steps": 1}})
    rc = main(["train", "magicapture", "--checkpoint", "x.safetensors", "--subject", str(tmp_path / "me"), "--style",
               str(tmp_path / "passport"), "--subject-name", "me", "--style-name", "passport", "--recognizer",
               str(tmp_path / "r.pth"), "--parsing", str(tmp_path / "79999_iter.pth"), "--preset", "fast",
               "--resolution", "64", "--out", str(tmp_path / "out")])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert (tmp_path / "out" / "loras" / "me_passport.safetensors").is_file() and "passport.safetensors" in out.out
    assert main(["train", "magicapture", "--checkpoint", "x", "--subject", "a", "--style", "b", "--subject-name", "s",
                 "--style-name", "s", "--recognizer", "r", "--parsing", "p"]) == 2
    assert "different names" in capsys.readouterr().err


def test_phase_two_previews_show_the_composed_prompt(host, tools, photos, monkeypatch):
    prompts = []
    real = host.encode_prompts

    def spy(texts, injections=None):
        prompts.append(list(texts))
        return real(texts, injections)

    monkeypatch.setattr(host, "encode_prompts", spy)
    mc.train_magicapture(host, *photos, tools, "pv", "pvs", replace(FAST, ti_steps=2, lora_steps=2, preview_every=1))
    assert len(host.sink.previews) == 4 and host.sink.previews[-1].shape == (64 + 160, 256, 3)
    # phase 1: one encode per step; phase 2: the step's own, then the preview's composed prompt
    assert len(prompts) == 2 + 2 * 2, prompts
    assert all("<pv>" in prompts[i][0] and "<pvs>" in prompts[i][0] for i in (3, 5))


def test_likeness_curve_in_phase_two_renders_the_composed_prompt_and_keeps_the_best_step(host, tools, photos,
                                                                                          monkeypatch):
    import json

    from safetensors import safe_open

    from anybody.train.likeness import Evaluation

    subjects, styles = photos
    config = replace(FAST, likeness_every=1)
    real = mc.train_magicapture(host, subjects, styles, tools, "lk_sub", "lk_sty", config)
    with safe_open(str(real.subject_path), "pt") as f:
        meta = f.metadata()
    curve = json.loads(meta["anybody.likeness.curve"])
    assert [point[0] for point in curve] == [1, 2, 3] and all(point[2] == 1.0 for point in curve), "a face each time"
    assert float(meta["anybody.likeness.best"]) == pytest.approx(max(point[1] for point in curve), abs=1e-4)

    # a probe whose best is step 1: the saved LoRA must then be step 1's, not the last step's
    def falling(*args, **kwargs):
        values = iter([0.9, 0.5, 0.2])
        return lambda: Evaluation(next(values), 1.0)

    monkeypatch.setattr(mc, "identity_probe", falling)
    best = mc.train_magicapture(host, subjects, styles, tools, "lk_sub2", "lk_sty2", config)
    last = mc.train_magicapture(host, subjects, styles, tools, "lk_sub3", "lk_sty3", replace(config, keep_best=False))
    kept, final = lora.read_kohya(best.lora_path), lora.read_kohya(last.lora_path)
    assert not all(torch.equal(kept[n][1], final[n][1]) for n in kept), "step 1's LoRA, not the last step's"
    assert not torch.equal(best.subject.vectors["clip_l"], last.subject.vectors["clip_l"])
    with safe_open(str(best.lora_path), "pt") as f:
        assert f.metadata()["anybody.likeness.best_step"] == "1"


def test_likeness_renders_at_the_papers_inference_strengths():
    module = torch.nn.Sequential(torch.nn.Linear(4, 4))
    adapters = {"unet": lora.build(module, "unet", ["0"]), "te": lora.build(module, "unet", ["0"])}
    seen = []

    def probe():
        seen.append([m.scale for tree in ("unet", "te") for m in adapters[tree].modules() if isinstance(m, lora.LoRA)])
        return "scored"

    assert mc._at_inference_strengths(adapters, probe)() == "scored"
    assert seen == [[mc.STRENGTHS["unet"], mc.STRENGTHS["text"]]]
    assert [m.scale for t in adapters.values() for m in t.modules() if isinstance(m, lora.LoRA)] == [1.0, 1.0]
