"""What ``mrcom train`` is asked for and how it resolves: :class:`TrainConfig` (validated), its size presets,
and :class:`RunRequest` (a TOML file, ``--set`` pairs and flags) resolved against a dataset and, on resume,
the checkpoint's saved configs."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path

from mrcom_core.config import ModelConfig, apply_overrides, parse_assignments
from mrcom_core.errors import UserInputError, check_int, check_number
from mrcom_core.io.files import read_json
from mrcom_core.losses import OvershootOptions
from mrcom_core.registry import load_config, model_config

from ..datasets.dataset import Dataset


@dataclass(frozen=True)
class TrainConfig:
    """How to train. ``steps`` counts gradient updates; ``batch_size`` is the global batch (split across
    DDP ranks); ``window_len`` is L; evaluation uses ``eval_batches`` fixed batches of held-out windows
    (``holdout_fraction`` of each scenario's episodes) and reports the ``eval_horizon``-step open-loop
    error.

    ``overlap_overshoot``: on a CPU with two or more torch threads, in one process, compute the overshooting
    term's forward and backward in a second thread beside the other terms', half the intra-op threads each (the
    small models' many small kernels leave the second core idle otherwise); the gradients are the same sums
    (to float rounding), added in a fixed order. No effect on CUDA, under DDP, or without the term. On in
    the ``small`` preset, where it wins (1.4–1.6× at 2 threads); off in ``base``, which is GEMM-bound and loses
    (0.84×; ``bench/train.py``)."""

    steps: int = 3000
    batch_size: int = 32
    window_len: int = 16
    lr: float = 3e-4
    adam_eps: float = 1e-8
    grad_clip: float = 100.0
    eval_every: int = 250
    eval_batch_size: int = 64
    eval_batches: int = 2
    eval_horizon: int = 15
    holdout_fraction: float = 0.2
    checkpoint_every: int = 250
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    bf16: bool = True
    overlap_overshoot: bool = False

    def __post_init__(self):
        for name in ("steps", "batch_size", "window_len", "eval_every", "eval_batch_size", "eval_batches",
                     "eval_horizon", "checkpoint_every", "log_every"):
            check_int(f"train.{name}", getattr(self, name))
        check_int("train.seed", self.seed, 0)
        for name in ("lr", "adam_eps", "grad_clip"):
            check_number(f"train.{name}", getattr(self, name), 0, strict=True)
        check_number("train.holdout_fraction", self.holdout_fraction)
        if not self.holdout_fraction < 1:
            raise UserInputError(f"train.holdout_fraction must be in [0, 1), got {self.holdout_fraction!r}")
        if not isinstance(self.device, str) or (self.device not in ("auto", "cpu", "cuda")
                                                and not self.device.startswith("cuda:")):
            raise UserInputError(f"train.device must be auto, cpu or cuda (or cuda:N), got {self.device!r}")
        for name in ("bf16", "overlap_overshoot"):
            if not isinstance(getattr(self, name), bool):
                raise UserInputError(f"train.{name} must be true or false, got {getattr(self, name)!r}")


TRAIN_PRESETS: dict[str, dict] = {
    "tiny": dict(steps=200, batch_size=8, window_len=8, eval_every=100, eval_batch_size=16, eval_batches=1,
                 eval_horizon=8, checkpoint_every=100),
    "small": dict(steps=3000, batch_size=32, window_len=16, overlap_overshoot=True),
    "base": dict(steps=100_000, batch_size=128, window_len=32, eval_every=2000, eval_batch_size=256,
                 checkpoint_every=2000, log_every=50),
}


@dataclass(frozen=True)
class RunRequest:
    """What the user asked for; ``preset=None`` means "small" for a new run, the saved config on resume."""

    preset: str | None = None
    ablations: tuple[str, ...] = ()
    model: dict = dataclasses.field(default_factory=dict)
    train: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_sources(cls, preset: str | None, ablations: tuple[str, ...], config_file: str | None,
                     sets: tuple[str, ...], train_flags: dict) -> RunRequest:
        """Merge a config file (TOML, or a run's ``config.json``: :func:`read_config_file`), ``--set
        section.field=value`` pairs and explicit flags (later wins)."""
        model, train, file_preset, file_ablations = {}, {}, None, ()
        if config_file:
            data = read_config_file(config_file)
            unknown = set(data) - {"preset", "ablations", "model", "train"}
            if unknown:
                raise UserInputError(f"config file {config_file}: unknown key(s) {sorted(unknown)}; use preset, "
                                     f"ablations, [model] and [train]")
            file_preset, file_ablations = data.get("preset"), _ablation_names(data.get("ablations", []), config_file)
            if file_preset is not None and not isinstance(file_preset, str):
                raise UserInputError(f"config file {config_file}: preset must be a name such as \"small\", got "
                                     f"{file_preset!r}")
            for section in ("model", "train"):
                if not isinstance(data.get(section, {}), dict):
                    raise UserInputError(f"config file {config_file}: {section} must be a table ([{section}] with "
                                         f"field = value lines), got {data[section]!r}")
            model.update(data.get("model", {}))
            train.update(data.get("train", {}))
        sets = parse_assignments(sets, ("model", "train"))
        model.update(sets["model"])
        train.update(sets["train"])
        train.update({k: v for k, v in train_flags.items() if v is not None})
        return cls(preset or file_preset, tuple(ablations) or file_ablations, model, train)


#: what a run's config.json records about the run rather than asks of it: left out when it is read back
RECORDED_KEYS = ("data", "world_size", "device")
DATASET_FIELDS = ("obs_dim", "act_dim", "num_scenarios")  # model fields the dataset sets


def read_config_file(path: str | Path) -> dict:
    """A ``--config`` file as ``{preset, ablations, model, train}``: TOML, or a training run's ``config.json``
    (``*.json``: the run's own settings, without what it records of its dataset and machine, so the same
    settings train on the ``--data`` given)."""
    path = Path(path)
    if path.suffix != ".json":
        try:
            return tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise UserInputError(f"config file {path} not found") from None
        except tomllib.TOMLDecodeError as e:
            raise UserInputError(f"config file {path} is not valid TOML: {e}") from None
    data = {k: v for k, v in read_json(path, "config file").items() if k not in RECORDED_KEYS}
    if isinstance(data.get("model"), dict):
        data["model"] = {k: v for k, v in data["model"].items() if k not in DATASET_FIELDS}
    return data


def _ablation_names(value, source: str) -> tuple[str, ...]:
    """A TOML ``ablations`` value: a list of names, or one string of comma-separated names."""
    if isinstance(value, str):
        return tuple(a.strip() for a in value.split(",") if a.strip())
    if isinstance(value, list) and all(isinstance(a, str) for a in value):
        return tuple(value)
    raise UserInputError(f"config file {source}: ablations must be a list of names such as [\"no_d\"], got "
                         f"{value!r}")


def resolve_configs(request: RunRequest, dataset: Dataset, saved: dict | None) -> tuple[ModelConfig, TrainConfig, str]:
    """The model and training configs of a run on ``dataset``: ``request`` over the preset (a new run) or over
    the checkpoint's ``saved`` configs (a resumed one; its model cannot change), checked together
    (:func:`check_overshoot`). Returns ``(model config, train config, preset name)``."""
    dims = dict(obs_dim=dataset.obs_dim, act_dim=dataset.act_dim, num_scenarios=len(dataset.scenarios))
    if saved is None or request.preset is not None or request.ablations or request.model:
        preset = request.preset or (saved["preset"] if saved else "small")
        mcfg = model_config(preset, request.ablations, request.model, **dims)
    else:
        preset = saved["preset"]
        mcfg = load_config(saved["model_config"])
    base = TrainConfig(**{**TRAIN_PRESETS[preset]}) if saved is None else \
        apply_overrides(TrainConfig(), saved["train_config"], "train")
    tcfg = apply_overrides(base, request.train, "train")
    own = (horizon_of(model_config(preset, request.ablations, {"model_type": mcfg.model_type}, **dims)),
           TrainConfig(**TRAIN_PRESETS[preset]).window_len)
    check_overshoot(mcfg, tcfg, request, own)
    if saved is not None:
        old = saved["model_config"]
        for name, value in mcfg.to_dict().items():
            if old.get(name) != value:
                raise UserInputError(f"cannot resume: the checkpoint's model was trained with model.{name}="
                                     f"{old.get(name)!r}, this run asks for {value!r}")
    return mcfg, tcfg, preset


def horizon_of(config: ModelConfig) -> int:
    """The overshooting horizon of ``config``'s model (0 for a model without the term)."""
    return config.options.overshoot_horizon if isinstance(config.options, OvershootOptions) else 0


def check_overshoot(mcfg: ModelConfig, tcfg: TrainConfig, request: RunRequest,
                    preset_pair: tuple[int, int] | None = None) -> None:
    """Refuse a ``model.overshoot_horizon`` longer than the training window ``train.window_len``: the
    overshooting loss imagines ``min(overshoot_horizon, window_len)`` steps (the window's L actions), so the
    rest would be dropped silently. Checked when ``request`` sets either; a preset's own pair is the preset's
    choice (``tiny``'s 8-step windows imagine 8 of MrCoM's default 15 steps), also when a request repeats it
    (``preset_pair``: the preset's (overshoot_horizon, window_len), as a run's ``config.json`` read back does), and
    a resumed run keeps what it was trained with."""
    horizon, window = horizon_of(mcfg), tcfg.window_len
    asked = "overshoot_horizon" in request.model or "window_len" in request.train
    if asked and horizon > window and (horizon, window) != preset_pair:
        raise UserInputError(f"model.overshoot_horizon={horizon} is longer than the training window "
                             f"(train.window_len={window}), and the overshooting loss imagines at most the window's "
                             f"steps; lower model.overshoot_horizon or raise train.window_len")
