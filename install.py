"""The one installer: run by A1111 at launch, by ComfyUI-Manager after cloning, and by users.

Installs only what is missing, never upgrades or reinstalls what the host owns (torch, torchvision, gradio,
transformers), picks onnxruntime-gpu only where CUDA is present, and never installs both onnxruntime
packages. insightface is installed without its declared dependencies, then with them minus onnxruntime and
opencv (it asks for the CPU onnxruntime and for opencv-python, which would sit beside onnxruntime-gpu or
opencv-python-headless and break both). Fast when everything is present: it asks pip for nothing.

    python install.py          # what the nodes need inside ComfyUI / A1111
    python install.py --cli    # + diffusers/transformers for `python -m anybody` outside a UI
    python install.py --dev    # + the test tools
"""
from __future__ import annotations

import importlib.metadata as md
import os
import subprocess
import sys
import tempfile

CORE = ["safetensors>=0.4", "numpy", "pillow", "scikit-image"]
CLI = ["diffusers>=0.30", "transformers>=4.40"]
DEV = ["pytest>=7", "onnx", "peft"]  # peft: diffusers' load_lora_weights, the round-trip test of our LoRA files
HOST_OWNED = ("torch", "torchvision", "torchaudio", "gradio", "fastapi", "pydantic", "transformers", "numpy", "pillow",
              "safetensors", "setuptools", "protobuf")
ONNX_PACKAGES = ("onnxruntime", "onnxruntime-gpu")
CV2_PACKAGES = ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless")


def installed(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def requirement_name(req: str) -> str:
    for sep in "<>=!~[; ":
        req = req.split(sep)[0]
    return req


def onnxruntime_choice(cuda_available: bool) -> str | None:
    """The onnxruntime package to install, or None when one is already there (never both)."""
    if any(installed(p) for p in ONNX_PACKAGES):
        return None
    return "onnxruntime-gpu" if cuda_available else "onnxruntime"


def opencv_choice() -> str | None:
    """opencv-python unless some OpenCV distribution is already there (two of them overwrite each other)."""
    return None if any(installed(p) for p in CV2_PACKAGES) else "opencv-python"


def insightface_requirements() -> list[str]:
    """insightface's declared runtime requirements, without extras and without the ORT/OpenCV families."""
    try:
        reqs = md.requires("insightface") or []
    except md.PackageNotFoundError:
        return []
    keep = [r for r in reqs if "extra ==" not in r and requirement_name(r).lower() not in ONNX_PACKAGES + CV2_PACKAGES]
    return missing([r.split(";")[0].strip() for r in keep])


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def missing(requirements: list[str]) -> list[str]:
    return [r for r in requirements if installed(requirement_name(r)) is None]


def host_pins() -> list[str]:
    """Constraints that keep what the host installed where it is (pip would otherwise upgrade it for a dependency)."""
    return [f"{name}=={installed(name)}" for name in HOST_OWNED if installed(name)]


def pip_install(packages: list[str], no_deps: bool = False) -> None:
    """Install with the host's own pip; a constraints file pins what the host owns so pip cannot move it."""
    pins = host_pins()
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(pins) + "\n")
    try:
        cmd = [sys.executable, "-m", "pip", "install", "--upgrade-strategy", "only-if-needed", "-c", f.name,
               *(["--no-deps"] if no_deps else []), *packages]
        print("[Anybody] installing:", " ".join(packages), flush=True)
        subprocess.check_call(cmd)
    finally:
        os.unlink(f.name)


def plan(with_cli: bool, with_dev: bool, onnx: bool, cuda) -> list[str]:
    """What to install. ``cuda``: a bool, or a function asked only when an onnxruntime must be chosen (importing
    torch to find out costs a second, on every A1111 launch)."""
    wanted = CORE + (CLI if with_cli or with_dev else []) + (DEV if with_dev else [])
    todo = missing(wanted)
    if onnx and not any(installed(p) for p in ONNX_PACKAGES):
        todo.append(onnxruntime_choice(cuda() if callable(cuda) else cuda))
    cv2 = opencv_choice()
    if cv2:
        todo.append(cv2)
    return todo


def main(argv: list[str]) -> int:
    if installed("torch") is None:
        print("[Anybody] PyTorch is not installed. Install the build for your machine first "
              "(https://pytorch.org/get-started/locally/), e.g. `pip install torch`, then run this again.")
        return 1
    todo = plan("--cli" in argv, "--dev" in argv, onnx="--no-onnx" not in argv, cuda=cuda_available)
    if todo:
        pip_install(todo)
    if installed("insightface") is None:
        try:
            pip_install(["insightface"], no_deps=True)
        except subprocess.CalledProcessError:
            # PyPI has insightface only as source; where it cannot be built (no compiler, a Python too new for its
            # Cython code) the pack still works: nothing but the ONNX face packs needs it.
            print(f"[Anybody] insightface could not be installed on Python {sys.version_info[0]}."
                  f"{sys.version_info[1]} (see pip's message above: PyPI has no wheel of it, and building it failed). "
                  "Everything else works without it: training and identities need no face tools, and for faces "
                  "use the torch path: FaceRecognizerLoader for recognition and, on ComfyUI with its MediaPipe "
                  "face nodes, FaceModelFromMediaPipe (Anybody) for detection.", flush=True)
            return 0
    extra = insightface_requirements()
    if extra:
        try:
            pip_install(extra)
        except subprocess.CalledProcessError:
            # A1111 pins protobuf 3.20.0: insightface's onnx exists for it on Python 3.10 (onnx 1.12, the webui's
            # Python) but not on newer Pythons. Moving protobuf would make the webui reinstall its own at every launch.
            print(f"[Anybody] could not install {', '.join(extra)} beside this host's pinned packages (see pip's "
                  "message above). Training and identities work without them; the face tools (FaceAlign, "
                  "IdentityScore, crop_to_face) need insightface's dependencies. On AUTOMATIC1111 use Python 3.10, "
                  "as the webui recommends.", flush=True)
    if not todo and not extra:
        print("[Anybody] all requirements present.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
