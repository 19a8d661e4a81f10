"""The on-disk multi-scenario dataset: a JSON manifest plus one chunk of numpy arrays per episode.

Layout::

    DIR/manifest.json                 format, version, dims, scenarios (spec + masks), episodes, stats
    DIR/episodes/s0003/e00012/        one chunk per episode, written to a temp dir and renamed (atomic)
        obs.npy     (T+1, obs_dim)    float32, o_0 … o_T, zero-padded to the dataset's obs_dim
        action.npy  (T, act_dim)      float32, a_0 … a_{T-1}, zero-padded to the dataset's act_dim
        reward.npy  (T,)              float32, r_k is the reward for taking a_k in o_k

Arrays are opened memory-mapped, so a dataset larger than memory trains fine. The manifest is only ever
written by one process, atomically (temp file + ``os.replace``); the episode folders on disk are the
source of truth when a collection resumes.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserInputError
from .scenarios import ScenarioSpec, UnifiedSpace

FORMAT = "mrcom-dataset"
VERSION = 1
MANIFEST = "manifest.json"
FIELDS = ("obs", "action", "reward")


def episode_dir(root: Path | str, scenario: int, episode: int) -> Path:
    return Path(root) / "episodes" / f"s{scenario:04d}" / f"e{episode:05d}"


def write_episode(root: Path | str, scenario: int, episode: int, obs: np.ndarray, action: np.ndarray,
                  reward: np.ndarray) -> Path:
    """Write one episode atomically: into a temp folder beside its final place, then rename."""
    obs, action, reward = (np.ascontiguousarray(x, dtype=np.float32) for x in (obs, action, reward))
    if not (obs.ndim == 2 and action.ndim == 2 and reward.ndim == 1
            and obs.shape[0] == action.shape[0] + 1 == reward.shape[0] + 1):
        raise ValueError(f"episode arrays must be obs (T+1, D), action (T, A), reward (T,); got "
                         f"{obs.shape}, {action.shape}, {reward.shape}")
    final = episode_dir(root, scenario, episode)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for name, value in zip(FIELDS, (obs, action, reward), strict=True):
        with open(tmp / f"{name}.npy", "wb") as f:
            np.save(f, value)
            f.flush()
            os.fsync(f.fileno())
    if final.exists():  # a rerun of the same unit after a crash: replace it whole
        shutil.rmtree(final)
    os.rename(tmp, final)
    return final


def remove_partial_writes(root: Path | str) -> int:
    """Delete temp folders left by a killed writer; returns how many were removed."""
    removed = 0
    for tmp in (Path(root) / "episodes").glob("s*/.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
        removed += 1
    return removed


def scan_episodes(root: Path | str) -> dict[tuple[int, int], int]:
    """Finished episodes on disk: ``{(scenario, episode): length}``."""
    found = {}
    for path in sorted((Path(root) / "episodes").glob("s*/e*")):
        if path.name.startswith("."):
            continue
        reward = np.load(path / "reward.npy", mmap_mode="r")
        found[(int(path.parent.name[1:]), int(path.name[1:]))] = int(reward.shape[0])
    return found


def write_json_atomic(path: Path | str, data: dict) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def make_manifest(specs: Sequence[ScenarioSpec], space: UnifiedSpace, episodes: list[dict], *, complete: bool,
                  stats: dict | None = None, **extra) -> dict:
    """The manifest of a dataset of ``specs`` padded to ``space``.

    ``episodes`` holds ``{"scenario", "episode", "length", "return"}`` records; ``stats`` the observation
    statistics (``obs_mean``, ``obs_std``); ``extra`` is stored as is (split, policy, collect config…).
    """
    from . import __version__

    return {
        "format": FORMAT, "version": VERSION, "mrcom_version": __version__, "complete": complete,
        "obs_dim": space.obs_dim, "act_dim": space.act_dim, **extra,
        "scenarios": [{"id": i, "spec": s.to_dict(), "obs_mask": space.obs_mask(s).astype(int).tolist(),
                       "action_mask": space.action_mask(s).astype(int).tolist()} for i, s in enumerate(specs)],
        "episodes": sorted(episodes, key=lambda e: (e["scenario"], e["episode"])),
        "num_episodes": len(episodes), "num_steps": int(sum(e["length"] for e in episodes)),
        "stats": stats,
    }


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
        path = self.root / MANIFEST
        if not path.is_file():
            raise UserInputError(f"no dataset at {self.root}: {MANIFEST} is missing")
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise UserInputError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
        if manifest.get("format") != FORMAT:
            raise UserInputError(f"{path} is not an MrCoM dataset manifest (format {manifest.get('format')!r})")
        if manifest.get("version") != VERSION:
            raise UserInputError(f"{path} has dataset format version {manifest.get('version')!r}; "
                                 f"this mrcom reads version {VERSION} (collect the data again)")
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
            path = episode_dir(self.root, info.scenario, info.index)
            if not path.is_dir():
                raise UserInputError(f"dataset {self.root} lists episode {path.name} of scenario "
                                     f"{info.scenario}, which is missing on disk")
            self._cache[i] = {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in FIELDS}
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
