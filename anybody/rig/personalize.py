"""DiffusionRig stage 2: fine-tune the denoiser on ~20 photos of one person (spec §11).

The album's buffers are rendered once with the album's mean DECA shape (the same mean is stored in the model file
and used at inference), and each step denoises 4 distinct album photos at uniform timesteps with the P2-weighted
noise loss, Adam at 1e-5, gradients clipped to norm 1. Only ``denoisingUNet`` trains, with its dropout on.

One deliberate difference from the released script: the frozen encoder runs in eval mode, so each photo's global
latent is computed once. The original leaves it in train mode, where BatchNorm uses the statistics of each batch of
4 and its running statistics drift toward the album; eval mode keeps the latent of a photo the same at training
and at inference, and makes resume exact.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..train.diffusion import noisy, p2_weight, x0_from, linear_alphas_cumprod
from ..train.engine import StepResult
from .sample import TRAINING_STEPS
from .unet import DiffusionRig

STEPS, BATCH, LEARNING_RATE, MAX_GRAD_NORM = 5000, 4, 1e-5, 1.0


@dataclass
class Album:
    """What stage 2 trains on, on the training device: photos in [-1, 1], their buffers and latents."""

    photos: torch.Tensor   # (N, 3, S, S)
    buffers: torch.Tensor  # (N, 9, S, S)
    latents: torch.Tensor  # (N, latent)

    def __len__(self) -> int:
        return len(self.photos)


@torch.no_grad()
def album_latents(model: DiffusionRig, photos: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """Each photo's global latent from the frozen encoder (eval mode: see the module's note)."""
    was_training = model.encoder.training
    model.encoder.eval()
    try:
        return torch.cat([model.encode(photos[i:i + chunk]) for i in range(0, len(photos), chunk)])
    finally:
        model.encoder.train(was_training)


def trainable(model: DiffusionRig) -> dict[str, torch.Tensor]:
    """Stage 2 trains the denoiser only, under its official key names."""
    model.encoder.requires_grad_(False)
    model.denoisingUNet.requires_grad_(True)
    return {f"denoisingUNet.{name}": p for name, p in model.denoisingUNet.named_parameters()}


def stage2_loss(model: DiffusionRig, album: Album, batch: int, autocast=None):
    """``loss_fn(generator)`` for the engine: ``batch`` distinct photos, uniform t, P2-weighted noise MSE."""
    alphas = linear_alphas_cumprod(TRAINING_STEPS).float().to(album.photos.device)
    size = min(batch, len(album))

    def loss_fn(gen: torch.Generator) -> StepResult:
        model.denoisingUNet.train()
        pick = torch.randperm(len(album), generator=gen)[:size].to(album.photos.device)
        t = torch.randint(0, TRAINING_STEPS, (size,), generator=gen).to(album.photos.device)
        eps = torch.randn((size, *album.photos.shape[1:]), generator=gen).to(album.photos.device)
        x0 = album.photos[pick]
        a = alphas[t].view(-1, 1, 1, 1)
        x_t = noisy(x0, eps, a)
        context = autocast() if autocast is not None else torch.autocast("cpu", enabled=False)
        devices = [album.photos.device] if album.photos.device.type == "cuda" else []
        # dropout draws from the global generator: seed it from the step's, so a resumed run repeats the same masks
        with torch.random.fork_rng(devices=devices), context:
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
            predicted = model.denoise(x_t, t, album.buffers[pick], album.latents[pick]).float()
        loss = (p2_weight(a) * (eps - predicted) ** 2).mean()

        def preview() -> torch.Tensor:
            with torch.no_grad():
                clean = x0_from("eps", x_t[:1], predicted[:1].detach(), a[:1]).clamp(-1, 1)
                return torch.cat([x0[:1], x_t[:1].clamp(-1, 1), clean], 3)[0].permute(1, 2, 0).add(1).div(2).cpu()

        return StepResult(loss, preview)

    return loss_fn


@dataclass(frozen=True)
class Stage2Settings:
    """The paper's stage-2 recipe as defaults; everything that changes the trained model is in the run's key."""

    steps: int = STEPS
    batch: int = BATCH
    lr: float = LEARNING_RATE
    seed: int = 0
    save_every: int = 1000
    preview_every: int = 100


def personalize(model: DiffusionRig, album: Album, settings: Stage2Settings, sink, state=None,
                resuming: bool = False, loss_scale=None, autocast=None) -> list[float]:
    """Train ``model``'s denoiser in place on ``album``; returns the loss of each step run. ``state``: a
    :class:`TrainingState` for saves and exact resume (``resuming`` loads it first)."""
    from ..train.engine import Trainer

    params = trainable(model)
    optimizer = torch.optim.Adam(list(params.values()), lr=settings.lr)
    start = state.load(params, optimizer) if (state is not None and resuming) else 0
    if loss_scale is not None and state is not None:
        loss_scale.restore(state.extra.get("loss_scale"))
    sink.log(f"DiffusionRig stage 2: {len(album)} photo(s), {settings.steps} steps, batch {min(settings.batch, len(album))}"
             f", lr {settings.lr}" + (f", resuming at step {start}" if start else ""))
    trainer = Trainer(params, optimizer, stage2_loss(model, album, settings.batch, autocast), sink, settings.steps,
                      settings.seed, save_every=settings.save_every, preview_every=settings.preview_every, state=state,
                      loss_scale=loss_scale, max_grad_norm=MAX_GRAD_NORM, curve_title="stage 2 loss")
    try:
        return trainer.run(start)
    finally:
        model.eval()
