"""The likeness curve: cadence, the kept best step, early stop on a plateau, exact resume, DDIM parity, and the
Cross-Init run that renders and scores its identity with real face models."""
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from anybody.train.engine import StepResult, Trainer
from anybody.train.likeness import Evaluation, LikenessTracker
from anybody.train.sink import ProgressSink
from anybody.train.state import TrainingState


class Cancelled(Exception):
    pass


class Sink(ProgressSink):
    shows_previews = True

    def __init__(self):
        self.logs, self.previews, self.done = [], [], 0

    def progress(self, step, total, loss=None, preview=None):
        self.done = step
        if preview is not None:
            self.previews.append(preview)

    def log(self, message):
        self.logs.append(message)


def _run(folder, steps=12, every=2, patience=0, cancel_at_probe=None, peak=0.5):
    """A tiny regression whose weight walks from 0 toward 1; its 'likeness' peaks where the weight passes ``peak``
    (a synthetic probe: the tracker's logic, not the rendering, is under test here)."""
    weight = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=0.08)
    state = TrainingState(folder, "toy", {"lr": 0.08})
    calls, snapshots = [], {}

    def probe():
        calls.append(float(weight))
        if cancel_at_probe is not None and len(calls) == cancel_at_probe:
            raise Cancelled()
        return Evaluation(1.0 - abs(float(weight) - peak), 1.0)

    tracker = LikenessTracker(every, probe, {"w": weight}, patience)
    begin = state.load({"w": weight}, optimizer, tracker.buffers()) if state.exists() else 0
    sink = Sink()

    def loss_fn(gen):
        return StepResult(((weight - 1.0) ** 2).sum(), preview=lambda: torch.zeros(8, 8, 3))

    trainer = Trainer({"w": weight}, optimizer, loss_fn, sink, steps, seed=0, save_every=3, preview_every=4,
                      state=state, save_minutes=0, likeness=tracker,
                      after_step=lambda: snapshots.__setitem__(len(snapshots) + begin + 1, weight.detach().clone()))
    trainer.run(begin)
    return trainer, tracker, calls, snapshots, sink


def test_cadence_best_step_and_the_curve(tmp_path):
    trainer, tracker, calls, snapshots, sink = _run(tmp_path)
    assert len(calls) == 6 and [s for s, _, _ in tracker.history] == [2, 4, 6, 8, 10, 12]
    best = max(tracker.history, key=lambda h: h[1])
    assert tracker.best_step == best[0] != 12, "the weight passes the peak mid-run"
    assert torch.equal(tracker.best["w"], snapshots[tracker.best_step]), "the best step's tensors, exactly"
    assert any(f"best {tracker.best_likeness:.3f} at step {tracker.best_step}" in line for line in sink.logs)
    rows = (tmp_path / "toy.loss.csv").read_text().splitlines()
    assert rows[0] == "step,loss,average,likeness,face_rate"
    assert rows[4].split(",")[3] == f"{tracker.history[1][1]:.6g}" and rows[3].split(",")[3] == ""
    assert sink.previews[-1].shape[0] == 8 + 160


def test_a_plateau_stops_the_run(tmp_path):
    trainer, tracker, calls, _, sink = _run(tmp_path, steps=40, every=2, patience=2, peak=0.3)
    stop = trainer.stopped_early_at
    assert stop is not None and stop < 40 and tracker.history[-1][0] == stop
    assert [s for s, _, _ in tracker.history if s > tracker.last_improvement] == [stop - 2, stop], "two without gain"
    assert any("Stopped early at step" in line for line in sink.logs)
    assert TrainingState(tmp_path, "toy", {}).saved_step() == stop, "the state of the last step run is saved"


def test_resume_keeps_the_curve_and_the_best_tensors_exactly(tmp_path):
    _, whole, _, _, _ = _run(tmp_path / "whole")
    with pytest.raises(Cancelled):  # the 4th evaluation (step 8) is cancelled: step 8 is saved, not evaluated
        _run(tmp_path / "parts", cancel_at_probe=4)
    assert TrainingState(tmp_path / "parts", "toy", {}).saved_step() == 8
    _, resumed, calls, _, _ = _run(tmp_path / "parts")
    assert len(calls) == 3, "step 8 is evaluated on resume, then 10 and 12"
    assert resumed.history == whole.history and resumed.best_step == whole.best_step
    assert torch.equal(resumed.best["w"], whole.best["w"])


def test_ddim_matches_diffusers_ddim_scheduler(host):
    """Our sampler on the host's denoiser equals diffusers' DDIMScheduler (SD's config: leading spacing, offset 1,
    alpha_0 as the final alpha), guidance included."""
    from diffusers import DDIMScheduler

    from anybody.train.sampling import ddim_sample

    cond = host.encode_prompts(["a photo of a person"])
    uncond = host.encode_prompts([""])
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ours = ddim_sample(host, cond, uncond, noise, steps=5, guidance=4.0)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
    scheduler.set_timesteps(5)
    x = noise.clone()
    both = torch.cat([uncond.context.repeat(2, 1, 1), cond.context.repeat(2, 1, 1)])
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = host.predict(torch.cat([x, x]), torch.full((4,), int(t)), type(cond)(both)).float()
            plain, guided = out.chunk(2)
            x = scheduler.step(plain + 4.0 * (guided - plain), t, x).prev_sample
    assert torch.allclose(ours, x, atol=1e-4), (ours - x).abs().max()


