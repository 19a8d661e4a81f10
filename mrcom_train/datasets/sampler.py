"""Batches of (context, window) sequences for world-model training (paper eq. 4).

For a window starting at step ``t`` of an episode, the context is the ``m`` steps before it,
``C_t = {(o_k, a_k, r_k)}_{k=t-m}^{t-1}``. When ``t < m`` the missing ``m - t`` leading slots come from a
prompt: an ``m``-step segment of another episode of the same scenario, first-in-first-out, exactly as
during imagination (the prompt fills the FIFO, each real step pushes its oldest entry out). So context
slot ``j`` holds prompt step ``t + j`` for ``j < m - t`` and real step ``j - (m - t)`` after.

A batch is a dict of numpy arrays (B = batch size, m = context length, L = window length)::

    context_obs     (B, m, obs_dim)   context_action (B, m, act_dim)   context_reward (B, m)
    obs             (B, L+1, obs_dim) o_t … o_{t+L}
    action          (B, L, act_dim)   a_t … a_{t+L-1}
    reward          (B, L)            r_t … r_{t+L-1}
    obs_mask        (B, obs_dim)      action_mask (B, act_dim)       1 on real dims, 0 on padding
    scenario        (B,) int64        scenario id (for per-scenario heads; the model never sees it)
    start           (B,) int64        t
    prompt_len      (B,) int64        how many leading context slots came from a prompt (m - t, or 0)

Context and window together are one contiguous (m + L)-step stretch of the scenario's experience, so a
streaming encoder can read them in one pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from mrcom_core.errors import UserInputError, check_int

from .dataset import Dataset


class SequenceSampler:
    """Uniform random windows over a set of episodes, with prompt-filled contexts.

    Args:
        dataset: the dataset to draw from.
        context_len: ``m``, context steps before each window (0 allowed: no context).
        window_len: ``L``, steps per window.
        batch_size: windows per batch.
        episodes: indices of the episodes to use (default: all); prompts come from the same set
            when the scenario has another episode there, else from the same episode.
        seed: seeds the sampler's own generator.
    """

    def __init__(self, dataset: Dataset, context_len: int, window_len: int, batch_size: int,
                 episodes: Sequence[int] | None = None, seed: int = 0):
        check_int("context_len", context_len, minimum=0)
        check_int("window_len", window_len)
        check_int("batch_size", batch_size)
        self.ds, self.m, self.L, self.B = dataset, context_len, window_len, batch_size
        ids = list(range(len(dataset))) if episodes is None else [int(i) for i in episodes]
        self.episodes = [i for i in ids if dataset.episodes[i].length >= max(window_len, context_len)]
        if not self.episodes:
            raise UserInputError(f"no episode of {dataset.root} is long enough for window_len={window_len} "
                                 f"and context_len={context_len}")
        self._lengths = np.array([dataset.episodes[i].length for i in self.episodes])
        by_scenario: dict[int, list[int]] = {}
        for i in self.episodes:
            by_scenario.setdefault(dataset.episodes[i].scenario, []).append(i)
        self._peers = by_scenario
        self.rng = np.random.default_rng(seed)

    def _window_starts(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        # Every valid (episode, start) pair equally likely: weight episodes by their number of windows.
        counts = self._lengths - self.L + 1
        pick = self.rng.choice(len(self.episodes), size=n, p=counts / counts.sum())
        starts = (self.rng.random(n) * counts[pick]).astype(np.int64)
        return pick, starts

    def _prompt(self, episode: int) -> dict[str, np.ndarray]:
        scenario = self.ds.episodes[episode].scenario
        peers = [i for i in self._peers[scenario] if i != episode] or [episode]
        other = peers[int(self.rng.integers(len(peers)))]
        start = int(self.rng.integers(self.ds.episodes[other].length - self.m + 1))
        data = self.ds.episode(other)
        stop = start + self.m
        return {"obs": data["obs"][start:stop], "action": data["action"][start:stop],
                "reward": data["reward"][start:stop]}

    def sample(self) -> dict[str, np.ndarray]:
        """One batch (see the module docstring for the keys and shapes)."""
        B, m, L, ds = self.B, self.m, self.L, self.ds
        out = {
            "context_obs": np.zeros((B, m, ds.obs_dim), np.float32),
            "context_action": np.zeros((B, m, ds.act_dim), np.float32),
            "context_reward": np.zeros((B, m), np.float32),
            "obs": np.empty((B, L + 1, ds.obs_dim), np.float32),
            "action": np.empty((B, L, ds.act_dim), np.float32),
            "reward": np.empty((B, L), np.float32),
            "scenario": np.empty(B, np.int64),
            "start": np.empty(B, np.int64),
            "prompt_len": np.zeros(B, np.int64),
        }
        pick, starts = self._window_starts(B)
        for b in range(B):
            ep, t = self.episodes[pick[b]], int(starts[b])
            data = ds.episode(ep)
            out["obs"][b] = data["obs"][t : t + L + 1]
            out["action"][b] = data["action"][t : t + L]
            out["reward"][b] = data["reward"][t : t + L]
            out["scenario"][b] = ds.episodes[ep].scenario
            out["start"][b] = t
            if m == 0:
                continue
            real = min(t, m)
            if real:
                out["context_obs"][b, m - real :] = data["obs"][t - real : t]
                out["context_action"][b, m - real :] = data["action"][t - real : t]
                out["context_reward"][b, m - real :] = data["reward"][t - real : t]
            if real < m:
                prompt = self._prompt(ep)
                out["context_obs"][b, : m - real] = prompt["obs"][real:]
                out["context_action"][b, : m - real] = prompt["action"][real:]
                out["context_reward"][b, : m - real] = prompt["reward"][real:]
                out["prompt_len"][b] = m - real
        out["obs_mask"] = ds.obs_masks[out["scenario"]]
        out["action_mask"] = ds.action_masks[out["scenario"]]
        return out

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        while True:
            yield self.sample()
