"""The user's FLAME/DECA/DiffusionRig files in their official layouts (random values, written by the tests): they
load without chumpy and without the full unpickler, are cached once, and bad files fail with clear errors."""
import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from anybody.errors import ModelFileError
from anybody.nets.converted import cache_path
from anybody.rig import assets
from anybody.rig.codes import CODE_SIZE, FaceCode
from anybody.rig.deca import DecaEncoder, load_deca
from anybody.rig.model_file import RigInfo, read_mean_shape, read_model, save_model
from anybody.rig.unet import TINY, DiffusionRig
from test_rig_geometry import icosphere


def chumpy_module():
    """A stand-in ``chumpy.ch`` module so the test can write pickles that name ``chumpy.ch.Ch`` as FLAME's do."""
    module = types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x = np.asarray(x, np.float64)
            self._dirty_vars, self._itr, self._depends_on_deps = set(), None, {}

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    module.Ch = Ch
    return module


def write_flame(path, v_template, faces, seed=0):
    """A FLAME-2020-layout pickle: chumpy arrays, a scipy CSC joint regressor, the kintree's unsigned root."""
    import scipy.sparse

    rng = np.random.default_rng(seed)
    n = len(v_template)
    weights = rng.random((n, 5))
    regressor = rng.random((5, n)) * (rng.random((5, n)) < 0.3)
    regressor[:, 0] += 1e-3
    module = chumpy_module()
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = types.ModuleType("chumpy"), module
    try:
        model = {"v_template": module.Ch(v_template), "f": np.asarray(faces, np.uint32),
                 "shapedirs": module.Ch(rng.normal(size=(n, 3, 400)) * 1e-3),
                 "posedirs": rng.normal(size=(n, 3, 36)) * 1e-3,
                 "J_regressor": scipy.sparse.csc_matrix(regressor / regressor.sum(1, keepdims=True)),
                 "weights": module.Ch(weights / weights.sum(1, keepdims=True)),
                 "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.int64),
                 "bs_style": "lbs", "bs_type": "lrotmin"}
        with open(path, "wb") as f:
            pickle.dump(model, f, protocol=2)
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]
    return model


def write_obj(path, verts, faces, uv):
    lines = [f"v {x} {y} {z}" for x, y, z in verts.tolist()] + [f"vt {u} {v}" for u, v in uv.tolist()]
    lines += [f"f {a + 1}/{a + 1} {b + 1}/{b + 1} {c + 1}/{c + 1}" for a, b, c in faces.tolist()]
    path.write_text("\n".join(lines) + "\n")


def write_landmarks(path, n_faces, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = {"static_lmk_faces_idx": torch.randint(0, n_faces, (51,), generator=g),  # torch, as in DECA's file
            "static_lmk_bary_coords": torch.softmax(torch.randn(51, 3, generator=g), 1),
            "dynamic_lmk_faces_idx": np.zeros((79, 17), np.int64), "dynamic_lmk_bary_coords": np.zeros((79, 17, 3)),
            "full_lmk_faces_idx": np.zeros((1, 68), np.int64), "full_lmk_bary_coords": np.zeros((1, 68, 3))}
    np.save(path, data, allow_pickle=True)
    return data


def write_texture(path, side=16, components=60, seed=0):
    rng = np.random.default_rng(seed)
    np.savez(path, mean=rng.random((1, side * side * 3)) * 255, tex_dir=rng.normal(size=(side, side, 3, components)))


@pytest.fixture
def user_files(tmp_path):
    verts, faces = icosphere(2)
    uv = (verts[:, :2] / 1.6 + 0.5).numpy()
    flame_dir, deca_dir = tmp_path / "flame", tmp_path / "deca"
    flame_dir.mkdir(), deca_dir.mkdir()
    files = {"flame": flame_dir / assets.FLAME_MODEL, "texture": flame_dir / assets.FLAME_TEXTURE,
             "obj": deca_dir / assets.HEAD_TEMPLATE, "landmarks": deca_dir / assets.LANDMARKS}
    files["model"] = write_flame(files["flame"], verts.numpy(), faces.numpy())
    write_texture(files["texture"])
    write_obj(files["obj"], verts, faces, uv)
    write_landmarks(files["landmarks"], len(faces))
    return files


def load(files):
    return assets.load_head(files["flame"], files["texture"], files["obj"], files["landmarks"])


def test_flame_pickle_loads_without_chumpy_and_matches_its_arrays(user_files):
    assert "chumpy" not in sys.modules
    head = load(user_files)
    model = user_files["model"]
    flame = head.flame
    assert torch.allclose(flame.v_template, torch.tensor(model["v_template"].x, dtype=torch.float32))
    dirs = model["shapedirs"].x
    assert torch.allclose(flame.blendshapes, torch.tensor(np.concatenate([dirs[..., :100], dirs[..., 300:350]], -1),
                                                          dtype=torch.float32))
    assert torch.allclose(flame.j_regressor, torch.tensor(model["J_regressor"].toarray(), dtype=torch.float32))
    assert flame.parents == [-1, 0, 1, 1, 1]
    assert torch.equal(flame.faces, torch.tensor(model["f"].astype(np.int64)))
    assert cache_path(user_files["flame"]).is_file() and cache_path(user_files["texture"]).is_file()


def test_protocol_zero_pickles_load_too(user_files, tmp_path):
    model = user_files["model"]
    module = chumpy_module()
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = types.ModuleType("chumpy"), module
    try:
        old = {k: module.Ch(v.x) if hasattr(v, "x") else v for k, v in model.items()}
        path = tmp_path / "old" / assets.FLAME_MODEL
        path.parent.mkdir()
        path.write_bytes(pickle.dumps(old, protocol=0))
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]
    assert torch.allclose(assets._flame_tensors(path)["v_template"],
                          torch.tensor(model["v_template"].x, dtype=torch.float32))


