"""The checkpoints of a ``mrcom adapt`` run folder, and its finished-run result: saving, verifying and restoring
them for :class:`~mrcom_train.rl.adapt.Adapter` (the functions taking ``adapter`` take one, or read and set
its parts).

Run folder (``RUN``): ``config.json``, ``metrics.csv``, ``tb/``, ``checkpoints/`` (verified checkpoint folders,
see below), with refits ``model/`` (the latest refit's export, which the runtime runs), and once the run is
finished ``result.json`` and ``agent.pt`` (the final agent; what ``mrcom export --policy`` takes). One ``mrcom
adapt`` at a time per folder (``RUN/.mrcom.lock``).

Checkpoints: each is a new folder ``checkpoints/step_XXXXXXXX/`` (``agent.pt``, ``buffers.npz``, with refits the
refit world model ``refit.safetensors``, with a learned imagined reward the target's reward model ``reward.pt``,
and ``state.json`` with every random state and the SHA-256 of each file), made current by an atomic
``checkpoints/latest.json`` pointer (:mod:`mrcom_core.io.snapshots`), so a crash or Ctrl-C while one is written
leaves the previous one whole and pointed to, and ``--resume`` checks every file before loading it, then their
fields against each other and the run's config (:func:`restore`). The final checkpoint holds the agent and the
result.
"""

from __future__ import annotations

import dataclasses
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mrcom_core.errors import UserInputError
from mrcom_core.io import snapshots
from mrcom_core.io.files import atomic_path, read_json, require_fields, write_json_atomic

from ..agents.sac import SAC

CHECKPOINT_FORMAT, CHECKPOINT_VERSION = "mrcom-adapt-checkpoint", 2  # 2: real_ratio always present
CHECKPOINTS = "checkpoints"  # RUN/checkpoints/step_XXXXXXXX/ + latest.json
REFIT_FILE = "refit.safetensors"  # a checkpoint's refit world model (with refit on)
REWARD_FILE = "reward.pt"  # a checkpoint's reward model of the target (imagined_reward="learned")
LABEL = "adapt checkpoint"
REDO = "restore the run folder from a backup or start the run again in a new folder"


def open_checkpoints(run_dir: Path) -> tuple[Path, dict] | None:
    """Tidy what a killed run left in ``run_dir`` and return its verified latest checkpoint (None: there is
    none)."""
    root = run_dir / CHECKPOINTS
    snapshots.clean(run_dir)
    snapshots.clean(root)
    latest = snapshots.open_latest(root, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, LABEL)
    if latest is not None and latest[0].name != f"step_{latest[1]['step']:08d}":
        # Checked before the clean-up below, which would take the folder of a lowered step for a stray one.
        raise UserInputError(f"{latest[0] / snapshots.STATE}: step {latest[1]['step']} is not the step of its folder "
                             f"{latest[0].name} ({REDO})")
    # Folders the pointer never reached (a crash between their rename and the pointer's swap).
    current = latest[1]["step"] if latest is not None else -1
    for folder in root.glob("step_*") if root.is_dir() else ():
        number = folder.name.removeprefix("step_")
        if folder.is_dir() and number.isdigit() and int(number) > current:
            shutil.rmtree(folder, ignore_errors=True)
    return latest


def check_config(run_dir: Path, config) -> None:
    """Refuse to resume ``run_dir`` with an :class:`~mrcom_train.rl.adapt_config.AdaptConfig` that differs from
    its ``config.json`` in a field the run reads (``config.unused_fields()`` may differ). A field the file lacks
    (a run started before the field existed) counts as its default."""
    saved = read_json(run_dir / "config.json", "adapt run config")
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    unused = set(config.unused_fields())
    for name, value in dataclasses.asdict(config).items():
        if name in unused:
            continue
        before = saved.get(name, defaults[name])
        if before != value:
            raise UserInputError(f"cannot resume {run_dir}: it ran with {name}={before!r}, now {value!r}")


