"""One RigPersonalize run: an album of one person + the stage-1 model -> a stage-2 model file.

The album is fitted once (DECA codes; the mean shape over the album replaces each photo's own, as the paper does),
its buffers rendered once and kept in memory, then stage 2 trains a copy of the stage-1 model (the loaded one is
never changed: a loader node may hand it to other nodes too). The file records the run's key, so a re-queued graph
with the same photos, settings and stage-1 model loads it instead of training again.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple, Sequence

import torch

from ..errors import BadInputError
from ..files import ensure_writable_folder, safe_name
from ..methods.runs import RESULT_KEY, continues_saved, discard_saved, images_digest, refuse_existing, result_key
from ..train.loss_scale import LossScale
from ..train.state import TrainingState
from .buffers import stack_buffers
from .model_file import RigInfo, read_model, save_model
from .personalize import Album, Stage2Settings, album_latents, personalize
from .pipeline import Sliders, fit_photos, plan_edits, render_buffers
from .unet import DiffusionRig

MIN_PHOTOS = 2


class PersonalModel(NamedTuple):
    model: DiffusionRig
    info: RigInfo
    path: Path
    reused: bool


def album_buffers(head, fit, mean_shape: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """Each photo's own buffers with the album's mean shape and no centring: what the release trains stage 2 on."""
    plans = plan_edits(fit, None, [], Sliders())
    parts = [stack_buffers(render_buffers(head, fit, plans[i:i + chunk], mean_shape, centre=False))
             for i in range(0, len(plans), chunk)]
    return torch.cat(parts)


def train_personal_model(stage1: DiffusionRig, stage1_fingerprint: str, head, deca, face_models, images: Sequence,
                         name: str, settings: Stage2Settings, out_dir: Path, state_dir: Path, sink, device,
                         resume: bool = True, restart: bool = False, overwrite: bool = False,
                         half: bool = False) -> PersonalModel:
    """``half``: compute in fp16 under autocast with loss scaling (CUDA), as the official script trains."""
    name = safe_name(name)
    if len(images) < MIN_PHOTOS:
        raise BadInputError(f"RigPersonalize needs several photos of the person (the paper uses about 20); got "
                            f"{len(images)}.")
    fit = fit_photos(face_models, deca, images, device)
    mean_shape = fit.codes.shape.mean(0, keepdim=True)
    run_config = {**asdict(settings), "method": "diffusionrig_stage2", "images": images_digest(fit.photos)}
    key = result_key(run_config, stage1_fingerprint)
    target = Path(out_dir) / f"{name}.safetensors"
    if target.is_file():
        model, info = read_model(target)
        if info.extra.get(RESULT_KEY) == key:
            sink.log(f"'{name}' was already personalised with these photos, settings and stage-1 model: loaded "
                     f"{target}, not retrained.")
            return PersonalModel(model.to(device), info, target, True)
    state = TrainingState(state_dir, f"rig.{name}", run_config)
    resuming = continues_saved([state], f"'{name}'", resume, restart)
    refuse_existing([target], overwrite or resuming)
    if restart:
        discard_saved([state], f"'{name}'", sink.log)
    for folder in (out_dir, state_dir):
        ensure_writable_folder(folder)
    sink.check_cancel()
    buffers = album_buffers(head.to(device), fit, mean_shape.to(device))
    use_half = half and torch.device(device).type == "cuda"

    def autocast():
        return torch.autocast("cuda", dtype=torch.float16)

    # ComfyUI runs nodes in inference mode, where tensors cannot take part in autograd: the trained copy and the
    # album are made outside it
    with torch.inference_mode(False), torch.enable_grad():
        model = DiffusionRig(stage1.config)
        model.load_state_dict(stage1.state_dict())
        model.to(device)
        photos = (fit.photos * 2 - 1).clone()
        album = Album(photos, buffers.clone(), album_latents(model, photos).clone())
        personalize(model, album, settings, sink, state, resuming, LossScale() if use_half else None,
                    autocast if use_half else None)
    info = RigInfo(stage=2, mean_shape=mean_shape.cpu(),
                   extra={RESULT_KEY: key, "anybody.photos": len(images), "anybody.steps": settings.steps})
    save_model(target, model, info, overwrite=True)
    state.clear()  # the model file is the result now; a finished run leaves nothing to resume
    sink.log(f"Saved the personalised DiffusionRig model to {target}.")
    return PersonalModel(model.eval(), RigInfo(stage=2, mean_shape=info.mean_shape, extra=dict(info.extra)), target,
                         False)
