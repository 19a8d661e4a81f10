"""Episodes held in memory with the part of :class:`~.dataset.Dataset`'s interface that
:class:`~.sampler.SequenceSampler` reads, so the same windows and context prompts can be drawn from data that
was never written to disk (the target scenario's real episodes during adaptation)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class _Record:
    length: int
    scenario: int


class EpisodeSet:
    """``episodes`` (dicts of ``obs`` (T+1, D), ``action`` (T, A), ``reward`` (T,)) of one scenario (index
    ``scenario``, for the sampler's ``scenario`` key), whose real observation and action dims are
    ``obs_mask`` and ``action_mask`` (the rest is padding)."""

    def __init__(self, episodes: list[dict[str, np.ndarray]], obs_mask: np.ndarray, action_mask: np.ndarray,
                 scenario: int = 0, name: str = "episodes in memory"):
        self._data = [{k: np.asarray(ep[k], np.float32) for k in ("obs", "action", "reward")} for ep in episodes]
        self.episodes = [_Record(len(ep["reward"]), scenario) for ep in self._data]
        self.obs_dim, self.act_dim = len(obs_mask), len(action_mask)
        self.obs_masks = np.repeat(np.asarray(obs_mask, np.float32)[None], scenario + 1, axis=0)
        self.action_masks = np.repeat(np.asarray(action_mask, np.float32)[None], scenario + 1, axis=0)
        self.root = name

    def __len__(self) -> int:
        return len(self._data)

    def episode(self, i: int) -> dict[str, np.ndarray]:
        return self._data[i]

    def split(self, fraction: float, minimum: int) -> tuple[EpisodeSet, EpisodeSet]:
        """Each episode cut in two at ``1 - fraction`` of its steps: the first parts and the last parts, as two
        sets (parts shorter than ``minimum`` steps are left out): a held-out slice of every episode."""
        first, last = [], []
        for ep in self._data:
            T = len(ep["reward"])
            cut = int(round(T * (1 - fraction)))
            for a, b, into in ((0, cut, first), (cut, T, last)):
                if b - a >= minimum:
                    into.append({"obs": ep["obs"][a : b + 1], "action": ep["action"][a:b], "reward": ep["reward"][a:b]})
        scenario = self.episodes[0].scenario if self.episodes else 0
        return tuple(EpisodeSet(part, self.obs_masks[0], self.action_masks[0], scenario, f"{self.root} ({which})")
                     for part, which in ((first, "fitted part"), (last, "held-out part")))
