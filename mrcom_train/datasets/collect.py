"""Multi-scenario data collection (``mrcom collect``): W worker processes, atomic episodes, resumable.

Each scenario of the split's range is one unit of work, run by one worker process from start to end:

* ``random``: uniform random actions on the scenario's real action dims.
* ``sac``: a Soft Actor-Critic behaviour policy trained from scratch on the scenario, whose whole replay
  is recorded, every episode from the first (random warm-up) to the last (as D4RL's "replay" sets do):
  the paper collects with per-scenario behaviour policies.

Every finished episode is written atomically (see :mod:`.dataset`). A SAC unit also saves its agent,
random state and progress after each episode, so a killed collection resumes mid-scenario: the replay
buffer is rebuilt from the episodes on disk. Only the parent process writes the manifest (through its
:class:`~.dataset.DatasetWriter`).
"""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_lib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from mrcom_core.errors import UserInputError
from mrcom_core.files import atomic_path

from ..scenarios import DOMAINS, ScenarioEnv, ScenarioSpec, UnifiedSpace, get_split, override_range, sample_scenarios
from ..workers import WorkerPool
from .dataset import DatasetWriter, read_episode, read_manifest, remove_episode, write_episode

POLICIES = ("random", "sac")


@dataclass(frozen=True)
class CollectConfig:
    """What ``mrcom collect`` gathers. Every field is checked here; errors name the field.

    ``alpha`` / ``beta`` / ``obs_fn`` override the chosen range of ``split`` (``beta`` replaces a fixed
    target speed). ``sac_*`` configure the behaviour policy when ``policy='sac'``: one gradient update
    every ``sac_update_every`` env steps after ``sac_learning_starts`` random steps.
    """

    split: str = "t1-a5b20"
    range: str = "train"
    domains: tuple[str, ...] = tuple(DOMAINS)
    scenarios_per_domain: int = 4
    episodes_per_scenario: int = 4
    policy: str = "random"
    episode_length: int = 1000
    seed: int = 0
    alpha: float | None = None
    beta: float | None = None
    obs_fn: str | None = None
    sac_hidden_dim: int = 256
    sac_batch_size: int = 256
    sac_learning_starts: int = 1000
    sac_update_every: int = 1
    workers: int = field(default=1, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "domains", tuple(self.domains))
        if not self.domains:
            raise UserInputError("domains: give at least one domain")
        for d in self.domains:
            if d not in DOMAINS:
                raise UserInputError(f"domains: unknown domain {d!r}; choose from {', '.join(DOMAINS)}")
        if len(set(self.domains)) != len(self.domains):
            raise UserInputError(f"domains: listed twice in {','.join(self.domains)}")
        if self.policy not in POLICIES:
            raise UserInputError(f"policy: unknown policy {self.policy!r}; choose from {', '.join(POLICIES)}")
        for name in ("scenarios_per_domain", "episodes_per_scenario", "episode_length", "workers",
                     "sac_hidden_dim", "sac_batch_size", "sac_update_every"):
            if getattr(self, name) < 1:
                raise UserInputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.sac_learning_starts < 0:
            raise UserInputError(f"sac_learning_starts must be >= 0, got {self.sac_learning_starts}")
        self.scenario_range()  # validates split, range, alpha, beta and obs_fn

    def scenario_range(self):
        split = get_split(self.split)
        return override_range(split.range(self.range), alpha=self.alpha, beta=self.beta, obs_fn=self.obs_fn)

    def scenarios(self) -> list[ScenarioSpec]:
        return sample_scenarios(self.scenario_range(), self.domains, self.scenarios_per_domain, self.seed,
                                episode_length=self.episode_length)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["domains"] = list(self.domains)
        return data


def _episode_seed(spec_seed: int, episode: int) -> int:
    return int(np.random.SeedSequence([spec_seed, episode]).generate_state(1)[0])


# ----------------------------------------------------------------------------------------------- units
@dataclass(frozen=True)
class Unit:
    """One scenario's collection job, picklable for a worker process."""

    root: str
    scenario: int
    spec: dict
    space: tuple[int, int]
    config: dict
    done: tuple[int, ...]  # episodes already on disk


