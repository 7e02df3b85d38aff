"""Time mbrl-lib's ``ModelEnv.step`` (the comparison side of ``bench_rollout.py``).

Runs in a SEPARATE virtualenv with mbrl-lib installed (``setup_mbrllib_venv.sh``):
mbrl-lib also imports as ``mbrl``. Prints one JSON object on stdout.

Setup mirrors ``bench_rollout.py``: HalfCheetah dims (obs 17, act 6), a
``GaussianMLP`` ensemble of 7 members × 4 hidden layers × 200 SiLU units with learned
log-variance bounds, wrapped in ``OneDTransitionRewardModel`` (Δobs targets, learned
reward, input normalization), ``propagation_method="random_model"`` (mbrl-lib's TS1:
each member gets exactly batch/7 rows of a random permutation), all 7 members in use,
the same batched reward function and no termination; ``step(..., sample=True)``
returns torch tensors (no numpy conversion).

Usage: python benchmarks/mbrllib_step.py --batch-sizes 1000,10000 --threads 1
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
import types

import numpy as np
import torch


def reward_fn(act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    """HalfCheetah reward in mbrl-lib's signature: forward velocity − 0.1·|a|²."""
    return (next_obs[:, 8] - 0.1 * act.square().sum(dim=1)).unsqueeze(1)


def no_termination(act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    return torch.zeros(next_obs.shape[0], 1, dtype=torch.bool, device=next_obs.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1000,10000,100000", help="per member")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds per repeat")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import gymnasium as gym

    # imported by name: in this repository `mbrl` is our package, in the mbrl-lib venv
    # it is mbrl-lib (and type checkers only see ours)
    mbrl_lib = importlib.import_module("mbrl")
    models = importlib.import_module("mbrl.models")
    if not hasattr(models, "GaussianMLP"):
        raise SystemExit("this is not mbrl-lib: run me with the mbrl-lib venv's python")
    GaussianMLP, ModelEnv = models.GaussianMLP, models.ModelEnv
    OneDTransitionRewardModel = models.OneDTransitionRewardModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    obs_dim, act_dim, E = 17, 6, 7
    net = GaussianMLP(
        in_size=obs_dim + act_dim,
        out_size=obs_dim + 1,
        device=args.device,
        num_layers=4,
        ensemble_size=E,
        hid_size=200,
        deterministic=False,
        propagation_method="random_model",
        learn_logvar_bounds=True,
        activation_fn_cfg={"_target_": "torch.nn.SiLU"},
    )
    model = OneDTransitionRewardModel(net, target_is_delta=True, normalize=True)
    rng = np.random.default_rng(0)
    data = rng.standard_normal((10_000, obs_dim + act_dim)).astype(np.float32) * 2 + 0.5
    assert model.input_normalizer is not None
    model.input_normalizer.update_stats(data)
    space = types.SimpleNamespace(
        observation_space=gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32),
        action_space=gym.spaces.Box(-1.0, 1.0, (act_dim,), np.float32),
    )
    generator = torch.Generator(device=args.device).manual_seed(0)
    env = ModelEnv(space, model, no_termination, reward_fn, generator=generator)

    results = []
    for per_member in [int(s) for s in args.batch_sizes.split(",")]:
        B = per_member * E
        start = rng.standard_normal((B, obs_dim)).astype(np.float32)
        act = torch.rand(B, act_dim, device=args.device) * 2 - 1
        state = env.reset(start, return_as_np=False)
        _, _, _, state = env.step(act, state, sample=True)  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            n, t0 = 0, time.perf_counter()
            while True:
                _, _, _, state = env.step(act, state, sample=True)
                n += 1
                elapsed = time.perf_counter() - t0
                if elapsed >= args.min_time:
                    break
            best = min(best, elapsed / n)
        results.append(
            {
                "per_member": per_member,
                "batch": B,
                "step_s": best,
                "transitions_per_s": B / best,
                "member_predictions_per_s": B / best,
            }
        )
    print(
        json.dumps(
            {
                "library": "mbrl-lib",
                "version": getattr(mbrl_lib, "__version__", "?"),
                "torch": torch.__version__,
                "threads": args.threads,
                "device": args.device,
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
