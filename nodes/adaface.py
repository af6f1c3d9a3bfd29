"""AdaFace nodes: load the AdaFace + Arc2Face files, and put a face into an SD1.5 prompt with no training."""
from __future__ import annotations

import functools
import logging
import os

from .folders import register_model_folder

ADAFACE_FOLDER, ARC2FACE_FOLDER = "adaface", "arc2face"
ADAFACE_EXTENSIONS = {".pt", ".ckpt"}


def _register_folders() -> None:
    """models/adaface (the checkpoint) and models/arc2face (one folder per encoder)."""
    register_model_folder(ADAFACE_FOLDER, ADAFACE_EXTENSIONS)
    register_model_folder(ARC2FACE_FOLDER)


_register_folders()


def _arc2face_choices() -> list[str]:
    """Folders holding Arc2Face's encoder: each root itself ("arc2face") or its subfolders (e.g. "Arc2Face")."""
    import folder_paths

    found = []
    for root in folder_paths.get_folder_paths(ARC2FACE_FOLDER):
        candidates = [(ARC2FACE_FOLDER, root)]
        if os.path.isdir(root):
            candidates += [(name, os.path.join(root, name)) for name in sorted(os.listdir(root))]
        found += [label for label, path in candidates if _has_encoder(path)]
    return list(dict.fromkeys(found)) or [ARC2FACE_FOLDER]


def _has_encoder(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, sub, f)) for sub in ("encoder", "")
               for f in ("model.safetensors", "pytorch_model.bin"))


def _arc2face_path(choice: str) -> str:
    """The folder a dropdown choice stands for: a models/arc2face root itself, or a subfolder of one."""
    import folder_paths

    roots = folder_paths.get_folder_paths(ARC2FACE_FOLDER)
    candidates = roots if choice == ARC2FACE_FOLDER else [os.path.join(r, os.path.basename(choice)) for r in roots]
    return next((c for c in candidates if _has_encoder(c)), candidates[0])  # else the loader names what is missing


