"""GPU acceptance check for the training foundation (issue: foundation hardening §5), in one command.

    python benchmarks/gpu_check.py --comfyui /path/to/ComfyUI            # on a GPU machine: the full check
    python benchmarks/gpu_check.py --dry [--comfyui DIR]                 # CPU, tiny models: what CI runs

Part 1, real ComfyUI (one fresh process per flag set, since ComfyUI parses its flags once): an fp16 random SD1.5
checkpoint (full-size UNet on a GPU, tiny in --dry) loaded by the stock CheckpointLoaderSimple and never sampled
before (cold), then CrossInitTrain fast-25 through the node. Checked: training succeeds; `embedding:<name>` loads in
the stock CLIPTextEncode and equals the returned CLIP; a KSampler run afterwards gives what a fresh, untrained load
gives; cos(grad θ, fp32 reference) ≥ 0.99; s/step and peak VRAM; a likeness render (ComfyUI's KSampler on the
training copy) between two gradients of one batch leaves the copy loaded whole and the gradient unchanged, and its
time (one evaluation's sampling) against s/step gives the likeness curve's GPU share.
Part 2, the diffusers host: SD1.5 at 512 px, batch 8, bf16, 320 steps (target ≤ 15 s on an H200) and peak memory
against the same batch's inference peak (target ≤ 1.3x).
Prints a table and writes JSON (--json, default $OUT/gpu_check.json when $OUT is set).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "hosts"))

GPU_MODES = {"default": [], "disable-dynamic-vram": ["--disable-dynamic-vram"], "lowvram": ["--lowvram"]}
COS_TARGET, H200_320_STEPS_S, MEMORY_RATIO_TARGET = 0.99, 15.0, 1.3
RENDER_COS_TARGET = 0.9999  # the same batch's gradient, before and after a render


# --- models ---------------------------------------------------------------------------------------------------

def sd15_modules(dry: bool):
    """Random SD1.5 modules: full size from the shipped configs, or the tiny SD1.5-detectable ones in --dry."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from anybody.assets import asset_path

    torch.manual_seed(0)
    cfg = asset_path("configs", "sd15")
    if dry:
        from ldm_checkpoint import comfy_detectable_sd15

        return comfy_detectable_sd15(seed=0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(cfg / "unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(cfg / "vae"))
    te = CLIPTextModel(CLIPTextConfig.from_json_file(str(cfg / "text_encoder" / "config.json")))
    return unet, vae, te


def write_checkpoint(path: Path, dry: bool) -> None:
    from ldm_checkpoint import save_sd1_checkpoint

    save_sd1_checkpoint(path, *sd15_modules(dry), dtype=torch.float16)


# --- part 1: real ComfyUI, one process per flag set -----------------------------------------------------------

def comfy_worker(args) -> dict:
    from comfy_harness import pack_module, start_comfy

    flags = (["--cpu"] if args.dry else []) + GPU_MODES.get(args.worker, [])
    env = start_comfy(args.comfyui, Path(args.base) / args.worker, flags, as_launched=True)
    ckpt_dir = Path(args.base) / args.worker / "checkpoints"
    os.symlink(args.ckpt, ckpt_dir / "check15.safetensors") if not (ckpt_dir / "check15.safetensors").exists() else None
    import comfy.model_management as mm
    import comfy.utils

    nodes = env["nodes"]
    result = {"mode": args.worker, "flags": " ".join(flags) or "(default)"}
    cuda = torch.cuda.is_available() and not args.dry
    for throttle in ("PROGRESS_THROTTLE_MIN_INTERVAL", "PROGRESS_THROTTLE_MIN_PERCENT"):  # every step reported
        if hasattr(comfy.utils, throttle):
            setattr(comfy.utils, throttle, 0)
    try:
        import comfy.memory_management

        result["dynamic_vram"] = bool(getattr(comfy.memory_management, "aimdo_enabled", False))
    except ImportError:
        result["dynamic_vram"] = False
    size, steps = (64, 5) if args.dry else (512, 25)
    stamps = []

    def on_progress(value, total, preview, node_id=None, **kw):
        if str(node_id) == "3" or node_id is None and total == steps:  # the trainer's bar only
            stamps.append(time.perf_counter())

    comfy.utils.set_progress_bar_global_hook(on_progress)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    train = {"name": "gpucheck", "preset": "custom" if args.dry else "fast-25", "steps": steps, "lr": 0.005,
             "batch": 2 if args.dry else 8, "grad_accum": 1, "resolution": size, "seed": 0, "save_every": 0,
             "preview_every": 5, "saved_progress": "start over", "overwrite": True, "names_file": "bundled (1,180 names)",
             "gradient_checkpointing": False}
    def sampling(clip_link, tag):
        """KSampler on the loader's MODEL; the positive prompt goes through ``clip_link`` (the trainer's CLIP
        orders sampling after training)."""
        return {"4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a person", "clip": clip_link}},
                "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
                "6": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
                "7": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 1, "steps": 4, "cfg": 7.0,
                                                           "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
                                                           "positive": ["4", 0], "negative": ["5", 0], "latent_image": ["6", 0]}},
                "8": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": f"check_{tag}"}}}

    loader = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "check15.safetensors"}}}
    graph = {**loader,
             "2": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1, "color": 0x996655}},
             "3": {"class_type": "AnybodyCrossInitTrain", "inputs": {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2],
                                                                    "images": ["2", 0], **train}},
             **sampling(["3", 0], "after")}
    t0 = time.perf_counter()
    ex, errors = env["run"](graph)  # cold: nothing was loaded or sampled before in this process
    result["train_ok"] = bool(ex.success)
    result["train_and_sample_s"] = round(time.perf_counter() - t0, 2)
    if not ex.success:
        result["error"] = (errors[0].get("exception_message", str(errors[0])) if errors else "failed")[:400]
        return result
    gaps = [b - a for a, b in zip(stamps, stamps[1:])][2:]
    result["s_per_step"] = round(sorted(gaps)[len(gaps) // 2], 4) if gaps else None
    if cuda:
        result["peak_vram_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)

    # the stock `embedding:` path reads the file the node wrote
    model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint("check15.safetensors")[:3]
    encode = nodes.CLIPTextEncode().encode
    with torch.inference_mode():
        stock = encode(clip, "a photo of embedding:gpucheck person")[0]
        plain = encode(clip, "a photo of a person")[0]
    result["embedding_loads"] = not torch.allclose(stock[0][0].float(), plain[0][0].float())

    # the graph's MODEL, sampled in the same prompt after training, equals a fresh load that never trained
    ex, errors = env["run"]({**loader, **sampling(["1", 1], "fresh")})  # a new executor: loaded again
    if not ex.success:
        result["error"] = "sampling a fresh load: " + str(errors[:1])[:300]
        return result
    from safetensors.torch import load_file

    latents = {tag: load_file(str(sorted((Path(args.base) / args.worker / "output").rglob(f"check_{tag}_*.latent"))[-1]))
               ["latent_tensor"].float() for tag in ("after", "fresh")}
    result["ksampler_unchanged"] = bool(torch.allclose(latents["after"], latents["fresh"], atol=1e-3, rtol=1e-3,
                                                       equal_nan=True))

    # gradient of θ in the training dtype (bf16 or fp16 + loss scale) against an fp32 copy of the same checkpoint
    mm.unload_all_models()
    cosine, dtype = grad_cosine(pack_module, model, clip, vae, ckpt_dir / "check15.safetensors", size,
                                2 if args.dry else 8)
    result["grad_cos_vs_fp32"], result["compute_dtype"] = round(cosine, 5), dtype

    # the likeness curve's render (ComfyUI's KSampler on the training copy) between two gradients of one batch
    mm.unload_all_models()
    result.update(render_between_gradients(pack_module, model, clip, vae, size, 2 if args.dry else 8, cuda))
    return result


def grad_cosine(pack_module, model, clip, vae, path: Path, size: int, batch: int) -> tuple[float, str]:
    """cos(grad θ) of one fixed Cross-Init batch: the host's training dtype vs the same checkpoint in fp32; and
    the training dtype (with "+ loss scale" where fp16 scales the loss)."""
    import comfy.sd

    ci = pack_module("anybody.methods.cross_init")
    engine = pack_module("anybody.train.engine")
    loss_scale = pack_module("anybody.train.loss_scale")
    ComfyHost = pack_module("anybody.host.comfy").ComfyHost
    fp32 = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=False, model_options={"dtype": torch.float32},
                                                 te_model_options={"dtype": torch.float32})
    config = ci.CrossInitConfig(batch=batch, resolution=size)
    images = torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(0))
    names, templates = ci.read_lines(ci.DEFAULT_NAMES), ci.read_lines(ci.TEMPLATES)
    grads, dtypes = [], []
    for m, c in ((model, clip), (fp32[0], fp32[1])):
        host = ComfyHost(m, c, vae)
        pixels = ci.square_batch(images, size)
        with torch.inference_mode():
            mean, std = host.encode_images(torch.cat([pixels, pixels.flip(2)]))
        with host.training(batch * size * size):
            init = {k: ci.cross_init_vectors(enc, names, 2) for k, enc in host.encoders.items()}
            if not grads:
                fixed_init = init  # both runs start from the same vectors
            theta = {k: v.clone().to(host.device).requires_grad_(True) for k, v in fixed_init.items()}
            scale = loss_scale.LossScale() if host.compute_dtype == torch.float16 else None
            dtypes.append(str(host.compute_dtype).replace("torch.", "") + (" + loss scale" if scale else ""))
            trainer = engine.Trainer(theta, torch.optim.SGD(list(theta.values()), lr=0.0), ci.cross_init_loss(
                host, theta, fixed_init, mean, std, templates, "<x>", config), host.sink, 1, 0, loss_scale=scale)
            trainer.step_gradients(0)
            grads.append(torch.cat([theta[k].grad.flatten().float().cpu() for k in sorted(theta)]))
    return float(torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)), dtypes[0]


