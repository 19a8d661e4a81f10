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

Run folder (``RUN``): ``config.json``, ``metrics.csv``, ``tb/``, ``checkpoints/`` (verified checkpoint folders,
see below), and once the run is finished ``result.json`` and ``agent.pt`` (the final agent; what
``mrcom export --policy`` takes). One ``mrcom adapt`` at a time per folder (``RUN/.mrcom.lock``).

Checkpoints: each is a new folder ``checkpoints/step_XXXXXXXX/`` (``agent.pt``, ``buffers.npz`` and
``state.json`` with every random state and the SHA-256 of each file), made current by an atomic
``checkpoints/latest.json`` pointer (:mod:`mrcom_core.snapshots`), so a crash or Ctrl-C while one is written
leaves the previous one whole and pointed to, and ``--resume`` checks every file before loading it. The
final checkpoint holds the agent and the result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mrcom_core import snapshots
from mrcom_core.config import check_int, check_number
from mrcom_core.errors import UserInputError
from mrcom_core.files import atomic_path, has_content, read_json, require_fields, write_json_atomic
from mrcom_core.locks import folder_lock
from mrcom_core.resources import require_memory
from mrcom_export.runtime import Runtime
from mrcom_export.vector_env import ImaginedVectorEnv

from ..metrics_log import MetricsLog
from ..scenarios import DOMAINS, ScenarioEnv, ScenarioSpec, UnifiedSpace, get_split, sample_scenarios
from .sac import SAC, ReplayBuffer, SACConfig

CHECKPOINT_FORMAT, CHECKPOINT_VERSION = "mrcom-adapt-checkpoint", 1
CHECKPOINTS = "checkpoints"  # RUN/checkpoints/step_XXXXXXXX/ + latest.json
LABEL = "adapt checkpoint"
REDO = "restore the run folder from a backup or start the run again in a new folder"
MAX_SEED = 2**32 - 1  # dm_control seeds its task with numpy's legacy RandomState


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
        for name in ("split", "range", "domain"):
            if not isinstance(getattr(self, name), str):
                raise UserInputError(f"{name} must be a string, got {getattr(self, name)!r}")
        get_split(self.split).range(self.range)
        if self.domain not in DOMAINS:
            raise UserInputError(f"domain: unknown domain {self.domain!r}; choose from {', '.join(DOMAINS)}")
        for name in ("env_steps", "episode_length", "batch_size", "updates_per_step", "sac_hidden",
                     "model_rollout_every", "rollout_batch", "horizon_start", "horizon_end", "model_buffer_size",
                     "eval_every", "eval_episodes", "checkpoint_every"):
            check_int(name, getattr(self, name))
        check_int("learning_starts", self.learning_starts, 0)
        check_int("seed", self.seed, 0)
        if self.seed > MAX_SEED:
            raise UserInputError(f"seed must be an integer <= {MAX_SEED}, got {self.seed!r}")
        if not isinstance(self.use_model, bool):
            raise UserInputError(f"use_model must be true or false, got {self.use_model!r}")
        check_number("real_ratio", self.real_ratio)
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

    def buffer_bytes(self, obs_dim: int, act_dim: int) -> int:
        """Memory of the replay buffers: every real transition plus (with the model) the model buffer, each
        ``(obs, action, reward, next_obs, terminated)`` in float32."""
        transitions = self.env_steps + (self.model_buffer_size if self.use_model else 0)
        return transitions * (2 * obs_dim + act_dim + 2) * 4


def normalized_return(episode_return: float, episode_length: int) -> float:
    return 100.0 * episode_return / episode_length


