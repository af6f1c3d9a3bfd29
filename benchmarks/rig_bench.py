"""DiffusionRig's costs: buffer rendering at 256 px, DDIM-20 of the full-size network, and a stage-2 training step
(projected to the paper's 5,000 steps).

    python benchmarks/rig_bench.py                       # CPU: buffers, plus one full-size DDIM step and train step
    python benchmarks/rig_bench.py --device cuda --ddim-steps 20 --train-steps 20

Random weights in the official layout (133.4 M + 11.2 M parameters). The head is an icosphere with about FLAME's
(9,976) and twice FLAME's faces; the rasterizer's cost grows with covered pixels and face count, so the two bracket
the real head. Targets (issue): buffers <= 150 ms on a CPU, <= 20 ms on a GPU; stage 2 <= 10 min (1/3 of the paper's
30 min on a V100).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from anybody.rig.buffers import crop_to_image, physical_buffers, project  # noqa: E402
from anybody.rig.personalize import STEPS, Album, stage2_loss, trainable  # noqa: E402
from anybody.rig.sample import ddim_sample  # noqa: E402
from anybody.rig.unet import OFFICIAL, DiffusionRig  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_of(fn, device, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def buffers_ms(device, subdivisions: int, repeats: int) -> dict:
    from test_rig_geometry import icosphere

    verts, faces = icosphere(subdivisions)
    verts, faces = verts.to(device), faces.to(device)
    full = torch.diag(torch.tensor([224 / 256, 224 / 256, 1.0], device=device))[None]
    placed = crop_to_image(project(verts[None] * 0.9, torch.tensor([[1.0, 0, 0]], device=device)), full)
    uv, albedo, light = torch.rand(len(verts), 2, device=device), torch.rand(1, 3, 256, 256, device=device), \
        torch.randn(1, 9, 3, device=device)
    seconds = best_of(lambda: physical_buffers(placed, verts[None], faces, uv, faces, albedo, light), device, repeats)
    return {"faces": len(faces), "ms": round(seconds * 1000, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ddim-steps", type=int, default=1, help="steps timed (20: a whole edit)")
    parser.add_argument("--train-steps", type=int, default=1, help="stage-2 steps timed (batch 4)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fp16", action="store_true", help="stage 2 under fp16 autocast (CUDA), as the release")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    results = {"device": str(device), "threads": torch.get_num_threads(),
               "buffers_256": [buffers_ms(device, s, args.repeats) for s in (4, 5)]}
    torch.manual_seed(0)
    model = DiffusionRig(OFFICIAL).to(device)
    buffers, photos = torch.rand(4, 9, 256, 256, device=device), torch.rand(4, 3, 256, 256, device=device) * 2 - 1
    with torch.no_grad():
        z = model.encode(photos[:1])
        model.eval()
        if args.ddim_steps:
            seconds = best_of(lambda: ddim_sample(lambda x, t: model.denoise(x, t, buffers[:1], z),
                                                  torch.randn(1, 3, 256, 256, device=device), args.ddim_steps),
                              device, 1)
            results["ddim_seconds_per_step"] = round(seconds / args.ddim_steps, 3)
            results["ddim20_seconds"] = round(20 * seconds / args.ddim_steps, 2)
    if args.train_steps:
        album = Album(photos, buffers, model.encode(photos).detach())
        autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if args.fp16 else None
        loss_fn = stage2_loss(model, album, 4, autocast)
        params = trainable(model)
        optimizer = torch.optim.Adam(list(params.values()), lr=1e-5)
        gen = torch.Generator().manual_seed(0)

        def step():
            optimizer.zero_grad(set_to_none=True)
            loss_fn(gen).loss.backward()
            optimizer.step()

        seconds = best_of(lambda: [step() for _ in range(args.train_steps)], device, 1) / args.train_steps
        results["stage2_seconds_per_step"] = round(seconds, 3)
        results["stage2_projected_minutes"] = round(seconds * STEPS / 60, 1)
        if device.type == "cuda":
            results["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