def render_between_gradients(pack_module, model, clip, vae, size: int, batch: int, cuda: bool) -> dict:
    """The likeness curve's render mid-run (``Host.sample_ddim``: ComfyUI's KSampler on the training copy, the
    curve's 2 prompts x 15 DDIM steps) between two gradients of one fixed Cross-Init batch. The gradients must agree:
    loading for sampling may move weights, and training must go on with the copy whole, on its device, outside
    inference mode. The render's time is one evaluation's sampling cost (the likeness curve's GPU share)."""
    ci = pack_module("anybody.methods.cross_init")
    engine = pack_module("anybody.train.engine")
    loss_scale = pack_module("anybody.train.loss_scale")
    likeness = pack_module("anybody.methods.likeness")
    host = pack_module("anybody.host.comfy").ComfyHost(model, clip, vae)
    config = ci.CrossInitConfig(batch=batch, resolution=size)
    pixels = ci.square_batch(torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(0)), size)
    with torch.inference_mode():
        mean, std = host.encode_images(torch.cat([pixels, pixels.flip(2)]))
    grads, out = [], {}
    with host.training(batch * size * size):
        init = {k: ci.cross_init_vectors(enc, ci.read_lines(ci.DEFAULT_NAMES), 2) for k, enc in host.encoders.items()}
        theta = {k: v.clone().to(host.device).requires_grad_(True) for k, v in init.items()}
        scale = loss_scale.LossScale() if host.compute_dtype == torch.float16 else None
        trainer = engine.Trainer(theta, torch.optim.SGD(list(theta.values()), lr=0.0), ci.cross_init_loss(
            host, theta, init, mean, std, ci.read_lines(ci.TEMPLATES), "<x>", config), host.sink, 1, 0, loss_scale=scale)
        for render in (False, True):
            if render:
                t0 = time.perf_counter()
                with torch.no_grad():
                    cond = host.encode_prompts([p.format(word="<x>") for p in likeness.PROMPTS], {"<x>": theta})
                    uncond = host.encode_prompts([""])
                noise = torch.randn(len(likeness.PROMPTS), 4, size // 8, size // 8)
                host.sample_ddim(cond, uncond, noise, likeness.DDIM_STEPS, likeness.GUIDANCE)
                if cuda:
                    torch.cuda.synchronize()
                out["render_s"] = round(time.perf_counter() - t0, 3)
                out["copy_loaded_whole"] = all(p.loaded_size() >= p.model_size()
                                               for p in (host.active_model(), host.active_clip().patcher))
            trainer.step_gradients(0)
            grads.append(torch.cat([theta[k].grad.flatten().float().cpu() for k in sorted(theta)]))
    out["render_grad_cos"] = round(float(torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)), 6)
    return out


