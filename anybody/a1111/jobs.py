"""What the tab and the HTTP routes run, on the webui's loaded model. Callers hold the webui's queue lock.

Each job takes decoded photos and checked fields (``fields.py``) and returns a JSON-friendly dict; user errors
are :class:`AnybodyError` with a message for the person at the keyboard.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Sequence

import torch

from .. import __version__
from ..errors import BadInputError
from ..host import a1111 as webui
from ..methods.cross_init import DEFAULT_NAMES, CrossInitConfig, train_cross_init, vector_stats
from ..methods.runs import default_resolution
from .fields import ADAFACE_FIELDS, BUNDLED_NAMES

ADAFACE_DEFAULT = ADAFACE_FIELDS["adaface"]

NAMES_FOLDER = "celebrity_names"
RECOGNITION_FOLDER = "face_recognition"


def names_folder() -> Path:
    from modules import paths

    return Path(paths.models_path) / NAMES_FOLDER


def name_lists() -> list[str]:
    folder = names_folder()
    files = sorted(p.name for p in folder.glob("*.txt")) if folder.is_dir() else []
    return [BUNDLED_NAMES, *files]


def names_path(choice: str) -> Path:
    if choice in ("", BUNDLED_NAMES):
        return DEFAULT_NAMES
    if Path(choice).name != choice:
        raise BadInputError(f"names_file {choice!r} must be a file name in {names_folder()}, not a path.")
    path = names_folder() / choice
    if not path.is_file():
        raise BadInputError(f"Name list {choice!r} not found in {names_folder()} (put one name per line in a .txt file "
                            f"there; available: {', '.join(name_lists())}).")
    return path


@functools.lru_cache(maxsize=2)
def _face_models(pack: str, stamp: float):
    from ..face.models import load_face_models

    return load_face_models(pack, webui.face_model_roots(), "auto", 640)


def face_models(pack: str):
    """An insightface pack from models/insightface, loaded once (reloaded when its folder changes)."""
    from ..face.models import find_pack

    folder = find_pack(pack, webui.face_model_roots())
    return _face_models(pack, folder.stat().st_mtime)


def face_packs(installed_only: bool = False) -> list[str]:
    """Pack names for the dropdowns (the well-known ones first, so choosing a missing one explains where it goes);
    ``installed_only``: those whose files are really there."""
    from ..face.models import find_pack, list_packs

    try:
        packs = list_packs(webui.face_model_roots())
    except Exception:  # a broken folder must not break the page
        return []
    if not installed_only:
        return packs

    def present(pack: str) -> bool:
        try:
            find_pack(pack, webui.face_model_roots())
            return True
        except Exception:
            return False

    return [p for p in packs if present(p)]


def cross_init(images: Sequence[torch.Tensor], fields: dict[str, Any], config: CrossInitConfig,
               sink=None, file_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Train on the loaded model, write ``<embeddings dir>/<name>.safetensors`` and make the webui load it.
    ``file_names`` (the tab's uploads) name the photos in warnings."""
    from ..face.training_photos import describe_missing, face_crops, photos_without_faces

    sink = sink or webui.A1111Sink("Cross-Init")
    host = webui.A1111Host(sink)
    photos, warnings, models = list(images), [], None
    if fields["face_model"]:
        models = face_models(fields["face_model"])
        missing = photos_without_faces(models, photos)
        if missing:
            warnings.append(describe_missing(missing, file_names))
            host.sink.log(warnings[-1])
        if fields["crop_to_face"]:
            photos = face_crops(models, photos, fields["resolution"] or default_resolution(host))
    elif fields["crop_to_face"]:
        raise BadInputError("crop_to_face needs face_model (the insightface pack that finds the faces, e.g. antelopev2).")
    init = None
    if fields["init_identity"]:
        from ..identity import Identity
        from .inject import resolve

        init = Identity.load(resolve(fields["init_identity"]))
    identity, path, reused = train_cross_init(host, photos, fields["name"], config,
                                              names_file=names_path(fields["names_file"]),
                                              resume=fields["saved_progress"] == "resume",
                                              restart=fields["saved_progress"] == "start over",
                                              overwrite=fields["overwrite"], init_identity=init, face_models=models)
    webui.refresh_embeddings()
    stats = vector_stats(next(iter(identity.vectors.values())))
    best = identity.metadata.get("anybody.likeness.best")
    return {"likeness": None if best is None else float(best),
            "likeness_step": None if best is None else int(identity.metadata["anybody.likeness.best_step"]),
            "name": identity.name, "prompt_word": identity.name, "path": str(path), "reused": reused,
            "family": identity.family, "vectors": identity.num_vectors, "steps": config.steps,
            "norm_min": round(stats["norm_min"], 4), "norm_max": round(stats["norm_max"], 4), "warnings": warnings,
            "seconds_per_step": None if reused else sink.seconds_per_step()}


WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors")


def weight_files(folder: str) -> list[str]:
    """Weight files in the webui's ``models/<folder>`` (face_parsing, face_recognition)."""
    from modules import paths

    root = Path(paths.models_path) / folder
    return sorted(p.name for p in root.glob("*") if p.suffix in WEIGHT_SUFFIXES) if root.is_dir() else []


def recognizer_files() -> list[str]:
    return weight_files(RECOGNITION_FOLDER)


@functools.lru_cache(maxsize=1)
def _recognizer(path: str, stamp: tuple):
    from ..face.recognizer import torch_recognizer

    return torch_recognizer(path)


def recognizer(choice: str, models):
    """The recognizer file ``choice`` from models/face_recognition (loaded once per file version); "auto": the first
    file there, else the face pack's own; "pack": the pack's own."""
    from ..face.recognizer import pack_recognizer

    if choice == "auto":
        files = recognizer_files()
        choice = files[0] if files else "pack"
    if choice in ("pack", ""):
        return pack_recognizer(models)
    path = _model_file(RECOGNITION_FOLDER, choice, "recognizer")
    if not path.is_file():
        from ..errors import ModelFileError
        from ..nets.iresnet import SOURCE

        raise ModelFileError(f"Face recognizer not found: {path}. Get it from {SOURCE} and put it there (any file "
                             "name), or set 'recognizer' to \"pack\" to use the face pack's own.")
    stat = path.stat()
    return _recognizer(str(path), (stat.st_size, stat.st_mtime_ns))


