"""Face nodes: load an insightface pack from models/insightface, and FaceAlign (Anybody)."""
from __future__ import annotations

import functools
import logging
import os

from ..anybody.face.align import BORDERS
from ..anybody.face.detect import SELECT_MODES
from ..anybody.face.models import PROVIDERS, list_packs
from ..anybody.face.pipeline import NO_FACE
from ..anybody.face.templates import TEMPLATES
from .folders import register_model_folder

FOLDER = "insightface"
PARSING_FOLDER = "face_parsing"
PARSING_EXTENSIONS = {".pth", ".pt", ".safetensors"}
RECOGNITION_FOLDER = "face_recognition"
PAPER_RECOGNIZER = "glint360k_cosface_r100_fp16_0.1.pth"


def _register_folders() -> None:
    """models/insightface and models/face_parsing as ComfyUI model folders."""
    register_model_folder(FOLDER)
    register_model_folder(PARSING_FOLDER, PARSING_EXTENSIONS)
    register_model_folder(RECOGNITION_FOLDER, PARSING_EXTENSIONS)


def insightface_roots() -> list[str]:
    import folder_paths

    _register_folders()
    return list(folder_paths.get_folder_paths(FOLDER))


_register_folders()


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
        }, "optional": {
            "recognizer": ("ANYBODY_FACE_RECOGNIZER", {"tooltip": "from FaceRecognizerLoader: recognise faces with "
                                                                  "this torch network instead of the pack's ONNX one"}),
        }}

    def load(self, pack, provider, det_size, recognizer=None):
        from ..anybody.face.models import load_face_models

        models = load_face_models(pack, insightface_roots(), provider, det_size)
        if recognizer is not None:
            models = models.with_embedder(recognizer)
        logging.info("[Anybody] face models: %s", models.describe())
        return (models,)


def comfy_has_mediapipe() -> bool:
    """ComfyUI's own MediaPipe face nodes exist (newer ComfyUI releases): detect them, never require them."""
    import importlib.util

    try:
        return importlib.util.find_spec("comfy_extras.nodes_mediapipe") is not None
    except (ImportError, ValueError):
        return False


class AnybodyFaceModelFromMediaPipe:
    CATEGORY = "Anybody/face"
    FUNCTION = "build"
    RETURN_TYPES = ("ANYBODY_FACE_MODEL",)
    RETURN_NAMES = ("face_model",)
    DESCRIPTION = ("A face model without onnxruntime or insightface: ComfyUI's own MediaPipe face detector (its 478 "
                   "landmarks reduced to the five alignment uses) and, for identity, FaceRecognizerLoader's torch "
                   "recognizer. Works wherever a face_model is asked for.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "face_detection_model": ("FACE_DETECTION_MODEL", {"tooltip": "from Load Face Detection Model (MediaPipe)"}),
            "detector_variant": (["short", "full"], {"default": "short", "tooltip": "short: close-up faces (portraits, "
                                                     "training photos); full: smaller, farther faces"}),
            "min_confidence": ("FLOAT", {"default": 0.5, "min": 0.05, "max": 1.0, "step": 0.01}),
        }, "optional": {
            "recognizer": ("ANYBODY_FACE_RECOGNIZER", {"tooltip": "from FaceRecognizerLoader; needed by identity "
                                                                  "scores, most_similar and the training methods"}),
        }}

    def build(self, face_detection_model, detector_variant, min_confidence, recognizer=None):
        from pathlib import Path

        from ..anybody.face.mediapipe import MediaPipeDetector
        from ..anybody.face.models import FaceModels

        detector = MediaPipeDetector(face_detection_model, detector_variant, min_confidence,
                                     model_file=f"mediapipe_{detector_variant}")
        models = FaceModels("mediapipe", Path("."), detector, None, [], recognizer)
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
            "optional": {"reference": ("IMAGE", {"tooltip": "photo(s) of the person to pick with 'most_similar'"}),
                         "face_landmarks": ("FACE_LANDMARKS", {"tooltip": "from ComfyUI's Detect Face Landmarks "
                                            "(MediaPipe) on the same images: align to those faces instead of "
                                            "running face_model's detector"}),
                         "border": (list(BORDERS), {"default": "black", "tooltip":
                                    "what fills a crop beyond its photo's edge: black, or reflect (FFHQ's recipe: "
                                    "the photo mirrored outward, blurred, fading to its median colour)"})},
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def align(self, face_model, images, template, face, index, if_no_face, reference=None, face_landmarks=None,
              border="black", unique_id=None):
        import comfy.model_management
        import comfy.utils
        import torch

        from ..anybody.face.pipeline import align_images

        bar = comfy.utils.ProgressBar(len(images))

        def progress(done, total):
            comfy.model_management.throw_exception_if_processing_interrupted()
            bar.update_absolute(done, total)

        refs = list(reference) if reference is not None else None
        found = None
        if face_landmarks is not None:
            from ..anybody.errors import BadInputError
            from ..anybody.face.mediapipe import faces_from_landmarks

            frames = face_landmarks.get("frames", []) if isinstance(face_landmarks, dict) else []
            size = tuple(face_landmarks.get("image_size", ())) if isinstance(face_landmarks, dict) else ()
            if len(frames) != len(images) or size != tuple(images.shape[1:3]):
                raise BadInputError(f"face_landmarks describe {len(frames)} image(s) of {size} but {len(images)} "
                                    f"image(s) of {tuple(images.shape[1:3])} are connected: run Detect Face "
                                    "Landmarks on the same images.")
            found = [faces_from_landmarks(frame) for frame in frames]
        aligned = align_images(face_model, list(images), template, face, index, refs, if_no_face, progress, found,
                               border)
        crops = torch.stack([torch.from_numpy(a.crop).float() / 255.0 for a in aligned])
        masks = torch.stack([torch.from_numpy(a.mask) for a in aligned])
        found = sum(a.face is not None for a in aligned)
        summary = f"{found}/{len(aligned)} face(s) aligned to {TEMPLATES[template].label}"
        return {"ui": {"text": [summary]}, "result": (crops, masks, [a.record() for a in aligned])}


