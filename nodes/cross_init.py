"""CrossInitTrain (Anybody): Cross Initialization textual inversion on the checkpoint the graph loaded."""
from __future__ import annotations

from ..anybody.methods.cross_init import PRESETS, CrossInitConfig, train_cross_init, vector_stats
from ..anybody.methods.cross_init import preset as make_config

_PAPER = CrossInitConfig()


class AnybodyCrossInitTrain:
    CATEGORY = "Anybody/train"
    FUNCTION = "train"
    OUTPUT_NODE = True
    RETURN_TYPES = ("ANYBODY_IDENTITY", "STRING", "STRING", "CLIP")
    RETURN_NAMES = ("identity", "prompt", "path", "clip")
    OUTPUT_TOOLTIPS = ("the trained identity (for other Anybody nodes)",
                       "'prompt' with {} replaced by embedding:<name>; link it to CLIPTextEncode's text so the "
                       "prompt is encoded after training has written the file",
                       "the embedding file written into models/embeddings",
                       "the input CLIP with the identity applied: prompts may say <name> (or embedding:<name>)")
    DESCRIPTION = ("Learns a face from one or more photos as a 2-token textual-inversion embedding (Cross "
                   "Initialization, CVPR 2024) on the connected checkpoint, and saves it to models/embeddings so "
                   "any CLIPTextEncode can use it as embedding:<name>. Cancel saves the state; queue again with "
                   "resume on to continue.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "clip": ("CLIP",),
                "vae": ("VAE",),
                "images": ("IMAGE", {"tooltip": "face photos of one person (a batch); square crops around the face work best"}),
                "name": ("STRING", {"default": "my_face", "tooltip": "file name: models/embeddings/<name>.safetensors"}),
                "preset": ([*PRESETS, "custom"], {"default": "paper-320",
                                                  "tooltip": "paper-320: the paper's recipe; fast-25: 25 steps; custom: use 'steps'"}),
                "steps": ("INT", {"default": _PAPER.steps, "min": 1, "max": 100000, "tooltip": "used when preset is custom"}),
                "lr": ("FLOAT", {"default": _PAPER.lr, "min": 1e-6, "max": 1.0, "step": 0.0005}),
                "batch": ("INT", {"default": _PAPER.batch, "min": 1, "max": 64}),
                "grad_accum": ("INT", {"default": 1, "min": 1, "max": 64,
                                       "tooltip": "lower batch x higher grad_accum keeps the paper's effective batch of 8 on small GPUs"}),
                "resolution": ("INT", {"default": _PAPER.resolution, "min": 64, "max": 2048, "step": 64}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
                "save_every": ("INT", {"default": _PAPER.save_every, "min": 0, "max": 100000,
                                       "tooltip": "save resumable state every N steps (0: only on finish/cancel)"}),
                "preview_every": ("INT", {"default": _PAPER.preview_every, "min": 0, "max": 100000}),
                "resume": ("BOOLEAN", {"default": False, "tooltip": "continue a cancelled run of the same name and settings"}),
                "overwrite": ("BOOLEAN", {"default": False, "tooltip": "replace an existing embedding of that name"}),
                "prompt": ("STRING", {"default": "a photo of {} person", "multiline": True,
                                      "tooltip": "{} becomes embedding:<name>; keep the '<identity> person' pattern used in training"}),
            },
            "optional": {
                "gradient_checkpointing": ("BOOLEAN", {"default": False,
                                                       "tooltip": "recompute UNet activations in the backward pass: less VRAM, about 1/3 slower"}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def train(self, model, clip, vae, images, name, preset, steps, lr, batch, grad_accum, resolution, seed,
              save_every, preview_every, resume, overwrite, prompt, gradient_checkpointing=False, unique_id=None):
        from ..anybody.host.comfy import ComfyHost, clip_with_identity

        chosen = {"steps": steps} if preset == "custom" else {}
        config = make_config(preset, **chosen, lr=lr, batch=batch, grad_accum=grad_accum, resolution=resolution,
                             seed=seed, save_every=save_every, preview_every=preview_every,
                             gradient_checkpointing=gradient_checkpointing)
        host = ComfyHost(model, clip, vae, node_id=unique_id)
        identity, path = train_cross_init(host, list(images), name, config, resume=resume, overwrite=overwrite)
        stats = vector_stats(next(iter(identity.vectors.values())))
        summary = (f"{identity.describe()} -> {path.name}; write embedding:{identity.name} in your prompt. "
                   f"norms {stats['norm_min']:.1f}-{stats['norm_max']:.1f}")
        token = f"embedding:{identity.name}"
        text = prompt.replace("{}", token) if "{}" in prompt else f"{prompt} {token}".strip()
        return {"ui": {"text": [summary]}, "result": (identity, text, str(path), clip_with_identity(clip, identity))}
