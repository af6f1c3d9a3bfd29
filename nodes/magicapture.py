"""MagiCaptureLoRA (Anybody): a person and a portrait style in one LoRA and two tokens, on the graph's checkpoint."""
from __future__ import annotations

import logging
import os

from ..anybody.methods.magicapture import PRESETS, STRENGTHS, MagiCaptureConfig

from .face import PARSING_FOLDER, _bisenet, _register_folders
from .curve_ui import curve_images
from .likeness import LIKENESS_INPUTS

_PAPER = MagiCaptureConfig()


class AnybodyMagiCaptureLoRA:
    CATEGORY = "Anybody/train"
    FUNCTION = "train"
    OUTPUT_NODE = True
    RETURN_TYPES = ("MODEL", "CLIP", "STRING")
    RETURN_NAMES = ("model", "clip", "lora_path")
    OUTPUT_TOOLTIPS = ("the input MODEL with the trained LoRA at unet_strength (the input MODEL is unchanged)",
                       "the input CLIP with the LoRA at text_strength and both tokens: write <subject> and <style>",
                       "the kohya LoRA file in models/loras (LoraLoader and A1111's Lora read it)")
    DESCRIPTION = ("MagiCapture (AAAI 2024): learns a person from a few selfies and a portrait style (passport, studio "
                   "...) from a few reference portraits, together: textual inversion of two tokens, then a rank-4 LoRA "
                   "with masked, attention-refocusing and identity losses. Writes a kohya LoRA to models/loras and the "
                   "two tokens to models/embeddings, and returns MODEL and CLIP ready for 'A photo of a <subject> person "
                   "with style <style>'. SD1.x. Every photo needs a visible face.")

    @classmethod
    def INPUT_TYPES(cls):
        import folder_paths

        _register_folders()
        parsing = folder_paths.get_filename_list(PARSING_FOLDER) or ["79999_iter.pth"]
        return {
            "required": {
                "model": ("MODEL",),
                "clip": ("CLIP",),
                "vae": ("VAE",),
                "subject_images": ("IMAGE", {"tooltip": "a few photos of the person (the paper uses about 5)"}),
                "style_images": ("IMAGE", {"tooltip": "a few portraits in the style to learn, each with a face"}),
                "face_model": ("ANYBODY_FACE_MODEL", {"tooltip": "from FaceModelLoader: finds the faces"}),
                "recognizer": ("ANYBODY_FACE_RECOGNIZER", {"tooltip": "from FaceRecognizerLoader: the identity loss "
                                                                      "(the paper: ArcFace r100, ms1mv3_arcface_r100)"}),
                "parsing_model": (parsing, {"tooltip": "BiSeNet 79999_iter.pth in models/face_parsing: the face "
                                                       "region of each photo"}),
                "subject_name": ("STRING", {"default": "my_face", "tooltip": "the person's token: <name> in prompts, "
                                                                             "models/embeddings/<name>.safetensors"}),
                "style_name": ("STRING", {"default": "my_style", "tooltip": "the style's token, likewise"}),
                "preset": ([*PRESETS], {"default": "paper", "tooltip": "paper: 1,200 + 1,500 steps; fast: 300 + 400 "
                                                                       "(ours)"}),
                "resolution": ("INT", {"default": 0, "min": 0, "max": 2048, "step": 64,
                                       "tooltip": "0: the model's own (512 for SD1.x, as the paper)"}),
                "seed": ("INT", {"default": _PAPER.seed, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": "paper: 42"}),
                "save_every": ("INT", {"default": _PAPER.save_every, "min": 0, "max": 100000}),
                "preview_every": ("INT", {"default": _PAPER.preview_every, "min": 0, "max": 100000}),
                "saved_progress": (["resume", "start over"], {"default": "resume"}),
                "overwrite": ("BOOLEAN", {"default": False}),
                "gradient_checkpointing": ("BOOLEAN", {"default": False, "tooltip": "less VRAM, about 1/3 slower"}),
                "unet_strength": ("FLOAT", {"default": STRENGTHS["unet"], "min": -4.0, "max": 4.0, "step": 0.05,
                                            "tooltip": "the paper samples at 0.6"}),
                "text_strength": ("FLOAT", {"default": STRENGTHS["text"], "min": -4.0, "max": 4.0, "step": 0.05,
                                            "tooltip": "the paper samples at 0.9"}),
            },
            "optional": {**LIKENESS_INPUTS},  # phase 2: renders of the composed prompt at the paper's strengths
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def train(self, model, clip, vae, subject_images, style_images, face_model, recognizer, parsing_model,
              subject_name, style_name, preset, resolution, seed, save_every, preview_every, saved_progress, overwrite,
              gradient_checkpointing, unet_strength, text_strength, likeness_every=-1, likeness_patience=0,
              keep_best=True, unique_id=None):
        import comfy.model_management as mm
        import comfy.sd
        import comfy.utils
        import folder_paths

        from ..anybody.errors import ModelFileError
        from ..anybody.host.comfy import ComfyHost, clip_with_identity
        from ..anybody.methods.magicapture import check_settings, face_tools, train_magicapture
        from ..anybody.methods.magicapture import preset as make_config
        from ..anybody.nets.bisenet import SOURCE

        config = make_config(preset, resolution=resolution, seed=seed, save_every=save_every,
                             preview_every=preview_every, gradient_checkpointing=gradient_checkpointing,
                             likeness_every=likeness_every, likeness_patience=likeness_patience, keep_best=keep_best)
        check_settings(subject_name, style_name, config)
        path = folder_paths.get_full_path(PARSING_FOLDER, parsing_model)
        if path is None:
            where = ", ".join(folder_paths.get_folder_paths(PARSING_FOLDER))
            raise ModelFileError(f"Face parsing weights '{parsing_model}' not found in {where}. Get 79999_iter.pth from "
                                 f"{SOURCE} and put it there.")
        device = mm.get_torch_device()
        tools = face_tools(face_model, _bisenet(path, os.path.getmtime(path)).to(device), recognizer, device,
                           parsing_name=parsing_model)
        host = ComfyHost(model, clip, vae, node_id=unique_id)
        result = train_magicapture(host, list(subject_images), list(style_images), tools, subject_name, style_name,
                                   config, resume=saved_progress == "resume", restart=saved_progress == "start over",
                                   overwrite=overwrite)
        lora_sd = comfy.utils.load_torch_file(str(result.lora_path), safe_load=True)
        out_model, out_clip = comfy.sd.load_lora_for_models(model, clip, lora_sd, unet_strength, text_strength)
        out_clip = clip_with_identity(clip_with_identity(out_clip, result.subject), result.style)
        text = (f"{result.lora_path.name} + <{result.subject.name}>, <{result.style.name}>"
                + (" (already trained with these photos and settings: loaded, not retrained)" if result.reused else "")
                + f"; prompt: 'A photo of a <{result.subject.name}> person with style <{result.style.name}>'")
        logging.info("[Anybody] %s", text)
        run = f"magicapture.{result.subject.name}+{result.style.name}"
        images = curve_images([host.state_dir() / f"{run}.phase{i}.loss.csv" for i in (1, 2)],
                              ["phase 1 loss (textual inversion)", "phase 2 loss (LoRA + inversion)"])
        return {"ui": {"text": [text], "images": images}, "result": (out_model, out_clip, str(result.lora_path))}
