"""Request fields of the webui's tab and HTTP routes: the ComfyUI node's input names and defaults, checked.

One rule for every capability: a JSON body (or the tab's controls) uses the node's input names, so a user who
knows one front door knows the other. Unknown fields are errors (a typo would otherwise train with a default).
"""
from __future__ import annotations

import base64
import binascii
import io
from typing import Any, Mapping

import torch

from ..errors import BadInputError
from ..methods.celeb_basis import CelebBasisConfig
from ..methods.cross_init import PRESETS, CrossInitConfig, preset as make_config

_PAPER = CrossInitConfig()
BUNDLED_NAMES = "bundled"
SAVED_PROGRESS = ("resume", "start over")

#: AnybodyCrossInitTrain's inputs (less MODEL/CLIP/VAE, which are the webui's loaded model) and their defaults;
#: ``face_model`` is the name of an insightface pack in models/insightface ("" = none), ``init_identity`` an
#: embedding file in the embeddings folder ("" = the celebrity average).
CROSS_INIT_FIELDS: dict[str, Any] = {
    "images": None, "name": "my_face", "preset": "paper-320", "steps": _PAPER.steps, "lr": _PAPER.lr,
    "batch": _PAPER.batch, "grad_accum": _PAPER.grad_accum, "resolution": 0, "seed": _PAPER.seed,
    "save_every": _PAPER.save_every, "preview_every": _PAPER.preview_every, "saved_progress": "resume",
    "overwrite": False, "names_file": BUNDLED_NAMES, "gradient_checkpointing": False, "face_model": "",
    "crop_to_face": False, "init_identity": "", "likeness_every": -1, "likeness_patience": 0, "keep_best": True,
}
CHOICES = {"preset": (*PRESETS, "custom"), "saved_progress": SAVED_PROGRESS}


