"""``mbrl model eval``: fit dynamics models on one dataset and compare their k-step
open-loop prediction error on held-out trajectories.

Data come from ``--dataset`` (any D4RL-format source) or are collected from ``--env``
with a uniform-random policy. Whole trajectories are held out (never single rows), so
the open-loop windows are unseen. Two reference rows put the numbers in context:
``copy-obs`` predicts no change (next_obs = obs) and ``linear`` is a least-squares
linear model of Δobs fitted on the same training split.

The sequence models ``koopman`` and ``transformer`` are fitted by
:class:`~mbrl.models.seq_trainer.SequenceTrainer` on windows of ``koopman.horizon`` /
``transformer.context`` steps cut from the training trajectories (early stopping on
windows of the held-out ones is not used: those are kept unseen for scoring; the trainer
holds out a share of the training windows). Their open-loop rows carry the state from
step to step: the Koopman latent (no re-encoding unless ``koopman.reencode_every``), the
transformer's KV-cached context of its own predictions.

Every fit is checkpointed (``checkpoints/fit_<model>.pt``, at most every 30 s and at its
end); ``mbrl model eval --resume RUN_DIR`` continues an interrupted run, and a finished
fit is not repeated. A fit's ``fit_seconds`` add up all its resumed parts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from rich.console import Console
from torch import Tensor

from mbrl.checkpoint import load_checkpoint, save_checkpoint
from mbrl.config import RunConfig, check_in_range, check_positive, from_dict, load_yaml, to_dict
from mbrl.data.buffer import SequenceBatch
from mbrl.data.d4rl import D4RLDataset, Episode, load_d4rl, save_d4rl, trajectories
from mbrl.errors import MbrlError
from mbrl.models.ensemble import EnsembleConfig, ProbabilisticEnsemble
from mbrl.models.evaluation import (
    StepFn,
    ensemble_mean_step_fn,
    format_table,
    open_loop_errors_detailed,
    plot_open_loop,
)
from mbrl.models.koopman import KoopmanConfig, KoopmanModel, koopman_step_fn
from mbrl.models.seq_trainer import (
    SequenceTrainer,
    SequenceTrainerConfig,
    windows_from_trajectories,
)
from mbrl.models.trainer import ModelTrainer, TrainerConfig
from mbrl.models.transformer import TransformerConfig, TransformerModel, transformer_step_fn
from mbrl.rundir import MetricsLogger, RunDir, provenance
from mbrl.train import resolve_device, seed_everything

MODEL_KINDS = ("ensemble", "koopman", "transformer")
SEQUENCE_MODEL_KINDS = ("koopman", "transformer")


@dataclass
class ModelEvalConfig:
    """Which models to fit, on what data, and how to score them.

    Attributes:
        models: dynamics models to fit and compare (registered model names).
        collect_steps: random-policy transitions to collect from run.env when no
            run.dataset is given.
        heldout_fraction: fraction of trajectories held out for open-loop scoring.
        horizons: open-loop horizons (model steps).
        max_starts: at most this many held-out windows per horizon.
        ensemble: the probabilistic ensemble's hyperparameters.
        trainer: the model trainer's hyperparameters.
        koopman: the Koopman model's hyperparameters (``models`` must name it).
        transformer: the transformer model's hyperparameters (``models`` must name it).
        seq_trainer: the sequence trainer's hyperparameters (Koopman, transformer).
    """

    models: tuple[str, ...] = ("ensemble",)
    collect_steps: int = 20_000
    heldout_fraction: float = 0.2
    horizons: tuple[int, ...] = (1, 5, 10, 25)
    max_starts: int = 2000
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    koopman: KoopmanConfig = field(default_factory=KoopmanConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    seq_trainer: SequenceTrainerConfig = field(default_factory=SequenceTrainerConfig)

    def __post_init__(self) -> None:
        check_positive(self, "collect_steps", "max_starts")
        check_in_range(self, "heldout_fraction", 0.01, 0.9)
        if not self.horizons or min(self.horizons) < 1:
            raise MbrlError(f"horizons={self.horizons} must be positive integers.")
        for name in self.models:
            if name not in MODEL_KINDS:
                from mbrl.errors import unknown_name

                raise unknown_name("model", name, MODEL_KINDS)


@dataclass
class ModelEvalRun:
    """``mbrl model eval``'s full config: what to fit plus the run settings."""

    eval: ModelEvalConfig = field(default_factory=ModelEvalConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(eval_every=0, checkpoint_every=0))


