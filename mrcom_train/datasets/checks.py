"""The dataset's integrity checks, and the episode-folder layout they check against: the names under
``episodes/`` (:func:`episode_dir`, :func:`episode_folders`), every episode file's ``.npy`` header
(:func:`check_episode_files`: float32, the recorded shape, the exact size; nothing is unpickled) and the
manifest's fields (:func:`episode_records`, :func:`scenario_record`, :func:`manifest_stats`).

A dataset holds its folders and files themselves: a symbolic link under ``episodes/`` (``episodes`` itself, a
scenario or episode folder, an episode file) is refused wherever the folder is walked (:func:`episode_folders`),
and a linked episode folder or file also where an episode is read (:func:`check_episode_files`).

Every problem is a :class:`~mrcom_core.errors.UserInputError` naming the file or field, in one line. The
writer and reader that use these checks are in :mod:`.dataset`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mrcom_core.errors import UserInputError
from mrcom_core.io.files import TMP_PREFIX, require_fields

from ..scenarios import ScenarioSpec

EPISODES = "episodes"
FIELDS = ("obs", "action", "reward")
FILES = tuple(f"{name}.npy" for name in FIELDS)
REDO = "collect the data again"
DTYPE = np.dtype("<f4")


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def episode_dir(root: Path | str, scenario: int, episode: int) -> Path:
    return Path(root) / EPISODES / f"s{scenario:04d}" / f"e{episode:05d}"


def folder_index(name: str, prefix: str, width: int) -> int | None:
    """The number in a folder name ``sNNNN`` / ``eNNNNN`` (exactly as :func:`episode_dir` spells it), or None."""
    digits = name[len(prefix):]
    if not name.startswith(prefix) or not digits.isascii() or not digits.isdigit():
        return None
    value = int(digits)
    return value if f"{prefix}{value:0{width}d}" == name else None


def _stray(path: Path) -> UserInputError:
    return UserInputError(f"{path} does not belong to the dataset ({EPISODES}/ holds only sNNNN/eNNNNN episode "
                          f"folders of {', '.join(FILES)}); move it out of the dataset folder")


def no_symlink(path: Path) -> Path:
    """``path``, unless it is a symbolic link (to anything, or dangling): then a :class:`UserInputError`
    naming it."""
    if path.is_symlink():
        raise UserInputError(f"{path} is a symbolic link; a dataset must hold its episode folders and files "
                             f"themselves: replace the link with a copy of what it points to, or move it out of the "
                             f"dataset folder")
    return path


def episode_folders(root: Path | str) -> list[tuple[int, int]]:
    """The ``(scenario, episode)`` pairs of the episode folders under ``root/episodes``, sorted.

    Anything else there (a stray file or folder, an episode folder holding other files, a symbolic link at
    any level, ``episodes`` itself included) is a :class:`UserInputError` naming it; ``.tmp-`` leftovers of a
    killed writer are skipped (the writer removes them)."""
    base = Path(root) / EPISODES
    if not base.exists() and not base.is_symlink():
        return []
    if not no_symlink(base).is_dir():
        raise _stray(base)
    found = []
    for scenario_dir in sorted(base.iterdir()):
        if scenario_dir.name.startswith(TMP_PREFIX):
            continue
        sid = folder_index(scenario_dir.name, "s", 4)
        if sid is None or not no_symlink(scenario_dir).is_dir():
            raise _stray(scenario_dir)
        for ep_dir in sorted(scenario_dir.iterdir()):
            if ep_dir.name.startswith(TMP_PREFIX):
                continue
            ep = folder_index(ep_dir.name, "e", 5)
            if ep is None or not no_symlink(ep_dir).is_dir():
                raise _stray(ep_dir)
            entries = sorted(ep_dir.iterdir())
            extra = [p for p in entries if p.name not in FILES]
            if extra:
                raise _stray(extra[0])
            for file in entries:
                no_symlink(file)
            found.append((sid, ep))
    return found


def _npy_shape(path: Path, redo: str = REDO) -> tuple[int, ...]:
    """The shape of the float32 ``.npy`` array in ``path``, read from its header (no data is read); a
    missing file, another format, another dtype (Python objects included) or a size that does not match
    the header (truncated, or with trailing bytes) is a :class:`UserInputError` naming the file (``redo``:
    how to get an intact one)."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(f)
            else:
                raise ValueError(f".npy format version {version} is not one mrcom writes")
            offset = f.tell()
    except FileNotFoundError:
        raise UserInputError(f"{path} is missing ({redo})") from None
    except IsADirectoryError:
        raise UserInputError(f"{path} is a folder, not an array file ({redo})") from None
    except (OSError, ValueError, SyntaxError, TypeError, EOFError) as e:
        raise UserInputError(f"{path} is not a readable .npy array ({one_line(e)}; {redo})") from None
    if dtype.hasobject:
        raise UserInputError(f"{path} holds Python objects (dtype {dtype}), which mrcom never loads ({redo})")
    if dtype != DTYPE:
        raise UserInputError(f"{path} holds {dtype} data, expected float32 ({redo})")
    expected, size = offset + math.prod(shape) * DTYPE.itemsize, path.stat().st_size
    if size < expected:
        raise UserInputError(f"{path} is truncated: {size} bytes, its header promises {expected} ({redo})")
    if size > expected:
        raise UserInputError(f"{path} has {size - expected} bytes after its array data ({redo})")
    return tuple(shape)