def celeb_basis(images: Sequence[torch.Tensor], fields: dict[str, Any], config, sink=None,
                file_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Train one or several people on the loaded model; write ``<name>.safetensors`` for each and make the webui
    load them."""
    from ..methods.celeb_basis import (EXPERIMENTAL, check_settings, group_photos, people_from_photos,
                                       train_celeb_basis)

    check_settings([name for name, _ in group_photos(fields["names"], len(images))], config,
                   names_path(fields["names_file"]))
    sink = sink or webui.A1111Sink("Celeb Basis")
    host = webui.A1111Host(sink)
    warnings: list[str] = []

    def note(message: str) -> None:
        warnings.append(message)
        host.sink.log(message)

    if host.family in EXPERIMENTAL:
        note(f"{EXPERIMENTAL[host.family]}.")
    models = face_models(fields["face_model"])
    people = people_from_photos(models, images, fields["names"], config.resolution or default_resolution(host),
                                file_names, note)
    chosen = recognizer(fields["recognizer"], models)
    if chosen.source == "onnx":
        note(f"Using the face pack's recognizer {chosen.name}; the paper used CosFace r100 (put "
             "glint360k_cosface_r100_fp16_0.1/backbone.pth in models/face_recognition).")
    results = train_celeb_basis(host, people, chosen, config, names_file=names_path(fields["names_file"]),
                                resume=fields["saved_progress"] == "resume",
                                restart=fields["saved_progress"] == "start over", overwrite=fields["overwrite"],
                                face_models=models)
    webui.refresh_embeddings()
    reused = all(r.reused for r in results)
    return {"people": [{"name": r.identity.name, "prompt_word": r.identity.name, "path": str(r.path)}
                       for r in results],
            "reused": reused, "family": results[0].identity.family, "steps": config.steps * len(results),
            "warnings": warnings, "seconds_per_step": None if reused else sink.seconds_per_step()}


@functools.lru_cache(maxsize=1)
def _parsing_net(path: str, stamp: tuple):
    from ..nets.bisenet import load_bisenet

    return load_bisenet(path)


def magicapture(subjects: Sequence[torch.Tensor], styles: Sequence[torch.Tensor], fields: dict[str, Any], config,
                sink=None) -> dict[str, Any]:
    """Train a subject and a style on the loaded model: a kohya LoRA in the webui's Lora folder and two embeddings."""
    from ..errors import ModelFileError
    from ..methods.magicapture import STRENGTHS, check_settings, face_tools, train_magicapture
    from ..nets.bisenet import SOURCE

    check_settings(fields["subject_name"], fields["style_name"], config)
    models = face_models(fields["face_model"])
    chosen = recognizer(fields["recognizer"], models)
    path = _model_file("face_parsing", fields["parsing_model"], "parsing_model")
    if not path.is_file():
        raise ModelFileError(f"Face parsing weights not found: {path}. Get 79999_iter.pth from {SOURCE} and put it there.")
    sink = sink or webui.A1111Sink("MagiCapture")
    host = webui.A1111Host(sink)
    stat = path.stat()
    net = _parsing_net(str(path), (stat.st_size, stat.st_mtime_ns)).to(host.device)
    tools = face_tools(models, net, chosen, host.device, parsing_name=path.name)
    result = train_magicapture(host, list(subjects), list(styles), tools, fields["subject_name"], fields["style_name"],
                               config, resume=fields["saved_progress"] == "resume",
                               restart=fields["saved_progress"] == "start over", overwrite=fields["overwrite"])
    webui.refresh_embeddings()
    tag = f"<lora:{result.lora_path.stem}:{STRENGTHS['text']}:{STRENGTHS['unet']}>"
    return {"lora": str(result.lora_path), "subject": result.subject.name, "style": result.style.name,
            "embeddings": [str(result.subject_path), str(result.style_path)], "reused": result.reused,
            "prompt": f"A photo of a {result.subject.name} person with style {result.style.name} {tag}",
            "seconds_per_step": None if result.reused else sink.seconds_per_step()}


def _model_file(folder: str, name: str, what: str) -> Path:
    """``models/<folder>/<name>`` of the webui; a name with a path in it is refused."""
    from modules import paths

    root = Path(paths.models_path) / folder
    if not name or Path(name).name != name or name in (".", ".."):
        raise BadInputError(f"{what} {name!r} must be a name inside {root}, not a path.")
    return root / name


@functools.lru_cache(maxsize=2)
def _adaface(path: str, arc2face: str, stamp: tuple):
    from ..nets.adaface_files import load_adaface

    return load_adaface(path, arc2face)


def adaface_files() -> tuple[list[str], list[str]]:
    """AdaFace checkpoints in models/adaface and Arc2Face folders in models/arc2face (the folder itself first)."""
    from modules import paths

    root = Path(paths.models_path)
    checkpoints = sorted(p.name for p in (root / "adaface").glob("*") if p.suffix in (".pt", ".ckpt"))
    folders = ["arc2face"] + sorted(p.name for p in (root / "arc2face").glob("*") if p.is_dir() and p.name != "encoder")
    return checkpoints or [ADAFACE_DEFAULT], folders


def adaface_encoder(fields: dict[str, Any]):
    """AdaFace + Arc2Face from ``models/adaface`` and ``models/arc2face`` (the folder itself, or a subfolder)."""
    from ..nets.adaface_files import ADAFACE_SOURCE
    from ..errors import ModelFileError

    path = _model_file("adaface", fields["adaface"], "adaface")
    if not path.is_file():
        raise ModelFileError(f"AdaFace checkpoint not found: {path}. Get {fields['adaface']} from {ADAFACE_SOURCE} "
                             "and put it there.")
    arc = path.parent.parent / "arc2face"
    if fields["arc2face"] != "arc2face":
        arc = _model_file("arc2face", fields["arc2face"], "arc2face")
    files = [path, *sorted(p for p in arc.rglob("*") if p.is_file())]
    return _adaface(str(path), str(arc), tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))