def run_comfy_modes(args, ckpt: Path) -> list[dict]:
    modes = ["dry"] if args.dry else list(GPU_MODES)
    known_flags = (Path(args.comfyui) / "comfy" / "cli_args.py").read_text()
    rows = []
    for mode in modes:
        missing = [f for f in GPU_MODES.get(mode, []) if f not in known_flags]
        if missing:  # e.g. --disable-dynamic-vram before ComfyUI had DynamicVRAM
            rows.append({"mode": mode, "skipped": f"this ComfyUI has no {' '.join(missing)}"})
            print(json.dumps(rows[-1]), flush=True)
            continue
        cmd = [sys.executable, __file__, "--worker", mode, "--comfyui", args.comfyui, "--ckpt", str(ckpt),
               "--base", args.base] + (["--dry"] if args.dry else [])
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.mode_timeout)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            row = json.loads(lines[-1]) if lines else {"mode": mode, "train_ok": False,
                                                      "error": (proc.stderr or proc.stdout)[-600:]}
        except subprocess.TimeoutExpired as exc:
            row = {"mode": mode, "train_ok": False, "error": f"no result within {exc.timeout} s"}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


# --- part 2: diffusers host ------------------------------------------------------------------------------------

def diffusers_check(args) -> dict:
    from anybody.host.diffusers import DiffusersHost, DiffusersTextEncoder
    from anybody.host.tiny import SD_SCHEDULER
    from anybody.methods.cross_init import CrossInitConfig, train_cross_init
    from anybody.train.sink import ProgressSink

    from anybody.assets import clip_tokenizer

    device = "cpu" if args.dry or not torch.cuda.is_available() else "cuda"
    size, batch, steps = (64, 2, 5) if args.dry else (512, 8, 320)
    unet, vae, te = sd15_modules(args.dry)
    out = Path(tempfile.mkdtemp(prefix="anybody-gpucheck-"))

    class Stamps(ProgressSink):
        def __init__(self):
            self.times = []

        def progress(self, step, total, loss=None, preview=None):
            self.times.append(time.perf_counter())

        def log(self, message):
            pass

    host = DiffusersHost(unet, vae, [DiffusersTextEncoder("clip_l", te, clip_tokenizer())], SD_SCHEDULER, "sd1",
                         out_dir=out, device=device, sink=Stamps())
    images = torch.rand(1, size, size, 3)
    with torch.no_grad():  # inference peak of the same batch: the forward pass a sampler makes
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        cond = host.encode_prompts(["a photo of a person"] * batch)
        with host.autocast():
            host.predict(torch.randn(batch, 4, size // 8, size // 8), torch.randint(0, 1000, (batch,)), cond)
        inference_peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    config = CrossInitConfig(steps=steps, batch=batch, resolution=size, save_every=0, preview_every=0)
    t0 = time.perf_counter()
    train_cross_init(host, images, "gpucheck", config)
    total = time.perf_counter() - t0
    result = {"mode": f"diffusers {device} {str(host.dtype).replace('torch.', '')}", "resolution": size, "batch": batch,
              "steps": steps, "train_s": round(total, 2)}
    gaps = [b - a for a, b in zip(host.sink.times, host.sink.times[1:])][2:]
    result["s_per_step"] = round(sorted(gaps)[len(gaps) // 2], 4) if gaps else None
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
        result.update(peak_vram_gib=round(peak / 2**30, 2), inference_peak_gib=round(inference_peak / 2**30, 2),
                      memory_ratio=round(peak / inference_peak, 3), time_target_met=total <= H200_320_STEPS_S,
                      memory_target_met=peak / inference_peak <= MEMORY_RATIO_TARGET)
    print(json.dumps(result), flush=True)
    return result


# --- report -------------------------------------------------------------------------------------------------

def table(rows: list[dict]) -> str:
    cols = ["mode", "dynamic_vram", "train_ok", "s_per_step", "train_s", "train_and_sample_s", "peak_vram_gib",
            "compute_dtype", "grad_cos_vs_fp32", "embedding_loads", "ksampler_unchanged", "render_s",
            "copy_loaded_whole", "render_grad_cos", "memory_ratio", "skipped", "error"]
    used = [c for c in cols if any(c in r for r in rows)]
    lines = ["| " + " | ".join(used) + " |", "|" + "---|" * len(used)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in used) + " |")
    return "\n".join(lines)


def verdict(rows: list[dict]) -> list[str]:
    failures = []
    for r in rows:
        if r.get("mode", "").startswith("diffusers"):
            for key in ("time_target_met", "memory_target_met"):
                if r.get(key) is False:
                    failures.append(f"{r['mode']}: {key}")
            continue
        if r.get("skipped"):
            continue
        if not r.get("train_ok"):
            failures.append(f"{r['mode']}: training failed ({r.get('error', '')[:120]})")
            continue
        for key in ("embedding_loads", "ksampler_unchanged", "copy_loaded_whole"):
            if not r.get(key):
                failures.append(f"{r['mode']}: {key}")
        if r.get("grad_cos_vs_fp32", 0) < COS_TARGET:
            failures.append(f"{r['mode']}: grad cosine {r.get('grad_cos_vs_fp32')} < {COS_TARGET}")
        if r.get("render_grad_cos", 0) < RENDER_COS_TARGET:
            failures.append(f"{r['mode']}: gradient after a likeness render {r.get('render_grad_cos')} "
                            f"< {RENDER_COS_TARGET}")
    return failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfyui", default=os.environ.get("ANYBODY_COMFYUI_DIR"),
                    help="a ComfyUI checkout (its Python env active); without it part 1 is skipped")
    ap.add_argument("--dry", action="store_true", help="CPU, tiny models, a few steps: checks the script itself")
    ap.add_argument("--skip-diffusers", action="store_true")
    ap.add_argument("--json", default=os.path.join(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT") else None)
    ap.add_argument("--mode-timeout", type=int, default=240, help="seconds per ComfyUI flag set")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    ap.add_argument("--base", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(comfy_worker(args)), flush=True)
        return 0
    args.base = args.base or tempfile.mkdtemp(prefix="anybody-gpucheck-comfy-")
    rows = []
    if args.comfyui:
        ckpt = Path(args.base) / "check15_fp16.safetensors"
        write_checkpoint(ckpt, args.dry)
        rows += run_comfy_modes(args, ckpt)
    else:
        print("no --comfyui / ANYBODY_COMFYUI_DIR: ComfyUI part skipped", flush=True)
    if not args.skip_diffusers:
        rows.append(diffusers_check(args))
    print("\n" + table(rows))
    failures = verdict(rows)
    print("\nverdict: " + ("all checks passed" if not failures else "FAILED: " + "; ".join(failures)))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "failures": failures}, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