def test_second_load_reads_the_caches_not_the_pickles(user_files, monkeypatch):
    first = load(user_files)

    def refuse(*a, **k):
        raise AssertionError("the pickle was read again")

    monkeypatch.setattr(assets, "_flame_tensors", refuse)
    monkeypatch.setattr(assets, "_texture_tensors", refuse)
    second = load(user_files)
    assert torch.equal(first.flame.blendshapes, second.flame.blendshapes)
    assert torch.equal(first.tex_basis, second.tex_basis)
    # a different FLAME file under the same name is converted again, not served from the stale cache
    write_flame(user_files["flame"], user_files["model"]["v_template"].x * 2, user_files["model"]["f"], seed=1)
    with pytest.raises(AssertionError, match="read again"):
        load(user_files)


def test_texture_keeps_fifty_components_and_names_the_wrong_basis(user_files, tmp_path):
    head = load(user_files)
    assert head.tex_basis.shape == (16 * 16 * 3, 50) and head.tex_mean.shape == (16 * 16 * 3,)
    bfm = tmp_path / "FLAME_albedo_from_BFM.npz"
    np.savez(bfm, MU=np.zeros(12), PC=np.zeros((12, 3)))
    with pytest.raises(ModelFileError, match="BFM-derived albedo.*FLAME texture space"):
        assets.load_head(user_files["flame"], bfm, user_files["obj"], user_files["landmarks"])


def test_head_renders_the_fitted_sphere_where_the_camera_puts_it(user_files):
    head = load(user_files)
    code = FaceCode.split(torch.zeros(2, CODE_SIZE))
    code.cam[:] = torch.tensor([0.5, 0.0, 0.0])
    code.light[:, 0] = 1.0
    code.cam[1, 1] = 0.5  # the second head moved right by half its radius
    full = torch.diag(torch.tensor([224 / 256, 224 / 256, 1.0])).expand(2, 3, 3)
    buffers = head.buffers(code, code, full)
    alpha = buffers["alpha"][:, 0]
    cols = alpha.nonzero()[:, 2].float()
    centre = [cols[alpha.nonzero()[:, 0] == i].mean().item() for i in range(2)]
    assert abs(centre[0] - 127.5) < 1.5 and abs(centre[1] - (127.5 + 0.25 * 128)) < 1.5
    assert buffers["albedo"].abs().sum() > 0 and torch.isfinite(buffers["rendered"]).all()


def test_a_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"

    class Shell:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    class Eval:
        def __reduce__(self):
            return eval, (f"open({str(marker)!r}, 'w')",)

    for payload in ({"v_template": Shell()}, {"x": Eval()}):
        path = tmp_path / assets.FLAME_MODEL
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
        with pytest.raises(ModelFileError, match="not loaded \\(nothing in it was run\\)"):
            assets._flame_tensors(path)
    assert not marker.exists()


