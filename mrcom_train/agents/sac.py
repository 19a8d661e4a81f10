"""Soft Actor-Critic (Haarnoja et al., 2018) with automatic entropy tuning.

Self-contained (torch, numpy, stdlib). :class:`SAC` owns the networks and optimizers but not the
data: :meth:`SAC.update` takes one batch, so the caller decides where batches come from (a single
:class:`ReplayBuffer` during data collection, or a mix of real and imagined buffers for MBPO).

Terminal handling: ``terminated`` must be 1 only for true environment terminations. Time-limit
truncations are not terminal and must be stored with ``terminated=0`` (the caller's job), otherwise
the critic learns to stop bootstrapping at episode cut-offs.
"""

from __future__ import annotations

import copy
import itertools
import math
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mrcom_core.errors import UserInputError
from mrcom_core.optim import adam_options

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
_LOG_2PI = math.log(2.0 * math.pi)
_INT_FIELDS = ("hidden_dim", "hidden_layers", "batch_size", "learning_starts", "updates_per_step",
               "buffer_size")


@dataclass(frozen=True)
class SACConfig:
    """Hyper-parameters of :class:`SAC`; every field is validated on construction.

    ``learning_starts``, ``updates_per_step``, ``batch_size`` and ``buffer_size`` are read by the
    caller's training loop (uniform random actions for the first ``learning_starts`` env steps, then
    ``updates_per_step`` calls to :meth:`SAC.update` per env step). ``target_entropy=None`` means
    ``-act_dim``.
    """

    hidden_dim: int = 256
    hidden_layers: int = 2
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    batch_size: int = 256
    init_alpha: float = 0.1
    target_entropy: float | None = None
    learning_starts: int = 1000
    updates_per_step: int = 1
    buffer_size: int = 1_000_000

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> UserInputError:
            return UserInputError(f"SACConfig.{name} must be {rule}, got {getattr(self, name)!r}")

        for f in fields(self):
            v = getattr(self, f.name)
            is_int = isinstance(v, int | np.integer) and not isinstance(v, bool)
            if f.name in _INT_FIELDS and not is_int:
                raise bad(f.name, "an int")
            if f.name == "target_entropy" and v is None:
                continue
            if not (is_int or isinstance(v, float | np.floating)) or not math.isfinite(v):
                raise bad(f.name, "a finite number")
        for name in _INT_FIELDS:
            lo = 0 if name == "learning_starts" else 1
            if getattr(self, name) < lo:
                raise bad(name, f">= {lo}")
        for name in ("actor_lr", "critic_lr", "alpha_lr", "init_alpha"):
            if getattr(self, name) <= 0:
                raise bad(name, "> 0")
        if not 0 <= self.gamma < 1:
            raise bad("gamma", "in [0, 1)")
        if not 0 < self.tau <= 1:
            raise bad("tau", "in (0, 1]")


def mlp(in_dim: int, out_dim: int, hidden_dim: int, hidden_layers: int) -> nn.Sequential:
    """``hidden_layers`` Linear+ReLU blocks of width ``hidden_dim`` followed by a linear output."""
    layers: list[nn.Module] = []
    d = in_dim
    for _ in range(hidden_layers):
        layers += [nn.Linear(d, hidden_dim), nn.ReLU()]
        d = hidden_dim
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


def parameter_counts(obs_dim: int, act_dim: int, hidden_dim: int, hidden_layers: int) -> tuple[int, int]:
    """Parameters of an :class:`Actor` and of a :class:`TwinQ` (both Q networks) of these sizes, counted without
    building them (so an up-front memory check can size networks too large to allocate)."""
    def count(in_dim: int, out_dim: int) -> int:  # one ``mlp``
        dims = [in_dim, *[hidden_dim] * hidden_layers, out_dim]
        return sum(a * b + b for a, b in itertools.pairwise(dims))
    return count(obs_dim, 2 * act_dim), 2 * count(obs_dim + act_dim, 1)


class Actor(nn.Module):
    """Tanh-squashed diagonal Gaussian policy; ``forward`` returns pre-tanh ``(mean, log_std)``."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int, hidden_layers: int):
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.net = mlp(obs_dim, 2 * act_dim, hidden_dim, hidden_layers)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, raw = self.net(obs).chunk(2, dim=-1)
        # Smooth rescale of tanh into [LOG_STD_MIN, LOG_STD_MAX] (keeps gradients, unlike clamp).
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(raw) + 1.0)
        return mean, log_std

    def sample(
        self, obs: torch.Tensor, generator: torch.Generator | None = None, deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(action in [-1, 1], log_prob)``; log_prob has shape ``obs.shape[:-1]``."""
        mean, log_std = self(obs)
        if deterministic:
            eps = torch.zeros_like(mean)
        else:
            eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        x = mean + log_std.exp() * eps
        gauss_logp = -0.5 * eps.pow(2) - log_std - 0.5 * _LOG_2PI
        # log|d tanh(x)/dx| = log(1 - tanh(x)^2) = 2 * (log 2 - x - softplus(-2x)), stable for large |x|.
        log_det = 2.0 * (math.log(2.0) - x - F.softplus(-2.0 * x))
        return torch.tanh(x), (gauss_logp - log_det).sum(-1)


