"""The world model keeps learning in the target scenario: refits during adaptation.

A frozen model errs most where the agent goes and the pretraining data never went. As MBPO retrains its model
every 250 env steps on the real data, and as fine-tuning a pretrained multi-task model works when the new
task's data is mixed with rehearsed pretraining data (TD-MPC2's few-shot finetuning, WPT), a
:class:`Refitter` fine-tunes the torch model behind an export on the target's real episodes:

* it loads the training run the export came from (its checkpoint, model config, training window and
  dataset: ``mrcom_train.training.checkpoint.load_model``);
* each :meth:`Refitter.refit` takes up to ``steps`` Adam updates on batches of windows of the target's real
  episodes (with their context prompts, as training draws them) beside a ``rehearsal`` share of windows of
  the pretraining dataset, on the parameters ``mode`` names (``heads``: the model class's
  :attr:`~mrcom_core.base.BaseWorldModel.refit_heads`, the decoder, reward and value heads; ``all``: every
  parameter); the last 20% of every target episode is held out, and the weights with the lowest held-out
  prediction loss (:data:`PREDICTION_TERMS`: observations, rewards, open-loop observations) are kept, stopping
  after :data:`PATIENCE` evaluations without a 1% gain (MBPO's rule);
* a model with an ensemble then chooses its elites on the same held-out windows;
* :meth:`Refitter.export` freezes the refit model into runtime graphs, which the adapter swaps in.

Target rows use scenario index 0 for the per-scenario value heads (the target is no training scenario).
Everything random is seeded, and :meth:`state_dict` / :meth:`load_state_dict` carry the weights, the Adam
moments and every random state, so a resumed adaptation refits exactly as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mrcom_core import ensemble
from mrcom_core.errors import UserInputError
from mrcom_core.registry import history_steps

from ..datasets.dataset import Dataset
from ..datasets.memory import EpisodeSet
from ..datasets.sampler import SequenceSampler
from ..training.checkpoint import flatten_optimizer, load_model, unflatten_optimizer

MODES = ("none", "heads", "all")
HOLDOUT = 0.2  # the share of every target episode (its end) that refits are early-stopped on
EVAL_EVERY, PATIENCE, MIN_GAIN = 10, 3, 0.01  # held-out loss every 10 updates; stop after 3 without a 1% gain
EVAL_BATCHES = 2
#: the loss terms a refit is early-stopped on: what imagination predicts (observations, rewards, open-loop
#: observations), not the value heads' TD terms, which dominate the training loss without saying how well it predicts
PREDICTION_TERMS = ("recon", "reward", "overshoot")


class Refitter:
    """Fine-tunes the world model of training run ``run_dir`` (checkpoint ``which``) on a target scenario.

    ``mode``: ``heads`` or ``all`` (:data:`MODES`); ``rehearsal``: share of each batch drawn from the run's
    pretraining dataset; ``lr``: Adam's learning rate; ``seed``: seeds the batches and the latent noise.
    """

    def __init__(self, run_dir: str | Path, mode: str, *, rehearsal: float = 0.5, lr: float = 1e-4, seed: int = 0,
                 which: str = "best"):
        if mode not in MODES[1:]:
            raise UserInputError(f"refit must be one of {', '.join(MODES)}, got {mode!r}")
        self.model, state = load_model(run_dir, which)
        self.run_dir, self.mode, self.rehearsal = Path(run_dir), mode, rehearsal
        try:
            train, data = state["train_config"], state["data"]["path"]
            self.window, self.batch_size = int(train["window_len"]), int(train["batch_size"])
        except (KeyError, TypeError, ValueError):
            raise UserInputError(f"training run {run_dir}: its checkpoint records no training window, batch size "
                                 f"or dataset to refit with") from None
        self.history = history_steps(self.model.config)
        self.data = Dataset(data)
        n_rehearse = int(round(rehearsal * self.batch_size))
        self.n_target = self.batch_size - n_rehearse
        self.rehearse = (SequenceSampler(self.data, self.history, self.window, n_rehearse, seed=seed)
                         if n_rehearse else None)
        heads = tuple(h for h in self.model.refit_heads if hasattr(self.model, h))
        if mode == "heads" and not heads:
            raise UserInputError(f"refit=heads: model {self.model.config.model_type} has no heads to refit")
        self.params = [p for name, p in self.model.named_parameters()
                       if mode == "all" or name.split(".", 1)[0] in heads]
        self.optimizer = torch.optim.Adam(self.params, lr=lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)

    # -------------------------------------------------------------------------------------------- refit
    def _noise(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {k: torch.randn(s, generator=generator) for k, s in
                self.model.noise_shapes(batch_size, self.window).items()}

    def _loss(self, batch: dict[str, np.ndarray], noise: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
        return self.model.loss(self.model(tensors, noise), tensors, noise)

    def held_out_loss(self, batches: list[dict[str, np.ndarray]]) -> float:
        """The model's prediction loss on held-out batches (the sum of its :data:`PREDICTION_TERMS`, each in
        its head's unit scale), with fixed noise (the same for every call)."""
        generator = torch.Generator().manual_seed(0)
        self.model.eval()
        with torch.no_grad():
            losses = [sum(float(v) for k, v in self._loss(b, self._noise(len(b["reward"]), generator)).items()
                          if k in PREDICTION_TERMS) for b in batches]
        return float(np.mean(losses))

    def refit(self, episodes: list[dict[str, np.ndarray]], obs_mask: np.ndarray, action_mask: np.ndarray,
              steps: int, log: Callable[[str], None] = lambda s: None) -> dict[str, float]:
        """Fine-tune on the target's real ``episodes`` (padded to the model's dims; ``obs_mask`` /
        ``action_mask`` mark the target's real dims) for up to ``steps`` updates, early-stopped on their
        held-out ends; returns ``held_out_before``, ``held_out_after`` and ``updates`` (all NaN / 0 when the
        episodes are too short to hold a training window and a held-out one yet)."""
        minimum = self.window + 1
        fit, held = EpisodeSet(episodes, obs_mask, action_mask, name="the target's real episodes").split(
            HOLDOUT, minimum)
        if not len(fit) or not len(held):
            return {"held_out_before": math.nan, "held_out_after": math.nan, "updates": 0}
        seed = int(self.rng.integers(2**31))
        target = SequenceSampler(fit, self.history, self.window, self.n_target, seed=seed)
        held_sampler = SequenceSampler(held, self.history, self.window, self.batch_size, seed=seed + 1)
        held_batches = [held_sampler.sample() for _ in range(EVAL_BATCHES)]
        best = before = self.held_out_loss(held_batches)
        best_weights = [p.detach().clone() for p in self.params]
        stale, updates = 0, 0
        for updates in range(1, steps + 1):
            batch = target.sample()
            if self.rehearse is not None:
                batch = {k: np.concatenate([batch[k], v]) for k, v in self.rehearse.sample().items()}
            self.model.train()
            self.optimizer.zero_grad(set_to_none=True)
            loss = self._loss(batch, self._noise(self.batch_size, self.generator))["loss"]
            if not torch.isfinite(loss):
                break
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 100.0)
            self.optimizer.step()
            if updates % EVAL_EVERY == 0 or updates == steps:
                now = self.held_out_loss(held_batches)
                if now < best - MIN_GAIN * abs(best):
                    best, stale = now, 0
                    best_weights = [p.detach().clone() for p in self.params]
                else:
                    stale += 1
                    if stale >= PATIENCE:
                        break
        with torch.no_grad():
            for p, w in zip(self.params, best_weights, strict=True):
                p.copy_(w)
        self.model.eval()
        if self.model.ensemble_heads is not None:  # the elites are those that predict the target's held-out data best
            errors = [ensemble.held_out_errors(self.model, {k: torch.from_numpy(np.ascontiguousarray(v))
                                                            for k, v in b.items()}) for b in held_batches]
            ensemble.update_elites(self.model, torch.stack(errors).mean(0))
        log(f"refit ({self.mode}): held-out loss {before:.4f} → {best:.4f} after {updates} updates")
        return {"held_out_before": before, "held_out_after": best, "updates": updates}

    # --------------------------------------------------------------------------------------- export, state
    def export(self, out_dir: str | Path, horizon: int, source: dict) -> Path:
        """Freeze the refit model into the runtime graphs (ONNX) in ``out_dir`` (replacing a previous refit's
        export there); returns the folder."""
        from mrcom_export.exporter import export_model

        export_model(self.model, out_dir, formats=("onnx",), horizon=horizon, blocks=False, force=True,
                     source={**source, "run": str(self.run_dir), "data": str(self.data.root)}, log=lambda s: None)
        return Path(out_dir)

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        """``(tensors, json)``: the model's weights, Adam's state and the generator (tensors), and Adam's param
        groups and the batch RNGs (JSON), for an exact resume."""
        adam, adam_meta = flatten_optimizer(self.optimizer.state_dict())
        tensors = {**{f"model.{k}": v.detach().clone() for k, v in self.model.state_dict().items()},
                   **{f"adam.{k}": v.clone() for k, v in adam.items()}, "generator": self.generator.get_state()}
        rngs = {"rng": self.rng.bit_generator.state,
                "rehearse": self.rehearse.rng.bit_generator.state if self.rehearse is not None else None}
        return tensors, {"adam": adam_meta, **rngs}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        adam = {k[len("adam."):]: v for k, v in tensors.items() if k.startswith("adam.")}
        self.optimizer.load_state_dict(unflatten_optimizer(adam, meta["adam"]))
        self.generator.set_state(tensors["generator"])
        self.rng.bit_generator.state = meta["rng"]
        if self.rehearse is not None:
            self.rehearse.rng.bit_generator.state = meta["rehearse"]


