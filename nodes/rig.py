"""RigRender (Anybody) and its loaders and trainer: DiffusionRig's physical buffers and edits of a face photo.

DiffusionRig is its own 256 px pixel-space model, not Stable Diffusion: these nodes load it from models/diffusionrig,
FLAME from models/flame and DECA from models/deca, and run it on ComfyUI's device after asking ComfyUI to free the
memory it needs (the graph's SD model is unloaded while stage 2 trains; ComfyUI loads it again when next used).
"""
from __future__ import annotations

import functools
import logging
import os

from .curve_ui import curve_images
from .folders import register_model_folder

RIG_FOLDER, FLAME_FOLDER, DECA_FOLDER = "diffusionrig", "flame", "deca"


def _register_folders() -> None:
    register_model_folder(RIG_FOLDER, {".pt", ".pth", ".safetensors"})
    register_model_folder(FLAME_FOLDER, {".pkl", ".npz"})
    register_model_folder(DECA_FOLDER, {".tar", ".obj", ".npy"})


_register_folders()


def _files(folder: str, suffix: str, default: str) -> list[str]:
    import folder_paths

    _register_folders()
    found = [f for f in folder_paths.get_filename_list(folder) if f.endswith(suffix)]
    return found or [default]


def _path(folder: str, name: str) -> str:
    import folder_paths

    from ..anybody.errors import ModelFileError
    from ..anybody.rig.assets import SOURCES

    path = folder_paths.get_full_path(folder, name)
    if path is None:
        where = ", ".join(folder_paths.get_folder_paths(folder))
        source = SOURCES.get(os.path.basename(name), (None, "the DiffusionRig README section of the Anybody README"))[1]
        raise ModelFileError(f"'{name}' not found in {where}. Get it from {source} and put it there.")
    return path


class RigAssets:
    """ANYBODY_RIG_ASSETS: the head model (FLAME + texture + template) and DECA's encoder, on the CPU."""

    def __init__(self, head, deca, names: list[str]) -> None:
        self.head, self.deca, self.names = head, deca, names

    def __repr__(self) -> str:
        return f"RigAssets({', '.join(self.names)})"


@functools.lru_cache(maxsize=1)
def _load_assets(paths: tuple[str, ...], stamps: tuple[float, ...]) -> RigAssets:
    from ..anybody.rig.assets import load_rig_files

    return RigAssets(*load_rig_files(*paths), [os.path.basename(p) for p in paths])


class AnybodyRigAssetsLoader:
    CATEGORY = "Anybody/rig"
    FUNCTION = "load"
    RETURN_TYPES = ("ANYBODY_RIG_ASSETS",)
    RETURN_NAMES = ("rig_assets",)
    DESCRIPTION = ("The FLAME head model and DECA's encoder that DiffusionRig's physical buffers are made from. Your "
                   "own files (registration, MPI non-commercial licence): generic_model.pkl and FLAME_texture.npz in "
                   "models/flame (flame.is.tue.mpg.de); deca_model.tar, head_template.obj and landmark_embedding.npy "
                   "in models/deca (github.com/yfeng95/DECA). The FLAME pickle is read without chumpy and converted "
                   "once to a safetensors cache beside it.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "flame_model": (_files(FLAME_FOLDER, ".pkl", "generic_model.pkl"), {"tooltip": "FLAME 2020 generic_model.pkl"}),
            "flame_texture": (_files(FLAME_FOLDER, ".npz", "FLAME_texture.npz"),
                              {"tooltip": "FLAME_texture.npz (the FLAME texture space: what DiffusionRig was trained "
                                          "with, not DECA's BFM albedo)"}),
            "deca_model": (_files(DECA_FOLDER, ".tar", "deca_model.tar"), {"tooltip": "DECA's deca_model.tar"}),
            "head_template": (_files(DECA_FOLDER, ".obj", "head_template.obj"), {"tooltip": "DECA's head_template.obj"}),
            "landmark_embedding": (_files(DECA_FOLDER, ".npy", "landmark_embedding.npy"),
                                   {"tooltip": "DECA's landmark_embedding.npy"}),
        }}

    def load(self, flame_model, flame_texture, deca_model, head_template, landmark_embedding):
        paths = (_path(FLAME_FOLDER, flame_model), _path(FLAME_FOLDER, flame_texture), _path(DECA_FOLDER, deca_model),
                 _path(DECA_FOLDER, head_template), _path(DECA_FOLDER, landmark_embedding))
        return (_load_assets(paths, tuple(os.path.getmtime(p) for p in paths)),)


