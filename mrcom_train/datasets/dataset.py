"""The on-disk multi-scenario dataset's writer and reader, which with :mod:`.checks` (the file and manifest
checks, and the episode-folder names) are the only code that knows its files: a writer (:class:`DatasetWriter`,
plus :func:`write_episode` for worker processes), a reader (:class:`Dataset`, :func:`read_episode`,
:func:`read_manifest`), :func:`is_complete` and :func:`observation_stats`.

Layout::

    DIR/manifest.json                 format, version, dims, scenarios (spec + masks), episodes, stats
    DIR/episodes/s0003/e00012/        one chunk per episode, written to a temp dir and renamed (atomic)
        obs.npy     (T+1, obs_dim)    float32, o_0 … o_T, zero-padded to the dataset's obs_dim
        action.npy  (T, act_dim)      float32, a_0 … a_{T-1}, zero-padded to the dataset's act_dim
        reward.npy  (T,)              float32, r_k is the reward for taking a_k in o_k

Arrays are opened memory-mapped, so a dataset larger than memory trains fine. The manifest is only ever
written by one process (the writer's), atomically; the episode folders on disk are the source of truth
when a collection resumes. A dataset is usable once its manifest says ``complete`` (:meth:`finalize`). A
write that fails (a full disk, a file-size limit) is an ``OSError`` with its errno naming the file, and
leaves no half-written episode.

Integrity (format version 2): each episode record of the manifest carries the SHA-256 of its three files
(``files``). :class:`Dataset` checks the manifest's fields, that ``episodes/`` holds nothing but episode
folders the manifest lists (real folders and files: a symbolic link anywhere there is refused), and every
file's ``.npy`` header (float32, the recorded shape, the exact size) and checksum before anything reads the
data (the checks are in :mod:`.checks`); :func:`read_episode` never unpickles. A damaged, truncated or
replaced file is a :class:`~mrcom_core.errors.UserInputError` naming it, in one line. A resumed collection
compares the files on disk with the checksums its manifest recorded and stops at a changed one instead of
building on it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mrcom_core.errors import UserInputError
from mrcom_core.io.files import (
    atomic_dir,
    file_checksums,
    read_versioned_json,
    remove_stale_temporaries,
    require_fields,
    verify_checksums,
    write_json_atomic,
    writing,
)

from .. import __version__
from ..scenarios import ScenarioSpec, UnifiedSpace
from .checks import (
    EPISODES,
    FIELDS,
    FILES,
    REDO,
    check_episode_files,
    episode_dir,
    episode_folders,
    episode_records,
    folder_index,
    manifest_error,
    manifest_stats,
    one_line,
    scenario_record,
)

FORMAT = "mrcom-dataset"
VERSION = 2  # 2: per-episode SHA-256 checksums (``files``) in the manifest
MANIFEST = "manifest.json"


def write_episode(root: Path | str, scenario: int, episode: int, obs: np.ndarray, action: np.ndarray,
                  reward: np.ndarray) -> None:
    """Write one episode's arrays atomically (any process may call this; only the writer owns the manifest).

    A write that fails (a full disk, a file-size limit) is an ``OSError`` with its errno naming the file (or
    the episode folder), raised after the half-written folder is removed."""
    obs, action, reward = (np.ascontiguousarray(x, dtype=np.float32) for x in (obs, action, reward))
    if not (obs.ndim == 2 and action.ndim == 2 and reward.ndim == 1
            and obs.shape[0] == action.shape[0] + 1 == reward.shape[0] + 1):
        raise ValueError(f"episode arrays must be obs (T+1, D), action (T, A), reward (T,); got "
                         f"{obs.shape}, {action.shape}, {reward.shape}")
    folder = episode_dir(root, scenario, episode)
    with writing(folder), atomic_dir(folder) as tmp:
        for name, value in zip(FIELDS, (obs, action, reward), strict=True):
            _save_npy(tmp / f"{name}.npy", value)


def _save_npy(path: Path, array: np.ndarray) -> None:
    """Write a C-contiguous array as ``np.save`` does, byte for byte, through Python's file object: a short
    write (a full disk, a file-size limit) is then an ``OSError`` with its errno, naming ``path``.
    ``np.save`` writes through C stdio instead, which reports one with no errno or, for a small file, not
    at all (a truncated file would be published as a finished episode)."""
    fmt = np.lib.format
    with writing(path), open(path, "wb") as f:
        fmt.write_array_header_1_0(f, fmt.header_data_from_array_1_0(array))
        f.write(array.data)


def read_episode(root: Path | str, scenario: int, episode: int, mmap: bool = False, *, length: int | None = None,
                 obs_dim: int | None = None, act_dim: int | None = None) -> dict[str, np.ndarray]:
    """One episode's ``obs``, ``action``, ``reward`` arrays (memory-mapped, read-only with ``mmap``).

    The files' headers are checked first (:func:`check_episode_files`, against ``length`` and the dims
    where given) and nothing is unpickled: a damaged file is a :class:`UserInputError` naming it."""
    path = episode_dir(root, scenario, episode)
    if not path.is_dir():
        raise UserInputError(f"dataset {root} has no episode {path.name} of scenario {scenario} on disk")
    check_episode_files(path, length, obs_dim, act_dim)
    arrays = {}
    for name in FIELDS:
        try:
            arrays[name] = np.load(path / f"{name}.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise UserInputError(f"{path / (name + '.npy')} cannot be read ({one_line(e)}; {REDO})") from None
    return arrays


def remove_episode(root: Path | str, scenario: int, episode: int) -> None:
    """Delete one episode's arrays (a scenario restarted from scratch); the writer forgets it on its own."""
    shutil.rmtree(episode_dir(root, scenario, episode), ignore_errors=True)


