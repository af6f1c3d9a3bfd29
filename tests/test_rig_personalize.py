"""DiffusionRig stage 2 in the product's own training loop, on a tiny network: the loss falls, only the denoiser
changes, and a run stopped mid-way resumes onto exactly the uninterrupted trajectory."""
import pytest
import torch

from anybody.rig.personalize import Album, Stage2Settings, album_latents, personalize
from anybody.rig.unet import DiffusionRig, RigConfig
from anybody.train.sink import ProgressSink
from anybody.train.state import TrainingState


#: smaller than the shared TINY: these tests run dozens of training steps
SMALL = RigConfig(image_size=16, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
                  latent_dim=8, groups=8)


def tiny_album(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    photos = torch.rand(n, 3, 16, 16, generator=g) * 2 - 1
    buffers = torch.rand(n, 9, 16, 16, generator=g)
    return photos, buffers


def fresh_model(seed=0):
    torch.manual_seed(seed)
    return DiffusionRig(SMALL)


class StopAt(ProgressSink):
    def __init__(self, step=None):
        self.step, self.previews = step, []

    shows_previews = True

    def progress(self, step, total, loss=None, preview=None):
        if preview is not None:
            self.previews.append(preview)
        if step == self.step:
            raise KeyboardInterrupt("stop")

    def log(self, message):
        pass


def album_for(model):
    photos, buffers = tiny_album()
    return Album(photos, buffers, album_latents(model, photos))


def test_stage2_loss_falls_and_only_the_denoiser_trains():
    model = fresh_model()
    album = album_for(model)
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    sink = StopAt()
    losses = personalize(model, album, Stage2Settings(steps=40, lr=2e-3, preview_every=20), sink)
    assert len(losses) == 40
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10
    assert all(torch.equal(v, model.encoder.state_dict()[k]) for k, v in encoder_before.items())
    assert sink.previews and sink.previews[0].shape[-1] == 3 and not model.training


def test_album_latents_are_the_encoder_in_eval_mode():
    model = fresh_model()
    photos, _ = tiny_album()
    model.encoder.train()
    latents = album_latents(model, photos)
    assert model.encoder.training  # left as it was
    with torch.no_grad():
        assert torch.allclose(latents, model.eval().encode(photos), atol=1e-6)


def test_stopped_run_resumes_onto_the_same_trajectory(tmp_path):
    settings = Stage2Settings(steps=8, lr=1e-3, save_every=3, preview_every=0)
    whole = fresh_model()
    personalize(whole, album_for(whole), settings, ProgressSink())

    config = {"steps": 8, "lr": 1e-3}
    first = fresh_model()
    state = TrainingState(tmp_path, "alice", config)
    with pytest.raises(KeyboardInterrupt):
        personalize(first, album_for(first), settings, StopAt(5), state)
    assert state.saved_step() == 5
    second = fresh_model()
    personalize(second, album_for(second), settings, ProgressSink(), TrainingState(tmp_path, "alice", config),
                resuming=True)
    for (k, a), b in zip(whole.state_dict().items(), second.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k
