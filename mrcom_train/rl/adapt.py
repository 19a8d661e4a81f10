"""Scenario adaptation (``mrcom adapt``, paper §3.4): MBPO-style SAC in a target scenario, with imagined
rollouts from the exported world model through the torch-free runtime, wrapped as a Gymnasium vector env
(:class:`~mrcom_export.vector_env.ImaginedVectorEnv`, the same one standard RL code can train in).

MBPO (Janner et al. 2019) with a frozen world model: each env step the agent acts in the real target
scenario, then takes ``updates_per_step`` (G) SAC updates. Every ``model_rollout_every`` steps a round of
``rollout_batch`` imagined rollouts starts from real states the agent reached, their context FIFO primed
with the ``m`` real steps before each start state (paper eq. 4: the target scenario's own recent
trajectory), and runs ``h`` steps with the current policy, ``h`` growing linearly from ``horizon_start``
to ``horizon_end`` (MBPO's per-domain schedule). The runtime rolls the whole round out as one batch;
imagined samples/s are logged. The model buffer keeps only the latest ``retain_rounds`` rounds (it is
resized with the horizon, as MBPO's is), so imagined data comes from the current policy and is not reused
for long. Each SAC update draws ``real_ratio`` of its batch from real transitions and the rest from imagined
ones, once the model buffer holds a full round. ``use_model=False`` gives model-free SAC with the same
env-step budget and the same G (an equal-compute arm) or ``updates_per_step=1`` (the classic arm).

Evaluation: normalized return = 100 × mean episode return / episode length (dm_control rewards are in
[0, 1] per step), over ``eval_episodes`` episodes of the target scenario with the deterministic policy.

The run's config (:class:`AdaptConfig`, :func:`normalized_return`) is in :mod:`~mrcom_train.rl.adapt_config`; its
run folder, checkpoints and result are in :mod:`~mrcom_train.rl.adapt_checkpoint`. This module holds the
:class:`Adapter` (the loop) and :func:`summarize` (the paper's ``mean ± std``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch

from mrcom_core.errors import UserInputError
from mrcom_core.files import has_content, write_json_atomic
from mrcom_core.locks import folder_lock
from mrcom_core.resources import require_memory
from mrcom_export.runtime import Runtime
from mrcom_export.vector_env import ImaginedVectorEnv

from ..metrics_log import MetricsLog
from ..scenarios import ScenarioEnv, UnifiedSpace
from . import adapt_checkpoint as checkpoint
from .adapt_config import AdaptConfig, normalized_return
from .sac import SAC, ReplayBuffer, SACConfig
from .scoring import evaluate_policy, floor_scores

__all__ = ["AdaptConfig", "Adapter", "normalized_return", "summarize"]


class Adapter:
    """Runs an :class:`AdaptConfig` into ``run_dir`` (the folder: :mod:`~mrcom_train.rl.adapt_checkpoint`).
    Checkpoints are taken at the first episode end after every ``checkpoint_every`` env steps; ``resume=True``
    continues from the last one exactly (a finished run returns its result). ``threads`` caps the
    runtime's intra-op threads (set 1 when several adapters share the cores); results do not depend on it.

    The run folder is locked (:func:`~mrcom_core.locks.folder_lock`) from the constructor until
    :meth:`run` returns or raises, or :meth:`close` (also a context manager: ``with Adapter(…) as a``).
    """

    def __init__(self, config: AdaptConfig, run_dir: str | Path, export_dir: str | Path | None = None,
                 resume: bool = False, progress: bool = True, log=print, threads: int | None = None):
        self.cfg, self.run_dir, self.log, self.progress = config, Path(run_dir), log, progress
        self._stack, self._closed = contextlib.ExitStack(), False
        try:
            self._open(export_dir, resume, threads)
        except BaseException:
            self.close()
            raise

    def _open(self, export_dir, resume: bool, threads: int | None) -> None:
        config = self.cfg
        self.spec = config.target()
        od, ad = self.spec.obs_dim, self.spec.act_dim
        require_memory(config.buffer_bytes(od, ad), f"adapting for {config.env_steps} env steps (replay buffers)",
                       "lower env_steps (--env-steps)"
                       + (", rollout_batch or retain_rounds" if config.use_model else ""))
        self.imagined_env = None
        if config.use_model:
            if export_dir is None:
                raise UserInputError("--model EXPORT_DIR is needed (or use_model=False for model-free SAC)")
            runtime = Runtime(export_dir, seed=config.seed, threads=threads)
            self.imagined_env = ImaginedVectorEnv(runtime, config.rollout_batch, seed=config.seed)
            space = UnifiedSpace(runtime.obs_dim, runtime.act_dim)
            if space.obs_dim < od or space.act_dim < ad:
                raise UserInputError(f"the model's dims ({space.obs_dim}, {space.act_dim}) are smaller than "
                                     f"scenario {self.spec.describe()}'s")
        else:
            space = UnifiedSpace(od, ad)
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise UserInputError(f"run folder {self.run_dir} is a file, not a folder")
        # From here on the folder is ours: nothing in it is read before the lock is held.
        self._stack.enter_context(folder_lock(self.run_dir, "mrcom adapt"))
        if has_content(self.run_dir) and not resume:
            raise UserInputError(f"run folder {self.run_dir} is not empty; pass --resume to continue it")
        latest = checkpoint.open_checkpoints(self.run_dir) if resume else None
        if latest is not None:
            checkpoint.check_config(self.run_dir, self.cfg)
        self.space = space
        self.env = ScenarioEnv(self.spec, space)
        self.eval_env = ScenarioEnv(self.spec, space)
        self.agent = SAC(od, ad, SACConfig(hidden_dim=config.sac_hidden, batch_size=config.batch_size),
                         seed=config.seed)
        self.real = ReplayBuffer(od, ad, config.env_steps)
        self.model = ReplayBuffer(od, ad, config.model_buffer_size(config.learning_starts) if config.use_model
                                  else 1)  # unused without a model; resized as the horizon grows
        self.rng = np.random.default_rng(config.seed)
        self.episodes: list[dict[str, np.ndarray]] = []  # real trajectories (padded) for prompts
        self.step = 0
        self.imagined = 0
        self.imagine_seconds = 0.0  # time spent imagining in this process (for the samples/s log)
        self.finished: dict | None = None
        if latest is not None:
            checkpoint.restore(self, *latest)

    def close(self) -> None:
        """Release the run folder's lock (idempotent)."""
        self._closed = True
        self._stack.close()

    def __enter__(self) -> Adapter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / checkpoint.CHECKPOINTS

    # ------------------------------------------------------------------------------------------ pieces
    def _act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        raw = self.agent.act(obs[..., : self.spec.obs_dim], deterministic=deterministic)
        out = np.zeros(raw.shape[:-1] + (self.space.act_dim,), np.float32)
        out[..., : self.spec.act_dim] = raw
        return out

    def imagine(self, horizon: int) -> int:
        """One round of imagined rollouts from real states into the model buffer (resized first to hold the
        latest ``retain_rounds`` rounds at this horizon); returns the transitions added."""
        start = time.perf_counter()
        self.model.resize(self.cfg.retain_rounds * self.cfg.rollout_batch * horizon)
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
        self.imagine_seconds += time.perf_counter() - start
        return added

    @property
    def imagined_per_s(self) -> float:
        """Imagined transitions per second of imagination (policy included) in this process so far."""
        return self.imagined / self.imagine_seconds if self.imagine_seconds else 0.0

    def _batch(self) -> dict[str, np.ndarray]:
        B = self.cfg.batch_size
        if not self.cfg.use_model or len(self.model) < self.cfg.rollout_batch:  # no full round yet
            return self.real.sample(B, self.rng)
        n_real = int(round(self.cfg.real_ratio * B))
        real, model = self.real.sample(n_real, self.rng), self.model.sample(B - n_real, self.rng)
        return {k: np.concatenate([real[k], model[k]]) for k in real}

    def evaluate(self) -> float:
        """Mean normalized return of the deterministic policy over ``eval_episodes`` evaluation episodes."""
        return evaluate_policy(self.eval_env, lambda obs: self._act(obs, deterministic=True), self.cfg.eval_episodes)

    # -------------------------------------------------------------------------------------------- loop
    def run(self) -> dict[str, float]:
        """Adapt for ``env_steps`` env steps (continuing from the checkpoint when resumed); releases the run
        folder's lock when it returns or raises (a Ctrl-C included: the last published checkpoint stays)."""
        try:
            if self.finished is not None:
                return self.finished
            if self._closed:
                raise RuntimeError("this Adapter was closed; create a new one (resume=True) to continue its run")
            return self._run()
        finally:
            self.close()

    def _run(self) -> dict[str, float]:
        from tqdm import tqdm

        c = self.cfg
        write_json_atomic(self.run_dir / "config.json", {**dataclasses.asdict(c), "target": self.spec.to_dict()})
        self.log(f"adapting SAC{' + MrCoM rollouts' if c.use_model else ' (model-free)'} to "
                 f"{self.spec.describe()} for {c.env_steps} env steps; run folder {self.run_dir}"
                 + (f"; resuming at env step {self.step}" if self.step else ""))
        metrics = MetricsLog(self.run_dir, ["env_steps", "normalized_return", "imagined", "wall_s", "imagined_per_s"],
                             self.step)
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
                                              "imagined_per_s": self.imagined_per_s,
                                              "wall_s": time.perf_counter() - start},
                                  {"eval/normalized_return": score, "train/imagined_transitions": self.imagined,
                                   "train/imagined_per_s": self.imagined_per_s})
                    (bar.write if self.progress else self.log)(
                        f"env step {self.step}: normalized return {score:.1f} ({self.imagined} imagined transitions, "
                        f"{self.imagined_per_s:,.0f}/s)")
                if boundary is not None and self.step >= next_checkpoint and self.step < c.env_steps:
                    self.save(boundary)  # only at episode ends, so a resumed run continues exactly
                    next_checkpoint = (self.step // c.checkpoint_every + 1) * c.checkpoint_every
        finally:
            torch.set_num_threads(threads)
            bar.close()
            metrics.close()
        result["floors"] = floor_scores(self.spec, c.eval_episodes, c.seed)
        self.log(f"floors on this target: zero-action {result['floors']['zero']:.1f}, "
                 f"random {result['floors']['random']:.1f}")
        folder = self.save(None, result=result)
        checkpoint.publish_result(self.run_dir, folder, result)
        self.finished = result
        return result

    def _pad(self, raw: np.ndarray) -> np.ndarray:
        out = np.zeros(self.space.act_dim, np.float32)
        out[: len(raw)] = raw
        return out

    def save(self, env_state: dict | None, result: dict | None = None) -> Path:
        """Publish a checkpoint of this run (:func:`~mrcom_train.rl.adapt_checkpoint.save`): at an episode
        boundary (``env_state``: the real env's random state for its next reset) everything a resume needs;
        ``result`` marks the final one (agent and result only). Returns the folder."""
        return checkpoint.save(self, env_state, result)


def summarize(results: list[float]) -> str:
    """``mean ± std`` over seeds (population std), as the paper's tables."""
    if not results:
        return "n/a"
    mean = float(np.mean(results))
    std = float(np.std(results)) if len(results) > 1 else 0.0
    return f"{mean:.1f}±{std:.1f}" if math.isfinite(mean) else "n/a"
