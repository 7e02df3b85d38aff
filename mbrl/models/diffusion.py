"""Networks of the Diffuser (Janner et al. 2022, "Planning with Diffusion for Flexible
Behavior Synthesis", ICML; arXiv:2205.09991): a temporal U-Net denoiser over trajectory
windows and the value network built from its down half.

A trajectory window is a tensor ``(B, H, D)``: ``H`` time steps of ``D = A + O`` channels,
each row ``[act_t, obs_t]`` (actions first, as the reference code lays them out). The
networks convolve over the **time axis** only (1-D convolutions with the ``D`` features as
channels), so they see a whole plan at once and are equivariant to shifts in time.

Architecture (the paper's Appendix C and the reference code ``diffuser/models/temporal.py``,
re-written here)::

    time embedding   e(t) = Linear(4c → c) ∘ Mish ∘ Linear(c → 4c) ∘ sinusoid_c(t)
    conv block       Conv1d(k=5, same padding) → GroupNorm(8 groups) → Mish
    residual block   h = block₂(block₁(x) + Linear(Mish(e))) + Conv1x1(x)   (1×1 if ch differ)
    level i          2 residual blocks (c_{i−1} → c_i → c_i), [linear attention], ↓2 (not last)
    middle           2 residual blocks at c_last, [linear attention]
    up level         concat skip → 2 residual blocks (2c_i → c_{i−1}), [attention], ↑2
    output           conv block(c₁ → c₁) → Conv1x1(c₁ → D)

with ``c_i = dim · dim_mults[i]``, ↓2 a stride-2 convolution (kernel 3) and ↑2 a transposed
convolution (kernel 4, stride 2). As in the reference, the skip of the first level is not
used (the decoder has one level fewer than the encoder). Linear attention (Katharopoulos
et al. 2020, the reference's ``LinearAttention``: 4 heads of 32, softmax over keys along
time, pre-LayerNorm over channels, residual) is only on for HalfCheetah in the paper.

Value network (the reference's ``ValueFunction``): the encoder levels (each with a ↓2,
the last one too), two more residual blocks halving the channels with a ↓2 each,
flatten, concat the time embedding, then ``Linear → Mish → Linear(1)``.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn

GROUPS = 8  # GroupNorm groups in every conv block (the reference's n_groups)
KERNEL = 5  # temporal kernel size of the conv blocks


def downsampled_length(length: int, times: int) -> int:
    """Length after ``times`` stride-2 convolutions (kernel 3, padding 1): ⌈L/2⌉ each."""
    for _ in range(times):
        length = (length + 1) // 2
    return length


class SinusoidalEmbedding(nn.Module):
    """``t (B,) -> (B, dim)``: ``[sin(t·ω_k), cos(t·ω_k)]``, ``ω_k = 10000^(−k/(dim/2 − 1))``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: Tensor) -> Tensor:
        half = self.dim // 2
        freqs = torch.exp(
            torch.arange(half, device=t.device, dtype=torch.float32)
            * (-math.log(10_000.0) / max(half - 1, 1))
        )
        angles = t.float()[:, None] * freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


def time_embedding(dim: int) -> nn.Sequential:
    """``t (B,) -> (B, dim)``: sinusoid, then a 2-layer Mish MLP of width ``4·dim``."""
    return nn.Sequential(
        SinusoidalEmbedding(dim), nn.Linear(dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim)
    )


