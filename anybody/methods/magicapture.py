"""MagiCapture (Hyung et al., AAAI 2024): a person and a portrait style learned together, on the host's model.

Spec: shared/methods/magicapture.md. Phase 1 inverts two tokens (subject, style) with a masked reconstruction
loss; phase 2 adds rank-4 LoRA on the UNet's and the text encoder's attention and keeps inverting, with the
attention-refocusing loss (each token's cross-attention kept on its region) and the identity loss (the subject's
face identity on the predicted image). Results: a kohya LoRA in the host's LoRA folder and the two tokens as stock
embedding files (separate files rather than kohya ``bundle_emb``: ComfyUI's LoRA loader does not register bundled
embeddings, A1111 reads both), used at the paper's strengths (UNet 0.6, text 0.9).

Deviations (documented in the README and the issue notes): masks are ``0.01 + 0.99 * binary`` (the official code's
twice-softened masks differ by up to 1 % off-region); continued inversion moves only the two placeholder vectors
(the official code lets the whole token table drift); samples are drawn uniformly with replacement (the official
loader shuffles per epoch); the reference identity of a subject photo is taken once, unflipped.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import AnybodyError, BadInputError, WrongModelFamilyError
from ..face.align import similarity_matrix, warp_to_crop
from ..face.detect import Face
from ..face.recognizer import FaceRecognizer
from ..face.templates import TEMPLATES as FACE_TEMPLATES
from ..files import ensure_writable_folder, safe_name
from ..host.base import Host
from ..identity import Identity
from ..train import diffusion, lora
from ..train.augment import color_jitter
from ..train.engine import StepResult, Trainer, is_out_of_memory, out_of_memory
from ..train.loss_scale import LossScale
from ..train.sink import PhaseSink
from ..train.state import TrainingState
from ..train.likeness import LikenessTracker
from . import magicapture_losses as losses
from .likeness import (identity_probe, keep_best, likeness_metadata, likeness_settings, resolve_every,
                       without_likeness)
from .magicapture_identity import central_face, identity_term
from .runs import (RESULT_KEY, continues_saved, default_resolution, discard_saved, images_digest, refuse_existing,
                   result_key, reusable)


@dataclass(frozen=True)
class MagiCaptureConfig:
    """The official run (spec §4-§6): 1,200 inversion steps at 2e-3, then 1,500 LoRA steps (UNet 4e-4, text 4e-5,
    tokens 1e-4, weight decay 1e-3, gradient norm 1.0), batch 1, losses weighted 0.25 (identity) and 2.5
    (attention), style samples doubled in the first half of each phase, seed 42."""

    ti_steps: int = 1200
    lora_steps: int = 1500
    ti_lr: float = 2e-3
    unet_lr: float = 4e-4
    text_lr: float = 4e-5
    token_lr: float = 1e-4
    lora_weight_decay: float = 1e-3
    rank: int = 4
    id_weight: float = 0.25
    attention_weight: float = 2.5
    style_weight: float = 2.0
    max_grad_norm: float = 1.0
    ti_timesteps: int = 1000  # t ~ U{0 .. n-1} in phase 1
    lora_timesteps: int = 800  # and in phase 2 (the official t multiplier 0.8)
    attention_level: int | None = None  # refocused UNet level; None: the deepest with cross-attention (SD1.5: 2)
    resolution: int = 0
    seed: int = 42
    save_every: int = 100
    preview_every: int = 50
    gradient_checkpointing: bool = False
    #: beyond the paper: the likeness curve in phase 2 (see cross_init.CrossInitConfig); -1 = auto
    likeness_every: int = 0
    likeness_patience: int = 0
    keep_best: bool = True


#: "fast" is ours (the paper publishes only its full schedule): a quarter of the steps, same rates and weights
PRESETS = {"paper": {}, "fast": {"ti_steps": 300, "lora_steps": 400}}
STRENGTHS = {"unet": 0.6, "text": 0.9}  # the official pipeline's LoRA scales at inference


def preset(name: str, **overrides) -> MagiCaptureConfig:
    if name not in PRESETS and name != "custom":
        raise BadInputError(f"Unknown preset {name!r}; choose one of {', '.join([*PRESETS, 'custom'])}.")
    return replace(MagiCaptureConfig(), **{**PRESETS.get(name, {}), **overrides})


@dataclass
class FaceTools:
    """What training needs from the face stack: a detector, a face-region mask for a detected face (BiSeNet classes
    1-13 inside its box), and a torch recognizer (the identity loss backpropagates through it)."""

    detect: Callable[[np.ndarray], Sequence[Face]]
    face_mask: Callable[[np.ndarray, Face], np.ndarray]
    recognizer: FaceRecognizer
    signature: str = ""  # which detector and parsing weights: part of the re-queue key


def face_tools(models, parsing_net, recognizer: FaceRecognizer, device: str | torch.device = "cpu",
               parsing_name: str = "") -> FaceTools:
    """``FaceTools`` over an insightface pack, a BiSeNet parsing net and a torch recognizer."""
    from ..face.detect import detect_faces
    from ..face.parse import FACE_CLASSES, region_mask

    return FaceTools(lambda image: detect_faces(models, image),
                     lambda image, face: region_mask(parsing_net, image, FACE_CLASSES, face.box, device), recognizer,
                     f"{getattr(models, 'name', models)}|{parsing_name}")


# --- samples (spec §2) -------------------------------------------------------------------------------------------

@dataclass
class Sample:
    """One frozen training item: its latent (sampled once), loss mask, prompt and, for identity, the reference."""

    kind: str
    latent: torch.Tensor  # [4, h, w]
    mask: torch.Tensor  # [1, h, w] soft loss mask (the token's region at 1)
    prompt: str
    reference: torch.Tensor | None  # [512] the subject's unit embedding (instance, both)


def square_photo(photo: torch.Tensor, size: int) -> torch.Tensor:
    """Shorter side resized to ``size`` (bilinear), centre crop: ``[H,W,3]`` -> ``[3,S,S]``."""
    chw = photo.permute(2, 0, 1)[None].float()
    h, w = chw.shape[-2:]
    scale = size / min(h, w)
    resized = F.interpolate(chw, size=(max(size, round(h * scale)), max(size, round(w * scale))), mode="bilinear",
                            align_corners=False, antialias=True)[0]
    top, left = (resized.shape[1] - size) // 2, (resized.shape[2] - size) // 2
    return resized[:, top:top + size, left:left + size].clamp(0, 1)


def _uint8(image: torch.Tensor) -> np.ndarray:
    return (image.permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def _one_face(tools: FaceTools, image: torch.Tensor, label: str) -> Face:
    rgb = _uint8(image)
    faces = tools.detect(rgb)
    if not faces:
        raise BadInputError(f"No face found in {label}. MagiCapture needs a visible face in every subject and style "
                            "photo (the style's region is everything but the face); replace or remove it.")
    return central_face(faces, rgb.shape[0], rgb.shape[1])


def reference_embedding(tools: FaceTools, image: torch.Tensor, face: Face) -> torch.Tensor:
    """The unit identity embedding of ``face`` in ``image [3,S,S]`` (ArcFace 112 alignment, frozen recognizer)."""
    tpl = FACE_TEMPLATES["arcface112"]
    crop = warp_to_crop(_uint8(image), similarity_matrix(face.landmarks, tpl), tpl.size, tpl.antialias)
    faces = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 127.5 - 1
    return tools.recognizer(faces)[0]


def prepare_samples(host: Host, subjects: Sequence[torch.Tensor], styles: Sequence[torch.Tensor], tools: FaceTools,
                    words: tuple[str, str], size: int, generator: torch.Generator) -> list[Sample]:
    """Every photo checked for a face first (errors name the photo), then each item of ``compose_items`` made once:
    colour jitter (brightness/contrast 0.1) and a flip, its region mask and prompt, its latent sampled."""
    subject_images = [square_photo(p, size) for p in subjects]
    style_images = [square_photo(p, size) for p in styles]
    subject_faces = [_one_face(tools, im, f"subject photo {i + 1}") for i, im in enumerate(subject_images)]
    style_faces = [_one_face(tools, im, f"style photo {i + 1}") for i, im in enumerate(style_images)]
    references = [reference_embedding(tools, im, f) for im, f in zip(subject_images, subject_faces)]
    subject_word, style_word = words
    samples = []
    for item in losses.compose_items(len(subjects), len(styles), generator):
        image, face = ((subject_images[item.subject], subject_faces[item.subject]) if item.kind == "instance"
                       else (style_images[item.style], style_faces[item.style]))
        binary = torch.from_numpy(np.asarray(tools.face_mask(_uint8(image), face), np.float32))
        if item.kind == "instance" and not binary.any():
            raise BadInputError(f"The face parsing found no face pixels in subject photo {item.subject + 1}; use a "
                                "clearer photo of the face.")
        region = binary if item.kind == "instance" else 1 - binary
        image = color_jitter(image, generator, brightness=0.1, contrast=0.1, saturation=0.0, hue=0.0)
        if torch.rand((), generator=generator) < 0.5:
            image, region = image.flip(-1), region.flip(-1)
        mean, std = host.encode_images(image.permute(1, 2, 0)[None])
        latent = (mean + std * torch.randn(mean.shape, generator=generator).to(mean)).float().cpu()[0]
        mask = losses.latent_mask(region[None], tuple(latent.shape[-2:]))[0]  # (b + 0.01) / 1.01
        templates = losses.TEMPLATES[item.kind]
        prompt = templates[int(torch.randint(len(templates), (), generator=generator))]
        samples.append(Sample(item.kind, latent, mask, prompt.format(S=subject_word, T=style_word),
                              references[item.subject] if item.subject is not None else None))
    return samples


def owned(samples: Sequence[Sample]) -> list[Sample]:
    """Copies of the samples' tensors, made inside the host's training context: those prepared under a ComfyUI
    node's inference mode are inference tensors, which autograd refuses to save (the masks are)."""
    return [replace(s, latent=s.latent.clone(), mask=s.mask.clone(),
                    reference=None if s.reference is None else s.reference.clone()) for s in samples]


