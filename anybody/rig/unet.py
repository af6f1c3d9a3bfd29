"""The DiffusionRig network: a guided-diffusion-style pixel UNet with a FiLM'd global latent, plus its encoder.

``DiffusionRig`` = ``denoisingUNet`` (predicts the noise of a 256x256 photo from the noisy photo concatenated with
the nine physical-buffer channels [rendered, normal, albedo], the raw timestep, and a 64-d latent) and ``encoder``
(torchvision-layout ResNet-18 whose ``fc`` maps 512 -> 64; input the clean photo in [-1, 1]).

Module names and shapes reproduce the official ``diffusion/model.py`` state dict key for key, so a released
stage-1 / stage-2 ``.pt`` (``torch.save(model.state_dict())``) loads with ``strict=True``. Layout (official values):

- ``time_embed.{0,2}``: sinusoid(t, 128) [cos | sin], freqs exp(-ln(1e4) i / 64), on the raw timestep,
  -> Linear(128, 512) -> SiLU -> Linear(512, 512);
- ``input_blocks``: a 3x3 conv 12 -> 128, then per level (widths 128,128,256,256,512,512 at 256..8 px) two ResBlocks
  (each followed by self-attention at 16 px) and, except on the last level, a down-sampling ResBlock;
- ``middle_block``: ResBlock, attention, ResBlock;
- ``output_blocks``: per level (deepest first) three ResBlocks on [h, skip] (attention at 16 px), the last of them
  followed by an up-sampling ResBlock except on the top level;
- ``out``: GroupNorm -> SiLU -> zero-initialised 3x3 conv 128 -> 3.

ResBlock(x, emb, z): ``h = in_layers(x)`` (GN, SiLU, [resample], conv3x3); ``h = GN(h)``; ``h = h(1+a_t)+b_t`` with
(a_t, b_t) = ``emb_layers(emb)``; ``h = h(1+a_z)+b_z`` with (a_z, b_z) = ``cond_emb_layers(z)`` (not zero-initialised);
``h = conv3x3_zero(Dropout(SiLU(h)))``; output ``skip_connection(x) + h``. Every residual branch and the output head
end in a zero-initialised layer, so a freshly built network outputs exactly 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelFileError
from .resnet import ResNet, resnet18

IMAGE_CHANNELS = 3
BUFFER_CHANNELS = 9
IN_CHANNELS = IMAGE_CHANNELS + BUFFER_CHANNELS
UNET_PREFIX = "denoisingUNet."
ENCODER_PREFIX = "encoder."


@dataclass(frozen=True)
class RigConfig:
    """The architecture knobs; :data:`OFFICIAL` is the released model, :data:`TINY` a quick one for tests.

    ``attention_resolutions`` are in pixels: a level whose feature map is that size gets self-attention.
    Widths are ``base_channels * channel_mult[level]`` and must be multiples of ``groups`` (GroupNorm).
    """

    image_size: int = 256
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    latent_dim: int = 64
    dropout: float = 0.1
    groups: int = 32

    @property
    def time_dim(self) -> int:
        return 4 * self.base_channels

    def widths(self) -> list[int]:
        return [self.base_channels * m for m in self.channel_mult]

    def attention_levels(self) -> list[bool]:
        return [(self.image_size >> level) in self.attention_resolutions for level in range(len(self.channel_mult))]


OFFICIAL = RigConfig()
TINY = RigConfig(image_size=32, base_channels=32, channel_mult=(1, 2), num_res_blocks=2,
                 attention_resolutions=(16,), latent_dim=16, dropout=0.1, groups=32)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back (keeps fp16/bf16 runs stable, as the original does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoids of the raw (unscaled) timesteps: ``[cos(t f_i) | sin(t f_i)]`` with f_i = max_period^(-i/half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.reshape(-1, 1).float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class ResBlock(nn.Module):
    """Residual block with scale-shift FiLM from the time embedding, then from the global latent ``z``.

    ``resample`` ("up" | "down" | None) is nearest x2 / average-pool 2, applied to both branches between the
    first SiLU and the first conv (no parameters of its own).
    """

    def __init__(self, channels: int, out_channels: int, time_dim: int, latent_dim: int, dropout: float, groups: int,
                 resample: str | None = None) -> None:
        super().__init__()
        self.resample = resample
        self.in_layers = nn.Sequential(GroupNorm32(groups, channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, 2 * out_channels))
        self.cond_emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(latent_dim, 2 * out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(groups, out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.resample == "down":
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if self.resample is None:
            h = self.in_layers(x)
        else:
            h = self.in_layers[:-1](x)
            h, x = self._resample(h), self._resample(x)
            h = self.in_layers[-1](h)
        a_t, b_t = self.emb_layers(emb).type(h.dtype)[..., None, None].chunk(2, dim=1)
        a_z, b_z = self.cond_emb_layers(z).type(h.dtype)[..., None, None].chunk(2, dim=1)
        h = self.out_layers[0](h)
        h = h * (1 + a_t) + b_t
        h = h * (1 + a_z) + b_z
        h = self.out_layers[1:](h)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention with guided-diffusion's legacy QKV order and a zero-initialised output projection.

    ``qkv`` is a 1x1 Conv1d C -> 3C; the result is viewed per head as (3 * C/heads) channels and split into
    consecutive thirds q, k, v (with one head: channels [0:C], [C:2C], [2C:3C]). q and k are each scaled by
    (C/heads)^-1/4 before the dot product; the softmax runs in float32.
    """

    def __init__(self, channels: int, groups: int, heads: int = 1) -> None:
        super().__init__()
        self.heads = heads
        self.norm = GroupNorm32(groups, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None, z: torch.Tensor | None = None) -> torch.Tensor:
        b, c, *spatial = x.shape
        h = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(h))
        ch = c // self.heads
        q, k, v = qkv.reshape(b * self.heads, 3 * ch, -1).split(ch, dim=1)
        scale = ch ** -0.25
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        a = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, -1)
        return (h + self.proj_out(a)).reshape(b, c, *spatial)