def adaface(images: Sequence[torch.Tensor], fields: dict[str, Any],
            file_names: Sequence[str] | None = None) -> tuple[dict[str, Any], Any]:
    """Face photos -> a 16-vector SD1.x identity (saved to the embeddings folder when asked)."""
    from modules import shared

    from ..face.training_photos import describe_missing
    from ..methods.adaface import adaface_identity

    family = webui.model_family(shared.sd_model)
    if family != "sd1":
        from ..errors import WrongModelFamilyError
        from ..text.embedding_file import FAMILY_LABEL

        raise WrongModelFamilyError(f"AdaFace makes SD1.x prompt vectors (CLIP-L, 768 wide); the loaded checkpoint is "
                                    f"{FAMILY_LABEL[family]}. Select an SD1.5-family checkpoint for AdaFace.")
    identity, missing = adaface_identity(adaface_encoder(fields), face_models(fields["face_model"]), list(images),
                                         fields["name"], fields["strength"])
    path = None
    if fields["save_embedding"]:
        path = identity.save_or_keep(webui.embeddings_dir() / f"{identity.name}.safetensors",
                                     overwrite=fields["overwrite"])
        webui.refresh_embeddings()
    return ({"name": identity.name, "prompt_word": identity.name if path else None,
             "path": str(path) if path else None, "vectors": identity.num_vectors, "family": identity.family,
             "strength": fields["strength"],
             "warnings": [describe_missing(missing, file_names)] if missing else []}, identity)


def align(images: Sequence[torch.Tensor], fields: dict[str, Any], progress=None) -> tuple[dict[str, Any], list]:
    """FaceAlign on uploaded photos: the crops (uint8 arrays) and one record per photo."""
    from ..face.pipeline import align_images

    references = list(fields["reference"] or [])
    aligned = align_images(face_models(fields["face_model"]), list(images), fields["template"], fields["face"],
                           fields["index"], references, fields["if_no_face"], progress, border=fields["border"])
    found = sum(a.face is not None for a in aligned)
    return {"found": found, "total": len(aligned), "faces": [a.record() for a in aligned]}, [a.crop for a in aligned]