class AnybodyFaceRecognizerLoader:
    CATEGORY = "Anybody/face"
    FUNCTION = "load"
    RETURN_TYPES = ("ANYBODY_FACE_RECOGNIZER",)
    RETURN_NAMES = ("recognizer",)
    DESCRIPTION = ("Loads an insightface arcface_torch IResNet (.pth) from models/face_recognition: the face "
                   "recognizer Celeb Basis was trained with is glint360k_cosface_r100_fp16_0.1/backbone.pth (rename it, "
                   f"e.g. {PAPER_RECOGNIZER}). Runs in torch on the GPU while a method needs it.")

    @classmethod
    def INPUT_TYPES(cls):
        import folder_paths

        _register_folders()
        files = folder_paths.get_filename_list(RECOGNITION_FOLDER) or [PAPER_RECOGNIZER]
        return {"required": {"recognizer": (files, {"tooltip": "an IResNet backbone.pth from insightface's "
                                                               "arcface_torch model zoo, in models/face_recognition"})}}

    def load(self, recognizer):
        import folder_paths

        from ..anybody.errors import ModelFileError
        from ..anybody.nets.iresnet import SOURCE

        path = folder_paths.get_full_path(RECOGNITION_FOLDER, recognizer)
        if path is None:
            where = ", ".join(folder_paths.get_folder_paths(RECOGNITION_FOLDER))
            raise ModelFileError(f"Face recognizer '{recognizer}' not found in {where}. Get it from {SOURCE} and "
                                 "put it there (any file name).")
        return (_recognizer(path, os.path.getmtime(path)),)


@functools.lru_cache(maxsize=1)
def _recognizer(path: str, mtime: float):
    """The recognizer, loaded once per file version rather than on every run."""
    from ..anybody.face.recognizer import torch_recognizer

    return torch_recognizer(path)