class RigModel:
    """ANYBODY_RIG_MODEL: a DiffusionRig network (on the CPU between uses), what its file says, and its file."""

    def __init__(self, model, info, path: str, fingerprint: str) -> None:
        self.model, self.info, self.path, self.fingerprint = model, info, path, fingerprint

    def __repr__(self) -> str:
        return f"RigModel({os.path.basename(self.path)}: {self.info.describe()})"


@functools.lru_cache(maxsize=1)
def _load_rig(path: str, mtime: float) -> RigModel:
    from pathlib import Path

    from ..anybody.nets.converted import sha256
    from ..anybody.rig.model_file import read_model

    model, info = read_model(Path(path))
    return RigModel(model.eval().requires_grad_(False), info, path, sha256(Path(path))[:16])


class AnybodyRigModelLoader:
    CATEGORY = "Anybody/rig"
    FUNCTION = "load"
    RETURN_TYPES = ("ANYBODY_RIG_MODEL",)
    RETURN_NAMES = ("rig_model",)
    DESCRIPTION = ("A DiffusionRig model from models/diffusionrig: the official stage-1 .pt (the only one ever "
                   "released; Adobe Research licence, non-commercial) or a personalised model RigPersonalize wrote.")

    @classmethod
    def INPUT_TYPES(cls):
        import folder_paths

        _register_folders()
        files = folder_paths.get_filename_list(RIG_FOLDER) or ["model050000.pt"]
        return {"required": {"model_file": (files, {"tooltip": "stage 1 (generic) or stage 2 (personalised)"})}}

    def load(self, model_file):
        path = _path(RIG_FOLDER, model_file)
        rig = _load_rig(path, os.path.getmtime(path))
        logging.info("[Anybody] DiffusionRig %s: %s", model_file, rig.info.describe())
        return (rig,)


def _image_batch(images):
    """ComfyUI IMAGE (B, H, W, C) -> a list of [H, W, 3] tensors."""
    return [images[i] for i in range(len(images))]


