"""AdaFace: one-time load + cache conversion, cached load, and faces encoded per second once loaded.

    python benchmarks/adaface_bench.py            # full-size random weights (CLIP-L text towers), CPU or GPU

Writes full-size random Arc2Face and AdaFace files in the official layouts (the AdaFace one a pickled subject
generator with widened attention: k/v copies 1 x4, 4 x4, 2 x4 over the 12 layers) to a temporary folder, then
times: the first load (restricted unpickling + the safetensors cache), a second load (cache only), the encoder per
face (ID vector -> 16 vectors), and detection + alignment + recognition with the tiny test face pack (our overhead,
not antelopev2's). Prints a JSON line.
"""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main() -> int:
    from adaface_checkpoints import save_authors_checkpoint, tiny_clip

    from anybody.methods.adaface import adaface_identity, id_vector
    from anybody.nets import adaface_files

    device = "cuda" if torch.cuda.is_available() else "cpu"
    folder = Path(tempfile.mkdtemp(prefix="adaface-bench-"))
    text = tiny_clip(layers=12, mlp=3072, copies=[1] * 4 + [4] * 4 + [2] * 4, seed=1)
    arc = tiny_clip(layers=12, mlp=3072, seed=2)
    save_authors_checkpoint(folder / adaface_files.ADAFACE_FILE, "adaface.subj_basis_generator", text,
                            torch.randn(77, 768))
    (folder / "arc2face" / "encoder").mkdir(parents=True)
    torch.save({"text_model." + k: v for k, v in arc.state_dict().items()},
               folder / "arc2face" / "encoder" / "pytorch_model.bin")
    del text, arc
    size_mb = (folder / adaface_files.ADAFACE_FILE).stat().st_size / 2**20

    t0 = time.perf_counter()
    adaface_files.load_adaface(folder / adaface_files.ADAFACE_FILE, folder / "arc2face")
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    encoder = adaface_files.load_adaface(folder / adaface_files.ADAFACE_FILE, folder / "arc2face")
    cached = time.perf_counter() - t0
    encoder.arc2face.to(device)
    encoder.prompt2token.to(device)

    vec = id_vector(torch.randn(1, 512)).to(device)
    encoder.encode(vec)
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        encoder.encode(vec)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    encode_s = statistics.median(times)

    result = {"device": device, "adaface_file_mb": round(size_mb), "first_load_s": round(first, 2),
              "cached_load_s": round(cached, 2), "encode_ms_per_face": round(encode_s * 1000, 1),
              "faces_per_s_encoder": round(1 / encode_s, 1)}
    try:
        import numpy as np
        from face_onnx import build_pack, paint_face

        from anybody.face.models import load_face_models

        build_pack(folder / "insightface")
        faces = load_face_models("testpack", [folder / "insightface"], "auto")
        photo = np.full((640, 640, 3), 120, np.uint8)
        paint_face(photo, 320, 240, blue=128)
        image = torch.from_numpy(photo).float() / 255
        adaface_identity(encoder, faces, [image], "bench")
        t0 = time.perf_counter()
        for _ in range(10):
            adaface_identity(encoder, faces, [image], "bench")
        total = (time.perf_counter() - t0) / 10
        result.update(total_ms_per_face_with_detection=round(total * 1000, 1),
                      faces_per_s_with_detection=round(1 / total, 1))
    except ImportError as exc:  # no insightface/onnx here: the encoder figures stand alone
        result["detection"] = f"skipped ({exc})"
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
