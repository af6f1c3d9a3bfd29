"""``python -m anybody rig render|personalize`` on the tests' own files: buffers and edits written as PNGs, a
personalised model written once and reused when asked again."""
import importlib

import numpy as np
import pytest
from PIL import Image

from anybody.cli import main
from face_onnx import build_pack, paint_face
from rig_files import write_rig_files


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("rig_cli")
    folders = write_rig_files(root, lambda name: importlib.import_module(f"anybody.{name}"))
    build_pack(root / "insightface")
    photos = root / "photos"
    photos.mkdir()
    for i, (x, y) in enumerate(((160, 160), (144, 176))):
        image = np.full((320, 320, 3), 60 + 40 * i, np.uint8)
        paint_face(image, x, y, blue=255)
        Image.fromarray(image).save(photos / f"p{i}.png")
    common = ["--flame", str(folders["flame"]), "--deca", str(folders["deca"]), "--pack", "testpack",
              "--models-root", str(root / "insightface"), "--provider", "CPU", "--out", str(root / "out")]
    return root, folders, photos, common


def test_render_writes_buffers_then_edits_pasted_back(setup, capsys):
    root, folders, photos, common = setup
    assert main(["rig", "render", str(photos / "p0.png"), "--yaw", "15", *common]) == 0
    out = root / "out" / "rig"
    assert sorted(p.name for p in out.iterdir()) == [f"p0_{k:02d}_{b}.png" for k in range(2)
                                                   for b in ("albedo", "normal", "rendered")]
    assert "p0_01: photo 1: sliders" in capsys.readouterr().out
    assert main(["rig", "render", str(photos / "p0.png"), "--target", str(photos / "p1.png"), "--edits", "light",
                 "--model", str(folders["diffusionrig"] / "stage1.pt"), "--sampling-steps", "2", "--paste-back",
                 "--overwrite", *common]) == 0
    edit = np.asarray(Image.open(out / "p0_01.png"))
    assert edit.shape == (320, 320, 3), "pasted back at the photo's size"


def test_personalize_writes_a_stage2_model_and_reuses_it(setup, capsys):
    root, folders, photos, common = setup
    args = ["rig", "personalize", str(photos), "--name", "alice", "--model", str(folders["diffusionrig"] / "stage1.pt"),
            "--steps", "2", "--batch", "2", *common]
    assert main(args) == 0
    path = root / "out" / "diffusionrig" / "alice.safetensors"
    assert "stage 2 (personalised), with its album mean shape" in capsys.readouterr().out
    stamp = path.stat().st_mtime_ns
    assert main(args) == 0
    assert "already trained: loaded" in capsys.readouterr().out and path.stat().st_mtime_ns == stamp
    assert main([*args[:-len(common)], "--steps", "3", *common]) == 2, "other settings under the same name: refused"
    assert "already exists" in capsys.readouterr().err
