"""Scenario adaptation (``mrcom adapt``, paper §3.4): MBPO-style SAC in a target scenario, with imagined
rollouts from the exported world model through the torch-free runtime, wrapped as a Gymnasium vector env
(:class:`~mrcom_export.vector_env.ImaginedVectorEnv`, the same one standard RL code can train in).

Each env step the agent acts in the real target scenario, then takes ``updates_per_step`` (G) SAC updates.
Every ``model_rollout_every`` steps a round of ``rollout_batch`` imagined rollouts starts from real states the
agent reached, the context primed with the ``m`` real steps before each start (paper eq. 4), and runs ``h``
steps with the current policy, ``h`` growing from ``horizon_start`` to ``horizon_end`` (MBPO's per-domain
schedule); with an ensemble the gate truncates uncertain rollouts (:mod:`~mrcom_train.rl.gate`). The model
buffer keeps the latest ``retain_rounds`` rounds. Each SAC update draws ``real_ratio`` of its batch from real
transitions (fixed, or following the model's error). With ``refit`` the world model is fine-tuned on the
target's real transitions every ``refit_every`` steps and swapped in (:mod:`~mrcom_train.rl.refit`);
``imagination="oracle"`` imagines with the target's own simulator instead (:mod:`~mrcom_train.rl.oracle`, the
ceiling of every model arm); ``use_model=False`` is model-free SAC with the same env steps and G.

Evaluation: normalized return over ``eval_episodes`` episodes with the deterministic policy
(:mod:`~mrcom_train.rl.scoring`); with a model, also its one-step error on the target's real transitions
(:mod:`~mrcom_train.rl.diagnostics`). The config is :class:`AdaptConfig` (:mod:`~mrcom_train.rl.adapt_config`);
the run folder, checkpoints and result are in :mod:`~mrcom_train.rl.adapt_checkpoint`.
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
from mrcom_core.io.files import write_json_atomic
from mrcom_core.io.outputs import ADAPT_RUN, claimed
from mrcom_core.io.resources import require_memory
from mrcom_export.runtime import Runtime
from mrcom_export.vector_env import ImaginedVectorEnv

from ..agents.sac import SAC, ReplayBuffer, SACConfig
from ..metrics_log import MetricsLog
from ..scenarios import ScenarioEnv, UnifiedSpace, reward_from_obs
from . import adapt_checkpoint as checkpoint
from . import diagnostics, gate, refit
from .adapt_config import AdaptConfig, adaptive_real_ratio, normalized_return
from .diagnostics import DIAGNOSTICS, ENSEMBLE_DIAGNOSTICS
from .oracle import OracleRollouts
from .reward_model import RewardModel
from .scoring import evaluate_policy, floor_scores

__all__ = ["AdaptConfig", "Adapter", "normalized_return"]



class Adapter:
    """Runs an :class:`AdaptConfig` into ``run_dir`` (the folder: :mod:`~mrcom_train.rl.adapt_checkpoint`).
    Checkpoints are taken at the first episode end after every ``checkpoint_every`` env steps; ``resume=True``
    continues from the last one exactly (a finished run returns its result). ``threads`` caps the
    runtime's intra-op threads (set 1 when several adapters share the cores); results do not depend on it.

    The run folder is locked (:func:`~mrcom_core.io.locks.folder_lock`) from the constructor until
    :meth:`run` returns or raises, or :meth:`close` (also a context manager: ``with Adapter(…) as a``).
    """

    def __init__(self, config: AdaptConfig, run_dir: str | Path, export_dir: str | Path | None = None,
                 resume: bool = False, progress: bool = True, log=print, threads: int | None = None,
                 run: str | Path | None = None):
        self.cfg, self.run_dir, self.log, self.progress = config, Path(run_dir), log, progress
        self._stack, self._closed = contextlib.ExitStack(), False
        try:
            self._open(export_dir, resume, threads, run)
        except BaseException:
            self.close()
            raise

    def _open(self, export_dir, resume: bool, threads: int | None, run) -> None:
        config = self.cfg
        self.spec = config.target()
        od, ad = self.spec.obs_dim, self.spec.act_dim
        require_memory(*config.memory_request(od, ad))  # buffers, SAC networks, an update, imagined rollouts
        self.imagined_env, self.refitter, self.refits = None, None, 0
        self.last_round: dict[str, float] = {}  # the last imagination round's gate fields (gate.GATE_FIELDS)
        self.history = 0  # real steps before a start state that prime the model (the runtime's history_len)
        if config.oracle:
            space = UnifiedSpace(od, ad)
            self.imagined_env = OracleRollouts(self.spec, space, seed=config.seed + 1)
        elif config.use_model:
            if export_dir is None:
                raise UserInputError("--model EXPORT_DIR is needed (or --model-free for plain SAC; use_model=False in "
                                     "a config)")
            runtime = Runtime(export_dir, seed=config.seed, threads=threads)
            # the disagreement costs one more batched call per imagined step: measured only for the gate
            self.imagined_env = ImaginedVectorEnv(runtime, config.rollout_batch, seed=config.seed,
                                                  uncertainty=config.gate != "none" and runtime.has_ensemble)
            self.history = runtime.history_len
            space = UnifiedSpace(runtime.obs_dim, runtime.act_dim)
            if space.obs_dim < od or space.act_dim < ad:
                raise UserInputError(f"the model's dims ({space.obs_dim}, {space.act_dim}) are smaller than "
                                     f"scenario {self.spec.describe()}'s")
            self.refitter = refit.open_refitter(config, runtime, run)
            if config.gate != "none" and not runtime.has_ensemble:
                raise UserInputError(f"gate={config.gate} needs a world model with an ensemble; export {export_dir}'s "
                                     f"has none (train with model.ensemble >= 2)")
        else:
            space = UnifiedSpace(od, ad)
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise UserInputError(f"run folder {self.run_dir} is a file, not a folder")
        # From here on the folder is ours: nothing in it is read before the lock is held.
        self._stack.enter_context(claimed(self.run_dir, ADAPT_RUN, "mrcom adapt", given=resume, label="run folder",
                                          inputs={"export": export_dir if config.use_model else None,
                                                  "training run": self.refitter.run_dir if self.refitter else None}))
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
        #: the target's reward model fitted on its real transitions (``imagined_reward="learned"``), else None
        self.reward_model = (RewardModel(od, ad, lr=config.reward_lr, seed=config.seed + 2)
                             if config.use_model and config.imagined_reward == "learned" else None)
        self.episodes: list[dict[str, np.ndarray]] = []  # real trajectories (padded) for prompts
        self.step = 0
        self.imagined = 0
        self.imagine_seconds = 0.0  # time spent imagining in this process (for the samples/s log)
        self.finished: dict | None = None
        #: the share of real transitions in each SAC batch: the config's, or with ``real_ratio_mode="model_error"``
        #: set each imagination round from the model's recent error, starting at ``real_ratio_max``
        self.real_ratio = config.real_ratio_max if config.real_ratio_mode == "model_error" else config.real_ratio
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

    def _starts(self, rng: np.random.Generator, n: int, after: int = 0,
                last: int | None = None) -> list[tuple[dict, int]]:
        """``n`` start states ``(episode, t)`` drawn with ``rng`` from :attr:`episodes` (only the ``last`` ones
        if given), uniform over every ``t ≥ m`` (so the ``m`` real steps before it can prime the model; m =
        :attr:`history`, 0 for the oracle) that has ``after`` real steps after it: an episode by its number of
        valid starts, then a start within it. Empty when there is none."""
        m, pool = self.history, self.episodes[-last:] if last else self.episodes
        counts = np.array([max(0, len(ep["reward"]) - m + 1 - after) for ep in pool])
        if counts.sum() == 0:
            return []
        episodes = rng.choice(len(counts), size=n, p=counts / counts.sum())
        starts = m + (rng.random(n) * counts[episodes]).astype(np.int64)
        return [(pool[e], t) for e, t in zip(episodes, starts, strict=True)]

    def _prompts(self, picks: list[tuple[dict, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ``m`` real steps up to each start state (m = the runtime's ``history_len``): (obs (B, m+1, D),
        actions (B, m, A), rewards (B, m))."""
        m = self.history
        return tuple(np.stack([ep[key][t - m : t + k] for ep, t in picks])
                     for key, k in (("obs", 1), ("action", 0), ("reward", 0)))

    def _start(self, picks: list[tuple[dict, int]]) -> dict:
        """What the imagined env starts from at ``picks``: the prompts of the model, or the oracle's physics
        states and real observations there."""
        if self.cfg.oracle:
            return {key: np.stack([ep[key][t] for ep, t in picks]) for key in ("state", "obs")}
        return {"prompts": self._prompts(picks)}

    @contextlib.contextmanager
    def _with_live(self, episode: dict[str, list]):
        """:attr:`episodes` with the current (unfinished) episode appended, for the block's duration."""
        self.episodes.append(_frozen(episode))
        try:
            yield
        finally:
            self.episodes.pop()

    def _imagined_reward(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray,
                         next_obs: np.ndarray) -> np.ndarray:
        """The reward an imagined transition ``(obs, action, next_obs)`` gets: the imagination's own
        (``reward``), the target's reward model's (``imagined_reward="learned"``), or the target's true reward of
        the imagined next observation (``"true"``)."""
        if self.cfg.imagined_reward == "true":
            return reward_from_obs(self.spec, next_obs[:, : self.spec.obs_dim])
        if self.reward_model is not None:
            return self.reward_model(obs, action, next_obs)
        return reward

    def imagine(self, horizon: int) -> int:
        """One round of imagined rollouts from real states into the model buffer, gated by the model's ensemble
        (:func:`~mrcom_train.rl.gate.imagine_round`), after the reward model (if any) is fitted on the real
        transitions so far; returns the transitions added. The round's gate fields are in :attr:`last_round`."""
        if self.reward_model is not None:
            self.reward_model.fit(self.real, self.cfg.reward_steps, self.rng)
        added, self.last_round = gate.imagine_round(self, horizon)
        return added

    def _follow_model(self, metrics: MetricsLog) -> None:
        """Set :attr:`real_ratio` from the model's one-step error on the recent real transitions (the live
        episode and the one before; :func:`~mrcom_train.rl.diagnostics.model_error`) and log both."""
        error = diagnostics.relative_error(diagnostics.model_error(self, last=2))
        if math.isfinite(error):
            self.real_ratio = adaptive_real_ratio(error, self.cfg.real_ratio, self.cfg.real_ratio_max)
        metrics.write(self.step, {"real_ratio": self.real_ratio, **({"recent_error": error}
                                                                     if math.isfinite(error) else {})},
                      {"train/real_ratio": self.real_ratio})

    @property
    def imagined_per_s(self) -> float:
        """Imagined transitions per second of imagination (policy included) in this process so far."""
        return self.imagined / self.imagine_seconds if self.imagine_seconds else 0.0

    def model_error(self) -> dict[str, float]:
        """The model's one-step error on the target's real transitions
        (:func:`~mrcom_train.rl.diagnostics.model_error`: ``reward_mae``, ``reward_real_mean``, ``obs_nmse``)."""
        return diagnostics.model_error(self)

    def _batch(self) -> dict[str, np.ndarray]:
        B = self.cfg.batch_size
        if not self.cfg.use_model or len(self.model) < self.cfg.rollout_batch:  # no full round yet
            return self.real.sample(B, self.rng)
        n_real = int(round(self.real_ratio * B))
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
        arm = " + oracle rollouts (the true simulator)" if c.oracle else " + model rollouts" if c.use_model else \
            " (model-free)"
        self.log(f"adapting SAC{arm} to "
                 f"{self.spec.describe()} for {c.env_steps} env steps; run folder {self.run_dir}"
                 + (f"; resuming at env step {self.step}" if self.step else ""))
        if c.env_steps <= c.learning_starts:
            self.log(f"warning: env_steps {c.env_steps} <= learning_starts {c.learning_starts}: the agent never "
                     f"updates, so the score is its untrained policy's (raise env_steps or lower learning_starts)")
        ensemble = isinstance(self.imagined_env, ImaginedVectorEnv) and self.imagined_env.runtime.has_ensemble
        # the diagnostics before the timings (those differ between runs)
        measured = (*(DIAGNOSTICS if c.use_model else ()), *(ENSEMBLE_DIAGNOSTICS if ensemble else ()))
        adaptive = ("real_ratio", "recent_error") if c.real_ratio_mode == "model_error" else ()
        refits = refit.REFIT_FIELDS if self.refitter is not None else ()
        gates = gate.GATE_FIELDS if ensemble and c.gate != "none" else ()
        metrics = MetricsLog(self.run_dir, ["env_steps", "normalized_return", "imagined", *measured, "wall_s",
                                            "imagined_per_s", *adaptive, *refits, *gates], self.step)
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
            episode = self._new_episode(obs)
            while self.step < c.env_steps:
                action = (self._act(obs) if self.step >= c.learning_starts
                          else self._pad(self.rng.uniform(-1, 1, self.spec.act_dim)))
                nxt, reward, _, truncated, _ = self.env.step(action)
                self.real.add(obs[: self.spec.obs_dim], action[: self.spec.act_dim], reward,
                              nxt[: self.spec.obs_dim], False)
                episode["obs"].append(nxt)
                episode["action"].append(action)
                episode["reward"].append(reward)
                if c.oracle:
                    episode["state"].append(self.env.physics_state())
                obs = nxt
                self.step += 1
                boundary = None
                if truncated:
                    self.episodes.append(_frozen(episode))
                    boundary = self.env.random_state()  # what the next reset starts from
                    obs, _ = self.env.reset()
                    episode = self._new_episode(obs)
                if self.refitter is not None and self.step >= c.learning_starts and self.step % c.refit_every == 0:
                    with self._with_live(episode):
                        row = refit.refit_imagination(self)
                    metrics.write(self.step, row, {f"refit/{k}": v for k, v in row.items() if math.isfinite(v)})
                if c.use_model and self.step >= c.learning_starts and self.step % c.model_rollout_every == 0:
                    with self._with_live(episode):  # the current episode's states count as start states too
                        self.imagine(c.horizon(self.step))
                        if ensemble and self.last_round:
                            metrics.write(self.step, self.last_round,
                                          {f"gate/{k}": v for k, v in self.last_round.items()})
                        if c.real_ratio_mode == "model_error":
                            self._follow_model(metrics)
                if self.step >= c.learning_starts:
                    for _ in range(c.updates_per_step):
                        self.agent.update(self._batch())
                bar.update(1)
                if self.step % c.eval_every == 0 or self.step == c.env_steps:
                    score = self.evaluate()
                    error = {}  # finite values only: empty cells, and None in the result, until there are any
                    if c.use_model:
                        with self._with_live(episode):
                            error = {k: v for k, v in self.model_error().items() if math.isfinite(v)}
                    result = {"normalized_return": score, "env_steps": self.step, "imagined": self.imagined,
                              **{k: error.get(k) for k in measured}}
                    metrics.write(self.step, {"normalized_return": score, "imagined": self.imagined,
                                              "imagined_per_s": self.imagined_per_s,
                                              "wall_s": time.perf_counter() - start, **error},
                                  {"eval/normalized_return": score, "train/imagined_transitions": self.imagined,
                                   "train/imagined_per_s": self.imagined_per_s,
                                   **{f"model/{k}": v for k, v in error.items()}})
                    (bar.write if self.progress else self.log)(
                        f"env step {self.step}: normalized return {score:.1f} ({self.imagined} imagined transitions, "
                        f"{self.imagined_per_s:,.0f}/s)" + (f"; model error on real steps: reward "
                        f"{error['reward_mae']:.3f} (|r| {error['reward_real_mean']:.3f}), obs "
                        f"{error['obs_nmse']:.4f}" if error else ""))
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

    def _new_episode(self, obs: np.ndarray) -> dict[str, list]:
        """A real episode's record from its first observation (and, for the oracle, its physics state)."""
        return {"obs": [obs], "action": [], "reward": [], **({"state": [self.env.physics_state()]}
                                                              if self.cfg.oracle else {})}

    def _pad(self, raw: np.ndarray) -> np.ndarray:
        out = np.zeros(self.space.act_dim, np.float32)
        out[: len(raw)] = raw
        return out

    def save(self, env_state: dict | None, result: dict | None = None) -> Path:
        """Publish a checkpoint of this run (:func:`~mrcom_train.rl.adapt_checkpoint.save`): at an episode
        boundary (``env_state``: the real env's random state for its next reset) everything a resume needs;
        ``result`` marks the final one (agent and result only). Returns the folder."""
        return checkpoint.save(self, env_state, result)


def _frozen(episode: dict[str, list]) -> dict[str, np.ndarray]:
    """A real episode's lists as arrays: float32, the physics states float64 (a branch continues exactly)."""
    return {k: np.asarray(v, np.float64 if k == "state" else np.float32) for k, v in episode.items()}