class AnybodyFaceParse:
    CATEGORY = "Anybody/face"
    FUNCTION = "parse"
    RETURN_TYPES = ("MASK", "IMAGE")
    RETURN_NAMES = ("mask", "labels")
    OUTPUT_TOOLTIPS = ("pixels of the chosen classes (inside each face box when 'faces' is connected)",
                       "colour-coded class map, for checking")
    DESCRIPTION = ("BiSeNet face parsing (79999_iter.pth from face-parsing.PyTorch, in models/face_parsing). "
                   "Classes 1-13 inside the face box is the face region MagiCapture trains with.")

    @classmethod
    def INPUT_TYPES(cls):
        import folder_paths

        _register_folders()
        files = folder_paths.get_filename_list(PARSING_FOLDER) or ["79999_iter.pth"]
        return {
            "required": {
                "parsing_model": (files, {"tooltip": "put 79999_iter.pth into models/face_parsing"}),
                "images": ("IMAGE",),
                "classes": ("STRING", {"default": "1-13", "tooltip": "0 background, 1 skin, 2-3 brows, 4-5 eyes, 6 "
                                       "glasses, 7-8 ears, 9 earring, 10 nose, 11 mouth, 12-13 lips, 14 neck, 15 "
                                       "necklace, 16 cloth, 17 hair, 18 hat; ranges and names work"}),
            },
            "optional": {"faces": ("ANYBODY_FACES", {"tooltip": "from FaceAlign on the same images: parse each "
                                                              "face box only, as MagiCapture does"})},
        }

    def parse(self, parsing_model, images, classes, faces=None):
        import comfy.model_management as mm
        import comfy.utils
        import folder_paths
        import numpy as np
        import torch

        from ..anybody.errors import BadInputError, ModelFileError
        from ..anybody.face.parse import colourise, parse_classes, parse_labels, region_mask
        from ..anybody.face.pipeline import to_uint8
        from ..anybody.nets.bisenet import SOURCE

        wanted = parse_classes(classes)
        path = folder_paths.get_full_path(PARSING_FOLDER, parsing_model)
        if path is None:
            where = ", ".join(folder_paths.get_folder_paths(PARSING_FOLDER))
            raise ModelFileError(f"Face parsing weights '{parsing_model}' not found in {where}. Get 79999_iter.pth "
                                 f"from {SOURCE} and put it there.")
        if faces is not None and len(faces) != len(images):
            raise BadInputError(f"'faces' describes {len(faces)} image(s) but {len(images)} were connected; connect "
                                 "the same images FaceAlign saw.")
        device = mm.get_torch_device()
        net = _bisenet(path, os.path.getmtime(path)).to(device)
        bar = comfy.utils.ProgressBar(len(images))
        masks, previews = [], []
        for i, image in enumerate(images):
            mm.throw_exception_if_processing_interrupted()
            rgb = to_uint8(image)
            labels = parse_labels(net, rgb, device)
            if faces is None:
                masks.append(np.isin(labels, wanted).astype(np.float32))
            elif faces[i]["found"]:  # parsed again on the box crop, as MagiCapture does
                masks.append(region_mask(net, rgb, wanted, faces[i]["box"], device))
            else:
                masks.append(np.zeros(rgb.shape[:2], np.float32))
            previews.append(colourise(labels))
            bar.update_absolute(i + 1, len(images))
        return (torch.from_numpy(np.stack(masks)), torch.from_numpy(np.stack(previews)).float() / 255.0)


@functools.lru_cache(maxsize=1)
def _bisenet(path: str, mtime: float):
    """The parsing net, loaded once per file version rather than on every run."""
    from ..anybody.nets.bisenet import load_bisenet

    return load_bisenet(path)


class AnybodyIdentityScore:
    CATEGORY = "Anybody/face"
    FUNCTION = "score"
    OUTPUT_NODE = True
    RETURN_TYPES = ("FLOAT", "STRING", "IMAGE")
    RETURN_NAMES = ("score", "scores", "plot")
    OUTPUT_TOOLTIPS = ("mean cosine similarity of the generated faces to the reference (-1..1; same person is "
                       "usually above ~0.4 with ArcFace models)",
                       "the summary (baseline, face rate, copy-paste indicator), then one line per image",
                       "bar chart, the references' baseline dashed")
    DESCRIPTION = ("Identity similarity between faces in generated images and reference photos, with the loaded "
                   "recognizer. With 2+ reference photos it also reports the baseline (the photos against each other, "
                   "leave-one-out: what 'as alike as the person's own photos' scores) and a copy-paste indicator "
                   "(closest photo minus the others: high when a generation replicates one photo).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"face_model": ("ANYBODY_FACE_MODEL",), "images": ("IMAGE",), "reference": ("IMAGE",)}}

    def score(self, face_model, images, reference):
        import torch

        from ..anybody.face.score import identity_report, score_plot, summarize

        report = identity_report(face_model, list(images), list(reference))
        lines = "\n".join([summarize(report)] + [
            f"image {i + 1}: no face" if s is None else
            f"image {i + 1}: {s:.4f}" + ("" if o is None else f" (closest photo {c:.4f}, others {o:.4f})")
            for i, (s, c, o) in enumerate(zip(report.scores, report.closest, report.others))])
        plot = torch.from_numpy(score_plot(report)).float()[None] / 255.0
        return {"ui": {"text": [summarize(report)]}, "result": (report.mean or 0.0, lines, plot)}
