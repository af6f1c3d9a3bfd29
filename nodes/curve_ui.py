"""A finished training's curve as the node's UI image: the loss (and likeness) of every step, read back from the
CSV the trainer keeps beside its saved progress, so a re-queued graph that reuses the result shows it too."""
from __future__ import annotations

import uuid
from pathlib import Path


def curve_images(csv_paths: list[Path], titles: list[str]) -> list[dict]:
    """ComfyUI ``ui.images`` entries (temp PNGs) for the curve CSVs that exist."""
    import folder_paths
    import numpy as np
    from PIL import Image

    from ..anybody.train.curve import read_csv, render

    entries = []
    for path, title in zip(csv_paths, titles):
        losses, likeness = read_csv(path)
        if not losses:
            continue
        chart = render(losses, len(losses), 512, 160, title=title, likeness=likeness)
        name = f"anybody_curve_{uuid.uuid4().hex[:12]}.png"
        folder = Path(folder_paths.get_temp_directory())
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((chart.numpy() * 255).round().astype(np.uint8)).save(folder / name)
        entries.append({"filename": name, "subfolder": "", "type": "temp"})
    return entries
