"""ComfyUI nodes: thin layers from sockets to the core and back. One module per capability."""
from .adaface import AnybodyAdaFaceEncode, AnybodyAdaFaceLoader, AnybodyGuidanceAnneal
from .celeb_basis import AnybodyCelebBasisEmbed
from .cross_init import AnybodyCrossInitTrain
from .face import (AnybodyFaceAlign, AnybodyFaceModelFromMediaPipe, AnybodyFaceModelLoader, AnybodyFaceParse,
                   AnybodyFaceRecognizerLoader, AnybodyIdentityScore, comfy_has_mediapipe)
from .magicapture import AnybodyMagiCaptureLoRA
from .restore import AnybodyFaceRestore
from .rig import AnybodyRigAssetsLoader, AnybodyRigModelLoader, AnybodyRigPersonalize, AnybodyRigRender

NODE_CLASS_MAPPINGS = {
    "AnybodyCrossInitTrain": AnybodyCrossInitTrain,
    "AnybodyFaceModelLoader": AnybodyFaceModelLoader,
    "AnybodyFaceAlign": AnybodyFaceAlign,
    "AnybodyFaceParse": AnybodyFaceParse,
    "AnybodyIdentityScore": AnybodyIdentityScore,
    "AnybodyAdaFaceLoader": AnybodyAdaFaceLoader,
    "AnybodyAdaFaceEncode": AnybodyAdaFaceEncode,
    "AnybodyGuidanceAnneal": AnybodyGuidanceAnneal,
    "AnybodyFaceRecognizerLoader": AnybodyFaceRecognizerLoader,
    "AnybodyCelebBasisEmbed": AnybodyCelebBasisEmbed,
    "AnybodyMagiCaptureLoRA": AnybodyMagiCaptureLoRA,
    "AnybodyFaceRestore": AnybodyFaceRestore,
    "AnybodyRigAssetsLoader": AnybodyRigAssetsLoader,
    "AnybodyRigModelLoader": AnybodyRigModelLoader,
    "AnybodyRigRender": AnybodyRigRender,
    "AnybodyRigPersonalize": AnybodyRigPersonalize,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "AnybodyCrossInitTrain": "CrossInitTrain (Anybody)",
    "AnybodyFaceModelLoader": "FaceModelLoader (Anybody)",
    "AnybodyFaceAlign": "FaceAlign (Anybody)",
    "AnybodyFaceParse": "FaceParse (Anybody)",
    "AnybodyIdentityScore": "IdentityScore (Anybody)",
    "AnybodyAdaFaceLoader": "AdaFaceLoader (Anybody)",
    "AnybodyAdaFaceEncode": "AdaFaceEncode (Anybody)",
    "AnybodyGuidanceAnneal": "GuidanceAnneal (Anybody)",
    "AnybodyFaceRecognizerLoader": "FaceRecognizerLoader (Anybody)",
    "AnybodyCelebBasisEmbed": "CelebBasisEmbed (Anybody)",
    "AnybodyMagiCaptureLoRA": "MagiCaptureLoRA (Anybody)",
    "AnybodyFaceRestore": "FaceRestore CodeFormer (Anybody)",
    "AnybodyRigAssetsLoader": "RigAssetsLoader (Anybody)",
    "AnybodyRigModelLoader": "RigModelLoader (Anybody)",
    "AnybodyRigRender": "RigRender (Anybody)",
    "AnybodyRigPersonalize": "RigPersonalize (Anybody)",
}

if comfy_has_mediapipe():  # the node needs ComfyUI's own MediaPipe loader; on older releases it would be a dead end
    NODE_CLASS_MAPPINGS["AnybodyFaceModelFromMediaPipe"] = AnybodyFaceModelFromMediaPipe
    NODE_DISPLAY_NAME_MAPPINGS["AnybodyFaceModelFromMediaPipe"] = "FaceModelFromMediaPipe (Anybody)"