def save(adapter, env_state: dict | None, result: dict | None = None) -> Path:
    """Publish a checkpoint folder ``checkpoints/step_XXXXXXXX/`` of ``adapter``'s run
    (:func:`mrcom_core.io.snapshots.publish`: written aside, checksummed, made current by the atomic
    ``latest.json``): the agent (``agent.pt``, loadable with ``weights_only=True``), and, at an episode
    boundary (``env_state``: the real env's random state for its next reset), the replay buffers and real
    episodes (``buffers.npz``) and every random state. ``result`` marks the final checkpoint (agent and result
    only). Returns the folder."""
    complete = result is not None
    state = {"env_steps": adapter.step, "imagined": adapter.imagined, "complete": complete}
    arrays = {}
    if complete:
        state["result"] = result
    else:
        fields, arrays = run_state(adapter)
        state.update(fields, env=env_state)
    refit_tensors = None
    if adapter.refitter is not None and not complete:
        refit_tensors, meta = adapter.refitter.state_dict()
        state["refit"] = {**meta, "refits": adapter.refits}
    reward_model = adapter.reward_model.state_dict() if adapter.reward_model is not None and not complete else None

    def write(folder: Path) -> None:
        torch.save({"agent": adapter.agent.state_dict(), "env_steps": adapter.step}, folder / "agent.pt")
        if arrays:
            np.savez(folder / "buffers.npz", **arrays)
        if refit_tensors is not None:
            save_file({k: v.contiguous() for k, v in refit_tensors.items()}, str(folder / REFIT_FILE))
        if reward_model is not None:
            torch.save(reward_model, folder / REWARD_FILE)

    return snapshots.publish(adapter.run_dir / CHECKPOINTS, adapter.step, write, state, CHECKPOINT_FORMAT,
                             CHECKPOINT_VERSION, keep=2)


def run_state(adapter) -> tuple[dict, dict[str, np.ndarray]]:
    """What a resume of ``adapter``'s run needs besides the agent and the world and reward models it refits: the
    counters, the real ratio and the random states (JSON-able), and the replay buffers and real episodes
    (arrays)."""
    imagination = adapter.imagined_env
    runtime_rng = (imagination.random_state() if adapter.cfg.oracle else
                   imagination.runtime.rng.bit_generator.state if imagination is not None else None)
    state = {"env_steps": adapter.step, "imagined": adapter.imagined, "real_ratio": adapter.real_ratio,
             "episodes": len(adapter.episodes), "rng": adapter.rng.bit_generator.state, "runtime_rng": runtime_rng}
    arrays = {**{f"real_{k}": v for k, v in adapter.real.state_dict().items()},
              **{f"model_{k}": v for k, v in adapter.model.state_dict().items()},
              **{f"ep{i}_{k}": v for i, ep in enumerate(adapter.episodes) for k, v in ep.items()}}
    return state, arrays


def load_run_state(adapter, state: dict, arrays: dict[str, np.ndarray]) -> None:
    """Restore what :func:`run_state` gave into ``adapter`` (:func:`restore` checks it against the run after)."""
    adapter.real.load_state_dict({k[5:]: v for k, v in arrays.items() if k.startswith("real_")})
    adapter.model.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model_")})
    adapter.episodes = [{k: arrays[f"ep{i}_{k}"] for k in episode_keys(adapter.cfg)}
                        for i in range(state["episodes"])]
    adapter.rng.bit_generator.state = state["rng"]
    if adapter.imagined_env is not None and adapter.cfg.oracle:
        adapter.imagined_env.set_random_state(state["runtime_rng"])
    elif adapter.imagined_env is not None:
        adapter.imagined_env.runtime.rng.bit_generator.state = state["runtime_rng"]
    adapter.step, adapter.imagined = state["env_steps"], state["imagined"]
    adapter.real_ratio = float(state["real_ratio"])


