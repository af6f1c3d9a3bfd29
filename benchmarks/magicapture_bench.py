"""MagiCapture step time and peak memory per phase on the diffusers host.

    python benchmarks/magicapture_bench.py                                   # tiny model, CPU, 64 px
    python benchmarks/magicapture_bench.py --size sd15 --resolution 256 --steps 6
    python benchmarks/magicapture_bench.py --size sd15 --resolution 512 --steps 20    # GPU: the paper's setting

Random weights throughout (SD1.5 from the shipped configs, an IResNet-100 recognizer); the face detector and the
parsing mask are fixed stand-ins (their cost is per photo, not per step), so the figures are the training loop's.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cross_init_bench import TimingSink, sd15_host  # noqa: E402

from anybody.face.detect import Face  # noqa: E402
from anybody.face.recognizer import FaceRecognizer  # noqa: E402
from anybody.host.tiny import tiny_host  # noqa: E402
from anybody.methods import magicapture as mc  # noqa: E402
from anybody.nets.iresnet import DEPTHS, IResNet  # noqa: E402


def stand_in_tools(recognizer: FaceRecognizer) -> mc.FaceTools:
    def detect(image):
        s = image.shape[0]
        return [Face(np.array([0.15, 0.1, 0.85, 0.9]) * s,
                     np.array([[0.35, 0.4], [0.65, 0.4], [0.5, 0.55], [0.38, 0.7], [0.62, 0.7]]) * s, 0.9)]

    def face_mask(image, face):
        mask = np.zeros(image.shape[:2], np.float32)
        h, w = mask.shape
        mask[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1.0
        return mask

    return mc.FaceTools(detect, face_mask, recognizer)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=["tiny", "sd15"], default="tiny")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8, help="per phase")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="anybody-bench-"))
    host = tiny_host(out, device=args.device) if args.size == "tiny" else sd15_host(out, args.device)
    torch.manual_seed(1)
    net = IResNet(DEPTHS["r100"] if args.size == "sd15" else (1, 1, 1, 1)).eval().requires_grad_(False)
    recognizer = FaceRecognizer("random r100", lambda x: net(x.to(next(net.parameters()).device)), "torch", net)
    sink = TimingSink()
    host.sink = sink
    g = torch.Generator().manual_seed(0)
    subjects = [torch.rand(args.resolution, args.resolution, 3, generator=g) for _ in range(3)]
    styles = [torch.rand(args.resolution, args.resolution, 3, generator=g) for _ in range(3)]
    config = mc.MagiCaptureConfig(ti_steps=args.steps, lora_steps=args.steps, resolution=args.resolution,
                                  save_every=0, preview_every=0, gradient_checkpointing=args.gradient_checkpointing)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    mc.train_magicapture(host, subjects, styles, stand_in_tools(recognizer), "bench_face", "bench_style", config)
    total = time.perf_counter() - t0
    stamps = sink.stamps[1:]
    durations = [b - a for a, b in zip(stamps, stamps[1:])]
    phase1 = durations[args.warmup:args.steps - 1]
    phase2 = durations[args.steps + args.warmup:]
    result = {"size": args.size, "device": args.device, "resolution": args.resolution, "steps_per_phase": args.steps,
              "phase1_median_s": round(statistics.median(phase1), 4) if phase1 else None,
              "phase2_median_s": round(statistics.median(phase2), 4) if phase2 else None,
              "total_s": round(total, 2),
              "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
    if args.device == "cuda":
        result["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
