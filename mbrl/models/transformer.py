"""Transformer dynamics model (TDM): a causal transformer over past (obs, act) steps.

Follows:
    * Schubert, Zhang, Bruce, Bechtle, Parisotto, Riedmiller, Springenberg, Byravan,
      Hasenclever, Heess 2023, "A Generalist Dynamics Model for Control"
      (arXiv:2305.10912): a decoder-only (causal) transformer over a context of past
      observations and actions is the dynamics model; the trajectory is tokenized
      Gato-style (one token per observation dimension and per action dimension, each
      value discretized into bins with a learned embedding) and the next observation
      is predicted token by token (next-token classification); it is used inside MPC.

Two tokenizations (``TransformerConfig.tokenization``):
    * ``"per_step"`` (default, fast): one token per time step,
      ``x_t = W [ŝ_t, â_t] + p_t`` (standardized obs and act, a learned time-position
      embedding ``p``); the output at token ``t`` regresses the standardized
      ``Δobs_t = s_{t+1} − s_t`` and the standardized reward ``r_t`` (MSE).
    * ``"per_dim"`` (the paper's): step ``t`` is ``O`` observation tokens then ``A``
      action tokens; a token is ``E_val[bin(v)] + E_slot[j] + p_t`` (value bin of the
      standardized value, which dimension ``j``, which step ``t``). Next-obs dimensions
      are predicted **autoregressively**, one per token, as in the paper: the output at
      the last action token of step ``t`` classifies ``Δobs_t[0]`` over ``num_bins``
      bins, the output at observation token ``s_{t+1}[j − 1]`` classifies
      ``Δobs_t[j]``, and the output at the last observation token ``s_{t+1}[O − 1]``
      regresses the reward ``r_t`` (it has seen ``s_t, a_t, s_{t+1}``). A prediction is
      the expectation of the bin centers under the softmax (continuous); the predicted
      observation ``s_t + Δ̂`` is binned again to become the next input token. Rolling
      out one step therefore takes ``O + 1`` sequential token steps (slow for large
      ``O``; that is the price of the paper's tokenization).

Context and the key/value cache. Training windows are ``L = context`` consecutive steps
(``per_dim`` also appends the window's final next observation); every position is
trained, so the model predicts from any context of ``1..context`` steps starting at
position 0. Rollouts (:class:`TransformerRollout`, used by :meth:`predict_sequence`)
keep each layer's keys and values (``(E·B, heads, tokens, d_head)`` tensors written in
place) so that a new step costs one token's attention over the cache instead of
recomputing the window. When a rollout would exceed ``context`` steps, the window
restarts from its last ``context_keep`` steps: their tokens are re-embedded at
positions ``0..context_keep − 1`` and prefilled in one pass (a "chunked sliding
window"; every ``context − context_keep + 1`` steps one prefill). The window of each
step is a fixed rule, so the cached rollout equals recomputing the whole window from
scratch for every step (``use_cache=False``), which ``tests/test_transformer.py``
checks to ~1e-5.

Context seen by each interface:
    * :meth:`TransformerModel.predict_sequence` (every member on every row),
      :meth:`~TransformerModel.predict_sequence_grouped` (each row by its own member;
      ModelEnv's MPC objective uses it for ``fixed_member``/``episode_member``) and
      :class:`TransformerRollout`: the start observation and then every predicted step
      of the rollout (the model's own predictions), up to ``context`` steps as above.
    * :meth:`TransformerModel.predict` / :meth:`predict_grouped` (what
      :class:`~mbrl.models.model_env.ModelEnv.step` calls): **one step only**,
      ``(obs_t, act_t)`` — ModelEnv carries observations, not histories — so it is the
      model's prediction from a context of length 1 (trained, as position 0 of every
      window, but without the benefit of history). ModelEnv's MPC objective with
      ``fixed_member``/``episode_member`` uses :meth:`predict_sequence_grouped` and so
      gets the whole rollout as context (``random_elite``/``mean`` step one at a time).

Ensemble: ``E >= 1`` independent transformers (every weight is one ``[E, ...]``
parameter, computed together by batched matmuls; ``member=e`` runs one member on a view
of its slice), trained on their own bootstrap resamples by
:class:`~mbrl.models.seq_trainer.SequenceTrainer`; elites by holdout open-loop error.
Members are deterministic; their disagreement is the epistemic signal.

Measured on this project's 2-core CPU (1 thread, shared with other jobs; defaults, E=5,
HalfCheetah dims O=17, A=6, 400 candidates, H=30, each candidate by its own member):
    * per_step: train step on 5×64 windows of 16 steps 0.11 s; ``predict_sequence_grouped``
      0.2 s = ~60k candidate·steps/s cached vs ~12k recomputing every window (5×); the
      ``E`` members batched in one ``[E, ...]`` pass vs a loop over members: about equal
      on CPU (0.16–0.17 s vs 0.18 s); every member on every candidate
      (``predict_sequence``, 2000 rollouts) 1.1 s.
    * per_dim: train step 7.3 s (385 tokens per window); rollouts ~800 candidate·steps/s
      cached (18 sequential token steps per model step, each reading a cache of up to
      385 keys), ~20× faster than recomputing (measured at H=4: 2.0k vs 0.1k). Its
      open-loop holdout metric during training is correspondingly slow on large holdouts.

Deviations from the paper (which trains one large generalist model on many tasks):
    * Sizes: ``d_model=64``, 2 layers, 4 heads, context 16 steps, 256 bins, so that it
      trains in seconds on a CPU; the paper's models are far larger Gato-style
      transformers trained on large multi-environment datasets (generalist pretraining
      is out of scope here: one model per task, trained on its own data).
    * An ensemble of ``E`` members (the paper: one model) for uncertainty-aware agents.
    * Binning: values are standardized (per-dimension mean/std fitted on the training
      data) and clipped to ``[−bin_range, bin_range]`` before uniform binning (the
      paper uses Gato's: mu-law companding, then 1024 uniform bins); targets are the
      standardized ``Δobs`` (not the next observation's own bin), trained with a
      two-hot target (the two bins around the value, weighted by distance) and read out
      as the expectation over bins, so predictions are not quantized; the loss reported
      is the KL divergence to the two-hot target (cross-entropy minus its entropy, so a
      perfect fit reaches 0).
    * The reward is a scalar regression head (standardized MSE) at the last observation
      token, not a tokenized value.
    * The default ``per_step`` tokenization (one token per step, regression of ``Δobs``)
      is this project's fast mode, not the paper's.
    * The chunked sliding window above (fixed restart rule, ``context_keep``) instead of
      a plain sliding window: it keeps the cache exact and cheap.
    * Pre-LayerNorm blocks, GELU MLP (4×), learned absolute time positions, no dropout.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mbrl.errors import MbrlError, unknown_name
from mbrl.models.members import MemberEnsemble, grouped_apply
from mbrl.models.normalizer import Normalizer
from mbrl.registry import MODELS

TOKENIZATIONS = ("per_step", "per_dim")


@dataclass
class TransformerConfig:
    """Hyperparameters of :class:`TransformerModel` (see the module docstring)."""

    num_members: int = 5
    num_elites: int | None = None  # None: every member is an elite
    tokenization: str = "per_step"  # "per_step" (fast) or "per_dim" (the paper's)
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: int = 4  # MLP hidden size = mlp_ratio * d_model
    context: int = 16  # steps: training window length and the rollout's maximal context
    context_keep: int | None = None  # steps kept when the window restarts (None: context//2)
    num_bins: int = 256  # per_dim: value bins of the standardized values
    bin_range: float = 5.0  # per_dim: bins cover [-bin_range, bin_range] std
    reward_coef: float = 1.0


def _check_config(cfg: TransformerConfig) -> None:
    ints = {
        "num_members": cfg.num_members,
        "d_model": cfg.d_model,
        "num_layers": cfg.num_layers,
        "num_heads": cfg.num_heads,
        "mlp_ratio": cfg.mlp_ratio,
        "context": cfg.context,
    }
    for name, value in ints.items():
        if value < 1:
            raise MbrlError(f"TransformerConfig.{name} must be >= 1, got {value}.")
    if cfg.num_elites is not None and not 1 <= cfg.num_elites <= cfg.num_members:
        raise MbrlError(
            f"TransformerConfig.num_elites must be in [1, num_members={cfg.num_members}], "
            f"got {cfg.num_elites}."
        )
    if cfg.tokenization not in TOKENIZATIONS:
        raise unknown_name(
            "tokenization", cfg.tokenization, TOKENIZATIONS, hint="(TransformerConfig.tokenization)"
        )
    if cfg.d_model % cfg.num_heads:
        raise MbrlError(
            f"TransformerConfig.d_model={cfg.d_model} must be divisible by "
            f"num_heads={cfg.num_heads}."
        )
    if cfg.context_keep is not None and not 1 <= cfg.context_keep <= cfg.context:
        raise MbrlError(
            f"TransformerConfig.context_keep must be in [1, context={cfg.context}] "
            f"(or None for context // 2), got {cfg.context_keep}."
        )
    if cfg.num_bins < 2:
        raise MbrlError(f"TransformerConfig.num_bins must be >= 2, got {cfg.num_bins}.")
    if not cfg.bin_range > 0:
        raise MbrlError(f"TransformerConfig.bin_range must be > 0, got {cfg.bin_range}.")
    if cfg.reward_coef < 0:
        raise MbrlError(f"TransformerConfig.reward_coef must be >= 0, got {cfg.reward_coef}.")


# -- member-batched layers (leading E axis; member=e runs one member on a view) -------------
def _sel(p: Tensor, member: int | None) -> Tensor:
    return p if member is None else p[member : member + 1]


class _Linear(nn.Module):
    """``E`` linear maps as one ``[E, in, out]`` weight; ``x (E', ..., in)``."""

    def __init__(self, E: int, fan_in: int, fan_out: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(fan_in)  # torch.nn.Linear's default init range
        self.weight = nn.Parameter(torch.empty(E, fan_in, fan_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(E, 1, fan_out))

    def forward(self, x: Tensor, member: int | None = None) -> Tensor:
        w, b = _sel(self.weight, member), _sel(self.bias, member)
        h = torch.baddbmm(b, x.reshape(x.shape[0], -1, x.shape[-1]), w)
        return h.reshape(*x.shape[:-1], w.shape[-1])


class _LayerNorm(nn.Module):
    def __init__(self, E: int, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(E, 1, 1, d))
        self.bias = nn.Parameter(torch.zeros(E, 1, 1, d))

    def forward(self, x: Tensor, member: int | None = None) -> Tensor:  # x (E', N, T, d)
        h = F.layer_norm(x, x.shape[-1:])
        return h * _sel(self.weight, member) + _sel(self.bias, member)


class KVCache:
    """One layer's keys and values, ``(E'·N, heads, capacity, d_head)``, filled in place."""

    def __init__(self, rows: int, heads: int, capacity: int, d_head: int, like: Tensor) -> None:
        self.k = like.new_empty(rows, heads, capacity, d_head)
        self.v = like.new_empty(rows, heads, capacity, d_head)
        self.length = 0

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write ``T`` new positions; return every cached key/value so far."""
        end = self.length + k.shape[2]
        if end > self.k.shape[2]:
            raise MbrlError(f"KV cache overflow: {end} > capacity {self.k.shape[2]}.")
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class _Block(nn.Module):
    """Pre-LN transformer block: causal multi-head self-attention then a GELU MLP."""

    def __init__(self, E: int, d: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = _LayerNorm(E, d)
        self.qkv = _Linear(E, d, 3 * d)
        self.proj = _Linear(E, d, d)
        self.ln2 = _LayerNorm(E, d)
        self.fc1 = _Linear(E, d, mlp_ratio * d)
        self.fc2 = _Linear(E, mlp_ratio * d, d)

    def forward(self, x: Tensor, member: int | None, cache: KVCache | None) -> Tensor:
        """``x (E', N, T, d)``: ``T`` new tokens after ``cache.length`` cached ones."""
        Ep, N, T, d = x.shape
        h, dh = self.heads, d // self.heads
        qkv = self.qkv(self.ln1(x, member), member)
        q, k, v = (
            t.reshape(Ep * N, T, h, dh).transpose(1, 2) for t in qkv.split(d, dim=-1)
        )  # (E'N, h, T, dh)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.append(k, v)
        if past == 0:
            att = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        elif T == 1:  # one new token sees every cached one
            att = F.scaled_dot_product_attention(q, k, v)
        else:  # new token i (absolute past + i) sees keys 0..past + i
            pos = torch.arange(past + T, device=x.device)
            mask = pos[None, :] <= (past + torch.arange(T, device=x.device))[:, None]
            att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        att = att.transpose(1, 2).reshape(Ep, N, T, d)
        x = x + self.proj(att, member)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x, member), member)), member)