class AnybodyRigRender:
    CATEGORY = "Anybody/rig"
    FUNCTION = "render"
    RETURN_TYPES = ("IMAGE", "IMAGE", "IMAGE", "IMAGE", "STRING")
    RETURN_NAMES = ("images", "rendered", "normals", "albedo", "labels")
    OUTPUT_TOOLTIPS = ("the edited photos (256 px, or pasted back into the original photo); without a rig_model, the "
                       "shaded renders", "the Lambertian render of each edit (SH-lit albedo)",
                       "world-space normals shown as (n+1)/2", "the FLAME albedo in the photo's frame",
                       "one line per image: which photo, which edit")
    DESCRIPTION = ("DiffusionRig (CVPR 2023): relight, re-pose and re-express a face photo. DECA fits a FLAME head "
                   "to the photo; its physical buffers (render, normals, albedo) are edited with a target photo's "
                   "light / expression / head pose, or with the sliders, and a DiffusionRig model turns them back "
                   "into a photo (DDIM-20 from one fixed noise, as the paper). Best with a personalised model "
                   "(RigPersonalize); the buffers alone need no DiffusionRig model.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "rig_assets": ("ANYBODY_RIG_ASSETS",),
                "face_model": ("ANYBODY_FACE_MODEL", {"tooltip": "finds and aligns the face (FFHQ 256)"}),
                "image": ("IMAGE", {"tooltip": "the photo(s) to edit; the largest face of each"}),
                "edit_light": ("BOOLEAN", {"default": True, "tooltip": "with a target: take its lighting"}),
                "edit_expression": ("BOOLEAN", {"default": True, "tooltip": "with a target: its expression and jaw"}),
                "edit_pose": ("BOOLEAN", {"default": True, "tooltip": "with a target: its head rotation"}),
                "edit_latent": ("BOOLEAN", {"default": False, "tooltip": "with a target: its global latent "
                                                                         "(appearance the 3D model cannot express)"}),
                "yaw": ("FLOAT", {"default": 0.0, "min": -60.0, "max": 60.0, "step": 1.0,
                                  "tooltip": "sliders: turn the head left/right (degrees)"}),
                "pitch": ("FLOAT", {"default": 0.0, "min": -45.0, "max": 45.0, "step": 1.0}),
                "roll": ("FLOAT", {"default": 0.0, "min": -45.0, "max": 45.0, "step": 1.0}),
                "jaw_open": ("FLOAT", {"default": 0.0, "min": -5.0, "max": 30.0, "step": 1.0}),
                "expression_scale": ("FLOAT", {"default": 1.0, "min": -1.0, "max": 3.0, "step": 0.05,
                                               "tooltip": "0: neutral face, 1: the photo's, 2: exaggerated"}),
                "light_azimuth": ("FLOAT", {"default": 0.0, "min": -180.0, "max": 180.0, "step": 5.0,
                                            "tooltip": "a new key light's direction: + from the subject's left side "
                                                       "of the image (image right)"}),
                "light_elevation": ("FLOAT", {"default": 0.0, "min": -90.0, "max": 90.0, "step": 5.0}),
                "light_strength": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 3.0, "step": 0.05,
                                             "tooltip": "0: keep the photo's light; >0: that key light, relative to "
                                                        "the ambient"}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                 "tooltip": "the one noise every edit starts from"}),
                "paste_back": ("BOOLEAN", {"default": False, "tooltip": "put each 256 px edit back into its "
                                                                        "original photo"}),
            },
            "optional": {
                "rig_model": ("ANYBODY_RIG_MODEL", {"tooltip": "from RigModelLoader or RigPersonalize"}),
                "target_image": ("IMAGE", {"tooltip": "whose light / expression / pose the edits take"}),
            },
        }

    def render(self, rig_assets, face_model, image, edit_light, edit_expression, edit_pose, edit_latent, yaw, pitch,
               roll, jaw_open, expression_scale, light_azimuth, light_elevation, light_strength, seed, paste_back,
               rig_model=None, target_image=None):
        import comfy.model_management as mm
        import comfy.utils
        import torch

        from ..anybody.rig.pipeline import Sliders, buffer_pictures, edit_photos

        device = mm.get_torch_device()
        modes = [m for m, on in (("light", edit_light), ("exp", edit_expression), ("pose", edit_pose),
                                 ("latent", edit_latent)) if on]
        sliders = Sliders(yaw, pitch, roll, jaw_open, expression_scale, light_azimuth, light_elevation, light_strength)
        model = rig_model.model if rig_model is not None else None
        bar = comfy.utils.ProgressBar(1)

        def step(done, total):
            mm.throw_exception_if_processing_interrupted()
            bar.update_absolute(done, total)

        needed = 1 << 30 if model is None else 12 * sum(p.numel() for p in model.parameters())
        mm.free_memory(needed, device)
        try:
            result = edit_photos(rig_assets.head, rig_assets.deca, face_model, _image_batch(image),
                                 _image_batch(target_image) if target_image is not None else None, modes, sliders,
                                 model, rig_model.info.mean_shape if rig_model is not None else None, seed, device,
                                 paste=paste_back, on_step=step)
        finally:
            mm.soft_empty_cache()
        if not result.sampled:
            logging.info("[Anybody] RigRender: no rig_model connected, so 'images' are the shaded renders")
        images = torch.stack([torch.from_numpy(i) for i in result.images])
        labels = "\n".join(result.labels)
        pictures = {k: v.permute(0, 2, 3, 1).cpu().float() for k, v in buffer_pictures(result.buffers).items()}
        return {"ui": {"text": [labels]},
                "result": (images, pictures["rendered"], pictures["normals"], pictures["albedo"], labels)}


