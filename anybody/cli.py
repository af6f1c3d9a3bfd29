"""``python -m anybody``: the methods without a UI, on a local checkpoint or the built-in tiny demo model."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import AnybodyError


def _add_train_options(p: argparse.ArgumentParser) -> None:
    from .methods.cross_init import PRESETS

    p.add_argument("--preset", default="paper-320", choices=[*PRESETS, "custom"],
                   help="paper-320: the paper's 320 steps; fast-25: 25 steps (default: paper-320)")
    p.add_argument("--steps", type=int, help="override the preset's number of steps")
    p.add_argument("--lr", type=float, help="learning rate (paper: 0.005)")
    p.add_argument("--batch", type=int, help="images per step (paper: 8)")
    p.add_argument("--grad-accum", type=int, help="accumulate this many batches per step")
    p.add_argument("--resolution", type=int, help="training resolution in pixels (paper: 512)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, help="save resumable state every N steps (default 100)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute UNet activations in the backward pass: less memory, about 1/3 slower")
    p.add_argument("--resume", action="store_true", help="continue a stopped run of the same name")
    p.add_argument("--restart", action="store_true", help="discard a stopped run's saved progress and start over")
    p.add_argument("--overwrite", action="store_true", help="replace an existing embedding of that name")
    p.add_argument("--names", help="celebrity name list (one per line) instead of the bundled one")
    p.add_argument("--out", default="anybody_out", help="output folder (embeddings/ and training_state/ inside)")


def _add_likeness_options(p, needs: str = "") -> None:
    p.add_argument("--likeness-every", type=int, default=-1, metavar="N",
                   help=f"{needs}every N steps render 2 images and score them against the photos (curve in "
                        "<out>/training_state/<name>.loss.csv); -1 (default): a quarter of the run on a GPU within 10 %% "
                        "of the training time (so not for short runs), off on the CPU; 0: off")
    p.add_argument("--likeness-patience", type=int, default=0, metavar="K",
                   help="stop after K evaluations without a better likeness (default 0: never early)")
    p.add_argument("--last-step", action="store_true",
                   help="save the last step's result, not the best-scoring evaluation's")


def _likeness(args) -> dict:
    return {"likeness_every": args.likeness_every, "likeness_patience": args.likeness_patience,
            "keep_best": not args.last_step}


def _config(args, **defaults):
    from .methods.cross_init import preset

    overrides = {k: getattr(args, a) for k, a in [("steps", "steps"), ("lr", "lr"), ("batch", "batch"),
                 ("grad_accum", "grad_accum"), ("resolution", "resolution"), ("save_every", "save_every")]
                 if getattr(args, a) is not None}
    return preset(args.preset, **{**defaults, **overrides, "seed": args.seed,
                                  "gradient_checkpointing": args.gradient_checkpointing})


def _cpu_compute(name: str):
    import torch

    from .host.half_weights import cpu_has_native_bf16

    if name == "fp32":
        return None
    if not cpu_has_native_bf16():
        print("warning: this CPU has no bf16 instructions; --compute bf16 will be slower than fp32", file=sys.stderr)
    return torch.bfloat16


def _check_faces(args, images, names):
    """With a face pack: say which photos have no face, and crop to the faces when asked."""
    from .face.models import load_face_models
    from .face.training_photos import describe_missing, face_crops, photos_without_faces

    models = load_face_models(args.face_pack, [Path(args.models_root).expanduser()], "auto")
    missing = photos_without_faces(models, images)
    if missing:
        print(f"warning: {describe_missing(missing, names)}", file=sys.stderr)
    return (face_crops(models, images, args.resolution or 512) if args.crop_to_face else images), models


def cmd_train_cross_init(args) -> int:
    from .host.checkpoint import detect_family, load_checkpoint_host
    from .images import image_files, load_images
    from .methods.cross_init import train_cross_init, vector_stats

    from .methods.cross_init import check_settings
    from .files import ensure_writable_folder

    from dataclasses import replace

    config = replace(_config(args), **_likeness(args))
    check_settings(args.name, config, args.names)  # cheap checks first: nothing loads before they pass
    if args.likeness_every > 0 and not args.face_pack:
        raise AnybodyError("--likeness-every needs --face-pack (the face models that score the renders).")
    if args.crop_to_face and not args.face_pack:
        raise AnybodyError("--crop-to-face needs --face-pack (the face detector that finds the faces).")
    ensure_writable_folder(Path(args.out))
    detect_family(args.checkpoint)  # a wrong file fails before photos or weights load
    # photos are read at most 2x the largest training size: the full-size pixels are never needed
    files = image_files(args.images)
    images = load_images(files, max_side=2 * max(args.resolution or 0, 1024))
    face_models = None
    if args.face_pack:
        images, face_models = _check_faces(args, images, [f.name for f in files])
    host = load_checkpoint_host(args.checkpoint, out_dir=args.out, prediction=args.prediction,
                                low_memory=args.low_memory, cpu_compute=_cpu_compute(args.compute))
    init = None
    if args.init_identity:
        from .identity import Identity

        init = Identity.load(args.init_identity)
    identity, path, _ = train_cross_init(host, images, args.name, config, names_file=args.names,
                                         resume=args.resume, overwrite=args.overwrite, restart=args.restart,
                                         init_identity=init, face_models=face_models)
    stats = {k: round(v, 3) for k, v in vector_stats(next(iter(identity.vectors.values()))).items()}
    print(f"{path}\n{identity.describe()} {stats}")
    return 0


def cmd_train_celeb_basis(args) -> int:
    from dataclasses import replace

    from .face.models import load_face_models
    from .face.recognizer import pack_recognizer, torch_recognizer
    from .face.training_photos import ffhq_faces
    from .files import ensure_writable_folder
    from .host.checkpoint import detect_family, load_checkpoint_host
    from .images import image_files, load_images
    from .methods.celeb_basis import CelebBasisConfig, Person, check_settings, train_celeb_basis
    from .methods.runs import default_resolution

    people = []
    for spec in args.person:
        name, sep, photos = spec.partition("=")
        if not sep or not name.strip() or not photos.strip():
            raise AnybodyError(f"--person {spec!r}: write NAME=PHOTOS (a photo or a folder of photos), e.g. "
                               "--person alice=photos/alice")
        people.append((name.strip(), photos.strip()))
    overrides = {k: getattr(args, k) for k in ("steps", "lr", "batch", "resolution", "views", "save_every",
                                                "components", "rows") if getattr(args, k) is not None}
    config = replace(CelebBasisConfig(), seed=args.seed, gradient_checkpointing=args.gradient_checkpointing,
                     **overrides, **_likeness(args))
    check_settings([name for name, _ in people], config, args.names)  # cheap checks first
    ensure_writable_folder(Path(args.out))
    detect_family(args.checkpoint)
    recognizer = torch_recognizer(args.recognizer) if args.recognizer else None
    faces = load_face_models(args.face_pack, [Path(args.models_root).expanduser()], args.provider)
    if recognizer is None:
        recognizer = pack_recognizer(faces)
        print(f"note: no --recognizer: using the pack's {recognizer.name} (the paper used CosFace r100)",
              file=sys.stderr)
    host = load_checkpoint_host(args.checkpoint, out_dir=args.out, prediction=args.prediction,
                                low_memory=args.low_memory, cpu_compute=_cpu_compute(args.compute))
    size = config.resolution or default_resolution(host)
    aligned = []
    for name, photos in people:
        files = image_files(photos)
        crops = ffhq_faces(faces, load_images(files, max_side=4 * size), size, [f.name for f in files],
                           lambda m: print(f"note: {m}", file=sys.stderr))
        aligned.append(Person(name, crops))
    results = train_celeb_basis(host, aligned, recognizer, config, names_file=args.names, resume=args.resume,
                                overwrite=args.overwrite, restart=args.restart, face_models=faces)
    for result in results:
        print(f"{result.path}\n{result.identity.describe()}")
    return 0


def cmd_train_magicapture(args) -> int:
    from .face.models import load_face_models
    from .face.recognizer import torch_recognizer
    from .files import ensure_writable_folder
    from .host.checkpoint import detect_family, load_checkpoint_host
    from .images import image_files, load_images
    from .methods.magicapture import check_settings, face_tools, preset, train_magicapture
    from .nets.bisenet import load_bisenet

    overrides = {k: getattr(args, k) for k in ("resolution", "save_every") if getattr(args, k) is not None}
    config = preset(args.preset, seed=args.seed, gradient_checkpointing=args.gradient_checkpointing, **overrides,
                    **_likeness(args))
    check_settings(args.subject_name, args.style_name, config)  # cheap checks first
    ensure_writable_folder(Path(args.out))
    detect_family(args.checkpoint)
    recognizer = torch_recognizer(args.recognizer)
    parsing = load_bisenet(args.parsing)
    faces = load_face_models(args.face_pack, [Path(args.models_root).expanduser()], args.provider)
    subjects = load_images(image_files(args.subject), max_side=2048)
    styles = load_images(image_files(args.style), max_side=2048)
    host = load_checkpoint_host(args.checkpoint, out_dir=args.out, prediction=args.prediction,
                                low_memory=args.low_memory, cpu_compute=_cpu_compute(args.compute))
    tools = face_tools(faces, parsing.to(host.device), recognizer, host.device, parsing_name=Path(args.parsing).name)
    result = train_magicapture(host, subjects, styles, tools,
                               args.subject_name, args.style_name, config, resume=args.resume, overwrite=args.overwrite,
                               restart=args.restart)
    print(f"{result.lora_path}\n{result.subject_path}\n{result.style_path}")
    return 0


def cmd_demo(args) -> int:
    from .assets import asset_path
    from .host.tiny import tiny_host
    from .images import load_images
    from .methods.cross_init import train_cross_init

    print("Anybody demo: Cross-Init on a TINY RANDOM-WEIGHT model built on the spot, with a bundled face photo.\n"
          "A random model has learned nothing, so its images are noise; the point is to run the whole path\n"
          "(init, training, state, stock embedding file) in a minute. For real results run, e.g.:\n"
          "  python -m anybody train cross-init --checkpoint sd15.safetensors --images photos/ --name alice\n"
          "or use the CrossInitTrain node in ComfyUI.\n", flush=True)
    start = time.perf_counter()
    host = tiny_host(args.out, seed=args.seed)
    images = load_images([asset_path("demo_face.jpg")])
    identity, path, _ = train_cross_init(host, images, args.name, _config(args, resolution=64, save_every=10),
                                         resume=args.resume, restart=not args.resume, overwrite=True)
    cond = host.encode_prompts([f"a photo of {identity.word} person"], {identity.word: identity.vectors})
    print(f"\nDone in {time.perf_counter() - start:.1f} s: {path}\n{identity.describe()}; "
          f"conditioning {tuple(cond.context.shape)}. Load it with diffusers `load_textual_inversion`, ComfyUI "
          f"`embedding:{identity.name}`, or A1111 by copying it into the embeddings folder.")
    return 0


def cmd_align(args) -> int:
    import json

    from .face.models import load_face_models
    from .face.pipeline import align_one, reference_embedding
    from .face.templates import template
    from .files import atomic_write
    from .images import image_files, read_image_uint8

    tpl = template(args.template)
    files = image_files(args.input)
    out = Path(args.output)
    _check_output_apart_from_input(Path(args.input), out, files, args.output_inside_input)
    models = load_face_models(args.pack, [Path(args.models_root).expanduser()], args.provider)
    reference = None
    if args.select == "most_similar":
        if not args.reference:
            raise AnybodyError("--select most_similar needs --reference PHOTO")
        reference = reference_embedding(models, [read_image_uint8(args.reference)])
    records, skipped = [], []
    no_face = "pass_through" if args.if_no_face == "pass_through" else "error"
    for i, path in enumerate(files):
        image = read_image_uint8(path)
        try:
            aligned = align_one(models, image, tpl, args.select, args.index, reference, no_face, i, border=args.border)
        except AnybodyError as exc:
            if args.if_no_face != "skip" or "No face found" not in str(exc):
                raise
            skipped.append(path.name)
            print(f"skipped {path.name}: no face", file=sys.stderr)
            continue
        target = out / f"{path.stem}.png"
        atomic_write(target, lambda tmp, a=aligned: _save_png(a.crop, tmp), overwrite=args.overwrite)
        records.append({"file": path.name, "crop": target.name, **aligned.record()})
        print(f"{path.name} -> {target}", flush=True)
    summary = {"template": tpl.name, "size": tpl.size, "models": models.describe(), "faces": records,
               "skipped": skipped}
    atomic_write(out / "landmarks.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1)),
                 overwrite=True)
    print(f"{len(records)} crop(s) and landmarks.json in {out}" + (f"; {len(skipped)} skipped" if skipped else ""))
    return 0


def cmd_adaface(args) -> int:
    from .face.models import load_face_models
    from .face.training_photos import describe_missing
    from .images import image_files, load_images
    from .methods.adaface import adaface_identity
    from .nets.adaface_files import load_adaface

    files = image_files(args.photos)
    photos = load_images(files, max_side=2048)
    faces = load_face_models(args.pack, [Path(args.models_root).expanduser()], args.provider)
    encoder = load_adaface(args.adaface, args.arc2face)
    identity, missing = adaface_identity(encoder, faces, photos, args.name, args.strength)
    if missing:
        print(describe_missing(missing, [f.name for f in files]), file=sys.stderr)
    path = identity.save(Path(args.out) / "embeddings" / f"{identity.name}.safetensors", overwrite=args.overwrite)
    print(f"{identity.describe()} -> {path}; A1111: write {identity.name}; ComfyUI: embedding:{identity.name} "
          "(SD1.x checkpoints)")
    return 0


def _check_output_apart_from_input(source: Path, out: Path, files: list[Path], allowed: bool) -> None:
    """Crops never land on the photos they came from: an output folder that is, contains or is inside the input
    folder is refused unless asked for, and a crop that would replace an input file is refused always."""
    src, dst = source.resolve(), out.resolve()
    folder = src if src.is_dir() else src.parent
    overlapping = dst == folder or folder in dst.parents or dst in folder.parents
    if overlapping and not allowed and src.is_dir():
        raise AnybodyError(f"The output folder {out} is, contains or lies inside the input folder {source}; crops would "
                           "mix with (or replace) your photos. Choose a separate folder, or pass --output-inside-input.")
    inputs = {f.resolve() for f in files}
    clash = [f.name for f in files if (dst / f"{f.stem}.png").resolve() in inputs]
    if clash:
        raise AnybodyError(f"Writing the crops to {out} would replace input photo(s) {', '.join(clash[:3])}. "
                           "Choose another output folder.")


def _save_png(array, path) -> None:
    from PIL import Image

    Image.fromarray(array).save(path, format="PNG")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m anybody", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of unexpected errors")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run Cross-Init end to end on a tiny built-in model (no downloads)")
    _add_train_options(demo)
    demo.set_defaults(func=cmd_demo, name="demo", preset="fast-25")
    train = sub.add_parser("train", help="train an identity")
    methods = train.add_subparsers(dest="method", required=True)
    ci = methods.add_parser("cross-init", help="Cross Initialization textual inversion (CVPR 2024)")
    ci.add_argument("--checkpoint", required=True, help="local SD1.x/SD2.x single-file .safetensors checkpoint")
    ci.add_argument("--images", required=True, help="a folder of face photos, or one photo")
    ci.add_argument("--name", required=True, help="identity name: writes <out>/embeddings/<name>.safetensors")
    ci.add_argument("--low-memory", action="store_true",
                    help="CPU: keep frozen UNet weights in fp16 (SD1.5: 1.6 GiB less; exact for fp16 checkpoints)")
    ci.add_argument("--compute", choices=["fp32", "bf16"], default="fp32",
                    help="CPU: precision of the UNet's matmuls. bf16 is what GPU training uses and is several times "
                         "faster on CPUs with bf16 instructions (AVX512-BF16/AMX); fp32 (default) is exact")
    ci.add_argument("--face-pack", help="insightface pack (e.g. antelopev2) to check the photos for faces; "
                                        "photos without one are listed")
    ci.add_argument("--models-root", default="~/.insightface", help="folder holding models/<pack>/*.onnx")
    ci.add_argument("--crop-to-face", action="store_true",
                    help="with --face-pack: train on FFHQ-aligned face crops instead of the whole photos")
    ci.add_argument("--init-identity", help="start from this embedding file's vectors (e.g. one from `anybody "
                                            "adaface`) instead of the celebrity average")
    ci.add_argument("--prediction", choices=["eps", "v"], default=None,
                    help="v for v-prediction checkpoints such as SD2.x-768 (default: eps)")
    _add_likeness_options(ci, "with --face-pack: ")
    _add_train_options(ci)
    ci.set_defaults(func=cmd_train_cross_init)
    cb = methods.add_parser("celeb-basis", help="Celeb Basis: one or several people as coefficients on a basis of "
                                                "celebrity names (NeurIPS 2023)")
    cb.add_argument("--checkpoint", required=True, help="local SD1.x/SD2.x single-file .safetensors checkpoint")
    cb.add_argument("--person", required=True, action="append", metavar="NAME=PHOTOS",
                    help="a person to learn and their photo(s) (a file or a folder); repeat for several people, who "
                         "train jointly: --person alice=photos/alice --person bob=bob.jpg")
    cb.add_argument("--recognizer", help="insightface arcface_torch IResNet .pth (the paper's: "
                                         "glint360k_cosface_r100_fp16_0.1/backbone.pth); default: the face pack's own")
    cb.add_argument("--face-pack", default="antelopev2", help="insightface pack that finds and aligns the faces")
    cb.add_argument("--models-root", default="~/.insightface", help="folder holding models/<pack>/*.onnx")
    cb.add_argument("--provider", default="auto", choices=["auto", "CPU", "CUDA"])
    cb.add_argument("--steps", type=int, help="steps per person (paper: 400)")
    cb.add_argument("--lr", type=float, help="learning rate of the map (paper: 0.01)")
    cb.add_argument("--batch", type=int, help="views per step (paper: 2)")
    cb.add_argument("--resolution", type=int, help="training resolution (default: the model's own)")
    cb.add_argument("--views", type=int, help="augmented views per person, encoded once (default 64)")
    cb.add_argument("--components", type=int, help="basis directions per token position (paper: 512)")
    cb.add_argument("--rows", choices=["as_built", "distinct_tokens"],
                    help="as_built (official, default): every name's token counts; distinct_tokens: each token once")
    cb.add_argument("--names", help="celebrity name list (one per line; the paper's wiki_names_v2.txt works)")
    cb.add_argument("--seed", type=int, default=23)
    cb.add_argument("--save-every", type=int, help="save resumable state every N steps (default 100)")
    cb.add_argument("--gradient-checkpointing", action="store_true",
                    help="recompute UNet activations in the backward pass: less memory, about 1/3 slower")
    cb.add_argument("--resume", action="store_true", help="continue a stopped run of the same people")
    cb.add_argument("--restart", action="store_true", help="discard a stopped run's saved progress and start over")
    cb.add_argument("--overwrite", action="store_true", help="replace existing embeddings of those names")
    _add_likeness_options(cb)
    cb.add_argument("--out", default="anybody_out", help="output folder (embeddings/ and training_state/ inside)")
    cb.add_argument("--prediction", choices=["eps", "v"], default=None, help="v for v-prediction checkpoints")
    cb.add_argument("--low-memory", action="store_true", help="CPU: keep frozen UNet weights in fp16")
    cb.add_argument("--compute", choices=["fp32", "bf16"], default="fp32", help="CPU: precision of the UNet's matmuls")
    cb.set_defaults(func=cmd_train_celeb_basis)
    mc = methods.add_parser("magicapture", help="MagiCapture: a person and a portrait style in one LoRA (AAAI 2024)")
    mc.add_argument("--checkpoint", required=True, help="local SD1.x single-file .safetensors checkpoint")
    mc.add_argument("--subject", required=True, help="photos of the person (a folder, or one photo)")
    mc.add_argument("--style", required=True, help="portraits in the style to learn (a folder, or one photo)")
    mc.add_argument("--subject-name", required=True, help="the person's token and embedding file name")
    mc.add_argument("--style-name", required=True, help="the style's token and embedding file name")
    mc.add_argument("--recognizer", required=True, help="insightface arcface_torch IResNet .pth (the paper: "
                                                        "ms1mv3_arcface_r100_fp16/backbone.pth)")
    mc.add_argument("--parsing", required=True, help="BiSeNet face parsing weights 79999_iter.pth")
    mc.add_argument("--face-pack", default="antelopev2", help="insightface pack that finds the faces")
    mc.add_argument("--models-root", default="~/.insightface", help="folder holding models/<pack>/*.onnx")
    mc.add_argument("--provider", default="auto", choices=["auto", "CPU", "CUDA"])
    mc.add_argument("--preset", default="paper", choices=["paper", "fast"],
                    help="paper: 1,200 + 1,500 steps; fast: 300 + 400 (ours)")
    mc.add_argument("--resolution", type=int, help="training resolution (default: the model's own, 512)")
    mc.add_argument("--seed", type=int, default=42)
    mc.add_argument("--save-every", type=int, help="save resumable state every N steps (default 100)")
    mc.add_argument("--gradient-checkpointing", action="store_true", help="less memory, about 1/3 slower")
    mc.add_argument("--resume", action="store_true", help="continue a stopped run of the same names")
    mc.add_argument("--restart", action="store_true", help="discard a stopped run's saved progress and start over")
    mc.add_argument("--overwrite", action="store_true", help="replace existing files of those names")
    _add_likeness_options(mc, "in phase 2: ")
    mc.add_argument("--out", default="anybody_out", help="output folder (loras/, embeddings/, training_state/)")
    mc.add_argument("--prediction", choices=["eps", "v"], default=None, help=argparse.SUPPRESS)
    mc.add_argument("--low-memory", action="store_true", help="CPU: keep frozen UNet weights in fp16")
    mc.add_argument("--compute", choices=["fp32", "bf16"], default="fp32", help="CPU: precision of the UNet's matmuls")
    mc.set_defaults(func=cmd_train_magicapture)
    al = sub.add_parser("align", help="detect and align faces: writes crops and landmarks.json")
    al.add_argument("input", help="a folder of photos, or one photo")
    al.add_argument("output", help="folder for <photo>.png crops and landmarks.json")
    al.add_argument("--template", default="ffhq512", help="ffhq256 | ffhq512 | ffhq1024 | arcface112")
    al.add_argument("--pack", default="antelopev2", help="insightface model pack (default antelopev2)")
    al.add_argument("--models-root", default="~/.insightface",
                    help="folder holding models/<pack>/*.onnx (default ~/.insightface, insightface's own)")
    al.add_argument("--provider", default="auto", choices=["auto", "CPU", "CUDA"])
    al.add_argument("--select", default="largest", choices=["largest", "index", "most_similar"])
    al.add_argument("--index", type=int, default=0, help="with --select index: 0 is the leftmost face")
    al.add_argument("--reference", help="with --select most_similar: a photo of the person")
    al.add_argument("--if-no-face", default="skip", choices=["skip", "error", "pass_through"])
    al.add_argument("--border", default="black", choices=["black", "reflect"],
                    help="what fills a crop beyond the photo's edge: black, or reflect (FFHQ's mirrored, blurred fill)")
    al.add_argument("--overwrite", action="store_true", help="replace crops already in the output folder")
    al.add_argument("--output-inside-input", action="store_true",
                    help="allow an output folder that is or lies inside the input folder (input files are never replaced)")
    al.set_defaults(func=cmd_align)
    ada = sub.add_parser("adaface", help="zero-shot: face photo(s) -> a 16-vector SD1.x embedding (AdaFace)")
    ada.add_argument("photos", help="a folder of photos of one person, or one photo")
    ada.add_argument("--name", required=True, help="identity name: writes <out>/embeddings/<name>.safetensors")
    ada.add_argument("--adaface", required=True, help="AdaFace checkpoint (subjects-celebrity2024-05-16T17-22-46_"
                                                      "zero3-ada-30000.pt from adaface-neurips/adaface)")
    ada.add_argument("--arc2face", required=True, help="folder with Arc2Face's encoder/ (FoivosPar/Arc2Face)")
    ada.add_argument("--strength", type=float, default=1.0, help="ID strength (1.0: as AdaFace makes them)")
    ada.add_argument("--pack", default="antelopev2", help="insightface model pack (default antelopev2)")
    ada.add_argument("--models-root", default="~/.insightface", help="folder holding models/<pack>/*.onnx")
    ada.add_argument("--provider", default="auto", choices=["auto", "CPU", "CUDA"])
    ada.add_argument("--out", default="anybody_out", help="output folder (default anybody_out)")
    ada.add_argument("--overwrite", action="store_true", help="replace an embedding of that name")
    ada.set_defaults(func=cmd_adaface)
    from .cli_rig import add_rig_parser

    add_rig_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .train.interrupts import install_sigterm_as_interrupt

    for stream in (sys.stdout, sys.stderr):  # file names that are not valid UTF-8 must not crash a print
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    install_sigterm_as_interrupt()
    try:
        return args.func(args)
    except AnybodyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted.", file=sys.stderr)  # the trainer has said whether progress was saved
        return 130
    except Exception as exc:  # a fault of ours or of a library: one line, the traceback on request
        if args.debug:
            raise
        print(f"error: {type(exc).__name__}: {exc} (run with --debug for details)", file=sys.stderr)
        return 1
