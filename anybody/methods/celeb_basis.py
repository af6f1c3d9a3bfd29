"""Celeb Basis (Yuan et al., NeurIPS 2023): a person as two coefficient vectors on a basis of celebrity names.

Spec: shared/methods/celeb_basis.md. A frozen face recognizer's feature of an aligned photo goes through a small
trainable map (one linear layer and a LeakyReLU per text encoder) to two unit coefficient vectors on the
checkpoint's Celeb Basis (``celeb_space``); those give the two token vectors that stand for the placeholder word.
Only the map trains, through the host's frozen text encoder and UNet. Each person keeps an EMA of their
coefficients, and that EMA is what becomes their embedding file. Several people train jointly with one shared map.

Beyond the paper: SD2.x (one basis of the 1024-wide table) and SDXL (a basis per text encoder and one head each on
the shared face feature) are supported and marked experimental; neither was trained or evaluated by the authors.
"""
from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..assets import asset_path, read_lines
from ..errors import AnybodyError, BadInputError
from ..face.recognizer import FaceRecognizer
from ..files import ensure_writable_folder, safe_name
from ..host.base import Host
from ..identity import Identity
from ..text.names import names_digest, read_name_file
from ..train.augment import color_jitter, paste_on_black
from ..train.diffusion import denoising_loss
from ..train.engine import StepResult, Trainer, is_out_of_memory, out_of_memory
from ..train.loss_scale import LossScale
from ..train.state import TrainingState
from .celeb_space import N_COMPONENTS, N_TOKENS, ROW_MODES, CelebBasis, load_or_build, tensor_digest
from ..train.likeness import LikenessTracker
from .likeness import (can_score, embedder_of, identity_probe, keep_best, likeness_metadata, likeness_settings,
                       mean_probe, reference_faces, resolve_every, without_likeness)
from .runs import (RESULT_KEY, TrainedIdentity, continues_saved, default_resolution, discard_saved, images_digest,
                   refuse_existing, result_key, reusable)

TEMPLATES = asset_path("ti_templates.txt")
FEATURE_DIM = 512
#: the recognizer's input warp of the FFHQ-aligned crop (spec §5.1): output -> input, normalised coordinates
FR_THETA = torch.tensor([[1.07695457, -0.03625215, -1.56352194 / 512],
                         [0.03625215, 1.07695457, -5.32134629 / 512]], dtype=torch.float64)
EXPERIMENTAL = {"sd2": "SD2.x is beyond the paper (trained and evaluated on SD1.4 only): experimental",
                "sdxl": "SDXL (a basis and a head per text encoder) is beyond the paper: experimental"}


@dataclass(frozen=True)
class CelebBasisConfig:
    """Defaults are the official recipe (spec §6): 400 steps per person, batch 2, AdamW lr 0.01 (5e-3 scaled by the
    batch) wd 0.01, EMA 0.99, 512 basis directions per token position."""

    steps: int = 400  # per person: a joint run of N people trains N x steps
    lr: float = 0.01
    batch: int = 2
    weight_decay: float = 0.01
    ema_decay: float = 0.99
    components: int = N_COMPONENTS
    rows: str = "as_built"
    views: int = 64  # augmented views per person, encoded once before training
    flip_p: float = 0.5
    min_scale: float = 0.1
    resolution: int = 0
    seed: int = 23
    save_every: int = 100
    preview_every: int = 20
    gradient_checkpointing: bool = False
    #: beyond the paper: the likeness curve (see cross_init.CrossInitConfig); -1 = auto
    likeness_every: int = 0
    likeness_patience: int = 0
    keep_best: bool = True


@dataclass
class Person:
    """One identity to learn: its file name and its aligned face crops (``[S,S,3]`` float 0..1)."""

    name: str
    faces: list[torch.Tensor]


# --- the face branch (spec §5.1) -----------------------------------------------------------------------------

