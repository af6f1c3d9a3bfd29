"""RigRender's steps on tiny parts: a photo fitted by DECA through the pack's face models, edits planned from a
target or sliders, their buffers rendered, and one shared noise sampled into every edit."""
import math

import numpy as np
import pytest
import torch

from anybody.errors import BadInputError
from anybody.rig import assets
from anybody.rig.codes import CODE_SIZE, FaceCode
from anybody.rig.crop import crop_transform
from anybody.rig.deca import DecaEncoder
from anybody.rig.flame import rodrigues
from anybody.rig.pipeline import (RigFit, Sliders, axis_angle, box_in_crop, fit_photos, plan_edits, render_buffers,
                                  sample_edits, slider_edit)
from anybody.rig.unet import DiffusionRig, RigConfig
from face_onnx import build_pack, paint_face
from test_rig_assets import user_files  # noqa: F401  (fixture)

#: a network that runs at 256 px on a CPU: no attention, deepest level 16 px
NO_ATTENTION = RigConfig(image_size=256, base_channels=8, channel_mult=(1, 1, 1, 1, 1), num_res_blocks=1,
                         attention_resolutions=(), latent_dim=8, groups=8)


def test_axis_angle_inverts_rodrigues():
    v = torch.randn(64, 3)
    v = v / v.norm(dim=1, keepdim=True) * torch.rand(64, 1) * 3.0
    assert torch.allclose(axis_angle(rodrigues(v)), v, atol=1e-4)
    assert torch.equal(axis_angle(torch.eye(3)[None]), torch.zeros(1, 3))


def test_axis_angle_keeps_the_axis_of_turns_near_180_degrees():
    """Where sin(angle) fades (a head turned round), the axis still comes back, and at exactly 180 degrees either
    sign is the same rotation."""
    axes = torch.nn.functional.normalize(torch.randn(32, 3, dtype=torch.float64), dim=1)
    for angle in (math.pi / 2, 2.5, math.pi - 1e-3, math.pi - 1e-6):
        v = axes * angle
        assert torch.allclose(axis_angle(rodrigues(v)), v, atol=1e-6), angle
    half_turn = rodrigues(axes * math.pi)
    assert torch.allclose(rodrigues(axis_angle(half_turn)), half_turn, atol=1e-9)
    near = rodrigues(axes.float() * (math.pi - 1e-5))  # poses are float32: the angle must not come from acos there
    assert torch.allclose(rodrigues(axis_angle(near)), near, atol=1e-5)


def test_sliders_turn_open_rescale_and_relight():
    code = FaceCode.split(torch.zeros(1, CODE_SIZE))
    code.light[:, 0] = torch.tensor([0.5, 0.6, 0.7])
    code.light[:, 5] = 0.1
    code.exp[:] = 1.0
    moved = slider_edit(code, Sliders(yaw=30, jaw_open=10, expression_scale=0.5, light_azimuth=90,
                                      light_strength=2.0))
    assert torch.allclose(moved.pose[0, :3], torch.tensor([0, math.radians(30), 0]), atol=1e-6)
    assert abs(moved.pose[0, 3].item() - math.radians(10)) < 1e-6
    assert torch.allclose(moved.exp, torch.full_like(code.exp, 0.5))
    # a light from the subject's right (+x): band 1 (n_x) carries it, bands 2-3 do not, the rest is untouched
    assert torch.allclose(moved.light[0, 1], 2.0 * code.light[0, 0], atol=1e-6)
    assert moved.light[0, 2:4].abs().max() < 1e-6
    assert torch.equal(moved.light[:, [0, 4, 5, 6, 7, 8]], code.light[:, [0, 4, 5, 6, 7, 8]])
    assert torch.equal(slider_edit(code, Sliders()).join(), code.join())


def fit_of(codes: torch.Tensor) -> RigFit:
    batch = len(codes)
    full = torch.diag(torch.tensor([224 / 256, 224 / 256, 1.0])).expand(batch, 3, 3)
    return RigFit(torch.rand(batch, 3, 256, 256), FaceCode.split(codes), full.clone(), [None] * batch)


