"""Cross-Init step time, steps/s and peak memory on the diffusers host (ARCHITECTURE.md §8).

    python benchmarks/cross_init_bench.py                       # tiny model, CPU, 64 px, batch 8
    python benchmarks/cross_init_bench.py --size sd15 --resolution 256 --batch 1 --steps 8   # CPU reference setup
    python benchmarks/cross_init_bench.py --size sd15 --resolution 512 --batch 8 --steps 40  # GPU (bf16)

SD1.5 full size uses random weights built from the shipped configs (no download). Prints a JSON line and a
table with the paper's figures beside ours. For peak RSS as the issue measures it, run under /usr/bin/time -v.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anybody.host.diffusers import DiffusersHost, DiffusersTextEncoder  # noqa: E402
from anybody.host.tiny import SD_SCHEDULER, tiny_host  # noqa: E402
from anybody.methods.cross_init import CrossInitConfig, train_cross_init  # noqa: E402
from anybody.train.sink import ProgressSink  # noqa: E402

PAPER = "official script, CPU 2 cores SD1.5 fp32 256px batch 1: median 7.55 s/step, 5.69 GiB peak RSS; fast 25 steps ~26 s on an A800"


class TimingSink(ProgressSink):
    def __init__(self):
        self.stamps = [time.perf_counter()]

    def progress(self, step, total, loss=None, preview=None):
        if self.stamps and torch.cuda.is_available():
            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())

    def log(self, message):
        pass


def sd15_host(out_dir, device, low_memory=False, cpu_compute=None):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from anybody.assets import asset_path, clip_tokenizer

    cfg = asset_path("configs", "sd15")
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    if low_memory:  # build the UNet in fp16 directly, as loading an fp16 checkpoint would
        torch.set_default_dtype(torch.float16)
    try:
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(cfg / "unet"))
    finally:
        torch.set_default_dtype(default)
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(cfg / "vae"))
    te = CLIPTextModel(CLIPTextConfig.from_json_file(str(cfg / "text_encoder" / "config.json")))
    return DiffusersHost(unet, vae, [DiffusersTextEncoder("clip_l", te, clip_tokenizer())], SD_SCHEDULER, "sd1",
                         out_dir=out_dir, device=device, low_memory=low_memory, cpu_compute=cpu_compute)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=["tiny", "sd15"], default="tiny")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--low-memory", action="store_true", help="CPU: fp16 UNet weights, fp32 arithmetic")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="anybody-bench-"))
    t0 = time.perf_counter()
    host = tiny_host(out, device=args.device) if args.size == "tiny" else sd15_host(out, args.device, args.low_memory)
    build_s = time.perf_counter() - t0
    sink = TimingSink()
    host.sink = sink
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    cfg = CrossInitConfig(steps=args.steps, batch=args.batch, resolution=args.resolution, save_every=0, preview_every=0,
                          gradient_checkpointing=args.gradient_checkpointing)
    images = torch.rand(1, args.resolution, args.resolution, 3)
    t1 = time.perf_counter()
    train_cross_init(host, images, "bench", cfg)
    total_s = time.perf_counter() - t1
    steps = [b - a for a, b in zip(sink.stamps[1:], sink.stamps[2:])][args.warmup:]
    med = statistics.median(steps) if steps else float("nan")
    result = {"size": args.size, "device": args.device, "dtype": str(host.dtype), "resolution": args.resolution,
              "batch": args.batch, "steps": args.steps,
              "gradient_checkpointing": args.gradient_checkpointing, "low_memory": args.low_memory, "median_s_per_step": round(med, 4),
              "steps_per_s": round(1 / med, 3), "train_total_s": round(total_s, 2), "build_s": round(build_s, 2),
              "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
    if args.device == "cuda":
        result["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    print(json.dumps(result))
    print(f"\n| setup | s/step (median) | steps/s | peak RSS GiB |\n|---|---|---|---|\n"
          f"| Anybody {args.size} {args.device} {args.resolution}px b{args.batch} | {med:.3f} | {1 / med:.2f} | "
          f"{result['peak_rss_gib']} |\n| paper/official | {PAPER} |")


if __name__ == "__main__":
    main()
