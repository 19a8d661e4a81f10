"""Multi-scenario data collection (``mrcom collect``): W worker processes, atomic episodes, resumable.

Each scenario of the split's range is one unit of work, run by one worker process from start to end:

* ``random``: uniform random actions on the scenario's real action dims.
* ``sac``: a Soft Actor-Critic behaviour policy trained on the scenario, whose whole replay is recorded,
  every episode from the first to the last (as D4RL's "replay" sets do): the paper collects with
  per-scenario behaviour policies. With ``sac_chain`` > 1 a worker runs a chain of one domain's scenarios
  in turn, each starting from the previous one's final agent instead of from scratch (and a random
  warm-up), so most scenarios are collected by a policy that already moves.

Every finished episode is written atomically (see :mod:`.dataset`). A SAC unit also saves its agent,
random state and progress after each episode, so a killed collection resumes mid-scenario: the replay
buffer is rebuilt from the episodes on disk. Only the parent process writes the manifest (through its
:class:`~.dataset.DatasetWriter`, which records each episode's checksums) and holds the output folder's lock
for the whole collection.

Before anything starts the config is checked (every field, the memory one worker needs at least: see
:mod:`.collect_config`, which holds :class:`CollectConfig`); a resumed collection checks the episodes already
there against its manifest and stops at a damaged one, leaving it in place. A fresh collection that fails
before its first episode is finished leaves no folder behind.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import queue as queue_lib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mrcom_core.errors import Interrupted, UserInputError
from mrcom_core.io.files import TMP_PREFIX, atomic_path, writing
from mrcom_core.io.outputs import DATASET, claimed, undo_fresh

from ..scenarios import ScenarioEnv, ScenarioSpec, UnifiedSpace
from ..workers import WorkerPool
from .checks import EPISODES
from .collect_config import CollectConfig, check_memory, check_resumable
from .dataset import DatasetWriter, read_episode, remove_episode, write_episode


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
    warm_from: int | None = None  # SAC: the scenario whose final agent this one starts from (a chain)


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


def _sac_state_path(root: str | Path, scenario: int) -> Path:
    return Path(root) / "sac" / f"s{scenario:04d}.pt"


def _save_sac_state(path: Path, state: dict) -> None:
    """Write a SAC unit's state atomically. It is serialized in memory and written by Python, so a failed
    write (a full disk, a file-size limit) is an ``OSError`` with its errno naming ``path``: ``torch.save`` to
    a file reports one as a ``RuntimeError`` without it."""
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    with writing(path), atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def _sac_warm_start(root: str | Path, unit: Unit) -> dict:
    """The final agent of the scenario ``unit`` warm-starts from (its whole replay must be collected)."""
    import torch

    path = _sac_state_path(root, unit.warm_from)
    K = unit.config["episodes_per_scenario"]
    try:
        state = torch.load(path, weights_only=True)
        complete = int(state["episodes_done"]) == K
    except Exception as e:  # noqa: BLE001 -- a missing or unreadable file gets the same one-line answer
        raise UserInputError(f"scenario {unit.scenario} warm-starts from scenario {unit.warm_from}'s final SAC "
                             f"agent, but {path} cannot be read ({' '.join(str(e).split())[:200]}); collect into "
                             f"a new folder") from None
    if not complete:
        raise UserInputError(f"scenario {unit.scenario} warm-starts from scenario {unit.warm_from}, whose SAC "
                             f"state {path} is not final; collect into a new folder")
    return state["agent"]


def _sac_resume_state(root: str | Path, scenario: int, done) -> dict | None:
    """The saved SAC state to continue ``scenario`` from, when it matches the finished episodes ``done``
    (0 … n-1, all of them); None when the scenario has to start from scratch."""
    import torch

    done = sorted(done)
    path = _sac_state_path(root, scenario)
    if not done or not path.exists() or done != list(range(len(done))):
        return None
    try:
        state = torch.load(path, weights_only=True)
        episodes_done = int(state["episodes_done"])
    except Exception as e:  # noqa: BLE001 -- any unreadable state file gets the same one-line answer
        raise UserInputError(f"SAC state {path} cannot be read ({' '.join(str(e).split())[:200]}); delete it to "
                             f"collect scenario {scenario} again from scratch") from None
    return state if episodes_done == len(done) else None


def _run_sac_unit(unit: Unit, spec: ScenarioSpec, env: ScenarioEnv, report) -> None:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small MLPs: one thread is fastest and leaves the other cores to other workers
    try:
        _sac_episodes(unit, spec, env, report)
    finally:
        torch.set_num_threads(threads)


def _sac_episodes(unit: Unit, spec: ScenarioSpec, env: ScenarioEnv, report) -> None:
    from ..agents.sac import SAC, ReplayBuffer, SACConfig

    cfg = unit.config
    K, T = cfg["episodes_per_scenario"], spec.episode_length
    agent = SAC(spec.obs_dim, spec.act_dim, SACConfig(hidden_dim=cfg["sac_hidden_dim"],
                                                      batch_size=cfg["sac_batch_size"]), seed=spec.seed)
    buffer = ReplayBuffer(spec.obs_dim, spec.act_dim, K * T)
    rng = np.random.default_rng([spec.seed, 2])
    state_path = _sac_state_path(unit.root, unit.scenario)
    start, env_steps = 0, 0
    done = sorted(unit.done)
    state = _sac_resume_state(unit.root, unit.scenario, done)
    warm = unit.warm_from is not None  # act with the inherited agent from the first step
    if state is not None:
        agent.load_state_dict(state["agent"])
        rng.bit_generator.state = state["rng"]
        start, env_steps = state["episodes_done"], state["env_steps"]
        for ep in range(start):  # rebuild the replay from the episodes on disk
            data = read_episode(unit.root, unit.scenario, ep, length=T, obs_dim=unit.space[0],
                                act_dim=unit.space[1])
            o = data["obs"][:, : spec.obs_dim]
            buffer.add_batch(o[:-1], data["action"][:, : spec.act_dim], data["reward"], o[1:],
                             np.zeros(len(data["reward"])))
    if start == 0:  # no usable state: (re)start the scenario from scratch (the driver already did, see collect)
        for ep in done:
            remove_episode(unit.root, unit.scenario, ep)
        if warm:
            agent.load_state_dict(_sac_warm_start(unit.root, unit))

    learning_starts, every, batch = cfg["sac_learning_starts"], cfg["sac_update_every"], cfg["sac_batch_size"]

    def choose(o):
        return agent.act(o) if warm or env_steps >= learning_starts else rng.uniform(-1, 1, spec.act_dim)

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
        _save_sac_state(state_path, {"agent": agent.state_dict(), "rng": rng.bit_generator.state,
                                     "episodes_done": ep + 1, "env_steps": env_steps})
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


def _worker_run(chain: tuple[Unit, ...]) -> int:
    for unit in chain:  # in order: each may warm-start from the one before
        run_unit(unit, lambda *msg: _QUEUE.put(msg))
    return chain[-1].scenario


def _run_pool(chains: list[tuple[Unit, ...]], workers: int, policy: str, report) -> None:
    q = mp.get_context("spawn").Queue()

    def drain(timeout: float = 0.0) -> None:
        while True:
            try:
                report(*q.get(timeout=timeout))
            except queue_lib.Empty:
                return

    with WorkerPool(min(workers, len(chains)), _worker_init, (q, policy)) as pool:
        pool.run(_worker_run, chains, poll=drain)
    drain(0.1)  # the last progress messages (the disk scan after this is authoritative)


def _chain_reports(chain: tuple[Unit, ...]) -> list[tuple]:
    """Run a chain in a task; its progress messages, in order."""
    reports: list[tuple] = []
    for unit in chain:
        run_unit(unit, lambda *msg: reports.append(msg))
    return reports


def _run_tasks(chains: list[tuple[Unit, ...]], executor, report) -> None:
    """Every chain a task of ``executor``; a chain that fails (after the executor's retry) fails the collection,
    after the others finished."""
    from ..executors import Task

    tasks = [Task(f"scenario chain from {chain[0].scenario}", _chain_reports, (chain,)) for chain in chains]
    outcome = executor.run(tasks, lambda task, reports, error: [report(*m) for m in reports or ()])
    if outcome.failures:
        key, error = next(iter(outcome.failures.items()))
        raise RuntimeError(f"{len(outcome.failures)} of {len(tasks)} collection tasks failed ({key}: {error})")


# ---------------------------------------------------------------------------------------------- driver
def _finished_episodes(out: Path) -> int:
    """How many finished episode folders ``out`` holds (leftovers of unfinished ones and symbolic links, which
    a dataset refuses, not counted)."""
    return sum(1 for p in (out / EPISODES).glob("s*/e*")
               if not p.name.startswith(TMP_PREFIX) and not p.parent.name.startswith(TMP_PREFIX)
               and not p.is_symlink() and not p.parent.is_symlink())


def collect(config: CollectConfig, out: str | Path, *, resume: bool = False, progress: bool = True,
            log: Callable[[str], None] = print, executor=None) -> Path:
    """Collect the dataset described by ``config`` into ``out``; returns the folder.

    ``executor``: run the scenario chains as tasks of a :class:`~mrcom_train.executors.RayExecutor` (every node
    writing into ``out``, which they must all see) instead of ``config.workers`` local processes; the dataset is
    the same (each scenario is seeded by itself), its progress moves a chain at a time.

    ``resume=True`` continues a killed or finished collection in ``out`` (same config, any worker count);
    the episodes already there are checked first (:meth:`DatasetWriter.scan`) and a damaged one stops the
    collection, untouched; a non-empty ``out`` that is not a dataset is refused (:func:`mrcom_core.io.outputs.claimed`,
    which also locks the folder for the whole call).
    A collection that fails before finishing its first episode leaves ``out`` as it found it (removed if
    this call created it); one that fails later keeps its finished episodes for ``--resume``.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"output {out} exists and is not a folder")
    specs = config.scenarios()
    space = UnifiedSpace.of(specs)
    check_memory(config, specs, space)
    created = not out.exists()
    with claimed(out, DATASET, "mrcom collect", given=resume) as fresh:  # --resume continues only a dataset
        try:
            _collect_locked(config, out, specs, space, fresh, progress, log, executor)
        except BaseException as e:
            if not fresh or _finished_episodes(out):
                raise
            undo_fresh(out, created)
            if isinstance(e, KeyboardInterrupt):
                raise Interrupted(f"no episode had finished, so {out} was {'removed' if created else 'emptied'}; "
                                  f"run the same command again") from None
            raise
    return out