_T = TypeVar("_T")  # an episode, or anything split the same way


def split_trajectories(
    episodes: list[_T], heldout_fraction: float, seed: int
) -> tuple[list[_T], list[_T]]:
    """Random split of whole episodes into (train, held-out); both non-empty."""
    if len(episodes) < 2:
        raise MbrlError(
            f"need at least 2 trajectories to hold some out, got {len(episodes)}; "
            "collect more steps or use a dataset with more episodes."
        )
    order = np.random.default_rng(seed).permutation(len(episodes))
    n_held = min(max(1, round(heldout_fraction * len(episodes))), len(episodes) - 1)
    held = sorted(order[:n_held].tolist())
    train = sorted(order[n_held:].tolist())
    return [episodes[i] for i in train], [episodes[i] for i in held]


def stack(episodes: list[Episode]) -> dict[str, np.ndarray]:
    keys = ("obs", "act", "rew", "next_obs", "terminated")
    return {k: np.concatenate([getattr(e, k) for e in episodes]) for k in keys}


def linear_step_fn(train: dict[str, np.ndarray]) -> StepFn:
    """Least-squares linear model of (Δobs, rew) from [obs, act, 1]."""
    x = np.concatenate([train["obs"], train["act"], np.ones((len(train["obs"]), 1))], axis=1)
    y = np.concatenate([train["next_obs"] - train["obs"], train["rew"][:, None]], axis=1)
    w = torch.as_tensor(np.linalg.lstsq(x, y, rcond=None)[0], dtype=torch.float32)
    obs_dim = train["obs"].shape[1]

    def step(obs: Tensor, act: Tensor) -> tuple[Tensor, Tensor]:
        ones = torch.ones(obs.shape[0], 1, dtype=obs.dtype, device=obs.device)
        out = torch.cat([obs, act, ones], dim=1) @ w.to(obs.device, obs.dtype)
        return obs + out[:, :obs_dim], out[:, obs_dim]

    return step


def copy_obs_step_fn(obs: Tensor, act: Tensor) -> tuple[Tensor, Tensor]:
    return obs, torch.zeros(obs.shape[0], dtype=obs.dtype, device=obs.device)


def load_data(cfg: ModelEvalRun) -> tuple[D4RLDataset, str]:
    run = cfg.run
    if run.dataset is not None:
        from mbrl.data.datasets import load_dataset

        return load_dataset(run.dataset), run.dataset
    from mbrl.data.collect import collect_random
    from mbrl.envs import get_env_spec

    spec = get_env_spec(run.env)
    return collect_random(spec, cfg.eval.collect_steps, run.seed, progress=run.progress), run.env


class ThrottledCheckpoint:
    """Save the trainer's state at most every ``interval`` seconds (each save is a few MB
    to tens of MB, and an epoch can take under a second); Ctrl-C saves separately."""

    def __init__(self, path: Path, interval: float = 30.0) -> None:
        self.path, self.interval = path, interval
        self.last = time.perf_counter()

    def __call__(self, state: dict[str, Any]) -> None:
        now = time.perf_counter()
        if now - self.last >= self.interval:
            save_checkpoint(self.path, state)
            self.last = now


def load_model_eval_config(run_dir: RunDir) -> ModelEvalRun:
    data = load_yaml(run_dir.config_path)
    if data.get("command") != "model eval":
        raise MbrlError(f"{run_dir.config_path} was not written by 'mbrl model eval'.")
    source = str(run_dir.config_path)
    return ModelEvalRun(
        eval=from_dict(ModelEvalConfig, data.get("eval", {}), source=f"{source} (eval)"),
        run=from_dict(RunConfig, data.get("run", {}), source=f"{source} (run)"),
    )


