"""``python -m anybody rig render|personalize``: DiffusionRig from the command line (the same core as the nodes)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path



def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _assets(args):
    from .rig.assets import DECA_MODEL, FLAME_MODEL, FLAME_TEXTURE, HEAD_TEMPLATE, LANDMARKS, load_rig_files

    flame, deca = Path(args.flame).expanduser(), Path(args.deca).expanduser()
    return load_rig_files(flame / FLAME_MODEL, flame / FLAME_TEXTURE, deca / DECA_MODEL, deca / HEAD_TEMPLATE,
                          deca / LANDMARKS)


def _face_models(args):
    from .face.models import load_face_models

    return load_face_models(args.pack, [Path(args.models_root).expanduser()], args.provider)


def _write_png(image, path: Path, overwrite: bool) -> None:
    """``image``: [H, W, 3] float tensor/array in [0, 1]."""
    import numpy as np
    from PIL import Image

    from .files import atomic_write

    array = (np.asarray(image, dtype=np.float32).clip(0, 1) * 255).round().astype(np.uint8)
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"), overwrite=overwrite)


def cmd_rig_render(args) -> int:
    from .images import load_images
    from .rig.model_file import read_model
    from .rig.pipeline import Sliders, buffer_pictures, edit_photos

    head, deca = _assets(args)
    model, info = read_model(Path(args.model)) if args.model else (None, None)
    if model is not None:
        print(f"DiffusionRig {Path(args.model).name}: {info.describe()}", file=sys.stderr)
    targets = load_images([Path(args.target)], max_side=4096) if args.target else None
    sliders = Sliders(args.yaw, args.pitch, args.roll, args.jaw_open, args.expression_scale, args.light_azimuth,
                      args.light_elevation, args.light_strength)
    result = edit_photos(head, deca, _face_models(args), load_images([Path(args.photo)], max_side=4096), targets,
                         [m.strip() for m in args.edits.split(",") if m.strip()] if targets else [], sliders, model,
                         None if info is None else info.mean_shape, args.seed, _device(), paste=args.paste_back,
                         steps=args.sampling_steps)
    out, stem = Path(args.out) / "rig", Path(args.photo).stem
    pictures = buffer_pictures(result.buffers)
    for k, label in enumerate(result.labels):
        if result.sampled:
            _write_png(result.images[k], out / f"{stem}_{k:02d}.png", args.overwrite)
        for name, file_name in (("rendered", "rendered"), ("normals", "normal"), ("albedo", "albedo")):
            _write_png(pictures[name][k].permute(1, 2, 0).cpu().numpy(), out / f"{stem}_{k:02d}_{file_name}.png",
                       args.overwrite)
        print(f"{stem}_{k:02d}: {label}")
    print(f"-> {out}")
    return 0


def cmd_rig_personalize(args) -> int:
    from .images import image_files, load_images
    from .nets.converted import sha256
    from .rig.model_file import read_model
    from .rig.personal_model import train_personal_model
    from .rig.personalize import Stage2Settings
    from .train.sink import ConsoleSink

    device = _device()
    head, deca = _assets(args)
    faces = _face_models(args)
    photos = load_images(image_files(args.photos), max_side=4096)
    stage1, info = read_model(Path(args.model))
    if info.stage == 2:
        print("warning: starting from a stage-2 (already personalised) model", file=sys.stderr)
    settings = Stage2Settings(steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
                              save_every=args.save_every, preview_every=0)
    out = Path(args.out)
    result = train_personal_model(stage1, sha256(Path(args.model))[:16], head, deca, faces, photos, args.name,
                                  settings, out / "diffusionrig", out / "training_state", ConsoleSink(), device,
                                  resume=args.resume, restart=args.restart, overwrite=args.overwrite,
                                  half=not args.fp32)
    print(f"{result.path} ({result.info.describe()})" + (" - already trained: loaded" if result.reused else ""))
    return 0


def add_rig_parser(sub) -> None:
    rig = sub.add_parser("rig", help="DiffusionRig: relight / re-pose / re-express a face photo")
    commands = rig.add_subparsers(dest="rig_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--flame", required=True, help="folder with generic_model.pkl and FLAME_texture.npz "
                                                      "(flame.is.tue.mpg.de)")
        p.add_argument("--deca", required=True, help="folder with deca_model.tar, head_template.obj and "
                                                     "landmark_embedding.npy (github.com/yfeng95/DECA)")
        p.add_argument("--pack", default="antelopev2", help="insightface model pack (default antelopev2)")
        p.add_argument("--models-root", default="~/.insightface", help="folder holding models/<pack>/*.onnx")
        p.add_argument("--provider", default="auto", choices=["auto", "CPU", "CUDA"])
        p.add_argument("--out", default="anybody_out", help="output folder (default anybody_out)")
        p.add_argument("--overwrite", action="store_true", help="replace files of the same name")

    render = commands.add_parser("render", help="buffers and edits of one photo -> PNGs in <out>/rig/")
    render.add_argument("photo", help="the photo to edit (its largest face)")
    render.add_argument("--model", help="DiffusionRig model (.pt stage 1 or a personalised .safetensors); without "
                                        "it only the buffers are written")
    render.add_argument("--target", help="a photo whose light / expression / pose the edits take")
    render.add_argument("--edits", default="light,exp,pose", help="with --target: any of light,exp,pose,latent")
    for name, default in (("yaw", 0.0), ("pitch", 0.0), ("roll", 0.0), ("jaw-open", 0.0), ("expression-scale", 1.0),
                          ("light-azimuth", 0.0), ("light-elevation", 0.0), ("light-strength", 0.0)):
        render.add_argument(f"--{name}", type=float, default=default)
    render.add_argument("--seed", type=int, default=0, help="the one noise every edit starts from")
    render.add_argument("--sampling-steps", type=int, default=20, help="DDIM steps (the paper: 20)")
    render.add_argument("--paste-back", action="store_true", help="put each edit back into the photo")
    common(render)
    render.set_defaults(func=cmd_rig_render)

    from .rig.personalize import Stage2Settings

    paper = Stage2Settings()
    personalize = commands.add_parser("personalize", help="stage 2 on ~20 photos -> <out>/diffusionrig/<name>."
                                                          "safetensors")
    personalize.add_argument("photos", help="a folder of photos of one person")
    personalize.add_argument("--name", required=True)
    personalize.add_argument("--model", required=True, help="the stage-1 model (.pt)")
    personalize.add_argument("--steps", type=int, default=paper.steps, help=f"default {paper.steps} (the paper)")
    personalize.add_argument("--batch", type=int, default=paper.batch)
    personalize.add_argument("--lr", type=float, default=paper.lr)
    personalize.add_argument("--seed", type=int, default=paper.seed)
    personalize.add_argument("--save-every", type=int, default=paper.save_every)
    personalize.add_argument("--fp32", action="store_true", help="on a GPU, compute in fp32 (default: fp16 with loss "
                                                                 "scaling, as the official script)")
    personalize.add_argument("--resume", action="store_true", help="continue a stopped run's saved progress")
    personalize.add_argument("--restart", action="store_true", help="discard a stopped run's saved progress")
    common(personalize)
    personalize.set_defaults(func=cmd_rig_personalize)


__all__ = ["add_rig_parser"]