def _stamp(*paths: str) -> tuple:
    """Size and mtime of every file the loader reads: a replaced file of either kind loads again."""
    files = []
    for path in paths:
        files += [os.path.join(root, f) for root, _, names in os.walk(path) for f in names] if os.path.isdir(path) else [path]
    return tuple((f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in sorted(files) if os.path.isfile(f)
                 and not f.endswith(".anybody.safetensors"))


@functools.lru_cache(maxsize=2)
def _load(adaface_path: str, arc2face_path: str, stamp: tuple):
    from ..anybody.nets.adaface_files import load_adaface

    return load_adaface(adaface_path, arc2face_path)


class AnybodyAdaFaceLoader:
    CATEGORY = "Anybody/adaface"
    FUNCTION = "load"
    RETURN_TYPES = ("ANYBODY_ADAFACE",)
    RETURN_NAMES = ("adaface",)
    DESCRIPTION = ("Loads AdaFace's face encoder (models/adaface: subjects-celebrity2024-05-16T17-22-46_zero3-ada-30000.pt "
                   "from adaface-neurips/adaface) and Arc2Face's text encoder (models/arc2face: the encoder/ folder of "
                   "FoivosPar/Arc2Face). The pickled AdaFace file is read without running any code in it and converted "
                   "once to a .anybody.safetensors beside it.")

    @classmethod
    def INPUT_TYPES(cls):
        import folder_paths

        files = folder_paths.get_filename_list(ADAFACE_FOLDER) or ["subjects-celebrity2024-05-16T17-22-46_zero3-ada-30000.pt"]
        return {"required": {
            "adaface": (files, {"tooltip": "the AdaFace checkpoint in models/adaface"}),
            "arc2face": (_arc2face_choices(), {"tooltip": "the folder holding Arc2Face's encoder/ (config.json, "
                                                          "pytorch_model.bin) in models/arc2face"}),
        }}

    def load(self, adaface, arc2face):
        import folder_paths

        from ..anybody.errors import ModelFileError
        from ..anybody.nets.adaface_files import ADAFACE_SOURCE

        path = folder_paths.get_full_path(ADAFACE_FOLDER, adaface)
        if path is None:
            raise ModelFileError(f"AdaFace checkpoint {adaface!r} not found in "
                                 f"{folder_paths.get_folder_paths(ADAFACE_FOLDER)}. Get it from {ADAFACE_SOURCE}.")
        arc_path = _arc2face_path(arc2face)
        stamp = _stamp(path, arc_path)
        encoder = _load(path, arc_path, stamp)
        logging.info("[Anybody] AdaFace loaded: %s + Arc2Face %s (attention copies per layer %s)", adaface, arc_path,
                     encoder.prompt2token.shape.kv_copies)
        return (encoder,)


class AnybodyAdaFaceEncode:
    CATEGORY = "Anybody/adaface"
    FUNCTION = "encode"
    OUTPUT_NODE = True
    RETURN_TYPES = ("CLIP", "ANYBODY_IDENTITY", "STRING")
    RETURN_NAMES = ("clip", "identity", "path")
    OUTPUT_TOOLTIPS = ("the input CLIP with the face bound to <name> (or embedding:<name>); the input is unchanged",
                       "the 16 vectors as an identity (for other Anybody nodes)",
                       "the embedding file written to models/embeddings, or empty when save_embedding is off")
    DESCRIPTION = ("Zero-shot: face photo(s) of one person -> 16 prompt vectors in SD1.5's token space (AdaFace, "
                   "2024), bound to a word in the returned CLIP. No training; several photos are averaged at the "
                   "ID-vector stage. SD1.x checkpoints only.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip": ("CLIP",),
                "face_model": ("ANYBODY_FACE_MODEL", {"tooltip": "FaceModelLoader: finds the face and gives its "
                                                                 "ArcFace vector (Arc2Face's authors use arcface.onnx "
                                                                 "in the antelopev2 folder)"}),
                "adaface": ("ANYBODY_ADAFACE",),
                "images": ("IMAGE", {"tooltip": "one or more photos of the same person"}),
                "name": ("STRING", {"default": "adaface_face", "tooltip": "the word in prompts: <name> or "
                                    "embedding:<name>; letters, digits, '_', '-', '.'"}),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.1,
                                       "tooltip": "ID strength: 1.0 = AdaFace's vectors as they are; higher pushes "
                                                  "the identity harder (the authors' demo starts at 4)"}),
                "save_embedding": ("BOOLEAN", {"default": False, "tooltip": "also write models/embeddings/<name>."
                                               "safetensors (A1111 and other graphs can use it)"}),
                "overwrite": ("BOOLEAN", {"default": False, "tooltip": "replace an existing embedding of that name"}),
            },
        }

    def encode(self, clip, face_model, adaface, images, name, strength, save_embedding, overwrite):
        import folder_paths

        from ..anybody.errors import WrongModelFamilyError
        from ..anybody.face.training_photos import describe_missing
        from ..anybody.host.comfy import clip_family, clip_with_identity
        from ..anybody.methods.adaface import adaface_identity
        from ..anybody.text.embedding_file import FAMILY_LABEL

        family = clip_family(clip)
        if family != "sd1":
            raise WrongModelFamilyError(f"AdaFace makes SD1.x prompt vectors (CLIP-L, 768 wide); this CLIP is "
                                        f"{FAMILY_LABEL[family]}. Load an SD1.5-family checkpoint for AdaFace.")
        identity, missing = adaface_identity(adaface, face_model, list(images), name, strength)
        messages = [describe_missing(missing)] if missing else []
        path = ""
        if save_embedding:
            target = os.path.join(folder_paths.get_folder_paths("embeddings")[0], f"{identity.name}.safetensors")
            path = str(identity.save_or_keep(target, overwrite))
        messages.append(f"{identity.describe()}: write <{identity.name}> or embedding:{identity.name} in the prompt"
                        + (f"; saved {os.path.basename(path)}" if path else ""))
        return {"ui": {"text": messages}, "result": (clip_with_identity(clip, identity), identity, path)}


class AnybodyGuidanceAnneal:
    CATEGORY = "Anybody/adaface"
    FUNCTION = "patch"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("the input MODEL, sampling with the annealed guidance; the input is unchanged",)
    DESCRIPTION = ("AdaFace's evaluation guidance (NeurIPS 2024 script): classifier-free guidance falling linearly "
                   "from `start` at the first step to `end` at the last, over the KSampler's own steps, in place of "
                   "its cfg (which is then ignored). Works with any checkpoint and sampler; it replaces another "
                   "sampler_cfg_function patch (RescaleCFG ...) on the same MODEL.")

    @classmethod
    def INPUT_TYPES(cls):
        from ..anybody.methods.adaface import ANNEALED_GUIDANCE

        start, end = ANNEALED_GUIDANCE
        return {"required": {
            "model": ("MODEL",),
            "start": ("FLOAT", {"default": start, "min": 0.0, "max": 30.0, "step": 0.1,
                                "tooltip": "guidance at the first step (the authors': 4)"}),
            "end": ("FLOAT", {"default": end, "min": 0.0, "max": 30.0, "step": 0.1,
                              "tooltip": "guidance at the last step (the authors': 1)"}),
        }}

    def patch(self, model, start, end):
        from ..anybody.host.comfy import AnnealedGuidance

        if "sampler_cfg_function" in model.model_options:
            logging.warning("[Anybody] GuidanceAnneal replaces the MODEL's earlier sampler_cfg_function patch")
        patched = model.clone()
        # the unconditioned pass must run even where a step's guidance (or the KSampler's cfg) is 1
        patched.set_model_sampler_cfg_function(AnnealedGuidance(start, end), disable_cfg1_optimization=True)
        return (patched,)