def word_positions(encoder, prompt: str, words: Sequence[str]) -> dict[str, int]:
    """The row of each placeholder word in the prompt's 77 rows (first occurrence), found with marker vectors."""
    markers = {w: torch.full((1, encoder.width), float(k + 1)) for k, w in enumerate(words)}
    rows = encoder.rows(prompt, markers)
    found = {}
    for i, row in enumerate(rows):
        if isinstance(row, torch.Tensor):
            word = words[int(row[0].item()) - 1]
            found.setdefault(word, i)
    return found


# --- the two phases ----------------------------------------------------------------------------------------------

class _Phase:
    """The state one phase's loss function and schedule share: the current step and its learning rates."""

    def __init__(self, optimizer: torch.optim.Optimizer, bases: Sequence[float], steps: int) -> None:
        self.optimizer, self.bases, self.steps, self.step = optimizer, list(bases), steps, 0

    def before_step(self, step: int) -> None:
        """Linear decay, stepped before each update (spec §4): the last update's rate is 0."""
        self.step = step
        for group, base in zip(self.optimizer.param_groups, self.bases):
            group["lr"] = losses.decayed_lr(base, step, self.steps)

    @property
    def progress(self) -> float:
        return self.step / self.steps


def _denoise(host: Host, sample_latents: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, cond):
    a = host.alphas_cumprod.float()[t].to(host.device).view(-1, 1, 1, 1)
    x_t = diffusion.noisy(sample_latents, eps, a)
    with host.autocast():
        pred = host.predict(x_t, t, cond).float()
    return x_t, pred, a


