"""The on-disk multi-scenario dataset, and the only code that knows its files: a writer
(:class:`DatasetWriter`, plus :func:`write_episode` for worker processes), a reader (:class:`Dataset`,
:func:`read_episode`) and :func:`is_complete`.

Layout::

    DIR/manifest.json                 format, version, dims, scenarios (spec + masks), episodes, stats
    DIR/episodes/s0003/e00012/        one chunk per episode, written to a temp dir and renamed (atomic)
        obs.npy     (T+1, obs_dim)    float32, o_0 … o_T, zero-padded to the dataset's obs_dim
        action.npy  (T, act_dim)      float32, a_0 … a_{T-1}, zero-padded to the dataset's act_dim
        reward.npy  (T,)              float32, r_k is the reward for taking a_k in o_k

Arrays are opened memory-mapped, so a dataset larger than memory trains fine. The manifest is only ever
written by one process (the writer's), atomically; the episode folders on disk are the source of truth
when a collection resumes. A dataset is usable once its manifest says ``complete`` (:meth:`finalize`).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mrcom_core.errors import UserInputError
from mrcom_core.files import atomic_dir, read_versioned_json, remove_stale_temporaries, write_json_atomic

from .. import __version__
from ..scenarios import ScenarioSpec, UnifiedSpace

FORMAT = "mrcom-dataset"
VERSION = 1
MANIFEST = "manifest.json"
FIELDS = ("obs", "action", "reward")


def _episode_dir(root: Path | str, scenario: int, episode: int) -> Path:
    return Path(root) / "episodes" / f"s{scenario:04d}" / f"e{episode:05d}"


def write_episode(root: Path | str, scenario: int, episode: int, obs: np.ndarray, action: np.ndarray,
                  reward: np.ndarray) -> None:
    """Write one episode's arrays atomically (any process may call this; only the writer owns the manifest)."""
    obs, action, reward = (np.ascontiguousarray(x, dtype=np.float32) for x in (obs, action, reward))
    if not (obs.ndim == 2 and action.ndim == 2 and reward.ndim == 1
            and obs.shape[0] == action.shape[0] + 1 == reward.shape[0] + 1):
        raise ValueError(f"episode arrays must be obs (T+1, D), action (T, A), reward (T,); got "
                         f"{obs.shape}, {action.shape}, {reward.shape}")
    with atomic_dir(_episode_dir(root, scenario, episode)) as tmp:
        for name, value in zip(FIELDS, (obs, action, reward), strict=True):
            np.save(tmp / f"{name}.npy", value)


def read_episode(root: Path | str, scenario: int, episode: int, mmap: bool = False) -> dict[str, np.ndarray]:
    """One episode's ``obs``, ``action``, ``reward`` arrays (memory-mapped, read-only with ``mmap``)."""
    path = _episode_dir(root, scenario, episode)
    if not path.is_dir():
        raise UserInputError(f"dataset {root} has no episode {path.name} of scenario {scenario} on disk")
    return {name: np.load(path / f"{name}.npy", mmap_mode="r" if mmap else None) for name in FIELDS}


def remove_episode(root: Path | str, scenario: int, episode: int) -> None:
    """Delete one episode's arrays (a scenario restarted from scratch); the writer forgets it on its own."""
    shutil.rmtree(_episode_dir(root, scenario, episode), ignore_errors=True)


def read_manifest(root: Path | str) -> dict:
    """``root/manifest.json``, checked to be a dataset manifest of this version (complete or not)."""
    return read_versioned_json(Path(root) / MANIFEST, FORMAT, VERSION, "dataset", "collect the data again")


def is_complete(root: Path | str) -> bool:
    """Whether ``root`` holds a finished dataset (a valid manifest that says ``complete``)."""
    try:
        return bool(read_manifest(root).get("complete"))
    except UserInputError:
        return False