class TwinQ(nn.Module):
    """Two independent Q(s, a) MLPs stored stacked, so each layer of both is one batched matmul (``baddbmm``).

    ``forward`` returns shape ``(2, B)``. ``layers[l]`` holds ``weight`` ``(2, out, in)`` and ``bias`` ``(2, out)``
    (index 0 is the first Q), in the order of one ``mlp``'s parameters. Initialization draws the same numbers as
    two ``mlp`` heads built in turn, and a state dict in that older layout (``q1.0.weight`` …) still loads.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int, hidden_layers: int):
        super().__init__()
        heads = [mlp(obs_dim + act_dim, 1, hidden_dim, hidden_layers) for _ in range(2)]
        self.layers = nn.ModuleList()
        for l1, l2 in zip(heads[0][::2], heads[1][::2], strict=True):
            layer = nn.Module()
            layer.weight = nn.Parameter(torch.stack([l1.weight.detach(), l2.weight.detach()]))
            layer.bias = nn.Parameter(torch.stack([l1.bias.detach(), l2.bias.detach()]))
            self.layers.append(layer)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, action], dim=-1).expand(2, -1, -1)
        for i, layer in enumerate(self.layers):
            x = torch.baddbmm(layer.bias.unsqueeze(1), x, layer.weight.mT)
            if i < len(self.layers) - 1:
                x = x.relu()
        return x.squeeze(-1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        legacy = [k for k in list(state_dict) if k.startswith((f"{prefix}q1.", f"{prefix}q2."))]
        if legacy:  # the two-Sequential layout: q{1,2}.{2l}.{weight,bias} -> layers.{l}.{weight,bias}
            old = {k[len(prefix):]: state_dict.pop(k) for k in legacy}
            for i in range(len(self.layers)):
                for kind in ("weight", "bias"):
                    pair = [old.get(f"q{q}.{2 * i}.{kind}") for q in (1, 2)]
                    if all(isinstance(t, torch.Tensor) for t in pair) and pair[0].shape == pair[1].shape:
                        state_dict[f"{prefix}layers.{i}.{kind}"] = torch.stack(pair)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class ReplayBuffer:
    """Fixed-capacity float32 ring buffer of ``(obs, action, reward, next_obs, terminated)``.

    Store ``terminated=True`` only for true terminations, never for time-limit truncations.
    """

    def __init__(self, obs_dim: int, act_dim: int, capacity: int):
        if capacity < 1:
            raise ValueError(f"ReplayBuffer capacity must be >= 1, got {capacity}")
        self.capacity, self._ptr, self._size = int(capacity), 0, 0
        self._data = {
            "obs": np.zeros((capacity, obs_dim), np.float32),
            "action": np.zeros((capacity, act_dim), np.float32),
            "reward": np.zeros((capacity,), np.float32),
            "next_obs": np.zeros((capacity, obs_dim), np.float32),
            "terminated": np.zeros((capacity,), np.float32),
        }

    def add(self, obs, action, reward, next_obs, terminated: bool) -> None:
        self.add_batch(np.asarray(obs)[None], np.asarray(action)[None], np.asarray(reward).reshape(1),
                       np.asarray(next_obs)[None], np.asarray(terminated).reshape(1))

    def add_batch(self, obs, action, reward, next_obs, terminated) -> None:
        items = {"obs": obs, "action": action, "reward": reward, "next_obs": next_obs,
                 "terminated": terminated}
        n = len(np.asarray(obs))
        for key, value in items.items():
            value = np.asarray(value, np.float32).reshape(n, *self._data[key].shape[1:])
            if n > self.capacity:  # only the newest `capacity` transitions survive
                value = value[-self.capacity:]
            idx = (self._ptr + n - len(value) + np.arange(len(value))) % self.capacity
            self._data[key][idx] = value
        self._ptr = (self._ptr + n) % self.capacity
        self._size = min(self._size + n, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Uniformly sample ``batch_size`` stored transitions (with replacement)."""
        if self._size == 0:
            raise ValueError("cannot sample from an empty ReplayBuffer")
        idx = rng.integers(0, self._size, size=batch_size)
        return {key: arr[idx] for key, arr in self._data.items()}

    def __len__(self) -> int:
        return self._size

    def resize(self, capacity: int) -> None:
        """Change the capacity, keeping the newest ``min(len, capacity)`` transitions (MBPO resizes its model
        buffer this way whenever the rollout length changes, so it always holds the latest rounds)."""
        if capacity < 1:
            raise ValueError(f"ReplayBuffer capacity must be >= 1, got {capacity}")
        if capacity == self.capacity:
            return
        keep = min(self._size, capacity)
        order = (self._ptr - keep + np.arange(keep)) % self.capacity  # oldest kept … newest
        data = {k: np.zeros((capacity, *v.shape[1:]), np.float32) for k, v in self._data.items()}
        for key, value in self._data.items():
            data[key][:keep] = value[order]
        self._data, self.capacity, self._size, self._ptr = data, int(capacity), keep, keep % capacity

    def state_dict(self) -> dict[str, np.ndarray]:
        """Contents and position as plain arrays (for ``np.savez``)."""
        return {**self._data, "ptr_size": np.array([self._ptr, self._size], np.int64)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore :meth:`state_dict`'s arrays; the capacity follows the saved one (it may have been resized)."""
        self.resize(len(state["reward"]))
        for key in self._data:
            if state[key].shape != self._data[key].shape:
                raise ValueError(f"ReplayBuffer state has {key} of shape {state[key].shape}, "
                                 f"expected {self._data[key].shape}")
            self._data[key][...] = state[key]
        self._ptr, self._size = (int(x) for x in state["ptr_size"])


class SAC:
    """Soft Actor-Critic agent: actor, twin critics with Polyak targets and a learned temperature.

    ``act`` and ``update`` draw their noise from one seeded ``torch.Generator`` (part of
    ``state_dict``), so a run is reproducible and resumable; global RNG state is left untouched.
    """

    def __init__(self, obs_dim: int, act_dim: int, config: SACConfig = SACConfig(),
                 device: str | torch.device = "cpu", seed: int = 0):
        self.obs_dim, self.act_dim, self.config = obs_dim, act_dim, config
        self.device = torch.device(device)
        c = config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.actor = Actor(obs_dim, act_dim, c.hidden_dim, c.hidden_layers).to(self.device)
            self.critic = TwinQ(obs_dim, act_dim, c.hidden_dim, c.hidden_layers).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(c.init_alpha), device=self.device, requires_grad=True)
        self.target_entropy = float(-act_dim if c.target_entropy is None else c.target_entropy)
        adam = adam_options(self.device)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=c.actor_lr, **adam)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=c.critic_lr, **adam)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=c.alpha_lr, **adam)
        self._adam = adam
        self._critic_params = list(self.critic.parameters())
        self._target_params = list(self.critic_target.parameters())
        self._actor_alpha_params = [*self.actor.parameters(), self.log_alpha]
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    @property
    def alpha(self) -> float:
        return float(self.log_alpha.detach().exp())

    def _tensor(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(x, dtype=torch.float32, device=self.device)

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Action(s) in [-1, 1] for ``obs`` of shape ``(obs_dim,)`` or ``(B, obs_dim)``."""
        obs_t = self._tensor(obs)
        single = obs_t.dim() == 1
        action, _ = self.actor.sample(obs_t[None] if single else obs_t, self.generator, deterministic)
        action = action.clamp(-1.0, 1.0).cpu().numpy().astype(np.float32)
        return action[0] if single else action

    def update(self, batch: dict[str, np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
        """One gradient step on critics, actor and temperature, then the Polyak target update.

        Returns detached 0-d tensors (critic_loss, actor_loss, alpha, alpha_loss, entropy, q_mean) without a
        host sync; call ``float()`` on them only when logging.
        """
        obs, action, next_obs = (self._tensor(batch[k]) for k in ("obs", "action", "next_obs"))
        reward = self._tensor(batch["reward"]).reshape(-1)
        not_done = 1.0 - self._tensor(batch["terminated"]).reshape(-1)
        alpha = self.log_alpha.detach().exp()

        with torch.no_grad():
            next_action, next_logp = self.actor.sample(next_obs, self.generator)
            next_q = self.critic_target(next_obs, next_action).min(0).values - alpha * next_logp
            target_q = reward + self.config.gamma * not_done * next_q
        q = self.critic(obs, action)
        critic_loss = F.mse_loss(q, target_q.expand_as(q), reduction="none").mean(1).sum()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()

        # Actor and temperature in one backward pass; ``inputs`` keeps it from building critic weight gradients.
        new_action, logp = self.actor.sample(obs, self.generator)
        actor_loss = (alpha * logp - self.critic(obs, new_action).min(0).values).mean()
        alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        self.alpha_opt.zero_grad(set_to_none=True)
        (actor_loss + alpha_loss).backward(inputs=self._actor_alpha_params)
        self.actor_opt.step()
        self.alpha_opt.step()

        with torch.no_grad():
            torch._foreach_lerp_(self._target_params, self._critic_params, self.config.tau)
            return {"critic_loss": critic_loss.detach(), "actor_loss": actor_loss.detach(),
                    "alpha": self.log_alpha.exp(), "alpha_loss": alpha_loss.detach(), "entropy": -logp.mean(),
                    "q_mean": q.mean()}

    def architecture(self) -> dict[str, int]:
        """The networks' shape, stored with the weights so a saved actor can be rebuilt (:func:`load_actor`)."""
        return {"obs_dim": self.obs_dim, "act_dim": self.act_dim, "hidden_dim": self.config.hidden_dim,
                "hidden_layers": self.config.hidden_layers}

    def state_dict(self) -> dict:
        """Everything needed to resume exactly; loadable with ``torch.load(..., weights_only=True)``."""
        return {
            "architecture": self.architecture(), "actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(), "log_alpha": self.log_alpha.detach().clone(),
            "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
            "alpha_opt": self.alpha_opt.state_dict(), "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("architecture") != self.architecture():
            raise UserInputError(f"the saved SAC agent has architecture {state.get('architecture')}, this one "
                                 f"{self.architecture()}")
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        critic_opt = state["critic_opt"]
        if len(critic_opt["param_groups"][0]["params"]) == 2 * len(self._critic_params):  # two-Sequential layout
            n, old = len(self._critic_params), critic_opt["state"]
            new = {i: {"step": old[i]["step"], **{k: torch.stack([old[i][k], old[n + i][k]])
                                                  for k in ("exp_avg", "exp_avg_sq")}} for i in range(n) if i in old}
            critic_opt = {"state": new, "param_groups": [dict(critic_opt["param_groups"][0], params=list(range(n)))]}
        for opt, saved in ((self.actor_opt, state["actor_opt"]), (self.critic_opt, critic_opt),
                           (self.alpha_opt, state["alpha_opt"])):
            opt.load_state_dict(saved)
            for group in opt.param_groups:  # saved groups carry the saver's implementation flags
                group.update({"foreach": None, "fused": None, **self._adam})
        self.generator.set_state(state["generator"].cpu())


def load_actor(path: Path | str) -> Actor:
    """The actor of a saved agent (``{"agent": SAC.state_dict(), …}`` as ``mrcom collect`` writes
    (``DATA/sac/s0000.pt``) and ``mrcom adapt`` does (``RUN/agent.pt``, ``RUN/checkpoints/step_*/agent.pt``), or a
    bare ``SAC.state_dict()``), rebuilt from its architecture record; loaded with ``weights_only=True``
    (nothing is unpickled). Its dims are ``actor.obs_dim`` / ``actor.act_dim``. A file that is not such an
    agent is one :class:`UserInputError` line."""
    try:
        with warnings.catch_warnings():  # e.g. about a foreign pickle protocol: the error below says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserInputError(f"policy checkpoint {path} not found") from None
    except IsADirectoryError:
        raise UserInputError(f"policy checkpoint {path} is a folder, not a file") from None
    except Exception:  # unpickling, zip and OS errors alike; PyTorch's own advice (weights_only=False) is unsafe
        raise UserInputError(f"cannot read policy checkpoint {path}: not a PyTorch checkpoint saved by mrcom") from None
    agent = state.get("agent", state) if isinstance(state, dict) else None
    arch = agent.get("architecture") if isinstance(agent, dict) else None
    if not isinstance(arch, dict) or not isinstance(agent.get("actor"), dict):
        raise UserInputError(f"{path} holds no SAC agent (expected a SAC state_dict with 'architecture' and "
                             f"'actor' entries)")
    dims = ("obs_dim", "act_dim", "hidden_dim", "hidden_layers")
    if not all(isinstance(arch.get(k), int) and not isinstance(arch.get(k), bool) and arch[k] >= 1 for k in dims):
        raise UserInputError(f"{path}: the SAC agent's architecture record {arch!r} is damaged (expected positive "
                             f"integers {', '.join(dims)})")
    actor = Actor(arch["obs_dim"], arch["act_dim"], arch["hidden_dim"], arch["hidden_layers"])
    try:
        actor.load_state_dict(agent["actor"])
    except (RuntimeError, TypeError, KeyError, ValueError, AttributeError) as e:
        raise UserInputError(f"{path}: the actor's weights do not fit its architecture record "
                             f"({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None
    return actor.eval()