def _run_episode(env: ScenarioEnv, spec: ScenarioSpec, episode: int, choose_action: Callable,
                 on_step: Callable | None = None):
    obs, _ = env.reset(seed=_episode_seed(spec.seed, episode))
    T = spec.episode_length
    all_obs = np.empty((T + 1, env.space.obs_dim), np.float32)
    actions = np.zeros((T, env.space.act_dim), np.float32)
    rewards = np.empty(T, np.float32)
    all_obs[0] = obs
    for t in range(T):
        actions[t, : spec.act_dim] = choose_action(obs[: spec.obs_dim])
        obs, rewards[t], _, _, _ = env.step(actions[t])
        all_obs[t + 1] = obs
        if on_step is not None:
            on_step(all_obs[t, : spec.obs_dim], actions[t, : spec.act_dim], rewards[t], obs[: spec.obs_dim])
    return all_obs, actions, rewards


def run_unit(unit: Unit, report: Callable[[int, int, int, float], None]) -> None:
    """Collect every missing episode of one scenario; ``report(scenario, episode, length, return)``."""
    spec = ScenarioSpec.from_dict(unit.spec)
    env = ScenarioEnv(spec, UnifiedSpace(*unit.space))
    cfg = unit.config
    K = cfg["episodes_per_scenario"]
    if cfg["policy"] == "random":
        for ep in range(K):
            if ep in unit.done:
                continue
            planned = iter(np.random.default_rng([spec.seed, ep, 1]).uniform(-1, 1, (spec.episode_length,
                                                                                       spec.act_dim)))
            obs, act, rew = _run_episode(env, spec, ep, lambda o, planned=planned: next(planned))
            write_episode(unit.root, unit.scenario, ep, obs, act, rew)
            report(unit.scenario, ep, len(rew), float(rew.sum()))
    else:
        _run_sac_unit(unit, spec, env, report)


def _sac_state_path(root: str, scenario: int) -> Path:
    return Path(root) / "sac" / f"s{scenario:04d}.pt"


def _run_sac_unit(unit: Unit, spec: ScenarioSpec, env: ScenarioEnv, report) -> None:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small MLPs: one thread is fastest and leaves the other cores to other workers
    try:
        _sac_episodes(unit, spec, env, report)
    finally:
        torch.set_num_threads(threads)


def _sac_episodes(unit: Unit, spec: ScenarioSpec, env: ScenarioEnv, report) -> None:
    import torch

    from ..rl.sac import SAC, ReplayBuffer, SACConfig

    cfg = unit.config
    K, T = cfg["episodes_per_scenario"], spec.episode_length
    agent = SAC(spec.obs_dim, spec.act_dim, SACConfig(hidden_dim=cfg["sac_hidden_dim"],
                                                      batch_size=cfg["sac_batch_size"]), seed=spec.seed)
    buffer = ReplayBuffer(spec.obs_dim, spec.act_dim, K * T)
    rng = np.random.default_rng([spec.seed, 2])
    state_path = _sac_state_path(unit.root, unit.scenario)
    start, env_steps = 0, 0
    done = sorted(unit.done)
    if state_path.exists() and done == list(range(len(done))):
        state = torch.load(state_path, weights_only=True)
        if state["episodes_done"] == len(done):
            agent.load_state_dict(state["agent"])
            rng.bit_generator.state = state["rng"]
            start, env_steps = state["episodes_done"], state["env_steps"]
            for ep in range(start):  # rebuild the replay from the episodes on disk
                data = read_episode(unit.root, unit.scenario, ep)
                o = data["obs"][:, : spec.obs_dim]
                buffer.add_batch(o[:-1], data["action"][:, : spec.act_dim], data["reward"], o[1:],
                                 np.zeros(len(data["reward"])))
    if start == 0:  # no usable state: (re)start the scenario from scratch
        for ep in done:
            remove_episode(unit.root, unit.scenario, ep)

    learning_starts, every, batch = cfg["sac_learning_starts"], cfg["sac_update_every"], cfg["sac_batch_size"]

    def choose(o):
        return agent.act(o) if env_steps >= learning_starts else rng.uniform(-1, 1, spec.act_dim)

    def on_step(o, a, r, o2):
        nonlocal env_steps
        # dm_control tasks never terminate; the time limit is a truncation, so always bootstrap.
        buffer.add(o, a, r, o2, False)
        env_steps += 1
        if env_steps >= learning_starts and env_steps % every == 0:
            agent.update(buffer.sample(batch, rng))

    for ep in range(start, K):
        obs, act, rew = _run_episode(env, spec, ep, choose, on_step)
        write_episode(unit.root, unit.scenario, ep, obs, act, rew)
        state_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(state_path) as tmp:
            torch.save({"agent": agent.state_dict(), "rng": rng.bit_generator.state,
                        "episodes_done": ep + 1, "env_steps": env_steps}, tmp)
        report(unit.scenario, ep, len(rew), float(rew.sum()))