def _preview(host: Host, x_t, pred, a):
    def show() -> torch.Tensor:
        with torch.no_grad():
            return host.preview_image(diffusion.x0_from(host.prediction, x_t[:1], pred[:1].detach(), a[:1]))[0]
    return show


def _composed_preview(host: Host, sample: Sample, injections: dict, store) -> Callable[[], torch.Tensor]:
    """What the composed prompt makes of a composed sample's latent noised to t = 600 (fixed noise): the preview of
    phase 2, where the subject meets the style."""
    def show() -> torch.Tensor:
        with torch.no_grad():
            store.active = False
            z0 = sample.latent[None].to(host.device)
            eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(0)).to(host.device)
            t = torch.tensor([600])
            x_t, pred, a = _denoise(host, z0, t, eps, host.encode_prompts([sample.prompt], injections))
            return host.preview_image(diffusion.x0_from(host.prediction, x_t, pred, a))[0]
    return show


def phase_one_loss(host: Host, samples: Sequence[Sample], tokens: dict[str, torch.Tensor], words: tuple[str, str],
                   key: str, phase: _Phase, config: MagiCaptureConfig):
    """Textual inversion of both tokens: masked reconstruction, style samples weighted early (spec §4, §6.1-6.2)."""
    usable = [s for s in samples if s.kind != "both"]

    def loss_fn(gen: torch.Generator) -> StepResult:
        sample = usable[int(torch.randint(len(usable), (), generator=gen))]
        z0 = sample.latent[None].to(host.device)
        t = losses.sample_timesteps(1, config.ti_timesteps, gen)
        eps = torch.randn(z0.shape, generator=gen).to(host.device)
        cond = host.encode_prompts([sample.prompt], {words[0]: {key: tokens["subject"]}, words[1]: {key: tokens["style"]}})
        x_t, pred, a = _denoise(host, z0, t, eps, cond)
        rec = losses.masked_mse(pred, diffusion.target(host.prediction, z0, eps, a), sample.mask[None])
        return StepResult(rec * losses.style_weight(sample.kind, phase.progress, config.style_weight),
                          _preview(host, x_t, pred, a))

    return loss_fn