def publish_result(run_dir: Path, folder: Path, result: dict) -> None:
    """``result.json`` and ``agent.pt`` (the final agent) in ``run_dir``, from the final checkpoint ``folder``;
    a resumed finished run rewrites what is missing and refuses a ``result.json`` that disagrees with its
    checkpoint."""
    path = run_dir / "result.json"
    if path.exists():
        if read_json(path, "adapt result") != result:
            raise UserInputError(f"{path} differs from the result in the final checkpoint {folder}; "
                                 f"delete {path.name} to have it rewritten")
    else:
        write_json_atomic(path, result)
    agent = run_dir / "agent.pt"
    if not agent.is_file():
        with atomic_path(agent) as tmp:
            shutil.copyfile(folder / "agent.pt", tmp)


def restore(adapter, folder: Path, state: dict) -> None:
    """Load the verified checkpoint ``folder`` (its ``state.json`` already read as ``state``) into ``adapter``;
    anything unreadable is one :class:`UserInputError` line.

    The files' digests only show that they were not changed after the checkpoint was written (a user can
    recompute them), so their fields are checked against each other and the run's config before the run
    continues (:func:`check_counts`, :func:`check_episodes`, :func:`check_buffers`): ``state.json``'s
    ``env_steps`` against its step, the config's ``env_steps``, ``agent.pt``'s ``env_steps``, the episodes and
    the real replay buffer; ``imagined`` against what the run can have imagined; each buffer's capacity,
    position and size. A disagreement is one line naming the file and the field."""
    where = folder / "state.json"
    require_fields(state, {"step": int, "env_steps": int, "imagined": int, "complete": bool}, str(where))
    check_counts(adapter.cfg, state, where)
    agent_steps = load_agent(adapter.agent, folder / "agent.pt")
    if not isinstance(agent_steps, int) or isinstance(agent_steps, bool) or agent_steps != state["env_steps"]:
        raise UserInputError(f"{folder / 'agent.pt'}: env_steps {agent_steps!r} disagrees with {where}'s env_steps "
                             f"{state['env_steps']} ({REDO})")
    if state["complete"]:
        result = state.get("result")
        if not isinstance(result, dict):
            raise UserInputError(f"{where}: the final checkpoint holds no result ({REDO})")
        require_fields(result, {"normalized_return": (int, float), "env_steps": int, "imagined": int},
                       f"{where} (result)")
        for name in ("env_steps", "imagined"):
            if result[name] != state[name]:
                raise UserInputError(f"{where}: the result's {name} {result[name]} disagrees with {name} "
                                     f"{state[name]} ({REDO})")
        publish_result(adapter.run_dir, folder, result)
        adapter.step, adapter.imagined, adapter.finished = state["env_steps"], state["imagined"], result
        return
    require_fields(state, {"episodes": int, "env": dict, "rng": dict, "real_ratio": (int, float)}, str(where))
    if not 0 <= state["real_ratio"] <= 1:
        raise UserInputError(f"{where}: real_ratio {state['real_ratio']!r} is not a share in [0, 1] ({REDO})")
    path = folder / "buffers.npz"
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as e:  # a zip or npy error: whatever it is, the file is not what we wrote
        why = "it holds pickled data, which is never loaded" if "pickle" in str(e) else _first_line(e)
        raise UserInputError(f"cannot read {path}: not replay buffers of this run ({why}; {REDO})") from None
    saved = {k.partition("_")[0] for k in arrays if k.startswith("ep")}
    if saved != {f"ep{i}" for i in range(state["episodes"])}:
        raise UserInputError(f"{where}: episodes {state['episodes']} disagrees with {path}, which holds "
                             f"{len(saved)} real episodes ({REDO})")
    try:
        adapter.env.set_random_state(state["env"])
        load_run_state(adapter, state, arrays)
    except UserInputError:
        raise
    except Exception as e:  # a missing array, a shape, a random state: the checkpoint is not this run's
        raise UserInputError(f"{where}: cannot restore the run from it and {path.name} ({_first_line(e)}; "
                             f"{REDO})") from None
    check_episodes(adapter, adapter.episodes, path)
    check_buffers(adapter, state, where, path)
    if adapter.refitter is not None:
        restore_refit(adapter, folder, state.get("refit"))
    if adapter.reward_model is not None:
        path = folder / REWARD_FILE
        try:
            adapter.reward_model.load_state_dict(_torch_load(path))
        except Exception as e:  # a missing file or entry, a foreign tensor: not this run's reward model
            raise UserInputError(f"cannot restore the target's reward model from {path} ({_first_line(e)}; "
                                 f"{REDO})") from None


