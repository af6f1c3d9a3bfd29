"""Face nodes: load an insightface pack from models/insightface, and FaceAlign (Anybody)."""
from __future__ import annotations

import logging
import os

from ..anybody.face.models import PROVIDERS, list_packs
from ..anybody.face.pipeline import NO_FACE
from ..anybody.face.detect import SELECT_MODES
from ..anybody.face.templates import TEMPLATES

FOLDER = "insightface"


def _register_folder() -> None:
    """models/insightface as a ComfyUI model folder, added (never replacing what extra_model_paths.yaml set)."""
    try:
        import folder_paths
    except ImportError:  # not inside ComfyUI
        return
    default = os.path.join(folder_paths.models_dir, FOLDER)
    if default not in folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))[0]:
        folder_paths.add_model_folder_path(FOLDER, default)


def insightface_roots() -> list[str]:
    import folder_paths

    _register_folder()
    return list(folder_paths.get_folder_paths(FOLDER))


_register_folder()


class AnybodyFaceModelLoader:
    CATEGORY = "Anybody/face"
    FUNCTION = "load"
    RETURN_TYPES = ("ANYBODY_FACE_MODEL",)
    RETURN_NAMES = ("face_model",)
    DESCRIPTION = ("Loads an insightface detector + recognizer pack (antelopev2, buffalo_l, ...) from "
                   "models/insightface/models/<pack>/ (the InstantID/PuLID layout; extra_model_paths.yaml "
                   "'insightface:' entries are searched too).")

    @classmethod
    def INPUT_TYPES(cls):
        try:
            packs = list_packs(insightface_roots())
        except Exception:  # a broken folder must not hide the node
            packs = ["antelopev2", "buffalo_l"]
        return {"required": {
            "pack": (packs, {"default": packs[0], "tooltip": "folder name under models/insightface/models"}),
            "provider": (list(PROVIDERS), {"default": "auto", "tooltip": "auto: CUDA when onnxruntime-gpu can use it"}),
            "det_size": ("INT", {"default": 640, "min": 160, "max": 1280, "step": 32,
                                 "tooltip": "detector input size; smaller sizes are retried when nothing is found"}),
        }}

    def load(self, pack, provider, det_size):
        from ..anybody.face.models import load_face_models

        models = load_face_models(pack, insightface_roots(), provider, det_size)
        logging.info("[Anybody] face models: %s", models.describe())
        return (models,)


class AnybodyFaceAlign:
    CATEGORY = "Anybody/face"
    FUNCTION = "align"
    RETURN_TYPES = ("IMAGE", "MASK", "ANYBODY_FACES")
    RETURN_NAMES = ("crops", "masks", "faces")
    OUTPUT_TOOLTIPS = ("one aligned face crop per input image",
                       "soft face region in each crop (from the 5 landmarks; 0 where no face was found)",
                       "per crop: box, 5 landmarks, score and the 2x3 matrix from the source image to the crop")
    DESCRIPTION = ("Detects faces, picks one per image and aligns it to a template: FFHQ 256/512/1024 (Celeb Basis, "
                   "DiffusionRig, training crops) or ArcFace 112 (recognition, AdaFace, MagiCapture).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "face_model": ("ANYBODY_FACE_MODEL",),
                "images": ("IMAGE",),
                "template": (list(TEMPLATES), {"default": "ffhq512"}),
                "face": (list(SELECT_MODES), {"default": "largest",
                                              "tooltip": "which face when there are several: largest box, the index-th "
                                                         "from the left, or the one most like 'reference'"}),
                "index": ("INT", {"default": 0, "min": 0, "max": 64}),
                "if_no_face": (list(NO_FACE), {"default": "error",
                                               "tooltip": "pass_through: a centred crop, an empty mask and a warning"}),
            },
            "optional": {"reference": ("IMAGE", {"tooltip": "photo(s) of the person to pick with 'most_similar'"})},
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def align(self, face_model, images, template, face, index, if_no_face, reference=None, unique_id=None):
        import comfy.model_management
        import comfy.utils
        import torch

        from ..anybody.face.pipeline import align_images

        bar = comfy.utils.ProgressBar(len(images))

        def progress(done, total):
            comfy.model_management.throw_exception_if_processing_interrupted()
            bar.update_absolute(done, total)

        refs = list(reference) if reference is not None else None
        aligned = align_images(face_model, list(images), template, face, index, refs, if_no_face, progress)
        crops = torch.stack([torch.from_numpy(a.crop).float() / 255.0 for a in aligned])
        masks = torch.stack([torch.from_numpy(a.mask) for a in aligned])
        found = sum(a.face is not None for a in aligned)
        summary = f"{found}/{len(aligned)} face(s) aligned to {TEMPLATES[template].label}"
        return {"ui": {"text": [summary]}, "result": (crops, masks, [a.record() for a in aligned])}
