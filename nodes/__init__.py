"""ComfyUI nodes: thin layers from sockets to the core and back. One module per capability."""
from .cross_init import AnybodyCrossInitTrain

NODE_CLASS_MAPPINGS = {"AnybodyCrossInitTrain": AnybodyCrossInitTrain}
NODE_DISPLAY_NAME_MAPPINGS = {"AnybodyCrossInitTrain": "CrossInitTrain (Anybody)"}
