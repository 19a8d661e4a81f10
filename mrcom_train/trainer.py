"""World-model training (``mrcom train``): Adam, clipping, bf16 autocast on CUDA, logging, evaluation,
atomic checkpoints with exact resume, and DistributedDataParallel under ``torchrun``.

Distributed training splits each *global* batch across ranks: every rank draws the same batch (same
sampler seed) and the same noise, and keeps its own slice of rows. With equal slices, DDP's gradient
average equals the single-process gradient of the whole batch, so a 2-process run matches a 1-process run
on the same combined batch (a test).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mrcom_core.baselines import build_model
from mrcom_core.config import ConfigError, ModelConfig, apply_overrides, model_config
from mrcom_core.rollout import open_loop_error

from .checkpoint import latest_checkpoint, load_checkpoint, read_state, save_checkpoint
from .dataset import Dataset, write_json_atomic
from .errors import UserInputError
from .sampler import SequenceSampler


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN/inf; training stopped and the last good checkpoint was kept."""


@dataclass(frozen=True)
class TrainConfig:
    """How to train. ``steps`` counts gradient updates; ``batch_size`` is the global batch (split across
    DDP ranks); ``window_len`` is L; evaluation uses ``eval_batches`` fixed batches of held-out windows
    (``holdout_fraction`` of each scenario's episodes) and reports the ``eval_horizon``-step open-loop
    error."""

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

    def __post_init__(self):
        for name in ("steps", "batch_size", "window_len", "eval_every", "eval_batch_size", "eval_batches",
                     "eval_horizon", "checkpoint_every", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"train.{name} must be an integer >= 1, got {value!r}")
        for name in ("lr", "adam_eps", "grad_clip"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"train.{name} must be a finite number > 0, got {value!r}")
        if not 0 <= self.holdout_fraction < 1:
            raise ConfigError(f"train.holdout_fraction must be in [0, 1), got {self.holdout_fraction!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"train.device must be auto, cpu or cuda, got {self.device!r}")


TRAIN_PRESETS: dict[str, dict] = {
    "tiny": dict(steps=200, batch_size=8, window_len=8, eval_every=100, eval_batch_size=16, eval_batches=1,
                 eval_horizon=8, checkpoint_every=100),
    "small": dict(steps=3000, batch_size=32, window_len=16),
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
        """Merge a TOML file, ``--set section.field=value`` pairs and explicit flags (later wins)."""
        model, train, file_preset, file_ablations = {}, {}, None, ()
        if config_file:
            try:
                data = tomllib.loads(Path(config_file).read_text())
            except FileNotFoundError:
                raise UserInputError(f"config file {config_file} not found") from None
            except tomllib.TOMLDecodeError as e:
                raise UserInputError(f"config file {config_file} is not valid TOML: {e}") from None
            unknown = set(data) - {"preset", "ablations", "model", "train"}
            if unknown:
                raise UserInputError(f"config file {config_file}: unknown key(s) {sorted(unknown)}; use preset, "
                                     f"ablations, [model] and [train]")
            file_preset, file_ablations = data.get("preset"), tuple(data.get("ablations", ()))
            model.update(data.get("model", {}))
            train.update(data.get("train", {}))
        for item in sets:
            key, sep, value = item.partition("=")
            section, dot, field = key.strip().partition(".")
            if not sep or not dot or section not in ("model", "train"):
                raise UserInputError(f"--set {item!r}: expected model.FIELD=VALUE or train.FIELD=VALUE")
            (model if section == "model" else train)[field] = value.strip()
        train.update({k: v for k, v in train_flags.items() if v is not None})
        return cls(preset or file_preset, tuple(ablations) or file_ablations, model, train)


def _resolve(request: RunRequest, dataset: Dataset, saved: dict | None) -> tuple[ModelConfig, TrainConfig, str]:
    dims = dict(obs_dim=dataset.obs_dim, act_dim=dataset.act_dim, num_scenarios=len(dataset.scenarios))
    if saved is None or request.preset is not None or request.ablations or request.model:
        preset = request.preset or (saved["preset"] if saved else "small")
        mcfg = model_config(preset, request.ablations, request.model, **dims)
    else:
        preset = saved["preset"]
        mcfg = apply_overrides(ModelConfig(), saved["model_config"])
    base = TrainConfig(**{**TRAIN_PRESETS[preset]}) if saved is None else \
        apply_overrides(TrainConfig(), saved["train_config"], "train")
    tcfg = apply_overrides(base, request.train, "train")
    if saved is not None:
        old = saved["model_config"]
        for name, value in mcfg.to_dict().items():
            if old.get(name) != value:
                raise UserInputError(f"cannot resume: the checkpoint's model was trained with model.{name}="
                                     f"{old.get(name)!r}, this run asks for {value!r}")
    if tcfg.eval_horizon > 0 and tcfg.window_len < 1:
        raise ConfigError("train.window_len must be >= 1")
    return mcfg, tcfg, preset


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserInputError("--device cuda was asked for, but torch sees no CUDA GPU")
        return torch.device(f"cuda:{local_rank}" if name == "cuda" else name)
    return torch.device("cpu")


def _to_torch(batch: dict[str, np.ndarray], rows: slice, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v[rows])).to(device) for k, v in batch.items()}