def checked_fields(body: Mapping[str, Any], spec: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``body`` over the defaults of ``spec``, each value of its default's type; unknown names are errors."""
    if not isinstance(body, Mapping):
        raise BadInputError(f"The {what} request must be a JSON object with fields {', '.join(spec)}.")
    unknown = sorted(set(body) - set(spec))
    if unknown:
        raise BadInputError(f"Unknown field(s) {', '.join(unknown)} for {what}; the fields are {', '.join(spec)}.")
    out = dict(spec)
    for key, value in body.items():
        default = spec[key]
        if default is None:  # free-form (images: decoded by the caller)
            out[key] = value
            continue
        kind = type(default)
        ok = (isinstance(value, bool) if kind is bool else
              isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
              isinstance(value, int) and not isinstance(value, bool) if kind is int else isinstance(value, kind))
        if not ok:
            raise BadInputError(f"{what}: '{key}' must be {kind.__name__} (like {default!r}), got {value!r}.")
        if key in CHOICES and value not in CHOICES[key]:
            raise BadInputError(f"{what}: '{key}' must be one of {', '.join(CHOICES[key])}, got {value!r}.")
        out[key] = float(value) if kind is float else value
    return out


def cross_init_request(body: Mapping[str, Any]) -> tuple[dict[str, Any], CrossInitConfig]:
    """The checked fields and the training config of a cross-init request (``resume: true|false`` is accepted as
    a shorthand for ``saved_progress``)."""
    body = dict(body)
    if "steps" in body and body.get("preset", "custom") != "custom":
        raise BadInputError(f"cross-init: 'steps' counts only with preset 'custom' (the preset {body['preset']!r} "
                            "fixes its own); drop 'steps' or set \"preset\": \"custom\".")
    if "steps" in body:
        body["preset"] = "custom"
    if "resume" in body:
        resume = body.pop("resume")
        if not isinstance(resume, bool):
            raise BadInputError(f"cross-init: 'resume' must be true or false, got {resume!r}.")
        body.setdefault("saved_progress", "resume" if resume else "start over")
    fields = checked_fields(body, CROSS_INIT_FIELDS, "cross-init")
    chosen = {"steps": fields["steps"]} if fields["preset"] == "custom" else {}
    config = make_config(fields["preset"], **chosen, lr=fields["lr"], batch=fields["batch"],
                         grad_accum=fields["grad_accum"], resolution=fields["resolution"], seed=fields["seed"],
                         save_every=fields["save_every"], preview_every=fields["preview_every"],
                         gradient_checkpointing=fields["gradient_checkpointing"],
                         likeness_every=fields["likeness_every"], likeness_patience=fields["likeness_patience"],
                         keep_best=fields["keep_best"])
    return fields, config


_CB = CelebBasisConfig()
#: AnybodyCelebBasisEmbed's inputs; ``face_model`` names the insightface pack that aligns the faces, ``recognizer``
#: a file in models/face_recognition, "auto" (the first file there, else the pack's own) or "pack" (the pack's own).
CELEB_BASIS_FIELDS: dict[str, Any] = {
    "images": None, "names": "my_face", "steps": _CB.steps, "lr": _CB.lr, "batch": _CB.batch, "resolution": 0,
    "seed": _CB.seed, "save_every": _CB.save_every, "preview_every": _CB.preview_every, "saved_progress": "resume",
    "overwrite": False, "names_file": BUNDLED_NAMES, "views": _CB.views, "gradient_checkpointing": False,
    "face_model": "antelopev2", "recognizer": "auto", "likeness_every": -1, "likeness_patience": 0, "keep_best": True,
}


#: AnybodyMagiCaptureLoRA's inputs (less the webui's model); the face files are names in the webui's models folders
MAGICAPTURE_FIELDS: dict[str, Any] = {
    "subject_images": None, "style_images": None, "subject_name": "my_face", "style_name": "my_style",
    "preset": "paper", "resolution": 0, "seed": 42, "save_every": 100, "preview_every": 50, "saved_progress": "resume",
    "overwrite": False, "gradient_checkpointing": False, "face_model": "antelopev2",
    "recognizer": "auto", "parsing_model": "79999_iter.pth", "likeness_every": -1, "likeness_patience": 0,
    "keep_best": True,
}


def magicapture_request(body: Mapping[str, Any]):
    """The checked fields and the training config of a magicapture request."""
    from ..methods.magicapture import PRESETS, preset

    body = dict(body)
    if "resume" in body:
        resume = body.pop("resume")
        if not isinstance(resume, bool):
            raise BadInputError(f"magicapture: 'resume' must be true or false, got {resume!r}.")
        body.setdefault("saved_progress", "resume" if resume else "start over")
    chosen = body.pop("preset", MAGICAPTURE_FIELDS["preset"])  # checked here: cross-init's presets have the same name
    if chosen not in PRESETS:
        raise BadInputError(f"magicapture: 'preset' must be one of {', '.join(PRESETS)}, got {chosen!r}.")
    checked = checked_fields(body, {k: v for k, v in MAGICAPTURE_FIELDS.items() if k != "preset"}, "magicapture")
    checked["preset"] = chosen
    config = preset(checked["preset"], **{k: checked[k] for k in ("resolution", "seed", "save_every", "preview_every",
                                                                  "gradient_checkpointing", "likeness_every",
                                                                  "likeness_patience", "keep_best")})
    return checked, config


def celeb_basis_request(body: Mapping[str, Any]) -> tuple[dict[str, Any], CelebBasisConfig]:
    """The checked fields and the training config of a celeb-basis request (``resume: true|false`` as for
    cross-init)."""
    from dataclasses import replace

    body = dict(body)
    if "resume" in body:
        resume = body.pop("resume")
        if not isinstance(resume, bool):
            raise BadInputError(f"celeb-basis: 'resume' must be true or false, got {resume!r}.")
        body.setdefault("saved_progress", "resume" if resume else "start over")
    checked = checked_fields(body, CELEB_BASIS_FIELDS, "celeb-basis")
    config = replace(_CB, **{k: checked[k] for k in ("steps", "lr", "batch", "resolution", "seed", "save_every",
                                                     "preview_every", "views", "gradient_checkpointing",
                                                     "likeness_every", "likeness_patience", "keep_best")})
    return checked, config


#: limits of one request: photos, encoded size of each, and the side photos are read at (as the tab reads them)
MAX_PHOTOS, MAX_PHOTO_BYTES, MAX_SIDE = 64, 40 << 20, 2048


def decode_image(data: str, label: str) -> torch.Tensor:
    """A base64 PNG/JPEG/WebP (a ``data:image/...;base64,`` prefix is fine) -> ``[H,W,3]`` float 0..1, at most
    ``MAX_SIDE`` pixels on a side (a larger photo is downscaled as it is read)."""
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    from ..images import _to_uint8

    if not isinstance(data, str) or not data:
        raise BadInputError(f"{label} must be a base64-encoded PNG or JPEG string.")
    if data.startswith("data:"):
        data = data.partition(",")[2]
    if len(data) > MAX_PHOTO_BYTES * 4 // 3 + 4:
        raise BadInputError(f"{label} is larger than {MAX_PHOTO_BYTES >> 20} MB; send a smaller photo (faces train at "
                            "512-1024 px).")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadInputError(f"{label} is not valid base64 ({exc}).") from exc
    try:
        with Image.open(io.BytesIO(raw)) as im:
            if im.format == "JPEG":
                im.draft("RGB", (MAX_SIDE, MAX_SIDE))
            im = ImageOps.exif_transpose(im)
            if max(im.size) > MAX_SIDE:
                im = im if im.mode in ("RGB", "L", "RGBA", "P") else _to_uint8(im)
                im.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
            rgb = _to_uint8(im)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        raise BadInputError(f"{label} is not an image Anybody can read (PNG, JPEG or WebP): "
                            f"{exc.__class__.__name__}.") from exc
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).float() / 255.0