def model_eval(
    cfg: ModelEvalRun, console: Console | None = None, resume: RunDir | None = None
) -> RunDir:
    """Fit every model in ``cfg.eval.models`` and write the comparison to a run dir.

    Each fit is checkpointed after every epoch (``checkpoints/fit_<model>.pt``, written
    atomically); with ``resume`` an interrupted run continues where it stopped, on the
    same data (the collected data are kept in the run dir as ``data.hdf5``).
    """
    console = console or Console()
    run, ev = cfg.run, cfg.eval
    torch.set_num_threads(run.torch_threads)
    device = resolve_device(run.device)
    if run.dataset is None:
        from mbrl.envs import get_env_spec

        get_env_spec(run.env)  # unknown env: fail before writing anything
    seed_everything(run.seed)
    if resume is not None:
        run_dir = resume
        if run.dataset is None:
            ds, source = load_d4rl(run_dir.path / "data.hdf5"), run.env
        else:
            ds, source = load_data(cfg)
    else:
        ds, source = load_data(cfg)
        run_dir = RunDir.create(run.run_root, source, "model-eval", run.seed, run.run_name)
        run_dir.save_config({"command": "model eval", **to_dict(cfg)})
        if run.dataset is None:
            save_d4rl(ds, run_dir.path / "data.hdf5")

    train_eps, held_eps = split_trajectories(trajectories(ds), ev.heldout_fraction, run.seed)
    train = stack(train_eps)
    obs_var = train["obs"].var(axis=0)
    console.print(
        f"{source}: {len(ds)} transitions, {len(train_eps)} training / {len(held_eps)} "
        f"held-out trajectories"
    )
    results: dict[str, Any] = {}
    start = time.perf_counter()
    with MetricsLogger(run_dir, tensorboard=run.tensorboard) as logger:
        step_fns: dict[str, StepFn] = {
            "copy-obs": copy_obs_step_fn,
            "linear": linear_step_fn(train),
        }
        fit_info: dict[str, Any] = {}
        for name in ev.models:
            ckpt = run_dir.checkpoint_dir / f"fit_{name}.pt"
            state = load_checkpoint(ckpt) if resume is not None and ckpt.is_file() else None
            if state is not None:
                console.print(f"{name}: resuming the fit after epoch {state.get('epoch')}")
            model: ProbabilisticEnsemble | KoopmanModel | TransformerModel
            trainer: ModelTrainer | SequenceTrainer
            if name in SEQUENCE_MODEL_KINDS:
                model, windows = _sequence_model(name, ds.obs_dim, ds.act_dim, ev, train_eps)
                model = model.to(device)
                trainer = SequenceTrainer(model, ev.seq_trainer)
                data: tuple[Any, ...] = (windows,)
            else:
                model = ProbabilisticEnsemble(ds.obs_dim, ds.act_dim, ev.ensemble).to(device)
                trainer = ModelTrainer(model, ev.trainer, device)
                data = (train["obs"], train["act"], train["rew"], train["next_obs"],
                        train["terminated"])  # fmt: skip
            fit = _checkpointed_fit(
                trainer, data, ckpt, state, logger.log, run.progress, run_dir, console
            )
            model.eval()
            torch.save(model.state_dict(), run_dir.path / f"{name}.pt")
            fit_info[name] = {
                "epochs": fit.epochs,
                "stop_reason": fit.stop_reason,
                "fit_seconds": round(fit.wall_time, 2),  # all resumed parts together
                "holdout_mse_per_member": fit.holdout_mse_per_member,
                "elite_idx": fit.elite_idx,
            }
            if isinstance(model, KoopmanModel):
                step_fns[name] = koopman_step_fn(model, ev.koopman.reencode_every)
            elif isinstance(model, TransformerModel):
                step_fns[name] = transformer_step_fn(model)
            else:
                step_fns[name] = ensemble_mean_step_fn(model)
            if isinstance(trainer, SequenceTrainer):
                fit_info[name]["windows"] = len(data[0])
        for name, step_fn in step_fns.items():
            errs = open_loop_errors_detailed(
                step_fn, held_eps, ev.horizons, ev.max_starts, seed=run.seed, obs_var=obs_var,
                device=device,
            )  # fmt: skip
            results[name] = {"mse": errs.mse, "nmse": errs.nmse, "windows": errs.num_windows}
            logger.log(0, {f"open_loop/{name}/nmse_h{h}": v for h, v in errs.nmse.items()})
        wall = logger.wall_time

    nmse = {name: r["nmse"] for name, r in results.items()}
    mse = {name: r["mse"] for name, r in results.items()}
    prov = provenance()
    table = format_table(nmse, title="model (normalized MSE)")
    text = (
        f"# Open-loop prediction error on {source}\n\n"
        f"{len(held_eps)} held-out trajectories; error of the predicted observation after h "
        "model steps fed the true actions, divided per dimension by the data variance "
        "(1.0 = as bad as predicting the mean).\n\n"
        f"{table}\nRaw MSE:\n\n{format_table(mse, title='model (MSE)')}\n"
        f"Command: `{prov['command']}`  \nCommit: {prov['commit']}  \nDate: {prov['date']}  \n"
        f"Machine: {prov['machine']}\n"
    )
    (run_dir.path / "results.md").write_text(text)
    # a file's name, not its whole path, fits above the plot
    title = Path(source).name if "/" in source else source
    plot_open_loop(nmse, run_dir.path / "open_loop.png", ylabel="normalized MSE", title=title)
    run_dir.write_summary(
        {
            "command": "model eval",
            "source": source,
            "seed": run.seed,
            "transitions": len(ds),
            "fit": fit_info,
            "open_loop": results,
            "wall_time_s": round(wall, 2),
            "wall_time_this_session_s": round(time.perf_counter() - start, 2),
            **prov,
        }
    )
    console.print(table)
    for name, info in fit_info.items():
        console.print(
            f"{name}: {info['epochs']} epochs ({info['stop_reason']}), {info['fit_seconds']} s"
        )
    console.print(f"results: {run_dir.path / 'results.md'}")
    return run_dir