def test_the_cli_host_renders_with_diffusers_ddim_from_its_scheduler_config(host, monkeypatch):
    """The diffusers host's own sampler is diffusers' DDIMScheduler made from the checkpoint's config: it visits SD's
    timesteps, equals our DDIM, and pairs each prompt with its own noise."""
    from diffusers import DDIMScheduler

    from anybody.host.base import Cond
    from anybody.train.sampling import ddim_sample

    visited = []
    real_step = DDIMScheduler.step
    monkeypatch.setattr(DDIMScheduler, "step", lambda self, out, t, x, **k: visited.append(int(t)) or
                        real_step(self, out, t, x, **k))
    cond = host.encode_prompts(["a photo of a person", "an oil painting of a dog"])
    uncond = host.encode_prompts([""])
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    rendered = host.sample_ddim(cond, uncond, noise, steps=5, guidance=4.0)
    assert visited == [801, 601, 401, 201, 1]
    assert torch.allclose(rendered, ddim_sample(host, cond, uncond, noise, 5, 4.0), atol=1e-4)
    alone = host.sample_ddim(Cond(cond.context[1:]), uncond, noise[1:], steps=5, guidance=4.0)
    assert torch.allclose(alone[0], rendered[1], atol=1e-4)


# --- Cross-Init with the curve on: real renders, real face models ------------------------------------------------

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def face_models(tmp_path_factory):
    pytest.importorskip("insightface")
    pytest.importorskip("onnx")
    from face_onnx import build_pack

    from anybody.face.models import load_face_models

    root = tmp_path_factory.mktemp("faces")
    build_pack(root)
    return load_face_models("testpack", [root], "CPU")


def _photos():
    from face_onnx import paint_face

    photos = []
    for blue in (40, 200):
        image = np.full((96, 96, 3), 110, np.uint8)
        paint_face(image, 32, 32, blue=blue)
        photos.append(torch.from_numpy(image).float() / 255)
    return torch.stack(photos)


def test_cross_init_scores_real_renders_at_the_cadence_and_records_the_curve(host, face_models, monkeypatch):
    from safetensors import safe_open

    from anybody.face.score import report_from_embeddings
    from anybody.methods import cross_init as ci
    from anybody.methods import likeness

    renders, probes = [], []
    real_sample = host.sample_ddim

    def counting(*args, **kwargs):
        renders.append(1)
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(host, "sample_ddim", counting)
    real_probe = likeness.identity_probe

    def keep(*args, **kwargs):
        probes.append(real_probe(*args, **kwargs))
        return probes[-1]

    monkeypatch.setattr(ci, "identity_probe", keep)
    config = ci.CrossInitConfig(steps=4, batch=2, resolution=64, save_every=0, preview_every=2, likeness_every=2)
    photos = _photos()
    result = ci.train_cross_init(host, photos, "liken", config, face_models=face_models)
    assert len(renders) == 2, "steps 2 and 4"
    # the last evaluation scored exactly what the face models say of the images it rendered
    (probe,) = probes
    refs = likeness.reference_faces(face_models, list(photos))
    assert len(refs) == 2, "both painted photos have a face"
    generated = []
    from anybody.face.detect import detect_faces
    from anybody.face.pipeline import embed_faces, to_uint8

    for image in probe.last_images:
        rgb = to_uint8(image)
        faces = detect_faces(face_models, rgb)
        generated.append(embed_faces(face_models, rgb, faces) if faces else np.zeros((0, refs.shape[1])))
    expect = report_from_embeddings(generated, refs)
    with safe_open(str(result.path), "pt") as f:
        meta = f.metadata()
    curve = json.loads(meta["anybody.likeness.curve"])
    assert [c[0] for c in curve] == [2, 4]
    assert curve[-1][1] == (None if expect.mean is None else round(expect.mean, 4))
    assert curve[-1][2] == round(expect.face_rate, 3)
    rows = (host.state_dir() / "liken.loss.csv").read_text().splitlines()
    assert rows[0].endswith("likeness,face_rate") and len(rows) == 5


def test_the_curve_needs_a_face_model_and_photos_with_faces(host, face_models):
    from anybody.errors import BadInputError
    from anybody.methods import cross_init as ci

    config = ci.CrossInitConfig(steps=2, batch=1, resolution=64, likeness_every=1)
    with pytest.raises(BadInputError, match="needs a face model"):
        ci.train_cross_init(host, _photos(), "nofaces", config)
    with pytest.raises(BadInputError, match="found no face in any photo"):
        ci.train_cross_init(host, torch.full((1, 64, 64, 3), 0.4), "nofaces", config, face_models=face_models)
    assert host.sink.steps == [], "refused before training"