class DatasetWriter:
    """Creates a dataset folder, or continues one, and owns its manifest.

    Episodes are written by :func:`write_episode` (from any process) and announced with :meth:`add`; the
    manifest is rewritten (atomically) by :meth:`save` as progress and by :meth:`finalize` once every
    episode is there, with the observation statistics. ``meta`` (split, policy, collect config…) is stored
    in the manifest as is. Opening a folder removes what a killed writer left half-written and reads the
    finished episodes from disk.
    """

    def __init__(self, root: Path | str, specs: Sequence[ScenarioSpec], space: UnifiedSpace, meta: dict,
                 episodes_per_scenario: int | None = None):
        self.root, self.specs, self.space, self.meta = Path(root), list(specs), space, dict(meta)
        self.episodes_per_scenario = episodes_per_scenario
        self.root.mkdir(parents=True, exist_ok=True)
        for folder in (self.root / "episodes").glob("s*"):
            remove_stale_temporaries(folder)
        self.records: dict[tuple[int, int], dict] = {}
        self.scan()

    def scan(self) -> None:
        """Record the finished episodes on disk (the source of truth) of this dataset's scenarios."""
        self.records = {}
        K = self.episodes_per_scenario
        for path in sorted((self.root / "episodes").glob("s*/e*")):
            sid, ep = int(path.parent.name[1:]), int(path.name[1:])
            if sid < len(self.specs) and (K is None or ep < K):
                reward = read_episode(self.root, sid, ep)["reward"]
                self.add(sid, ep, len(reward), float(reward.sum()))

    def add(self, scenario: int, episode: int, length: int, ret: float) -> None:
        """Record a finished episode (its arrays are on disk)."""
        self.records[(scenario, episode)] = {"scenario": scenario, "episode": episode, "length": length,
                                             "return": ret}

    def episodes_of(self, scenario: int) -> list[int]:
        return sorted(ep for (s, ep) in self.records if s == scenario)

    def forget_scenario(self, scenario: int) -> None:
        """Drop every recorded episode of ``scenario`` (a worker restarted it from scratch)."""
        for ep in self.episodes_of(scenario):
            del self.records[(scenario, ep)]

    def save(self, complete: bool = False, stats: dict | None = None) -> None:
        """Write the manifest for the episodes recorded so far."""
        space, episodes = self.space, sorted(self.records.values(), key=lambda e: (e["scenario"], e["episode"]))
        write_json_atomic(self.root / MANIFEST, {
            "format": FORMAT, "version": VERSION, "mrcom_version": __version__, "complete": complete,
            "obs_dim": space.obs_dim, "act_dim": space.act_dim, **self.meta,
            "scenarios": [{"id": i, "spec": s.to_dict(), "obs_mask": space.obs_mask(s).astype(int).tolist(),
                           "action_mask": space.action_mask(s).astype(int).tolist()} for i, s in enumerate(self.specs)],
            "episodes": episodes, "num_episodes": len(episodes), "num_steps": int(sum(e["length"] for e in episodes)),
            "stats": stats,
        })

    def finalize(self) -> None:
        """Compute the observation statistics over every episode and mark the dataset complete."""
        chunks = ((read_episode(self.root, s, e, mmap=True)["obs"], self.space.obs_mask(self.specs[s]))
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

    Attributes:
        obs_dim, act_dim: the unified (padded) dims.
        scenarios: the scenario specs, indexed by scenario id.
        obs_masks, action_masks: ``(num_scenarios, dim)`` float32, 1 on real dims.
        episodes: one :class:`EpisodeInfo` per episode, in manifest order.
        obs_mean, obs_std: per-dim statistics over all observations (std 1 on padded dims).
    """

    def __init__(self, root: Path | str):
        self.root = Path(root)
        manifest = read_manifest(self.root)
        if not manifest.get("complete", False):
            raise UserInputError(f"dataset {self.root} is incomplete; finish it with `mrcom collect --resume`")
        self.manifest = manifest
        self.obs_dim = int(manifest["obs_dim"])
        self.act_dim = int(manifest["act_dim"])
        self.scenarios = [ScenarioSpec.from_dict(s["spec"]) for s in manifest["scenarios"]]
        self.obs_masks = np.array([s["obs_mask"] for s in manifest["scenarios"]], dtype=np.float32)
        self.action_masks = np.array([s["action_mask"] for s in manifest["scenarios"]], dtype=np.float32)
        self.episodes = [EpisodeInfo(e["scenario"], e["episode"], e["length"], e["return"])
                         for e in manifest["episodes"]]
        if not self.episodes:
            raise UserInputError(f"dataset {self.root} has no episodes")
        self.obs_mean = np.asarray(manifest["stats"]["obs_mean"], dtype=np.float32)
        self.obs_std = np.asarray(manifest["stats"]["obs_std"], dtype=np.float32)
        self._cache: dict[int, dict[str, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def num_steps(self) -> int:
        return sum(e.length for e in self.episodes)

    def episode(self, i: int) -> dict[str, np.ndarray]:
        """Episode ``i``'s arrays (memory-mapped, read-only): ``obs``, ``action``, ``reward``."""
        if i not in self._cache:
            info = self.episodes[i]
            self._cache[i] = read_episode(self.root, info.scenario, info.index, mmap=True)
        return self._cache[i]

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
