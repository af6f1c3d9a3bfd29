"""The user's FLAME and DECA files -> :class:`HeadModel`.

None of these files may be bundled or downloaded for the user: FLAME and DECA are released after a registration
under MPI's non-commercial licence. Each missing file is an error that names it, the folder it goes in and where to
get it. The two slow files — FLAME's chumpy pickle and the 1.2 GB texture space, of which DiffusionRig uses 50
components — are converted once and cached beside themselves as safetensors.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import ModelFileError
from ..nets.converted import converted_tensors
from .flame import EXPRESSION_COLUMNS, IDENTITY_COLUMNS, Flame, FlameArrays
from .head import HeadModel
from .pickles import as_array, load_restricted

FLAME_MODEL, FLAME_TEXTURE = "generic_model.pkl", "FLAME_texture.npz"
DECA_MODEL, HEAD_TEMPLATE, LANDMARKS = "deca_model.tar", "head_template.obj", "landmark_embedding.npy"
#: file -> (models/ sub-folder, where to get it)
SOURCES = {
    FLAME_MODEL: ("flame", "the 'FLAME 2020' download at https://flame.is.tue.mpg.de (free registration; MPI "
                           "non-commercial licence)"),
    FLAME_TEXTURE: ("flame", "the 'FLAME texture space' download at https://flame.is.tue.mpg.de (same account and "
                             "licence; DiffusionRig uses this basis, not DECA's FLAME_albedo_from_BFM.npz)"),
    DECA_MODEL: ("deca", "DECA (https://github.com/yfeng95/DECA): the model file its README links, after registering "
                         "for FLAME (MPI non-commercial licence)"),
    HEAD_TEMPLATE: ("deca", "DECA's data folder (https://github.com/yfeng95/DECA, data/head_template.obj)"),
    LANDMARKS: ("deca", "DECA's data folder (https://github.com/yfeng95/DECA, data/landmark_embedding.npy)"),
}
TEXTURE_COMPONENTS = 50


def where(name: str) -> str:
    folder, source = SOURCES[name]
    return f"Put {name} in ComfyUI/models/{folder}/ (A1111: models/{folder}/). Get it from {source}."


def require(path: Path, name: str) -> Path:
    if not path.is_file():
        raise ModelFileError(f"{name} not found: {path}. {where(name)}")
    return path


def _flame_tensors(path: Path) -> dict[str, torch.Tensor]:
    """FLAME 2020's arrays from the pickle, DECA's 150 blendshape columns only."""
    model = load_restricted(path, "the FLAME model", where(FLAME_MODEL))
    if not isinstance(model, dict):
        raise ModelFileError(f"{path.name} holds a {type(model).__name__}, not FLAME's dictionary. {where(FLAME_MODEL)}")
    wanted = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table")
    missing = [k for k in wanted if k not in model]
    if missing:
        raise ModelFileError(f"{path.name} has no {', '.join(missing)}: not a FLAME model file. {where(FLAME_MODEL)}")
    arrays = {k: np.asarray(as_array(model[k], k, path)) for k in wanted}
    verts = len(arrays["v_template"])
    expected = {"v_template": (verts, 3), "posedirs": (verts, 3, 36), "J_regressor": (5, verts),
                "weights": (verts, 5), "kintree_table": (2, 5)}
    for key, shape in expected.items():
        if arrays[key].shape != shape:
            raise ModelFileError(f"{path.name}: {key} is {arrays[key].shape}, expected {shape} (FLAME 2020). "
                                 f"{where(FLAME_MODEL)}")
    dirs = arrays["shapedirs"]
    if dirs.shape[:2] != (verts, 3) or dirs.shape[2] < EXPRESSION_COLUMNS.stop:
        raise ModelFileError(f"{path.name}: shapedirs is {dirs.shape}, expected ({verts}, 3, 400) as in FLAME 2020 "
                             f"(300 identity + 100 expression components). {where(FLAME_MODEL)}")
    dirs = np.concatenate([dirs[..., IDENTITY_COLUMNS], dirs[..., EXPRESSION_COLUMNS]], -1)
    parents = arrays["kintree_table"][0].astype(np.int64)
    parents[0] = -1  # the file stores the root's parent as a large unsigned number
    return {"v_template": torch.from_numpy(arrays["v_template"]).float(),
            "faces": torch.from_numpy(arrays["f"].astype(np.int64)),
            "shapedirs": torch.from_numpy(np.ascontiguousarray(dirs)).float(),
            "posedirs": torch.from_numpy(arrays["posedirs"]).float(),
            "j_regressor": torch.from_numpy(arrays["J_regressor"]).float(),
            "weights": torch.from_numpy(arrays["weights"]).float(),
            "parents": torch.from_numpy(parents)}


def read_landmarks(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The 51 static landmarks' faces and barycentric coordinates from DECA's ``landmark_embedding.npy``."""
    data = load_restricted(require(path, LANDMARKS), "DECA's landmark embedding", where(LANDMARKS))
    if not isinstance(data, dict) or not {"static_lmk_faces_idx", "static_lmk_bary_coords"} <= set(data):
        raise ModelFileError(f"{path.name} has no static landmarks (static_lmk_faces_idx, static_lmk_bary_coords). "
                             f"{where(LANDMARKS)}")
    faces = torch.as_tensor(np.asarray(as_array(data["static_lmk_faces_idx"], "static_lmk_faces_idx", path))).long()
    bary = torch.as_tensor(np.asarray(as_array(data["static_lmk_bary_coords"], "static_lmk_bary_coords", path)))
    faces, bary = faces.reshape(-1), bary.reshape(-1, 3).float()
    if len(faces) != 51 or len(bary) != 51:
        raise ModelFileError(f"{path.name}: expected 51 static landmarks, found {len(faces)}. {where(LANDMARKS)}")
    return faces, bary


