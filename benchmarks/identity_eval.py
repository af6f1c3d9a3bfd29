"""Compare identities on the same photos: likeness (with the references' own baseline), face rate, copy-paste and
CLIP-T, from fixed prompts and seeds. How the project compares its methods with each other.

    python benchmarks/identity_eval.py --checkpoint v1-5-pruned-emaonly.safetensors \\
        --identity anybody_out/embeddings/alice_ci.safetensors --identity anybody_out/embeddings/alice_cb.safetensors \\
        --references alice=photos/alice --face-pack antelopev2 --clip models/clip-vit-large-patch14 --out eval/
    # -> eval/results.json, eval/results.md and every render under eval/<identity>/

An identity's references are those named after it (``--references NAME=FOLDER``), or the photos of ``--references
FOLDER`` for all. ``--tiny`` runs the whole pipeline on the built-in random model (a check; its numbers mean nothing).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anybody.evaluation import DEFAULT_PROMPTS, ClipScorer, EvalSettings, as_json, evaluate, markdown  # noqa: E402


def _references(specs, names):
    from anybody.images import image_files, load_images

    shared, named = None, {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if sep:
            named[name.strip()] = load_images(image_files(folder.strip()), max_side=1024)
        else:
            shared = load_images(image_files(spec), max_side=1024)
    return {n: named.get(n, shared) for n in names if named.get(n, shared) is not None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="SD1.x single-file .safetensors")
    ap.add_argument("--tiny", action="store_true", help="the built-in random model instead of a checkpoint")
    ap.add_argument("--identity", action="append", required=True, metavar="FILE",
                    help="an embedding file (its stem names it); repeat to compare several")
    ap.add_argument("--references", action="append", required=True, metavar="[NAME=]FOLDER")
    ap.add_argument("--face-pack", default="antelopev2")
    ap.add_argument("--models-root", default="~/.insightface")
    ap.add_argument("--provider", default="auto", choices=["auto", "CPU", "CUDA"])
    ap.add_argument("--recognizer", help="score with this arcface_torch .pth instead of the pack's recognizer")
    ap.add_argument("--clip", help="a transformers CLIPModel folder: adds CLIP-T")
    ap.add_argument("--prompts", help="a text file, one prompt per line, each with {word}")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--resolution", type=int, default=0)
    ap.add_argument("--out", default="identity_eval")
    args = ap.parse_args(argv)

    from anybody.face.models import load_face_models
    from anybody.identity import Identity

    prompts = (tuple(line.strip() for line in Path(args.prompts).read_text().splitlines() if line.strip())
               if args.prompts else DEFAULT_PROMPTS)
    settings = EvalSettings(prompts, tuple(int(s) for s in args.seeds.split(",")), args.steps, args.guidance,
                            args.resolution)
    settings.check()
    identities = [Identity.load(path) for path in args.identity]
    references = _references(args.references, [i.name for i in identities])
    faces = load_face_models(args.face_pack, [Path(args.models_root).expanduser()], args.provider)
    if args.recognizer:
        from anybody.face.recognizer import torch_recognizer

        faces = faces.with_embedder(torch_recognizer(args.recognizer))
    if args.tiny:
        from anybody.host.tiny import tiny_host

        host = tiny_host(args.out, seed=0)
        settings.resolution = settings.resolution or 64
    else:
        if not args.checkpoint:
            ap.error("give --checkpoint (or --tiny)")
        from anybody.host.checkpoint import load_checkpoint_host

        host = load_checkpoint_host(args.checkpoint, out_dir=args.out)
    clip = ClipScorer(args.clip) if args.clip else None
    results = evaluate(host, identities, references, faces, settings, clip, args.out)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(as_json(results, settings), indent=1))
    (out / "results.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
