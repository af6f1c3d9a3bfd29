"""Comparing identities on the same photos: renders with fixed prompts and seeds, scored for likeness and prompt
fidelity. The core of ``benchmarks/identity_eval.py``; the methods are compared with it on equal terms.

Each identity (an embedding file) is rendered by DDIM on the host's model (``train/sampling.py``) for every prompt
and seed; the faces are scored against that person's reference photos (``face/score.py``: mean identity cosine,
the references' own leave-one-out baseline, the share of renders with a face, the copy-paste indicator), and, when
a CLIP model is given, each render against its prompt with the placeholder replaced by "a person" (CLIP-T, the
field's prompt-fidelity number: cosine of CLIP's image and text embeddings).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import BadInputError, ModelFileError
from .face.score import identity_report
from .identity import Identity

DEFAULT_PROMPTS = ("a photo of {word} person",
                   "a close-up portrait of {word} person smiling, studio lighting",
                   "{word} person as a chef in a restaurant kitchen",
                   "an oil painting of {word} person")
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@dataclass
class EvalSettings:
    prompts: Sequence[str] = DEFAULT_PROMPTS
    seeds: Sequence[int] = (0, 1)
    steps: int = 30
    guidance: float = 7.5
    resolution: int = 0  # 0: the model's own

    def check(self) -> None:
        if not self.prompts or any("{word}" not in p for p in self.prompts):
            raise BadInputError("Every prompt needs the placeholder {word}, where the identity goes.")
        if not self.seeds or self.steps < 1:
            raise BadInputError("Give at least one seed and one sampling step.")


@dataclass
class Render:
    prompt: str
    seed: int
    image: torch.Tensor  # [H, W, 3] 0..1


@dataclass
class IdentityResult:
    name: str
    method: str
    report: dict
    clip_t: Optional[float]
    per_prompt: list[dict] = field(default_factory=list)


def render(host, identity: Identity, settings: EvalSettings) -> list[Render]:
    """Every prompt x seed of ``settings`` with ``identity`` bound to its placeholder, on the host's model."""
    from .methods.runs import default_resolution

    identity.require_family(host.family)
    word = f"<{identity.name}>"
    injections = {word: {k: v.to(host.device) for k, v in identity.vectors.items()}}
    size = settings.resolution or default_resolution(host)
    uncond = host.encode_prompts([""])
    out = []
    for prompt in settings.prompts:
        host.sink.check_cancel()
        with torch.no_grad(), host.autocast():
            cond = host.encode_prompts([prompt.format(word=word)], injections)
        for seed in settings.seeds:
            noise = torch.randn((1, 4, size // 8, size // 8), generator=torch.Generator().manual_seed(int(seed)))
            latents = host.sample_ddim(cond, uncond, noise, settings.steps, settings.guidance)
            out.append(Render(prompt, int(seed), host.decode_latents(latents)[0].float().cpu()))
    return out


class ClipScorer:
    """CLIP-T with a local CLIP (a transformers ``CLIPModel`` folder, e.g. openai/clip-vit-large-patch14)."""

    def __init__(self, folder: str | Path) -> None:
        from transformers import CLIPModel, CLIPTokenizer

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise ModelFileError(f"No CLIP model in {folder} (config.json and the weights of a transformers CLIPModel, "
                                 "e.g. openai/clip-vit-large-patch14).")
        self.model = CLIPModel.from_pretrained(str(folder)).eval()
        try:
            self.tokenizer = CLIPTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError):  # a folder with the weights only: CLIP's BPE is the one the pack ships
            from .assets import clip_tokenizer

            self.tokenizer = clip_tokenizer()
        self.size = int(self.model.config.vision_config.image_size)

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP's preprocessing: shorter side to the input size (bicubic), centre crop, CLIP's mean and std."""
        x = images.permute(0, 3, 1, 2).float()
        h, w = x.shape[-2:]
        scale = self.size / min(h, w)
        x = F.interpolate(x, size=(max(self.size, round(h * scale)), max(self.size, round(w * scale))),
                          mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (x.shape[-2] - self.size) // 2, (x.shape[-1] - self.size) // 2
        x = x[..., top:top + self.size, left:left + self.size]
        mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def scores(self, images: torch.Tensor, texts: Sequence[str]) -> list[float]:
        """Cosine of each image ``[B,H,W,3]`` with its text."""
        tokens = self.tokenizer(list(texts), padding="max_length", truncation=True,
                                max_length=self.model.config.text_config.max_position_embeddings, return_tensors="pt")
        image = F.normalize(projected(self.model.get_image_features(pixel_values=self.pixels(images))), dim=-1)
        text = F.normalize(projected(self.model.get_text_features(input_ids=tokens["input_ids"],
                                                                  attention_mask=tokens["attention_mask"])), dim=-1)
        return (image * text).sum(-1).tolist()


def projected(features) -> torch.Tensor:
    """CLIP's projected embedding: transformers 4 returns the tensor, transformers 5 an output whose pooler_output
    it is."""
    return features if isinstance(features, torch.Tensor) else features.pooler_output


def plain_prompt(prompt: str) -> str:
    """The prompt CLIP-T compares with: the identity's placeholder replaced by a plain description."""
    return prompt.format(word="a").replace("a a ", "a ").strip()


def evaluate(host, identities: Sequence[Identity], references: Mapping[str, Sequence], face_models,
             settings: EvalSettings = EvalSettings(), clip: ClipScorer | None = None,
             out_dir: str | Path | None = None) -> list[IdentityResult]:
    """Render and score every identity; ``references[name]``: that person's photos (tensors or uint8 arrays).
    With ``out_dir`` the renders are written as ``<out_dir>/<name>/<prompt index>_<seed>.png``."""
    settings.check()
    missing = [i.name for i in identities if i.name not in references]
    if missing:
        raise BadInputError(f"No reference photos for {', '.join(missing)}; give each identity its photos.")
    results = []
    for identity in identities:
        renders = render(host, identity, settings)
        images = [r.image for r in renders]
        report = identity_report(face_models, images, list(references[identity.name]))
        clip_t = None
        if clip is not None:
            clip_t = clip.scores(torch.stack(images), [plain_prompt(r.prompt) for r in renders])
        rows = []
        for p, prompt in enumerate(settings.prompts):
            picks = [i for i, r in enumerate(renders) if r.prompt == prompt]
            found = [report.scores[i] for i in picks if report.scores[i] is not None]
            rows.append({"prompt": prompt, "likeness": float(np.mean(found)) if found else None,
                         "face_rate": len(found) / len(picks),
                         "clip_t": None if clip_t is None else float(np.mean([clip_t[i] for i in picks]))})
        if out_dir is not None:
            _save(Path(out_dir) / identity.name, renders, settings.prompts)
        results.append(IdentityResult(identity.name, identity.method, report.as_dict(),
                                      None if clip_t is None else float(np.mean(clip_t)), rows))
    return results


def _save(folder: Path, renders: Sequence[Render], prompts: Sequence[str]) -> None:
    from PIL import Image

    from .face.pipeline import to_uint8

    folder.mkdir(parents=True, exist_ok=True)
    for r in renders:
        Image.fromarray(to_uint8(r.image)).save(folder / f"{list(prompts).index(r.prompt)}_{r.seed}.png")


def as_json(results: Sequence[IdentityResult], settings: EvalSettings) -> dict:
    return {"settings": {"prompts": list(settings.prompts), "seeds": list(settings.seeds), "steps": settings.steps,
                         "guidance": settings.guidance, "resolution": settings.resolution, "sampler": "DDIM, eta 0"},
            "identities": [{"name": r.name, "method": r.method, "clip_t": r.clip_t, **r.report,
                            "per_prompt": r.per_prompt} for r in results]}


def markdown(results: Sequence[IdentityResult]) -> str:
    """One row per identity: likeness beside its references' baseline, face rate, copy-paste and CLIP-T."""
    def num(value, fmt="{:.3f}"):
        return "–" if value is None else fmt.format(value)

    lines = ["| identity | method | likeness | baseline | faces | copy-paste | CLIP-T |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.name} | {r.method} | {num(r.report['mean'])} | {num(r.report['baseline'])} | "
                     f"{num(r.report['face_rate'], '{:.0%}')} | {num(r.report['copy_paste'], '{:+.3f}')} | "
                     f"{num(r.clip_t)} |")
    return "\n".join(lines) + "\n"
