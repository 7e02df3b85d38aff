"""Dataset ids, download, loading by id or path, ``info`` summaries and format conversion.

A *source* is one of

- ``d4rl:<env>-<dataset>-v2`` (e.g. ``d4rl:hopper-medium-replay-v2``; the ``d4rl:`` prefix
  may be left out when no file of that name exists): the D4RL v2 MuJoCo locomotion files,
  cached where the d4rl package caches them, ``$D4RL_DATASET_DIR`` (default
  ``~/.d4rl/datasets``), under the file name of their URL, and downloaded when missing;
- ``minari:<dataset_id>`` (e.g. ``minari:mujoco/hopper/medium-v0``): a dataset already in
  Minari's local directory (see :mod:`mbrl.data.minari`);
- a path: a D4RL ``.hdf5``, an ``.npz`` with D4RL keys, or a Minari dataset folder.

Every ``d4rl:`` id is registered in :data:`mbrl.registry.DATASETS` with a
:class:`DatasetSpec`.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from mbrl.data.d4rl import (
    _ENV_METADATA_KEYS,
    D4RLDataset,
    EpisodeStats,
    atomic_write,
    episode_stats,
    load_d4rl,
    load_npz,
    save_d4rl,
    save_npz,
)
from mbrl.data.minari import load_minari, minari_dataset_path
from mbrl.data.scores import FAMILY_GYM_ID, env_family, normalized_score, ref_scores_for
from mbrl.errors import MbrlError, did_you_mean, unknown_name
from mbrl.registry import DATASETS, ENVS, Entry

D4RL_URL_BASE = "http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2"
# Seconds to wait for a connection or for each read: fail fast when offline.
DOWNLOAD_TIMEOUT_S = 10.0

# How each D4RL v2 MuJoCo dataset was collected (Fu et al. 2020, section 5).
D4RL_DATASET_KINDS: dict[str, str] = {
    "random": "1M steps of a uniformly random policy",
    "medium": "1M steps of an early-stopped SAC policy (about 1/3 of expert return)",
    "expert": "1M steps of a fully trained SAC policy",
    "medium-replay": "the SAC replay buffer up to the medium policy's checkpoint",
    "full-replay": "the full SAC replay buffer of the expert policy's training run",
    "medium-expert": "medium followed by expert data (2M steps)",
}
# Observation/action sizes of D4RL's gym v2 envs.
_FAMILY_DIMS: dict[str, tuple[int, int]] = {
    "halfcheetah": (17, 6),
    "hopper": (11, 3),
    "walker2d": (17, 6),
    "ant": (111, 8),
}


@dataclass(frozen=True)
class DatasetSpec:
    """A downloadable D4RL dataset.

    Attributes:
        name: registry id, ``"d4rl:hopper-medium-v2"``.
        family: env family (``"hopper"``), the key of the reference-score table.
        kind: ``"medium"``, ``"medium-replay"``, ...
        filename: file name in the cache directory (that of the URL, as d4rl does).
        url: default download URL.
        env_id: gymnasium id with D4RL's model and observation layout.
        obs_dim, act_dim: sizes of the dataset's arrays.
        make_kwargs: ``gymnasium.make`` arguments that give those sizes (Ant needs
            ``use_contact_forces=True`` for D4RL's 111-dim observations).
    """

    name: str
    family: str
    kind: str
    filename: str
    url: str
    env_id: str
    obs_dim: int
    act_dim: int
    make_kwargs: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def url_for(self, url_base: str | None = None) -> str:
        """URL under ``url_base`` (default: ``$D4RL_DATASET_URL_BASE``, else D4RL's server)."""
        base = url_base or os.environ.get("D4RL_DATASET_URL_BASE") or D4RL_URL_BASE
        return f"{base.rstrip('/')}/{self.filename}"


def _d4rl_spec(family: str, kind: str) -> DatasetSpec:
    filename = f"{family}_{kind.replace('-', '_')}-v2.hdf5"
    obs_dim, act_dim = _FAMILY_DIMS[family]
    return DatasetSpec(
        name=f"d4rl:{family}-{kind}-v2",
        family=family,
        kind=kind,
        filename=filename,
        url=f"{D4RL_URL_BASE}/{filename}",
        env_id=FAMILY_GYM_ID[family],
        obs_dim=obs_dim,
        act_dim=act_dim,
        make_kwargs={"use_contact_forces": True} if family == "ant" else {},
    )


D4RL_DATASETS: dict[str, DatasetSpec] = {}
for _family in _FAMILY_DIMS:
    for _kind, _how in D4RL_DATASET_KINDS.items():
        _spec = _d4rl_spec(_family, _kind)
        D4RL_DATASETS[_spec.name] = _spec
        DATASETS.add(Entry(name=_spec.name, obj=_spec, description=f"D4RL {_family}: {_how}"))


def d4rl_dataset_dir() -> Path:
    """d4rl's cache directory: ``$D4RL_DATASET_DIR`` or ``~/.d4rl/datasets``."""
    return Path(os.environ.get("D4RL_DATASET_DIR", "~/.d4rl/datasets")).expanduser()


def get_dataset_spec(dataset_id: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of a ``d4rl:`` id (the prefix is optional)."""
    name = dataset_id if dataset_id.startswith("d4rl:") else f"d4rl:{dataset_id}"
    if name not in D4RL_DATASETS:
        raise unknown_name(
            "dataset",
            name,
            D4RL_DATASETS,
            hint="D4RL ids are d4rl:<halfcheetah|hopper|walker2d|ant>-<kind>-v2.",
        )
    return D4RL_DATASETS[name]


# -- download ----------------------------------------------------------------------------
def download_file(
    url: str, dst: Path, *, timeout: float = DOWNLOAD_TIMEOUT_S, progress: bool = True
) -> Path:
    """Download ``url`` to ``dst`` with a progress bar, via a temp file in ``dst``'s folder
    renamed into place only when complete (and, for ``.hdf5``, a valid HDF5 file)."""
    dst = Path(dst)

    def failure(reason: object) -> MbrlError:
        return MbrlError(
            f"could not download {url}: {reason}. Without network access, download it "
            f"elsewhere and put it at {dst} (or point D4RL_DATASET_DIR at the folder that "
            f"holds {dst.name}; D4RL_DATASET_URL_BASE selects a mirror)."
        )

    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as exc:  # before URLError: it is a subclass
        raise failure(f"HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise failure(getattr(exc, "reason", exc)) from exc

    def write(tmp: Path) -> None:
        total = int(response.headers.get("Content-Length") or 0) or None
        received = 0
        try:
            with (
                open(tmp, "wb") as fh,
                tqdm(
                    total=total, unit="B", unit_scale=True, desc=dst.name, disable=not progress
                ) as bar,
            ):
                while chunk := response.read(1 << 20):
                    fh.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        except OSError as exc:
            raise failure(f"connection lost after {received} bytes ({exc})") from exc
        if total is not None and received != total:
            raise failure(f"connection closed after {received} of {total} bytes")
        if dst.suffix in (".hdf5", ".h5") and not h5py.is_hdf5(tmp):
            raise failure("the server did not send an HDF5 file")

    with response:
        return atomic_write(dst, write, overwrite=True)


# -- resolving and loading ---------------------------------------------------------------
def resolve_dataset(
    source: str | os.PathLike[str],
    *,
    download: bool = True,
    url_base: str | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
    progress: bool = True,
) -> Path:
    """Local path of a dataset id or path, downloading a missing D4RL file.

    Args:
        source: ``d4rl:<id>``, ``minari:<id>``, or a path (see the module docstring).
        download: fetch a missing D4RL file (else: error saying where to put it).
        url_base: download from this base URL instead of ``$D4RL_DATASET_URL_BASE`` or
            D4RL's server.
        timeout: connect/read timeout in seconds.
        progress: show a progress bar while downloading.
    """
    text = str(source)
    if text.startswith("minari:"):
        return minari_dataset_path(text[len("minari:") :])
    path = Path(text).expanduser()
    if text.startswith("d4rl:"):
        spec = get_dataset_spec(text)
    elif path.exists():
        return path
    elif f"d4rl:{text}" in D4RL_DATASETS:
        spec = D4RL_DATASETS[f"d4rl:{text}"]
    else:
        short = [n[len("d4rl:") :] for n in D4RL_DATASETS]
        raise MbrlError(
            f"dataset '{text}' is neither an existing file nor a known dataset id."
            f"{did_you_mean(text, [*D4RL_DATASETS, *short])} Give an existing .hdf5/.npz "
            "file, a Minari dataset folder, 'minari:<dataset_id>', or a D4RL id "
            "'d4rl:<halfcheetah|hopper|walker2d|ant>-<kind>-v2' with kind one of "
            f"{', '.join(D4RL_DATASET_KINDS)}."
        )
    dst = d4rl_dataset_dir() / spec.filename
    if dst.is_file():
        return dst
    url = spec.url_for(url_base)
    if not download:
        raise MbrlError(
            f"{spec.name} is not downloaded: expected {dst}. Run `mbrl data download "
            f"{spec.name}`, or download {url} and put it there."
        )
    return download_file(url, dst, timeout=timeout, progress=progress)


def load_dataset(
    source: str | os.PathLike[str],
    *,
    load_infos: bool = True,
    download: bool = True,
    url_base: str | None = None,
) -> D4RLDataset:
    """Load any supported source (D4RL id or file, Minari id or folder, ``.npz``)."""
    path = resolve_dataset(source, download=download, url_base=url_base)
    if path.is_dir():
        ds = load_minari(path)
    elif path.suffix == ".npz":
        ds = load_npz(path)
    else:
        ds = load_d4rl(path, load_infos=load_infos)
    if ds.env_id is None and str(source).startswith("d4rl:"):
        ds.env_id = get_dataset_spec(str(source)).env_id
    return ds


def _source_format(path: Path) -> str:
    if path.is_dir() or path.name == "main_data.hdf5":
        return "minari"
    return "npz" if path.suffix == ".npz" else "d4rl-hdf5"


def _size_on_disk(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    if path.name == "main_data.hdf5":  # count metadata.json and friends too
        return sum(p.stat().st_size for p in path.parent.iterdir() if p.is_file())
    return path.stat().st_size


# -- info --------------------------------------------------------------------------------
@dataclass
class DatasetInfo:
    """Summary of a dataset for ``mbrl data info``.

    Attributes:
        source: what the user gave; path: the resolved file or folder.
        format: ``"d4rl-hdf5"``, ``"npz"`` or ``"minari"``.
        size_bytes: size on disk.
        n_transitions, obs_dim, act_dim: array sizes.
        has_next_observations: the file stores next observations.
        stats: episode counts, lengths and returns (:class:`EpisodeStats`).
        ref_scores: D4RL ``(min, max)`` reference returns, if known.
        normalized_return_mean: normalized mean return of complete episodes, if known.
        env_id: gymnasium id guessed from metadata or file name.
        env_matches: registered envs (``mbrl.registry.ENVS``) the data fits; several when
            ambiguous (e.g. 17/6 dims are HalfCheetah and Walker2d).
        env_match_by: how they were found: ``"metadata"``, ``"dataset id"``,
            ``"file name"`` or ``"obs/act dims"``; ``None`` if nothing matched.
        keys: keys in the file; metadata: scalar metadata; metadata_skipped: large
            metadata arrays not read (key -> shape).
    """

    source: str
    path: Path
    format: str
    size_bytes: int
    n_transitions: int
    obs_dim: int
    act_dim: int
    has_next_observations: bool
    stats: EpisodeStats
    ref_scores: tuple[float, float] | None
    normalized_return_mean: float | None
    env_id: str | None
    env_matches: list[str]
    env_match_by: str | None
    keys: list[str]
    metadata: dict[str, Any]
    metadata_skipped: dict[str, tuple[int, ...]]


def match_env(ds: D4RLDataset, dataset_id: str | None = None) -> tuple[list[str], str | None]:
    """Registered envs a dataset belongs to, and how they were found.

    Tried in order: the metadata's env name (exact id, then env family), the dataset id,
    the file name, then equal obs/act dims among envs whose :class:`EnvSpec` declares them.
    Family matches keep only envs whose declared dims (if any) equal the data's.
    """
    registered: dict[str, Any] = {entry.name: entry.obj for entry in ENVS.entries()}

    def dims_ok(spec: Any) -> bool:
        o, a = getattr(spec, "obs_dim", None), getattr(spec, "act_dim", None)
        return (o is None or o == ds.obs_dim) and (a is None or a == ds.act_dim)

    meta_env = next(
        (str(ds.metadata[k]) for k in _ENV_METADATA_KEYS if isinstance(ds.metadata.get(k), str)),
        None,
    )
    if meta_env is not None and meta_env in registered:
        return [meta_env], "metadata"
    clues = [
        ("metadata", meta_env),
        ("dataset id", dataset_id),
        ("file name", ds.path.name if ds.path is not None else None),
    ]
    for how, clue in clues:
        family = env_family(clue) if clue else None
        if family is None:
            continue
        guess = ds.env_id
        if guess in registered and env_family(guess) == family and dims_ok(registered[guess]):
            return [guess], how
        same = [n for n, s in registered.items() if env_family(n) == family and dims_ok(s)]
        if same:
            return sorted(same), how
    by_dims = [
        n
        for n, s in registered.items()
        if getattr(s, "obs_dim", None) == ds.obs_dim and getattr(s, "act_dim", None) == ds.act_dim
    ]
    return (sorted(by_dims), "obs/act dims") if by_dims else ([], None)


def dataset_info(source: str | os.PathLike[str], *, download: bool = False) -> DatasetInfo:
    """Summarise a dataset (see :class:`DatasetInfo`). Does not download by default."""
    path = resolve_dataset(source, download=download)
    ds = load_dataset(path, load_infos=False)
    text = str(source)
    dataset_id = text if text.startswith(("d4rl:", "minari:")) else None
    if ds.env_id is None and dataset_id is not None and dataset_id.startswith("d4rl:"):
        ds.env_id = get_dataset_spec(dataset_id).env_id
    stats = episode_stats(ds)
    refs = ref_scores_for(env_id=ds.env_id, dataset=ds)
    if refs is None and dataset_id is not None:
        refs = ref_scores_for(dataset=dataset_id)
    norm = None
    if refs is not None and stats.return_mean is not None:
        norm = normalized_score(stats.return_mean, *refs)
    matches, how = match_env(ds, dataset_id)
    return DatasetInfo(
        source=text,
        path=path,
        format=_source_format(ds.path or path),
        size_bytes=_size_on_disk(path),
        n_transitions=len(ds),
        obs_dim=ds.obs_dim,
        act_dim=ds.act_dim,
        has_next_observations=ds.has_next_observations,
        stats=stats,
        ref_scores=refs,
        normalized_return_mean=norm,
        env_id=ds.env_id,
        env_matches=matches,
        env_match_by=how,
        keys=ds.keys,
        metadata=ds.metadata,
        metadata_skipped=ds.metadata_skipped,
    )


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def format_info(info: DatasetInfo) -> Table:
    """A two-column rich table of a :class:`DatasetInfo`."""
    s = info.stats
    table = Table(title=f"dataset {info.source}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("path", str(info.path))
    table.add_row("format", f"{info.format}, {_fmt_bytes(info.size_bytes)}")
    table.add_row("transitions", f"{info.n_transitions:,}")
    table.add_row("obs / act dims", f"{info.obs_dim} / {info.act_dim}")
    table.add_row("next_observations", "stored" if info.has_next_observations else "absent")
    table.add_row(
        "episodes",
        f"{s.n_episodes} ({s.n_terminal} terminal, {s.n_timeout} timeout, "
        f"{s.n_partial} trailing partial)",
    )
    table.add_row(
        "episode length",
        f"min {_fmt(s.length_min, 0)}  mean {_fmt(s.length_mean)}  max {_fmt(s.length_max, 0)}",
    )
    table.add_row(
        "return (complete episodes)",
        f"min {_fmt(s.return_min)}  mean {_fmt(s.return_mean)}  max {_fmt(s.return_max)}  "
        f"std {_fmt(s.return_std)}",
    )
    if info.ref_scores is not None:
        table.add_row(
            "reference min / max",
            f"{info.ref_scores[0]:,.3f} / {info.ref_scores[1]:,.3f}",
        )
        table.add_row("normalized mean return", _fmt(info.normalized_return_mean))
    else:
        table.add_row("reference scores", "unknown (no normalized score)")
    table.add_row("env (guess)", info.env_id or "unknown")
    if info.env_matches:
        kind = "ambiguous: " if len(info.env_matches) > 1 else ""
        table.add_row(
            "registered env", f"{kind}{', '.join(info.env_matches)} (by {info.env_match_by})"
        )
    else:
        table.add_row("registered env", "none matches")
    main_keys = [k for k in info.keys if not k.startswith("metadata/")]
    n_meta = len(info.keys) - len(main_keys)
    table.add_row("keys", ", ".join(main_keys) + (f" + {n_meta} metadata/*" if n_meta else ""))
    for key, value in sorted(info.metadata.items()):
        shown = str(value)
        table.add_row(f"metadata {key}", shown if len(shown) <= 80 else shown[:77] + "...")
    if info.metadata_skipped:
        table.add_row("large metadata (not read)", f"{len(info.metadata_skipped)} array(s)")
    return table


def print_info(source: str | os.PathLike[str], console: Console | None = None) -> DatasetInfo:
    """Print the summary of a dataset id or file (``mbrl data info``) and return it."""
    info = dataset_info(source)
    (console or Console()).print(format_info(info))
    return info


# -- convert -----------------------------------------------------------------------------
_WRITERS = {".hdf5": save_d4rl, ".h5": save_d4rl, ".npz": save_npz}


def convert(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Convert a dataset to D4RL ``.hdf5`` (gzip, d4rl key names) or ``.npz``.

    ``src`` is any source :func:`load_dataset` accepts (D4RL file or id, ``.npz``, Minari
    id or folder). The output is written to a temp file and renamed into place; the
    source is never overwritten, an existing ``dst`` only with ``overwrite=True``.
    Large metadata arrays (behaviour-policy weights) are not carried over.
    """
    dst_path = Path(dst).expanduser()
    writer = _WRITERS.get(dst_path.suffix.lower())
    if writer is None:
        raise MbrlError(
            f"cannot write '{dst_path}': unknown format '{dst_path.suffix}'. "
            f"Use one of {', '.join(sorted(_WRITERS))}.{did_you_mean(dst_path.suffix, _WRITERS)}"
        )
    src_path = resolve_dataset(src)
    if dst_path.resolve() == src_path.resolve() or (
        src_path.is_dir() and src_path.resolve() in dst_path.resolve().parents
    ):
        raise MbrlError(f"'{dst_path}' is the source dataset; write the conversion elsewhere.")
    if dst_path.exists() and not overwrite:
        raise MbrlError(
            f"'{dst_path}' already exists; pass overwrite=True (--overwrite) to replace it."
        )
    ds = load_dataset(src_path)
    return writer(ds, dst_path, overwrite=overwrite)


__all__ = [
    "D4RL_DATASETS",
    "D4RL_DATASET_KINDS",
    "D4RL_URL_BASE",
    "DatasetInfo",
    "DatasetSpec",
    "convert",
    "d4rl_dataset_dir",
    "dataset_info",
    "download_file",
    "format_info",
    "get_dataset_spec",
    "load_dataset",
    "match_env",
    "print_info",
    "resolve_dataset",
]
