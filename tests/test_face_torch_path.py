"""The face path without onnxruntime or insightface: MediaPipe FaceMesh landmarks (ComfyUI's own face model) for
detection, the torch IResNet for recognition.

ComfyUI's MediaPipe model cannot run here (its weights are a download), so a stand-in with the same
``detect_batch`` contract and FaceMesh layout reports the painted test faces; its five points are placed where the
tests' ONNX detector reports them, so both paths must align to the same crop.
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from face_onnx import STRIDE, expected_face, paint_face  # noqa: E402

from anybody.face import mediapipe as mp  # noqa: E402
from anybody.face.models import FaceModels  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class PaintedFaceMesh:
    """``detect_batch`` as ComfyUI's FaceLandmarkerModel has it, over the tests' painted faces: every red cell is a
    face, reported as a 478-point mesh whose iris centres, nose point and mouth corners are the expected 5 points."""

    def __init__(self):
        self.calls = 0

    def detect_batch(self, images, num_faces, score_thresh, variant):
        self.calls += 1
        frames = []
        for rgb in images:
            faces = []
            red = (rgb[..., 0] == 255) & (rgb[..., 1] == 0)
            for y0 in range(0, rgb.shape[0] - STRIDE + 1, STRIDE):
                for x0 in range(0, rgb.shape[1] - STRIDE + 1, STRIDE):
                    if red[y0:y0 + STRIDE, x0:x0 + STRIDE].all():
                        box, five = expected_face(x0, y0, int(rgb[y0, x0, 2]))
                        mesh = np.tile(box.reshape(2, 2).mean(0), (478, 1))
                        mesh[[473, 468, 5, 291, 61]] = five  # subject-side indices: image order must not matter
                        faces.append({"bbox_xyxy": box, "landmarks_xy": mesh, "score": 0.9})
            frames.append(faces[:num_faces or None])
        return frames


def test_five_points_from_the_mesh_irises_or_eye_corners():
    mesh = np.zeros((478, 2))
    mesh[468], mesh[473], mesh[5], mesh[61], mesh[291] = (70, 40), (30, 41), (50, 60), (35, 80), (65, 81)
    mesh[1] = (50, 70)  # the mesh's nose tip: below where 5-point detectors put the nose
    assert mp.five_points(mesh).tolist() == [[30, 41], [70, 40], [50, 60], [35, 80], [65, 81]]
    no_iris = mesh[:468].copy()
    no_iris[33], no_iris[133], no_iris[362], no_iris[263] = (20, 40), (40, 42), (60, 40), (80, 38)
    assert mp.five_points(no_iris)[:2].tolist() == [[30, 41], [70, 39]]
    from anybody.errors import BadInputError

    with pytest.raises(BadInputError, match="468 or 478"):
        mp.five_points(np.zeros((68, 2)))


def _photo():
    """640 x 640: the ONNX stand-in detector's own input size, so its reported face is expected_face's exactly."""
    image = np.full((640, 640, 3), 110, np.uint8)
    paint_face(image, 320, 256, blue=150)
    return image


def test_mediapipe_faces_align_like_the_onnx_detectors(tmp_path):
    pytest.importorskip("insightface")
    pytest.importorskip("onnx")
    from face_onnx import build_pack

    from anybody.face.models import load_face_models
    from anybody.face.pipeline import align_images

    build_pack(tmp_path)
    onnx = load_face_models("testpack", [tmp_path], "CPU")
    mesh = PaintedFaceMesh()
    torch_path = FaceModels("mediapipe", tmp_path, mp.MediaPipeDetector(mesh), None)
    (a,) = align_images(onnx, [_photo()], "ffhq256")
    (b,) = align_images(torch_path, [_photo()], "ffhq256")
    assert np.allclose(a.matrix, b.matrix, atol=1e-3) and np.abs(a.crop.astype(int) - b.crop).max() <= 1
    # the same faces handed over as ComfyUI's FACE_LANDMARKS frame: no detector run at all
    frame = mesh.detect_batch([_photo()], 1, 0.5, "short")[0]
    calls = mesh.calls
    (c,) = align_images(torch_path, [_photo()], "ffhq256", found=[mp.faces_from_landmarks(frame)])
    assert np.allclose(c.matrix, a.matrix, atol=1e-3) and mesh.calls == calls
    blank = np.full((64, 64, 3), 110, np.uint8)
    before = mesh.calls
    assert align_images(torch_path, [blank], "ffhq256", on_no_face="pass_through")[0].face is None
    assert mesh.calls == before + 1, "one detection per image: MediaPipe has its own input size, no retries"


def test_torch_recognizer_serves_scores_and_matching(tmp_path):
    from anybody.face.detect import embed_aligned
    from anybody.face.recognizer import pack_recognizer, torch_recognizer
    from anybody.face.score import identity_report
    from anybody.nets.iresnet import IResNet

    torch.manual_seed(3)
    net = IResNet((1, 1, 1, 1))
    torch.save({k: (v.abs() + 1 if k.endswith("running_var") else v) for k, v in net.state_dict().items()},
               tmp_path / "backbone.pth")
    recognizer = torch_recognizer(tmp_path / "backbone.pth")
    models = FaceModels("mediapipe", tmp_path, mp.MediaPipeDetector(PaintedFaceMesh()), None).with_embedder(recognizer)
    assert pack_recognizer(models) is recognizer and "backbone.pth (torch)" in models.describe()
    crops = [np.random.default_rng(i).integers(0, 255, (112, 112, 3), dtype=np.uint8) for i in range(2)]
    expect = recognizer(torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 127.5 - 1).numpy()
    assert np.allclose(embed_aligned(models, crops), expect, atol=1e-5)
    other = _photo()
    paint_face(other, 96, 96, blue=40)
    report = identity_report(models, [_photo(), other], [_photo()])
    assert report.scores[0] == pytest.approx(1.0, abs=1e-5) and report.face_rate == 1.0


HIDE = """
import importlib.abc, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in ('onnxruntime', 'insightface'):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, Hide())
"""

WITHOUT_ONNX = HIDE + """
import types, importlib.util
from pathlib import Path
root = Path(sys.argv[1])
fake = types.SimpleNamespace(models_dir=str(root / 'models'), folder_names_and_paths={},
                             get_filename_list=lambda name: [], get_folder_paths=lambda name: [],
                             add_model_folder_path=lambda name, path, *a, **k: fake.folder_names_and_paths
                             .setdefault(name, ([], set()))[0].append(path))
