"""PSRL: posterior sampling with an ensemble as the posterior, planned by MPC.

Posterior sampling for RL (Osband, Russo, Van Roy 2013, "(More) Efficient Reinforcement
Learning via Posterior Sampling", NeurIPS, arXiv:1306.0940): at the start of every
episode draw one MDP from the posterior, act optimally for it for the whole episode,
update the posterior with the episode's data. MPC-PSRL (Fan & Ming 2021, "Model-based
Reinforcement Learning for Continuous Control with Posterior Sampling", ICML,
arXiv:2012.09613) makes this practical for continuous control by acting with MPC
(CEM) in the sampled model. Here the posterior is the bootstrap ensemble of PETS: one
posterior sample = one elite member, drawn uniformly at the start of every training
episode and used by *every* particle of the planner at every step of the episode
(``ModelEnv`` propagation ``episode_member``); the ensemble is refitted on all data
after the episode (the posterior update) and a new member is drawn.

How this differs from PETS' trajectory sampling: TS∞/TS1 re-sample members *per
particle* (and TS1 per step), and score a plan by its mean return over members, i.e.
PETS plans against the ensemble's average prediction of the outcome, and its
exploration is only the dithering of the optimizer. PSRL commits to one plausible model
for a whole episode and acts greedily in it, so where the members disagree the agent
follows one hypothesis consistently and goes to check it: deep exploration rather than
dithering. Evaluation (``deterministic=True``) plans with the whole ensemble as PETS
does (``propagation``, default TS∞), the best guess rather than a posterior sample.

Deviations and omissions:
    * MPC-PSRL's posterior is Bayesian linear regression on the last layer of the PETS
      network; here it is the bootstrap ensemble (a sample is a member), which needs no
      extra machinery and keeps the PETS model and trainer. Small bootstrap ensembles
      lose diversity as data grows.
    * Randomized prior functions (Osband, Aslanides, Cassirer 2018, arXiv:1806.03335)
      are an option, off by default as in MPC-PSRL: ``--agent.ensemble.prior-scale β``
      (with ``--agent.ensemble.normalize-targets``) adds a fixed random network
      ``β·p_e(s, a)`` to each member's mean (see :mod:`mbrl.models.ensemble`), so the
      members, i.e. the posterior samples, stay diverse where there is no data.
    * The member is drawn among the current elites. With ``train_every > 0`` a refit
      inside an episode keeps the episode's member index (its weights are updated).
    * The planning settings are PETS' (see :mod:`mbrl.agents.pets`); MPC-PSRL used CEM
      with population 500, 50 elites, 5 iterations and horizon 25.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mbrl.agents.pets import PETSAgent, PETSConfig
from mbrl.registry import AGENTS
from mbrl.train import RunContext, TrainConfig

MEMBER_SEED_OFFSET = 50_000


@dataclass
class PSRLConfig(PETSConfig):
    """PSRL hyperparameters: PETS' fields (see :class:`~mbrl.agents.pets.PETSConfig`).

    Training episodes plan with one posterior sample (an elite member) for all particles;
    ``propagation`` (``fixed_member`` = TS∞ or ``random_elite`` = TS1) only applies to
    evaluation, which plans with the whole ensemble. Defaults follow MPC-PSRL (Fan & Ming
    2021): CEM with population 500, elite ratio 0.1 (50 elites), 5 iterations, H 25.
    """

    horizon: int = 25


@AGENTS.register("psrl", config=PSRLConfig)
class PSRLAgent(PETSAgent):
    """Posterior sampling (Osband et al. 2013) with MPC in one ensemble member per episode."""

    propagation = "episode_member"

    def __init__(self, cfg: TrainConfig[PETSConfig], ctx: RunContext) -> None:
        super().__init__(cfg, ctx)
        self.member_generator = torch.Generator().manual_seed(cfg.run.seed + MEMBER_SEED_OFFSET)
        self.member: int | None = None
        self.member_step = -1  # env step of the last draw

    def draw_member(self, step: int) -> int:
        """Draw the posterior sample of the next episode: an elite, uniformly."""
        elites = sorted(int(i) for i in self.model.elite_idx.tolist())
        k = int(torch.randint(len(elites), (1,), generator=self.member_generator))
        self.member, self.member_step = elites[k], step
        self.model_env.set_member(self.member)
        self.ctx.logger.log(step, {"train/psrl_member": float(self.member)})
        return self.member

    def on_model_fitted(self, step: int) -> None:
        if self.member is None:  # the first fit: the first planned episode needs a sample
            self.draw_member(step)

    def on_new_episode(self, step: int) -> None:
        # (the first fit, at the end of the random episode, has just drawn one)
        if self.fitted and self.member_step != step:
            self.draw_member(step)

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "member_generator": self.member_generator.get_state(),
            "member": self.member,
            "member_step": self.member_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.member_generator.set_state(state["member_generator"])
        self.member = None if state["member"] is None else int(state["member"])
        self.member_step = int(state.get("member_step", -1))
        if self.member is not None:
            self.model_env.set_member(self.member)


__all__ = ["PSRLAgent", "PSRLConfig"]