@MODELS.register(
    "transformer",
    config=TransformerConfig,
    description="ensemble of causal transformers over (obs, act) steps, KV-cached rollouts "
    "(TDM: Schubert et al. 2023)",
)
class TransformerModel(MemberEnsemble):
    """Ensemble of ``E`` deterministic causal-transformer dynamics models.

    Args:
        obs_dim: ``O``.
        act_dim: ``A``.
        cfg: hyperparameters; ``None`` uses the defaults.

    Attributes:
        out_dim: ``O + 1``: the one-step interface returns ``(Δobs, rew)``.
        elite_idx: ``(num_elites,)`` long buffer, the members used for rollouts.
        deterministic: always True (``ModelEnv`` draws no noise for it).
        learned_termination: always False.
        tokens_per_step: ``1`` (per_step) or ``O + A`` (per_dim).
    """

    kind = "transformer model"
    elite_idx: Tensor
    centers: Tensor  # per_dim: (num_bins,) bin centers of the standardized values

    def __init__(self, obs_dim: int, act_dim: int, cfg: TransformerConfig | None = None) -> None:
        super().__init__()
        cfg = cfg if cfg is not None else TransformerConfig()
        _check_config(cfg)
        if obs_dim < 1 or act_dim < 1:
            raise MbrlError(
                f"transformer model needs obs_dim >= 1 and act_dim >= 1, got {obs_dim}, {act_dim}."
            )
        self.cfg = cfg
        self.obs_dim = O = obs_dim
        self.act_dim = A = act_dim
        self.num_members = E = cfg.num_members
        self.out_dim = obs_dim + 1
        self.deterministic = True
        self.learned_termination = False
        self.per_dim = cfg.tokenization == "per_dim"
        self.tokens_per_step = O + A if self.per_dim else 1
        self.context_keep = cfg.context // 2 if cfg.context_keep is None else cfg.context_keep
        self.context_keep = max(1, self.context_keep)
        d = cfg.d_model
        n_pos = cfg.context + 1 if self.per_dim else cfg.context
        self.pos_emb = nn.Parameter(torch.randn(E, n_pos, d) * 0.02)
        if self.per_dim:
            self.value_emb = nn.Parameter(torch.randn(E, cfg.num_bins, d) * 0.02)
            self.slot_emb = nn.Parameter(torch.randn(E, O + A, d) * 0.02)
            self.bin_head = _Linear(E, d, cfg.num_bins)
            self.rew_head = _Linear(E, d, 1)
            self.register_buffer(
                "centers", torch.linspace(-cfg.bin_range, cfg.bin_range, cfg.num_bins)
            )
        else:
            self.embed = _Linear(E, O + A, d)
            self.head = _Linear(E, d, O + 1)
        self.blocks = nn.ModuleList(
            _Block(E, d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.num_layers)
        )
        self.ln_f = _LayerNorm(E, d)
        self.obs_normalizer = Normalizer(obs_dim)
        self.act_normalizer = Normalizer(act_dim)
        self.delta_normalizer = Normalizer(obs_dim)
        self.rew_normalizer = Normalizer(1)
        num_elites = cfg.num_members if cfg.num_elites is None else cfg.num_elites
        self.register_buffer("elite_idx", torch.arange(num_elites))

    # -- basics ----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.pos_emb.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pos_emb.dtype

    @torch.no_grad()
    def fit_normalizer(self, obs: Tensor, act: Tensor, rew: Tensor) -> None:
        """Fit the standardization of obs ``(N, L, O)``, act ``(N, L, A)``, rew ``(N, L)``.

        The ``Δobs`` statistics come from consecutive steps of the windows
        (``obs[:, 1:] − obs[:, :-1]``; windows are consecutive steps of one episode);
        with ``L = 1`` (or flat ``(N, O)`` data) there is no Δ, and ``Δobs`` is scaled
        by the observation std instead.
        """
        self.obs_normalizer.fit(obs.reshape(-1, self.obs_dim))
        self.act_normalizer.fit(act.reshape(-1, self.act_dim))
        self.rew_normalizer.fit(rew.reshape(-1, 1))
        if obs.ndim == 3 and obs.shape[1] >= 2:
            self.delta_normalizer.fit((obs[:, 1:] - obs[:, :-1]).reshape(-1, self.obs_dim))
        else:
            self.delta_normalizer.mean.zero_()
            self.delta_normalizer.std.copy_(self.obs_normalizer.std)

    # -- tokens ----------------------------------------------------------------------------
    def _to_bins(self, z: Tensor) -> Tensor:
        """Standardized values ``(...)`` -> nearest bin index ``(...)`` long."""
        r, nb = self.cfg.bin_range, self.cfg.num_bins
        return torch.round((z.clamp(-r, r) + r) * ((nb - 1) / (2 * r))).long()

    def _value_tokens(self, bins: Tensor, slots: slice, member: int | None) -> Tensor:
        """Bins ``(E', N, S, k)`` of slots ``slots`` -> content embeddings ``(E', N, S, k, d)``."""
        Ep = bins.shape[0]
        table = _sel(self.value_emb, member)  # (E', nb, d)
        emb = torch.gather(
            table, 1, bins.reshape(Ep, -1, 1).expand(-1, -1, table.shape[-1])
        ).reshape(*bins.shape, -1)
        return emb + _sel(self.slot_emb, member)[:, None, None, slots]

    def step_content(self, obs: Tensor, act: Tensor | None, member: int | None = None) -> Tensor:
        """Content embeddings (without the time position) of steps.

        Args:
            obs: raw ``(E', N, S, O)``.
            act: raw ``(E', N, S, A)``, or ``None`` (per_dim only: observation tokens only).

        Returns:
            per_step ``(E', N, S, 1, d)``; per_dim ``(E', N, S, O [+ A], d)``.
        """
        o = self.obs_normalizer.normalize(obs)
        if not self.per_dim:
            assert act is not None
            x = torch.cat([o, self.act_normalizer.normalize(act)], dim=-1)
            return self.embed(x, member).unsqueeze(-2)
        tok = self._value_tokens(self._to_bins(o), slice(0, self.obs_dim), member)
        if act is None:
            return tok
        a = self._value_tokens(
            self._to_bins(self.act_normalizer.normalize(act)),
            slice(self.obs_dim, self.obs_dim + self.act_dim),
            member,
        )
        return torch.cat([tok, a], dim=-2)

    def run(
        self,
        content: Tensor,
        times: Tensor,
        member: int | None = None,
        caches: list[KVCache] | None = None,
    ) -> Tensor:
        """Transformer over ``T`` tokens: content ``(E', N, T, d)`` plus the time position
        ``times (T,)`` (step index within the window) -> final hidden ``(E', N, T, d)``.
        With ``caches`` (one per layer) the tokens follow the cached ones."""
        x = content + _sel(self.pos_emb, member)[:, None, times]
        for i, block in enumerate(self.blocks):
            x = block(x, member, None if caches is None else caches[i])
        return self.ln_f(x, member)

    def new_caches(
        self, rows: int, member: int | None = None, steps: int | None = None
    ) -> list[KVCache]:
        """Empty per-layer caches for ``rows`` sequences (of each member, or one), with
        room for ``steps`` steps (``None``: a whole context)."""
        Ep = self.num_members if member is None else 1
        steps = self.cfg.context if steps is None else min(steps, self.cfg.context)
        cap = steps * self.tokens_per_step + (self.obs_dim if self.per_dim else 0)
        d, h = self.cfg.d_model, self.cfg.num_heads
        return [KVCache(Ep * rows, h, cap, d // h, self.pos_emb) for _ in self.blocks]

    def _bin_mean(self, hidden: Tensor, member: int | None) -> Tensor:
        """Hidden ``(E', ...)`` -> expected standardized value over the bins ``(E', ...)``."""
        logits = self.bin_head(hidden, member)
        return torch.softmax(logits, dim=-1) @ self.centers

    # -- training ----------------------------------------------------------------------------
    def _window(
        self, obs: Tensor, act: Tensor, rew: Tensor, next_obs: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        obs = self._members(obs, 3, "obs")
        act = self._members(act, 3, "act")
        rew = self._members(rew, 2, "rew")
        next_obs = self._members(next_obs, 3, "next_obs")
        if not (obs.shape[:3] == act.shape[:3] == rew.shape[:3] == next_obs.shape[:3]):
            raise MbrlError(
                "transformer model: obs, act, rew, next_obs windows need the same (E, B, L), "
                f"got {tuple(obs.shape)}, {tuple(act.shape)}, {tuple(rew.shape)}, "
                f"{tuple(next_obs.shape)}."
            )
        if obs.shape[2] > self.cfg.context:
            raise MbrlError(
                f"transformer model: windows of {obs.shape[2]} steps exceed "
                f"TransformerConfig.context={self.cfg.context}; cut windows of at most that."
            )
        return obs, act, rew, next_obs

    def _teacher_forced(self, obs: Tensor, act: Tensor, next_obs: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher-forced outputs of a window: per_step ``(E, B, L, O + 1)`` regression
        outputs and ``None``-free; per_dim the bin logits ``(E, B, L, O, nb)`` and reward
        outputs ``(E, B, L)``. Returned as ``(obs_out, rew_out)``."""
        E, B, L, O = obs.shape
        times = torch.arange(L, device=obs.device)
        if not self.per_dim:
            h = self.run(self.step_content(obs, act)[..., 0, :], times)
            out = self.head(h)
            return out[..., :O], out[..., O]
        k = O + self.act_dim
        steps = self.step_content(obs, act).reshape(E, B, L * k, -1)
        last = self.step_content(next_obs[:, :, -1:], None).reshape(E, B, O, -1)
        content = torch.cat([steps, last], dim=2)
        tok_times = torch.cat([times.repeat_interleave(k), torch.full((O,), L, device=obs.device)])
        h = self.run(content, tok_times)  # (E, B, L·k + O, d)
        # Δobs_t[0] from the last act token of step t; Δobs_t[j] from s_{t+1}[j − 1]
        base = torch.arange(L, device=obs.device) * k
        idx = torch.cat(
            [(base + k - 1)[:, None], (base + k)[:, None] + torch.arange(O - 1, device=obs.device)],
            dim=1,
        )  # (L, O)
        hid = h[:, :, idx]  # (E, B, L, O, d)
        rew_hid = h[:, :, base + k + O - 1]  # (E, B, L, d): token s_{t+1}[O − 1]
        return self.bin_head(hid), self.rew_head(rew_hid)[..., 0]

    def sequence_loss(
        self, obs: Tensor, act: Tensor, rew: Tensor, next_obs: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Teacher-forced loss over windows (every position predicts its next step).

        Args:
            obs: ``(E, B, L, O)`` or ``(B, L, O)``; act ``(…, L, A)``; rew ``(…, L)``;
                next_obs ``(…, L, O)``, raw units, ``L <= context`` consecutive steps.

        Returns:
            ``(loss, per_member)``: the sum over members and the ``(E,)`` detached
            per-member losses. per_step: MSE of the standardized ``Δobs`` plus
            ``reward_coef`` × MSE of the standardized reward; per_dim: the mean KL
            divergence of the bin distributions to the two-hot ``Δobs`` targets plus
            ``reward_coef`` × reward MSE.
        """
        obs, act, rew, next_obs = self._window(obs, act, rew, next_obs)
        delta = self.delta_normalizer.normalize(next_obs - obs)
        r = self.rew_normalizer.normalize(rew.unsqueeze(-1))[..., 0]
        obs_out, rew_out = self._teacher_forced(obs, act, next_obs)
        if self.per_dim:
            target = self._two_hot(delta)  # (E, B, L, O, nb)
            logp = torch.log_softmax(obs_out, dim=-1)
            ent = torch.special.xlogy(target, target).sum(-1)  # −H(target)
            state = (ent - (target * logp).sum(-1)).mean(dim=(1, 2, 3))
        else:
            state = (obs_out - delta).square().mean(dim=(1, 2, 3))
        reward = (rew_out - r).square().mean(dim=(1, 2))
        per_member = state + self.cfg.reward_coef * reward
        return per_member.sum(), per_member.detach()

    def _two_hot(self, z: Tensor) -> Tensor:
        """Standardized values ``(...)`` -> two-hot weights over the bins ``(..., nb)``."""
        r, nb = self.cfg.bin_range, self.cfg.num_bins
        pos = (z.clamp(-r, r) + r) * ((nb - 1) / (2 * r))
        lo = pos.floor().clamp(max=nb - 2)
        w_hi = pos - lo
        out = z.new_zeros(*z.shape, nb)
        out.scatter_(-1, lo.long().unsqueeze(-1), (1 - w_hi).unsqueeze(-1))
        out.scatter_add_(-1, lo.long().unsqueeze(-1) + 1, w_hi.unsqueeze(-1))
        return out

    @torch.no_grad()
    def sequence_mse(self, obs: Tensor, act: Tensor, rew: Tensor, next_obs: Tensor) -> Tensor:
        """Holdout metric ``(E,)``: open-loop error over the window from ``obs[..., 0, :]``
        (KV-cached rollout), standardized units — the mean over steps of the observation
        MSE plus the reward MSE (the same metric as the Koopman model's)."""
        obs, act, rew, next_obs = self._window(obs, act, rew, next_obs)
        pred, prew = self.predict_sequence(obs[:, :, 0], act)
        norm = self.obs_normalizer.normalize
        state = (norm(pred) - norm(next_obs)).square().mean(dim=(1, 2, 3))
        rn = self.rew_normalizer.normalize
        reward = (rn(prew.unsqueeze(-1)) - rn(rew.unsqueeze(-1))).square().mean(dim=(1, 2, 3))
        return state + reward

    # -- rollouts ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict_sequence(
        self, obs0: Tensor, act: Tensor, use_cache: bool = True, with_reward: bool = True
    ) -> tuple[Tensor, Tensor]:
        """Open-loop prediction of a whole action sequence, every member, raw units.

        Args:
            obs0: ``(E, B, O)`` or ``(B, O)`` start observations.
            act: ``(E, B, H, A)`` or ``(B, H, A)`` actions.
            use_cache: ``False`` recomputes every step's window from scratch (the
                reference the cache is tested against; slow).
            with_reward: accepted for the ``ModelEnv`` interface and ignored (see
                :meth:`predict_sequence_grouped`).

        Returns:
            ``next_obs (E, B, H, O)`` (entry ``t``: after ``t + 1`` steps), ``rew (E, B, H)``.
        """
        obs0 = self._members(obs0, 2, "obs0").to(self.dtype)
        act = self._members(act, 3, "act").to(self.dtype)
        return self._rollout(obs0, act, None, use_cache)

    @torch.no_grad()
    def predict_sequence_grouped(
        self,
        obs0: Tensor,
        act: Tensor,
        counts: Sequence[int],
        order: Tensor | None = None,
        use_cache: bool = True,
        with_reward: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """Open-loop rollouts, each row through its own member only (``E``× less work
        than :meth:`predict_sequence`, which runs every member on every row).

        ``with_reward`` is accepted for the ``ModelEnv`` interface and ignored: the reward
        is one linear head on the shared trunk, so it is always returned.

        Args:
            obs0: ``(B, O)``; act: ``(B, H, A)`` raw.
            counts, order: rows ``order[s_e : s_e + counts[e]]`` belong to member ``e``
                (``order=None``: already grouped in member order), as in
                :meth:`predict_grouped`.

        Returns:
            ``next_obs (B, H, O)`` and ``rew (B, H)``, row-aligned with the inputs.
        """
        B, H = act.shape[:2]
        if len(counts) != self.num_members or sum(counts) != B or obs0.shape[0] != B:
            raise MbrlError(
                f"predict_sequence_grouped needs {self.num_members} counts summing to "
                f"B={B} (obs0 {tuple(obs0.shape)}), got {list(counts)}."
            )
        obs0, act = obs0.to(self.dtype), act.to(self.dtype)
        groups, start = [], 0  # (member, its row indices)
        for e, n in enumerate(counts):
            if n:
                rows = order[start : start + n] if order is not None else None
                if rows is None:
                    rows = torch.arange(start, start + n, device=obs0.device)
                groups.append((e, rows))
            start += n
        nobs = obs0.new_empty(B, H, self.obs_dim)
        rew = obs0.new_empty(B, H)
        M = max(counts)
        if len(groups) > 1 and self.num_members * M <= 2 * B:
            # all members at once (one batched pass per layer instead of E), each member's
            # rows padded to M by repeating its first row; the padding is discarded
            idx = torch.empty(self.num_members, M, dtype=torch.long, device=obs0.device)
            idx[:] = groups[0][1][0]
            for e, rows in groups:
                idx[e, : rows.numel()] = rows
                idx[e, rows.numel() :] = rows[0]
            o, r = self._rollout(obs0[idx], act[idx], None, use_cache)  # (E, M, H, ·)
            for e, rows in groups:
                nobs[rows], rew[rows] = o[e, : rows.numel()], r[e, : rows.numel()]
            return nobs, rew
        for e, rows in groups:  # one member at a time (e.g. a single member for all rows)
            o, r = self._rollout(obs0[rows][None], act[rows][None], e, use_cache)
            nobs[rows], rew[rows] = o[0], r[0]
        return nobs, rew

    def _rollout(
        self, obs0: Tensor, act: Tensor, member: int | None, use_cache: bool
    ) -> tuple[Tensor, Tensor]:
        """``obs0 (E', B, O)``, ``act (E', B, H, A)`` -> ``(E', B, H, O)``, ``(E', B, H)``."""
        roll = TransformerRollout(self, obs0, member, use_cache, horizon=act.shape[2])
        outs = [roll.step(act[:, :, t]) for t in range(act.shape[2])]
        if not outs:
            return obs0.new_zeros(*obs0.shape[:2], 0, self.obs_dim), obs0.new_zeros(
                *obs0.shape[:2], 0
            )
        return torch.stack([o for o, _ in outs], 2), torch.stack([r for _, r in outs], 2)

    # -- one-step interface (RolloutModel) -------------------------------------------------
    @torch.no_grad()
    def predict(self, obs: Tensor, act: Tensor) -> tuple[Tensor, None]:
        """One step from a one-step context, every member: ``obs (E, B, O)``/``(B, O)``,
        ``act`` likewise -> ``(E, B, O + 1)`` raw ``(Δobs, rew)`` and ``None``."""
        obs = self._members(obs, 2, "obs").to(self.dtype)
        act = self._members(act, 2, "act").to(self.dtype)
        nobs, rew = TransformerRollout(self, obs, horizon=1).step(act)
        return torch.cat([nobs - obs, rew.unsqueeze(-1)], dim=-1), None

    @torch.no_grad()
    def predict_grouped(
        self,
        obs: Tensor,
        act: Tensor,
        counts: Sequence[int],
        order: Tensor | None = None,
        noise: Tensor | None = None,
        out: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """One step per row through its own member (the :class:`RolloutModel` contract).

        The context is the row's current step only, ``(obs_t, act_t)`` (ModelEnv keeps no
        history). Rows ``order[s_e : s_e + counts[e]]`` belong to member ``e``
        (``order=None``: already grouped in member order). ``noise`` and ``out`` are
        ignored (deterministic members).

        Args:
            obs: ``(N, O)`` raw; act: ``(N, A)`` raw; counts: ``E`` row counts summing to N.

        Returns:
            ``(N, O + 1)`` raw ``(Δobs, rew)`` row-aligned with the inputs, and ``None``.
        """

        def member_step(e: int, xo: Tensor, xa: Tensor) -> Tensor:
            nobs, rew = TransformerRollout(self, xo[None], e, horizon=1).step(xa[None])
            return torch.cat([nobs[0] - xo, rew[0].unsqueeze(-1)], dim=-1)

        obs, act = obs.to(self.dtype), act.to(self.dtype)
        out = grouped_apply(obs, act, counts, order, self.num_members, self.out_dim, member_step)
        return out, None


class TransformerRollout:
    """A batched, stateful open-loop rollout of a :class:`TransformerModel`.

    ``TransformerRollout(model, obs0)`` starts ``E'·B`` rollouts at ``obs0 (E', B, O)``
    (``E' = E``, or 1 with ``member=e``); each :meth:`step` with ``act (E', B, A)``
    appends the step to the context and returns ``(next_obs (E', B, O), rew (E', B))``
    raw. The context restarts from the last ``model.context_keep`` steps when it would
    exceed ``cfg.context`` steps (module docstring). ``use_cache=False`` recomputes the
    whole window for every prediction (reference for the KV cache). ``horizon``: the
    number of steps that will be taken, if known (sizes the cache; ``None``: a context).
    """

    def __init__(
        self,
        model: TransformerModel,
        obs0: Tensor,
        member: int | None = None,
        use_cache: bool = True,
        horizon: int | None = None,
    ) -> None:
        self.model = model
        self.member = member
        self.use_cache = use_cache
        self.horizon = horizon
        self.obs_hist: list[Tensor] = [obs0]  # raw observations s_0 .. s_t, (E', B, O)
        self.act_hist: list[Tensor] = []  # raw actions a_0 .. a_{t-1}
        self.start = 0  # window start (absolute step)
        Ep, B = obs0.shape[:2]
        self.shape = (Ep, B)
        self.caches: list[KVCache] | None = None
        self.tokens: Tensor | None = None  # uncached: content of the window so far
        self.times: Tensor | None = None

    # token feeding: both modes see exactly the same tokens; only the computation differs
    def _reset_window(self) -> None:
        for cache in self.caches or []:
            cache.length = 0  # the buffers are reused
        self.tokens = self.times = None

    def _feed(self, content: Tensor, times: Tensor) -> Tensor:
        """Append tokens ``(E', B, T, d)`` at window times ``(T,)``; hidden of the last."""
        m = self.model
        if self.use_cache:
            if self.caches is None:
                self.caches = m.new_caches(self.shape[1], self.member, self.horizon)
            return m.run(content, times, self.member, self.caches)[:, :, -1]
        self.tokens = content if self.tokens is None else torch.cat([self.tokens, content], 2)
        self.times = times if self.times is None else torch.cat([self.times, times])
        return m.run(self.tokens, self.times, self.member)[:, :, -1]

    def _step_tokens(self, obs: Tensor, act: Tensor | None) -> Tensor:
        c = self.model.step_content(obs[:, :, None], None if act is None else act[:, :, None])
        return c[:, :, 0]  # (E', B, k, d)

    @torch.no_grad()
    def step(self, act: Tensor) -> tuple[Tensor, Tensor]:
        m, cfg, dev = self.model, self.model.cfg, self.obs_hist[0].device
        t = len(self.act_hist)
        obs = self.obs_hist[-1]
        if t - self.start + 1 > cfg.context:  # restart: keep the last context_keep steps
            self.start = t - m.context_keep + 1
            self._reset_window()
        new_window = self.tokens is None and (self.caches is None or self.caches[0].length == 0)
        self.act_hist.append(act)
        rel = t - self.start  # time position of step t in the window
        if not m.per_dim:
            if new_window:  # prefill the kept steps and the new one at once
                o = torch.stack(self.obs_hist[self.start :], 2)
                a = torch.stack(self.act_hist[self.start :], 2)
                content = m.step_content(o, a, self.member)[..., 0, :]
                times = torch.arange(rel + 1, device=dev)
            else:
                content = m.step_content(obs[:, :, None], act[:, :, None], self.member)[..., 0, :]
                times = torch.tensor([rel], device=dev)
            h = self._feed(content, times)  # (E', B, d)
            out = m.head(h, self.member)
            delta = m.delta_normalizer.denormalize(out[..., : m.obs_dim])
            nobs = obs + delta
            rew = m.rew_normalizer.denormalize(out[..., m.obs_dim :])[..., 0]
            self.obs_hist.append(nobs)
            return nobs, rew
        # per_dim: [s_start a_start ... s_t] then a_t, then generate s_{t+1} dim by dim
        O, A, k = m.obs_dim, m.act_dim, m.tokens_per_step
        if new_window:
            o = torch.stack(self.obs_hist[self.start :], 2)  # (E', B, rel + 1, O)
            a = torch.stack(self.act_hist[self.start :], 2)  # (E', B, rel + 1, A)
            content = m.step_content(o, a, self.member).flatten(2, 3)
            times = torch.arange(rel + 1, device=dev).repeat_interleave(k)
        else:
            content = m.step_content(obs[:, :, None], act[:, :, None], self.member)[
                :, :, 0, O:
            ]  # the a_t tokens (s_t is already in the window)
            times = torch.full((A,), rel, device=dev)
        h = self._feed(content, times)
        next_time = torch.tensor([rel + 1], device=dev)
        dn, on = m.delta_normalizer, m.obs_normalizer
        values: list[Tensor] = []
        for j in range(O):  # s_{t+1}[j] from the last token, then fed back as a token
            dz = m._bin_mean(h, self.member)  # standardized Δobs_t[j], (E', B)
            v = obs[..., j] + (dz * dn.std[j] + dn.mean[j])
            values.append(v)
            bins = m._to_bins((v - on.mean[j]) / on.std[j])[:, :, None, None]
            tok = m._value_tokens(bins, slice(j, j + 1), self.member)  # (E', B, 1, 1, d)
            h = self._feed(tok[:, :, 0], next_time)
        nobs = torch.stack(values, -1)
        rew = m.rew_normalizer.denormalize(m.rew_head(h, self.member))[..., 0]
        self.obs_hist.append(nobs)
        return nobs, rew


def transformer_step_fn(
    model: TransformerModel,
) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """A stateful ``step_fn (obs (B, O), act (B, A)) -> (next_obs (B, O), rew (B,))`` for
    :func:`~mbrl.models.evaluation.open_loop_errors_detailed`: the mean over elites.

    While it is fed back the tensor it returned last, every member keeps its own rollout
    (its own predictions as context, KV-cached); any other ``obs`` starts new rollouts.
    """
    state: dict[str, Any] = {"last": None, "roll": None}

    @torch.no_grad()
    def step(obs: Tensor, act: Tensor) -> tuple[Tensor, Tensor]:
        roll = state["roll"]
        if state["last"] is not obs or roll is None:
            o = model._members(obs.to(model.dtype), 2, "obs")
            roll = TransformerRollout(model, o)
        nobs, rew = roll.step(model._members(act.to(model.dtype), 2, "act"))
        elites = model.elite_idx
        next_obs = nobs.index_select(0, elites).mean(0).to(obs.dtype)
        state.update(last=next_obs, roll=roll)
        return next_obs, rew.index_select(0, elites).mean(0).to(obs.dtype)

    return step


__all__ = [
    "TOKENIZATIONS",
    "KVCache",
    "TransformerConfig",
    "TransformerModel",
    "TransformerRollout",
    "transformer_step_fn",
]
