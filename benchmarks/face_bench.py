"""Faces per second for detect + align + embed (ArcFace 112) through the real insightface/onnxruntime path.

    python benchmarks/face_bench.py                      # the tests' small ONNX models, CPU
    python benchmarks/face_bench.py --pack antelopev2 --models-root ~/.insightface --provider CUDA   # real pack

With the small test models the number measures Anybody's own overhead (decode-free: images are in memory,
640x640 with one face each); with antelopev2 it is what users get.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from anybody.face.detect import detect_faces, select_face  # noqa: E402
from anybody.face.models import load_face_models  # noqa: E402
from anybody.face.pipeline import embed_faces  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pack", default=None, help="a real pack name; default: build the test models")
    ap.add_argument("--models-root", default="~/.insightface")
    ap.add_argument("--provider", default="CPU", choices=["auto", "CPU", "CUDA"])
    ap.add_argument("--images", type=int, default=64)
    args = ap.parse_args()
    if args.pack is None:
        from face_onnx import build_pack, paint_face

        root = Path(tempfile.mkdtemp(prefix="anybody-facebench-"))
        build_pack(root)
        models = load_face_models("testpack", [root], args.provider)
        rng = np.random.default_rng(0)
        images = []
        for i in range(args.images):
            img = rng.integers(90, 140, (640, 640, 3), dtype=np.uint8)
            paint_face(img, 16 * int(rng.integers(8, 32)), 16 * int(rng.integers(8, 32)), blue=int(rng.integers(0, 255)))
            images.append(img)
    else:
        models = load_face_models(args.pack, [Path(args.models_root).expanduser()], args.provider)
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 255, (640, 640, 3), dtype=np.uint8) for _ in range(args.images)]
    times, found = [], 0
    for img in images[:4] + images:  # the first four warm the sessions up
        t = time.perf_counter()
        faces = detect_faces(models, img)
        if faces:
            embed_faces(models, img, [select_face(faces, "largest")])
            found += 1
        times.append(time.perf_counter() - t)
    per = statistics.median(times[4:])
    result = {"pack": models.name, "providers": models.providers, "images": len(images), "faces_found": found - min(4, found),
              "median_s_per_image": round(per, 5), "faces_per_s": round(1 / per, 1)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
