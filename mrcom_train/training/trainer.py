"""World-model training (``mrcom train``): Adam, clipping, bf16 autocast on CUDA, logging, evaluation,
atomic checkpoints with exact resume, and DistributedDataParallel under ``torchrun``.

Distributed training splits each *global* batch across ranks: every rank draws the same batch (same
sampler seed) and the same noise, and keeps its own slice of rows. With equal slices, DDP's gradient
average equals the single-process gradient of the whole batch, so a 2-process run matches a 1-process run
on the same combined batch (a test).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

from mrcom_core import ensemble
from mrcom_core.config import ABLATIONS, ModelConfig
from mrcom_core.errors import Interrupted, UserInputError
from mrcom_core.io.files import write_json_atomic, writing
from mrcom_core.io.outputs import TRAINING_RUN, claim_output, claimed, undo_fresh
from mrcom_core.io.resources import require_memory
from mrcom_core.losses import loss_overshoot, overshoots
from mrcom_core.optim import adam_options
from mrcom_core.registry import build_model, history_steps
from mrcom_core.steps import open_loop_predictions

from ..datasets.dataset import Dataset
from ..datasets.sampler import SequenceSampler
from ..metrics_log import MetricsLog
from .checkpoint import clean_checkpoints, latest_checkpoint, load_checkpoint, read_state, save_best, save_checkpoint
from .config import RunRequest, TrainConfig, resolve_configs
from .evaluation import KEY, by_domain, format_errors, open_loop_error


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN/inf; training stopped and the last good checkpoint was kept."""


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


def memory_lower_bound(model_config: ModelConfig, config: TrainConfig) -> int:
    """Bytes training certainly needs: weights, gradients and Adam's two moments (float32; the parameters are
    counted on the meta device, without allocating them), the batch arrays and one hidden activation per
    step and layer kept for the backward pass. A lower bound: a config over it cannot run here."""
    with torch.device("meta"):
        params = sum(p.numel() for p in build_model(model_config).parameters())
    c, m, history = config, model_config, history_steps(model_config)
    rows = c.batch_size * (c.window_len + history + 1) + c.eval_batches * c.eval_batch_size * (
        c.eval_horizon + history + 1)
    batch = rows * (m.obs_dim + m.act_dim + 1) * 4
    activations = c.batch_size * c.window_len * m.hidden_dim * m.hidden_layers * 4
    return 16 * params + batch + activations


#: the first columns of ``metrics.csv``; every other term (the model's loss dict, the open-loop errors, the
#: throughput) becomes a column when it is first logged (:class:`~mrcom_train.metrics_log.MetricsLog`)
LOG_FIELDS = ["step", "loss", KEY]


def _scalars(metrics: dict[str, float]) -> dict[str, float]:
    """TensorBoard tags: ``eval/…`` for the open-loop error, ``train/…`` for the rest."""
    return {f"{'eval' if k.startswith(KEY) else 'train'}/{k}": v for k, v in metrics.items()}


