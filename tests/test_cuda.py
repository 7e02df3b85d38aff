"""The same code on a CUDA GPU: every seam that runs per step stays on the device.

Skipped without a GPU (CI has none); run on a GPU machine with
``pytest tests/test_cuda.py tests/test_buffer.py -k cuda``. Each test compares the CUDA
result with the CPU result of the same weights where the computation is deterministic,
and runs the per-step paths under ``torch.cuda.set_sync_debug_mode("error")`` so that a
host round trip (``.item()``, ``.tolist()``, a data-dependent shape) fails the test.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import warnings
from collections.abc import Callable, Iterator
from functools import partial

import numpy as np
import pytest
import torch
from torch import Tensor

from mbrl.agents.sac import SAC, SACConfig
from mbrl.envs import EnvSpec
from mbrl.models.ensemble import EnsembleConfig, ProbabilisticEnsemble
from mbrl.models.koopman import KoopmanConfig, KoopmanModel
from mbrl.models.model_env import PROPAGATIONS, ModelEnv
from mbrl.models.trainer import ModelTrainer, TrainerConfig
from mbrl.models.transformer import TransformerConfig, TransformerModel
from mbrl.planners.cem import CEM, CEMConfig
from mbrl.planners.icem import ICEM, ICEMConfig
from mbrl.planners.mppi import MPPI, MPPIConfig
from mbrl.types import TransitionBatch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

O, A = 5, 2
CUDA = torch.device("cuda")


@contextlib.contextmanager
def no_host_sync() -> Iterator[None]:
    """Any synchronizing CUDA call inside the block raises."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def count_host_syncs(fn: Callable[[], object]) -> int:
    """How many synchronizing CUDA calls ``fn()`` makes (torch's sync debug warnings)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing CUDA operation" in str(w.message) for w in caught)


def reward_fn(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    return next_obs[:, 0] - 0.1 * act.square().sum(1)


def term_fn(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    return next_obs[:, 1].abs() > 3.0


SPEC = EnvSpec(id="cuda-test", termination_fn=term_fn, reward_fn=reward_fn)


def ensemble() -> ProbabilisticEnsemble:
    torch.manual_seed(0)
    m = ProbabilisticEnsemble(O, A, EnsembleConfig(num_members=5, num_elites=3, hidden_size=32))
    g = torch.Generator().manual_seed(1)
    m.fit_normalizer(torch.randn(200, O, generator=g), torch.rand(200, A, generator=g) * 2 - 1)
    return m


@pytest.mark.parametrize("propagation", PROPAGATIONS)
def test_model_env_steps_on_the_gpu_without_host_syncs(propagation: str) -> None:
    env = ModelEnv(ensemble().to(CUDA), SPEC, propagation=propagation)
    start = torch.randn(1000, O, device=CUDA)
    acts = torch.rand(4, 1000, A, device=CUDA) * 2 - 1
    env.reset(start, generator=torch.Generator(device=CUDA).manual_seed(0))
    with no_host_sync():
        for t in range(4):
            st = env.step(acts[t], with_uncertainty=True)
    for x in (st.next_obs, st.rew, st.terminated, st.aleatoric, st.epistemic):
        assert x is not None and x.device.type == "cuda" and x.shape[0] == 1000
        assert bool(torch.isfinite(x.float()).all())


def test_mean_propagation_equals_the_cpu_result() -> None:
    cpu = ensemble()
    start = torch.randn(300, O)
    acts = torch.rand(3, 300, A) * 2 - 1
    outs = []
    for model, dev in ((cpu, "cpu"), (copy.deepcopy(cpu).to(CUDA), "cuda")):
        env = ModelEnv(model, SPEC, propagation="mean")
        env.reset(start.to(dev))
        steps = [env.step(a.to(dev)) for a in acts]
        outs.append([torch.cat([s.next_obs, s.rew[:, None]], 1).cpu() for s in steps])
    for c, g in zip(*outs, strict=True):
        torch.testing.assert_close(g, c, rtol=1e-4, atol=1e-4)


def test_planning_objective_on_the_gpu_equals_the_cpu_result() -> None:
    cpu = ensemble()
    gpu = copy.deepcopy(cpu).to(CUDA)
    acts = torch.rand(2, 64, 10, A) * 2 - 1
    starts = torch.randn(2, O)
    rets = []
    for model, dev in ((cpu, "cpu"), (gpu, "cuda")):
        env = ModelEnv(model, SPEC, propagation="episode_member", deterministic=True)
        env.set_member(1)
        rets.append(env.evaluate_action_sequences(acts.to(dev), starts.to(dev), 3).cpu())
    torch.testing.assert_close(rets[1], rets[0], rtol=1e-4, atol=1e-3)
    # the stochastic TS∞ objective (what PETS plans with) syncs with the host only in its
    # reset (seeding the host-side member draws, reading the elites), never per step
    env = ModelEnv(gpu, SPEC, propagation="fixed_member")
    g = torch.Generator(device=CUDA).manual_seed(0)
    syncs = {}
    for H in (5, 20):
        a_gpu, s_gpu = torch.rand(2, 64, H, A, device=CUDA) * 2 - 1, starts.to(CUDA)
        env.evaluate_action_sequences(a_gpu, s_gpu, 20, generator=g)  # warm-up
        syncs[H] = count_host_syncs(
            partial(env.evaluate_action_sequences, a_gpu, s_gpu, 20, generator=g)
        )
    assert syncs[5] == syncs[20] <= 2, syncs


@pytest.mark.parametrize(
    "planner",
    [
        lambda lo, hi, g: CEM(lo, hi, 6, CEMConfig(), CUDA, g),
        lambda lo, hi, g: ICEM(lo, hi, 6, ICEMConfig(), CUDA, g),
        lambda lo, hi, g: MPPI(lo, hi, 6, MPPIConfig(), CUDA, g),
    ],
    ids=["cem", "icem", "mppi"],
)
def test_planners_find_the_optimum_on_the_gpu(planner: Callable[..., CEM | ICEM | MPPI]) -> None:
    lo, hi = torch.full((A,), -1.0, device=CUDA), torch.ones(A, device=CUDA)
    p = planner(lo, hi, torch.Generator(device=CUDA).manual_seed(0))
    targets = torch.tensor([[0.5, -0.3], [-0.7, 0.2]], device=CUDA)

    def objective(actions: Tensor) -> Tensor:  # (S, P, H, A) -> (S, P)
        assert actions.device.type == "cuda"
        return -((actions - targets[:, None, None]) ** 2).sum((-1, -2))

    for _ in range(10):  # warm-started replanning, as in MPC (the targets are constant)
        plan = p.plan(objective, num_envs=2)
    assert plan.device.type == "cuda" and plan.shape == (2, 6, A)
    torch.testing.assert_close(plan[:, 0], targets, atol=0.2, rtol=0)


def test_ensemble_fit_on_the_gpu_beats_a_constant_prediction() -> None:
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(3000, O, generator=g)
    act = torch.rand(3000, A, generator=g) * 2 - 1
    next_obs = (
        obs + 0.1 * torch.tanh(obs @ torch.randn(O, O, generator=g)) + 0.05 * act.sum(1, True)
    )
    rew = obs[:, 0] * act[:, 0]
    model = ProbabilisticEnsemble(O, A, EnsembleConfig(num_members=3, num_elites=2)).to(CUDA)
    res = ModelTrainer(model, TrainerConfig(max_epochs=30, patience=30)).fit(
        obs, act, rew, next_obs, progress=False
    )
    assert next(iter(model.parameters())).device.type == "cuda"
    mean, _ = model.predict(obs[:500].to(CUDA), act[:500].to(CUDA))
    err = (mean[:, :, :O].mean(0).cpu() - (next_obs[:500] - obs[:500])).square().mean()
    base = (next_obs[:500] - obs[:500]).var(0).mean()
    assert float(err) < 0.1 * float(base), (float(err), float(base), res)


def test_sac_update_on_the_gpu_matches_the_cpu_critic_and_learns() -> None:
    low, high = -np.ones(A, np.float32), np.ones(A, np.float32)
    cfg = SACConfig(hidden_sizes=(64, 64), num_critics=2, batch_size=128)
    torch.manual_seed(0)
    cpu = SAC(O, A, cfg, low, high)
    gpu = SAC(O, A, cfg, low, high, "cuda")
    gpu.load_state_dict(copy.deepcopy(cpu.state_dict()))
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(128, O, generator=g)
    act = torch.rand(128, A, generator=g) * 2 - 1
    batch = TransitionBatch(
        obs=obs, act=act, rew=-obs.square().sum(1), next_obs=obs + 0.1 * act.sum(1, True),
        terminated=torch.zeros(128, dtype=torch.bool), truncated=torch.zeros(128, dtype=torch.bool),
    )  # fmt: skip
    on_gpu = TransitionBatch(*(x.to(CUDA) for x in dataclasses.astuple(batch)))
    torch.testing.assert_close(gpu.critic_values(on_gpu).cpu(), cpu.critic_values(batch),
                               rtol=1e-4, atol=1e-4)  # fmt: skip
    before = gpu.critic_values(on_gpu).detach().clone()
    for _ in range(200):
        info = gpu.update(on_gpu)
    assert all(np.isfinite(v) for v in info.values())
    target = on_gpu.rew  # small discounted bootstrap aside, Q moves towards the rewards
    err_before = (before - target).square().mean()
    err_after = (gpu.critic_values(on_gpu).detach() - target).square().mean()
    assert float(err_after) < 0.5 * float(err_before)


@pytest.mark.parametrize("method", ["scan", "fft"])
def test_koopman_parallel_unroll_equals_recurrence_on_the_gpu(method: str) -> None:
    torch.manual_seed(0)
    cfg = KoopmanConfig(num_members=3, latent_dim=8, hidden_size=32, num_layers=1, horizon=8)
    model = KoopmanModel(O, A, cfg).to(CUDA, torch.float64)
    obs0 = torch.randn(64, O, device=CUDA, dtype=torch.float64)
    act = torch.rand(64, 50, A, device=CUDA, dtype=torch.float64) * 2 - 1
    with no_host_sync():
        par = model.predict_sequence(obs0, act, method=method)
    rec = model.predict_sequence(obs0, act, method="recurrent")
    for p, r in zip(par, rec, strict=True):
        assert p.device.type == "cuda"
        torch.testing.assert_close(p, r, rtol=1e-9, atol=1e-9)


def test_transformer_kv_cache_equals_full_recompute_on_the_gpu() -> None:
    torch.manual_seed(0)
    cfg = TransformerConfig(num_members=3, d_model=32, num_layers=2, num_heads=2, context=6,
                            context_keep=2)  # fmt: skip
    model = TransformerModel(O, A, cfg)
    g = torch.Generator().manual_seed(1)
    model.fit_normalizer(torch.randn(20, 4, O, generator=g), torch.rand(20, 4, A, generator=g),
                         torch.randn(20, 4, generator=g))  # fmt: skip
    model = model.to(CUDA)
    obs0 = torch.randn(16, O, device=CUDA)
    act = torch.rand(16, 13, A, device=CUDA) * 2 - 1
    cached = model.predict_sequence(obs0, act)
    full = model.predict_sequence(obs0, act, use_cache=False)
    for c, f in zip(cached, full, strict=True):
        assert c.device.type == "cuda"
        torch.testing.assert_close(c, f, rtol=1e-4, atol=1e-4)