class RigSequential(nn.Sequential):
    """A Sequential that hands the time embedding and the latent to the blocks that take them."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, z: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb, z) if isinstance(layer, (ResBlock, AttentionBlock)) else layer(x)
        return x


class RigUNet(nn.Module):
    """The denoiser: ``forward(x (B,12,S,S), t (B,), z (B,latent)) -> eps (B,3,S,S)``."""

    def __init__(self, config: RigConfig = OFFICIAL) -> None:
        super().__init__()
        self.config = cfg = config
        widths, attention = cfg.widths(), cfg.attention_levels()
        for w in widths:
            if w % cfg.groups:
                raise ValueError(f"width {w} is not a multiple of GroupNorm groups {cfg.groups}")

        def res(cin: int, cout: int, resample: str | None = None) -> ResBlock:
            return ResBlock(cin, cout, cfg.time_dim, cfg.latent_dim, cfg.dropout, cfg.groups, resample)

        def attn(c: int) -> AttentionBlock:
            return AttentionBlock(c, cfg.groups)

        self.time_embed = nn.Sequential(nn.Linear(cfg.base_channels, cfg.time_dim), nn.SiLU(),
                                        nn.Linear(cfg.time_dim, cfg.time_dim))
        ch = widths[0]
        blocks = [RigSequential(nn.Conv2d(IN_CHANNELS, ch, 3, padding=1))]
        skips = [ch]
        for level, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, width)]
                ch = width
                if attention[level]:
                    layers.append(attn(ch))
                blocks.append(RigSequential(*layers))
                skips.append(ch)
            if level != len(widths) - 1:
                blocks.append(RigSequential(res(ch, ch, "down")))
                skips.append(ch)
        self.input_blocks = nn.ModuleList(blocks)
        self.middle_block = RigSequential(res(ch, ch), attn(ch), res(ch, ch))
        blocks = []
        for level in reversed(range(len(widths))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skips.pop(), widths[level])]
                ch = widths[level]
                if attention[level]:
                    layers.append(attn(ch))
                if level and i == cfg.num_res_blocks:
                    layers.append(res(ch, ch, "up"))
                blocks.append(RigSequential(*layers))
        self.output_blocks = nn.ModuleList(blocks)
        self.out = nn.Sequential(GroupNorm32(cfg.groups, ch), nn.SiLU(),
                                 _zero(nn.Conv2d(ch, IMAGE_CHANNELS, 3, padding=1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.config.base_channels).to(x.dtype))
        z = z.to(x.dtype)
        hs = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb, z)
            hs.append(h)
        h = self.middle_block(h, emb, z)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb, z)
        return self.out(h)


class DiffusionRig(nn.Module):
    """``denoisingUNet`` + ``encoder``; state-dict keys are those of the official checkpoints."""

    def __init__(self, config: RigConfig = OFFICIAL) -> None:
        super().__init__()
        self.config = config
        self.denoisingUNet = RigUNet(config)
        self.encoder: ResNet = resnet18(config.latent_dim)

    def encode(self, photo: torch.Tensor) -> torch.Tensor:
        """Global latent z (B, latent_dim) of the clean aligned photo (B, 3, S, S) in [-1, 1]."""
        return self.encoder(photo)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, buffers: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Predicted noise of ``x_t`` (B,3,S,S) given the raw buffers (B,9,S,S), raw timesteps t (B,) and z."""
        if buffers.shape[1] != BUFFER_CHANNELS:
            raise ValueError(f"expected {BUFFER_CHANNELS} buffer channels, got {buffers.shape[1]}")
        return self.denoisingUNet(torch.cat([x_t, buffers.to(x_t.dtype)], dim=1), t, z)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, buffers: torch.Tensor, photo: torch.Tensor) -> torch.Tensor:
        return self.denoise(x_t, t, buffers, self.encode(photo))