def _collect_locked(config: CollectConfig, out: Path, specs: list[ScenarioSpec], space: UnifiedSpace, fresh: bool,
                    progress: bool, log: Callable[[str], None], executor=None) -> None:
    from tqdm import tqdm

    if not fresh:
        check_resumable(out, config)
    K = config.episodes_per_scenario
    meta = dict(split=config.split, range=config.range, policy=config.policy,
                scenario_range=asdict(config.scenario_range()), collect_config=config.to_dict())
    writer = DatasetWriter(out, specs, space, meta, episodes_per_scenario=K)  # checks what is already there
    if config.policy == "sac":
        # A SAC scenario without a matching saved state starts from scratch: drop its episodes here, before any
        # worker rewrites them, so the manifest never records checksums of episodes about to change.
        for sid in range(len(specs)):
            done = writer.episodes_of(sid)
            if done and _sac_resume_state(out, sid, done) is None:
                for ep in done:
                    remove_episode(out, sid, ep)
                writer.forget_scenario(sid)
    writer.save()

    chains = []
    for ids in config.chains(specs):
        previous = [None, *ids[:-1]]
        chain = tuple(Unit(str(out), sid, specs[sid].to_dict(), (space.obs_dim, space.act_dim), config.to_dict(),
                           tuple(writer.episodes_of(sid)), prev) for prev, sid in zip(previous, ids, strict=True))
        chain = tuple(u for u in chain if len(u.done) < K)  # a chain resumes at its first unfinished scenario
        if chain:
            chains.append(chain)
    total = len(specs) * K
    log(f"collecting {len(specs)} scenarios × {K} episodes of {config.episode_length} steps "
        f"({config.split}/{config.range}: {config.scenario_range().describe()}; policy {config.policy}) "
        f"into {out} with {executor.describe() if executor else f'{config.workers} worker(s)'}; "
        f"{len(writer.records)}/{total} episodes already there")

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
        if executor is not None:
            _run_tasks(chains, executor, report)
        elif config.workers == 1 or len(chains) <= 1:
            for unit in (u for chain in chains for u in chain):
                run_unit(unit, report)
        else:
            _run_pool(chains, config.workers, config.policy, report)
        writer.save()
        writer.scan()  # the folders on disk are the source of truth
        missing = total - len(writer.records)
        if missing:
            raise RuntimeError(f"collection finished with {missing} episode(s) missing in {out}")
        writer.finalize()
    except BaseException as e:
        bar.close()
        kept = _finished_episodes(out)
        if kept == 0 and fresh:
            raise  # collect() discards the folder
        try:
            writer.save()
        except Exception:  # noqa: BLE001 -- the original error matters more than a failed progress save
            pass
        if isinstance(e, KeyboardInterrupt):
            raise Interrupted(f"{kept}/{total} finished episodes are safe in {out}; continue with the same command "
                              f"plus --resume") from None
        note = f"{kept}/{total} finished episodes are kept in {out}; continue with --resume"
        if isinstance(e, UserInputError):
            raise UserInputError(f"{e} ({note} once fixed)") from e
        log(f"collection failed: {note} once the cause is fixed")
        raise
    bar.close()
