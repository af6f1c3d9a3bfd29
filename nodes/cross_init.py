"""CrossInitTrain (Anybody): Cross Initialization textual inversion on the checkpoint the graph loaded."""
from __future__ import annotations

import logging

from ..anybody.methods.cross_init import (DEFAULT_NAMES, PRESETS, CrossInitConfig, default_resolution, train_cross_init,
                                          vector_stats)
from ..anybody.methods.cross_init import preset as make_config

from .curve_ui import curve_images
from .folders import register_model_folder
from .likeness import LIKENESS_INPUTS

_PAPER = CrossInitConfig()
NAMES_FOLDER = "celebrity_names"  # models/celebrity_names/*.txt: e.g. the paper's own wiki_names_v2.txt
BUNDLED_NAMES = "bundled (1,180 names)"


def _register_names_folder() -> None:
    register_model_folder(NAMES_FOLDER, {".txt"})


_register_names_folder()


def _name_lists() -> list[str]:
    import folder_paths

    return [BUNDLED_NAMES, *folder_paths.get_filename_list(NAMES_FOLDER)]


class AnybodyCrossInitTrain:
    CATEGORY = "Anybody/train"
    FUNCTION = "train"
    OUTPUT_NODE = True
    RETURN_TYPES = ("CLIP", "ANYBODY_IDENTITY", "STRING")
    RETURN_NAMES = ("clip", "identity", "path")
    OUTPUT_TOOLTIPS = ("the input CLIP with the identity applied: prompts may say <name> or embedding:<name> "
                       "(the input CLIP is unchanged); connect it to CLIPTextEncode",
                       "the trained identity (for other Anybody nodes)",
                       "the embedding file in models/embeddings (A1111 reads the same file as <name>)")
    DESCRIPTION = ("Learns a face from one or more photos as a 2-token textual-inversion embedding (Cross "
                   "Initialization, CVPR 2024) on the connected checkpoint, saves it to models/embeddings and "
                   "returns a CLIP that knows it. Queued again with the same photos and settings it loads the "
                   "saved file instead of retraining. Cancel saves the progress; queue again to continue it.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "clip": ("CLIP",),
                "vae": ("VAE",),
                "images": ("IMAGE", {"tooltip": "face photos of one person (a batch); square crops around the face work best"}),
                "name": ("STRING", {"default": "my_face", "tooltip": "file name: models/embeddings/<name>.safetensors; "
                                    "letters, digits, '_', '-', '.', no spaces (prompts end a name at a space)"}),
                "preset": ([*PRESETS, "custom"], {"default": "paper-320",
                                                  "tooltip": "paper-320: the paper's recipe; fast-25: 25 steps; custom: use 'steps'"}),
                "steps": ("INT", {"default": _PAPER.steps, "min": 1, "max": 100000, "tooltip": "used when preset is custom"}),
                "lr": ("FLOAT", {"default": _PAPER.lr, "min": 1e-6, "max": 1.0, "step": 1e-5, "round": False,
                                 "tooltip": "AdamW learning rate (paper: 0.005)"}),
                "batch": ("INT", {"default": _PAPER.batch, "min": 1, "max": 64}),
                "grad_accum": ("INT", {"default": 1, "min": 1, "max": 64,
                                       "tooltip": "lower batch x higher grad_accum keeps the paper's effective batch of 8 on small GPUs"}),
                "resolution": ("INT", {"default": 0, "min": 0, "max": 2048, "step": 64,
                                       "tooltip": "0: the model's own (SD1.x 512, SD2-768-v 768, SDXL 1024)"}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
                "save_every": ("INT", {"default": _PAPER.save_every, "min": 0, "max": 100000,
                                       "tooltip": "save resumable state every N steps (0: only on finish/cancel)"}),
                "preview_every": ("INT", {"default": _PAPER.preview_every, "min": 0, "max": 100000}),
                "saved_progress": (["resume", "start over"], {"default": "resume",
                                   "tooltip": "a cancelled run of this name saved its progress: continue it (same settings) or discard it"}),
                "overwrite": ("BOOLEAN", {"default": False,
                                          "tooltip": "retrain and replace an embedding of that name made from other photos or settings"}),
                "names_file": (_name_lists(), {"default": BUNDLED_NAMES,
                                               "tooltip": "celebrity names for the initialisation; put a list (one name per line, "
                                                          "e.g. the paper's wiki_names_v2.txt) in models/celebrity_names"}),
                "gradient_checkpointing": ("BOOLEAN", {"default": False,
                                                       "tooltip": "recompute UNet activations in the backward pass: less VRAM, about 1/3 slower"}),
            },
            "optional": {
                "face_model": ("ANYBODY_FACE_MODEL", {"tooltip": "from FaceModelLoader: lists the photos without a "
                                                                 "detectable face (they still train the identity)"}),
                "crop_to_face": ("BOOLEAN", {"default": False, "tooltip": "with face_model: train on FFHQ-aligned face "
                                                                          "crops instead of the whole photos"}),
                "init_identity": ("ANYBODY_IDENTITY", {"tooltip": "start from this identity's vectors (e.g. "
                                                                  "AdaFaceEncode's) instead of the celebrity average; "
                                                                  "trains as many vectors as it has"}),
                **LIKENESS_INPUTS,
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def train(self, model, clip, vae, images, name, preset, steps, lr, batch, grad_accum, resolution, seed,
              save_every, preview_every, saved_progress, overwrite, names_file=BUNDLED_NAMES, gradient_checkpointing=False,
              face_model=None, crop_to_face=False, init_identity=None, likeness_every=-1, likeness_patience=0,
              keep_best=True, unique_id=None):
        from ..anybody.host.comfy import ComfyHost, clip_with_identity

        chosen = {"steps": steps} if preset == "custom" else {}
        config = make_config(preset, **chosen, lr=lr, batch=batch, grad_accum=grad_accum, resolution=resolution,
                             seed=seed, save_every=save_every, preview_every=preview_every,
                             gradient_checkpointing=gradient_checkpointing, likeness_every=likeness_every,
                             likeness_patience=likeness_patience, keep_best=keep_best)
        names_path = DEFAULT_NAMES if names_file == BUNDLED_NAMES else _names_path(names_file)
        host = ComfyHost(model, clip, vae, node_id=unique_id)
        photos, warnings = list(images), []
        if face_model is not None:
            from ..anybody.face.training_photos import describe_missing, face_crops, photos_without_faces

            missing = photos_without_faces(face_model, photos)
            if missing:
                warnings.append(describe_missing(missing))
                logging.warning("[Anybody] %s", warnings[-1])
            if crop_to_face:
                photos = face_crops(face_model, photos, resolution or default_resolution(host))
        elif crop_to_face:
            from ..anybody.errors import BadInputError

            raise BadInputError("crop_to_face needs a face_model (connect FaceModelLoader).")
        identity, path, reused = train_cross_init(host, photos, name, config, names_file=names_path,
                                                  resume=saved_progress == "resume",
                                                  restart=saved_progress == "start over", overwrite=overwrite,
                                                  init_identity=init_identity, face_models=face_model)
        stats = vector_stats(next(iter(identity.vectors.values())))
        summary = (f"{identity.describe()} -> {path.name}" + (" (already trained with these photos and settings: "
                   "loaded, not retrained)" if reused else "") + f"; write <{identity.name}> or embedding:{identity.name}"
                   f" in your prompt. norms {stats['norm_min']:.1f}-{stats['norm_max']:.1f}")
        best = identity.metadata.get("anybody.likeness.best")
        if best:
            summary += f"; likeness {best} (step {identity.metadata['anybody.likeness.best_step']})"
        images = curve_images([host.state_dir() / f"{identity.name}.loss.csv"], [f"{identity.name}: loss"])
        return {"ui": {"text": [*warnings, summary], "images": images},
                "result": (clip_with_identity(clip, identity), identity, str(path))}


def _names_path(names_file: str) -> str:
    import folder_paths

    from ..anybody.errors import BadInputError

    path = folder_paths.get_full_path(NAMES_FOLDER, names_file)
    if path is None:
        raise BadInputError(f"Name list {names_file!r} not found in {folder_paths.get_folder_paths(NAMES_FOLDER)}.")
    return path