def open_refitter(config, runtime, run: str | Path | None) -> Refitter | None:
    """The :class:`Refitter` an adaptation with ``config`` (an :class:`~mrcom_train.rl.adapt_config.AdaptConfig`)
    needs for the export ``runtime`` runs (None for ``refit="none"``): of training run ``run``, or the one the
    export's manifest names, at the checkpoint it was exported from; its model must be the export's."""
    if config.refit == "none":
        return None
    source = runtime.manifest.get("source") or {}
    run = run or source.get("run")
    if not run:
        raise UserInputError(f"refit={config.refit} needs the training run behind export {runtime.root}, and its "
                             f"manifest names none: pass --run RUN")
    if not Path(run).is_dir():
        raise UserInputError(f"refit={config.refit}: the training run {run} behind export {runtime.root} is not "
                             f"there (pass --run RUN)")
    refitter = Refitter(run, config.refit, rehearsal=config.refit_rehearsal, lr=config.refit_lr, seed=config.seed,
                        which=source.get("checkpoint") or "best")
    c = refitter.model.config
    if (c.obs_dim, c.act_dim, c.context_len) != (runtime.obs_dim, runtime.act_dim, runtime.context_len):
        raise UserInputError(f"refit: training run {run}'s model (obs/action dims {c.obs_dim}/{c.act_dim}, context "
                             f"{c.context_len}) is not the one export {runtime.root} holds")
    return refitter