def test_missing_and_damaged_files_say_where_they_go(user_files, tmp_path):
    with pytest.raises(ModelFileError, match=r"generic_model.pkl not found.*models/flame/.*flame.is.tue.mpg.de"):
        assets.load_head(tmp_path / "nope.pkl", user_files["texture"], user_files["obj"], user_files["landmarks"])
    with pytest.raises(ModelFileError, match=r"landmark_embedding.npy not found.*models/deca/"):
        assets.load_head(user_files["flame"], user_files["texture"], user_files["obj"], tmp_path / "x.npy")
    truncated = tmp_path / "flame2" / assets.FLAME_MODEL
    truncated.parent.mkdir()
    truncated.write_bytes(user_files["flame"].read_bytes()[:5000])
    with pytest.raises(ModelFileError, match="truncated or damaged"):
        assets.load_head(truncated, user_files["texture"], user_files["obj"], user_files["landmarks"])
    bad_obj = tmp_path / "bad.obj"
    bad_obj.write_text("v 0 0 0\nvt 0 0\nf 1 2 3 4\n")
    with pytest.raises(ModelFileError, match="line 3.*triangle"):
        assets.read_obj(bad_obj)


def test_deca_encoder_loads_from_its_tar_and_reproduces_the_code(tmp_path):
    torch.manual_seed(0)
    encoder = DecaEncoder().eval()
    path = tmp_path / assets.DECA_MODEL
    torch.save({"E_flame": encoder.state_dict(), "E_detail": {"fc.weight": torch.zeros(2, 2)}}, path)
    loaded = load_deca(path)
    crop = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded(crop), encoder(crop)) and loaded(crop).shape == (1, CODE_SIZE)
    older = {k: v for k, v in encoder.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"E_flame": older}, path)  # saved by a PyTorch before BatchNorm counted its steps
    with torch.no_grad():
        assert torch.equal(load_deca(path)(crop), encoder(crop))
    torch.save({"E_detail": {}}, path)
    with pytest.raises(ModelFileError, match="no 'E_flame'.*DECA"):
        load_deca(path)
    state = encoder.state_dict()
    del state["layers.2.bias"]
    torch.save({"E_flame": state}, path)
    with pytest.raises(ModelFileError, match="1 missing.*layers.2.bias"):
        load_deca(path)


def tiny_rig(seed=0):
    torch.manual_seed(seed)
    model = DiffusionRig(TINY).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return model


def test_official_pt_and_our_safetensors_round_trip(tmp_path):
    model = tiny_rig()
    official = tmp_path / "model005000.pt"
    torch.save(model.state_dict(), official)
    x, t, buffers, photo = torch.randn(1, 3, 32, 32), torch.tensor([500]), torch.randn(1, 9, 32, 32), torch.rand(1, 3, 32, 32)
    loaded, info = read_model(official, image_size=32)
    with torch.no_grad():
        assert torch.equal(loaded(x, t, buffers, photo), model(x, t, buffers, photo))
    assert info.stage is None and info.mean_shape is None
    shape = torch.randn(1, 100)
    ours = save_model(tmp_path / "alice.safetensors", loaded, RigInfo(stage=2, mean_shape=shape))
    again, info = read_model(ours)
    assert info.stage == 2 and torch.allclose(info.mean_shape, shape, atol=1e-6)
    assert "stage 2" in info.describe() and info.extra["anybody.texture_basis"] == "FLAME"
    with torch.no_grad():
        assert torch.equal(again(x, t, buffers, photo), model(x, t, buffers, photo))


def test_a_model_file_with_wrong_keys_is_refused(tmp_path):
    state = tiny_rig().state_dict()
    del state["denoisingUNet.out.2.weight"]
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(ModelFileError, match="broken.pt.*no UNet layout matches.*adobe-research"):
        read_model(path, image_size=32)
    torch.save({"unet.weight": torch.zeros(1)}, path)
    with pytest.raises(ModelFileError, match="not a DiffusionRig checkpoint"):
        read_model(path)
    with pytest.raises(ModelFileError, match="not found.*adobe-research/diffusion-rig"):
        read_model(tmp_path / "missing.pt")


def test_official_mean_shape_pickle(tmp_path):
    shape = torch.randn(1, 100)
    path = tmp_path / "mean_shape.pkl"
    with open(path, "wb") as f:
        pickle.dump(shape, f)
    assert torch.equal(read_mean_shape(path), shape)
    with open(path, "wb") as f:
        pickle.dump(torch.randn(1, 50), f)
    with pytest.raises(ModelFileError, match="50 values, expected 100"):
        read_mean_shape(path)
    # an official stage-2 model with its mean shape beside it, renamed <model>.mean_shape.pkl
    official = tmp_path / "alice005000.pt"
    torch.save(tiny_rig().state_dict(), official)
    assert read_model(official, image_size=32)[1].mean_shape is None
    with open(tmp_path / "alice005000.mean_shape.pkl", "wb") as f:
        pickle.dump(shape, f)
    info = read_model(official, image_size=32)[1]
    assert info.stage == 2 and torch.equal(info.mean_shape, shape)