def _checkpointed_fit(
    trainer: ModelTrainer | SequenceTrainer,
    data: tuple[Any, ...],
    ckpt: Path,
    state: dict[str, Any] | None,
    log_fn: Any,
    progress: bool,
    run_dir: RunDir,
    console: Console,
) -> Any:
    """``trainer.fit(*data)`` resumed from ``state``, its state saved to ``ckpt`` at most
    every 30 s, on Ctrl-C (the last finished epoch) and at its end (so a resume skips it)."""

    def save_last() -> None:
        last = (
            trainer.last_fit_state if isinstance(trainer, SequenceTrainer) else trainer.state_dict()
        )
        if last is not None:
            save_checkpoint(ckpt, last)

    try:
        fit = trainer.fit(
            *data, log_fn=log_fn, progress=progress,
            checkpoint_fn=ThrottledCheckpoint(ckpt), resume_state=state,
        )  # fmt: skip
    except KeyboardInterrupt:
        save_last()
        console.print(f"interrupted; 'mbrl model eval --resume {run_dir.path}' continues")
        raise
    save_last()
    return fit


def _sequence_model(
    name: str, obs_dim: int, act_dim: int, ev: ModelEvalConfig, train_eps: list[Episode]
) -> tuple[KoopmanModel | TransformerModel, SequenceBatch]:
    """A fresh :class:`KoopmanModel` or :class:`TransformerModel` (``name``) and the
    windows of the training trajectories it is fitted on."""
    field_name = "horizon" if name == "koopman" else "context"
    length = getattr(getattr(ev, name), field_name)
    windows = windows_from_trajectories(train_eps, length)
    if len(windows) == 0:
        raise MbrlError(
            f"no training trajectory has {name}.{field_name}={length} steps; "
            f"use a shorter --eval.{name}.{field_name} or longer episodes."
        )
    if name == "koopman":
        return KoopmanModel(obs_dim, act_dim, ev.koopman), windows
    return TransformerModel(obs_dim, act_dim, ev.transformer), windows


__all__ = ["ModelEvalConfig", "ModelEvalRun", "model_eval", "split_trajectories"]
