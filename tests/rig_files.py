"""The user's DiffusionRig files in their official layouts, written by the tests: FLAME/DECA files for a sphere-shaped
"head", a DECA whose every fit is that sphere in the middle of the photo, and a small stage-1 model that runs at
256 px on a CPU (no attention, deepest level 16 px)."""
from pathlib import Path

import torch

from test_rig_assets import write_flame, write_landmarks, write_obj, write_texture
from test_rig_geometry import icosphere

NO_ATTENTION = dict(image_size=256, base_channels=8, channel_mult=(1, 1, 1, 1, 1), num_res_blocks=1,
                    attention_resolutions=(), latent_dim=8, groups=8)


def write_rig_files(root: Path, modules) -> dict[str, Path]:
    """``modules(name)`` imports ``anybody.<name>`` (the pack's own copy inside a host). Returns the folders."""
    rig, deca_mod, codes = modules("rig.unet"), modules("rig.deca"), modules("rig.codes")
    folders = {name: root / name for name in ("flame", "deca", "diffusionrig")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    verts, faces = icosphere(2)
    write_flame(folders["flame"] / "generic_model.pkl", verts.numpy(), faces.numpy())
    write_texture(folders["flame"] / "FLAME_texture.npz")
    write_obj(folders["deca"] / "head_template.obj", verts, faces, (verts[:, :2] / 1.6 + 0.5).numpy())
    write_landmarks(folders["deca"] / "landmark_embedding.npy", len(faces))
    torch.manual_seed(0)
    deca = deca_mod.DecaEncoder()
    code = codes.FaceCode.split(torch.zeros(1, codes.CODE_SIZE))
    code.cam[:] = torch.tensor([0.5, 0.0, 0.0])
    code.light[:, 0] = 1.0
    with torch.no_grad():
        deca.layers[2].weight.zero_()
        deca.layers[2].bias.copy_(code.join()[0])
    torch.save({"E_flame": deca.state_dict()}, folders["deca"] / "deca_model.tar")
    torch.save(rig.DiffusionRig(rig.RigConfig(**NO_ATTENTION)).state_dict(), folders["diffusionrig"] / "stage1.pt")
    return folders