class Trainer:
    """Trains a world model (MrCoM or a baseline, by ``model.model_type``) on a dataset into a run folder.

    Run folder: ``config.json`` (resolved configs), ``checkpoints/`` (see :mod:`.checkpoint`),
    ``metrics.csv`` and ``tb/`` (TensorBoard scalars).
    """

    def __init__(self, data: str | Path, run_dir: str | Path, request: RunRequest = RunRequest(),
                 resume: bool = False, progress: bool = True, log=print):
        self.run_dir, self.log, self.progress = Path(run_dir), log, progress
        self.dataset = Dataset(data)
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        ckpt = latest_checkpoint(self.run_dir) if self.run_dir.exists() else None
        if self.run_dir.exists() and any(self.run_dir.iterdir()) and not resume:
            raise UserInputError(f"run folder {self.run_dir} is not empty; pass --resume to continue it, or "
                                 f"choose another --out")
        if resume and ckpt is None and self.run_dir.exists() and any(self.run_dir.iterdir()):
            log(f"note: {self.run_dir} has no checkpoint yet; starting from scratch")
        saved = read_state(ckpt) if ckpt else None
        self.model_config, self.config, self.preset = _resolve(request, self.dataset, saved)
        if self.config.batch_size % self.world:
            raise UserInputError(f"train.batch_size={self.config.batch_size} must be divisible by the "
                                 f"{self.world} distributed processes")
        if saved is not None and saved["data"]["obs_dim"] != self.dataset.obs_dim:
            raise UserInputError("cannot resume: the dataset's dims differ from the checkpoint's")
        self.device = _device(self.config.device, local_rank)
        if self.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

        c = self.config
        train_eps, held_eps = self.dataset.holdout(c.holdout_fraction, seed=c.seed)
        if not held_eps:
            held_eps = train_eps
            self.log("note: no held-out episodes (each scenario has too few); evaluating on training episodes")
        self.sampler = SequenceSampler(self.dataset, self.model_config.context_len, c.window_len, c.batch_size,
                                       episodes=train_eps, seed=c.seed)
        eval_sampler = SequenceSampler(self.dataset, self.model_config.context_len, c.eval_horizon,
                                       c.eval_batch_size, episodes=held_eps, seed=c.seed + 1)
        self.eval_batches = [eval_sampler.sample() for _ in range(c.eval_batches)]

        torch.manual_seed(c.seed)
        self.model = build_model(self.model_config, self.dataset.obs_mean, self.dataset.obs_std).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=c.lr, eps=c.adam_eps)
        self.generator = torch.Generator().manual_seed(c.seed)
        self.step = 0
        self.last_good = None
        if ckpt is not None:
            state = load_checkpoint(ckpt, self.model, self.optimizer, self.generator)
            self.sampler.rng.bit_generator.state = state["sampler_rng"]
            self.step = state["step"]
            self.last_good = ckpt
            for group in self.optimizer.param_groups:
                group["lr"] = c.lr
        self.ddp = (torch.nn.parallel.DistributedDataParallel(self.model, device_ids=[self.device.index]
                                                              if self.device.type == "cuda" else None)
                    if self.world > 1 else self.model)
        self.domains = [s.domain for s in self.dataset.scenarios]

    # ---------------------------------------------------------------------------------------- pieces
    def _noise(self, rows: slice) -> dict[str, torch.Tensor]:
        shapes = self.model.noise_shapes(self.config.batch_size, self.config.window_len)
        return {k: torch.randn(shape, generator=self.generator)[rows].to(self.device) for k, shape in shapes.items()}

    def train_step(self) -> dict[str, float]:
        """One gradient update on the next global batch; returns the logged scalars."""
        c = self.config
        per_rank = c.batch_size // self.world
        rows = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
        batch = _to_torch(self.sampler.sample(), rows, self.device)
        noise = self._noise(rows)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda" and c.bf16)
        self.model.train()
        with autocast:
            out = self.ddp(batch, noise)
        loss = out["loss"]
        if not torch.isfinite(loss):
            self._diverged(f"the loss became {loss.item()}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        if not torch.isfinite(grad_norm):
            self._diverged(f"the gradient norm became {grad_norm.item()}")
        self.optimizer.step()
        self.step += 1
        return {**{k: v.item() for k, v in out.items()}, "grad_norm": grad_norm.item()}

    def _diverged(self, what: str):
        where = (f"the last good checkpoint (step {read_state(self.last_good)['step']}) is kept in "
                 f"{self.last_good}" if self.last_good else "no checkpoint had been written yet")
        raise TrainingDiverged(f"training stopped at step {self.step + 1}: {what}; {where}")

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Open-loop prediction error over the fixed held-out batches, overall and per domain."""
        self.model.eval()
        errors, scenarios = [], []
        for batch in self.eval_batches:
            t = _to_torch(batch, slice(None), self.device)
            errors.append(open_loop_error(self.model, t, self.config.eval_horizon).float().cpu().numpy())
            scenarios.append(batch["scenario"])
        err, sid = np.concatenate(errors), np.concatenate(scenarios)
        result = {"eval_open_loop": float(err.mean())}
        for domain in dict.fromkeys(self.domains):
            pick = np.array([self.domains[s] == domain for s in sid])
            if pick.any():
                result[f"eval_open_loop_{domain}"] = float(err[pick].mean())
        return result

    def save(self) -> Path:
        state = {"preset": self.preset, "model_config": self.model_config.to_dict(),
                 "train_config": dataclasses.asdict(self.config),
                 "sampler_rng": self.sampler.rng.bit_generator.state,
                 "data": {"path": str(self.dataset.root.resolve()), "obs_dim": self.dataset.obs_dim,
                          "act_dim": self.dataset.act_dim, "num_scenarios": len(self.dataset.scenarios),
                          "domains": self.domains}}
        self.last_good = save_checkpoint(self.run_dir, self.step, self.model, self.optimizer, self.generator, state)
        return self.last_good

    # ------------------------------------------------------------------------------------------ loop
    def run(self) -> dict[str, float]:
        """Train until ``config.steps`` updates; returns the final evaluation."""
        from tqdm import tqdm

        c, main = self.config, self.rank == 0
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        logger = _MetricsLog(self.run_dir, self.step, self.domains) if main else None
        if main:
            write_json_atomic(self.run_dir / "config.json", {
                "preset": self.preset, "model": self.model_config.to_dict(), "train": dataclasses.asdict(c),
                "data": str(self.dataset.root.resolve()), "world_size": self.world, "device": str(self.device)})
            params = sum(p.numel() for p in self.model.parameters())
            self.log(f"training {self.preset} {self.model_config.model_type} ({params / 1e6:.2f}M parameters) on "
                     f"{self.dataset.root} "
                     f"({len(self.dataset.scenarios)} scenarios, {self.dataset.num_steps} steps) for {c.steps} "
                     f"updates on {self.device} × {self.world}; run folder {self.run_dir}")
        bar = tqdm(total=c.steps, initial=self.step, unit="upd", disable=not (self.progress and main),
                   dynamic_ncols=True)
        if main and self.step == 0:
            first = self.evaluate()
            logger.write(self.step, first)
            self.log(f"step 0: open-loop error {format_eval(first)}")
        result: dict[str, float] = {}
        tick, tick_step = time.perf_counter(), self.step
        try:
            while self.step < c.steps:
                metrics = self.train_step()
                bar.update(1)
                if self.step % c.log_every == 0 or self.step == c.steps:
                    now = time.perf_counter()
                    metrics["updates_per_s"] = (self.step - tick_step) / max(now - tick, 1e-9)
                    tick, tick_step = now, self.step
                    bar.set_postfix_str(f"loss {metrics['loss']:.3f} recon {metrics['recon']:.3f} "
                                        f"{metrics['updates_per_s']:.1f} upd/s")
                    if main:
                        logger.write(self.step, metrics)
                if self.step % c.eval_every == 0 or self.step == c.steps:
                    if main:
                        result = self.evaluate()
                        logger.write(self.step, result)
                        (bar.write if self.progress else self.log)(
                            f"step {self.step}: open-loop error {format_eval(result)}")
                if self.step % c.checkpoint_every == 0 or self.step == c.steps:
                    if main:
                        self.save()
                    if self.world > 1:
                        torch.distributed.barrier()
        finally:
            bar.close()
            if logger:
                logger.close()
        return result


def format_eval(result: dict[str, float]) -> str:
    parts = [f"{result['eval_open_loop']:.4f}"]
    parts += [f"{k.removeprefix('eval_open_loop_')} {v:.4f}" for k, v in result.items() if k != "eval_open_loop"]
    return parts[0] + (f" ({', '.join(parts[1:])})" if len(parts) > 1 else "")


class _MetricsLog:
    """``metrics.csv`` (one row per log event, empty cells for absent metrics) plus TensorBoard scalars.

    On resume, rows newer than the checkpoint's step are dropped so the log matches the restored run.
    """

    BASE = ["step", "loss", "var", "kl_u", "kl_h", "recon", "reward", "s", "value_i", "value", "v", "overshoot",
            "grad_norm", "updates_per_s", "eval_open_loop"]

    def __init__(self, run_dir: Path, step: int, domains: list[str]):
        from torch.utils.tensorboard import SummaryWriter

        self.fields = self.BASE + [f"eval_open_loop_{d}" for d in dict.fromkeys(domains)]
        self.path = run_dir / "metrics.csv"
        rows = []
        if self.path.exists():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        self.file = open(self.path, "w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=self.fields, extrasaction="ignore")
        self.writer.writeheader()
        self.writer.writerows(rows)
        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=step if step else None)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        self.writer.writerow({"step": step, **metrics})
        self.file.flush()
        for key, value in metrics.items():
            group = "eval" if key.startswith("eval") else "train"
            self.tb.add_scalar(f"{group}/{key}", value, step)

    def close(self) -> None:
        self.file.close()
        self.tb.close()