def phase_two_loss(host: Host, samples: Sequence[Sample], tokens: dict[str, torch.Tensor], words: tuple[str, str],
                   key: str, phase: _Phase, config: MagiCaptureConfig, tools: FaceTools, skips: list[int], store):
    """LoRA + continued inversion: reconstruction, attention refocusing on pass A, identity on pass B at another
    timestep (spec §5, §6). ``skips`` counts [identity terms skipped, identity terms due]; ``store`` is the open
    capture of the refocused layers (open for the whole run: a checkpointed backward pass recomputes through it)."""
    encoder = host.encoders[key]
    composed = next((s for s in samples if s.kind == "both"), None)

    def loss_fn(gen: torch.Generator) -> StepResult:
        sample = samples[int(torch.randint(len(samples), (), generator=gen))]
        z0 = sample.latent[None].to(host.device)
        t_a, t_b = losses.sample_timesteps(2, config.lora_timesteps, gen).chunk(2)
        eps = torch.randn(z0.shape, generator=gen).to(host.device)
        cond = host.encode_prompts([sample.prompt], {words[0]: {key: tokens["subject"]}, words[1]: {key: tokens["style"]}})
        store.clear()
        store.active = True
        x_t, pred, a = _denoise(host, z0, t_a, eps, cond)
        maps = store.stacked()[0]
        store.active = False
        mask = sample.mask.to(host.device)
        loss = losses.style_weight(sample.kind, phase.progress, config.style_weight) * losses.masked_mse(
            pred, diffusion.target(host.prediction, z0, eps, a), mask[None])
        regions = losses.refocus_targets(sample.kind, mask[0])
        named = {"subject": words[0], "style": words[1]}
        positions = {k: p for k, p in ((token, word_positions(encoder, sample.prompt, list(named.values())).get(word))
                                       for token, word in named.items()) if p is not None}
        loss = loss + config.attention_weight * losses.refocus_loss(maps, positions, regions)
        if sample.reference is not None and config.id_weight > 0:
            skips[1] += 1
            x_tb, pred_b, a_b = _denoise(host, z0, t_b, eps, cond)
            pixels = host.decode_differentiable(diffusion.x0_from(host.prediction, x_tb, pred_b, a_b))
            identity, skipped = identity_term(pixels, sample.reference[None].to(host.device), tools.detect,
                                              tools.recognizer)
            skips[0] += skipped
            if identity is not None:
                loss = loss + config.id_weight * identity
        if composed is None:
            return StepResult(loss, _preview(host, x_t, pred, a))
        return StepResult(loss, _composed_preview(
            host, composed, {words[0]: {key: tokens["subject"]}, words[1]: {key: tokens["style"]}}, store))

    return loss_fn


# --- the run -------------------------------------------------------------------------------------------------------

@dataclass
class MagiCaptureResult:
    lora_path: object
    subject: Identity
    style: Identity
    subject_path: object
    style_path: object
    reused: bool


