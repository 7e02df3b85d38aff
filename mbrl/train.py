"""The composition root of a training run.

``mbrl train AGENT`` resolves a :class:`TrainConfig` (dataclass defaults < preset <
``--config`` file < command-line overrides), creates the run directory, writes the
resolved config, seeds everything, builds the agent through the registry and lets
it run. Components never read global state: everything they need is in the config
and the :class:`RunContext` handed to them.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, cast

import numpy as np
import torch

from mbrl.config import RunConfig, from_dict, load_yaml, save_yaml
from mbrl.envs import get_env_spec
from mbrl.errors import MbrlError
from mbrl.registry import AGENTS
from mbrl.rundir import MetricsLogger, RunDir, provenance

A = TypeVar("A")


@dataclass
class TrainConfig(Generic[A]):
    """A run: the agent's own config plus the run-level settings."""

    agent: A
    run: RunConfig = field(default_factory=RunConfig)


@dataclass
class RunContext:
    """What a running agent gets from the composition root."""

    run_dir: RunDir
    logger: MetricsLogger
    device: torch.device
    resumed: bool = False


class NullLogger:
    """Stands in for the metrics logger when an agent is only built to be evaluated."""

    wall_time = 0.0

    def log(self, step: int, metrics: dict[str, float]) -> None:
        return None

    def close(self) -> None:
        return None


@dataclass
class EvalSetup:
    """What re-evaluating a run's latest checkpoint needs (:func:`eval_setup`)."""

    cfg: TrainConfig[Any]
    ctx: RunContext
    checkpoint: Path
    state: dict[str, Any]

    def video_path(self, video: bool) -> Path | None:
        """``<run>/videos/<checkpoint>.mp4`` when a video is asked for."""
        return self.ctx.run_dir.path / "videos" / f"{self.checkpoint.stem}.mp4" if video else None


def eval_setup(run_dir: RunDir, device: str, unit: str = "steps") -> EvalSetup:
    """The saved config, a logger-less context and the latest checkpoint of ``run_dir``
    (used by the agents' ``evaluate_run``, i.e. ``mbrl eval``); ``unit`` names what
    ``run.checkpoint_every`` counts, for the message when there is no checkpoint."""
    from mbrl.checkpoint import find_latest, load_checkpoint

    config_cls = AGENTS.get(saved_agent_name(run_dir)).config
    if config_cls is None:
        raise MbrlError(f"agent of {run_dir} was registered without a config class.")
    cfg = load_run_config(run_dir, config_cls)
    ckpt = find_latest(run_dir.path)
    if ckpt is None:
        raise MbrlError(
            f"{run_dir.checkpoint_dir} holds no checkpoint to evaluate; let the run finish "
            f"or train longer than run.checkpoint_every {unit}."
        )
    ctx = RunContext(
        run_dir=run_dir, logger=cast(MetricsLogger, NullLogger()), device=torch.device(device)
    )
    return EvalSetup(cfg, ctx, ckpt, load_checkpoint(ckpt, map_location=device))


class Agent(Protocol):
    """What ``mbrl train`` needs from a registered agent class.

    ``train`` runs the whole budget (resuming from ``ctx.run_dir``'s latest
    checkpoint when ``ctx.resumed``), logs through ``ctx.logger`` and returns the
    final evaluation, e.g. ``{"eval/return": 1234.5, "eval/return_std": 10.0}``.
    """

    def __init__(self, cfg: TrainConfig[Any], ctx: RunContext) -> None: ...

    def train(self) -> dict[str, float]: ...


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MbrlError(
            f"run.device='{name}' but torch sees no CUDA device (torch {torch.__version__}); "
            "use --run.device cpu, or install a CUDA build of torch (see README)."
        )
    return device


def load_run_config(run_dir: RunDir, agent_config: type) -> TrainConfig[Any]:
    """Read a run's saved ``config.yaml`` back into a typed :class:`TrainConfig`."""
    data = load_yaml(run_dir.config_path)
    source = str(run_dir.config_path)
    agent: Any = from_dict(agent_config, data.get("agent", {}), source=f"{source} (agent)")
    run = from_dict(RunConfig, data.get("run", {}), source=f"{source} (run)")
    return TrainConfig(agent=agent, run=run)


def extend_run(run_dir: RunDir, agent_name: str, cfg: TrainConfig[Any], total_steps: int) -> None:
    """Raise the budget of the run in ``run_dir`` to ``total_steps`` before a resume.

    The saved ``config.yaml`` gets the new ``run.total_steps`` (its header keeps the
    original command and gains a line saying what changed, and when); a finished run's
    ``summary.json`` is kept as ``summary-<old budget>.json``, since the run is no longer
    finished. Refused, with the reason, for a smaller budget and for agents whose training
    depends on the budget itself (:meth:`~mbrl.online.OnlineAgent.extend_problem`).
    """
    old = cfg.run.total_steps
    if total_steps == old:
        return
    if total_steps < old:
        raise MbrlError(
            f"--run.total-steps {total_steps}: the run's budget is already {old}; a resume "
            "can only raise it (start a new run for a shorter one)."
        )
    problem = getattr(AGENTS.get(agent_name).obj, "extend_problem", None)
    reason = (
        f"agent '{agent_name}' does not support it"
        if problem is None
        else problem(cfg)  # the class's own reason, or None
    )
    if reason is not None:
        raise MbrlError(f"cannot raise the budget of {run_dir.path}: {reason}.")
    cfg.run.total_steps = int(total_steps)
    text = run_dir.config_path.read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    stamp = provenance()["date"]
    header.append(f"# {stamp}: run.total_steps raised from {old} to {total_steps} on resume")
    data = load_yaml(run_dir.config_path)
    data["run"]["total_steps"] = int(total_steps)
    save_yaml(data, run_dir.config_path, header="\n".join(header))
    if run_dir.summary_path.is_file():
        run_dir.summary_path.replace(run_dir.path / f"summary-{old}.json")