# --------------------------------------------------------------------------------------------- workers
_QUEUE = None  # per worker process: where its progress messages go


def _worker_init(q, policy: str) -> None:
    # One thread per worker: W workers on W cores must not fight over intra-op threads.
    if policy == "sac":
        import torch

        torch.set_num_threads(1)
    global _QUEUE
    _QUEUE = q


def _worker_run(unit: Unit) -> int:
    run_unit(unit, lambda *msg: _QUEUE.put(msg))
    return unit.scenario


def _run_pool(units: list[Unit], workers: int, policy: str, report) -> None:
    q = mp.get_context("spawn").Queue()

    def drain(timeout: float = 0.0) -> None:
        while True:
            try:
                report(*q.get(timeout=timeout))
            except queue_lib.Empty:
                return

    with WorkerPool(min(workers, len(units)), _worker_init, (q, policy)) as pool:
        pool.run(_worker_run, units, poll=drain)
    drain(0.1)  # the last progress messages (the disk scan after this is authoritative)


# ---------------------------------------------------------------------------------------------- driver
def _check_resumable(out: Path, config: CollectConfig) -> None:
    before = read_manifest(out).get("collect_config", {})
    now = config.to_dict()
    for f in fields(CollectConfig):
        if f.compare and before.get(f.name) != now[f.name]:
            raise UserInputError(f"cannot resume {out}: it was collected with {f.name}={before.get(f.name)!r}, "
                                 f"now {now[f.name]!r}")


def collect(config: CollectConfig, out: str | Path, *, resume: bool = False, progress: bool = True,
            log: Callable[[str], None] = print) -> Path:
    """Collect the dataset described by ``config`` into ``out``; returns the folder.

    ``resume=True`` continues a killed or finished collection in ``out`` (same config, any worker count).
    """
    from tqdm import tqdm

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"output {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not resume:
        raise UserInputError(f"output folder {out} is not empty; pass --resume to continue the collection "
                             f"there, or choose another folder")
    if resume and out.exists() and any(out.iterdir()):
        _check_resumable(out, config)

    specs = config.scenarios()
    space = UnifiedSpace.of(specs)
    K = config.episodes_per_scenario
    meta = dict(split=config.split, range=config.range, policy=config.policy,
                scenario_range=asdict(config.scenario_range()), collect_config=config.to_dict())
    writer = DatasetWriter(out, specs, space, meta, episodes_per_scenario=K)
    writer.save()

    units = [Unit(str(out), sid, spec.to_dict(), (space.obs_dim, space.act_dim), config.to_dict(),
                  tuple(writer.episodes_of(sid))) for sid, spec in enumerate(specs)]
    units = [u for u in units if len(u.done) < K]
    total = len(specs) * K
    log(f"collecting {len(specs)} scenarios × {K} episodes of {config.episode_length} steps "
        f"({config.split}/{config.range}: {config.scenario_range().describe()}; policy {config.policy}) "
        f"into {out} with {config.workers} worker(s); {len(writer.records)}/{total} episodes already there")

    bar = tqdm(total=total, initial=len(writer.records), unit="ep", disable=not progress, dynamic_ncols=True)
    last_write = time.monotonic()

    def report(sid: int, ep: int, length: int, ret: float) -> None:
        nonlocal last_write
        if config.policy == "sac" and ep == 0:  # a restarted SAC scenario rewrites its episodes
            bar.update(-len(writer.episodes_of(sid)))
            writer.forget_scenario(sid)
        writer.add(sid, ep, length, ret)
        bar.update(1)
        bar.set_postfix_str(f"{specs[sid].domain} s{sid} return {ret:.1f}")
        if time.monotonic() - last_write > 5:
            writer.save()
            last_write = time.monotonic()

    try:
        if config.workers == 1 or len(units) <= 1:
            for unit in units:
                run_unit(unit, report)
        else:
            _run_pool(units, config.workers, config.policy, report)
    except KeyboardInterrupt:
        bar.close()
        writer.save()
        log(f"interrupted: {len(writer.records)}/{total} episodes are safe in {out}; continue with --resume")
        raise
    bar.close()

    writer.scan()  # the folders on disk are the source of truth
    missing = total - len(writer.records)
    if missing:
        raise RuntimeError(f"collection finished with {missing} episode(s) missing in {out}")
    writer.finalize()
    return out