def identity_score(images: Sequence[torch.Tensor], references: Sequence[torch.Tensor],
                   fields: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """Likeness of the faces in ``images`` to the reference photos (with the references' own baseline, the face
    rate and the copy-paste indicator), and the bar chart (uint8 array)."""
    from ..face.score import identity_report, score_plot, summarize

    report = identity_report(face_models(fields["face_model"]), list(images), list(references))
    return {**report.as_dict(), "summary": summarize(report)}, score_plot(report)


def info() -> dict[str, Any]:
    """Version, the loaded model's family and which capabilities and model files are present. Never loads a
    checkpoint (the webui loads one on first use of ``shared.sd_model``)."""
    from modules import paths, sd_models

    family, problem, checkpoint = None, None, None
    if webui.is_forge():
        problem = webui.FORGE_MESSAGE
    else:
        model = sd_models.model_data.sd_model
        checkpoint = getattr(getattr(model, "sd_checkpoint_info", None), "title", None)
        if model is None:
            problem = "No checkpoint is loaded yet (the webui loads one at the first generation)."
        else:
            try:
                family = webui.model_family(model)
            except Exception as exc:  # an unsupported model: say which
                problem = str(exc)
    packs = face_packs(installed_only=True)
    checkpoints, arc_folders = adaface_files()
    have_adaface = any((Path(paths.models_path) / "adaface" / c).is_file() for c in checkpoints)
    return {
        "version": __version__,
        "host": "forge" if webui.is_forge() else "a1111",
        "model": {"family": family, "checkpoint": checkpoint, "problem": problem},
        "embeddings_dir": str(webui.embeddings_dir()),
        "capabilities": {"cross_init": family is not None, "celeb_basis": family is not None and bool(packs),
                         "magicapture": family == "sd1" and bool(packs), "align": bool(packs), "identity_score": bool(packs),
                         "inject": family is not None, "adaface": family == "sd1" and bool(packs) and have_adaface},
        "model_files": {"insightface_packs": packs, "insightface_folders": webui.face_model_roots(),
                        "celebrity_names": name_lists(), "adaface": checkpoints if have_adaface else [],
                        "arc2face": arc_folders, "face_recognition": recognizer_files()},
        "onnxruntime": _importable("onnxruntime"), "insightface": _importable("insightface"),
    }


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# --- DiffusionRig (its own 256 px model: the webui's checkpoint is moved off the GPU while it trains) ---------

RIG_FOLDERS = {"rig_model": "diffusionrig", "flame_model": "flame", "flame_texture": "flame", "deca_model": "deca",
               "head_template": "deca", "landmark_embedding": "deca"}


def rig_files() -> list[str]:
    """DiffusionRig models in models/diffusionrig."""
    from modules import paths

    folder = Path(paths.models_path) / "diffusionrig"
    return sorted(p.name for p in folder.glob("*") if p.suffix in (".pt", ".pth", ".safetensors")) if folder.is_dir() else []


@functools.lru_cache(maxsize=1)
def _rig_assets(paths: tuple[str, ...], stamp: tuple):
    from ..rig.assets import load_rig_files

    return load_rig_files(*paths)


def _rig_file(fields: dict[str, Any], key: str) -> Path:
    from ..errors import ModelFileError
    from ..rig import assets
    from ..rig.model_file import RIG_SOURCE

    if not fields[key]:
        raise BadInputError(f"Choose a {key} file (models/{RIG_FOLDERS[key]}).")
    path = _model_file(RIG_FOLDERS[key], fields[key], key)
    if not path.is_file():
        usual = {"flame_model": assets.FLAME_MODEL, "flame_texture": assets.FLAME_TEXTURE, "deca_model": assets.DECA_MODEL,
                 "head_template": assets.HEAD_TEMPLATE, "landmark_embedding": assets.LANDMARKS}
        hint = assets.where(usual[key]) if key in usual else f"Get {RIG_SOURCE}."
        raise ModelFileError(f"{key}: {path} not found. {hint}")
    return path


def rig_assets(fields: dict[str, Any]):
    """(head model, DECA encoder) from the webui's models/flame and models/deca, loaded once per file version."""
    keys = ("flame_model", "flame_texture", "deca_model", "head_template", "landmark_embedding")
    paths = [_rig_file(fields, k) for k in keys]
    return _rig_assets(tuple(map(str, paths)), tuple((p.stat().st_size, p.stat().st_mtime_ns) for p in paths))


@functools.lru_cache(maxsize=1)
def _rig_model(path: str, stamp: tuple):
    from ..nets.converted import sha256
    from ..rig.model_file import read_model

    model, info = read_model(Path(path))
    return model.eval().requires_grad_(False), info, sha256(Path(path))[:16]


def rig_model(fields: dict[str, Any]):
    path = _rig_file(fields, "rig_model")
    return _rig_model(str(path), (path.stat().st_size, path.stat().st_mtime_ns))


def rig_render(images: Sequence[torch.Tensor], targets: Sequence[torch.Tensor] | None, fields: dict[str, Any],
               sink=None) -> tuple[dict[str, Any], list]:
    """RigRender: the edits and the buffers of the photos as [H, W, 3] uint8 arrays, with one label each."""
    from ..rig.pipeline import Sliders, buffer_pictures, edit_photos

    sink = sink or webui.A1111Sink("DiffusionRig")
    head, deca = rig_assets(fields)
    modes = [m for m, key in (("light", "edit_light"), ("exp", "edit_expression"), ("pose", "edit_pose"),
                              ("latent", "edit_latent")) if fields[key]]
    sliders = Sliders(*(fields[k] for k in ("yaw", "pitch", "roll", "jaw_open", "expression_scale", "light_azimuth",
                                            "light_elevation", "light_strength")))
    model = info = None
    if fields["rig_model"]:
        model, info, _ = rig_model(fields)
    with webui_offloaded():
        result = edit_photos(head, deca, face_models(fields["face_model"]), list(images), list(targets or []), modes,
                             sliders, model, None if info is None else info.mean_shape, fields["seed"],
                             webui.device_of_webui(), paste=fields["paste_back"],
                             on_step=lambda done, total: (sink.check_cancel(), sink.progress(done, total)))
    pictures = {name: [_uint8(p.permute(1, 2, 0).cpu().numpy()) for p in group]
                for name, group in buffer_pictures(result.buffers).items()}
    return ({"labels": result.labels, "model": info.describe() if info is not None else None},
            [[_uint8(image) for image in result.images], pictures])


def _uint8(image):
    import numpy as np

    return (np.asarray(image, dtype=np.float32).clip(0, 1) * 255).round().astype(np.uint8)


def rig_personalize(images: Sequence[torch.Tensor], fields: dict[str, Any], sink=None) -> dict[str, Any]:
    """RigPersonalize: stage 2 on the album -> models/diffusionrig/<name>.safetensors."""
    from modules import paths

    from ..rig.personal_model import train_personal_model
    from ..rig.personalize import Stage2Settings

    sink = sink or webui.A1111Sink("DiffusionRig stage 2")
    head, deca = rig_assets(fields)
    stage1, info, fingerprint = rig_model(fields)
    settings = Stage2Settings(steps=fields["steps"], batch=fields["batch"], lr=fields["learning_rate"],
                              seed=fields["seed"], save_every=fields["save_every"],
                              preview_every=fields["preview_every"])
    device = webui.device_of_webui()
    try:
        with webui_offloaded():
            result = train_personal_model(stage1, fingerprint, head, deca, face_models(fields["face_model"]),
                                          list(images), fields["name"], settings,
                                          Path(paths.models_path) / "diffusionrig",
                                          webui.training_state_dir(), sink, device,
                                          resume=fields["saved_progress"] == "resume",
                                          restart=fields["saved_progress"] == "start over",
                                          overwrite=fields["overwrite"], half=fields["fp16"])
    finally:
        deca.to("cpu")
    result.model.to("cpu")
    _rig_model.cache_clear()  # a file of that name may have been replaced
    return {"path": str(result.path), "model": result.info.describe(), "reused": result.reused,
            "seconds_per_step": None if result.reused else sink.seconds_per_step()}


class webui_offloaded:
    """The webui's checkpoint off the GPU while DiffusionRig uses it, and back afterwards (no-op on a CPU)."""

    def __enter__(self):
        from modules import sd_models, shared

        self.model = shared.sd_model if webui.device_of_webui().type == "cuda" else None
        if self.model is not None and hasattr(sd_models, "send_model_to_cpu"):
            sd_models.send_model_to_cpu(self.model)
        return self

    def __exit__(self, *exc):
        from modules import devices, sd_models

        devices.torch_gc()
        if self.model is not None and hasattr(sd_models, "send_model_to_device"):
            sd_models.send_model_to_device(self.model)
        return False