def check_settings(subject_name: str, style_name: str, config: MagiCaptureConfig) -> tuple[str, str]:
    names = safe_name(subject_name), safe_name(style_name)
    if names[0] == names[1]:
        raise BadInputError("The subject and the style need different names (each becomes its own embedding file).")
    for what, value in (("ti_steps", config.ti_steps), ("lora_steps", config.lora_steps), ("rank", config.rank)):
        if not 1 <= value <= 100_000:
            raise BadInputError(f"{what} {value} must be from 1 to 100000 (paper: 1200 and 1500 steps, rank 4).")
    for what, value in (("ti_lr", config.ti_lr), ("unet_lr", config.unet_lr), ("text_lr", config.text_lr),
                        ("token_lr", config.token_lr)):
        if not 0 < value < 1e3:
            raise BadInputError(f"The learning rate {what} = {value} is not usable; give a positive value below 1000.")
    if config.resolution != 0 and not (64 <= config.resolution <= 4096 and config.resolution % 64 == 0):
        raise BadInputError(f"resolution {config.resolution} must be a multiple of 64 from 64 to 4096 (0: the model's "
                            "own).")
    if config.likeness_every < -1 or config.likeness_patience < 0:
        raise BadInputError("likeness_every must be -1 (auto), 0 (off) or a number of steps; likeness_patience 0 "
                            "or a number of evaluations.")
    return names


def train_magicapture(host: Host, subjects: Sequence[torch.Tensor], styles: Sequence[torch.Tensor], tools: FaceTools,
                      subject_name: str, style_name: str, config: MagiCaptureConfig = MagiCaptureConfig(),
                      resume: bool = False, overwrite: bool = False, restart: bool = False) -> MagiCaptureResult:
    """Train a subject and a style together; write ``<loras>/<subject>_<style>.safetensors`` (kohya) and the two
    embeddings. Queued again with the same photos, settings and checkpoint it loads the files instead."""
    names = check_settings(subject_name, style_name, config)
    requested = config.likeness_every
    config = replace(config, likeness_every=resolve_every(requested, config.lora_steps, host.device, True))
    if host.family != "sd1":
        raise WrongModelFamilyError("MagiCapture trains on SD1.x checkpoints (the paper and its code are SD1.5 "
                                    "only); load an SD1.5-family checkpoint.")
    if not subjects:
        raise BadInputError("No subject photos: connect a few photos of the person.")
    if not styles:
        raise BadInputError("No style photos: connect a few portraits in the style to learn (passport, studio ...).")
    if tools.recognizer.module is None:
        raise BadInputError("MagiCapture's identity loss needs the torch face recognizer (an arcface_torch .pth via "
                            "FaceRecognizerLoader); the face pack's ONNX recognizer has no gradients.")
    if config.resolution == 0:
        config = replace(config, resolution=default_resolution(host))
    size = config.resolution
    key = next(iter(host.encoders))
    words = tuple(f"<{n}>" for n in names)
    run_name = f"magicapture.{names[0]}+{names[1]}"
    lora_target = host.loras_dir() / f"{names[0]}_{names[1]}.safetensors"
    targets = [host.embeddings_dir() / f"{n}.safetensors" for n in names]
    run_config = {**without_likeness(asdict(config)), "method": "magicapture", "family": host.family,
                  "names": list(names),
                  **likeness_settings(requested, config.likeness_every, config.likeness_patience, config.keep_best,
                                      tools.signature),
                  "subjects": images_digest(torch.stack([square_photo(p, size) for p in subjects])),
                  "styles": images_digest(torch.stack([square_photo(p, size) for p in styles])),
                  "recognizer": tools.recognizer.name, "face_tools": tools.signature}
    run_key = result_key(run_config, host.fingerprint())
    found = [reusable(t, run_key) for t in targets]
    if all(f is not None for f in found) and _lora_key(lora_target) == run_key:
        host.sink.log(f"{names[0]} + {names[1]}: already trained with these photos, settings and checkpoint; loaded "
                      "the saved files, not retrained.")
        return MagiCaptureResult(lora_target, found[0], found[1], targets[0], targets[1], True)
    states = [TrainingState(host.state_dir(), f"{run_name}.phase{i}", run_config) for i in (1, 2)]
    who = f"{names[0]} + {names[1]}"
    resuming = continues_saved(states, who, resume, restart)
    refuse_existing([lora_target, *targets], overwrite or resuming)
    if restart:
        discard_saved(states, who, host.sink.log)
    for folder in (host.embeddings_dir(), host.loras_dir(), host.state_dir()):
        ensure_writable_folder(folder)
    gen = torch.Generator().manual_seed(config.seed)
    host.sink.check_cancel()
    samples = prepare_samples(host, subjects, styles, tools, words, size, gen)
    total = config.ti_steps + config.lora_steps
    person = host.encoders[key].token_rows(host.encoders[key].tokenize("person")[:1])
    try:
        tokens = {"subject": person.clone(), "style": losses.style_token_init(host.encoders[key].width, gen)}
        if not states[1].exists():
            tokens = _phase_one(host, samples, tokens, words, key, config, states[0], total)
        references = None if not config.likeness_every else np.stack([
            reference_embedding(tools, im, _one_face(tools, im, f"subject photo {i + 1}")).numpy()
            for i, im in enumerate(square_photo(p, size) for p in subjects)])
        tokens, adapters, likeness = _phase_two(host, samples, tokens, words, key, config, tools, states[1], total, gen,
                                                references)
    except BaseException as exc:
        if not isinstance(exc, AnybodyError) and is_out_of_memory(exc):
            raise out_of_memory("while preparing training") from exc
        raise
    meta = {RESULT_KEY: run_key, "anybody.steps": f"{config.ti_steps}+{config.lora_steps}",
            "anybody.seed": str(config.seed), "anybody.resolution": str(size)}
    if likeness:
        meta.update(likeness)
    lora_path = lora.save_kohya(lora_target, lora.kohya_tensors(adapters["unet"], adapters["te"]), lora.kohya_metadata(
        config.rank, "sd_v1", lora_target.stem, {**meta, "anybody.method": "magicapture", "anybody.words":
                                                 " ".join(names), "anybody.strength_unet": str(STRENGTHS["unet"]),
                                                 "anybody.strength_text": str(STRENGTHS["text"])}), overwrite=True)
    identities = [Identity(n, host.family, {key: tokens[k].detach().cpu()}, "magicapture", {**meta, "anybody.lora":
                                                                                          lora_path.name})
                  for n, k in zip(names, ("subject", "style"))]
    paths = [i.save(t, overwrite=True) for i, t in zip(identities, targets)]
    for s in states:
        s.clear()
    host.sink.log(f"Saved {lora_path} and {', '.join(map(str, paths))}. Load the LoRA at UNet {STRENGTHS['unet']} / "
                  f"text {STRENGTHS['text']} and write '{losses.INFERENCE_PROMPT.format(S=words[0], T=words[1])}'.")
    return MagiCaptureResult(lora_path, identities[0], identities[1], paths[0], paths[1], False)


