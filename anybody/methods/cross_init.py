"""Cross Initialization (Pang et al., CVPR 2024): textual inversion started from an encoder *output*.

Spec: shared/methods/cross_init.md. Two pseudo-token vectors per text encoder start from the text encoder's
output for the "average celebrity" (column means of celebrity-name token rows), and a small regulariser keeps
them near that start. Only those vectors train; the host's token table and weights are never touched.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ..assets import asset_path, read_lines
from ..errors import AnybodyError, BadInputError
from ..files import ensure_writable_folder, safe_name
from ..host.base import Host, TextEncoder
from ..identity import Identity
from ..images import square_batch
from ..train.diffusion import denoising_loss
from ..train.engine import StepResult, Trainer, is_out_of_memory, out_of_memory
from ..text.names import BUNDLED_NAMES, name_columns, names_digest, read_name_file
from ..train.loss_scale import LossScale
from .likeness import (can_score, embedder_of, identity_probe, keep_best, likeness_metadata, likeness_settings,
                       resolve_every, without_likeness)
from .runs import (RESULT_KEY, TrainedIdentity, continues_saved, default_resolution, discard_saved, images_digest,
                   refuse_existing, result_key, reusable)
from ..train.state import TrainingState

DEFAULT_NAMES = BUNDLED_NAMES
TEMPLATES = asset_path("ti_templates.txt")


@dataclass(frozen=True)
class CrossInitConfig:
    """Defaults are the official recipe (spec §4): 320 steps, batch 8, AdamW lr 0.005 wd 0.01, λ 1e-5."""

    steps: int = 320
    lr: float = 0.005
    batch: int = 8
    grad_accum: int = 1
    reg_weight: float = 1e-5
    weight_decay: float = 0.01
    num_vectors: int = 2
    resolution: int = 512
    flip_p: float = 0.5
    center_crop: bool = False
    seed: int = 0
    save_every: int = 100
    preview_every: int = 20
    gradient_checkpointing: bool = False
    #: beyond the paper: render and score the identity every N steps (0: off), keep the best step's vectors, and
    #: with a patience stop after that many evaluations without improvement (0: never early)
    likeness_every: int = 0
    likeness_patience: int = 0
    keep_best: bool = True


#: 'fast-25' keeps the paper recipe and cuts the steps: the fast version's other settings are unpublished (spec §9).
PRESETS = {"paper-320": {"steps": 320}, "fast-25": {"steps": 25}}


def preset(name: str, **overrides) -> CrossInitConfig:
    if name not in PRESETS and name != "custom":
        raise BadInputError(f"Unknown preset {name!r}; choose one of {', '.join([*PRESETS, 'custom'])}.")
    return replace(CrossInitConfig(), **{**PRESETS.get(name, {}), **overrides})


# --- cross initialization (spec §3) -------------------------------------------------------------------------

def mean_name_rows(encoder: TextEncoder, names: Sequence[str], n: int) -> torch.Tensor:
    """``M [n, D]``: the mean raw token-table row of each column."""
    columns = name_columns(encoder.tokenize, names, n)
    empty = [c for c, col in enumerate(columns) if not col]
    if empty:
        raise BadInputError(f"No celebrity name is {empty[0] + 1} tokens long; use at most {empty[0]} "
                            "vectors with this name list.")
    return torch.stack([encoder.token_rows(col).double().mean(0).float() for col in columns])


def cross_init_vectors(encoder: TextEncoder, names: Sequence[str], n: int) -> torch.Tensor:
    """``e0 [n, D]``: the host encoder's output at rows 1..n of ``[BOS, m_1..m_n, EOS, PAD...]``."""
    means = mean_name_rows(encoder, names, n)
    rows = [encoder.bos, *means.unbind(0), encoder.eos] + [encoder.pad] * (75 - n)
    with torch.no_grad():
        hidden, _ = encoder.encode_rows([rows])
    return hidden[0, 1:1 + n].float().cpu().clone()


