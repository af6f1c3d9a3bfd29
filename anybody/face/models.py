"""Finding and loading an insightface model pack (detector + recognizer ONNX files) with errors that help.

Packs live where InstantID/PuLID/IPAdapter users already keep them: ``<root>/models/<pack>/*.onnx`` under
ComfyUI's ``models/insightface`` (plus any ``insightface:`` entries of ``extra_model_paths.yaml``), or
``~/.insightface`` for the CLI. The ONNX files are routed to insightface's own classes (SCRFD/RetinaFace,
ArcFaceONNX) by ``insightface.model_zoo.get_model``, exactly as ``FaceAnalysis`` does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import BadInputError, ModelFileError

#: what each well-known pack contains; the first two files are the ones Anybody uses
KNOWN_PACKS = {
    "antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx", "1k3d68.onnx", "2d106det.onnx", "genderage.onnx"),
    "buffalo_l": ("det_10g.onnx", "w600k_r50.onnx", "1k3d68.onnx", "2d106det.onnx", "genderage.onnx"),
}
WHERE_TO_GET = ("insightface's model zoo (github.com/deepinsight/insightface, python-package/README: "
                "antelopev2.zip / buffalo_l.zip; non-commercial research licence). Unzip so the .onnx files sit "
                "directly in the pack folder.")
PROVIDERS = ("auto", "CPU", "CUDA")


@dataclass
class FaceModels:
    """ANYBODY_FACE_MODEL: a detector, a recognizer and where they came from.

    The detector has insightface's ``detect(bgr, input_size, max_num) -> (boxes [N,5], kps [N,5,2])`` (an ONNX
    SCRFD/RetinaFace, or ``face.mediapipe.MediaPipeDetector`` over ComfyUI's own MediaPipe model). Recognition
    runs through ``embedder`` (a torch ``FaceRecognizer``) when one is set, else through the pack's ONNX
    ``recognizer``."""

    name: str
    folder: Path
    detector: object
    recognizer: object | None
    providers: list[str] = field(default_factory=list)
    embedder: object | None = None  # a FaceRecognizer; takes precedence over the ONNX recognizer

    def describe(self) -> str:
        rec = (self.embedder.describe() if self.embedder is not None else
               Path(self.recognizer.model_file).name if self.recognizer is not None else "no recognizer")
        where = f"; {', '.join(self.providers)}" if self.providers else ""
        return f"{self.name} ({Path(self.detector.model_file).name} + {rec}{where})"

    def with_embedder(self, embedder) -> "FaceModels":
        """The same detector with recognition through ``embedder`` (a torch recognizer: no onnxruntime needed)."""
        from dataclasses import replace

        return replace(self, embedder=embedder)


def ort_providers(choice: str) -> list[str]:
    """onnxruntime providers for 'auto' | 'CPU' | 'CUDA'; asking for CUDA where it is absent is an error."""
    onnxruntime = require_onnx()

    available = onnxruntime.get_available_providers()
    if choice not in PROVIDERS:
        raise BadInputError(f"Unknown provider {choice!r}; choose one of {', '.join(PROVIDERS)}.")
    if choice == "CPU":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if choice == "CUDA":
        raise BadInputError("CUDA was requested but this onnxruntime has no CUDAExecutionProvider (installed: "
                            f"{', '.join(available)}). Install onnxruntime-gpu in place of onnxruntime, or pick CPU.")
    return ["CPUExecutionProvider"]


NO_ONNX = ("insightface packs need onnxruntime and insightface{missing}. Install them with the pack's install.py "
           "(it picks onnxruntime-gpu where CUDA is present), or use the torch path: FaceRecognizerLoader for "
           "recognition and, on ComfyUI with its MediaPipe face nodes, FaceModelFromMediaPipe (Anybody) for "
           "detection.")


def require_onnx():
    """onnxruntime, with insightface importable beside it; else an error naming what is missing and the way out."""
    missing = []
    try:
        import onnxruntime
    except ImportError:
        missing.append("onnxruntime")
    try:
        import insightface  # noqa: F401
    except ImportError:
        missing.append("insightface")
    if missing:
        raise ModelFileError(NO_ONNX.format(missing=f" ({' and '.join(missing)} not installed)"))
    return onnxruntime


def pack_candidates(root: Path, name: str) -> list[Path]:
    """Folders where pack ``name`` may sit under ``root`` (insightface's ``models/<name>`` first)."""
    return [root / "models" / name, root / name]


def find_pack(name: str, roots: Sequence[str | Path]) -> Path:
    """The folder of pack ``name`` holding its .onnx files, or a ModelFileError that says what to do."""
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise BadInputError(f"{name!r} is not a model pack name (expected e.g. antelopev2 or buffalo_l).")
    looked = []
    for root in map(Path, roots):
        for folder in pack_candidates(root, name):
            looked.append(folder)
            if folder.is_dir() and any(folder.glob("*.onnx")):
                return folder
            nested = folder / name
            if nested.is_dir() and any(nested.glob("*.onnx")):
                raise ModelFileError(f"The {name} files are one folder too deep: {nested}. Move the .onnx files up "
                                     f"into {folder} (the zip already contains a {name}/ folder).")
    expected = ", ".join(KNOWN_PACKS.get(name, ("a detector .onnx", "a recognizer .onnx"))[:2])
    places = "\n  ".join(str(p) for p in looked) or "(no insightface folder is configured)"
    raise ModelFileError(f"Face model pack '{name}' not found. Looked in:\n  {places}\nExpected {expected} in "
                         f"{looked[0] if looked else '<models>/insightface/models/' + name}. Get them from "
                         f"{WHERE_TO_GET}")


def load_face_models(name: str, roots: Sequence[str | Path], provider: str = "auto",
                     det_size: int = 640) -> FaceModels:
    """Load the pack's detector and recognizer through insightface's model zoo."""
    providers = ort_providers(provider)  # first: without onnxruntime no pack can load, wherever it is
    folder = find_pack(name, roots)
    detector, recognizer = None, None
    for onnx_file in sorted(folder.glob("*.onnx")):
        model = _route(onnx_file, providers)
        task = getattr(model, "taskname", None)
        if task == "detection" and detector is None:
            detector = model
        elif task == "recognition" and recognizer is None:
            recognizer = model
    if detector is None:
        raise ModelFileError(f"No face detector among the .onnx files in {folder} (expected "
                             f"{KNOWN_PACKS.get(name, ('scrfd_10g_bnkps.onnx',))[0]}). Get the pack from {WHERE_TO_GET}")
    ctx = 0 if providers[0] == "CUDAExecutionProvider" else -1
    detector.prepare(ctx, input_size=(det_size, det_size), det_thresh=0.5)
    if recognizer is not None:
        recognizer.prepare(ctx)
    return FaceModels(name, folder, detector, recognizer, providers)


def _route(onnx_file: Path, providers: list[str]):
    """insightface's ONNX router; a truncated or foreign file becomes an error naming it."""
    from insightface.model_zoo import model_zoo

    try:
        return model_zoo.get_model(str(onnx_file), providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
        raise ModelFileError(f"{onnx_file} could not be loaded ({type(exc).__name__}: {str(exc)[:200]}). The file is "
                             f"damaged or not an insightface model; download it again from {WHERE_TO_GET}") from exc


def list_packs(roots: Iterable[str | Path]) -> list[str]:
    """Pack names present under the roots, known packs first (listed even when missing, so errors can explain)."""
    found = []
    for root in map(Path, roots):
        for base in (root / "models", root):
            if base.is_dir():
                found += [p.name for p in sorted(base.iterdir())
                          if p.is_dir() and p.name != "models" and (any(p.glob("*.onnx")) or any(p.glob("*/*.onnx")))]
    return list(dict.fromkeys([*KNOWN_PACKS, *found]))
