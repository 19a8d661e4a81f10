"""Training checkpoints that load without executing pickled code, written atomically.

Layout of ``RUN/checkpoints/``::

    step_00001000/model.safetensors       model weights and buffers (observation statistics)
    step_00001000/optimizer.safetensors   Adam moments and step counts, flattened
    step_00001000/rng.safetensors         the trainer's torch generator state
    step_00001000/state.json              step, configs, optimizer param groups, sampler RNG, metrics
    latest.json                           {"step": …, "dir": "step_00001000"}, replaced atomically

A checkpoint folder is written under a temporary name and renamed into place; ``latest.json`` is then
swapped with ``os.replace``. A crash at any point leaves the previous checkpoint intact and pointed to.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mrcom_core.config import ModelConfig, apply_overrides
from mrcom_core.errors import UserInputError
from mrcom_core.files import atomic_dir, write_json_atomic
from mrcom_core.registry import build_model

LATEST = "latest.json"
CHECKPOINT_VERSION = 1


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in {**tensors, **meta["scalars"]}.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(run_dir: Path | str, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    generator: torch.Generator, state: dict, keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically and point ``latest.json`` at it; keep the newest ``keep``."""
    root = Path(run_dir) / "checkpoints"
    name = f"step_{step:08d}"
    with atomic_dir(root / name) as tmp:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / "model.safetensors"))
        opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_file({"torch_generator": generator.get_state()}, str(tmp / "rng.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"version": CHECKPOINT_VERSION, "step": step,
                                                    "optimizer": opt_meta, **state}, indent=1))
    write_json_atomic(root / LATEST, {"step": step, "dir": name})
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return root / name


def latest_checkpoint(run_dir: Path | str) -> Path | None:
    """The folder ``latest.json`` points to, or None when the run has no checkpoint."""
    pointer = Path(run_dir) / "checkpoints" / LATEST
    if not pointer.is_file():
        return None
    path = pointer.parent / json.loads(pointer.read_text())["dir"]
    if not path.is_dir():
        raise UserInputError(f"{pointer} points to {path.name}, which is missing")
    return path


def read_state(path: Path | str) -> dict:
    """A checkpoint's ``state.json`` (configs, step, sampler RNG …), checked for its version."""
    state = json.loads((Path(path) / "state.json").read_text())
    if state.get("version") != CHECKPOINT_VERSION:
        raise UserInputError(f"checkpoint {path} has format version {state.get('version')!r}; this mrcom reads "
                             f"version {CHECKPOINT_VERSION}")
    return state


def load_weights(path: Path | str, model: torch.nn.Module) -> None:
    """Load ``model.safetensors`` into ``model`` (strict: every name and shape must match)."""
    weights = load_file(str(Path(path) / "model.safetensors"))
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UserInputError(f"checkpoint {path} does not fit this model ({first})") from None


def load_checkpoint(path: Path | str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    generator: torch.Generator) -> dict:
    """Restore model, optimizer and generator from checkpoint folder ``path``; returns its state dict."""
    path = Path(path)
    state = read_state(path)
    load_weights(path, model)
    device = next(model.parameters()).device
    opt_state = _unflatten_optimizer(load_file(str(path / "optimizer.safetensors")), state["optimizer"])
    for values in opt_state["state"].values():  # Adam keeps 'step' on the CPU unless capturable/fused
        for name, value in values.items():
            if isinstance(value, torch.Tensor) and name != "step":
                values[name] = value.to(device)
    optimizer.load_state_dict(opt_state)
    generator.set_state(load_file(str(path / "rng.safetensors"))["torch_generator"])
    return state


def load_model(run_dir: Path | str):
    """The world model of a training run's latest checkpoint (eval mode, CPU) and its ``state.json``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserInputError(f"no training run at {run_dir}")
    path = latest_checkpoint(run_dir)
    if path is None:
        raise UserInputError(f"run {run_dir} has no checkpoint yet (checkpoints/{LATEST} is missing)")
    state = read_state(path)
    model = build_model(apply_overrides(ModelConfig(), state["model_config"]))
    load_weights(path, model)
    return model.eval(), state