class AnybodyRigPersonalize:
    CATEGORY = "Anybody/rig"
    FUNCTION = "train"
    OUTPUT_NODE = True
    RETURN_TYPES = ("ANYBODY_RIG_MODEL", "STRING")
    RETURN_NAMES = ("rig_model", "model_path")
    OUTPUT_TOOLTIPS = ("the personalised model, for RigRender", "its file in models/diffusionrig")
    DESCRIPTION = ("DiffusionRig stage 2: fine-tunes a stage-1 model on ~20 photos of one person (the paper: 5,000 "
                   "steps, batch 4, lr 1e-5; ~30 min on a V100). The album's buffers are made once with its mean "
                   "face shape, which the model file keeps. The graph's SD model is unloaded from the GPU while it "
                   "trains. Progress is saved; cancel and queue again to continue.")

    @classmethod
    def INPUT_TYPES(cls):
        from ..anybody.rig.personalize import Stage2Settings

        paper = Stage2Settings()
        return {
            "required": {
                "rig_assets": ("ANYBODY_RIG_ASSETS",),
                "face_model": ("ANYBODY_FACE_MODEL",),
                "rig_model": ("ANYBODY_RIG_MODEL", {"tooltip": "the stage-1 model to start from"}),
                "images": ("IMAGE", {"tooltip": "about 20 photos of the person, varied light, pose and expression"}),
                "name": ("STRING", {"default": "my_face", "tooltip": "models/diffusionrig/<name>.safetensors"}),
                "steps": ("INT", {"default": paper.steps, "min": 1, "max": 100000, "tooltip": "paper: 5000"}),
                "batch": ("INT", {"default": paper.batch, "min": 1, "max": 64, "tooltip": "paper: 4"}),
                "learning_rate": ("FLOAT", {"default": paper.lr, "min": 1e-7, "max": 1e-3, "step": 1e-6,
                                            "tooltip": "paper: 1e-5"}),
                "seed": ("INT", {"default": paper.seed, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
                "save_every": ("INT", {"default": paper.save_every, "min": 0, "max": 100000}),
                "preview_every": ("INT", {"default": paper.preview_every, "min": 0, "max": 100000}),
                "saved_progress": (["resume", "start over"], {"default": "resume"}),
                "overwrite": ("BOOLEAN", {"default": False}),
                "fp16": ("BOOLEAN", {"default": True, "tooltip": "on a CUDA GPU, compute in fp16 with loss scaling "
                                                                  "(as the official script); ignored on a CPU"}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def train(self, rig_assets, face_model, rig_model, images, name, steps, batch, learning_rate, seed, save_every,
              preview_every, saved_progress, overwrite, fp16, unique_id=None):
        from pathlib import Path

        import comfy.model_management as mm
        import folder_paths

        from ..anybody.host.comfy import ComfySink
        from ..anybody.rig.personal_model import train_personal_model
        from ..anybody.rig.personalize import Stage2Settings

        if rig_model.info.stage == 2:
            logging.warning("[Anybody] RigPersonalize starts from a stage-2 (already personalised) model")
        settings = Stage2Settings(steps=steps, batch=batch, lr=learning_rate, seed=seed, save_every=save_every,
                                  preview_every=preview_every)
        device = mm.get_torch_device()
        mm.unload_all_models()  # the SD model comes back by itself when a sampler next needs it
        mm.soft_empty_cache()
        out_dir = Path(folder_paths.get_folder_paths(RIG_FOLDER)[0])
        state_dir = Path(folder_paths.get_output_directory()) / "anybody_training"
        sink = ComfySink(unique_id)
        try:
            result = train_personal_model(rig_model.model, rig_model.fingerprint, rig_assets.head, rig_assets.deca,
                                          face_model, _image_batch(images), name, settings, out_dir, state_dir, sink,
                                          device, resume=saved_progress == "resume",
                                          restart=saved_progress == "start over", overwrite=overwrite, half=fp16)
        finally:
            rig_assets.deca.to("cpu")
            mm.soft_empty_cache()
        model = result.model.to("cpu")
        rig = RigModel(model, result.info, str(result.path), rig_model.fingerprint)
        text = f"{result.path.name}: {result.info.describe()}" + (" (already trained: loaded)" if result.reused else "")
        images_ui = curve_images([state_dir / f"rig.{result.path.stem}.loss.csv"], ["stage 2 loss"])
        return {"ui": {"text": [text], "images": images_ui}, "result": (rig, str(result.path))}
