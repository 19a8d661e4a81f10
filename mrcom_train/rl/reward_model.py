"""A reward model of the target scenario, fitted online on its real transitions: what scores imagined
transitions with ``imagined_reward="learned"``.

The world model must infer an unseen target's reward function from the few rewards in its context, and on the
states the agent reaches its reward head errs by about as much as the reward itself, while the true reward of
its predicted next observation is close (``docs/history.md``): its dynamics are usable, its reward is not. A
small network ``r(o, a, o')`` trained on nothing but the target's own real transitions has no reward to infer:
before every imagination round it takes ``steps`` Adam updates (MSE) on batches of the real replay buffer, with
its inputs standardized by the buffer's current statistics, and then labels the round's imagined transitions
(the observation and action where each starts, the model's predicted next observation).

Its weights, Adam's moments and the standardization are in :meth:`RewardModel.state_dict` (an adaptation
checkpoint's ``reward.pt``), and its batches are drawn with the generator the caller passes, so a resumed run
fits exactly as an uninterrupted one.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ..agents.sac import ReplayBuffer, mlp

HIDDEN, LAYERS = 256, 2  # the network: 2 hidden layers of 256 ReLU units
BATCH = 256  # transitions per update


class RewardModel:
    """``r(o, a, o')`` for observations of ``obs_dim`` and actions of ``act_dim`` dims, trained with Adam at
    ``lr``; ``seed`` seeds its initial weights."""

    def __init__(self, obs_dim: int, act_dim: int, lr: float = 1e-3, seed: int = 0):
        self.obs_dim, self.act_dim = obs_dim, act_dim
        width = 2 * obs_dim + act_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = mlp(width, 1, HIDDEN, LAYERS)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.mean, self.std = torch.zeros(width), torch.ones(width)
        self.updates = 0

    def _raw(self, obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray) -> torch.Tensor:
        """``[o, a, o']`` of a batch, each cut to this model's dims (a unified space's padding dropped)."""
        return torch.as_tensor(np.concatenate([obs[:, : self.obs_dim], action[:, : self.act_dim],
                                               next_obs[:, : self.obs_dim]], axis=1), dtype=torch.float32)

    def _inputs(self, obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray) -> torch.Tensor:
        return (self._raw(obs, action, next_obs) - self.mean) / self.std

    def fit(self, buffer: ReplayBuffer, steps: int, rng: np.random.Generator) -> float:
        """``steps`` updates on batches drawn from ``buffer`` (the real transitions) with ``rng``, after setting
        the standardization from everything in it; returns the mean squared error of the last batch (NaN when
        the buffer is empty or ``steps`` is 0)."""
        if len(buffer) == 0 or steps == 0:
            return float("nan")
        data, n = buffer.state_dict(), len(buffer)
        x = self._raw(data["obs"][:n], data["action"][:n], data["next_obs"][:n])
        self.mean, self.std = x.mean(0), x.std(0, correction=0).clamp_min(1e-3)
        loss = torch.tensor(float("nan"))
        for _ in range(steps):
            batch = buffer.sample(BATCH, rng)
            pred = self.net(self._inputs(batch["obs"], batch["action"], batch["next_obs"])).squeeze(-1)
            loss = nn.functional.mse_loss(pred, torch.as_tensor(batch["reward"]))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.updates += 1
        return float(loss.detach())

    @torch.no_grad()
    def __call__(self, obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
        """The predicted rewards of a batch of transitions (arrays of at least this model's dims; the padding of
        a unified space beyond them is ignored), float32 of shape (B,)."""
        return self.net(self._inputs(obs, action, next_obs)).squeeze(-1).numpy().astype(np.float32)

    def state_dict(self) -> dict:
        """Weights, Adam's state, the standardization and the update count (``torch.save``-able, loadable with
        ``weights_only=True``)."""
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict(), "mean": self.mean,
                "std": self.std, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s values (copied: Adam would otherwise share its moments with the source)."""
        state = copy.deepcopy(state)
        mean, std = (torch.as_tensor(state[k], dtype=torch.float32) for k in ("mean", "std"))
        if mean.shape != self.mean.shape or std.shape != self.std.shape:
            raise ValueError(f"standardization of shape {tuple(mean.shape)}, expected {tuple(self.mean.shape)}")
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.mean, self.std, self.updates = mean, std, int(state["updates"])