def _lora_key(path) -> str | None:
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get(RESULT_KEY)
    except Exception:
        return None


def _phase_one(host, samples, tokens, words, key, config, state, total):
    """Phase 1 on the host: the two token vectors only; their norms pulled toward 0.4 after each update."""
    with host.training(config.resolution ** 2, config.gradient_checkpointing):
        # copies made here, outside the caller's inference mode (a ComfyUI node's tensors cannot train)
        params = {k: v.to(host.device).clone().requires_grad_(True) for k, v in tokens.items()}
        optimizer = torch.optim.AdamW(list(params.values()), lr=config.ti_lr, weight_decay=0.0)
        phase = _Phase(optimizer, [config.ti_lr], config.ti_steps)
        start = state.load(params, optimizer) if state.exists() else 0

        def pull_norms() -> None:
            with torch.no_grad():
                for p in params.values():
                    p.copy_(losses.pull_norms(p, optimizer.param_groups[0]["lr"]))

        scale = LossScale() if host.compute_dtype == torch.float16 else None
        if scale is not None:
            scale.restore(state.extra.get("loss_scale"))
        host.sink.log(f"MagiCapture phase 1 (textual inversion): {len(samples)} samples, {config.ti_steps} steps"
                      + (f", resuming at step {start}" if start else ""))
        Trainer(params, optimizer, phase_one_loss(host, owned(samples), params, words, key, phase, config),
                PhaseSink(host.sink, 0, total), config.ti_steps, config.seed, 1, config.save_every,
                config.preview_every, state, after_step=pull_norms, loss_scale=scale,
                before_step=phase.before_step, sparse_grads=True,
                curve_title="phase 1 loss (textual inversion)").run(start)
        return {k: v.detach().cpu() for k, v in params.items()}


