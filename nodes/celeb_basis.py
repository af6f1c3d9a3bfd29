"""CelebBasisEmbed (Anybody): one or more people as coefficients on the checkpoint's celebrity basis."""
from __future__ import annotations

import logging

from ..anybody.methods.celeb_basis import EXPERIMENTAL, CelebBasisConfig

from .cross_init import BUNDLED_NAMES, _name_lists, _names_path
from .curve_ui import curve_images
from .likeness import LIKENESS_INPUTS

_PAPER = CelebBasisConfig()


class AnybodyCelebBasisEmbed:
    CATEGORY = "Anybody/train"
    FUNCTION = "train"
    OUTPUT_NODE = True
    RETURN_TYPES = ("CLIP", "ANYBODY_IDENTITY", "STRING")
    RETURN_NAMES = ("clip", "identities", "paths")
    OUTPUT_IS_LIST = (False, True, False)
    OUTPUT_TOOLTIPS = ("the input CLIP with every trained person applied: prompts may say <name> or embedding:name "
                       "(the input CLIP is unchanged)",
                       "one identity per person (a list: nodes after it run once per person)",
                       "the embedding files in models/embeddings, one per line (A1111 reads the same files)")
    DESCRIPTION = ("Learns one or several people from face photos as 2-token embeddings on a basis of celebrity "
                   "names (Celeb Basis, NeurIPS 2023) on the connected checkpoint: 1,024 coefficients per person, "
                   "fitted through a small map from a face recognizer's features. Several people train together and "
                   "can share one prompt. Saves one file per person to models/embeddings; queued again with the same "
                   "photos and settings it loads them instead of retraining. Cancel saves the progress.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "clip": ("CLIP",),
                "vae": ("VAE",),
                "face_model": ("ANYBODY_FACE_MODEL", {"tooltip": "from FaceModelLoader: finds and aligns the faces "
                                                                 "(FFHQ template, as the paper's data)"}),
                "images": ("IMAGE", {"tooltip": "face photos: one person, or several people in one batch (see names)"}),
                "names": ("STRING", {"default": "alice", "tooltip": "one name for all photos (one person), or one "
                                     "name per photo in batch order, repeated for photos of the same person: 'alice, "
                                     "bob' or 'alice, alice, bob'. Each becomes models/embeddings/<name>.safetensors"}),
                "steps": ("INT", {"default": _PAPER.steps, "min": 1, "max": 100000,
                                  "tooltip": "per person (paper: 400); a run of N people trains N x steps"}),
                "lr": ("FLOAT", {"default": _PAPER.lr, "min": 1e-6, "max": 1.0, "step": 1e-4, "round": False,
                                 "tooltip": "AdamW learning rate of the map (paper: 0.01)"}),
                "batch": ("INT", {"default": _PAPER.batch, "min": 1, "max": 64, "tooltip": "paper: 2"}),
                "resolution": ("INT", {"default": 0, "min": 0, "max": 2048, "step": 64,
                                       "tooltip": "0: the model's own (SD1.x 512, SD2-768-v 768, SDXL 1024)"}),
                "seed": ("INT", {"default": _PAPER.seed, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": "paper: 23"}),
                "save_every": ("INT", {"default": _PAPER.save_every, "min": 0, "max": 100000,
                                       "tooltip": "save resumable state every N steps (0: only on finish/cancel)"}),
                "preview_every": ("INT", {"default": _PAPER.preview_every, "min": 0, "max": 100000}),
                "saved_progress": (["resume", "start over"], {"default": "resume",
                                   "tooltip": "a cancelled run of these names saved its progress: continue it (same "
                                              "settings) or discard it"}),
                "overwrite": ("BOOLEAN", {"default": False, "tooltip": "retrain and replace embeddings of these names "
                                                                       "made from other photos or settings"}),
            },
            "optional": {
                "recognizer": ("ANYBODY_FACE_RECOGNIZER", {"tooltip": "from FaceRecognizerLoader: the paper's CosFace "
                                                                      "r100. Without it the face_model pack's own "
                                                                      "recognizer is used"}),
                "names_file": (_name_lists(), {"default": BUNDLED_NAMES, "tooltip": "celebrity names the basis is "
                                               "built from; the paper's wiki_names_v2.txt works when put in "
                                               "models/celebrity_names"}),
                "views": ("INT", {"default": _PAPER.views, "min": 1, "max": 4096, "tooltip": "augmented views per "
                                  "person (flip, colour, scale, position), encoded once before training"}),
                "gradient_checkpointing": ("BOOLEAN", {"default": False, "tooltip": "recompute UNet activations in "
                                                       "the backward pass: less VRAM, about 1/3 slower"}),
                **LIKENESS_INPUTS,
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def train(self, model, clip, vae, face_model, images, names, steps, lr, batch, resolution, seed, save_every,
              preview_every, saved_progress, overwrite, recognizer=None, names_file=BUNDLED_NAMES,
              views=_PAPER.views, gradient_checkpointing=False, likeness_every=-1, likeness_patience=0,
              keep_best=True, unique_id=None):
        from dataclasses import replace

        from ..anybody.face.recognizer import pack_recognizer
        from ..anybody.host.comfy import ComfyHost, clip_with_identity
        from ..anybody.methods.celeb_basis import check_settings, group_photos, people_from_photos, train_celeb_basis
        from ..anybody.methods.runs import default_resolution

        groups = group_photos(names, len(images))
        config = replace(_PAPER, steps=steps, lr=lr, batch=batch, resolution=resolution, seed=seed,
                         save_every=save_every, preview_every=preview_every, views=views,
                         gradient_checkpointing=gradient_checkpointing, likeness_every=likeness_every,
                         likeness_patience=likeness_patience, keep_best=keep_best)
        names_path = None if names_file == BUNDLED_NAMES else _names_path(names_file)
        check_settings([name for name, _ in groups], config, names_path)  # before any face is detected
        host = ComfyHost(model, clip, vae, node_id=unique_id)
        size = resolution or default_resolution(host)
        notes: list[str] = []

        def note(message: str) -> None:
            notes.append(message)
            logging.warning("[Anybody] %s", message)

        if host.family in EXPERIMENTAL:
            note(f"{EXPERIMENTAL[host.family]}.")
        people = people_from_photos(face_model, images, names, size, log=note)
        if recognizer is None:
            recognizer = pack_recognizer(face_model)
            note(f"No recognizer connected: using the pack's {recognizer.name} (the paper used CosFace r100; "
                 "FaceRecognizerLoader loads it).")
        results = train_celeb_basis(host, people, recognizer, config, names_file=names_path,
                                    resume=saved_progress == "resume", restart=saved_progress == "start over",
                                    overwrite=overwrite, face_models=face_model)
        out_clip = clip
        for result in results:
            out_clip = clip_with_identity(out_clip, result.identity)
        reused = all(r.reused for r in results)
        summary = (", ".join(f"<{r.identity.name}>" for r in results) + f" -> {len(results)} file(s)" +
                   (" (already trained with these photos and settings: loaded, not retrained)" if reused else "") +
                   "; write e.g. 'a photo of <name> person' (or embedding:name) in your prompt.")
        from ..anybody.methods.celeb_basis import run_name
        from ..anybody.methods.runs import RESULT_KEY

        run = run_name([r.identity.name for r in results], results[0].identity.metadata.get(RESULT_KEY, ""))
        images = curve_images([host.state_dir() / f"{run}.loss.csv"], [f"{run}: loss"])
        return {"ui": {"text": [*notes, summary], "images": images},
                "result": (out_clip, [r.identity for r in results], "\n".join(str(r.path) for r in results))}
