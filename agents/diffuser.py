"""Diffuser: planning by sampling whole trajectories from a diffusion model.

Janner, Du, Tenenbaum, Levine 2022, "Planning with Diffusion for Flexible Behavior
Synthesis" (ICML; arXiv:2205.09991), with the settings of the authors' code
(github.com/jannerm/diffuser: ``config/locomotion.py``, ``diffuser/models/diffusion.py``,
``diffuser/sampling/``). The model *is* the planner: a denoising diffusion model over
trajectory windows ``τ = [(a_0, s_0), ..., (a_{H−1}, s_{H−1})]`` (a tensor ``(H, A + O)``,
per-dimension normalised) is trained on the dataset; planning is sampling from it with
the current state written in (inpainting) and a value model's gradient steering the
samples towards high return. Networks: :mod:`mbrl.models.diffusion` (temporal U-Net,
value net).

DDPM (Ho et al. 2020) with the cosine schedule (Nichol & Dhariwal 2021), ``N`` steps::

    ᾱ(u) = cos²((u + s)/(1 + s) · π/2) / ᾱ(0),  s = 0.008;   β_n = min(1 − ᾱ_n/ᾱ_{n−1}, 0.999)
    q(τ_n | τ_0)       = 𝒩(√ᾱ_n τ_0, (1 − ᾱ_n) I)                               (forward noising)
    q(τ_{n−1} | τ_n, τ_0) = 𝒩(c₁ τ_0 + c₂ τ_n, β̃_n I),   c₁ = β_n √ᾱ_{n−1} / (1 − ᾱ_n),
                        c₂ = (1 − ᾱ_{n−1}) √α_n / (1 − ᾱ_n),   β̃_n = β_n (1 − ᾱ_{n−1}) / (1 − ᾱ_n)
    p_θ(τ_{n−1} | τ_n) = q(τ_{n−1} | τ_n, τ̂_0 = f_θ(τ_n, n))

(``ᾱ`` evaluated at ``u = k/N`` for ``k = 0..N``, the reference's grid; indices ``n = 0 .. N−1``
as in the code: step ``n`` uses ``ᾱ_n = Π_{k≤n} (1 − β_k)`` and ``ᾱ_{−1} = 1``).
The network predicts ``τ_0`` directly (``predict_epsilon: false``, the paper's locomotion
setting; ``true`` predicts the noise ``ε`` and ``τ̂_0 = (τ_n − √(1 − ᾱ_n) ε̂)/√ᾱ_n``).

Training (one update = one Adam step on ``grad_accumulate`` batches of windows)::

    τ_0 ~ windows of the dataset;  n ~ U{0..N−1};  ε ~ 𝒩(0, I);  τ_n = √ᾱ_n τ_0 + √(1 − ᾱ_n) ε
    inpaint s_0 into τ_n;   L = mean_{B,H,D} w_{h,d} (f_θ(τ_n, n) − τ_0)²
    w = 1, except w_{0, actions} = action_weight (10): the first action is what is executed
    J_φ(τ_n, n) ≈ R(τ) by mean squared error on the same kind of noised windows (inpainted)

``R(τ)``: the discounted return-to-go from the window's first step to the end of its
episode, ``Σ_k γ^k r_{t+k}`` (γ = 0.997), with ``termination_penalty`` (−100) added to
the last reward of episodes that terminate (the code's ``ValueDataset``;
``value_target: window`` sums over the window's ``H`` steps only).

Windows (the code's ``SequenceDataset``): episodes split at ``terminals | timeouts``; an
episode of length ``L`` gives windows starting at ``t = 0 .. min(L − 1, P − H) − 1``
(``P = max_path_length``); with ``use_padding`` a window may run past the episode's end,
where it reads zeros (normalised like any row), so the model learns that episodes end;
without it, windows stay inside the episode. Normalisation: per dimension, separately for
actions and observations, ``(x − mean)/std`` over all dataset rows (``gaussian``, the
paper's locomotion setting) or ``[min, max] → [−1, 1]`` (``limits``).

Sampling (``plan``): ``B = plan_batch`` candidates from the current state ``s``::

    τ_{N−1} ~ 𝒩(0, I);  inpaint s
    for n = N−1 .. 0:
        repeat n_guide_steps times:                     (value guidance)
            g = ∇_τ J_φ(τ_n, n);  g ← β̃_n g if scale_grad_by_std;  g ← 0 if n < t_stopgrad
            τ_n ← τ_n + guide_scale · g;  inpaint s
        τ_{n−1} ~ p_θ(· | τ_n)  (no noise at n = 0);  inpaint s
    execute the first action of the candidate with the highest J_φ, clipped to the bounds

Inpainting writes ``s`` into the state slots of step 0 after every change of ``τ``, so
every plan starts exactly where the agent is. ``sampler: ddim`` with ``sample_steps
K < N`` is a faster sampler (Song et al. 2021, DDIM): ``K`` steps on an evenly spaced
subsequence ``n_K > ... > n_1`` of ``0..N−1``, ``τ_prev = √ᾱ_prev τ̂_0 + √(1 − ᾱ_prev −
σ²) ε̂ + σ z`` with ``σ = η √((1 − ᾱ_prev)/(1 − ᾱ_n) (1 − ᾱ_n/ᾱ_prev))`` (η =
``ddim_eta``, 0: deterministic given the start noise); guidance then scales by the
jump's variance ``(1 − ᾱ_prev)/(1 − ᾱ_n)(1 − ᾱ_n/ᾱ_prev)`` (``= β̃_n`` for ``K = N``).
The diffusion and value nets used for planning are exponential moving averages of the
trained ones (decay 0.995, updated every 10 updates, a plain copy before update 2,000).

Defaults are the code's ``config/locomotion.py`` base (hopper, walker2d): ``H = 32``,
``N = 20``, ``dim = 32``, ``dim_mults = (1, 2, 4, 8)``, batch 32 × 2 accumulated, Adam
2e-4, 64 candidates, ``guide_scale = 0.1``, 2 guide steps, ``t_stopgrad = 2``. The presets
``configs/diffuser/<task>.yaml`` carry the per-task overrides (HalfCheetah: ``H = 4``,
``dim_mults = (1, 4, 8)``, attention, scale 0.001, ``t_stopgrad = 4``; hopper
medium-expert: scale 1e-4, ``t_stopgrad = 4``).

Deviations from the paper's code:

- One loop trains both nets: each update is one diffusion step and (for the first
  ``value_updates``, 200k like the code's value runs) one value step, on independent
  batches. The code trains them as two separate runs (1M and 200k steps) and plans with
  their final EMA weights; here each evaluation plans with the EMA weights of its moment.
- The value discount is 0.997, the discount of the value models the code's planning
  script loads (``config/locomotion.py``'s ``plan``); its value-training default is 0.99.
- The loss on the inpainted state slots of step 0 is masked out (the code writes the
  state into the prediction instead; the gradients are the same, and for ε-prediction
  the logged loss no longer contains the meaningless ``(s_0 − ε)²`` term).
- A dimension with zero spread in the data is normalised with std (or range) 1.
- DDIM sampling (``sampler: ddim``) is an addition (the code samples with DDPM only).
- Actions are clipped to the env's bounds (the code executes them as sampled).
- ``run.total_steps`` counts updates (the code: 1M diffusion steps); evaluation is the
  offline loop's deterministic-seed episodes; the sampling noise comes from the agent's
  own generator, so evaluations are reproducible but not noise-free.

Metrics: ``train/diffusion_loss`` (weighted), ``train/a0_loss`` (unweighted MSE of the
first action), ``train/value_loss``, ``train/value_pred_mean``, ``train/value_target_mean``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mbrl.config import check_in_range, check_non_negative, check_positive
from mbrl.data.d4rl import D4RLDataset, trajectories
from mbrl.errors import MbrlError, unknown_name
from mbrl.models.diffusion import TemporalUNet, ValueNet, check_unet_shape
from mbrl.offline import OfflineAgent
from mbrl.registry import AGENTS
from mbrl.train import RunContext, TrainConfig

NORMALIZERS = ("gaussian", "limits")
VALUE_TARGETS = ("to_go", "window")
SAMPLERS = ("ddpm", "ddim")
# generator seeds: run.seed + offset (the offline loop's own offsets are 30k..60k)
NOISE_SEED_OFFSET = 70_000
PLAN_SEED_OFFSET = 80_000

ValueFn = Callable[[Tensor, Tensor], Tensor]
"""``value_fn(τ (B, H, D), n (B,)) -> (B,)``: the value of noised windows at step ``n``."""


@dataclass
class DiffuserConfig:
    """Diffuser hyperparameters (defaults: the code's locomotion base config).

    Attributes:
        horizon: ``H``, steps per planned window (a multiple of ``2^(len(dim_mults)−1)``).
        n_diffusion_steps: ``N``, denoising steps of the DDPM.
        dim: channels of the U-Net's first level and of the time embedding.
        dim_mults: channel multipliers per U-Net level (value net: the same).
        attention: linear attention in the U-Net (the paper: HalfCheetah only).
        predict_epsilon: the net predicts the noise (true) or ``τ_0`` (false, the paper).
        action_weight: loss weight of the first step's action.
        loss_discount: loss weight ``γ_L^h`` of step ``h`` (normalised to mean 1); 1: none.
        clip_denoised: clamp ``τ̂_0`` to [−1, 1] while sampling (for ``limits``).
        normalizer: ``gaussian`` (per-dim mean/std) or ``limits`` (per-dim min/max).
        use_padding: windows may run past an episode's end (zeros, normalised).
        max_path_length: ``P``; longest episode; windows start before ``P − H``.
        learning_rate: Adam step size of both nets.
        batch_size: windows per accumulated batch.
        grad_accumulate: batches accumulated per Adam step.
        ema_decay, ema_every, ema_start: EMA of both nets' weights: updated every
            ``ema_every`` updates, a copy of the weights before update ``ema_start``.
        value_updates: updates that also train the value net (``None``: all).
        value_discount: ``γ`` of the value targets.
        termination_penalty: added to the last reward of terminated episodes (value
            targets only).
        value_target: ``to_go`` (return to the episode's end) or ``window`` (``H`` steps).
        plan_batch: candidate plans sampled per action.
        guide_scale: step size of the value-gradient ascent.
        n_guide_steps: gradient steps per denoising step (0: no guidance).
        t_stopgrad: no guidance at denoising steps ``n < t_stopgrad``.
        scale_grad_by_std: multiply the value gradient by the step's posterior variance.
        sampler: ``ddpm`` (the paper) or ``ddim``.
        sample_steps: DDIM steps (``None``: ``N``; ``ddpm`` always uses ``N``).
        ddim_eta: DDIM's ``η`` (0: deterministic updates).
        log_every: updates between ``train/*`` metric rows.
    """

    horizon: int = 32
    n_diffusion_steps: int = 20
    dim: int = 32
    dim_mults: tuple[int, ...] = (1, 2, 4, 8)
    attention: bool = False
    predict_epsilon: bool = False
    action_weight: float = 10.0
    loss_discount: float = 1.0
    clip_denoised: bool = False
    normalizer: str = "gaussian"
    use_padding: bool = True
    max_path_length: int = 1000
    learning_rate: float = 2e-4
    batch_size: int = 32
    grad_accumulate: int = 2
    ema_decay: float = 0.995
    ema_every: int = 10
    ema_start: int = 2000
    value_updates: int | None = 200_000
    value_discount: float = 0.997
    termination_penalty: float = -100.0
    value_target: str = "to_go"
    plan_batch: int = 64
    guide_scale: float = 0.1
    n_guide_steps: int = 2
    t_stopgrad: int = 2
    scale_grad_by_std: bool = True
    sampler: str = "ddpm"
    sample_steps: int | None = None
    ddim_eta: float = 0.0
    log_every: int = 1_000

    def __post_init__(self) -> None:
        check_positive(
            self,
            "horizon",
            "n_diffusion_steps",
            "dim",
            "action_weight",
            "loss_discount",
            "max_path_length",
            "learning_rate",
            "batch_size",
            "grad_accumulate",
            "ema_every",
            "plan_batch",
            "sample_steps",
            "log_every",
        )
        check_non_negative(
            self, "ema_start", "value_updates", "guide_scale", "n_guide_steps", "t_stopgrad"
        )
        check_in_range(self, "ema_decay", 0.0, 1.0)
        check_in_range(self, "value_discount", 0.0, 1.0)
        check_in_range(self, "ddim_eta", 0.0, 1.0)
        problem = check_unet_shape(self.horizon, self.dim, tuple(self.dim_mults))
        if problem is not None:
            raise MbrlError(f"DiffuserConfig: {problem}.")
        if self.horizon > self.max_path_length:
            raise MbrlError(
                f"DiffuserConfig.horizon={self.horizon} exceeds max_path_length="
                f"{self.max_path_length}; no window would fit in an episode."
            )
        if self.normalizer not in NORMALIZERS:
            raise unknown_name("normalizer", self.normalizer, NORMALIZERS)
        if self.value_target not in VALUE_TARGETS:
            raise unknown_name("value_target", self.value_target, VALUE_TARGETS)
        if self.sampler not in SAMPLERS:
            raise unknown_name("sampler", self.sampler, SAMPLERS)
        if self.sample_steps is not None and self.sample_steps > self.n_diffusion_steps:
            raise MbrlError(
                f"DiffuserConfig.sample_steps={self.sample_steps} exceeds n_diffusion_steps="
                f"{self.n_diffusion_steps}; DDIM samples a subsequence of the N steps."
            )
        ddpm_steps = self.sampler == "ddpm" and self.sample_steps is not None
        if ddpm_steps and self.sample_steps != self.n_diffusion_steps:
            raise MbrlError(
                f"DiffuserConfig.sample_steps={self.sample_steps} needs sampler: ddim "
                "(DDPM always takes all n_diffusion_steps); pass --agent.sampler ddim."
            )


# -- DDPM maths ---------------------------------------------------------------------------
def cosine_beta_schedule(n_steps: int, s: float = 0.008) -> Tensor:
    """``β_n`` ``(N,)`` float32 of the cosine schedule (Nichol & Dhariwal 2021), clipped
    to 0.999 (float64 maths, as the reference)."""
    x = np.linspace(0, n_steps + 1, n_steps + 1)
    abar = np.cos(((x / (n_steps + 1)) + s) / (1 + s) * np.pi * 0.5) ** 2
    abar = abar / abar[0]
    betas = np.clip(1 - abar[1:] / abar[:-1], 0.0, 0.999)
    return torch.tensor(betas, dtype=torch.float32)


def _at(values: Tensor, n: Tensor) -> Tensor:
    """``values[n]`` shaped ``(B, 1, 1)`` to broadcast over ``(B, H, D)``."""
    return values[n].reshape(-1, 1, 1)


class DiffusionSchedule(nn.Module):
    """The noise schedule's constants and the closed forms of the DDPM (buffers ``(N,)``)."""

    def __init__(self, n_steps: int) -> None:
        super().__init__()
        betas = cosine_beta_schedule(n_steps).double()
        abar = torch.cumprod(1 - betas, 0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        post_var = betas * (1 - abar_prev) / (1 - abar)
        buffers = {
            "betas": betas,
            "abar": abar,
            "abar_prev": abar_prev,
            "post_var": post_var,
            "post_logvar": post_var.clamp_min(1e-20).log(),
            "post_c1": betas * abar_prev.sqrt() / (1 - abar),
            "post_c2": (1 - abar_prev) * (1 - betas).sqrt() / (1 - abar),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.float())
        self.n_steps = n_steps
        self.betas: Tensor
        self.abar: Tensor
        self.abar_prev: Tensor
        self.post_var: Tensor
        self.post_logvar: Tensor
        self.post_c1: Tensor
        self.post_c2: Tensor

    def q_sample(self, x0: Tensor, n: Tensor, noise: Tensor) -> Tensor:
        """``τ_n = √ᾱ_n τ_0 + √(1 − ᾱ_n) ε``; ``x0, noise (B, H, D)``, ``n (B,)``."""
        abar = _at(self.abar, n)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def q_posterior(self, x0: Tensor, xn: Tensor, n: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean ``(B, H, D)``, variance and clipped log-variance ``(B, 1, 1)`` of
        ``q(τ_{n−1} | τ_n, τ_0)``."""
        mean = _at(self.post_c1, n) * x0 + _at(self.post_c2, n) * xn
        return mean, _at(self.post_var, n), _at(self.post_logvar, n)

    def x0_from_eps(self, xn: Tensor, n: Tensor, eps: Tensor) -> Tensor:
        """``τ̂_0 = (τ_n − √(1 − ᾱ_n) ε̂)/√ᾱ_n``."""
        abar = _at(self.abar, n)
        return (xn - (1 - abar).sqrt() * eps) / abar.sqrt()

    def eps_from_x0(self, xn: Tensor, n: Tensor, x0: Tensor) -> Tensor:
        """``ε̂ = (τ_n − √ᾱ_n τ̂_0)/√(1 − ᾱ_n)``."""
        abar = _at(self.abar, n)
        return (xn - abar.sqrt() * x0) / (1 - abar).sqrt()


def inpaint(x: Tensor, obs: Tensor, act_dim: int) -> Tensor:
    """``x (B, H, D)`` with the state slots of step 0 set to ``obs (B, O)`` (a new tensor)."""
    first = torch.cat([x[:, 0, :act_dim], obs.to(x.dtype)], dim=-1)
    return torch.cat([first[:, None, :], x[:, 1:, :]], dim=1)


def loss_weights(
    horizon: int, act_dim: int, obs_dim: int, action_weight: float, discount: float
) -> Tensor:
    """``w (H, D)``: ``discount^h`` normalised to mean 1, then ``w[0, :A] = action_weight``;
    the state slots of step 0 (inpainted, not learned) get weight 0."""
    steps = discount ** torch.arange(horizon, dtype=torch.float32)
    w = (steps / steps.mean())[:, None].repeat(1, act_dim + obs_dim)
    w[0, :act_dim] = action_weight
    w[0, act_dim:] = 0.0
    return w


def noised_windows(
    sched: DiffusionSchedule, x0: Tensor, act_dim: int, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """``n ~ U{0..N−1}``, ``ε ~ 𝒩(0, I)``, ``τ_n`` (``s_0`` inpainted) for ``x0 (B, H, D)``."""
    n = torch.randint(0, sched.n_steps, (x0.shape[0],), generator=generator, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device)
    return n, noise, inpaint(sched.q_sample(x0, n, noise), x0[:, 0, act_dim:], act_dim)


def diffusion_loss(
    net: nn.Module,
    sched: DiffusionSchedule,
    x0: Tensor,
    weights: Tensor,
    act_dim: int,
    predict_epsilon: bool,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Weighted MSE of the denoiser on windows ``x0 (B, H, D)``; returns ``(loss, a0_mse)``."""
    n, noise, xn = noised_windows(sched, x0, act_dim, generator)
    target = noise if predict_epsilon else x0
    err = (net(xn, n) - target).square()  # (B, H, D)
    return (err * weights).mean(), err[:, 0, :act_dim].mean().detach()


def value_loss(
    net: nn.Module,
    sched: DiffusionSchedule,
    x0: Tensor,
    target: Tensor,
    act_dim: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """MSE of ``J_φ(τ_n, n)`` against ``target (B,)`` on noised, inpainted windows."""
    n, _, xn = noised_windows(sched, x0, act_dim, generator)
    pred = net(xn, n)
    return (pred - target).square().mean(), pred.detach()


# -- sampling: inpainting, value guidance, DDPM / DDIM -------------------------------------
def sampling_steps(n_steps: int, sample_steps: int | None) -> list[int]:
    """Denoising steps, descending: all ``N`` or ``K`` evenly spaced ones ending at 0."""
    k = n_steps if sample_steps is None else sample_steps
    steps = np.unique(np.round(np.linspace(n_steps - 1, 0, k)).astype(int))
    return [int(s) for s in steps[::-1]]


@torch.no_grad()
def sample_plans(
    net: nn.Module,
    sched: DiffusionSchedule,
    obs: Tensor,
    horizon: int,
    act_dim: int,
    *,
    value_fn: ValueFn | None = None,
    guide_scale: float = 0.0,
    n_guide_steps: int = 0,
    t_stopgrad: int = 0,
    scale_grad_by_std: bool = True,
    predict_epsilon: bool = False,
    clip_denoised: bool = False,
    sampler: str = "ddpm",
    sample_steps: int | None = None,
    ddim_eta: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Sample plans ``(B, H, D)`` that start at ``obs (B, O)`` (normalised); see the
    module docstring. Returns the plans and their values ``(B,)`` (``J_φ`` at the last
    denoising step, as the reference ranks them; zeros without ``value_fn``)."""
    B, device = obs.shape[0], obs.device
    D = act_dim + obs.shape[1]
    steps = sampling_steps(sched.n_steps, sample_steps if sampler == "ddim" else None)
    x = inpaint(torch.randn((B, horizon, D), generator=generator, device=device), obs, act_dim)
    values = torch.zeros(B, device=device)
    for i, n_int in enumerate(steps):
        n = torch.full((B,), n_int, dtype=torch.long, device=device)
        abar = sched.abar[n_int]
        abar_prev = sched.abar[steps[i + 1]] if i + 1 < len(steps) else abar.new_ones(())
        # variance of this jump (β̃_n when consecutive), clamped like the reference's log
        jump_var = ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).clamp_min(1e-20)
        # value guidance: gradient ascent on J_φ, then re-inpaint. Below t_stopgrad the
        # gradient would be zeroed and x unchanged: J_φ is only evaluated at the last step,
        # for the ranking (the reference computes and discards the gradient).
        guided = value_fn is not None and n_guide_steps > 0 and n_int >= t_stopgrad
        for _ in range(n_guide_steps if guided else 0):
            assert value_fn is not None
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                y = value_fn(xg, n)
                (grad,) = torch.autograd.grad(y.sum(), xg)
            values = y.detach()
            if scale_grad_by_std:
                grad = jump_var * grad
            x = inpaint(x + guide_scale * grad, obs, act_dim)
        if value_fn is not None and not guided and i + 1 == len(steps):
            values = value_fn(x, n)
        # one denoising step
        out = net(x, n)
        x0 = sched.x0_from_eps(x, n, out) if predict_epsilon else out
        if clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
        z = torch.randn(x.shape, generator=generator, device=device)
        if sampler == "ddpm":
            mean, _, logvar = sched.q_posterior(x0, x, n)
            x = mean + (0.5 * logvar).exp() * z * (0.0 if n_int == 0 else 1.0)
        else:
            eps = sched.eps_from_x0(x, n, x0)
            last = i + 1 == len(steps)
            sigma = jump_var.sqrt() * (0.0 if last else ddim_eta)
            coef = (1 - abar_prev - sigma**2).clamp_min(0).sqrt()
            x = abar_prev.sqrt() * x0 + coef * eps + sigma * z
        x = inpaint(x, obs, act_dim)
    return x, values


# -- data: normalisation and trajectory windows -------------------------------------------
class Normalizer:
    """Per-dimension affine map ``x ↦ (x − shift)/scale`` fitted on ``data (N, K)``."""

    def __init__(self, data: np.ndarray, kind: str) -> None:
        data = data.astype(np.float64)
        if kind == "gaussian":
            shift, scale = data.mean(0), data.std(0)
        else:  # limits: [min, max] -> [-1, 1]
            lo, hi = data.min(0), data.max(0)
            shift, scale = (hi + lo) / 2, (hi - lo) / 2
        scale = np.where(scale > 1e-8, scale, 1.0)  # constant dims: leave the spread alone
        self.shift = shift.astype(np.float32)
        self.scale = scale.astype(np.float32)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = ((x - self.shift) / self.scale).astype(np.float32)
        return out

    def tensors(self, device: torch.device) -> tuple[Tensor, Tensor]:
        return torch.as_tensor(self.shift, device=device), torch.as_tensor(
            self.scale, device=device
        )


@dataclass
class TrajectoryWindows:
    """The dataset as normalised rows ``[act, obs]`` with windows that respect episodes.

    Attributes:
        rows: ``(R, D)`` every episode's rows followed by ``H`` padding rows (raw zeros,
            normalised).
        starts: ``(W,)`` row of each window's first step.
        values: ``(W,)`` value target of each window.
        horizon: ``H``.
    """

    rows: Tensor
    starts: Tensor
    values: Tensor
    horizon: int

    def __len__(self) -> int:
        return int(self.starts.shape[0])

    def windows(self, idx: Tensor) -> Tensor:
        """``(len(idx), H, D)`` windows number ``idx``."""
        offsets = torch.arange(self.horizon, device=self.rows.device)
        return self.rows[self.starts[idx][:, None] + offsets]


def build_windows(
    ds: D4RLDataset,
    cfg: DiffuserConfig,
    act_norm: Normalizer,
    obs_norm: Normalizer,
    device: torch.device,
    source: str,
) -> TrajectoryWindows:
    """Episodes of ``ds`` (split at ``terminals | timeouts``) as windows (module docstring)."""
    H, P, gamma = cfg.horizon, cfg.max_path_length, cfg.value_discount
    rows, starts, values = [], [], []
    offset = 0
    for ep in trajectories(ds):
        L = len(ep)
        if L > P:
            raise MbrlError(
                f"dataset '{source}' has an episode of {L} steps (row {ep.start}) but "
                f"agent.max_path_length={P}; pass --agent.max-path-length {L} or more."
            )
        pad = np.zeros((H, ds.act_dim + ds.obs_dim), dtype=np.float32)
        raw = np.concatenate([np.concatenate([ep.act, ep.obs], axis=1), pad])
        rows.append(
            np.concatenate(
                [
                    act_norm.normalize(raw[:, : ds.act_dim]),
                    obs_norm.normalize(raw[:, ds.act_dim :]),
                ],
                axis=1,
            )
        )
        n_windows = min(L - 1, P - H)
        if not cfg.use_padding:
            n_windows = min(n_windows, L - H)
        if n_windows > 0:
            rew = ep.rew.astype(np.float64).copy()
            if ep.is_terminal:
                rew[-1] += cfg.termination_penalty
            to_go = np.zeros(L + H + 1)  # discounted return-to-go, zero past the end
            for t in range(L - 1, -1, -1):
                to_go[t] = rew[t] + gamma * to_go[t + 1]
            s = np.arange(n_windows)
            if cfg.value_target == "to_go":
                values.append(to_go[s])
            else:
                values.append(to_go[s] - gamma**H * to_go[s + H])
            starts.append(offset + s)
        offset += L + H
    if not starts:
        raise MbrlError(
            f"dataset '{source}' yields no windows of horizon {H}: every episode is shorter "
            "than 2 steps (or than the horizon without padding). Use a smaller "
            "--agent.horizon or --agent.use-padding."
        )
    return TrajectoryWindows(
        rows=torch.as_tensor(np.concatenate(rows), device=device),
        starts=torch.as_tensor(np.concatenate(starts), dtype=torch.long, device=device),
        values=torch.as_tensor(np.concatenate(values), dtype=torch.float32, device=device),
        horizon=H,
    )


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, decay: float) -> None:
    """``θ̄ ← decay·θ̄ + (1 − decay)·θ`` for every parameter."""
    for p_ema, p in zip(ema.parameters(), net.parameters(), strict=True):
        p_ema.lerp_(p, 1.0 - decay)


# -- the agent -----------------------------------------------------------------------------
@AGENTS.register("diffuser", config=DiffuserConfig)
class DiffuserAgent(OfflineAgent):
    """Diffuser (Janner et al. 2022): trajectory diffusion, value guidance, replanning."""

    def __init__(self, cfg: TrainConfig[DiffuserConfig], ctx: RunContext) -> None:
        super().__init__(cfg, ctx)
        a = cfg.agent
        self.dcfg = a
        self.log_every = a.log_every
        ds = self.data.dataset
        self.act_norm = Normalizer(ds.actions, a.normalizer)
        self.obs_norm = Normalizer(ds.observations, a.normalizer)
        self.act_shift, self.act_scale = self.act_norm.tensors(self.device)
        self.obs_shift, self.obs_scale = self.obs_norm.tensors(self.device)
        self.windows = build_windows(
            ds, a, self.act_norm, self.obs_norm, self.device, self.data.source
        )
        D = self.act_dim + self.obs_dim
        mults = tuple(a.dim_mults)
        self.sched = DiffusionSchedule(a.n_diffusion_steps).to(self.device)
        self.weights = loss_weights(
            a.horizon, self.act_dim, self.obs_dim, a.action_weight, a.loss_discount
        ).to(self.device)
        self.net = TemporalUNet(D, a.dim, mults, a.attention).to(self.device)
        self.value = ValueNet(a.horizon, D, a.dim, mults).to(self.device)
        self.ema_net = copy.deepcopy(self.net).requires_grad_(False)
        self.ema_value = copy.deepcopy(self.value).requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=a.learning_rate)
        self.value_optimizer = torch.optim.Adam(self.value.parameters(), lr=a.learning_rate)
        seed = cfg.run.seed
        self.noise_generator = torch.Generator(device=self.device)
        self.noise_generator.manual_seed(seed + NOISE_SEED_OFFSET)
        self.plan_generator = torch.Generator(device=self.device)
        self.plan_generator.manual_seed(seed + PLAN_SEED_OFFSET)
        self.act_low_t = torch.as_tensor(self.act_low, device=self.device)
        self.act_high_t = torch.as_tensor(self.act_high, device=self.device)

    # -- training ------------------------------------------------------------------------
    def sample_windows(self) -> tuple[Tensor, Tensor]:
        """A batch of windows ``(B, H, D)`` and their value targets ``(B,)``."""
        idx = torch.randint(
            0,
            len(self.windows),
            (self.dcfg.batch_size,),
            generator=self.real_generator,
            device=self.device,
        )
        return self.windows.windows(idx), self.windows.values[idx]

    def update(self, step: int) -> dict[str, float]:
        """One Adam step of the denoiser and (while ``step <= value_updates``) of ``J_φ``."""
        a = self.dcfg
        metrics: dict[str, float] = {}
        self.optimizer.zero_grad(set_to_none=True)
        total, a0 = 0.0, 0.0
        for _ in range(a.grad_accumulate):
            x0, _ = self.sample_windows()
            loss, a0_mse = diffusion_loss(
                self.net,
                self.sched,
                x0,
                self.weights,
                self.act_dim,
                a.predict_epsilon,
                self.noise_generator,
            )
            (loss / a.grad_accumulate).backward()
            total += float(loss.detach()) / a.grad_accumulate
            a0 += float(a0_mse) / a.grad_accumulate
        self.optimizer.step()
        metrics["train/diffusion_loss"], metrics["train/a0_loss"] = total, a0
        train_value = a.value_updates is None or step <= a.value_updates
        if train_value:
            self.value_optimizer.zero_grad(set_to_none=True)
            v_loss, v_pred, v_targ = 0.0, 0.0, 0.0
            for _ in range(a.grad_accumulate):
                x0, target = self.sample_windows()
                loss, pred = value_loss(
                    self.value, self.sched, x0, target, self.act_dim, self.noise_generator
                )
                (loss / a.grad_accumulate).backward()
                v_loss += float(loss.detach()) / a.grad_accumulate
                v_pred += float(pred.mean()) / a.grad_accumulate
                v_targ += float(target.mean()) / a.grad_accumulate
            self.value_optimizer.step()
            metrics["train/value_loss"] = v_loss
            metrics["train/value_pred_mean"] = v_pred
            metrics["train/value_target_mean"] = v_targ
        if (step - 1) % a.ema_every == 0:  # the reference's step counter starts at 0
            pairs: list[tuple[nn.Module, nn.Module]] = [(self.ema_net, self.net)]
            if train_value:
                pairs.append((self.ema_value, self.value))
            for ema, net in pairs:
                if step - 1 < a.ema_start:
                    ema.load_state_dict(net.state_dict())
                else:
                    ema_update(ema, net, a.ema_decay)
        return metrics

    # -- acting --------------------------------------------------------------------------
    def plan(self, obs: Tensor, sample_steps: int | None = None) -> tuple[Tensor, Tensor]:
        """``plan_batch`` candidate plans from each state ``obs (N, O)`` (unnormalised).

        Returns plans ``(N, plan_batch, H, D)`` (normalised) and values ``(N, plan_batch)``.
        ``sample_steps`` overrides the config's (DDIM only).
        """
        a = self.dcfg
        N, K = obs.shape[0], a.plan_batch
        cond = ((obs - self.obs_shift) / self.obs_scale).repeat_interleave(K, dim=0)
        guided = a.n_guide_steps > 0 and a.guide_scale > 0
        plans, values = sample_plans(
            self.ema_net,
            self.sched,
            cond,
            a.horizon,
            self.act_dim,
            value_fn=self.ema_value,
            guide_scale=a.guide_scale,
            n_guide_steps=a.n_guide_steps if guided else 0,
            t_stopgrad=a.t_stopgrad,
            scale_grad_by_std=a.scale_grad_by_std,
            predict_epsilon=a.predict_epsilon,
            clip_denoised=a.clip_denoised,
            sampler=a.sampler,
            sample_steps=a.sample_steps if sample_steps is None else sample_steps,
            ddim_eta=a.ddim_eta,
            generator=self.plan_generator,
        )
        return plans.reshape(N, K, a.horizon, -1), values.reshape(N, K)

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Plan from ``obs (O,)`` (or ``(N, O)``), execute the best plan's first action.

        Sampling draws from the agent's own generator whatever ``deterministic`` says
        (the planner is a sampler; the flag is accepted for the protocol).
        """
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        flat = obs_t.reshape(-1, self.obs_dim)
        plans, values = self.plan(flat)
        best = values.argmax(dim=1)  # (N,)
        first = plans[torch.arange(flat.shape[0], device=self.device), best, 0, : self.act_dim]
        act = first * self.act_scale + self.act_shift
        act = torch.maximum(torch.minimum(act, self.act_high_t), self.act_low_t)
        out: np.ndarray = act.cpu().numpy().astype(np.float32)
        return out.reshape(*obs_t.shape[:-1], self.act_dim)

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy(
            {
                "net": self.net.state_dict(),
                "ema_net": self.ema_net.state_dict(),
                "value": self.value.state_dict(),
                "ema_value": self.ema_value.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "value_optimizer": self.value_optimizer.state_dict(),
                "real_generator": self.real_generator.get_state(),
                "noise_generator": self.noise_generator.get_state(),
                "plan_generator": self.plan_generator.get_state(),
                "prepared": self.prepared,
            }
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.ema_net.load_state_dict(state["ema_net"])
        self.value.load_state_dict(state["value"])
        self.ema_value.load_state_dict(state["ema_value"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.value_optimizer.load_state_dict(state["value_optimizer"])
        self.real_generator.set_state(state["real_generator"].cpu())
        self.noise_generator.set_state(state["noise_generator"].cpu())
        self.plan_generator.set_state(state["plan_generator"].cpu())
        self.prepared = bool(state["prepared"])


__all__ = [
    "DiffuserAgent",
    "DiffuserConfig",
    "DiffusionSchedule",
    "Normalizer",
    "TrajectoryWindows",
    "build_windows",
    "cosine_beta_schedule",
    "diffusion_loss",
    "ema_update",
    "inpaint",
    "loss_weights",
    "sample_plans",
    "sampling_steps",
    "value_loss",
]
