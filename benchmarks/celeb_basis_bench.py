"""Celeb Basis step time and peak memory on the diffusers host, for a side-by-side with Cross-Init's figures.

    python benchmarks/celeb_basis_bench.py                                  # tiny model, CPU, 64 px
    /usr/bin/time -v python benchmarks/celeb_basis_bench.py --size sd15 --resolution 256 --batch 1 --steps 10
    python benchmarks/celeb_basis_bench.py --size sd15 --resolution 512 --batch 2 --steps 400 --views 64   # GPU: the paper's setting

SD1.5 full size and the IResNet-100 recognizer use random weights (no download). Reports the one-off costs (basis,
views: augment + recognizer + VAE) apart from the per-step time, and the whole run's time per person.
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cross_init_bench import TimingSink, sd15_host  # noqa: E402

from anybody.face.recognizer import FaceRecognizer  # noqa: E402
from anybody.host.tiny import tiny_host  # noqa: E402
from anybody.methods import celeb_basis as cb  # noqa: E402
from anybody.nets.iresnet import DEPTHS, IResNet  # noqa: E402

PAPER = "paper/README: ~3 minutes per identity on one GPU (SD1.4, 400 steps at batch 2 per identity; GPU model not stated)"


class PhaseSink(TimingSink):
    """Step stamps, and the moment each log line appears (the basis and the views log when they are done)."""

    def __init__(self):
        super().__init__()
        self.logs: list[tuple[float, str]] = []

    def log(self, message):
        self.logs.append((time.perf_counter(), message))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=["tiny", "sd15"], default="tiny")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12, help="per person")
    ap.add_argument("--people", type=int, default=1)
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="anybody-bench-"))
    t0 = time.perf_counter()
    host = tiny_host(out, device=args.device) if args.size == "tiny" else sd15_host(out, args.device)
    torch.manual_seed(1)
    net = IResNet(DEPTHS["r100"] if args.size == "sd15" else (1, 1, 1, 1)).eval().requires_grad_(False)
    recognizer = FaceRecognizer("random r100", lambda x: net(x.to(next(net.parameters()).device)), "torch", net)
    build_s = time.perf_counter() - t0
    sink = PhaseSink()
    host.sink = sink
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    people = [cb.Person(f"p{i}", [torch.rand(args.resolution, args.resolution, 3)]) for i in range(args.people)]
    config = cb.CelebBasisConfig(steps=args.steps, batch=args.batch, resolution=args.resolution, views=args.views,
                                 save_every=0, preview_every=0, gradient_checkpointing=args.gradient_checkpointing)
    t1 = time.perf_counter()
    cb.train_celeb_basis(host, people, recognizer, config)
    total_s = time.perf_counter() - t1
    started = next(t for t, m in sink.logs if m.startswith("Celeb Basis "))  # logged once the views are ready
    steps = [b - a for a, b in zip(sink.stamps[1:], sink.stamps[2:])][args.warmup:]
    med = statistics.median(steps) if steps else float("nan")
    result = {"size": args.size, "device": args.device, "resolution": args.resolution, "batch": args.batch,
              "steps_per_person": args.steps, "people": args.people, "views": args.views,
              "median_s_per_step": round(med, 4), "basis_and_views_s": round(started - t1, 2),
              "train_total_s": round(total_s, 2), "s_per_person": round(total_s / args.people, 2),
              "build_s": round(build_s, 2), "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
    if args.device == "cuda":
        result["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    print(json.dumps(result))
    print(f"\n| setup | s/step (median) | basis + views s | whole run s/person | peak RSS GiB |\n|---|---|---|---|---|\n"
          f"| Celeb Basis {args.size} {args.device} {args.resolution}px b{args.batch} | {med:.3f} | "
          f"{result['basis_and_views_s']} | {result['s_per_person']} | {result['peak_rss_gib']} |\n| {PAPER} |")


if __name__ == "__main__":
    main()
