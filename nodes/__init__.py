"""ComfyUI nodes: thin layers from sockets to the core and back. One module per capability."""
from .adaface import AnybodyAdaFaceEncode, AnybodyAdaFaceLoader
from .cross_init import AnybodyCrossInitTrain
from .face import AnybodyFaceAlign, AnybodyFaceModelLoader, AnybodyFaceParse, AnybodyIdentityScore

NODE_CLASS_MAPPINGS = {
    "AnybodyCrossInitTrain": AnybodyCrossInitTrain,
    "AnybodyFaceModelLoader": AnybodyFaceModelLoader,
    "AnybodyFaceAlign": AnybodyFaceAlign,
    "AnybodyFaceParse": AnybodyFaceParse,
    "AnybodyIdentityScore": AnybodyIdentityScore,
    "AnybodyAdaFaceLoader": AnybodyAdaFaceLoader,
    "AnybodyAdaFaceEncode": AnybodyAdaFaceEncode,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "AnybodyCrossInitTrain": "CrossInitTrain (Anybody)",
    "AnybodyFaceModelLoader": "FaceModelLoader (Anybody)",
    "AnybodyFaceAlign": "FaceAlign (Anybody)",
    "AnybodyFaceParse": "FaceParse (Anybody)",
    "AnybodyIdentityScore": "IdentityScore (Anybody)",
    "AnybodyAdaFaceLoader": "AdaFaceLoader (Anybody)",
    "AnybodyAdaFaceEncode": "AdaFaceEncode (Anybody)",
}