class Trainer:
    """Trains a world model (MrCoM or a baseline, by ``model.model_type``) on a dataset into a run folder.

    Run folder: ``config.json`` (resolved configs), ``checkpoints/`` (see :mod:`.checkpoint`; ``checkpoints/best/``
    holds the weights of the evaluation with the lowest held-out open-loop error after at least one update),
    ``metrics.csv`` and ``tb/`` (TensorBoard scalars).
    """

    def __init__(self, data: str | Path, run_dir: str | Path, request: RunRequest | None = None,
                 resume: bool = False, progress: bool = True, log=print):
        self.run_dir, self.log, self.progress = Path(run_dir), log, progress
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self._created = not self.run_dir.exists()  # a failed run that saved nothing leaves the folder as it was
        self._fresh = False  # whether the run folder was empty (set once it is locked)
        self._lock = ExitStack()  # the run folder's lock (rank 0), held until run() ends or close()
        self._locked = False
        self.last_good = None
        try:
            claim = dict(inputs={"dataset": data}, given=resume, label="run folder")
            if self.rank == 0:
                self._fresh = self._lock.enter_context(claimed(self.run_dir, TRAINING_RUN, "mrcom train", **claim))
                self._locked = True
            else:
                self._fresh = claim_output(self.run_dir, TRAINING_RUN, **claim)
            self._setup(data, request or RunRequest(), resume)
        except BaseException:
            self._fail()
            raise

    def close(self) -> None:
        """Release the run folder's lock (``run()`` does this when it returns or fails)."""
        self._lock.close()
        self._locked = False

    def _fail(self) -> None:
        """After a failure: a run folder that was missing or empty and holds no checkpoint is removed or emptied
        again (so the same command can simply be run again); the lock is released."""
        if self._locked and (self._created or self._fresh) and self.last_good is None and self.rank == 0:
            undo_fresh(self.run_dir, self._created)
        self.close()

    def _setup(self, data: str | Path, request: RunRequest, resume: bool) -> None:
        log = self.log
        self.dataset = Dataset(data)
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if self.rank == 0:
            clean_checkpoints(self.run_dir)  # temporary checkpoint folders of a killed run
        ckpt = latest_checkpoint(self.run_dir) if self.run_dir.exists() else None
        if resume and ckpt is None and not self._fresh:
            log(f"note: {self.run_dir} has no checkpoint yet; starting from scratch")
        saved = read_state(ckpt) if ckpt else None
        self.model_config, self.config, self.preset = resolve_configs(request, self.dataset, saved)
        if self.config.batch_size % self.world:
            raise UserInputError(f"train.batch_size={self.config.batch_size} must be divisible by the "
                                 f"{self.world} distributed processes")
        if saved is not None and saved["data"]["obs_dim"] != self.dataset.obs_dim:
            raise UserInputError("cannot resume: the dataset's dims differ from the checkpoint's")
        self.device = _device(self.config.device, local_rank)
        if self.device.type == "cpu":
            require_memory(memory_lower_bound(self.model_config, self.config),
                           f"training {self.model_config.model_type} with this config",
                           "lower train.batch_size, train.window_len or the model's sizes (model.hidden_dim …)")
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
        history = history_steps(self.model_config)
        self.sampler = SequenceSampler(self.dataset, history, c.window_len, c.batch_size, episodes=train_eps,
                                       seed=c.seed)
        eval_sampler = SequenceSampler(self.dataset, history, c.eval_horizon,
                                       c.eval_batch_size, episodes=held_eps, seed=c.seed + 1)
        self.eval_batches = [eval_sampler.sample() for _ in range(c.eval_batches)]

        torch.manual_seed(c.seed)
        self.model = build_model(self.model_config, self.dataset.obs_mean, self.dataset.obs_std,
                                 self.dataset.reward_stats()).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=c.lr, eps=c.adam_eps,
                                          **adam_options(self.device))
        self.generator = torch.Generator().manual_seed(c.seed)
        self.step = 0
        self.best_step: int | None = None  # the evaluation with the lowest held-out open-loop error so far
        self.best_error: float | None = None
        if ckpt is not None:
            state = load_checkpoint(ckpt, self.model, self.optimizer, self.generator)
            self.sampler.rng.bit_generator.state = state["sampler_rng"]
            self.step = state["step"]
            self.best_step, self.best_error = state.get("best_step"), state.get("best_error")
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
        self.optimizer.zero_grad(set_to_none=True)
        if self._overlapped():
            out = self._overlapped_backward(batch, noise)
        else:
            with autocast:
                window = self.ddp(batch, noise)  # the model computes latents …
                out = self.model.loss(window, batch, noise)  # … and its loss turns them into loss terms
            if not torch.isfinite(out["loss"]):
                self._diverged(f"the loss became {out['loss'].item()}")
            out["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        if not torch.isfinite(grad_norm):
            self._diverged(f"the gradient norm became {grad_norm.item()}")
        self.optimizer.step()
        self.step += 1
        return {**{k: v.item() for k, v in out.items()}, "grad_norm": grad_norm.item()}

    def _overlapped(self) -> bool:
        """Whether :meth:`train_step` overlaps the overshooting term with the rest (``train.overlap_overshoot``)."""
        return (self.config.overlap_overshoot and self.device.type == "cpu" and self.world == 1
                and overshoots(self.model_config.options)
                and torch.get_num_threads() >= 2)

    def _overlapped_backward(self, batch: dict[str, torch.Tensor], noise: dict[str, torch.Tensor]) -> dict:
        """The gradients of the model's loss into ``.grad`` with the overshooting term's forward and backward in
        a second thread beside the other terms', half the intra-op threads each: on 2 cores the small model's small
        kernels cannot use both threads in one stream (``bench/train.py`` measures it). Each part's gradient
        is taken apart and the two are added in a fixed order, so the update is deterministic."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        weight = self.model_config.options.overshoot_weight
        side: dict = {}

        def overshoot_part():
            try:
                term = loss_overshoot(self.model, batch, noise)
                side["term"] = term.detach()
                side["grads"] = torch.autograd.grad(weight * term, params, allow_unused=True)
            except BaseException as e:  # re-raised in the calling thread
                side["error"] = e

        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, threads // 2))  # process-wide: each part gets half the threads
        try:
            worker = threading.Thread(target=overshoot_part, name="mrcom-overshoot", daemon=True)
            worker.start()
            try:
                out = self.model.loss(self.model(batch, noise), batch, noise, overshoot=False)
                finite = bool(torch.isfinite(out["loss"]))
                grads = torch.autograd.grad(out["loss"], params, allow_unused=True) if finite else None
            finally:
                worker.join()
        finally:
            torch.set_num_threads(threads)
        if "error" in side:
            raise side["error"]
        out["overshoot"] = side["term"]
        out["loss"] = out["loss"].detach() + weight * side["term"]
        if not finite or not torch.isfinite(out["loss"]):
            self._diverged(f"the loss became {out['loss'].item()}")
        for p, main, over in zip(params, grads, side["grads"], strict=True):
            p.grad = main if over is None else over if main is None else main + over
        return out

    def _diverged(self, what: str):
        where = (f"the last good checkpoint (step {read_state(self.last_good)['step']}) is kept in "
                 f"{self.last_good}" if self.last_good else "no checkpoint had been written yet")
        raise TrainingDiverged(f"training stopped at step {self.step + 1}: {what}; {where}")

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Open-loop prediction error over the fixed held-out batches, overall and per domain; for a model with
        an ensemble, also chooses its elites on those batches (:mod:`mrcom_core.ensemble`) and reports their mean
        one-step error (``elite_error``)."""
        self.model.eval()
        errors, scenarios, members = [], [], []
        H = self.config.eval_horizon
        for batch in self.eval_batches:
            tensors = _to_torch(batch, slice(None), self.device)
            pred = open_loop_predictions(self.model, tensors, H)
            real = self.model.normalize(torch.from_numpy(batch["obs"][:, 1 : H + 1]).to(self.device))
            errors.append(open_loop_error(pred.float().cpu().numpy(), real.float().cpu().numpy(), batch["obs_mask"]))
            scenarios.append(batch["scenario"])
            if self.model.ensemble_heads is not None:
                members.append(ensemble.held_out_errors(self.model, tensors))
        err, sid = np.concatenate(errors), np.concatenate(scenarios)
        result = by_domain(err, [self.domains[s] for s in sid])
        if members:
            result["elite_error"] = ensemble.update_elites(self.model, torch.stack(members).mean(0))
        return result

    def _state(self) -> dict:
        """What a checkpoint's ``state.json`` records besides the step and the files."""
        return {"preset": self.preset, "model_config": self.model_config.to_dict(),
                "train_config": dataclasses.asdict(self.config),
                "data": {"path": str(self.dataset.root.resolve()), "obs_dim": self.dataset.obs_dim,
                         "act_dim": self.dataset.act_dim, "num_scenarios": len(self.dataset.scenarios),
                         "domains": self.domains}}

    def save(self) -> Path:
        state = {**self._state(), "sampler_rng": self.sampler.rng.bit_generator.state,
                 "best_step": self.best_step, "best_error": self.best_error}
        self.last_good = save_checkpoint(self.run_dir, self.step, self.model, self.optimizer, self.generator, state)
        return self.last_good

    def track_best(self, result: dict[str, float]) -> bool:
        """After an evaluation: if its held-out open-loop error is the lowest so far (and finite, and at least
        one update was made), publish the current weights as the best checkpoint. Returns whether it did."""
        error = result.get(KEY)
        if self.step == 0 or error is None or not np.isfinite(error):
            return False
        if self.best_error is not None and error >= self.best_error:
            return False
        self.best_step, self.best_error = self.step, float(error)
        save_best(self.run_dir, self.step, self.model, self._state(), self.best_error)
        return True

    # ------------------------------------------------------------------------------------------ loop
    def run(self) -> dict[str, float]:
        """Train until ``config.steps`` updates; returns the final evaluation. Releases the run folder's lock
        when it returns; on Ctrl-C raises :class:`~mrcom_core.errors.Interrupted` saying what was kept."""
        try:
            return self._train()
        except KeyboardInterrupt:
            kept = (f"the last checkpoint (update {read_state(self.last_good)['step']}) is kept in {self.run_dir}; "
                    f"continue with the same command plus --resume" if self.last_good is not None else
                    "no checkpoint had been written, so the run folder was removed")
            raise Interrupted(f"training stopped at update {self.step}; {kept}") from None
        finally:
            if self.step < self.config.steps:
                self._fail()
            else:
                self.close()

    def _train(self) -> dict[str, float]:
        from tqdm import tqdm

        c, main = self.config, self.rank == 0
        if main:  # config.json first: it is what marks the folder as a training run (mrcom_core.io.outputs)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with writing(self.run_dir / "config.json"):  # a full disk names the file
                write_json_atomic(self.run_dir / "config.json", {
                    "preset": self.preset, "model": self.model_config.to_dict(), "train": dataclasses.asdict(c),
                    "data": str(self.dataset.root.resolve()), "world_size": self.world, "device": str(self.device)})
        logger = MetricsLog(self.run_dir, [*LOG_FIELDS, *(f"{KEY}_{d}" for d in dict.fromkeys(self.domains))],
                            self.step) if main else None
        if main and self.step >= c.steps:
            self.log(f"{self.run_dir} has its {c.steps} updates already: nothing to train")
        elif main:  # the header and the first evaluation before the bar, which then owns the last line
            params = sum(p.numel() for p in self.model.parameters())
            removed = [name for name in ABLATIONS if getattr(self.model_config.options, name, False)]
            variant = f" (ablation {', '.join(removed)})" if removed else ""
            self.log(f"training {self.preset} {self.model_config.model_type}{variant} ({params / 1e6:.2f}M parameters) "
                     f"on {self.dataset.root} ({len(self.dataset.scenarios)} scenarios, {self.dataset.num_steps} "
                     f"steps) for {c.steps} updates on {self.device} × {self.world}; run folder {self.run_dir}")
        if main and self.step == 0:
            first = self.evaluate()
            logger.write(self.step, first, _scalars(first))
            self.log(f"step 0: open-loop error {format_errors(first)}")
        bar = tqdm(total=c.steps, initial=self.step, unit="upd", disable=not (self.progress and main),
                   dynamic_ncols=True)
        try:
            return self._loop(logger, bar)
        finally:
            bar.close()
            if logger:
                logger.close()

    def _loop(self, logger: MetricsLog | None, bar) -> dict[str, float]:
        c, main = self.config, self.rank == 0
        result: dict[str, float] = {}
        tick, tick_step = time.perf_counter(), self.step
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
                    logger.write(self.step, metrics, _scalars(metrics))
            if self.step % c.eval_every == 0 or self.step == c.steps:
                if main:
                    result = self.evaluate()
                    logger.write(self.step, result, _scalars(result))
                    best = " (best so far)" if self.track_best(result) else ""
                    (bar.write if self.progress else self.log)(
                        f"step {self.step}: open-loop error {format_errors(result)}{best}")
            if self.step % c.checkpoint_every == 0 or self.step == c.steps:
                if main:
                    self.save()
                if self.world > 1:
                    torch.distributed.barrier()
        return result