def regulariser(theta: dict[str, torch.Tensor], init: dict[str, torch.Tensor], weight: float) -> torch.Tensor:
    """λ · mean Euclidean (not squared) distance to the initialization, as ``F.pairwise_distance`` (eps 1e-6)."""
    dists = torch.cat([F.pairwise_distance(theta[k], init[k].to(theta[k]), p=2) for k in theta])
    return weight * dists.mean()


# --- training ------------------------------------------------------------------------------------------------

def cross_init_loss(host: Host, theta: dict[str, torch.Tensor], init: dict[str, torch.Tensor], mean: torch.Tensor,
                    std: torch.Tensor, templates: Sequence[str], word: str, config: CrossInitConfig):
    """``loss_fn(generator) -> StepResult`` of one Cross-Init step (spec §4): the denoising loss of a batch of
    photos (mirrored with probability ``flip_p``) at random timesteps under template prompts, plus the regulariser.

    ``mean``/``std``: the cached latent posterior of the photos followed by their mirror images.
    """
    mean, std = mean.to(host.device), std.to(host.device)
    n_img = len(mean) // 2

    def loss_fn(gen: torch.Generator) -> StepResult:
        idx = torch.randint(n_img, (config.batch,), generator=gen)
        idx = idx + n_img * (torch.rand(config.batch, generator=gen) < config.flip_p).long()
        noise_z = torch.randn(mean[idx].shape, generator=gen).to(host.device)
        z0 = mean[idx] + std[idx] * noise_z

        def encode(gen: torch.Generator):
            picks = torch.randint(len(templates), (config.batch,), generator=gen).tolist()
            return host.encode_prompts([templates[j].format(f"face of {word} person") for j in picks], {word: theta})

        result = denoising_loss(host, z0, encode, gen)
        return StepResult(result.loss + regulariser(theta, init, config.reg_weight), result.preview)

    return loss_fn


def check_settings(name: str, config: CrossInitConfig, names_file: str | Path | None = None) -> tuple[str, list[str]]:
    """Everything about a run that can be wrong without a model: checked before anything is loaded.
    Returns the checked name and the celebrity names."""
    name = safe_name(name)
    if config.steps < 1 or config.batch < 1 or config.grad_accum < 1:
        raise BadInputError("steps, batch and grad_accum must be at least 1.")
    for what, value, top in (("steps", config.steps, 100_000), ("batch", config.batch, 64),
                             ("grad_accum", config.grad_accum, 1024)):
        if value > top:
            raise BadInputError(f"{what} {value} is beyond what this trainer takes (at most {top}); the paper uses "
                                "320 steps at batch 8.")
    if config.save_every < 0 or config.preview_every < 0:
        raise BadInputError("save_every and preview_every must be 0 (off) or a positive number of steps.")
    if config.likeness_every < -1:
        raise BadInputError("likeness_every must be -1 (auto), 0 (off) or a positive number of steps.")
    if config.likeness_patience < 0:
        raise BadInputError("likeness_patience must be 0 (never stop early) or a number of evaluations.")
    if not 0 < config.lr < 1e3:  # also NaN and inf
        raise BadInputError(f"The learning rate {config.lr} is not usable; give a positive value below 1000 (the "
                            f"paper's is {CrossInitConfig.lr}).")
    if config.resolution != 0 and not (64 <= config.resolution <= 4096 and config.resolution % 64 == 0):
        raise BadInputError(f"resolution {config.resolution} must be a multiple of 64 from 64 to 4096 (0: the model's "
                            "own).")
    names = read_name_file(names_file)
    return name, names


