"""Training checkpoints that load without executing pickled code, written atomically, checksummed.

Layout of ``RUN/checkpoints/`` (see :mod:`mrcom_core.io.snapshots`, which writes and verifies it)::

    step_00001000/model.safetensors       model weights and buffers (observation statistics)
    step_00001000/optimizer.safetensors   Adam moments and step counts, flattened
    step_00001000/rng.safetensors         the trainer's torch generator state
    step_00001000/state.json              format, step, SHA-256 of the three files, configs, optimizer param
                                          groups, sampler RNG
    latest.json                           {"step": …, "dir": "step_00001000", "state_sha256": …}
    best/step_00000800/model.safetensors  the weights with the lowest held-out open-loop error so far
    best/step_00000800/state.json         as above (no optimizer/RNG files) plus ``best_error``
    best/latest.json                      its own pointer (one best folder is kept)

The regular checkpoints are what ``--resume`` continues from; the best one is what ``mrcom export`` and
``mrcom reproduce`` export by default (:func:`load_model`, ``which="best"``). Each regular checkpoint's state
records ``best_step``/``best_error`` so a resumed run keeps tracking the best.

A checkpoint folder is written under a temporary name and renamed into place; ``latest.json`` is then
swapped with ``os.replace``. A crash at any point leaves the previous checkpoint intact and pointed to, and so
does a write that fails (a full disk, a file-size limit): it is an ``OSError`` with the errno and the file's
name, never safetensors' own error type.
Loading (``--resume``, ``mrcom export``) checks the pointer, every digest and every tensor name and shape
first: a damaged checkpoint is one error line, never a silent load.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mrcom_core.errors import UserInputError
from mrcom_core.io import snapshots
from mrcom_core.io.files import read_versioned_json
from mrcom_core.registry import build_model, load_config

FORMAT = "mrcom-checkpoint"
CHECKPOINT_VERSION = 3  # 2: format name and SHA-256 of every file; 3: a model's config holds only its own options
BEST = "best"  # RUN/checkpoints/best/: the snapshot root of the best checkpoint
WHICH = ("best", "latest")


def flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's ``state_dict`` as safetensors-ready tensors (``"{param index}.{name}"``) and JSON (param
    groups, non-tensor scalars); :func:`unflatten_optimizer` inverts it."""
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in {**tensors, **meta["scalars"]}.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """``save_file`` whose failure to write (a full disk, a file-size limit, a read-only folder) is an
    ``OSError`` with its errno and ``path``: safetensors reports it as its own error type, with the OS error
    only in its message (``… No space left on device (os error 28)``)."""
    try:
        save_file(tensors, str(path))
    except SafetensorError as e:
        found = re.search(r"\(os error (\d+)\)", str(e))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from e


