"""Model folders the pack adds to ComfyUI's registry: ``models/<name>``, beside (never replacing) what
extra_model_paths.yaml set, with the file extensions the folder's loader reads."""
from __future__ import annotations

import os


def register_model_folder(name: str, extensions: set[str] | None = None) -> None:
    try:
        import folder_paths
    except ImportError:  # not inside ComfyUI
        return
    default = os.path.join(folder_paths.models_dir, name)
    if default not in folder_paths.folder_names_and_paths.get(name, ([], set()))[0]:
        folder_paths.add_model_folder_path(name, default)
    if extensions:
        folder_paths.folder_names_and_paths[name][1].update(extensions)
