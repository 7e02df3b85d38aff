"""D4RL-style datasets generated on any gymnasium env (``mbrl data collect``).

Protocol (Fu et al. 2020, "D4RL: Datasets for Deep Data-Driven Reinforcement Learning",
Sec. 5 and App. C, gym-mujoco tasks): train a behaviour policy online with SAC (Haarnoja
et al. 2018), keeping its checkpoints and its replay data, then write

- ``random``: a uniformly random policy;
- ``medium``: a partially trained policy, the checkpoint that reaches about one third of
  the best performance (actions sampled from the policy, not its mean);
- ``medium-replay``: every transition the behaviour SAC saw up to the medium checkpoint,
  in the order it saw them (random warm-up steps included);
- ``expert``: the best checkpoint (actions sampled);
- ``medium-expert``: ``medium`` followed by ``expert``.

Each file is a D4RL HDF5 file (see :mod:`mbrl.data.d4rl`) with exact
``next_observations``, ``terminals`` at termination, ``timeouts`` at the env's time limit,
``infos/qpos`` and ``infos/qvel`` for MuJoCo envs, and ``metadata/*`` recording the env id
and version, library versions, policy (algorithm, checkpoint step and its evaluation
return), seeds, sizes and the reference scores for normalization: ``ref_min_score`` (the
random policy's mean return) and ``ref_max_score`` (the best checkpoint's mean
deterministic return), each over ``ref_episodes`` episodes.

Output folder ``OUT``::

    OUT/collect.json                 settings of this folder (a re-run must match them)
    OUT/behavior/step_<n>.zip        SAC checkpoints (stable-baselines3 format)
    OUT/behavior/replay_<n>.npz      the transitions of the steps since the previous one
    OUT/behavior/buffer_<n>.pkl      SAC's replay buffer at the latest checkpoint (resume)
    OUT/behavior/evals.json          each checkpoint's evaluation (written last: the truth)
    OUT/behavior/refs.json           reference scores
    OUT/<env>-<kind>.hdf5            the datasets

Resuming: running the same command again continues behaviour training from the last
checkpoint in ``evals.json`` and writes only the datasets that are missing; finished
datasets are skipped. A larger ``--behavior-steps`` (all else equal) extends a finished
or interrupted behaviour run, once the datasets written from the shorter run are deleted.
Files are written to a temp file and renamed, so an interrupted run never leaves a
partial file under a final name (stale temp files are removed on re-run).

Deviations from D4RL, all for a 2-core machine or a gymnasium stack:

- Budgets: D4RL's policies come from SAC trained to convergence (order of 1M steps) and
  its files have 1M rows; the defaults here are 60k behaviour steps (~25 min on one
  uncontended core at ~40 SAC updates/s) and 100k rows (``--behavior-steps``, ``--size``).
  ``expert`` is therefore the best policy this budget reaches, not a converged one.
- ``medium`` is the checkpoint whose evaluation return is closest to
  ``random + medium_fraction * (best - random)`` (a normalized score of about 33), with the
  random and best returns measured here; D4RL reports "about 1/3 of the expert".
- Resumed behaviour training restores weights, optimizers and the replay buffer but not
  the RNG streams (as ``sb3-sac``), so it is statistically, not bitwise, identical to an
  uninterrupted run. The episode running when training was interrupted is marked
  ``timeouts`` (cut) at its last recorded step in ``medium-replay``.
- The transition a checkpoint is taken at is in its replay chunk, but SAC's own buffer
  snapshot for resuming is taken before SAC's update of that step (stable-baselines3's
  callback order); resuming therefore repeats no env step and skips no update.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from mbrl.atomic import atomic_path
from mbrl.config import check_positive
from mbrl.data.collect import collect_random, collect_rollouts
from mbrl.data.d4rl import D4RLDataset, atomic_write, load_d4rl, save_d4rl
from mbrl.envs import EnvSpec, flat_dim, get_env_spec
from mbrl.errors import MbrlError, did_you_mean
from mbrl.evaluation import evaluate_policy

KINDS = ("random", "medium", "medium-replay", "expert", "medium-expert")
POLICY_KINDS = ("medium", "medium-replay", "expert", "medium-expert")
DEFAULT_KINDS = ("random", "medium", "medium-replay")
# Seed offsets so the datasets of one folder never share reset seeds or action noise.
_SEED_OFFSETS = {"random": 0, "medium": 1, "expert": 2, "ref": 3}

Log = Callable[[str], None]


@dataclass
class CollectConfig:
    """Settings of ``mbrl data collect``.

    Attributes:
        env: registered env id (mbrl or gymnasium), e.g. ``HalfCheetah-v4``.
        out: output folder (see the module docstring for its layout).
        kinds: datasets to write, any of :data:`KINDS`.
        behavior_steps: env steps of behaviour SAC training (1 update per step); 0 only
            with ``kinds=("random",)`` (then no ``ref_max_score`` is recorded).
        size: rows of ``random``, ``medium`` and ``expert`` (``medium-expert`` has twice
            as many; ``medium-replay`` has as many as steps up to the medium checkpoint).
        seed: seeds SAC, every reset and every sampled action.
        checkpoint_every: env steps between behaviour checkpoints (each is evaluated).
        learning_starts: uniform-random warm-up steps of SAC (SAC paper's code: 10,000).
        eval_episodes: deterministic episodes per checkpoint evaluation.
        ref_episodes: episodes for each reference score (random and best policy).
        medium_fraction: the medium policy's target, as a fraction from random to best.
        overwrite: discard the folder's behaviour run and datasets and start over.
        progress: progress bars.
        threads: torch threads (small MLPs run fastest on one).
    """

    env: str
    out: Path
    kinds: tuple[str, ...] = DEFAULT_KINDS
    behavior_steps: int = 60_000
    size: int = 100_000
    seed: int = 0
    checkpoint_every: int = 4_000
    learning_starts: int = 10_000
    eval_episodes: int = 5
    ref_episodes: int = 10
    medium_fraction: float = 1.0 / 3.0
    overwrite: bool = False
    progress: bool = True
    threads: int = 1
    sac: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out = Path(self.out).expanduser()
        self.kinds = parse_kinds(self.kinds)
        check_positive(self, "size", "checkpoint_every", "eval_episodes", "ref_episodes")
        check_positive(self, "threads")
        if self.behavior_steps < 0 or self.learning_starts < 0:
            raise MbrlError(
                f"behavior_steps ({self.behavior_steps}) and learning_starts "
                f"({self.learning_starts}) must be >= 0."
            )
        policy_kinds = [k for k in self.kinds if k in POLICY_KINDS]
        if self.behavior_steps == 0 and policy_kinds:
            raise MbrlError(
                f"--behavior-steps 0 trains no behaviour policy, but kinds "
                f"{', '.join(policy_kinds)} need one; give --behavior-steps > 0 or "
                "--kinds random."
            )
        if self.behavior_steps and self.learning_starts >= self.behavior_steps:
            raise MbrlError(
                f"--learning-starts ({self.learning_starts}) must be below --behavior-steps "
                f"({self.behavior_steps}): SAC would never update."
            )
        if self.behavior_steps and self.checkpoint_every > self.behavior_steps:
            raise MbrlError(
                f"--checkpoint-every ({self.checkpoint_every}) exceeds --behavior-steps "
                f"({self.behavior_steps}); there would be one checkpoint only."
            )
        if not 0.0 < self.medium_fraction < 1.0:
            raise MbrlError(f"--medium-fraction must be in (0, 1), got {self.medium_fraction}.")

    def settings(self) -> dict[str, Any]:
        """The fields a re-run in the same folder must repeat (everything but the kinds,
        the output folder and the run-time switches)."""
        d = asdict(self)
        for key in ("out", "kinds", "overwrite", "progress", "threads"):
            d.pop(key)
        return d


def parse_kinds(kinds: str | Sequence[str]) -> tuple[str, ...]:
    """``"random,medium"`` or ``("random", "medium")`` -> canonical, validated tuple."""
    items = kinds.replace(",", " ").split() if isinstance(kinds, str) else list(kinds)
    items = [p for item in items for p in str(item).replace(",", " ").split()]
    if not items:
        raise MbrlError(f"--kinds is empty; give some of {', '.join(KINDS)}.")
    for item in items:
        if item not in KINDS:
            raise MbrlError(
                f"unknown dataset kind '{item}'.{did_you_mean(item, KINDS)} "
                f"Kinds: {', '.join(KINDS)} (comma-separated)."
            )
    return tuple(k for k in KINDS if k in items)


def dataset_stem(env_id: str) -> str:
    """File-name stem of an env's datasets: ``HalfCheetah-v4`` -> ``halfcheetah-v4``."""
    return re.sub(r"[^a-z0-9._-]+", "_", env_id.lower()).strip("_")


def dataset_path(out: Path, env_id: str, kind: str) -> Path:
    return Path(out) / f"{dataset_stem(env_id)}-{kind}.hdf5"


# -- small file helpers ------------------------------------------------------------------
def _write_json(path: Path, data: Any) -> None:
    def write(tmp: Path) -> None:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")

    atomic_write(path, write, overwrite=True)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MbrlError(
            f"cannot read '{path}' ({exc}); the folder is damaged: delete it or rerun with "
            "--overwrite."
        ) from exc


def _save_atomic(path: Path, save: Callable[[str], None], suffix: str) -> None:
    """``save(tmp_name)`` then rename (stable-baselines3 savers take a path name)."""
    with atomic_path(path, suffix=suffix) as tmp:
        save(str(tmp))


def _remove_stale_temps(folder: Path) -> None:
    """Temp files a killed write left (``.<name>.<8 random chars>.tmp|zip|pkl``, the
    names :func:`atomic_write` and :func:`_save_atomic` give them)."""
    if folder.is_dir():
        for tmp in folder.glob(".*"):
            if tmp.is_file() and re.fullmatch(r"\..+\.[a-z0-9_]{8}\.(tmp|zip|pkl)", tmp.name):
                tmp.unlink(missing_ok=True)


def library_versions() -> dict[str, str]:
    versions = {"gymnasium_version": gym.__version__, "torch_version": torch.__version__}
    try:
        import mujoco

        versions["mujoco_version"] = str(mujoco.__version__)
    except ImportError:  # a non-MuJoCo env
        pass
    import stable_baselines3

    from mbrl import __version__

    versions["sb3_version"] = stable_baselines3.__version__
    versions["mbrl_version"] = __version__
    return versions


def env_metadata(spec: EnvSpec) -> dict[str, Any]:
    gym_spec = gym.spec(spec.id)
    return {
        "env_id": spec.id,
        "env_version": -1 if gym_spec.version is None else int(gym_spec.version),
        "max_episode_steps": -1
        if gym_spec.max_episode_steps is None
        else int(gym_spec.max_episode_steps),
        **library_versions(),
    }


# -- behaviour policy --------------------------------------------------------------------
class _Recorder(gym.Wrapper[Any, Any, Any, Any]):
    """Records every transition the behaviour SAC makes, in order, with the MuJoCo state
    before each step. ``first_is_reset`` says the chunk begins right after a reset."""

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        super().__init__(env)
        self.rows: dict[str, list[Any]] = {}
        self._obs: np.ndarray | None = None
        self.first_is_reset = True
        self.clear()

    def clear(self) -> None:
        keys = ("observations", "actions", "rewards", "next_observations")
        self.rows = {k: [] for k in (*keys, "terminals", "timeouts", "qpos", "qvel")}
        self.first_is_reset = self._obs is None

    def reset(self, **kwargs: Any) -> Any:
        obs, info = self.env.reset(**kwargs)
        self._obs = np.asarray(obs)
        if not self.rows["observations"]:
            self.first_is_reset = True
        return obs, info

    def step(self, action: Any) -> Any:
        mj: Any = getattr(self.env.unwrapped, "data", None)
        if mj is not None and hasattr(mj, "qpos"):
            self.rows["qpos"].append(np.array(mj.qpos))
            self.rows["qvel"].append(np.array(mj.qvel))
        next_obs, rew, terminated, truncated, info = self.env.step(action)
        r = self.rows
        r["observations"].append(self._obs)
        r["actions"].append(np.asarray(action))
        r["rewards"].append(float(rew))
        r["next_observations"].append(np.asarray(next_obs))
        r["terminals"].append(bool(terminated))
        r["timeouts"].append(bool(truncated and not terminated))
        self._obs = np.asarray(next_obs)
        return next_obs, rew, terminated, truncated, info

    def arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for key, rows in self.rows.items():
            if key in ("terminals", "timeouts"):
                out[key] = np.asarray(rows, dtype=bool)
            elif rows:
                out[key] = np.asarray(rows, dtype=np.float32)
        out["first_is_reset"] = np.asarray(self.first_is_reset)
        return out


def _make_sac(cfg: CollectConfig, env: gym.Env[Any, Any]) -> Any:
    from stable_baselines3 import SAC

    from mbrl.agents.sb3_sac import SB3SACConfig

    # The SAC paper's MuJoCo settings (the same defaults as the sb3-sac agent).
    hp = SB3SACConfig(learning_starts=cfg.learning_starts, **cfg.sac)
    return SAC(
        "MlpPolicy",
        env,
        learning_rate=hp.learning_rate,
        buffer_size=min(hp.buffer_size, cfg.behavior_steps),
        learning_starts=hp.learning_starts,
        batch_size=hp.batch_size,
        tau=hp.tau,
        gamma=hp.gamma,
        gradient_steps=hp.gradient_steps,
        policy_kwargs={"net_arch": list(hp.hidden_sizes)},
        seed=cfg.seed,
        device="cpu",
    )


def _load_sac(path: Path, env: gym.Env[Any, Any] | None = None) -> Any:
    from stable_baselines3 import SAC

    return SAC.load(path, env=env, device="cpu")


def deterministic_act(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    def act(obs: np.ndarray) -> np.ndarray:
        action, _ = model.predict(obs, deterministic=True)
        return np.asarray(action)

    return act


def sampled_act(model: Any, seed: int) -> Callable[[int, np.ndarray], np.ndarray]:
    """The SAC policy with actions *sampled* from its tanh-Gaussian, noise drawn from a
    numpy generator seeded with ``seed`` (so the result does not depend on torch's RNG)."""
    rng = np.random.default_rng(seed)
    actor = model.policy.actor

    def act(t: int, obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.as_tensor(obs, dtype=torch.float32).reshape(1, -1)
            mean, log_std, _ = actor.get_action_dist_params(x)
        mean_np, std_np = mean.numpy()[0], np.exp(log_std.numpy()[0])
        squashed = np.tanh(mean_np + std_np * rng.standard_normal(mean_np.shape))
        return np.asarray(model.policy.unscale_action(squashed), dtype=np.float32)

    return act


class BehaviorRun:
    """The behaviour SAC of one output folder: training with checkpoints, evaluations,
    replay chunks, and the checkpoint choices (best, medium)."""

    def __init__(self, cfg: CollectConfig, spec: EnvSpec, log: Log) -> None:
        self.cfg, self.spec, self.log = cfg, spec, log
        self.dir = cfg.out / "behavior"

    # files
    def ckpt_path(self, step: int) -> Path:
        return self.dir / f"step_{step:09d}.zip"

    def buffer_path(self, step: int) -> Path:
        return self.dir / f"buffer_{step:09d}.pkl"

    def chunk_path(self, step: int) -> Path:
        return self.dir / f"replay_{step:09d}.npz"

    @property
    def evals_path(self) -> Path:
        return self.dir / "evals.json"

    def evals(self) -> list[dict[str, Any]]:
        if not self.evals_path.is_file():
            return []
        data: list[dict[str, Any]] = _read_json(self.evals_path)
        return data

    @property
    def done(self) -> bool:
        ev = self.evals()
        return bool(ev) and ev[-1]["step"] >= self.cfg.behavior_steps

    def train(self) -> None:
        """Train (or continue training) to ``behavior_steps``, checkpointing and
        evaluating every ``checkpoint_every`` steps."""
        from stable_baselines3.common.callbacks import BaseCallback
        from stable_baselines3.common.logger import configure

        self.dir.mkdir(parents=True, exist_ok=True)
        evals = self.evals()
        if evals and evals[-1]["step"] >= self.cfg.behavior_steps:
            self.log(f"behaviour SAC: done ({evals[-1]['step']} steps), skipping training")
            return
        recorder = _Recorder(self.spec.make())
        if evals:
            last = int(evals[-1]["step"])
            model = _load_sac(self.ckpt_path(last), env=recorder)
            model.load_replay_buffer(self.buffer_path(last))
            _grow_buffer(model, self.cfg.behavior_steps)
            self.log(f"behaviour SAC: resuming from step {last}")
        else:
            model = _make_sac(self.cfg, recorder)
        model.set_logger(configure(None, []))
        run = self
        started, start_step = time.monotonic(), model.num_timesteps

        class Checkpoints(BaseCallback):
            # on_rollout_end: after the step's transition is in SAC's buffer (train_freq 1).
            def _on_step(self) -> bool:
                return True

            def _on_rollout_end(self) -> None:
                step = self.model.num_timesteps
                if step % run.cfg.checkpoint_every and step < run.cfg.behavior_steps:
                    return
                rate = (step - start_step) / max(time.monotonic() - started, 1e-9)
                run.checkpoint(self.model, recorder, rate)

        remaining = self.cfg.behavior_steps - model.num_timesteps
        model.learn(
            remaining,
            callback=Checkpoints(),
            reset_num_timesteps=not evals,
            progress_bar=self.cfg.progress,
        )
        recorder.close()

    def checkpoint(self, model: Any, recorder: _Recorder, steps_per_s: float) -> None:
        step = int(model.num_timesteps)
        arrays = recorder.arrays()

        def write_chunk(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)  # type: ignore[arg-type]

        atomic_write(self.chunk_path(step), write_chunk, overwrite=True)
        recorder.clear()
        _save_atomic(self.ckpt_path(step), model.save, ".zip")
        _save_atomic(self.buffer_path(step), model.save_replay_buffer, ".pkl")
        result = evaluate_policy(
            self.spec, deterministic_act(model), self.cfg.eval_episodes, self.cfg.seed
        )
        entry = {
            "step": step,
            "return": result["eval/return"],
            "return_std": result["eval/return_std"],
            "length": result["eval/length"],
            "wall_time": time.time(),
        }
        evals = [e for e in self.evals() if e["step"] < step] + [entry]
        _write_json(self.evals_path, evals)  # last: a checkpoint counts once this is written
        for old in self.dir.glob("buffer_*.pkl"):  # only the latest is needed to resume
            if old != self.buffer_path(step):
                old.unlink()
        self.log(
            f"behaviour SAC step {step:>8}/{self.cfg.behavior_steps}: eval return "
            f"{entry['return']:10.1f} ± {entry['return_std']:.1f}  ({steps_per_s:.1f} steps/s)"
        )

    def best(self) -> dict[str, Any]:
        evals = self.evals()
        return max(evals, key=lambda e: (e["return"], -e["step"]))

    def medium(self, random_return: float, best_return: float) -> dict[str, Any]:
        """The checkpoint closest to ``random + medium_fraction * (best - random)``
        (earliest on ties)."""
        target = random_return + self.cfg.medium_fraction * (best_return - random_return)
        return min(self.evals(), key=lambda e: (abs(e["return"] - target), e["step"]))

    def replay(self, up_to: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Every recorded transition up to env step ``up_to``, in order (D4RL arrays, infos).
        An episode cut by an interruption of training is marked ``timeouts`` at its end."""
        steps = [int(e["step"]) for e in self.evals() if e["step"] <= up_to]
        chunks = []
        for step in steps:
            with np.load(self.chunk_path(step)) as z:
                chunks.append({k: z[k] for k in z.files})
        for prev, nxt in itertools.pairwise(chunks):
            ended = bool(prev["terminals"][-1] or prev["timeouts"][-1])
            if bool(nxt["first_is_reset"]) and not ended:
                prev["timeouts"][-1] = True
        keys = ("observations", "actions", "rewards", "next_observations", "terminals")
        arrays = {k: np.concatenate([c[k] for c in chunks]) for k in (*keys, "timeouts")}
        infos = {}
        if all("qpos" in c for c in chunks):
            infos = {k: np.concatenate([c[k] for c in chunks]) for k in ("qpos", "qvel")}
        return arrays, infos


# -- the command ---------------------------------------------------------------------------
def _prepare_folder(cfg: CollectConfig, spec: EnvSpec, log: Log) -> None:
    """Check the folder against the settings; ``overwrite`` clears what this tool wrote."""
    settings_path = cfg.out / "collect.json"
    targets = [dataset_path(cfg.out, spec.id, k) for k in cfg.kinds]
    if cfg.overwrite:
        if (cfg.out / "behavior").is_dir():
            shutil.rmtree(cfg.out / "behavior")
        settings_path.unlink(missing_ok=True)
        for kind in KINDS:  # medium-expert must never reuse an old medium/expert file
            dataset_path(cfg.out, spec.id, kind).unlink(missing_ok=True)
    elif settings_path.is_file():
        saved = _read_json(settings_path)
        now = json.loads(json.dumps(cfg.settings()))
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        if diff == ["behavior_steps"] and now["behavior_steps"] > saved["behavior_steps"]:
            _extend_training(cfg, spec, int(saved["behavior_steps"]), log)
        elif diff:
            listing = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in diff)
            raise MbrlError(
                f"'{cfg.out}' holds datasets generated with other settings ({listing}). "
                "Rerun with the same settings to resume, choose another --out, or pass "
                "--overwrite to discard them and start over."
            )
        else:
            log(f"resuming in {cfg.out} (settings match {settings_path.name})")
    else:
        existing = [str(p) for p in targets if p.exists()]
        if existing:
            raise MbrlError(
                f"{', '.join(existing)} already exist(s) and '{cfg.out}' has no "
                "collect.json (not written by a compatible 'mbrl data collect'); pass "
                "--overwrite to replace them or choose another --out."
            )
    cfg.out.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(cfg.out)
    _remove_stale_temps(cfg.out / "behavior")
    _write_json(settings_path, cfg.settings())


def _extend_training(cfg: CollectConfig, spec: EnvSpec, before: int, log: Log) -> None:
    """A larger ``--behavior-steps`` continues training; datasets written from the shorter
    run would be stale, so they must be gone first; the cached reference scores go."""
    stale = [str(p) for k in KINDS if (p := dataset_path(cfg.out, spec.id, k)).exists()]
    if stale:
        raise MbrlError(
            f"--behavior-steps {cfg.behavior_steps} extends the behaviour run in '{cfg.out}' "
            f"(trained for {before} steps), but datasets from the shorter run exist: "
            f"{', '.join(stale)}. Delete (or move) them first, or pass --overwrite to start over."
        )
    (cfg.out / "behavior" / "refs.json").unlink(missing_ok=True)
    log(f"extending behaviour training in {cfg.out} from {before} to {cfg.behavior_steps} steps")


def _grow_buffer(model: Any, capacity: int) -> None:
    """Give SAC's replay buffer room for ``capacity`` transitions (it was sized for the
    shorter run), keeping its contents in order."""
    old = model.replay_buffer
    if old.buffer_size >= capacity:
        return
    from stable_baselines3.common.buffers import ReplayBuffer

    new = ReplayBuffer(
        capacity,
        old.observation_space,
        old.action_space,
        device=old.device,
        handle_timeout_termination=old.handle_timeout_termination,
    )
    n = old.buffer_size if old.full else old.pos
    order = np.roll(np.arange(old.buffer_size), -old.pos)[-n:] if old.full else np.arange(n)
    for key in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
        getattr(new, key)[:n] = getattr(old, key)[order]
    new.pos = n
    model.replay_buffer, model.buffer_size = new, capacity


def reference_scores(cfg: CollectConfig, spec: EnvSpec, run: BehaviorRun | None) -> dict[str, Any]:
    """Random policy's and best checkpoint's mean returns over ``ref_episodes`` episodes
    (cached in ``behavior/refs.json``)."""
    path = cfg.out / "behavior" / "refs.json"
    if path.is_file():
        cached: dict[str, Any] = _read_json(path)
        return cached
    env = spec.make()
    low, high = env.action_space.low, env.action_space.high
    env.close()
    rng = np.random.default_rng(cfg.seed + _SEED_OFFSETS["ref"])

    def random_act(obs: np.ndarray) -> np.ndarray:
        return rng.uniform(low, high).astype(np.float32)

    rand = evaluate_policy(spec, random_act, cfg.ref_episodes, cfg.seed)
    refs: dict[str, Any] = {
        "ref_min_score": rand["eval/return"],
        "ref_min_score_std": rand["eval/return_std"],
        "ref_episodes": cfg.ref_episodes,
    }
    if run is not None:
        best = run.best()
        model = _load_sac(run.ckpt_path(best["step"]))
        res = evaluate_policy(spec, deterministic_act(model), cfg.ref_episodes, cfg.seed)
        refs.update(
            ref_max_score=res["eval/return"],
            ref_max_score_std=res["eval/return_std"],
            ref_max_policy_step=best["step"],
        )
        _write_json(path, refs)  # cached: it depends on the finished behaviour run only
    return refs


def _policy_dataset(
    cfg: CollectConfig, spec: EnvSpec, run: BehaviorRun, ckpt: dict[str, Any], kind: str
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
    seed = cfg.seed + _SEED_OFFSETS[kind]
    model = _load_sac(run.ckpt_path(int(ckpt["step"])))
    data, infos = collect_rollouts(
        spec,
        cfg.size,
        sampled_act(model, seed),
        seed,
        progress=cfg.progress,
        desc=f"{kind} {spec.id}",
    )
    return data, infos, seed


def _policy_meta(prefix: str, ckpt: dict[str, Any]) -> dict[str, Any]:
    return {
        f"{prefix}policy_step": int(ckpt["step"]),
        f"{prefix}policy_eval_return": float(ckpt["return"]),
        f"{prefix}policy_eval_return_std": float(ckpt["return_std"]),
    }


def build_dataset(
    cfg: CollectConfig,
    spec: EnvSpec,
    kind: str,
    run: BehaviorRun | None,
    refs: dict[str, Any],
    base_meta: dict[str, Any],
) -> D4RLDataset:
    """One dataset of ``kind`` in memory (``medium-expert`` reuses the medium and expert
    files when they exist)."""
    meta: dict[str, Any] = {**base_meta, "kind": kind}
    if kind == "random":
        seed = cfg.seed + _SEED_OFFSETS["random"]
        meta.update(policy="uniform random", seed=seed, size=cfg.size)
        return collect_random(spec, cfg.size, seed, progress=cfg.progress, metadata=meta)
    assert run is not None  # CollectConfig refuses policy kinds without behaviour steps
    best = run.best()
    medium = run.medium(refs["ref_min_score"], best["return"])
    sac = "SAC (stable-baselines3)"
    where = f"{kind} data from {spec.id}"
    if kind in ("medium", "expert"):
        ckpt = medium if kind == "medium" else best
        data, infos, seed = _policy_dataset(cfg, spec, run, ckpt, kind)
        meta.update(policy=f"{sac}, actions sampled", algorithm="SAC", seed=seed, size=cfg.size)
        meta.update(_policy_meta("", ckpt))
        return D4RLDataset.from_arrays(
            data, where=where, infos=infos, metadata=meta, env_id=spec.id
        )
    if kind == "medium-replay":
        data, infos = run.replay(int(medium["step"]))
        meta.update(
            policy=f"{sac} replay data up to the medium checkpoint (incl. "
            f"{cfg.learning_starts} uniform warm-up steps)",
            algorithm="SAC",
            seed=cfg.seed,
            size=len(data["rewards"]),
        )
        meta.update(_policy_meta("", medium))
        return D4RLDataset.from_arrays(
            data, where=where, infos=infos, metadata=meta, env_id=spec.id
        )
    # medium-expert: medium rows then expert rows, as D4RL.
    parts = []
    for part in ("medium", "expert"):
        path = dataset_path(cfg.out, spec.id, part)
        if path.is_file():
            parts.append(load_d4rl(path))
        else:
            parts.append(build_dataset(cfg, spec, part, run, refs, base_meta))
    keys = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")
    arrays = {k: np.concatenate([getattr(p, k) for p in parts]) for k in keys}
    cut = len(parts[0]) - 1  # medium's trailing partial episode ends where expert begins
    if not (arrays["terminals"][cut] or arrays["timeouts"][cut]):
        arrays["timeouts"][cut] = True
    info_keys = set(parts[0].infos) & set(parts[1].infos)
    infos = {k: np.concatenate([p.infos[k] for p in parts]) for k in sorted(info_keys)}
    meta.update(
        policy=f"{sac}: medium then expert checkpoint, actions sampled",
        algorithm="SAC",
        seed=f"{parts[0].metadata.get('seed')},{parts[1].metadata.get('seed')}",
        size=len(arrays["rewards"]),
    )
    meta.update(_policy_meta("medium_", medium))
    meta.update(_policy_meta("expert_", best))
    return D4RLDataset.from_arrays(arrays, where=where, infos=infos, metadata=meta, env_id=spec.id)


def collect(cfg: CollectConfig, log: Log = print) -> dict[str, Path]:
    """Generate the datasets of ``cfg`` (resuming what the folder already holds);
    returns kind -> file path."""
    torch.set_num_threads(cfg.threads)
    spec = get_env_spec(cfg.env)
    env = spec.make()
    try:  # SAC and the D4RL layout need flat Box spaces
        flat_dim(env.observation_space), flat_dim(env.action_space)
    except MbrlError as exc:
        raise MbrlError(f"cannot collect datasets on '{spec.id}': {exc}") from None
    finally:
        env.close()
    _prepare_folder(cfg, spec, log)
    run: BehaviorRun | None = None
    if cfg.behavior_steps > 0:
        run = BehaviorRun(cfg, spec, log)
        run.train()
    refs = reference_scores(cfg, spec, run)
    base = {
        **env_metadata(spec),
        **refs,
        "behavior_seed": cfg.seed,
        "behavior_steps": cfg.behavior_steps,
        "behavior_learning_starts": cfg.learning_starts,
        "medium_fraction": cfg.medium_fraction,
        "generator": "mbrl data collect",
    }
    if run is not None:
        best = run.best()
        medium = run.medium(refs["ref_min_score"], best["return"])
        log(
            f"reference scores: random {refs['ref_min_score']:.1f}, best "
            f"{refs['ref_max_score']:.1f} (step {best['step']}); medium checkpoint: step "
            f"{medium['step']} (eval return {medium['return']:.1f})"
        )
    written: dict[str, Path] = {}
    for kind in cfg.kinds:
        path = dataset_path(cfg.out, spec.id, kind)
        written[kind] = path
        if path.is_file() and not cfg.overwrite:
            log(f"{path}: exists, skipping")
            continue
        ds = build_dataset(cfg, spec, kind, run, refs, base)
        save_d4rl(ds, path, overwrite=cfg.overwrite)
        log(f"wrote {path} ({len(ds):,} rows)")
    return written


__all__ = [
    "DEFAULT_KINDS",
    "KINDS",
    "BehaviorRun",
    "CollectConfig",
    "build_dataset",
    "collect",
    "dataset_path",
    "parse_kinds",
    "reference_scores",
    "sampled_act",
]