def read_manifest(root: Path | str) -> dict:
    """``root/manifest.json``, checked to be a dataset manifest of this version (complete or not)."""
    return read_versioned_json(Path(root) / MANIFEST, FORMAT, VERSION, "dataset", REDO)


def is_complete(root: Path | str) -> bool:
    """Whether ``root`` holds a finished dataset (a valid manifest that says ``complete``)."""
    try:
        return read_manifest(root).get("complete") is True
    except UserInputError:
        return False


class DatasetWriter:
    """Creates a dataset folder, or continues one, and owns its manifest.

    Episodes are written by :func:`write_episode` (from any process) and announced with :meth:`add`, which
    records their checksums; the manifest is rewritten (atomically) by :meth:`save` as progress and by
    :meth:`finalize` once every episode is there, with the observation statistics. ``meta`` (split, policy,
    collect config…) is stored in the manifest as is. Opening a folder removes what a killed writer left
    half-written and reads the finished episodes from disk (:meth:`scan`). The caller holds the folder's
    lock (:func:`mrcom_core.io.locks.folder_lock`).
    """

    def __init__(self, root: Path | str, specs: Sequence[ScenarioSpec], space: UnifiedSpace, meta: dict,
                 episodes_per_scenario: int | None = None):
        self.root, self.specs, self.space, self.meta = Path(root), list(specs), space, dict(meta)
        self.episodes_per_scenario = episodes_per_scenario
        self.root.mkdir(parents=True, exist_ok=True)
        base = self.root / EPISODES
        if base.is_dir() and not base.is_symlink():  # a symbolic link is refused by scan(), nothing removed
            remove_stale_temporaries(base)
            for folder in base.iterdir():
                if folder_index(folder.name, "s", 4) is not None and folder.is_dir() and not folder.is_symlink():
                    remove_stale_temporaries(folder)
        self.records: dict[tuple[int, int], dict] = {}
        self.scan()

    def _recorded_files(self) -> dict[tuple[int, int], dict]:
        """The checksums the manifest on disk (if any) recorded, by ``(scenario, episode)``."""
        if not (self.root / MANIFEST).exists():
            return {}
        records = episode_records(read_manifest(self.root), str(self.root / MANIFEST), len(self.specs))
        return {(r["scenario"], r["episode"]): r["files"] for r in records}

    def scan(self) -> None:
        """Record the finished episodes on disk (the source of truth).

        Each is checked (array headers; checksums where the manifest on disk recorded them): a damaged or
        changed episode, an episode outside this collection's scenarios × ``episodes_per_scenario`` or a stray
        entry under ``episodes/`` is a :class:`UserInputError` naming it, and nothing is deleted."""
        recorded = self._recorded_files()
        found = {}
        K = self.episodes_per_scenario
        for sid, ep in episode_folders(self.root):
            folder = episode_dir(self.root, sid, ep)
            if sid >= len(self.specs) or (K is not None and ep >= K):
                raise UserInputError(f"{folder} is not part of this collection ({len(self.specs)} scenario(s)"
                                     f"{'' if K is None else f' × {K} episode(s)'}); move it out of the dataset "
                                     f"folder")
            redo = f"delete {folder} to collect that episode again"
            length = check_episode_files(folder, None, self.space.obs_dim, self.space.act_dim, redo)
            files = file_checksums(folder, FILES)
            before = recorded.get((sid, ep))
            if before is not None and before != files:
                name = next(n for n in FILES if before.get(n) != files[n])
                raise UserInputError(f"checksum mismatch for {folder / name}: the file changed after it was "
                                     f"written; {redo}")
            reward = np.load(folder / "reward.npy", allow_pickle=False)
            found[(sid, ep)] = self._record(sid, ep, length, float(reward.sum()), files)
        self.records = found

    @staticmethod
    def _record(scenario: int, episode: int, length: int, ret: float, files: dict[str, str]) -> dict:
        return {"scenario": scenario, "episode": episode, "length": length, "return": ret, "files": files}

    def add(self, scenario: int, episode: int, length: int, ret: float, files: dict[str, str] | None = None) -> None:
        """Record a finished episode (its arrays are on disk; their checksums are computed unless given)."""
        if files is None:
            files = file_checksums(episode_dir(self.root, scenario, episode), FILES)
        self.records[(scenario, episode)] = self._record(scenario, episode, length, ret, files)

    def episodes_of(self, scenario: int) -> list[int]:
        return sorted(ep for (s, ep) in self.records if s == scenario)

    def forget_scenario(self, scenario: int) -> None:
        """Drop every recorded episode of ``scenario`` (a worker restarted it from scratch)."""
        for ep in self.episodes_of(scenario):
            del self.records[(scenario, ep)]

    def save(self, complete: bool = False, stats: dict | None = None) -> None:
        """Write the manifest for the episodes recorded so far."""
        space, episodes = self.space, sorted(self.records.values(), key=lambda e: (e["scenario"], e["episode"]))
        with writing(self.root / MANIFEST):
            write_json_atomic(self.root / MANIFEST, {
                "format": FORMAT, "version": VERSION, "mrcom_version": __version__, "complete": complete,
                "obs_dim": space.obs_dim, "act_dim": space.act_dim, **self.meta,
                "scenarios": [{"id": i, "spec": s.to_dict(), "obs_mask": space.obs_mask(s).astype(int).tolist(),
                               "action_mask": space.action_mask(s).astype(int).tolist()}
                              for i, s in enumerate(self.specs)],
                "episodes": episodes, "num_episodes": len(episodes),
                "num_steps": int(sum(e["length"] for e in episodes)), "stats": stats,
            })

    def finalize(self) -> None:
        """Compute the observation statistics over every episode and mark the dataset complete."""
        chunks = ((read_episode(self.root, s, e, mmap=True, length=self.records[(s, e)]["length"],
                                obs_dim=self.space.obs_dim, act_dim=self.space.act_dim)["obs"],
                   self.space.obs_mask(self.specs[s]))
                  for (s, e) in sorted(self.records))
        mean, std = observation_stats(chunks, self.space.obs_dim)
        rets = [r["return"] for r in self.records.values()]
        self.save(complete=True, stats={"obs_mean": mean.tolist(), "obs_std": std.tolist(),
                                        "return_mean": float(np.mean(rets)), "return_std": float(np.std(rets))})