def parameter_counts(model: DiffusionRig) -> tuple[int, int]:
    """(UNet parameters, encoder parameters); buffers such as BN running statistics are not counted."""
    return (sum(p.numel() for p in model.denoisingUNet.parameters()),
            sum(p.numel() for p in model.encoder.parameters()))


def _expected_shapes(config: RigConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = DiffusionRig(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _groups_for(widths: list[int]) -> int:
    """GroupNorm's group count is not in the tensors: the official 32, or for narrower test networks the largest
    power of two that divides every width."""
    groups = OFFICIAL.groups
    while groups > 1 and any(w % groups for w in widths):
        groups //= 2
    return groups


def infer_config(state_dict: Mapping[str, torch.Tensor], *, image_size: int = OFFICIAL.image_size,
                 dropout: float = OFFICIAL.dropout, groups: int | None = None) -> RigConfig:
    """The :class:`RigConfig` whose model has exactly this state dict's keys and shapes.

    Read from the tensors: base width (``time_embed.0`` input), per-level widths (first ResBlock of each level),
    ResBlocks per level, attention levels (which blocks hold ``qkv``) and the latent size (``encoder.fc``).
    Not recorded in the tensors, hence arguments: the image size (to express attention levels in pixels), the
    dropout rate and the GroupNorm group count (default: 32, the official value, where the widths allow it).
    Raises :class:`ModelFileError` when nothing matches.
    """
    p = UNET_PREFIX
    try:
        base = int(state_dict[p + "time_embed.0.weight"].shape[1])
        first = state_dict[p + "input_blocks.0.0.weight"]
        latent = int(state_dict[ENCODER_PREFIX + "fc.weight"].shape[0])
    except KeyError as e:
        raise ModelFileError(f"not a DiffusionRig checkpoint: key {e} is missing") from None
    if first.ndim != 4 or first.shape[1] != IN_CHANNELS:
        raise ModelFileError(f"not a DiffusionRig checkpoint: the first conv takes {tuple(first.shape)}, "
                             f"expected {IN_CHANNELS} input channels")

    def count(name: str) -> int:
        idx = {int(k[len(p) + len(name) + 1:].split(".")[0]) for k in state_dict if k.startswith(f"{p}{name}.")}
        return max(idx) + 1 if idx else 0

    total = count("input_blocks")
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    for n in range(1, total):
        if total % (n + 1):
            continue
        levels = total // (n + 1)
        mult, attn = [], []
        for level in range(levels):
            key = f"{p}input_blocks.{1 + level * (n + 1)}.0.in_layers.2.weight"
            if key not in state_dict or state_dict[key].shape[0] % base:
                break
            mult.append(int(state_dict[key].shape[0]) // base)
            if f"{p}input_blocks.{1 + level * (n + 1)}.1.qkv.weight" in state_dict:
                attn.append(image_size >> level)
        else:
            widths = [base * m for m in mult]
            cfg = RigConfig(image_size=image_size, base_channels=base, channel_mult=tuple(mult), num_res_blocks=n,
                            attention_resolutions=tuple(attn), latent_dim=latent, dropout=dropout,
                            groups=groups or _groups_for(widths))
            try:
                if _expected_shapes(cfg) == got:
                    return cfg
            except ValueError:
                continue
    raise ModelFileError("not a DiffusionRig checkpoint this version can read: no UNet layout matches its tensor "
                         "names and shapes")


def from_state_dict(state_dict: Mapping[str, torch.Tensor], **kwargs) -> DiffusionRig:
    """A :class:`DiffusionRig` built from :func:`infer_config` with the tensors loaded strictly (CPU, eval mode)."""
    model = DiffusionRig(infer_config(state_dict, **kwargs))
    model.load_state_dict(dict(state_dict), strict=True)
    return model.eval()


__all__ = ["RigConfig", "OFFICIAL", "TINY", "DiffusionRig", "RigUNet", "ResBlock", "AttentionBlock", "GroupNorm32",
           "timestep_embedding", "parameter_counts", "infer_config", "from_state_dict"]