class ConvBlock(nn.Sequential):
    """``(B, C_in, H) -> (B, C_out, H)``: Conv1d (same padding) → GroupNorm → Mish."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = KERNEL) -> None:
        super().__init__(
            nn.Conv1d(in_ch, out_ch, kernel, padding=kernel // 2),
            nn.GroupNorm(GROUPS, out_ch),
            nn.Mish(),
        )


class ResidualTemporalBlock(nn.Module):
    """Two conv blocks, the time embedding added after the first, and a 1×1 shortcut."""

    def __init__(self, in_ch: int, out_ch: int, embed_dim: int) -> None:
        super().__init__()
        self.block1 = ConvBlock(in_ch, out_ch)
        self.block2 = ConvBlock(out_ch, out_ch)
        self.time = nn.Sequential(nn.Mish(), nn.Linear(embed_dim, out_ch))
        self.shortcut: nn.Module = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """``x (B, C_in, H)``, ``emb (B, E)`` -> ``(B, C_out, H)``."""
        h = self.block1(x) + self.time(emb)[:, :, None]
        return self.block2(h) + self.shortcut(x)


class LinearAttention(nn.Module):
    """Residual, pre-normalised linear attention over time: ``(B, C, H) -> (B, C, H)``.

    Per head: ``out = (softmax_time(K) Vᵀ)ᵀ (Q/√d)``, i.e. a ``d×d`` context summed over
    time instead of an ``H×H`` attention matrix. The pre-norm is a LayerNorm over the
    channels of each time step (learned gain and bias).
    """

    def __init__(self, ch: int, heads: int = 4, head_dim: int = 32) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.norm_gain = nn.Parameter(torch.ones(1, ch, 1))
        self.norm_bias = nn.Parameter(torch.zeros(1, ch, 1))
        self.to_qkv = nn.Conv1d(ch, 3 * heads * head_dim, 1, bias=False)
        self.to_out = nn.Conv1d(heads * head_dim, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        B, _, H = x.shape
        mean = x.mean(1, keepdim=True)
        var = x.var(1, unbiased=False, keepdim=True)
        h = (x - mean) / (var + 1e-5).sqrt() * self.norm_gain + self.norm_bias
        q, k, v = self.to_qkv(h).reshape(B, 3, self.heads, self.head_dim, H).unbind(1)
        q = q * self.head_dim**-0.5
        context = torch.einsum("bhdn,bhen->bhde", k.softmax(dim=-1), v)  # (B, heads, d, d)
        out = torch.einsum("bhde,bhdn->bhen", context, q).reshape(B, -1, H)
        return x + self.to_out(out)


class Level(nn.Module):
    """One U-Net level: two residual blocks, optional attention, then ``resample``
    (↓2, ↑2 or identity). Returns the features before and after ``resample`` (the
    former is the U-Net's skip)."""

    def __init__(
        self, in_ch: int, out_ch: int, embed_dim: int, attention: bool, resample: nn.Module
    ) -> None:
        super().__init__()
        self.res1 = ResidualTemporalBlock(in_ch, out_ch, embed_dim)
        self.res2 = ResidualTemporalBlock(out_ch, out_ch, embed_dim)
        self.attn: nn.Module = LinearAttention(out_ch) if attention else nn.Identity()
        self.resample = resample

    def forward(self, x: Tensor, emb: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, C_in, H) -> (B, C_out, H)`` and the resampled ``(B, C_out, H')``."""
        h: Tensor = self.attn(self.res2(self.res1(x, emb), emb))
        return h, self.resample(h)


def _down(ch: int) -> nn.Module:
    return nn.Conv1d(ch, ch, 3, 2, 1)  # ↓2: length ⌈H/2⌉


def _up(ch: int) -> nn.Module:
    return nn.ConvTranspose1d(ch, ch, 4, 2, 1)  # ↑2: length 2H


class TemporalUNet(nn.Module):
    """The denoiser ``ε_θ`` / ``x̂₀_θ``: ``(x (B, H, D), t (B,)) -> (B, H, D)``.

    ``horizon`` must be divisible by ``2^(len(dim_mults) − 1)`` (the skips must line up)
    and every channel count ``dim·m`` by 8 (GroupNorm); the agent's config checks both.
    """

    def __init__(
        self,
        transition_dim: int,
        dim: int = 32,
        dim_mults: tuple[int, ...] = (1, 2, 4, 8),
        attention: bool = False,
    ) -> None:
        super().__init__()
        chans = [transition_dim, *(dim * m for m in dim_mults)]
        pairs = list(itertools.pairwise(chans))
        self.time_mlp = time_embedding(dim)
        self.downs = nn.ModuleList(
            Level(
                c_in, c_out, dim, attention, _down(c_out) if i < len(pairs) - 1 else nn.Identity()
            )
            for i, (c_in, c_out) in enumerate(pairs)
        )
        mid = chans[-1]
        self.mid1 = ResidualTemporalBlock(mid, mid, dim)
        self.mid_attn: nn.Module = LinearAttention(mid) if attention else nn.Identity()
        self.mid2 = ResidualTemporalBlock(mid, mid, dim)
        self.ups = nn.ModuleList(
            Level(2 * c_out, c_in, dim, attention, _up(c_in)) for c_in, c_out in reversed(pairs[1:])
        )
        self.final = nn.Sequential(ConvBlock(chans[1], chans[1]), nn.Conv1d(chans[1], chans[0], 1))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        h = x.transpose(1, 2)  # (B, D, H): features as channels, convolve over time
        emb = self.time_mlp(t)
        skips: list[Tensor] = []
        for level in self.downs:
            skip, h = level(h, emb)
            skips.append(skip)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for level in self.ups:
            _, h = level(torch.cat([h, skips.pop()], dim=1), emb)
        out: Tensor = self.final(h)
        return out.transpose(1, 2)


class ValueNet(nn.Module):
    """``J_φ``: ``(x (B, H, D), t (B,)) -> (B,)``, the value of a noised trajectory window."""

    def __init__(
        self,
        horizon: int,
        transition_dim: int,
        dim: int = 32,
        dim_mults: tuple[int, ...] = (1, 2, 4, 8),
    ) -> None:
        super().__init__()
        chans = [transition_dim, *(dim * m for m in dim_mults)]
        self.time_mlp = time_embedding(dim)
        self.blocks = nn.ModuleList(
            Level(c_in, c_out, dim, False, _down(c_out))
            for c_in, c_out in itertools.pairwise(chans)
        )
        mid = chans[-1]
        self.mid1 = ResidualTemporalBlock(mid, mid // 2, dim)
        self.mid_down1 = _down(mid // 2)
        self.mid2 = ResidualTemporalBlock(mid // 2, mid // 4, dim)
        self.mid_down2 = _down(mid // 4)
        flat = (mid // 4) * downsampled_length(horizon, len(dim_mults) + 2)
        self.head = nn.Sequential(
            nn.Linear(flat + dim, flat // 2), nn.Mish(), nn.Linear(flat // 2, 1)
        )

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        h = x.transpose(1, 2)
        emb = self.time_mlp(t)
        for level in self.blocks:
            _, h = level(h, emb)
        h = self.mid_down1(self.mid1(h, emb))
        h = self.mid_down2(self.mid2(h, emb))
        out: Tensor = self.head(torch.cat([h.flatten(1), emb], dim=-1))
        return out.squeeze(-1)


def check_unet_shape(horizon: int, dim: int, dim_mults: tuple[int, ...]) -> str | None:
    """Why ``(horizon, dim, dim_mults)`` cannot build the nets, or ``None`` when they can."""
    if not dim_mults or min(dim_mults) < 1:
        return f"dim_mults={dim_mults!r} needs at least one level, all multipliers >= 1"
    factor = 2 ** (len(dim_mults) - 1)
    if horizon < 1 or horizon % factor:
        return (
            f"horizon={horizon} must be a positive multiple of 2^(len(dim_mults) - 1) = "
            f"{factor} so that the U-Net's skip connections line up"
        )
    chans = [dim * m for m in dim_mults] + [dim * dim_mults[-1] // 4]
    if dim < 2 or any(c % GROUPS for c in chans) or (dim * dim_mults[-1]) % 4:
        return (
            f"dim={dim} with dim_mults={dim_mults!r} gives channel counts {chans}; all must "
            f"be multiples of {GROUPS} (GroupNorm groups), e.g. dim 16 or 32"
        )
    if chans[-1] < 2 * GROUPS:
        # the value net's last block may see one time step: one channel per group would
        # normalise single numbers to 0 (and fails for a batch of one)
        return (
            f"dim * dim_mults[-1] = {dim * dim_mults[-1]} must be >= {8 * GROUPS} (the value "
            f"net's last block has a quarter of it, >= 2 channels per GroupNorm group)"
        )
    return None


__all__ = [
    "ConvBlock",
    "Level",
    "LinearAttention",
    "ResidualTemporalBlock",
    "SinusoidalEmbedding",
    "TemporalUNet",
    "ValueNet",
    "check_unet_shape",
    "downsampled_length",
    "time_embedding",
]