def saved_agent_name(run_dir: RunDir) -> str:
    name = load_yaml(run_dir.config_path).get("agent_name")
    if not isinstance(name, str):
        raise MbrlError(f"{run_dir.config_path} has no 'agent_name'; was it written by mbrl?")
    return name


def train(agent_name: str, cfg: TrainConfig[Any], resume: Path | None = None) -> RunDir:
    """Run ``agent_name`` with ``cfg`` (or continue the run in ``resume``)."""
    entry = AGENTS.get(agent_name)
    run = cfg.run
    if run.dataset is None:
        get_env_spec(run.env)  # fail before anything is written for an unknown env
    else:  # offline: the env to evaluate on comes from the dataset (validated here)
        from mbrl.offline import resolve_dataset_env

        run.env = resolve_dataset_env(run.dataset, run.env)
    torch.set_num_threads(run.torch_threads)
    device = resolve_device(run.device)
    if resume is not None:
        run_dir = RunDir.open(resume)
    else:
        if run.dataset is not None:
            from mbrl.offline import dataset_label

            env_name = dataset_label(run.dataset)
        else:
            env_name = run.env
        run_dir = RunDir.create(run.run_root, env_name, agent_name, run.seed, run.run_name)
        run_dir.save_config({"agent_name": agent_name, **_as_dict(cfg)})
    seed_everything(run.seed)
    start = time.perf_counter()
    # the code that runs is the code loaded now: a commit made during a long run must not
    # be credited with its results
    at_start = provenance()
    with MetricsLogger(run_dir, tensorboard=run.tensorboard) as logger:
        ctx = RunContext(run_dir=run_dir, logger=logger, device=device, resumed=resume is not None)
        agent = entry.obj(cfg, ctx)
        final = agent.train()
        wall = logger.wall_time
    summary: dict[str, Any] = {
        "agent": agent_name,
        "env": run.env,
        "dataset": run.dataset,
        "seed": run.seed,
        "total_steps": run.total_steps,
        "final": final,
        "wall_time_s": round(wall, 2),
        "wall_time_this_session_s": round(time.perf_counter() - start, 2),
        **provenance(),
        "commit": at_start["commit"],
        "started": at_start["date"],
    }
    summary.update(normalized(final, run))
    run_dir.write_summary(summary)
    write_results_table(run_dir, summary)
    return run_dir


def write_results_table(run_dir: RunDir, summary: dict[str, Any]) -> str:
    """``results.md`` in the run dir: evaluations over training and the final summary."""
    from mbrl.rundir import read_metrics

    rows = [r for r in read_metrics(run_dir.metrics_path) if r["key"].startswith("eval/")]
    evals: dict[int, dict[str, float]] = {}
    for r in rows:
        evals.setdefault(r["step"], {})[r["key"]] = r["value"]
    lines = [
        f"# {summary['agent']} on {summary['dataset'] or summary['env']} (seed {summary['seed']})",
        "",
        "| step | eval/return | ± std | episode length |",
        "|---:|---:|---:|---:|",
    ]
    for step in sorted(evals):
        e = evals[step]
        lines.append(
            f"| {step} | {e.get('eval/return', float('nan')):.1f} | "
            f"{e.get('eval/return_std', float('nan')):.1f} | "
            f"{e.get('eval/length', float('nan')):.0f} |"
        )
    final = summary["final"]
    lines += [
        "",
        f"Final evaluation (not the best): return {final.get('eval/return', float('nan')):.1f}",
    ]
    if "normalized_score" in summary:
        lines[-1] += f", normalized score {summary['normalized_score']:.1f}"
    lines[-1] += "  "
    lines += [
        f"Wall time: {summary['wall_time_s']:.0f} s  ",
        f"Command: `{summary['command']}`  ",
        f"Commit: {summary['commit']}  ",
        f"Date: {summary['date']}  ",
        f"Machine: {summary['machine']}",
    ]
    text = "\n".join(lines) + "\n"
    (run_dir.path / "results.md").write_text(text)
    return text


def normalized(final: dict[str, float], run: RunConfig) -> dict[str, Any]:
    """``normalized_score`` of the final return when reference scores are known."""
    if "eval/return" not in final:
        return {}
    from mbrl.data.scores import normalized_score, ref_scores_for

    if run.dataset is None:
        refs = ref_scores_for(env_id=get_env_spec(run.env).id)  # "module:Class" refs
    else:  # the dataset's own reference scores (metadata) first, as the offline loop
        from mbrl.offline import dataset_ref_scores

        refs = dataset_ref_scores(run.dataset, run.env)
    if refs is None:
        return {}
    return {
        "normalized_score": normalized_score(final["eval/return"], *refs),
        "ref_scores": list(refs),
    }


def _as_dict(cfg: TrainConfig[Any]) -> dict[str, Any]:
    from mbrl.config import to_dict

    return to_dict(cfg)