def read_obj(path: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(faces, uv_coords, uv_faces)`` of a triangle mesh in Wavefront OBJ (1-based ``f v/vt`` indices). The
    renderer draws these faces, as DECA's does; FLAME's own faces place the landmarks."""
    uv, faces, uv_faces = [], [], []
    with open(require(path, HEAD_TEMPLATE), encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                if parts[0] == "vt":
                    uv.append((float(parts[1]), float(parts[2])))
                elif parts[0] == "f":
                    corners = [p.split("/") for p in parts[1:]]
                    if len(corners) != 3 or any(len(c) < 2 or not c[1] for c in corners):
                        raise ValueError("expected a triangle with texture coordinates (f v/vt v/vt v/vt)")
                    faces.append([int(c[0]) - 1 for c in corners])
                    uv_faces.append([int(c[1]) - 1 for c in corners])
            except (ValueError, IndexError) as exc:
                raise ModelFileError(f"{path.name}, line {number}: {exc}. {where(HEAD_TEMPLATE)}") from None
    if not faces or not uv:
        raise ModelFileError(f"{path.name} has no textured faces: not DECA's head template. {where(HEAD_TEMPLATE)}")
    return torch.tensor(faces), torch.tensor(uv, dtype=torch.float32), torch.tensor(uv_faces)


def _texture_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with np.load(path, allow_pickle=False) as space:
            names = set(space.files)
            if not {"mean", "tex_dir"} <= names:
                hint = (" This is DECA's BFM-derived albedo; DiffusionRig was trained with the FLAME texture space."
                        if {"MU", "PC"} <= names else "")
                raise ModelFileError(f"{path.name} has no 'mean'/'tex_dir' arrays.{hint} {where(FLAME_TEXTURE)}")
            mean = space["mean"].reshape(-1)
            basis = space["tex_dir"].reshape(len(mean), -1)[:, :TEXTURE_COMPONENTS]
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{path.name} could not be read ({exc}); it may be damaged. {where(FLAME_TEXTURE)}") from exc
    side = int(round((len(mean) / 3) ** 0.5))
    if side * side * 3 != len(mean) or side % 2 or basis.shape[1] < TEXTURE_COMPONENTS:
        raise ModelFileError(f"{path.name}: a texture of {len(mean)} values and {basis.shape[1]} components is not "
                             f"FLAME's (512 x 512 x 3, 200 components). {where(FLAME_TEXTURE)}")
    return {"mean": torch.from_numpy(mean).float(), "basis": torch.from_numpy(np.ascontiguousarray(basis)).float()}


def load_head(flame_model: Path, texture: Path, head_template: Path, landmarks: Path) -> HeadModel:
    """The head model from the user's four files (FLAME model and texture, DECA's template and landmarks)."""
    flame = converted_tensors(require(flame_model, FLAME_MODEL), _flame_tensors, "FLAME model")
    tex = converted_tensors(require(texture, FLAME_TEXTURE), _texture_tensors, "FLAME texture space")
    faces, uv_coords, uv_faces = read_obj(head_template)
    lmk_faces, lmk_bary = read_landmarks(landmarks)
    verts = len(flame["v_template"])
    if int(faces.max()) >= verts or int(faces.min()) < 0:
        raise ModelFileError(f"{head_template.name} does not match {flame_model.name}: its faces name vertices FLAME "
                             f"does not have ({verts}). Use the head_template.obj from DECA's data folder with FLAME "
                             "2020.")
    if int(lmk_faces.max()) >= len(flame["faces"]):
        raise ModelFileError(f"{landmarks.name} names faces the FLAME mesh does not have. {where(LANDMARKS)}")
    arrays = FlameArrays(v_template=flame["v_template"], faces=flame["faces"], shapedirs=flame["shapedirs"],
                         posedirs=flame["posedirs"], j_regressor=flame["j_regressor"], weights=flame["weights"],
                         parents=flame["parents"], static_lmk_faces=lmk_faces, static_lmk_bary=lmk_bary)
    return HeadModel(Flame(arrays), tex["mean"], tex["basis"], faces, uv_coords, uv_faces)


def load_rig_files(flame_model: Path, texture: Path, deca_model: Path, head_template: Path, landmarks: Path):
    """``(HeadModel, DecaEncoder)``: everything RigRender needs besides the DiffusionRig model."""
    from .deca import load_deca  # deca.py names its file through this module

    return load_head(Path(flame_model), Path(texture), Path(head_template), Path(landmarks)), load_deca(Path(deca_model))