REFIT_FIELDS = ("held_out_before", "held_out_after", "refit_updates", "reward_mae_before", "reward_mae_after",
                "obs_nmse_before", "obs_nmse_after")  # what each refit logs (metrics.csv)


def refit_imagination(adapter) -> dict[str, float]:
    """One refit of ``adapter``'s (:class:`~mrcom_train.rl.adapt.Adapter`) world model on its real episodes,
    then the refit model exported into ``RUN/model`` and swapped in as the runtime of its imagination (the
    runtime's random stream carries on). Returns what to log: the held-out loss before and after, the updates
    taken, and the model's one-step reward and observation errors on the recent real transitions (the same
    ones) before and after."""
    from . import diagnostics

    before = diagnostics.model_error(adapter, last=2)
    out = adapter.refitter.refit(adapter.episodes, adapter.env.obs_mask, adapter.env.action_mask,
                                 adapter.cfg.refit_steps)
    if out["updates"]:
        swap_runtime(adapter)
        adapter.refits += 1
    after = diagnostics.model_error(adapter, last=2)
    return {"held_out_before": out["held_out_before"], "held_out_after": out["held_out_after"],
            "refit_updates": out["updates"], "reward_mae_before": before["reward_mae"],
            "reward_mae_after": after["reward_mae"], "obs_nmse_before": before["obs_nmse"],
            "obs_nmse_after": after["obs_nmse"]}


def swap_runtime(adapter) -> None:
    """Export ``adapter``'s refit model into ``RUN/model`` and make it the runtime of its imagined env."""
    from mrcom_export.runtime import Runtime

    env = adapter.imagined_env
    old = env.runtime
    folder = adapter.refitter.export(adapter.run_dir / "model", old.horizon, {"refit_of": str(old.root)})
    new = Runtime(folder, seed=None, threads=old.threads)
    new.rng = old.rng
    env.runtime = new