def train_cross_init(host: Host, images, name: str, config: CrossInitConfig = CrossInitConfig(),
                     names_file: str | Path | None = None, resume: bool = False, overwrite: bool = False,
                     restart: bool = False, init_identity: Identity | None = None,
                     face_models=None) -> TrainedIdentity:
    """Train an identity on ``host`` from face photos and write ``<name>.safetensors`` into its embeddings folder.

    Run again with the same photos, settings and checkpoint (a re-queued graph), it loads that file instead of
    training again. ``config.resolution`` 0 means the family's own (SD1.x 512, SD2-768-v 768, SDXL 1024).
    Progress saved by a stopped run is never discarded silently: ``resume`` continues it, ``restart`` deletes it,
    neither is an error that says which to choose.

    ``init_identity`` (beyond the paper; e.g. an AdaFace identity): start from its vectors instead of the
    celebrity-mean initialisation, with as many vectors as it has; the regulariser then keeps training near them.

    ``face_models`` (an insightface pack) is needed for ``config.likeness_every``: the likeness curve scores renders
    against the faces of these photos. ``likeness_every`` -1 (``likeness.AUTO``): on with a face model on a GPU.
    """
    name, names = check_settings(name, config, names_file)
    requested = config.likeness_every
    config = replace(config, likeness_every=resolve_every(requested, config.steps, host.device,
                                                          can_score(face_models), config.batch * config.grad_accum))
    if config.likeness_every and not can_score(face_models):
        raise BadInputError("The likeness curve (likeness_every > 0) needs a face model that finds and recognises "
                            "faces: connect FaceModelLoader (command line: --face-pack), or FaceModelFromMediaPipe "
                            "with a recognizer; or set likeness_every to 0.")
    init_digest = None
    if init_identity is not None:
        init_identity.require_family(host.family)
        from .celeb_space import token_table_warning

        warning = token_table_warning(init_identity.metadata, host.encoders, f"The start identity '{init_identity.name}'")
        if warning:
            host.sink.log(f"Warning: {warning}")
        config = replace(config, num_vectors=init_identity.num_vectors)
        init_digest = hashlib.sha256(b"".join(v.float().numpy().tobytes() for _, v in
                                              sorted(init_identity.vectors.items()))).hexdigest()[:16]
    if config.resolution == 0:
        config = replace(config, resolution=default_resolution(host))
    pixels = square_batch(images, config.resolution, config.center_crop)
    target = host.embeddings_dir() / f"{name}.safetensors"
    run_config = {**without_likeness(asdict(config)), "method": "cross_init", "family": host.family,
                  "images": images_digest(pixels), "names": names_digest(names),
                  **likeness_settings(requested, config.likeness_every, config.likeness_patience, config.keep_best,
                                      face_models.describe() if config.likeness_every else "")}
    if init_digest:
        run_config["init_identity"] = init_digest
    key = result_key(run_config, host.fingerprint())
    reused = reusable(target, key)
    if reused is not None:
        host.sink.log(f"'{name}' was already trained with these photos, settings and checkpoint: loaded {target}, "
                      "not retrained.")
        return TrainedIdentity(reused, target, True)
    state = TrainingState(host.state_dir(), name, run_config)
    resuming = continues_saved([state], f"'{name}'", resume, restart)
    refuse_existing([target], overwrite or resuming)
    if restart:
        discard_saved([state], f"'{name}'", host.sink.log)
    word = f"<{name}>"
    templates = read_lines(TEMPLATES)
    for folder in (host.embeddings_dir(), host.state_dir()):  # before the training time is spent, not after
        ensure_writable_folder(folder)
    # Latent mean/std of each photo and its mirror image, computed once and before the UNet loads: the official
    # script re-encodes every step (27 % of its step time); sampling from the cached posterior gives the same
    # distribution.
    references = None
    if config.likeness_every:
        from .likeness import reference_faces

        references = reference_faces(face_models, list(images))
    host.sink.check_cancel()
    mean, std = host.encode_images(torch.cat([pixels, pixels.flip(2)]))
    batch_pixels = config.batch * config.resolution**2
    try:
        with host.training(batch_pixels, config.gradient_checkpointing):
            init = {}
            for k, enc in host.encoders.items():
                host.sink.check_cancel()
                init[k] = (init_identity.vectors[k].float().clone() if init_identity is not None
                           else cross_init_vectors(enc, names, config.num_vectors))
            theta = {k: v.clone().to(host.device).requires_grad_(True) for k, v in init.items()}
            optimizer = torch.optim.AdamW(list(theta.values()), lr=config.lr, betas=(0.9, 0.999), eps=1e-8,
                                          weight_decay=config.weight_decay)
            tracker = None
            if config.likeness_every:
                from ..train.likeness import LikenessTracker

                probe = identity_probe(host, {word: theta}, word, embedder_of(face_models), references,
                                       mean.shape[1:])
                tracker = LikenessTracker(config.likeness_every, probe, theta, config.likeness_patience)
            start = state.load(theta, optimizer, tracker.buffers() if tracker else None) if resuming else 0
            scale = LossScale() if host.compute_dtype == torch.float16 else None
            if scale is not None:
                scale.restore(state.extra.get("loss_scale"))
            host.sink.log(f"Cross-Init '{name}': {len(pixels)} photo(s) at {config.resolution} px, {config.steps} "
                          f"steps, lr {config.lr}, batch {config.batch}x{config.grad_accum}, computing in "
                          f"{str(host.compute_dtype).replace('torch.', '')}" + (" with loss scaling" if scale else "")
                          + (f", resuming at step {start}" if start else "")
                          + (f", starting from the identity '{init_identity.name}' ({init_identity.method}, "
                             f"{init_identity.num_vectors} vectors)" if init_identity is not None else ""))

            loss_fn = cross_init_loss(host, theta, init, mean, std, templates, word, config)
            trainer = Trainer(theta, optimizer, loss_fn, host.sink, config.steps, config.seed, config.grad_accum,
                              config.save_every, config.preview_every, state, loss_scale=scale, likeness=tracker)
            trainer.run(start)
            note = keep_best(theta, tracker, config.keep_best)
            if note:
                host.sink.log(note)
    except BaseException as exc:
        if not isinstance(exc, AnybodyError) and is_out_of_memory(exc):
            raise out_of_memory("while preparing training") from exc
        raise
    for k, v in theta.items():  # trained vectors end near the init's scale; far beyond it, prompts drown
        ratio = (v.detach().norm(dim=-1) / init[k].to(v).norm(dim=-1).clamp_min(1e-6)).max().item()
        if ratio > 10:
            host.sink.log(f"Warning: the '{k}' vectors grew to {ratio:.0f}x their initial length; such an identity "
                          "tends to override the rest of the prompt. A lower learning rate usually helps.")
    metadata = {} if tracker is None else likeness_metadata(tracker, trainer.stopped_early_at)
    identity = Identity(name, host.family, {k: v.detach().cpu() for k, v in theta.items()}, "cross_init", {
        **metadata,
        "anybody.steps": str(config.steps), "anybody.lr": str(config.lr), "anybody.seed": str(config.seed),
        "anybody.resolution": str(config.resolution), RESULT_KEY: key,
        "anybody.source_images": run_config["images"], "anybody.note": "Cross-Init; unvalidated on SD1.5" if host.family == "sd1" else "Cross-Init"})
    try:
        path = identity.save(target, overwrite=True)  # checked above: absent, resumed or overwrite asked for
    except OSError as exc:
        raise AnybodyError(f"Training finished but {target} could not be written ({exc.strerror or exc}). The "
                           f"progress is saved in {state.path}: free space or fix the folder, then run again with "
                           "the same settings to write the file without retraining (ComfyUI: saved_progress 'resume'; "
                           "command line: --resume).") from exc
    state.clear()  # the embedding is the result now; a finished run leaves nothing to resume
    host.sink.log(f"Saved {path} — use it as embedding:{name} (ComfyUI) or {name} (A1111).")
    return TrainedIdentity(identity, path, False)


def vector_stats(vectors: torch.Tensor) -> dict[str, float]:
    """Norms and cosine of a trained pair, for logs and the closing report (spec §5 statistics)."""
    norms = vectors.norm(dim=-1)
    cos = F.cosine_similarity(vectors[0], vectors[1], dim=0).item() if len(vectors) > 1 else math.nan
    return {"norm_min": norms.min().item(), "norm_max": norms.max().item(), "cos_v0_v1": cos}
