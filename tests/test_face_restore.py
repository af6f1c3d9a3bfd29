"""CodeFormer post-processing: the geometry of crop and paste-back, the blend mask, and the weight file checks.

The network itself is spandrel-extra-arches' CodeFormer, which needs torchvision; the real-ComfyUI host test runs
the node with it (random weights in the official file layout). Here a restorer that returns its input proves the
geometry: restoring nothing must give exactly the bilinear upscale the official script uses as background.
"""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anybody.errors import BadInputError, ModelFileError
from anybody.face import restore
from anybody.face.templates import FFHQ_512

DEMO_FACE = Path(__file__).parents[1] / "anybody" / "assets" / "demo_face.jpg"


def _photo():
    return np.asarray(Image.open(DEMO_FACE).convert("RGB"))


def _landmarks(image, scale=0.3, degrees=10.0):
    """The FFHQ template's five points turned, shrunk and centred in the image: a face fully inside it."""
    turn = np.deg2rad(degrees)
    rotation = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    h, w = image.shape[:2]
    return (FFHQ_512 - 256) @ rotation.T * scale + np.array([w / 2, h / 2])


def _upscaled(image, factor):
    import cv2

    h, w = image.shape[:2]
    return cv2.resize(image, (w * factor, h * factor), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255


def test_restoring_nothing_gives_the_bilinear_upscale():
    image = _photo()
    out = restore.restore_faces(image, [_landmarks(image)], lambda crop: crop.astype(np.float32), upscale=2)
    assert out.shape == (image.shape[0] * 2, image.shape[1] * 2, 3) and out.dtype == np.float32
    diff = np.abs(out - _upscaled(image, 2)) * 255
    assert diff.mean() < 0.2 and diff.max() < 3, "crop and paste-back agree to a fraction of a pixel"


def test_the_restored_face_replaces_the_face_and_nothing_else():
    image = _photo()
    points = _landmarks(image)
    out = restore.restore_faces(image, [points], lambda crop: np.full(crop.shape, 255.0, np.float32), upscale=2)
    background = _upscaled(image, 2)
    nose = np.round(points[2] * 2).astype(int)
    assert np.allclose(out[nose[1] - 10:nose[1] + 10, nose[0] - 10:nose[0] + 10], 1.0), "the face is replaced"
    assert np.array_equal(out[:20, :20], background[:20, :20]), "far from the face the picture is untouched"
    assert np.array_equal(restore.restore_faces(image, [], lambda c: c * 0, 1), image.astype(np.float32) / 255)


def test_the_blend_mask_is_feathered_and_limited_to_the_parsed_face():
    square = restore.blend_mask(512)
    assert square[256, 256] == 1.0 and square[0, 256] == 0.0 and square[256, 511] == 0.0
    assert 0.0 < square[256, 51] < 1.0, "a soft edge"
    face = np.zeros((512, 512), np.float32)
    face[150:400, 150:360] = 1
    both = restore.blend_mask(512, face)
    assert both[270, 255] == pytest.approx(1.0, abs=1e-3) and both[60, 256] < 1e-3 and both[:10].max() == 0
    assert np.all(both <= square + 1e-6)


def test_bad_input_is_refused():
    with pytest.raises(BadInputError, match="upscale"):
        restore.restore_faces(_photo(), [], lambda c: c, upscale=0)
    with pytest.raises(BadInputError, match="RGB"):
        restore.restore_faces(_photo()[..., 0], [], lambda c: c)


def test_weight_files_are_checked_before_the_network_is_built(tmp_path, monkeypatch):
    with pytest.raises(ModelFileError, match="codeformer.pth.*sczhou/CodeFormer"):
        restore.read_codeformer(tmp_path / "codeformer.pth")
    torch.save({"params_ema": {"conv_first.weight": torch.zeros(1)}}, tmp_path / "gfpgan.pth")
    with pytest.raises(ModelFileError, match="not a CodeFormer file.*position_emb"):
        restore.read_codeformer(tmp_path / "gfpgan.pth")
    (tmp_path / "broken.pth").write_bytes(b"not a zip")
    with pytest.raises(ModelFileError, match="cannot be read"):
        restore.read_codeformer(tmp_path / "broken.pth")
    keys = {k: torch.zeros(2) for k in restore.CODEFORMER_KEYS}
    torch.save({"params_ema": keys, "params": {}}, tmp_path / "codeformer.pth")
    assert restore.read_codeformer(tmp_path / "codeformer.pth").keys() == keys.keys(), "the EMA weights are used"
    monkeypatch.setitem(sys.modules, "spandrel_extra_arches", None)  # not installed
    with pytest.raises(ModelFileError, match="pip install spandrel-extra-arches"):
        restore.load_codeformer(tmp_path / "codeformer.pth")