def _phase_two(host, samples, tokens, words, key, config, tools, state, total, gen, references):
    """Phase 2: LoRA on UNet and text attention, continued inversion, refocusing and identity losses. Returns the
    tokens, the adapters and the likeness metadata (empty without the curve)."""
    adapters = lora.for_host(host, lora.MAGICAPTURE_TARGETS, config.rank, 1.0, gen)
    tools = replace(tools, recognizer=tools.recognizer.for_training(host.device))
    skips = [0, 0]
    with host.training(config.resolution ** 2 * 2, config.gradient_checkpointing, adapters=adapters):
        params = {f"token.{k}": v.to(host.device).clone().requires_grad_(True) for k, v in tokens.items()}
        groups = [("unet", config.unet_lr), ("te", config.text_lr)]
        for tree, _ in groups:
            params.update({f"{tree}.{n}": p for n, p in adapters[tree].named_parameters()})
        optimizer = torch.optim.AdamW(
            [{"params": [p for n, p in params.items() if n.startswith(f"{tree}.")], "lr": lr} for tree, lr in groups]
            + [{"params": [params["token.subject"], params["token.style"]], "lr": config.token_lr}],
            weight_decay=config.lora_weight_decay)
        phase = _Phase(optimizer, [config.unet_lr, config.text_lr, config.token_lr], config.lora_steps)
        token_views = {"subject": params["token.subject"], "style": params["token.style"]}
        tracker = None
        if config.likeness_every:
            injections = {words[0]: {key: token_views["subject"]}, words[1]: {key: token_views["style"]}}
            prompts = (losses.INFERENCE_PROMPT.format(S="{word}", T=words[1]), "a photo of {word} person")
            probe = identity_probe(host, injections, words[0], _faces_in(tools), references, samples[0].latent.shape,
                                   prompts=prompts)
            tracker = LikenessTracker(config.likeness_every, _at_inference_strengths(adapters, probe), params,
                                      config.likeness_patience)
        start = state.load(params, optimizer, tracker.buffers() if tracker else None) if state.exists() else 0
        scale = LossScale() if host.compute_dtype == torch.float16 else None
        if scale is not None:
            scale.restore(state.extra.get("loss_scale"))
        host.sink.log(f"MagiCapture phase 2 (LoRA rank {config.rank} + continued inversion): {config.lora_steps} steps"
                      + (f", resuming at step {start}" if start else ""))
        with host.cross_attention_maps(config.attention_level) as store:
            trainer = Trainer(params, optimizer,
                    phase_two_loss(host, owned(samples), token_views, words, key, phase, config, tools, skips, store),
                    PhaseSink(host.sink, config.ti_steps, total), config.lora_steps, config.seed + 1, 1,
                    config.save_every, config.preview_every, state, loss_scale=scale, before_step=phase.before_step,
                    max_grad_norm=config.max_grad_norm, sparse_grads=True,
                    curve_title="phase 2 loss (LoRA + inversion)", likeness=tracker)
            trainer.run(start)
        note = keep_best(params, tracker, config.keep_best)
        if note:
            host.sink.log(note)
    if skips[1]:
        host.sink.log(losses.log_skip_rate(skips[0], skips[1]))
    likeness = {} if tracker is None else likeness_metadata(tracker, trainer.stopped_early_at)
    return {k: v.detach().cpu() for k, v in token_views.items()}, adapters, likeness


def _faces_in(tools: FaceTools):
    """The probe's face embeddings with MagiCapture's own detector and torch recognizer (ArcFace 112 crops)."""
    def faces_in(rgb: np.ndarray) -> np.ndarray:
        faces = tools.detect(rgb)
        if not faces:
            return np.zeros((0, 512), np.float32)
        image = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
        return np.stack([reference_embedding(tools, image, face).numpy() for face in faces])

    return faces_in


def _at_inference_strengths(adapters, probe):
    """The probe renders what users will sample: the LoRA at the paper's UNet 0.6 / text 0.9, not training's 1.0."""
    def at_strengths():
        saved = []
        for tree, strength in (("unet", STRENGTHS["unet"]), ("te", STRENGTHS["text"])):
            for module in adapters[tree].modules():
                if isinstance(module, lora.LoRA):
                    saved.append((module, module.scale))
                    module.scale = module.scale * strength
        try:
            return probe()
        finally:
            for module, scale in saved:
                module.scale = scale

    return at_strengths

