"""Cross-Init step time through the A1111 webui adapter beside the diffusers host, on the same checkpoint.

    ANYBODY_A1111_DIR=/path/to/stable-diffusion-webui python benchmarks/a1111_adapter_bench.py [--resolution 256]

Starts the webui with its CPU flags (tests/hosts/a1111_harness.py; a random-weight SD1.5 it builds, or
$ANYBODY_A1111_CKPT), trains through ``POST /anybody/v1/train/cross-init`` and reads the route's
``seconds_per_step`` (median, first step left out); then the same settings on our diffusers host loaded from the
same file in this process. The two never run at the same time. The webui is measured twice: with its default
for training (attention optimisations undone, as its own embedding trainer does) and with the user option
``training_xattention_optimizations`` on (its attention kernel follows the webui's flags: `ANYBODY_A1111_ARGS=--opt-sdp-attention`).
Prints a JSON line and a markdown table; results in benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "hosts"), str(REPO / "tests")]


def photos(n: int = 2):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [np.asarray(Image.fromarray(rng.integers(0, 255, (6, 6, 3)).astype(np.uint8)).resize((320, 320)))
            for _ in range(n)]


def webui_seconds(ckpt: Path, settings: dict) -> dict:
    from a1111_harness import Webui, png_b64

    server = Webui(Path(os.environ["ANYBODY_A1111_DIR"]), Path(tempfile.mkdtemp(prefix="a1111-bench-")), ckpt)
    try:
        server.wait()
        images = [png_b64(p) for p in photos()]
        out = {}
        for label, fast_attention in (("webui default", False), ("webui, training_xattention_optimizations", True)):
            server.post("/sdapi/v1/options", {"training_xattention_optimizations": fast_attention})
            result = server.post("/anybody/v1/train/cross-init",
                                 {"images": images, "name": f"bench{int(fast_attention)}", **settings})
            out[label] = result["seconds_per_step"]
        return out
    finally:
        server.stop()


def diffusers_seconds(ckpt: Path, settings: dict) -> float:
    import torch

    from anybody.host.checkpoint import load_checkpoint_host
    from anybody.methods.cross_init import preset, train_cross_init
    from anybody.train.sink import ProgressSink

    class Stamps(ProgressSink):
        def __init__(self):
            self.stamps = []

        def progress(self, step, total, loss=None, preview=None):
            self.stamps.append(time.perf_counter())

    sink = Stamps()
    host = load_checkpoint_host(ckpt, out_dir=tempfile.mkdtemp(prefix="diffusers-bench-"), sink=sink, device="cpu")
    config = preset("custom", steps=settings["steps"], resolution=settings["resolution"], batch=settings["batch"],
                    save_every=0, preview_every=0)
    images = [torch.from_numpy(p.copy()).float() / 255 for p in photos()]
    train_cross_init(host, images, "bench", config)
    gaps = [b - a for a, b in zip(sink.stamps[1:], sink.stamps[2:])]
    return statistics.median(gaps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    from a1111_harness import checkpoint

    ckpt = checkpoint(Path(os.environ.get("ANYBODY_TEST_CACHE", tempfile.mkdtemp())))
    settings = {"preset": "custom", "steps": args.steps, "resolution": args.resolution, "batch": args.batch,
                "save_every": 0, "preview_every": 0}
    results = webui_seconds(ckpt, settings)
    results["diffusers host"] = diffusers_seconds(ckpt, settings)
    base = results["diffusers host"]
    print(json.dumps({"settings": settings, "seconds_per_step": results}))
    print(f"\n| host (SD1.5 random, CPU fp32, {args.resolution} px, batch {args.batch}) | s/step | vs diffusers |")
    print("|---|---|---|")
    for label, value in results.items():
        print(f"| {label} | {value:.2f} | {value / base - 1:+.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
