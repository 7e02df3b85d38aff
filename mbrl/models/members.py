"""What every ensemble dynamics model shares: members on a leading axis, and elites.

The probabilistic ensemble (:mod:`mbrl.models.ensemble`), the Koopman ensemble
(:mod:`mbrl.models.koopman`) and the transformer ensemble (:mod:`mbrl.models.transformer`)
keep every parameter with the member axis first, ``(E, ...)``, and a buffer ``elite_idx``
naming the members used for rollouts. :class:`MemberEnsemble` holds the bookkeeping the
trainers rely on (per-member snapshots, choosing elites, loading a checkpoint whose elite
count differs); :func:`grouped_apply` is the one-member-per-row loop of
``predict_grouped`` for models that run one member at a time, and
:func:`padded_member_rows` lays each member's rows out as one ``(E, M)`` batch so that a
model that computes all members together runs each row through its own member only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mbrl.errors import MbrlError


class MemberEnsemble(nn.Module):
    """Base class of ensembles whose parameters all have the member axis first.

    Subclasses set :attr:`num_members` and register the ``elite_idx`` buffer
    (``(num_elites,)`` long) in ``__init__``; :attr:`kind` names the model in messages.
    """

    kind: str = "model"
    num_members: int
    elite_idx: Tensor

    @property
    def num_elites(self) -> int:
        return int(self.elite_idx.numel())

    def member_state(self, i: int) -> dict[str, Tensor]:
        """Cloned parameters of member ``i`` (for per-member best snapshots)."""
        return {name: p[i].detach().clone() for name, p in self.named_parameters()}

    @torch.no_grad()
    def load_member_state(self, i: int, state: dict[str, Tensor]) -> None:
        """Write a :meth:`member_state` snapshot back into member ``i``."""
        params = dict(self.named_parameters())
        if set(state) != set(params):
            raise MbrlError(
                f"member state has keys {sorted(state)}, this {self.kind} expects {sorted(params)}."
            )
        for name, value in state.items():
            params[name][i].copy_(value)

    @torch.no_grad()
    def set_elites(self, idx: Tensor | Sequence[int]) -> None:
        """Choose the elite members (e.g. the lowest holdout MSE): distinct, at least one."""
        t = torch.as_tensor(idx, dtype=torch.long).flatten()
        if t.numel() == 0 or int(t.min()) < 0 or int(t.max()) >= self.num_members:
            raise MbrlError(
                f"elite indices must be a non-empty subset of 0..{self.num_members - 1}, "
                f"got {t.tolist()}."
            )
        if t.unique().numel() != t.numel():
            raise MbrlError(f"elite indices must be distinct, got {t.tolist()}.")
        self.elite_idx = t.to(self.elite_idx.device)

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # the elite count is the trainer's choice: take the saved one's size
        saved = state_dict.get(prefix + "elite_idx")
        if isinstance(saved, Tensor):
            self.elite_idx = torch.empty_like(saved, device=self.elite_idx.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _members(self, x: Tensor, ndim: int, what: str) -> Tensor:
        """Broadcast ``x`` without a member axis (``ndim`` dims) to ``(E, ...)``."""
        if x.ndim == ndim:
            return x.unsqueeze(0).expand(self.num_members, *x.shape)
        if x.ndim == ndim + 1 and x.shape[0] == self.num_members:
            return x
        raise MbrlError(
            f"{self.kind}: {what} must have {ndim} dims (shared by all members) or "
            f"{ndim + 1} with E={self.num_members} first, got shape {tuple(x.shape)}."
        )


def grouped_apply(
    obs: Tensor,
    act: Tensor,
    counts: Sequence[int],
    order: Tensor | None,
    num_members: int,
    out_dim: int,
    fn: Callable[[int, Tensor, Tensor], Tensor],
) -> Tensor:
    """Each row through its own member: ``fn(e, obs_e (n, O), act_e (n, A)) -> (n, out_dim)``.

    Rows ``order[s_e : s_e + counts[e]]`` (``s_e = sum(counts[:e])``) belong to member
    ``e``; with ``order=None`` they are already grouped contiguously in member order.
    Returns ``(N, out_dim)`` row-aligned with the inputs.
    """
    N = obs.shape[0]
    if len(counts) != num_members or sum(counts) != N:
        raise MbrlError(
            f"predict_grouped needs {num_members} counts summing to N={N}, got {list(counts)}."
        )
    result = torch.empty(N, out_dim, device=obs.device, dtype=obs.dtype)
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        idx = None if order is None else order[start : start + n]
        xo = obs[start : start + n] if idx is None else obs.index_select(0, idx)
        xa = act[start : start + n] if idx is None else act.index_select(0, idx)
        rows = fn(e, xo, xa)
        if idx is None:
            result[start : start + n] = rows
        else:
            result.index_copy_(0, idx, rows)
        start += n
    return result


def padded_member_rows(counts: Sequence[int], order: Tensor | None, device: torch.device) -> Tensor:
    """``(E, M)`` row indices, ``M = max(counts)``: row ``e`` lists member ``e``'s rows
    (``order[s_e : s_e + counts[e]]``, or ``s_e ..`` with ``order=None``), padded by
    repeating one of them (a member without rows repeats row 0). Running every member on
    its own ``(M,)`` slice costs ``E·M`` member-rows instead of ``E·N`` for all members on
    all ``N`` rows (``≈ N`` when the counts are balanced, as TS∞ particles are); drop the
    padding with :func:`scatter_member_rows`.
    """
    E, M = len(counts), max(max(counts), 1)
    idx = torch.zeros(E, M, dtype=torch.long, device=device)
    start = 0
    for e, n in enumerate(counts):
        if n:
            rows = (
                order[start : start + n]
                if order is not None
                else torch.arange(start, start + n, device=device)
            )
            idx[e, :n] = rows
            idx[e, n:] = rows[0]
        start += n
    return idx


def scatter_member_rows(values: Tensor, idx: Tensor, counts: Sequence[int], n: int) -> Tensor:
    """Inverse of :func:`padded_member_rows`: ``values (E, M, ...)`` -> ``(n, ...)``."""
    out = values.new_empty(n, *values.shape[2:])
    for e, c in enumerate(counts):
        if c:
            out[idx[e, :c]] = values[e, :c]
    return out