def decode_images(values: Any, field: str = "images") -> list[torch.Tensor]:
    if not isinstance(values, list) or not values:
        raise BadInputError(f"'{field}' must be a non-empty list of base64-encoded photos (PNG or JPEG).")
    if len(values) > MAX_PHOTOS:
        raise BadInputError(f"'{field}' holds {len(values)} photos; send at most {MAX_PHOTOS} per request.")
    return [decode_image(v, f"{field}[{i}]") for i, v in enumerate(values)]


def encode_png(image) -> str:
    """``[H,W,3]`` uint8 array or PIL image -> base64 PNG (what the webui's own API returns)."""
    from PIL import Image

    im = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buffer = io.BytesIO()
    im.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


#: AnybodyFaceAlign's inputs; ``face_model`` names the insightface pack, ``reference`` is a list of photos
ALIGN_FIELDS: dict[str, Any] = {"images": None, "face_model": "antelopev2", "template": "ffhq512", "face": "largest",
                                "index": 0, "if_no_face": "error", "reference": None, "border": "black"}
#: AnybodyIdentityScore's inputs
SCORE_FIELDS: dict[str, Any] = {"images": None, "reference": None, "face_model": "antelopev2"}


def _face_choices() -> None:
    from ..face.align import BORDERS
    from ..face.detect import SELECT_MODES
    from ..face.pipeline import NO_FACE
    from ..face.templates import TEMPLATES

    CHOICES.update({"template": tuple(TEMPLATES), "face": tuple(SELECT_MODES), "if_no_face": tuple(NO_FACE),
                    "border": BORDERS})


_face_choices()

#: AnybodyAdaFaceEncode's inputs (+ the loader's ``adaface``/``arc2face`` as names in the webui's models folders).
#: ``save_embedding`` is on by default here: in the webui the embedding file is how a prompt reaches the face.
ADAFACE_FIELDS: dict[str, Any] = {"images": None, "name": "adaface_face", "strength": 1.0, "save_embedding": True,
                                  "overwrite": False, "face_model": "antelopev2",
                                  "adaface": "subjects-celebrity2024-05-16T17-22-46_zero3-ada-30000.pt",
                                  "arc2face": "arc2face"}

#: RigAssetsLoader's files (names in the webui's models/flame and models/deca)
_RIG_ASSETS: dict[str, Any] = {"flame_model": "generic_model.pkl", "flame_texture": "FLAME_texture.npz",
                               "deca_model": "deca_model.tar", "head_template": "head_template.obj",
                               "landmark_embedding": "landmark_embedding.npy"}
#: AnybodyRigRender's inputs; ``rig_model`` names a file in models/diffusionrig ("" = buffers only), ``images`` the
#: photos to edit, ``target_images`` the optional target photo(s)
RIG_RENDER_FIELDS: dict[str, Any] = {
    "images": None, "target_images": None, "face_model": "antelopev2", "rig_model": "", **_RIG_ASSETS,
    "edit_light": True, "edit_expression": True, "edit_pose": True, "edit_latent": False, "yaw": 0.0, "pitch": 0.0,
    "roll": 0.0, "jaw_open": 0.0, "expression_scale": 1.0, "light_azimuth": 0.0, "light_elevation": 0.0,
    "light_strength": 0.0, "seed": 0, "paste_back": False}


def _rig_personalize_fields() -> dict[str, Any]:
    from ..rig.personalize import Stage2Settings

    paper = Stage2Settings()
    return {"images": None, "face_model": "antelopev2", "rig_model": "", **_RIG_ASSETS, "name": "my_face",
            "steps": paper.steps, "batch": paper.batch, "learning_rate": paper.lr, "seed": paper.seed,
            "save_every": paper.save_every, "preview_every": paper.preview_every, "saved_progress": "resume",
            "overwrite": False, "fp16": True}


#: AnybodyRigPersonalize's inputs; ``rig_model`` names the stage-1 file in models/diffusionrig
RIG_PERSONALIZE_FIELDS: dict[str, Any] = _rig_personalize_fields()