def test_celeb_basis_scores_every_person_of_a_joint_run(host, face_models, tmp_path, monkeypatch):
    from face_onnx import paint_face
    from safetensors import safe_open

    from anybody.face.recognizer import torch_recognizer
    from anybody.methods import celeb_basis as cb
    from anybody.nets.iresnet import IResNet

    torch.manual_seed(7)
    net = IResNet((1, 1, 1, 1))
    torch.save({k: (v.abs() + 1 if k.endswith("running_var") else v) for k, v in net.state_dict().items()},
               tmp_path / "backbone.pth")
    crops = []
    for blue in (40, 200):
        crop = np.full((64, 64, 3), 110, np.uint8)
        paint_face(crop, 16, 16, blue=blue)
        crops.append(torch.from_numpy(crop).float() / 255)
    people = [cb.Person("cb_la", [crops[0]]), cb.Person("cb_lb", [crops[1]])]
    renders = []
    real = host.sample_ddim
    monkeypatch.setattr(host, "sample_ddim", lambda *a, **k: renders.append(1) or real(*a, **k))
    config = cb.CelebBasisConfig(steps=2, resolution=64, views=2, save_every=0, preview_every=0, likeness_every=2)
    results = cb.train_celeb_basis(host, people, torch_recognizer(tmp_path / "backbone.pth"), config,
                                   face_models=face_models)
    assert 2 <= len(renders) <= 4, "each evaluation renders every person already trained on"
    for result in results:
        with safe_open(str(result.path), "pt") as f:
            curve = json.loads(f.metadata()["anybody.likeness.curve"])
        assert [point[0] for point in curve] == [2, 4]
    assert (host.state_dir() / "celeb_basis.cb_la+cb_lb.loss.csv").read_text().startswith(
        "step,loss,average,likeness,face_rate")


@pytest.mark.parametrize("steps, batch, people", [(320, 8, 1), (25, 8, 1), (400, 2, 1), (300, 2, 1), (800, 2, 2),
                                                  (1500, 1, 1), (40, 64, 1)])
def test_auto_cadence_stays_within_the_budget(steps, batch, people):
    from anybody.methods import likeness

    every = likeness.resolve_every(likeness.AUTO, steps, "cuda", True, batch, people)
    tracker = LikenessTracker(every, None, {})
    evaluations = sum(tracker.due(done, steps) for done in range(1, steps + 1))
    cost = evaluations * likeness.EVALUATION_PASSES * people / (steps * likeness.TRAINING_PASSES_PER_IMAGE * batch)
    assert cost <= likeness.BUDGET
    if every:
        assert every >= steps // 4 and tracker.due(steps, steps), "at most every quarter, and always at the end"
    assert likeness.resolve_every(likeness.AUTO, steps, "cpu", True, batch, people) == 0
    assert likeness.resolve_every(likeness.AUTO, steps, "cuda", False, batch, people) == 0
    assert likeness.resolve_every(7, steps, "cpu", False) == 7
    assert (likeness.resolve_every(likeness.AUTO, 320, "cuda", True, 8), likeness.resolve_every(
        likeness.AUTO, 25, "cuda", True, 8)) == (80, 0), "paper-320: every 80 steps; fast-25: off"


def test_slow_steady_gains_are_not_a_plateau():
    values = iter([0.5 + 0.004 * i for i in range(10)])
    tracker = LikenessTracker(1, lambda: Evaluation(next(values), 1.0), {"w": torch.zeros(1)}, patience=2,
                              min_delta=0.005)
    for step in range(1, 11):
        tracker.evaluate(step)
        assert not tracker.plateaued(), f"gains add up to more than min_delta (step {step})"
    flat = iter([0.5, 0.501, 0.502, 0.503])
    tracker = LikenessTracker(1, lambda: Evaluation(next(flat), 1.0), {"w": torch.zeros(1)}, patience=2,
                              min_delta=0.005)
    stops = []
    for step in range(1, 5):
        tracker.evaluate(step)
        stops.append(tracker.plateaued())
    assert stops == [False, False, True, True] and tracker.best_step == 4, "the best is still the highest"


def test_likeness_options_that_change_nothing_keep_the_result_reusable(host):
    """Off (or auto on the CPU), the likeness options are not part of the result key: files trained before the
    curve existed, or with other such options, are still found and not retrained."""
    from anybody.methods import cross_init as ci

    photos = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    base = ci.CrossInitConfig(steps=1, batch=1, resolution=64, save_every=0, preview_every=0)
    first = ci.train_cross_init(host, photos, "keyed", base)
    assert not first.reused
    for changed in (replace(base, likeness_every=-1), replace(base, likeness_patience=3, keep_best=False)):
        assert ci.train_cross_init(host, photos, "keyed", changed).reused
