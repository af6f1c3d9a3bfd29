"""Photo augmentations drawn from a seeded generator, so a training run's views are reproducible.

The colour jitter follows torchvision's ``ColorJitter`` (factors drawn uniformly, the four adjustments applied in
a random order, brightness/contrast/saturation as blends, hue as a rotation in HSV); it is written here because
torchvision is not a dependency of the pack. Images are ``[3, H, W]`` float in 0..1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_GREY = torch.tensor([0.299, 0.587, 0.114])  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=gen).item()


def grey(image: torch.Tensor) -> torch.Tensor:
    return (image * _GREY.view(3, 1, 1).to(image)).sum(0, keepdim=True)


def _rotate_hue(image: torch.Tensor, shift: float) -> torch.Tensor:
    """Shift the hue by ``shift`` turns (RGB -> HSV -> RGB)."""
    r, g, b = image.unbind(0)
    top, _ = image.max(0)
    low, _ = image.min(0)
    chroma = top - low
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(top == r, ((g - b) / safe) % 6, torch.where(top == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(chroma > 0, hue / 6, torch.zeros_like(hue))
    sat = torch.where(top > 0, chroma / torch.where(top > 0, top, torch.ones_like(top)), torch.zeros_like(top))
    hue = (hue + shift) % 1.0
    k = (torch.stack([torch.full_like(hue, n) for n in (5.0, 3.0, 1.0)]) + hue * 6) % 6
    return top - top * sat * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def color_jitter(image: torch.Tensor, gen: torch.Generator, brightness: float = 0.2, contrast: float = 0.2,
                 saturation: float = 0.2, hue: float = 0.01) -> torch.Tensor:
    """torchvision ``ColorJitter(brightness, contrast, saturation, hue)`` on one image, with ``gen``'s randomness;
    an adjustment whose range is 0 is skipped, as torchvision does."""
    ranges = {"brightness": brightness, "contrast": contrast, "saturation": saturation, "hue": hue}
    factors = {"brightness": _uniform(gen, 1 - brightness, 1 + brightness),
               "contrast": _uniform(gen, 1 - contrast, 1 + contrast),
               "saturation": _uniform(gen, 1 - saturation, 1 + saturation),
               "hue": _uniform(gen, -hue, hue)}
    for which in torch.randperm(4, generator=gen).tolist():
        name = ("brightness", "contrast", "saturation", "hue")[which]
        f = factors[name]
        if ranges[name] == 0:
            continue
        if name == "brightness":
            image = (image * f).clamp(0, 1)
        elif name == "contrast":
            image = (f * image + (1 - f) * grey(image).mean()).clamp(0, 1)
        elif name == "saturation":
            image = (f * image + (1 - f) * grey(image)).clamp(0, 1)
        else:
            image = _rotate_hue(image, f)
    return image


def paste_on_black(image: torch.Tensor, gen: torch.Generator, min_scale: float = 0.1) -> torch.Tensor:
    """The image shrunk to ``s ~ U(min_scale, 1)`` of its height (width ``x U(0.9, 1.1)``, at most the canvas),
    put at a uniformly random place on a black canvas of the original size (Celeb Basis's target, spec §5.3)."""
    _, size_h, size_w = image.shape
    height = max(1, int(size_h * _uniform(gen, min_scale, 1.0)))
    width = max(1, min(size_w, int(height * _uniform(gen, 0.9, 1.1))))
    small = F.interpolate(image[None], size=(height, width), mode="bilinear", align_corners=True)[0]
    top = int(torch.randint(size_h - height + 1, (), generator=gen))
    left = int(torch.randint(size_w - width + 1, (), generator=gen))
    canvas = torch.zeros_like(image)
    canvas[:, top:top + height, left:left + width] = small
    return canvas