sys.modules['folder_paths'] = fake
spec = importlib.util.spec_from_file_location('anybody_pack', root / '__init__.py', submodule_search_locations=[str(root)])
pack = importlib.util.module_from_spec(spec); sys.modules['anybody_pack'] = pack; spec.loader.exec_module(pack)
assert 'AnybodyFaceAlign' in pack.NODE_CLASS_MAPPINGS and 'AnybodyCrossInitTrain' in pack.NODE_CLASS_MAPPINGS
from anybody.errors import ModelFileError
from anybody.face.models import load_face_models
try:
    load_face_models('antelopev2', [root], 'auto')
except ModelFileError as exc:
    print('ERROR:', exc)
sys.path.insert(0, str(root / 'tests'))
from test_face_torch_path import PaintedFaceMesh, _photo
from anybody.face import mediapipe as mp
from anybody.face.models import FaceModels
from anybody.face.pipeline import align_images
(aligned,) = align_images(FaceModels('mediapipe', root, mp.MediaPipeDetector(PaintedFaceMesh()), None), [_photo()])
print('ALIGNED', aligned.crop.shape, 'onnxruntime' in sys.modules, 'insightface' in sys.modules)
"""


def test_the_pack_imports_and_the_torch_path_runs_without_onnxruntime_and_insightface():
    done = subprocess.run([sys.executable, "-c", WITHOUT_ONNX, str(REPO)], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ERROR: insightface packs need onnxruntime and insightface (onnxruntime and insightface not installed)" \
        in done.stdout and "FaceModelFromMediaPipe" in done.stdout
    assert "ALIGNED (512, 512, 3) False False" in done.stdout, done.stdout
