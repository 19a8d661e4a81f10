"""Scenario adaptation (``mrcom adapt``, paper §3.4): MBPO-style SAC in a target scenario, with imagined
rollouts from the exported world model through the torch-free runtime, wrapped as a Gymnasium vector env
(:class:`~mrcom_export.vector_env.ImaginedVectorEnv`, the same one standard RL code can train in).

Each env step the agent acts in the real target scenario; every ``model_rollout_every`` steps,
``rollout_batch`` imagined rollouts start from real states the agent reached, their context FIFO primed
with the ``m`` real steps before each start state (paper eq. 4: the target scenario's own recent
trajectory), and run ``h`` steps with the current policy, ``h`` growing linearly from ``horizon_start``
to ``horizon_end`` (MBPO's schedule). Imagined transitions go to a model buffer; each SAC update draws
``real_ratio`` of its batch from real transitions and the rest from imagined ones. ``use_model=False``
gives model-free SAC with the same env-step budget (the floor of the paper's comparisons).

Evaluation: normalized return = 100 × mean episode return / episode length (dm_control rewards are in
[0, 1] per step), over ``eval_episodes`` episodes of the target scenario with the deterministic policy.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mrcom_core.errors import UserInputError
from mrcom_core.files import atomic_path, write_json_atomic
from mrcom_export.runtime import Runtime
from mrcom_export.vector_env import ImaginedVectorEnv

from ..metrics_log import MetricsLog
from ..scenarios import DOMAINS, ScenarioEnv, ScenarioSpec, UnifiedSpace, get_split, sample_scenarios
from .sac import SAC, ReplayBuffer, SACConfig


@dataclass(frozen=True)
class AdaptConfig:
    """One adaptation run. See the module docstring for the algorithm."""

    split: str = "t1-a5b20"
    range: str = "in"
    domain: str = "hopper"
    seed: int = 0
    env_steps: int = 20_000
    episode_length: int = 1000
    learning_starts: int = 1000
    batch_size: int = 256
    updates_per_step: int = 1
    sac_hidden: int = 256
    use_model: bool = True
    real_ratio: float = 0.1
    model_rollout_every: int = 250
    rollout_batch: int = 256
    horizon_start: int = 1
    horizon_end: int = 5
    model_buffer_size: int = 100_000
    eval_every: int = 5000
    eval_episodes: int = 3
    checkpoint_every: int = 5000

    def __post_init__(self):
        get_split(self.split).range(self.range)
        if self.domain not in DOMAINS:
            raise UserInputError(f"domain: unknown domain {self.domain!r}; choose from {', '.join(DOMAINS)}")
        for name in ("env_steps", "episode_length", "batch_size", "updates_per_step", "sac_hidden",
                     "model_rollout_every", "rollout_batch", "horizon_start", "horizon_end", "model_buffer_size",
                     "eval_every", "eval_episodes", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise UserInputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_starts < 0:
            raise UserInputError(f"learning_starts must be >= 0, got {self.learning_starts}")
        if not 0 <= self.real_ratio <= 1:
            raise UserInputError(f"real_ratio must be in [0, 1], got {self.real_ratio}")
        if self.horizon_end < self.horizon_start:
            raise UserInputError("horizon_end must be >= horizon_start")

    def target(self) -> ScenarioSpec:
        """The target scenario: drawn (seeded) from the split's ``range`` for ``domain``."""
        spec = sample_scenarios(get_split(self.split).range(self.range), (self.domain,), 1, 10_000 + self.seed,
                                episode_length=self.episode_length)[0]
        return spec

    def horizon(self, step: int) -> int:
        """MBPO's linear horizon schedule over the env steps after ``learning_starts``."""
        span = max(1, (self.env_steps - self.learning_starts) // 2)
        frac = min(1.0, max(0.0, (step - self.learning_starts) / span))
        return int(round(self.horizon_start + frac * (self.horizon_end - self.horizon_start)))


def normalized_return(episode_return: float, episode_length: int) -> float:
    return 100.0 * episode_return / episode_length


class Adapter:
    """Runs an :class:`AdaptConfig` into ``run_dir`` (``metrics.csv``, ``tb/``, ``config.json``,
    ``result.json``, ``checkpoint/``). Checkpoints are taken at the first episode end after every
    ``checkpoint_every`` env steps; ``resume=True`` continues from the last one exactly. ``threads`` caps
    the runtime's intra-op threads (set 1 when several adapters share the cores); results do not depend
    on it."""

    def __init__(self, config: AdaptConfig, run_dir: str | Path, export_dir: str | Path | None = None,
                 resume: bool = False, progress: bool = True, log=print, threads: int | None = None):
        self.cfg, self.run_dir, self.log, self.progress = config, Path(run_dir), log, progress
        checkpoint = self.run_dir / "checkpoint" / "state.json"
        if self.run_dir.exists() and any(self.run_dir.iterdir()) and not resume:
            raise UserInputError(f"run folder {self.run_dir} is not empty; pass --resume to continue it")
        if resume and checkpoint.is_file():
            saved = json.loads((self.run_dir / "config.json").read_text())
            for name, value in dataclasses.asdict(config).items():
                if saved.get(name) != value:
                    raise UserInputError(f"cannot resume {self.run_dir}: it ran with {name}={saved.get(name)!r}, "
                                         f"now {value!r}")
        self.spec = config.target()
        self.imagined_env = None
        if config.use_model:
            if export_dir is None:
                raise UserInputError("--model EXPORT_DIR is needed (or use_model=False for model-free SAC)")
            runtime = Runtime(export_dir, seed=config.seed, threads=threads)
            self.imagined_env = ImaginedVectorEnv(runtime, config.rollout_batch, seed=config.seed)
            space = UnifiedSpace(runtime.obs_dim, runtime.act_dim)
            if space.obs_dim < self.spec.obs_dim or space.act_dim < self.spec.act_dim:
                raise UserInputError(f"the model's dims ({space.obs_dim}, {space.act_dim}) are smaller than "
                                     f"scenario {self.spec.describe()}'s")
        else:
            space = UnifiedSpace(self.spec.obs_dim, self.spec.act_dim)
        self.space = space
        self.env = ScenarioEnv(self.spec, space)
        self.eval_env = ScenarioEnv(self.spec, space)
        od, ad = self.spec.obs_dim, self.spec.act_dim
        self.agent = SAC(od, ad, SACConfig(hidden_dim=config.sac_hidden, batch_size=config.batch_size),
                         seed=config.seed)
        self.real = ReplayBuffer(od, ad, config.env_steps)
        self.model = ReplayBuffer(od, ad, config.model_buffer_size)
        self.rng = np.random.default_rng(config.seed)
        self.episodes: list[dict[str, np.ndarray]] = []  # real trajectories (padded) for prompts
        self.step = 0
        self.imagined = 0
        self.finished: dict | None = None
        if resume and checkpoint.is_file():
            self._restore()

    # ------------------------------------------------------------------------------------------ pieces
    def _act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        raw = self.agent.act(obs[..., : self.spec.obs_dim], deterministic=deterministic)
        out = np.zeros(raw.shape[:-1] + (self.space.act_dim,), np.float32)
        out[..., : self.spec.act_dim] = raw
        return out

    def imagine(self, horizon: int) -> int:
        """Imagined rollouts from real states into the model buffer; returns the transitions added."""
        env = self.imagined_env
        m = env.runtime.context_len
        # Start states t ≥ m (so m real steps precede them), uniform over all of them: pick an episode by its
        # number of valid starts, then a start within it.
        counts = np.array([max(0, len(ep["reward"]) - m + 1) for ep in self.episodes])
        if counts.sum() == 0:
            return 0
        episodes = self.rng.choice(len(counts), size=self.cfg.rollout_batch, p=counts / counts.sum())
        starts = m + (self.rng.random(self.cfg.rollout_batch) * counts[episodes]).astype(np.int64)
        picks = [(self.episodes[e], t) for e, t in zip(episodes, starts, strict=True)]
        prompts = tuple(np.stack([ep[key][t - m : t + k] for ep, t in picks])
                        for key, k in (("obs", 1), ("action", 0), ("reward", 0)))
        env.horizon = horizon
        current, _ = env.reset(options={"prompts": prompts})
        od, ad = self.spec.obs_dim, self.spec.act_dim
        added, truncated = 0, False
        while not truncated:
            action = self._act(current)
            nxt, reward, _, trunc, _ = env.step(action)
            self.model.add_batch(current[:, :od], action[:, :ad], reward, nxt[:, :od], np.zeros(len(reward)))
            added += len(reward)
            current, truncated = nxt, bool(trunc.all())
        self.imagined += added
        return added

    def _batch(self) -> dict[str, np.ndarray]:
        B = self.cfg.batch_size
        if not self.cfg.use_model or len(self.model) == 0:
            return self.real.sample(B, self.rng)
        n_real = int(round(self.cfg.real_ratio * B))
        real, model = self.real.sample(n_real, self.rng), self.model.sample(B - n_real, self.rng)
        return {k: np.concatenate([real[k], model[k]]) for k in real}

    def evaluate(self) -> float:
        """Mean normalized return of the deterministic policy over ``eval_episodes`` episodes."""
        returns = []
        for i in range(self.cfg.eval_episodes):
            obs, _ = self.eval_env.reset(seed=1_000_000 + i)
            total, done = 0.0, False
            while not done:
                obs, reward, _, done, _ = self.eval_env.step(self._act(obs, deterministic=True))
                total += reward
            returns.append(normalized_return(total, self.spec.episode_length))
        return float(np.mean(returns))

    # -------------------------------------------------------------------------------------------- loop
    def run(self) -> dict[str, float]:
        """Adapt for ``env_steps`` env steps (continuing from the checkpoint when resumed)."""
        from tqdm import tqdm

        c = self.cfg
        if self.finished is not None:
            return self.finished
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.run_dir / "config.json", {**dataclasses.asdict(c), "target": self.spec.to_dict()})
        self.log(f"adapting SAC{' + MrCoM rollouts' if c.use_model else ' (model-free)'} to "
                 f"{self.spec.describe()} for {c.env_steps} env steps; run folder {self.run_dir}"
                 + (f"; resuming at env step {self.step}" if self.step else ""))
        metrics = MetricsLog(self.run_dir, ["env_steps", "normalized_return", "imagined", "wall_s"], self.step)
        bar = tqdm(total=c.env_steps, initial=self.step, unit="step", disable=not self.progress, dynamic_ncols=True)
        start = time.perf_counter()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        result = {}
        next_checkpoint = (self.step // c.checkpoint_every + 1) * c.checkpoint_every
        try:
            if self.step == 0:
                metrics.write(0, {"normalized_return": self.evaluate(), "imagined": 0, "wall_s": 0.0})
                obs, _ = self.env.reset(seed=c.seed)
            else:
                obs, _ = self.env.reset()  # the checkpoint was taken just before this reset
            episode = {"obs": [obs], "action": [], "reward": []}
            while self.step < c.env_steps:
                action = (self._act(obs) if self.step >= c.learning_starts
                          else self._pad(self.rng.uniform(-1, 1, self.spec.act_dim)))
                nxt, reward, _, truncated, _ = self.env.step(action)
                self.real.add(obs[: self.spec.obs_dim], action[: self.spec.act_dim], reward,
                              nxt[: self.spec.obs_dim], False)
                episode["obs"].append(nxt)
                episode["action"].append(action)
                episode["reward"].append(reward)
                obs = nxt
                self.step += 1
                boundary = None
                if truncated:
                    self.episodes.append({k: np.asarray(v, np.float32) for k, v in episode.items()})
                    boundary = self.env.random_state()  # what the next reset starts from
                    obs, _ = self.env.reset()
                    episode = {"obs": [obs], "action": [], "reward": []}
                if c.use_model and self.step >= c.learning_starts and self.step % c.model_rollout_every == 0:
                    live = {k: np.asarray(v, np.float32) for k, v in episode.items()}
                    self.episodes.append(live)  # the current episode's states count as start states too
                    self.imagine(c.horizon(self.step))
                    self.episodes.pop()
                if self.step >= c.learning_starts:
                    for _ in range(c.updates_per_step):
                        self.agent.update(self._batch())
                bar.update(1)
                if self.step % c.eval_every == 0 or self.step == c.env_steps:
                    score = self.evaluate()
                    result = {"normalized_return": score, "env_steps": self.step, "imagined": self.imagined}
                    metrics.write(self.step, {"normalized_return": score, "imagined": self.imagined,
                                              "wall_s": time.perf_counter() - start},
                                  {"eval/normalized_return": score, "train/imagined_transitions": self.imagined})
                    (bar.write if self.progress else self.log)(
                        f"env step {self.step}: normalized return {score:.1f} ({self.imagined} imagined transitions)")
                if boundary is not None and self.step >= next_checkpoint and self.step < c.env_steps:
                    self.save(boundary)  # only at episode ends, so a resumed run continues exactly
                    next_checkpoint = (self.step // c.checkpoint_every + 1) * c.checkpoint_every
        finally:
            torch.set_num_threads(threads)
            bar.close()
            metrics.close()
        self.save(None, complete=True)
        write_json_atomic(self.run_dir / "result.json", result)
        return result

    def _pad(self, raw: np.ndarray) -> np.ndarray:
        out = np.zeros(self.space.act_dim, np.float32)
        out[: len(raw)] = raw
        return out

    def save(self, env_state: dict | None, complete: bool = False) -> Path:
        """Checkpoint at an episode boundary: the agent (``agent.pt``, loadable with ``weights_only=True``;
        ``mrcom export --policy`` takes it), replay buffers and real episodes (``buffers.npz``), and every
        random state (``state.json``). Files are replaced atomically; ``state.json`` is written last."""
        path = self.run_dir / "checkpoint"
        path.mkdir(exist_ok=True)
        with atomic_path(path / "agent.pt") as tmp:
            torch.save({"agent": self.agent.state_dict(), "env_steps": self.step}, tmp)
        state = {"env_steps": self.step, "imagined": self.imagined, "complete": complete}
        if not complete:
            arrays = {f"real_{k}": v for k, v in self.real.state_dict().items()}
            arrays.update({f"model_{k}": v for k, v in self.model.state_dict().items()})
            for i, ep in enumerate(self.episodes):
                arrays.update({f"ep{i}_{k}": v for k, v in ep.items()})
            with atomic_path(path / "buffers.npz") as tmp:
                np.savez(tmp, **arrays)
            runtime = self.imagined_env.runtime if self.imagined_env else None
            state.update(episodes=len(self.episodes), env=env_state, rng=self.rng.bit_generator.state,
                         runtime_rng=runtime.rng.bit_generator.state if runtime else None)
        write_json_atomic(path / "state.json", state)
        return path

    def _restore(self) -> None:
        path = self.run_dir / "checkpoint"
        state = json.loads((path / "state.json").read_text())
        if state["complete"]:
            self.finished = json.loads((self.run_dir / "result.json").read_text())
            return
        self.agent.load_state_dict(torch.load(path / "agent.pt", weights_only=True)["agent"])
        with np.load(path / "buffers.npz") as arrays:
            self.real.load_state_dict({k[5:]: arrays[k] for k in arrays.files if k.startswith("real_")})
            self.model.load_state_dict({k[6:]: arrays[k] for k in arrays.files if k.startswith("model_")})
            self.episodes = [{k: arrays[f"ep{i}_{k}"] for k in ("obs", "action", "reward")}
                             for i in range(state["episodes"])]
        self.env.set_random_state(state["env"])
        self.rng.bit_generator.state = state["rng"]
        if self.imagined_env is not None:
            self.imagined_env.runtime.rng.bit_generator.state = state["runtime_rng"]
        self.step, self.imagined = state["env_steps"], state["imagined"]


def summarize(results: list[float]) -> str:
    """``mean ± std`` over seeds (population std), as the paper's tables."""
    if not results:
        return "n/a"
    mean = float(np.mean(results))
    std = float(np.std(results)) if len(results) > 1 else 0.0
    return f"{mean:.1f}±{std:.1f}" if math.isfinite(mean) else "n/a"