def restore_refit(adapter, folder: Path, meta) -> None:
    """The refit world model of a checkpoint (``refit.safetensors``: weights, Adam's moments, generator;
    ``meta``: state.json's ``refit``), loaded into ``adapter``'s refitter and, once it has refit, exported
    and swapped in as its runtime again (the same weights give the same graphs)."""
    from .refit import swap_runtime

    path = folder / REFIT_FILE
    try:
        tensors = load_file(str(path))
        refits = meta["refits"]
        adapter.refitter.load_state_dict(tensors, meta)
    except Exception as e:  # a missing file or entry, a foreign tensor: whatever it is, not this run's refit
        raise UserInputError(f"cannot restore the refit world model from {path} ({_first_line(e)}; {REDO})") from None
    if isinstance(refits, bool) or not isinstance(refits, int) or refits < 0:
        raise UserInputError(f"{folder / 'state.json'}: refit's refits {refits!r} is not a count ({REDO})")
    adapter.refits = refits
    if refits:
        swap_runtime(adapter)


def most_imagined(config, step: int) -> int:
    """The most imagined transitions a run of ``config`` (an :class:`~mrcom_train.rl.adapt_config.AdaptConfig`)
    has made by env step ``step``: a round of ``rollout_batch`` rollouts of at most ``horizon(step)`` steps at
    every multiple of ``model_rollout_every`` from ``learning_starts`` (and from step 1) on; 0 without the
    model."""
    if not config.use_model:
        return 0
    every = config.model_rollout_every
    rounds = max(0, step // every - (max(1, config.learning_starts) - 1) // every)
    return rounds * config.rollout_batch * config.horizon(step)


def check_counts(config, state: dict, where: Path) -> None:
    """``state.json``'s counts (``where``; ``state`` read from it) against its step and the run's ``config``:
    ``env_steps`` is the step, the config's ``env_steps`` in the final checkpoint and between 1 and it
    otherwise; ``imagined`` is within :func:`most_imagined`; ``episodes`` (not in the final checkpoint) is the
    number of whole episodes in ``env_steps`` (checkpoints are taken at episode ends)."""
    steps, imagined = state["env_steps"], state["imagined"]

    def bad(message: str) -> UserInputError:
        return UserInputError(f"{where}: {message} ({REDO})")

    if steps != state["step"]:
        raise bad(f"env_steps {steps} disagrees with the checkpoint's step {state['step']}")
    if state["complete"] and steps != config.env_steps:
        raise bad(f"env_steps {steps} is not the run's env_steps {config.env_steps}, where its final checkpoint "
                  f"is taken")
    if not state["complete"] and not 0 < steps < config.env_steps:
        raise bad(f"env_steps {steps} is not between 1 and {config.env_steps - 1}, where this run takes "
                  f"checkpoints")
    most = most_imagined(config, steps)
    if not 0 <= imagined <= most:
        raise bad(f"imagined {imagined} is not " + (f"between 0 and {most}" if most else "0")
                  + f", the imagined transitions this run can make in {steps} env steps")
    if state["complete"]:
        return
    length, episodes = config.episode_length, state.get("episodes")
    if steps % length:
        raise bad(f"env_steps {steps} is not a multiple of the episode length {length} (checkpoints are taken at "
                  f"episode ends)")
    if isinstance(episodes, int) and not isinstance(episodes, bool) and episodes != steps // length:
        raise bad(f"episodes {episodes} disagrees with env_steps {steps}, which are {steps // length} episodes of "
                  f"{length} steps")


def episode_keys(config) -> tuple[str, ...]:
    """The arrays of a stored real episode: observations, actions, rewards, and for the oracle arm the physics
    states (:meth:`~mrcom_train.scenarios.ScenarioEnv.physics_state`)."""
    return ("obs", "action", "reward", "state") if config.oracle else ("obs", "action", "reward")


def check_episodes(adapter, episodes: list[dict[str, np.ndarray]], path: Path) -> None:
    """Each real episode of ``buffers.npz`` (``path``) has ``episode_length`` steps in the adapter's spaces:
    ``obs`` (T+1, obs dims), ``action`` (T, action dims), ``reward`` (T,), all float32, and for the oracle
    ``state`` (T+1, the simulator's state size) in float64."""
    T, space = adapter.cfg.episode_length, adapter.space
    shapes = {"obs": (T + 1, space.obs_dim), "action": (T, space.act_dim), "reward": (T,)}
    if adapter.cfg.oracle:
        shapes["state"] = (T + 1, adapter.env.physics_state().size)
    for i, episode in enumerate(episodes):
        for key, shape in shapes.items():
            array, dtype = episode[key], np.float64 if key == "state" else np.float32
            if array.shape != shape or array.dtype != dtype:
                raise UserInputError(f"{path}: ep{i}_{key} is {array.dtype} of shape {array.shape}, expected "
                                     f"{np.dtype(dtype).name} of shape {shape} ({REDO})")


def check_buffers(adapter, state: dict, where: Path, path: Path) -> None:
    """The replay buffers loaded from ``buffers.npz`` (``path``) against ``state.json`` (``where``) and the run's
    config: the real buffer has ``env_steps`` (the config's) slots and holds ``env_steps`` (the state's)
    transitions; the model buffer is ``retain_rounds × rollout_batch × h`` slots for a horizon ``h`` the run has
    reached (1 slot, empty, without the model) and holds at most ``imagined``; each position is where its
    transitions end."""
    config, steps = adapter.cfg, state["env_steps"]
    for name, buffer in (("real", adapter.real), ("model", adapter.model)):
        capacity, (ptr, size) = buffer.capacity, (int(x) for x in buffer.state_dict()["ptr_size"])
        if not (0 <= size <= capacity and 0 <= ptr < capacity and (ptr == size or size == capacity)):
            raise UserInputError(f"{path}: {name}_ptr_size ({ptr}, {size}) is no position and size in a buffer of "
                                 f"{capacity} transitions ({REDO})")
    capacity, size = adapter.real.capacity, len(adapter.real)
    if capacity != config.env_steps:
        raise UserInputError(f"{path}: the real replay buffer has {capacity} slots, not the run's env_steps "
                             f"{config.env_steps} ({REDO})")
    if size != steps:
        raise UserInputError(f"{where}: env_steps {steps} disagrees with {path}, whose real replay buffer holds "
                             f"{size} transitions ({REDO})")
    capacity, size = adapter.model.capacity, len(adapter.model)
    if not config.use_model:
        fits = capacity == 1 and size == 0
    else:
        rounds = config.retain_rounds * config.rollout_batch
        fits = (capacity % rounds == 0 and config.horizon_start <= capacity // rounds <= config.horizon(steps)
                and size <= state["imagined"])
    if not fits:
        raise UserInputError(f"{path}: the model replay buffer ({size} of {capacity} slots) is not one this run has "
                             f"after {steps} env steps and {state['imagined']} imagined transitions ({REDO})")


def load_agent(agent: SAC, path: Path):
    """Load the SAC ``agent`` from ``agent.pt`` at ``path`` (``weights_only=True``) and return the ``env_steps``
    saved with it (None when it has none); anything unreadable is one :class:`UserInputError` line."""
    try:
        saved = _torch_load(path)
    except Exception:  # unpickling, zip and OS errors alike
        raise UserInputError(f"cannot read {path}: not a PyTorch checkpoint saved by mrcom ({REDO})") from None
    try:
        agent.load_state_dict(saved["agent"])
    except UserInputError:
        raise
    except Exception as e:  # missing entries, wrong shapes
        raise UserInputError(f"{path} holds no SAC agent this run can load ({_first_line(e)}; {REDO})") from None
    return saved.get("env_steps")


def _torch_load(path: Path):
    """``torch.load`` of a checkpoint file with ``weights_only=True`` (never unpickling code), its warnings (e.g.
    about a foreign pickle protocol) silenced: a caller's error line says it all."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