@dataclass(frozen=True)
class EpisodeInfo:
    scenario: int
    index: int
    length: int
    ret: float


class Dataset:
    """A collected dataset, opened read-only with memory-mapped arrays.

    Opening it checks the manifest's fields and, with ``verify`` (the default), the data on disk: nothing
    but the listed episode folders under ``episodes/``, and every episode file's ``.npy`` header and
    SHA-256 checksum (:meth:`verify`). Any problem is a :class:`UserInputError` naming the field or file.
    ``verify=False`` skips the checksums and the folder listing (headers are still checked as each episode
    is first read).

    Attributes:
        obs_dim, act_dim: the unified (padded) dims.
        scenarios: the scenario specs, indexed by scenario id.
        obs_masks, action_masks: ``(num_scenarios, dim)`` float32, 1 on real dims.
        episodes: one :class:`EpisodeInfo` per episode, in manifest order.
        obs_mean, obs_std: per-dim statistics over all observations (std 1 on padded dims).
    """

    def __init__(self, root: Path | str, verify: bool = True):
        self.root = Path(root)
        where = str(self.root / MANIFEST)
        manifest = read_manifest(self.root)
        require_fields(manifest, {"complete": bool}, where)
        if not manifest["complete"]:
            raise UserInputError(f"dataset {self.root} is incomplete; finish it with `mrcom collect --resume`")
        self.manifest = manifest
        require_fields(manifest, {"obs_dim": int, "act_dim": int, "scenarios": list, "episodes": list,
                                  "stats": dict}, where)
        self.obs_dim, self.act_dim = manifest["obs_dim"], manifest["act_dim"]
        if self.obs_dim < 1 or self.act_dim < 1:
            raise manifest_error(where, f"obs_dim {self.obs_dim} and act_dim {self.act_dim} must be >= 1")
        self.scenarios = [scenario_record(i, s, self.obs_dim, self.act_dim, where)
                          for i, s in enumerate(manifest["scenarios"])]
        if not self.scenarios:
            raise manifest_error(where, "'scenarios' is empty")
        self.obs_masks = np.array([s["obs_mask"] for s in manifest["scenarios"]], dtype=np.float32)
        self.action_masks = np.array([s["action_mask"] for s in manifest["scenarios"]], dtype=np.float32)
        self._records = episode_records(manifest, where, len(self.scenarios))
        self.episodes = [EpisodeInfo(e["scenario"], e["episode"], e["length"], e["return"]) for e in self._records]
        if not self.episodes:
            raise UserInputError(f"dataset {self.root} has no episodes")
        self.obs_mean, self.obs_std = manifest_stats(manifest["stats"], self.obs_dim, where)
        self._cache: dict[int, dict[str, np.ndarray]] = {}
        if verify:
            self.verify()

    def verify(self) -> None:
        """Check the data on disk against the manifest: no stray or unlisted entry and no symbolic link under
        ``episodes/``, and every episode file's header (float32, the recorded shape) and checksum."""
        listed = {(e.scenario, e.index) for e in self.episodes}
        for sid, ep in episode_folders(self.root):
            if (sid, ep) not in listed:
                raise UserInputError(f"{episode_dir(self.root, sid, ep)} is not listed in {self.root / MANIFEST}, "
                                     f"so it does not belong to the dataset; move it out of the dataset folder")
        for info, record in zip(self.episodes, self._records, strict=True):
            folder = episode_dir(self.root, info.scenario, info.index)
            if not folder.is_dir():
                raise UserInputError(f"dataset {self.root} has no episode {folder.name} of scenario {info.scenario} "
                                     f"on disk ({self.root / MANIFEST} lists it; {REDO})")
            check_episode_files(folder, info.length, self.obs_dim, self.act_dim)
            verify_checksums(folder, record["files"], f"{self.root / MANIFEST}", REDO)

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def num_steps(self) -> int:
        return sum(e.length for e in self.episodes)

    def episode(self, i: int) -> dict[str, np.ndarray]:
        """Episode ``i``'s arrays (memory-mapped, read-only): ``obs``, ``action``, ``reward``."""
        if i not in self._cache:
            info = self.episodes[i]
            self._cache[i] = read_episode(self.root, info.scenario, info.index, mmap=True, length=info.length,
                                          obs_dim=self.obs_dim, act_dim=self.act_dim)
        return self._cache[i]

    def reward_stats(self) -> tuple[float, float]:
        """Mean and std of the rewards over every step of every episode (std 1 when they are constant): the
        reward head's target scale under ``model.reward_scale="unit"``."""
        rewards = np.concatenate([np.asarray(self.episode(i)["reward"], np.float64) for i in range(len(self))])
        mean, std = float(rewards.mean()), float(rewards.std())
        return mean, (std if std >= 1e-6 else 1.0)

    def episodes_of(self, scenario: int) -> list[int]:
        return [i for i, e in enumerate(self.episodes) if e.scenario == scenario]

    def holdout(self, fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
        """Split episode indices into (train, held-out), per scenario, keeping ≥ 1 train episode each.

        ``round(fraction · n)`` of a scenario's n episodes are held out (at most n - 1).
        """
        if not 0 <= fraction < 1:
            raise UserInputError(f"holdout fraction must be in [0, 1), got {fraction}")
        rng = np.random.default_rng(seed)
        train, held = [], []
        for s in range(len(self.scenarios)):
            idx = self.episodes_of(s)
            if not idx:
                continue
            idx = list(rng.permutation(idx))
            k = min(round(fraction * len(idx)), len(idx) - 1)
            held += idx[:k]
            train += idx[k:]
        return sorted(int(i) for i in train), sorted(int(i) for i in held)


def observation_stats(chunks: Iterable[tuple[np.ndarray, np.ndarray]], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-dim mean and std of observations over the rows where each dim is real.

    ``chunks`` yields ``(obs (N, dim), obs_mask (dim,))`` pairs; a padded dim of a scenario does not count
    towards that dim's statistics. Dims that are never real, or constant, get mean 0 / std 1.
    """
    count, total, total_sq = np.zeros(dim), np.zeros(dim), np.zeros(dim)
    for obs, mask in chunks:
        obs = np.asarray(obs, dtype=np.float64)
        mask = np.asarray(mask, dtype=np.float64)
        count += obs.shape[0] * mask
        total += obs.sum(0) * mask
        total_sq += np.square(obs).sum(0) * mask
    seen = count > 0
    mean = np.where(seen, total / np.maximum(count, 1), 0.0)
    std = np.sqrt(np.maximum(np.where(seen, total_sq / np.maximum(count, 1), 1.0) - mean**2, 0.0))
    std = np.where(std < 1e-6, 1.0, std)
    return mean.astype(np.float32), std.astype(np.float32)


def describe(ds: Dataset) -> list[str]:
    """What ``mrcom info`` prints: the dataset in one line, then per domain its scenarios, episodes and returns
    (all episodes, and each scenario's final one)."""
    m = ds.manifest
    lines = [f"dataset {ds.root}: {len(ds.scenarios)} scenarios, {len(ds)} episodes, {ds.num_steps} steps; obs_dim "
             f"{ds.obs_dim}, act_dim {ds.act_dim}; split {m.get('split', '?')}/{m.get('range', '?')}, policy "
             f"{m.get('policy', '?')}; {3 * len(ds)} files verified"]
    for domain in dict.fromkeys(s.domain for s in ds.scenarios):
        eps = [e for e in ds.episodes if ds.scenarios[e.scenario].domain == domain]
        rets = [e.ret for e in eps]
        final = [e.ret for e in {e.scenario: e for e in sorted(eps, key=lambda e: e.index)}.values()]
        n = sum(1 for s in ds.scenarios if s.domain == domain)
        lines.append(f"  {domain:<8} {n} scenarios, {len(rets)} episodes, return mean {sum(rets) / len(rets):.1f} "
                     f"(min {min(rets):.1f}, max {max(rets):.1f}); final episodes {sum(final) / len(final):.1f} "
                     f"(min {min(final):.1f}, max {max(final):.1f})")
    return lines