def sphere_codes(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randn(batch, CODE_SIZE, generator=g) * 0.1
    split = FaceCode.split(codes)
    split.cam[:] = torch.tensor([0.5, 0.0, 0.0])
    split.light[:, 0] = 1.0
    return split.join()


def test_plans_cover_every_mode_and_target():
    source, target = fit_of(sphere_codes(2)), fit_of(sphere_codes(3, seed=1))
    plans = plan_edits(source, target, ["light", "pose", "latent"], Sliders(yaw=10))
    assert len(plans) == 2 * (1 + 3 * 3 + 1)
    assert plans[0].label == "photo 1: reconstruction" and plans[-1].label == "photo 2: sliders"
    assert [p.latent_from_target for p in plans[1:4]] == [False, False, True]
    with pytest.raises(BadInputError, match="light, exp, pose, latent"):
        plan_edits(source, target, ["smile"], Sliders())


def test_light_edit_changes_only_the_shading(user_files):  # noqa: F811
    head = assets.load_head(user_files["flame"], user_files["texture"], user_files["obj"], user_files["landmarks"])
    source, target = fit_of(sphere_codes(1)), fit_of(sphere_codes(1, seed=2))
    target.codes.light[:, 1] = 0.8
    plans = plan_edits(source, target, ["light", "pose"], Sliders())
    buffers = render_buffers(head, source, plans)

    def share_changed(a, b):  # rows of one batch may round differently: a pixel on an edge may flip
        return ((a - b).abs() > 1e-4).float().mean().item()

    assert share_changed(buffers["rendered"][0], buffers["rendered"][1]) > 0.05
    assert share_changed(buffers["normal"][0], buffers["normal"][1]) < 1e-3
    assert share_changed(buffers["albedo"][0], buffers["albedo"][1]) < 1e-3
    assert share_changed(buffers["normal"][0], buffers["normal"][2]) > 0.05


def randomised_rig(seed=0):
    torch.manual_seed(seed)
    model = DiffusionRig(NO_ATTENTION).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "out_layers.3" in name or name.startswith("denoisingUNet.out.2"):
                p.normal_(0, 0.05)
    return model


def test_one_noise_many_edits(user_files):  # noqa: F811
    head = assets.load_head(user_files["flame"], user_files["texture"], user_files["obj"], user_files["landmarks"])
    source, target = fit_of(sphere_codes(1)), fit_of(sphere_codes(1, seed=2))
    target.codes.light[:, 1] = 0.8
    plans = plan_edits(source, target, ["light", "latent"], Sliders())
    buffers = render_buffers(head, source, plans)
    stacked = torch.cat([buffers["rendered"], buffers["normal"], buffers["albedo"]], 1)
    model = randomised_rig()
    seen = []
    images = sample_edits(model, stacked, source, target, plans, seed=7, steps=4, chunk=2,
                          on_step=lambda i, n: seen.append((i, n)))
    assert images.shape == (3, 3, 256, 256) and 0 <= images.min() and images.max() <= 1
    assert seen[-1] == (8, 8)
    assert not torch.allclose(images[0], images[1]) and not torch.allclose(images[0], images[2])
    again = sample_edits(model, stacked, source, target, plans, seed=7, steps=4, chunk=2)
    assert torch.equal(images, again)
    # one plan alone samples exactly what it got inside the batch: the noise is shared, not drawn per edit
    alone = sample_edits(model, stacked[1:2], source, target, plans[1:2], seed=7, steps=4)
    assert (alone[0] - images[1]).abs().mean() < 1e-3  # (batched rounding aside: DDIM with clipping amplifies it)


def test_photo_is_aligned_and_cropped_for_deca(tmp_path):
    from anybody.face.models import load_face_models

    build_pack(tmp_path)
    models = load_face_models("testpack", [tmp_path], "CPU")
    image = np.zeros((320, 320, 3), np.uint8)
    paint_face(image, 160, 160, blue=255)
    torch.manual_seed(0)
    fit = fit_photos(models, DecaEncoder().eval(), [image], "cpu")
    assert fit.photos.shape == (1, 3, 256, 256) and fit.codes.join().shape == (1, CODE_SIZE)
    box = box_in_crop(fit.aligned[0])
    assert torch.allclose(fit.crop_from_photo, crop_transform(torch.tensor(box[None], dtype=torch.float32)))
    # the box sits around the aligned face: its centre near the FFHQ 256 template's face centre
    centre = (box[:2] + box[2:]) / 2
    assert abs(centre[0] - 128) < 20 and 100 < centre[1] < 170
    with pytest.raises(BadInputError, match="No face found"):
        fit_photos(models, DecaEncoder().eval(), [np.zeros((64, 64, 3), np.uint8)], "cpu")


def test_album_buffers_are_not_centred_as_the_release_trains(user_files):  # noqa: F811
    """Stage-2 training data is rendered with the mean shape and no FFHQ-centre shift (the release shifts only at
    inference); with the photo's own shape the two agree."""
    from anybody.rig.personal_model import album_buffers

    head = assets.load_head(user_files["flame"], user_files["texture"], user_files["obj"], user_files["landmarks"])
    source = fit_of(sphere_codes(2))
    plans = plan_edits(source, None, [], Sliders())
    mean_shape = torch.randn(1, 100) * 3.0
    trained = album_buffers(head, source, mean_shape)
    uncentred = render_buffers(head, source, plans, mean_shape, centre=False)
    centred = render_buffers(head, source, plans, mean_shape)
    assert torch.equal(trained[:, 3:6], uncentred["normal"]) and not torch.equal(trained[:, 3:6], centred["normal"])
    own = render_buffers(head, source, plans)
    assert torch.allclose(own["normal"], render_buffers(head, source, plans, centre=False)["normal"], atol=1e-5)