def check_episode_files(folder: Path | str, length: int | None = None, obs_dim: int | None = None,
                        act_dim: int | None = None, redo: str = REDO) -> int:
    """Check an episode folder's three array files by their headers: float32, obs ``(T+1, obs_dim)``,
    action ``(T, act_dim)``, reward ``(T,)`` with ``T = length`` where given; returns ``T``. A mismatch is a
    :class:`UserInputError` naming the file (``redo``: how to get an intact one), and so is a folder or file
    that is a symbolic link."""
    folder = no_symlink(Path(folder))
    shapes = {name: _npy_shape(no_symlink(folder / f"{name}.npy"), redo) for name in FIELDS}
    ndims = {"obs": 2, "action": 2, "reward": 1}
    for name, shape in shapes.items():
        if len(shape) != ndims[name]:
            raise UserInputError(f"{folder / (name + '.npy')} has shape {shape}, expected a {ndims[name]}-d array "
                                 f"({redo})")
    T = shapes["reward"][0] if length is None else length
    expected = {"obs": (T + 1, obs_dim if obs_dim is not None else shapes["obs"][1]),
                "action": (T, act_dim if act_dim is not None else shapes["action"][1]), "reward": (T,)}
    for name in ("reward", "action", "obs"):
        if shapes[name] != expected[name]:
            where = f"the manifest records {length} steps" if length is not None else \
                f"reward.npy has {T} steps"
            raise UserInputError(f"{folder / (name + '.npy')} has shape {shapes[name]}, expected {expected[name]} "
                                 f"({where}; obs_dim {expected['obs'][1]}, act_dim {expected['action'][1]}; {redo})")
    return T


# ----------------------------------------------------------------------------------------- the manifest
def manifest_error(where: str, what: str) -> UserInputError:
    """The error for a manifest field ``where`` that is wrong as ``what`` says."""
    return UserInputError(f"{where}: {what} (the file is damaged or was not written by this mrcom; {REDO})")


def episode_records(manifest: dict, where: str, num_scenarios: int) -> list[dict]:
    """The manifest's episode records, each checked: ``scenario`` (one of its ``num_scenarios``),
    ``episode``, ``length``, ``return`` and the ``files`` checksum table; no episode twice."""
    require_fields(manifest, {"episodes": list}, where)
    seen = set()
    for i, record in enumerate(manifest["episodes"]):
        at = f"{where} episodes[{i}]"
        if not isinstance(record, dict):
            raise manifest_error(at, f"a {type(record).__name__}, expected an object")
        require_fields(record, {"scenario": int, "episode": int, "length": int, "return": (int, float),
                                "files": dict}, at)
        if not 0 <= record["scenario"] < num_scenarios:
            raise manifest_error(at, f"scenario {record['scenario']} is out of range (the manifest lists "
                                     f"{num_scenarios} scenario(s))")
        if record["episode"] < 0 or record["length"] < 0:
            raise manifest_error(at, f"negative episode index or length ({record['episode']}, {record['length']})")
        files = record["files"]
        if sorted(files) != sorted(FILES) or not all(isinstance(v, str) for v in files.values()):
            raise manifest_error(at, f"'files' must give the SHA-256 of exactly {', '.join(FILES)}")
        key = (record["scenario"], record["episode"])
        if key in seen:
            raise manifest_error(at, f"episode {key[1]} of scenario {key[0]} is listed twice")
        seen.add(key)
    return manifest["episodes"]


def scenario_record(i: int, record, obs_dim: int, act_dim: int, where: str) -> ScenarioSpec:
    """The spec of the manifest's ``scenarios[i]``, checked: an object with a valid ``spec`` and its
    ``obs_mask`` / ``action_mask`` (``obs_dim`` / ``act_dim`` zeros and ones)."""
    at = f"{where} scenarios[{i}]"
    if not isinstance(record, dict):
        raise manifest_error(at, f"a {type(record).__name__}, expected an object")
    require_fields(record, {"spec": dict, "obs_mask": list, "action_mask": list}, at)
    for key, dim in (("obs_mask", obs_dim), ("action_mask", act_dim)):
        mask = record[key]
        if len(mask) != dim or any(isinstance(v, bool) or v not in (0, 1) for v in mask):
            raise manifest_error(at, f"{key} must be a list of {dim} zeros and ones")
    try:
        return ScenarioSpec.from_dict(record["spec"])
    except UserInputError as e:
        raise manifest_error(at, f"invalid spec ({e})") from None
    except (TypeError, ValueError) as e:
        raise manifest_error(at, f"invalid spec ({one_line(e)})") from None


def _is_number(x) -> bool:
    return not isinstance(x, bool) and isinstance(x, int | float) and math.isfinite(x)


def manifest_stats(stats: dict, obs_dim: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """The manifest's ``stats.obs_mean`` and ``stats.obs_std`` as float32 arrays, checked: ``obs_dim`` finite
    numbers each, the std > 0 in every dim."""
    for key in ("obs_mean", "obs_std"):
        value = stats.get(key)
        if not (isinstance(value, list) and len(value) == obs_dim and all(map(_is_number, value))):
            raise manifest_error(where, f"stats.{key} must be a list of {obs_dim} finite numbers (one per obs dim)")
    mean = np.asarray(stats["obs_mean"], dtype=np.float32)
    std = np.asarray(stats["obs_std"], dtype=np.float32)
    if not (std > 0).all():
        raise manifest_error(where, "stats.obs_std must be > 0 in every dim")
    return mean, std