def save_checkpoint(run_dir: Path | str, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    generator: torch.Generator, state: dict, keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically and point ``latest.json`` at it; keep the newest ``keep``."""
    opt_tensors, opt_meta = flatten_optimizer(optimizer.state_dict())

    def write(folder: Path) -> None:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        _save_tensors(weights, folder / "model.safetensors")
        _save_tensors(opt_tensors, folder / "optimizer.safetensors")
        _save_tensors({"torch_generator": generator.get_state()}, folder / "rng.safetensors")

    return snapshots.publish(Path(run_dir) / "checkpoints", step, write, {"optimizer": opt_meta, **state}, FORMAT,
                             CHECKPOINT_VERSION, keep)


def save_best(run_dir: Path | str, step: int, model: torch.nn.Module, state: dict, error: float) -> Path:
    """Publish the weights of ``step`` as the run's best checkpoint (``checkpoints/best/``, keep 1), with
    ``state`` (configs, data) and its held-out open-loop error as ``best_error``."""
    def write(folder: Path) -> None:
        _save_tensors({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                      folder / "model.safetensors")

    return snapshots.publish(Path(run_dir) / "checkpoints" / BEST, step, write,
                             {**state, "best_step": step, "best_error": error}, FORMAT, CHECKPOINT_VERSION, keep=1)


def clean_checkpoints(run_dir: Path | str) -> int:
    """Remove the temporary checkpoint folders a killed run left behind (``checkpoints/.tmp-step_*``, and the
    same under ``checkpoints/best/``)."""
    root = Path(run_dir) / "checkpoints"
    return snapshots.clean(root) + snapshots.clean(root / BEST)


def latest_checkpoint(run_dir: Path | str) -> Path | None:
    """The folder ``latest.json`` points to, after checking the pointer and every file's digest; None when
    the run has no checkpoint yet."""
    found = snapshots.open_latest(Path(run_dir) / "checkpoints", FORMAT, CHECKPOINT_VERSION, "training checkpoint")
    return None if found is None else found[0]


def best_checkpoint(run_dir: Path | str) -> Path | None:
    """The best checkpoint's folder (``checkpoints/best/``), verified as :func:`latest_checkpoint` does; None
    when the run has none (no evaluation after an update yet, or a run from before best checkpoints)."""
    found = snapshots.open_latest(Path(run_dir) / "checkpoints" / BEST, FORMAT, CHECKPOINT_VERSION,
                                  "best checkpoint")
    return None if found is None else found[0]


def read_state(path: Path | str) -> dict:
    """A checkpoint's ``state.json`` (configs, step, sampler RNG …), checked for its format and version."""
    return read_versioned_json(Path(path) / snapshots.STATE, FORMAT, CHECKPOINT_VERSION, "training checkpoint",
                               "train it again or restore the run from a backup")


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise UserInputError(f"{path} is missing") from None
    except Exception as e:  # safetensors' own error type for a damaged header or body
        raise UserInputError(f"{path} is not a readable safetensors file ({str(e).strip().splitlines()[0]})") from None


def load_weights(path: Path | str, model: torch.nn.Module) -> None:
    """Load ``model.safetensors`` into ``model``; every name and shape must match, else an error naming the
    first tensor that does not."""
    file = Path(path) / "model.safetensors"
    weights = _load_tensors(file)
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    wrong = [k for k in expected if k in weights and tuple(weights[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        if wrong:
            k = wrong[0]
            what = f"tensor {k!r} has shape {tuple(weights[k].shape)}, the model's is {tuple(expected[k].shape)}"
        elif missing:
            what = f"tensor {missing[0]!r} is missing"
        else:
            what = f"tensor {unexpected[0]!r} is not part of the model"
        total = len(missing) + len(unexpected) + len(wrong)
        raise UserInputError(f"checkpoint {file} does not fit this model: {what}"
                             + (f" (and {total - 1} more)" if total > 1 else ""))
    model.load_state_dict(weights, strict=True)


def load_checkpoint(path: Path | str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    generator: torch.Generator) -> dict:
    """Restore model, optimizer and generator from checkpoint folder ``path``; returns its state dict."""
    path = Path(path)
    state = read_state(path)
    load_weights(path, model)
    device = next(model.parameters()).device
    try:
        opt_state = unflatten_optimizer(_load_tensors(path / "optimizer.safetensors"), state["optimizer"])
        for values in opt_state["state"].values():  # Adam keeps 'step' on the CPU unless capturable/fused
            for name, value in values.items():
                if isinstance(value, torch.Tensor) and name != "step":
                    values[name] = value.to(device)
        optimizer.load_state_dict(opt_state)
        generator.set_state(_load_tensors(path / "rng.safetensors")["torch_generator"])
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        if isinstance(e, UserInputError):
            raise
        raise UserInputError(f"checkpoint {path}: the optimizer or RNG state does not fit this run "
                             f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else e!r})"
                             ) from None
    return state


def load_model(run_dir: Path | str, which: str = "best"):
    """The world model of a training run (eval mode, CPU) and its ``state.json``.

    ``which="best"`` (default): the checkpoint with the lowest held-out open-loop error, falling back to the
    latest when the run has no best checkpoint; ``"latest"``: the latest regular checkpoint. The returned
    state says which was loaded under ``"checkpoint"`` (``"best"`` or ``"latest"``). The run's latest
    checkpoint is verified in either case: a run whose latest checkpoint is damaged is refused.
    """
    if which not in WHICH:
        raise UserInputError(f"--checkpoint must be one of {', '.join(WHICH)}, got {which!r}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserInputError(f"no training run at {run_dir}")
    path = latest_checkpoint(run_dir)
    if path is None:
        raise UserInputError(f"run {run_dir} has no checkpoint yet (checkpoints/{snapshots.LATEST} is missing)")
    best = best_checkpoint(run_dir) if which == "best" else None
    path = best or path
    state = {**read_state(path), "checkpoint": "best" if best else "latest"}
    try:
        config = load_config(state["model_config"])
    except (KeyError, TypeError, AttributeError):
        raise UserInputError(f"checkpoint {path}: state.json has no usable model_config") from None
    model = build_model(config)
    load_weights(path, model)
    return model.eval(), state
