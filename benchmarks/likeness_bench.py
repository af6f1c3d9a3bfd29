"""What the likeness curve costs: one evaluation against one Cross-Init training step, and its share of a run.

    python benchmarks/likeness_bench.py                                     # tiny model, CPU, 64 px
    python benchmarks/likeness_bench.py --size sd15 --resolution 256 --steps 3
    python benchmarks/likeness_bench.py --size sd15 --resolution 512 --steps 10   # GPU: the paper's setting

Random weights (SD1.5 from the shipped configs); the face models are the tests' small ONNX pack, so detection and
recognition cost next to nothing here (a real SCRFD-10G + r100 pair adds tens of milliseconds per render on a GPU).
The run trains ``--steps`` steps at the paper's batch 8 and evaluates once, at its end.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from cross_init_bench import TimingSink, sd15_host  # noqa: E402

from anybody.host.tiny import tiny_host  # noqa: E402
from anybody.methods import cross_init as ci  # noqa: E402


class LoggingSink(TimingSink):
    def __init__(self):
        super().__init__()
        self.logs = []

    def log(self, message):
        self.logs.append(message)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=["tiny", "sd15"], default="tiny")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    from face_onnx import build_pack, paint_face

    from anybody.face.models import load_face_models

    out = Path(tempfile.mkdtemp(prefix="anybody-bench-"))
    build_pack(out / "faces")
    faces = load_face_models("testpack", [out / "faces"], "CPU")
    sink = LoggingSink()
    if args.size == "sd15":
        host = sd15_host(out, args.device)
    else:
        host = tiny_host(out, seed=0, device=args.device)
    host.sink = sink
    photo = np.full((args.resolution, args.resolution, 3), 110, np.uint8)
    paint_face(photo, 16 * (args.resolution // 64), 16 * (args.resolution // 64), blue=90)
    photos = torch.from_numpy(np.stack([photo] * 2)).float() / 255
    config = ci.CrossInitConfig(steps=args.steps, batch=args.batch, resolution=args.resolution, save_every=0,
                                preview_every=0, likeness_every=args.steps)
    began = time.perf_counter()
    ci.train_cross_init(host, photos, "bench", config, face_models=faces)
    total = time.perf_counter() - began
    (evaluation,) = [float(m.group(1)) for m in (re.search(r"took ([\d.]+) s", line) for line in sink.logs) if m]
    stamps = np.diff(sink.stamps[1:])  # step durations; the last one includes the evaluation
    step = float(np.median(stamps[:-1])) if len(stamps) > 1 else float(stamps[0] - evaluation)
    evaluations = 4  # the default cadence of a 320-step run: steps 80, 160, 240, 320
    share = evaluations * evaluation / (320 * step + evaluations * evaluation)
    print(json.dumps({"size": args.size, "device": args.device, "resolution": args.resolution, "batch": args.batch,
                      "seconds_per_step": round(step, 3), "seconds_per_evaluation": round(evaluation, 3),
                      "evaluation_in_steps": round(evaluation / step, 2),
                      "share_of_a_320_step_run_at_the_default_cadence": round(share, 4),
                      "run_seconds": round(total, 1)}, indent=1))


if __name__ == "__main__":
    main()