class Adapter:
    """Runs an :class:`AdaptConfig` into ``run_dir`` (see the module docstring for the folder). Checkpoints
    are taken at the first episode end after every ``checkpoint_every`` env steps; ``resume=True``
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
                       "lower env_steps (--env-steps)" + (" or model_buffer_size" if config.use_model else ""))
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
        latest = self._open_checkpoints() if resume else None
        if latest is not None:
            self._check_config()
        self.space = space
        self.env = ScenarioEnv(self.spec, space)
        self.eval_env = ScenarioEnv(self.spec, space)
        self.agent = SAC(od, ad, SACConfig(hidden_dim=config.sac_hidden, batch_size=config.batch_size),
                         seed=config.seed)
        self.real = ReplayBuffer(od, ad, config.env_steps)
        self.model = ReplayBuffer(od, ad, config.model_buffer_size if config.use_model else 1)  # unused without
        self.rng = np.random.default_rng(config.seed)
        self.episodes: list[dict[str, np.ndarray]] = []  # real trajectories (padded) for prompts
        self.step = 0
        self.imagined = 0
        self.finished: dict | None = None
        if latest is not None:
            self._restore(*latest)

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
        return self.run_dir / CHECKPOINTS

    def _open_checkpoints(self) -> tuple[Path, dict] | None:
        """Tidy what a killed run left and return the verified latest checkpoint (None: there is none)."""
        root = self.checkpoints
        snapshots.clean(self.run_dir)
        snapshots.clean(root)
        latest = snapshots.open_latest(root, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, LABEL)
        if latest is None and (self.run_dir / "checkpoint" / "state.json").is_file():
            raise UserInputError(f"{self.run_dir} holds a checkpoint in an older layout (checkpoint/); this mrcom "
                                 f"cannot resume it: start the run again in a new folder")
        # Folders the pointer never reached (a crash between their rename and the pointer's swap).
        current = latest[1]["step"] if latest is not None else -1
        for folder in root.glob("step_*") if root.is_dir() else ():
            number = folder.name.removeprefix("step_")
            if folder.is_dir() and number.isdigit() and int(number) > current:
                shutil.rmtree(folder, ignore_errors=True)
        return latest

    def _check_config(self) -> None:
        saved = read_json(self.run_dir / "config.json", "adapt run config")
        for name, value in dataclasses.asdict(self.cfg).items():
            if saved.get(name) != value:
                raise UserInputError(f"cannot resume {self.run_dir}: it ran with {name}={saved.get(name)!r}, "
                                     f"now {value!r}")

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
        folder = self.save(None, result=result)
        self._publish_result(folder, result)
        self.finished = result
        return result

    def _pad(self, raw: np.ndarray) -> np.ndarray:
        out = np.zeros(self.space.act_dim, np.float32)
        out[: len(raw)] = raw
        return out

    def save(self, env_state: dict | None, result: dict | None = None) -> Path:
        """Publish a checkpoint folder ``checkpoints/step_XXXXXXXX/`` (:func:`mrcom_core.snapshots.publish`:
        written aside, checksummed, made current by the atomic ``latest.json``): the agent (``agent.pt``,
        loadable with ``weights_only=True``), and, at an episode boundary (``env_state``: the real env's
        random state for its next reset), the replay buffers and real episodes (``buffers.npz``) and every
        random state. ``result`` marks the final checkpoint (agent and result only). Returns the folder."""
        complete = result is not None
        state = {"env_steps": self.step, "imagined": self.imagined, "complete": complete}
        arrays = {}
        if complete:
            state["result"] = result
        else:
            arrays = {f"real_{k}": v for k, v in self.real.state_dict().items()}
            arrays.update({f"model_{k}": v for k, v in self.model.state_dict().items()})
            for i, ep in enumerate(self.episodes):
                arrays.update({f"ep{i}_{k}": v for k, v in ep.items()})
            runtime = self.imagined_env.runtime if self.imagined_env else None
            state.update(episodes=len(self.episodes), env=env_state, rng=self.rng.bit_generator.state,
                         runtime_rng=runtime.rng.bit_generator.state if runtime else None)

        def write(folder: Path) -> None:
            torch.save({"agent": self.agent.state_dict(), "env_steps": self.step}, folder / "agent.pt")
            if arrays:
                np.savez(folder / "buffers.npz", **arrays)

        return snapshots.publish(self.checkpoints, self.step, write, state, CHECKPOINT_FORMAT, CHECKPOINT_VERSION,
                                 keep=2)

    def _publish_result(self, folder: Path, result: dict) -> None:
        """``result.json`` and ``agent.pt`` (the final agent) in the run folder, from the final checkpoint
        ``folder``; a resumed finished run rewrites what is missing and refuses a ``result.json`` that
        disagrees with its checkpoint."""
        path = self.run_dir / "result.json"
        if path.exists():
            if read_json(path, "adapt result") != result:
                raise UserInputError(f"{path} differs from the result in the final checkpoint {folder}; "
                                     f"delete {path.name} to have it rewritten")
        else:
            write_json_atomic(path, result)
        agent = self.run_dir / "agent.pt"
        if not agent.is_file():
            with atomic_path(agent) as tmp:
                shutil.copyfile(folder / "agent.pt", tmp)

    def _restore(self, folder: Path, state: dict) -> None:
        """Load the verified checkpoint ``folder`` (its ``state.json`` already read as ``state``); anything
        unreadable is one :class:`UserInputError` line."""
        where = folder / "state.json"
        require_fields(state, {"env_steps": int, "imagined": int, "complete": bool}, str(where))
        self._load_agent(folder / "agent.pt")
        if state["complete"]:
            result = state.get("result")
            if not isinstance(result, dict):
                raise UserInputError(f"{where}: the final checkpoint holds no result ({REDO})")
            require_fields(result, {"normalized_return": (int, float), "env_steps": int, "imagined": int},
                           f"{where} (result)")
            self._publish_result(folder, result)
            self.step, self.imagined, self.finished = state["env_steps"], state["imagined"], result
            return
        require_fields(state, {"episodes": int, "env": dict, "rng": dict}, str(where))
        path = folder / "buffers.npz"
        try:
            with np.load(path, allow_pickle=False) as arrays:
                real = {k[5:]: arrays[k] for k in arrays.files if k.startswith("real_")}
                model = {k[6:]: arrays[k] for k in arrays.files if k.startswith("model_")}
                episodes = [{k: arrays[f"ep{i}_{k}"] for k in ("obs", "action", "reward")}
                            for i in range(state["episodes"])]
            self.real.load_state_dict(real)
            self.model.load_state_dict(model)
        except Exception as e:  # a zip, npy or shape error: whatever it is, the file is not what we wrote
            why = "it holds pickled data, which is never loaded" if "pickle" in str(e) else _first_line(e)
            raise UserInputError(f"cannot read {path}: not replay buffers of this run ({why}; {REDO})") from None
        try:
            self.env.set_random_state(state["env"])
            self.rng.bit_generator.state = state["rng"]
            if self.imagined_env is not None:
                self.imagined_env.runtime.rng.bit_generator.state = state["runtime_rng"]
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise UserInputError(f"{where}: the random states are damaged ({_first_line(e)}; {REDO})") from None
        self.episodes = episodes
        self.step, self.imagined = state["env_steps"], state["imagined"]

    def _load_agent(self, path: Path) -> None:
        try:
            with warnings.catch_warnings():  # e.g. about a foreign pickle protocol: the error below says it all
                warnings.simplefilter("ignore")
                saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # unpickling, zip and OS errors alike
            raise UserInputError(f"cannot read {path}: not a PyTorch checkpoint saved by mrcom ({REDO})") from None
        try:
            self.agent.load_state_dict(saved["agent"])
        except UserInputError:
            raise
        except Exception as e:  # missing entries, wrong shapes
            raise UserInputError(f"{path} holds no SAC agent this run can load ({_first_line(e)}; {REDO})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def summarize(results: list[float]) -> str:
    """``mean ± std`` over seeds (population std), as the paper's tables."""
    if not results:
        return "n/a"
    mean = float(np.mean(results))
    std = float(np.std(results)) if len(results) > 1 else 0.0
    return f"{mean:.1f}±{std:.1f}" if math.isfinite(mean) else "n/a"