def recognizer_view(crops: torch.Tensor) -> torch.Tensor:
    """The 112x112 recognizer input of FFHQ-aligned crops ``[B,3,S,S]`` in [-1, 1]: the official fixed affine warp
    (bilinear, zero padding, corners aligned) then a bilinear resize."""
    theta = FR_THETA.to(crops).expand(len(crops), 2, 3)
    grid = F.affine_grid(theta, list(crops.shape), align_corners=True)
    warped = F.grid_sample(crops, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return F.interpolate(warped, size=(112, 112), mode="bilinear", align_corners=True)


@dataclass
class TrainingViews:
    """Augmented views of every person, prepared before the UNet loads: which person, the recognizer feature of
    the (flipped, colour-jittered) crop, and the latent posterior of that crop pasted small onto black."""

    owner: torch.Tensor  # [V] person index, views sorted by person
    features: torch.Tensor  # [V, 512]
    mean: torch.Tensor  # [V, C, h, w]
    std: torch.Tensor


def make_views(host: Host, people: Sequence[Person], recognizer: FaceRecognizer, config: CelebBasisConfig,
               chunk: int = 8) -> TrainingViews:
    """``config.views`` augmentations per person (spec §5.1, §5.3), drawn from the run's seed.

    The official code augments and VAE-encodes on every step; encoding a fixed set up front keeps the VAE and the
    recognizer out of memory while the UNet trains (as the latent cache of Cross-Init and ComfyUI's trainer do).
    """
    gen = torch.Generator().manual_seed(config.seed)
    owners, features, means, stds = [], [], [], []
    module = recognizer.module
    if module is not None:
        module.to(host.device)
    try:
        for person_index, person in enumerate(people):
            for start in range(0, config.views, chunk):
                host.sink.check_cancel()
                crops, targets = [], []
                for v in range(start, min(start + chunk, config.views)):
                    crop = person.faces[v % len(person.faces)].permute(2, 0, 1).float()
                    if torch.rand((), generator=gen) < config.flip_p:
                        crop = crop.flip(2)
                    crop = color_jitter(crop, gen)
                    crops.append(crop)
                    targets.append(paste_on_black(crop, gen, config.min_scale))
                features.append(recognizer(recognizer_view(_at_512(torch.stack(crops)) * 2 - 1)))
                mean, std = host.encode_images(torch.stack(targets).permute(0, 2, 3, 1))
                means.append(mean.float().cpu())
                stds.append(std.float().cpu())
                owners += [person_index] * len(crops)
    finally:
        if module is not None:
            module.to("cpu")
    return TrainingViews(torch.tensor(owners), torch.cat(features), torch.cat(means), torch.cat(stds))


# --- the coefficient map (spec §5.2) ---------------------------------------------------------------------------

def new_heads(keys: Sequence[str], components: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """One linear head per text encoder: ``W [2K, 512] ~ N(0, 1)`` (no fan-in scaling, as the official code), b = 0."""
    params = {}
    for key in keys:
        params[f"{key}.weight"] = torch.randn(N_TOKENS * components, FEATURE_DIM, generator=gen)
        params[f"{key}.bias"] = torch.zeros(N_TOKENS * components)
    return params


def unit_coefficients(params, key: str, features: torch.Tensor) -> torch.Tensor:
    """``alpha [B, 2, K]``: LeakyReLU(0.2) of the head, each K-chunk scaled to unit length."""
    hidden = F.leaky_relu(F.linear(features, params[f"{key}.weight"], params[f"{key}.bias"]), 0.2)
    hidden = hidden.view(len(features), N_TOKENS, -1)
    return hidden / hidden.norm(dim=-1, keepdim=True).clamp_min(1e-12)


COUNTS = "samples"  # the EMA buffer that counts each person's updates


def new_ema(keys: Sequence[str], people: int, components: int) -> dict[str, torch.Tensor]:
    """Per text encoder, each person's coefficient EMA ``[people, 2, K]`` from zero, and their update counts."""
    ema = {k: torch.zeros(people, N_TOKENS, components) for k in keys}
    ema[COUNTS] = torch.zeros(people)
    return ema


def ema_update(ema: dict[str, torch.Tensor], who: torch.Tensor, alpha: dict[str, torch.Tensor], decay: float) -> None:
    """``c_person <- decay * c_person + (1 - decay) * alpha``, once per sample, in batch order (spec §6)."""
    for b, person in enumerate(who.tolist()):
        for key, a in alpha.items():
            ema[key][person].mul_(decay).add_(a[b].to(ema[key]), alpha=1 - decay)
        ema[COUNTS][person] += 1


def ema_coefficients(ema: dict[str, torch.Tensor], person: int, decay: float, name: str) -> dict[str, torch.Tensor]:
    """The person's EMA divided by ``1 - decay^n`` (n: their updates): the decay-weighted mean of the coefficients
    they were trained with. The official EMA starts from a shared random vector instead; after the paper's ~800
    updates 0.03 % of it remains, but after a short run it would dominate the exported identity."""
    updates = int(ema[COUNTS][person])
    if updates == 0:
        raise BadInputError(f"'{name}' was never drawn in this short run, so nothing was learned for them. Raise "
                            "'steps' (the paper uses 400 per person) and run again with saved_progress 'resume' "
                            "(CLI: --resume): the run continues where it stopped.")
    return {k: v[person] / (1 - decay ** updates) for k, v in ema.items() if k != COUNTS}


def celeb_basis_loss(host: Host, params: dict[str, torch.Tensor], basis: CelebBasis, views: TrainingViews,
                     templates: Sequence[str], config: CelebBasisConfig, seen: dict):
    """``loss_fn(generator) -> StepResult`` of one step: a batch of views (person uniform, then one of their
    views), their coefficients -> token vectors -> template prompts "… face of <word> person" -> denoising loss.

    Call it inside ``host.training()``. ``seen`` collects each micro-batch's (persons, coefficients) for the EMA, keyed by the generator's seed so a
    recomputed step (loss-scale overflow) replaces its entry instead of adding a second one.
    """
    device = host.device
    # copies made here, inside the host's training context: hosts that run nodes under inference mode made the
    # originals as inference tensors, which autograd refuses to save for the backward pass
    features, mean, std = (t.to(device).clone() for t in (views.features, views.mean, views.std))
    on_device = CelebBasis({k: v.to(device).clone() for k, v in basis.tensors.items()}, basis.table_digests,
                           basis.names_digest, basis.mode)
    n_people = int(views.owner.max()) + 1
    words = [f"<celeb_basis_sample_{b}>" for b in range(config.batch)]

    def loss_fn(gen: torch.Generator) -> StepResult:
        who = torch.randint(n_people, (config.batch,), generator=gen)
        rows = who * config.views + torch.randint(config.views, (config.batch,), generator=gen)
        rows_dev = rows.to(device)
        z0 = mean[rows_dev] + std[rows_dev] * torch.randn(mean[rows_dev].shape, generator=gen).to(device)
        alpha = {key: unit_coefficients(params, key, features[rows_dev]) for key in basis.tensors}
        vectors = on_device.vectors(alpha)

        def encode(gen: torch.Generator):
            picks = torch.randint(len(templates), (config.batch,), generator=gen).tolist()
            prompts = [templates[j].format(f"face of {words[b]} person") for b, j in enumerate(picks)]
            return host.encode_prompts(prompts, {words[b]: {k: v[b] for k, v in vectors.items()}
                                                 for b in range(config.batch)})

        seen[gen.initial_seed()] = (who, {k: a.detach().float().cpu() for k, a in alpha.items()})
        return denoising_loss(host, z0, encode, gen)

    return loss_fn


# --- the run ---------------------------------------------------------------------------------------------------

def check_settings(names: Sequence[str], config: CelebBasisConfig,
                   names_file: str | Path | None = None) -> tuple[list[str], list[str]]:
    """Everything that can be wrong before a model loads. Returns the checked person names and the name list."""
    if not names:
        raise BadInputError("Give at least one name (one per person to learn).")
    checked = [safe_name(n) for n in names]
    if len(set(checked)) != len(checked):
        raise BadInputError(f"The names {', '.join(checked)} repeat; each person needs a name of their own.")
    if len(checked) > 10:
        raise BadInputError(f"{len(checked)} people in one run; the method trains at most 10 jointly (its official "
                            "runs use 1-10). Split them into several runs.")
    for what, value, low, top in (("steps", config.steps, 1, 100_000), ("batch", config.batch, 1, 64),
                                  ("views", config.views, 1, 4096), ("components", config.components, 1, 4096)):
        if not low <= value <= top:
            raise BadInputError(f"{what} {value} must be from {low} to {top} (paper: steps 400 per person, batch 2, "
                                f"{N_COMPONENTS} components).")
    if config.save_every < 0 or config.preview_every < 0:
        raise BadInputError("save_every and preview_every must be 0 (off) or a positive number of steps.")
    if config.likeness_every < -1 or config.likeness_patience < 0:
        raise BadInputError("likeness_every must be -1 (auto), 0 (off) or a number of steps; likeness_patience 0 "
                            "or a number of evaluations.")
    if not 0 < config.lr < 1e3:  # also NaN and inf
        raise BadInputError(f"The learning rate {config.lr} is not usable; give a positive value below 1000 (the "
                            f"paper's is {CelebBasisConfig.lr}).")
    if not 0 <= config.ema_decay < 1:
        raise BadInputError(f"ema_decay {config.ema_decay} must be in [0, 1) (paper: 0.99).")
    if config.rows not in ROW_MODES:
        raise BadInputError(f"Unknown basis row mode {config.rows!r}; choose one of {', '.join(ROW_MODES)}.")
    if config.resolution != 0 and not (64 <= config.resolution <= 4096 and config.resolution % 64 == 0):
        raise BadInputError(f"resolution {config.resolution} must be a multiple of 64 from 64 to 4096 (0: the model's "
                            "own).")
    return checked, read_name_file(names_file)


def group_photos(names_text: str, count: int) -> list[tuple[str, list[int]]]:
    """``"alice, bob"`` -> [(name, photo indices)]: one name for all photos, or one name per photo (a name repeated
    for several photos of one person), in order of first appearance."""
    names = [n.strip() for n in names_text.replace("\n", ",").split(",") if n.strip()]
    if not names:
        raise BadInputError("Give a name for the person (or one name per photo for several people).")
    if len(names) == 1:
        return [(names[0], list(range(count)))]
    if len(names) != count:
        raise BadInputError(f"{len(names)} names for {count} photos. Give one name for all photos (one person), or "
                            "one name per photo in the batch's order, repeating a name for each photo of the same "
                            "person (e.g. 'alice, alice, bob').")
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        groups.setdefault(name, []).append(index)
    return list(groups.items())


def people_from_photos(face_models, images: Sequence, names_text: str, size: int,
                       file_names: Sequence[str] | None = None, log=None) -> list[Person]:
    """Photos and the names text of the node (``group_photos``) -> people with FFHQ-aligned face crops of ``size`` px;
    a photo without a face is an error naming it and its person."""
    from ..face.training_photos import ffhq_faces

    groups = group_photos(names_text, len(images))
    owner = {i: name for name, indices in groups for i in indices}
    labels = [owner[i] + (f", {file_names[i]}" if file_names else "") for i in range(len(images))]
    crops = ffhq_faces(face_models, list(images), size, labels, log)
    return [Person(name, [crops[i] for i in indices]) for name, indices in groups]


def _coefficients_text(coefficients: torch.Tensor) -> str:
    """``[2, K]`` fp32 as base64 of its little-endian bytes: exact, and a plain string for safetensors metadata."""
    return base64.b64encode(coefficients.float().contiguous().numpy().astype("<f4").tobytes()).decode()


def coefficients_from(metadata: dict, key: str) -> torch.Tensor:
    """The saved EMA coefficients ``[2, K]`` of a Celeb Basis file, for checks and re-projection."""
    raw = base64.b64decode(metadata[f"anybody.celeb_basis.{key}.coefficients"])
    return torch.from_numpy(np.frombuffer(raw, dtype="<f4").copy()).view(N_TOKENS, -1)


def recognizer_digest(recognizer: FaceRecognizer) -> str:
    if recognizer.module is not None:
        return tensor_digest(torch.cat([p.detach().float().flatten()[:4096] for p in recognizer.module.parameters()]))
    return recognizer.name


def train_celeb_basis(host: Host, people: Sequence[Person], recognizer: FaceRecognizer,
                      config: CelebBasisConfig = CelebBasisConfig(), names_file: str | Path | None = None,
                      resume: bool = False, overwrite: bool = False, restart: bool = False,
                      face_models=None) -> list[TrainedIdentity]:
    """Learn every person of ``people`` jointly on ``host``; write ``<name>.safetensors`` for each into its embeddings
    folder (stock format: two vectors per text encoder).

    The faces must be FFHQ-aligned crops (``face.training_photos.ffhq_faces``). Run again with the same faces,
    settings and checkpoint (a re-queued graph), it loads the files instead of training. Progress of a stopped run
    is continued with ``resume`` or discarded with ``restart``, never silently.

    ``face_models`` scores the likeness curve's renders (``config.likeness_every``) against each person's crops.
    """
    names, celeb_names = check_settings([p.name for p in people], config, names_file)
    requested = config.likeness_every
    config = replace(config, likeness_every=resolve_every(requested, config.steps * len(people), host.device,
                                                          can_score(face_models), config.batch, len(people)))
    if config.likeness_every and not can_score(face_models):
        raise BadInputError("The likeness curve (likeness_every > 0) needs a face model that finds and recognises "
                            "faces: connect FaceModelLoader, or set likeness_every to 0.")
    for person in people:
        if not person.faces:
            raise BadInputError(f"No face photos were given for '{person.name}'.")
    if config.resolution == 0:
        config = replace(config, resolution=default_resolution(host))
    size = config.resolution
    faces = [[_square(f, size) for f in person.faces] for person in people]
    people = [Person(n, f) for n, f in zip(names, faces)]
    targets = [host.embeddings_dir() / f"{n}.safetensors" for n in names]
    run_config = {**without_likeness(asdict(config)), "method": "celeb_basis", "family": host.family,
                  "people": names, "images": [images_digest(torch.stack(f)) for f in faces],
                  "names": names_digest(celeb_names), "recognizer": recognizer_digest(recognizer),
                  **likeness_settings(requested, config.likeness_every, config.likeness_patience, config.keep_best,
                                      face_models.describe() if config.likeness_every else "")}
    key = result_key(run_config, host.fingerprint())
    found = [reusable(t, key) for t in targets]
    if all(identity is not None for identity in found):
        host.sink.log(f"{', '.join(names)}: already trained with these photos, settings and checkpoint; loaded the "
                      "saved files, not retrained.")
        return [TrainedIdentity(i, t, True) for i, t in zip(found, targets)]
    state = TrainingState(host.state_dir(), run_name(names, key), run_config)
    resuming = continues_saved([state], ", ".join(names), resume, restart)
    refuse_existing(targets, overwrite or resuming)
    if restart:
        discard_saved([state], ", ".join(names), host.sink.log)
    for folder in (host.embeddings_dir(), host.state_dir()):
        ensure_writable_folder(folder)
    if host.family in EXPERIMENTAL:
        host.sink.log(f"Warning: {EXPERIMENTAL[host.family]}.")

    references = ([reference_faces(face_models, p.faces) for p in people] if config.likeness_every else None)
    basis = load_or_build(host.encoders, celeb_names, host.state_dir() / "celeb_basis", config.components,
                          config.rows, host.sink.log)
    host.sink.check_cancel()
    try:
        views = make_views(host, people, recognizer, config)
    except BaseException as exc:
        if not isinstance(exc, AnybodyError) and is_out_of_memory(exc):
            raise out_of_memory("while preparing the training views (VAE and recognizer)") from exc
        raise
    templates = read_lines(TEMPLATES)
    total = config.steps * len(people)
    try:
        with host.training(config.batch * size * size, config.gradient_checkpointing):
            gen = torch.Generator().manual_seed(config.seed)
            params = {k: v.to(host.device).requires_grad_(True)
                      for k, v in new_heads(list(basis.tensors), config.components, gen).items()}
            ema = new_ema(list(basis.tensors), len(people), config.components)
            optimizer = torch.optim.AdamW(list(params.values()), lr=config.lr, betas=(0.9, 0.999), eps=1e-8,
                                          weight_decay=config.weight_decay)
            tracker = None
            if config.likeness_every:
                probes = [identity_probe(host, _current_identity(ema, basis, i, name, config.ema_decay, host.device),
                                         f"<{name}>", embedder_of(face_models), references[i], views.mean.shape[1:])
                          for i, name in enumerate(names)]
                tracker = LikenessTracker(config.likeness_every, mean_probe(probes), ema, config.likeness_patience)
            buffers = {**ema, **(tracker.buffers() if tracker else {})}
            start = state.load(params, optimizer, buffers) if resuming else 0
            scale = LossScale() if host.compute_dtype == torch.float16 else None
            if scale is not None:
                scale.restore(state.extra.get("loss_scale"))
            host.sink.log(f"Celeb Basis {', '.join(names)}: {config.views} views each at {size} px, {total} steps, lr "
                          f"{config.lr}, batch {config.batch}, recognizer {recognizer.describe()}, computing in "
                          f"{str(host.compute_dtype).replace('torch.', '')}" + (" with loss scaling" if scale else "")
                          + (f", resuming at step {start}" if start else ""))
            seen: dict = {}

            def update_ema() -> None:
                for who, alpha in seen.values():
                    ema_update(ema, who, alpha, config.ema_decay)
                seen.clear()

            loss_fn = celeb_basis_loss(host, params, basis, views, templates, config, seen)
            trainer = Trainer(params, optimizer, loss_fn, host.sink, total, config.seed, 1, config.save_every,
                              config.preview_every, state, after_step=update_ema, loss_scale=scale, buffers=ema,
                              likeness=tracker)
            trainer.run(start)
            note = keep_best(ema, tracker, config.keep_best)
            if note:
                host.sink.log(note)
    except BaseException as exc:
        if not isinstance(exc, AnybodyError) and is_out_of_memory(exc):
            raise out_of_memory("while preparing training") from exc
        raise
    results = []
    for index, (name, target) in enumerate(zip(names, targets)):
        coefficients = ema_coefficients(ema, index, config.ema_decay, name)
        identity = Identity(name, host.family, basis.vectors(coefficients), "celeb_basis", {
            **basis.metadata(), RESULT_KEY: key, "anybody.steps": str(total), "anybody.lr": str(config.lr),
            "anybody.seed": str(config.seed), "anybody.resolution": str(size), "anybody.source_images":
            run_config["images"][index], "anybody.recognizer": recognizer.describe(),
            "anybody.celeb_basis.people": ",".join(names), "anybody.note": EXPERIMENTAL.get(host.family, "Celeb Basis"),
            **{f"anybody.celeb_basis.{k}.coefficients": _coefficients_text(c) for k, c in coefficients.items()},
            **({} if tracker is None else likeness_metadata(tracker, trainer.stopped_early_at))})
        try:
            path = identity.save(target, overwrite=True)  # checked above: absent, resumed or overwrite asked for
        except OSError as exc:
            raise AnybodyError(f"Training finished but {target} could not be written ({exc.strerror or exc}). The "
                               f"progress is saved in {state.path}: free space or fix the folder, then run again with "
                               "the same settings to write the files without retraining (ComfyUI: saved_progress "
                               "'resume'; command line: --resume).") from exc
        results.append(TrainedIdentity(identity, path, False))
    state.clear()
    host.sink.log(f"Saved {', '.join(str(r.path) for r in results)} — write <name> (or embedding:name in ComfyUI) "
                  "in a prompt, e.g. 'a photo of <name> person'.")
    return results


def run_name(names: Sequence[str], key: str) -> str:
    """The name of a joint run's saved progress and curve (``<state dir>/<run name>.state.safetensors``)."""
    name = "celeb_basis." + "+".join(names)
    if len(name) > 120:  # ten long names would pass the file system's limit on a name
        name = f"celeb_basis.{names[0]}+{len(names) - 1}_more.{key}"
    return name


def _current_identity(ema: dict[str, torch.Tensor], basis, person: int, name: str, decay: float, device):
    """The injection the person's file would hold if the run ended now (from the EMA); None before their first
    update."""
    def injection():
        if int(ema[COUNTS][person]) == 0:
            return None
        coefficients = ema_coefficients(ema, person, decay, name)
        return {f"<{name}>": {k: v.to(device) for k, v in basis.vectors(coefficients).items()}}

    return injection


def _at_512(crops: torch.Tensor) -> torch.Tensor:
    """The recognizer branch sees the 512 px crop the paper used, whatever the training resolution (an SDXL 1024
    crop is antialiased down first; the official 512 -> 112 step itself stays as it was)."""
    if crops.shape[-1] == 512:
        return crops
    return F.interpolate(crops, size=(512, 512), mode="bilinear", align_corners=False, antialias=True)


def _square(face: torch.Tensor, size: int) -> torch.Tensor:
    """An aligned crop at exactly ``size`` px (the aligner makes them square already; this only resizes)."""
    if face.dim() != 3 or face.shape[-1] != 3:
        raise BadInputError(f"A face crop has shape {tuple(face.shape)}; expected [height, width, 3].")
    if face.shape[0] != face.shape[1]:
        raise BadInputError(f"A face crop is {face.shape[1]}x{face.shape[0]}; Celeb Basis trains on square "
                            "FFHQ-aligned crops (align the photos first).")
    if face.shape[0] == size:
        return face.float()
    chw = face.permute(2, 0, 1)[None].float()
    return F.interpolate(chw, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0].permute(1, 2, 0)


def stored_vectors_match(identity: Identity, basis: CelebBasis, atol: float = 1e-6) -> bool:
    """Whether a saved identity's vectors are ``mu + c @ B`` of the coefficients it records (spec §11 check 7)."""
    recomputed = basis.vectors({k: coefficients_from(identity.metadata, k) for k in basis.tensors})
    return all(torch.allclose(recomputed[k], identity.vectors[k], atol=atol) for k in basis.tensors)

