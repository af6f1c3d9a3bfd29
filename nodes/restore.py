"""FaceRestore (Anybody): CodeFormer on every face of the images, MagiCapture's post-processing step."""
from __future__ import annotations

import functools
import logging
import os

from .face import PARSING_FOLDER, _bisenet, _register_folders
from .folders import register_model_folder

FOLDER = "facerestore_models"  # the folder ComfyUI's face-restore custom nodes use, so an existing file is found
EXTENSIONS = {".pth", ".safetensors"}
register_model_folder(FOLDER, EXTENSIONS)


class AnybodyFaceRestore:
    CATEGORY = "Anybody/face"
    FUNCTION = "restore"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("the images upscaled bilinearly by 'upscale', every face restored by CodeFormer",)
    DESCRIPTION = ("CodeFormer face restoration as MagiCapture's paper applies it after sampling (fidelity 0.5, 2x). "
                   "Needs codeformer.pth in models/facerestore_models (S-Lab licence, non-commercial: the pack never "
                   "downloads it) and the spandrel-extra-arches package.")

    @classmethod
    def INPUT_TYPES(cls):
        import folder_paths

        _register_folders()
        files = folder_paths.get_filename_list(FOLDER) or ["codeformer.pth"]
        parsers = ["none"] + list(folder_paths.get_filename_list(PARSING_FOLDER))
        return {
            "required": {
                "face_model": ("ANYBODY_FACE_MODEL", {"tooltip": "finds the faces and their 5 landmarks"}),
                "images": ("IMAGE",),
                "codeformer": (files, {"tooltip": "codeformer.pth from github.com/sczhou/CodeFormer/releases, in "
                                                  "models/facerestore_models"}),
                "fidelity": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                                       "tooltip": "CodeFormer's w: 0 = cleanest, 1 = closest to the input face "
                                                  "(MagiCapture: 0.5)"}),
                "upscale": ("INT", {"default": 2, "min": 1, "max": 4,
                                    "tooltip": "output size factor; the background is upscaled bilinearly, as the "
                                               "official script does (MagiCapture: 2)"}),
                "faces": (["all", "largest"], {"tooltip": "restore every detected face, or the largest per image"}),
            },
            "optional": {
                "parsing_model": (parsers, {"default": "none", "tooltip": "BiSeNet (models/face_parsing): blend only "
                                            "the face itself, as the official code; none: a feathered square"}),
            },
        }

    def restore(self, face_model, images, codeformer, fidelity, upscale, faces, parsing_model="none"):
        import comfy.model_management as mm
        import comfy.utils
        import folder_paths
        import numpy as np
        import torch

        from ..anybody.errors import ModelFileError
        from ..anybody.face.detect import detect_faces, select_face
        from ..anybody.face.parse import parse_labels
        from ..anybody.face.pipeline import to_uint8
        from ..anybody.face.restore import BLEND_CLASSES, SOURCE, restore_crop, restore_faces

        path = folder_paths.get_full_path(FOLDER, codeformer)
        if path is None:
            where = ", ".join(folder_paths.get_folder_paths(FOLDER))
            raise ModelFileError(f"CodeFormer weights '{codeformer}' not found in {where}. Get codeformer.pth from "
                                 f"{SOURCE} and put it there.")
        device = mm.get_torch_device()
        net = _codeformer(path, os.path.getmtime(path))
        mm.free_memory(2 * sum(p.numel() * p.element_size() for p in net.parameters()), device)
        parse = None
        if parsing_model != "none":
            parser_path = folder_paths.get_full_path(PARSING_FOLDER, parsing_model)
            if parser_path is None:
                raise ModelFileError(f"Face parsing weights '{parsing_model}' not found in "
                                     f"{', '.join(folder_paths.get_folder_paths(PARSING_FOLDER))}.")
            parser = _bisenet(parser_path, os.path.getmtime(parser_path)).to(device)

            def parse(crop):
                return np.isin(parse_labels(parser, crop, device), BLEND_CLASSES).astype(np.float32)

        bar = comfy.utils.ProgressBar(len(images))
        out, without_face = [], 0
        try:
            net.to(device)
            for i, image in enumerate(images):
                mm.throw_exception_if_processing_interrupted()
                rgb = to_uint8(image)
                found = detect_faces(face_model, rgb)
                if found and faces == "largest":
                    found = [select_face(found, "largest")]
                without_face += not found
                restored = restore_faces(rgb, [f.landmarks for f in found],
                                         lambda crop: restore_crop(net, crop, fidelity, device), upscale, parse)
                out.append(torch.from_numpy(restored))
                bar.update_absolute(i + 1, len(images))
        finally:
            net.to("cpu")
            if parse is not None:
                parser.to("cpu")
            mm.soft_empty_cache()
        if without_face:
            logging.warning("[Anybody] FaceRestore: no face in %d of %d image(s); those were only upscaled",
                            without_face, len(images))
        return (torch.stack(out),)


@functools.lru_cache(maxsize=1)
def _codeformer(path: str, mtime: float):
    """The network, loaded once per file version (about 370 MB) rather than on every run."""
    from ..anybody.face.restore import load_codeformer

    return load_codeformer(path)
