"""What one ``mrcom adapt`` run is (paper §3.4): :class:`AdaptConfig`, checked on construction, with the target
scenario it draws, MBPO's horizon schedule and the memory its buffers, networks and batches take, and the
normalized return every evaluation reports. The algorithm itself is in :mod:`mrcom_train.rl.adapt`.

Normalized return = 100 × episode return / episode length (dm_control rewards are in [0, 1] per step).
"""

from __future__ import annotations

from dataclasses import dataclass

from mrcom_core.errors import UserInputError, check_int, check_number
from mrcom_core.io.resources import format_bytes

from ..agents.sac import SACConfig, parameter_counts
from ..scenarios import DOMAINS, ScenarioSpec, check_obs_reward, get_split, target_scenario

MAX_SEED = 2**32 - 1  # dm_control seeds its task with numpy's legacy RandomState

IMAGINED_REWARDS = ("model", "learned", "true")  # what scores an imagined transition (AdaptConfig.imagined_reward)
IMAGINATIONS = ("model", "oracle")  # what imagines (AdaptConfig.imagination)
REFITS = ("none", "heads", "all")  # what a refit trains (AdaptConfig.refit)
GATES = ("none", "truncate", "penalty")  # what the ensemble's disagreement does to imagined transitions
REAL_RATIO_MODES = ("fixed", "model_error")  # how the real share of SAC batches is set (AdaptConfig.real_ratio_mode)
#: the fields only a world model of the run's own reads (a refit, a gate): the oracle and model-free runs ignore them
WORLD_MODEL_FIELDS = ("refit", "refit_every", "refit_steps", "refit_rehearsal", "refit_lr", "gate", "gate_percentile",
                      "gate_penalty")
#: the fields only imagination reads: a model-free run (``use_model=False``) ignores them, so they may differ
#: between its config and the one it resumes with (:meth:`AdaptConfig.unused_fields`)
IMAGINATION_FIELDS = ("real_ratio", "model_rollout_every", "rollout_batch", "retain_rounds", "horizon_start",
                      "horizon_end", "imagined_reward", "reward_steps", "reward_lr", "imagination", "real_ratio_mode",
                      "real_ratio_max", *WORLD_MODEL_FIELDS)


@dataclass(frozen=True)
class AdaptConfig:
    """One adaptation run. See :mod:`mrcom_train.rl.adapt` for the algorithm.

    MBPO's knobs (defaults from the MBPO paper and mbrl-lib, for a budget of ~10⁵ env steps; the
    ``mrcom reproduce`` budgets scale them): ``updates_per_step`` (G, SAC updates per env step),
    ``real_ratio`` (share of real transitions in each SAC batch), ``model_rollout_every`` env steps one round
    of ``rollout_batch`` imagined rollouts, ``retain_rounds`` (the model buffer holds the latest rounds
    only), ``horizon_start`` → ``horizon_end`` (rollout length, linear over the run; ``None``: the domain's
    MBPO schedule, ``Domain.mbpo_horizon``: 1 → 15 on hopper, 1 on walker and cheetah).

    ``imagined_reward``: what scores an imagined transition: ``"model"`` (the world model's reward head),
    ``"learned"`` (a reward model of the target fitted on its real transitions alone, ``reward_steps`` Adam
    updates at ``reward_lr`` before every imagination round, :mod:`~mrcom_train.rl.reward_model`) or
    ``"true"`` (the target task's reward function applied to the imagined next observation,
    :func:`~mrcom_train.scenarios.obs_reward.reward_from_obs`: the model's dynamics with the true reward, a
    diagnostic arm; only for a walker or cheetah target with a target speed and ``obs_fn="none"``, checked
    here).

    ``real_ratio_mode``: ``"fixed"`` (every batch ``real_ratio`` real) or ``"model_error"`` (a real ratio that
    follows the model: it starts at ``real_ratio_max`` and after every imagination round is set from the
    model's one-step error on the recent real transitions, :func:`adaptive_real_ratio`, down to
    ``real_ratio`` for a model that makes no error).

    ``refit``: the world model keeps learning in the target (:mod:`~mrcom_train.rl.refit`): ``"none"`` (frozen),
    ``"heads"`` (decoder, reward and value heads) or ``"all"``; every ``refit_every`` env steps from
    ``learning_starts`` on, up to ``refit_steps`` updates on the target's real episodes with a
    ``refit_rehearsal`` share of pretraining data, Adam at ``refit_lr``; it needs the training run behind the
    export (its manifest names it, or ``Adapter(run=…)`` / ``mrcom adapt --run``).

    ``gate``: what the world model's ensemble disagreement (:mod:`~mrcom_train.rl.gate`; the export needs an
    ensemble) does to imagined transitions: ``"none"`` (nothing, and not measured on imagined steps),
    ``"truncate"`` (MACURA: a rollout stops at the first step whose disagreement exceeds the
    ``gate_percentile``-th percentile of the round's first-step disagreement, the step not kept) or
    ``"penalty"`` (MOPO: the reward minus ``gate_penalty`` × disagreement).

    ``imagination``: what the imagined rollouts come from: ``"model"`` (the exported world model) or
    ``"oracle"`` (the target's own simulator branched from the stored real states,
    :mod:`~mrcom_train.rl.oracle`: the ceiling of every model arm, and the check that the loop itself works).
    """

    split: str = "t1-a5b20"
    range: str = "in"
    domain: str = "hopper"
    seed: int = 0
    env_steps: int = 20_000
    episode_length: int = 1000
    learning_starts: int = 1000
    batch_size: int = 256
    updates_per_step: int = 20
    sac_hidden: int = 256
    use_model: bool = True
    real_ratio: float = 0.05
    model_rollout_every: int = 250
    rollout_batch: int = 10_000
    retain_rounds: int = 4
    horizon_start: int | None = None
    horizon_end: int | None = None
    eval_every: int = 5000
    eval_episodes: int = 3
    checkpoint_every: int = 5000
    imagined_reward: str = "model"
    reward_steps: int = 100
    reward_lr: float = 1e-3
    imagination: str = "model"
    real_ratio_mode: str = "fixed"
    real_ratio_max: float = 0.5
    refit: str = "none"
    refit_every: int = 250
    refit_steps: int = 50
    refit_rehearsal: float = 0.5
    refit_lr: float = 1e-4
    gate: str = "none"
    gate_percentile: float = 95.0
    gate_penalty: float = 1.0

    def __post_init__(self):
        for name in ("split", "range", "domain", "imagined_reward", "imagination", "real_ratio_mode", "refit",
                     "gate"):
            if not isinstance(getattr(self, name), str):
                raise UserInputError(f"{name} must be a string, got {getattr(self, name)!r}")
        get_split(self.split).range(self.range)
        if self.domain not in DOMAINS:
            raise UserInputError(f"domain: unknown domain {self.domain!r}; choose from {', '.join(DOMAINS)}")
        start, end = DOMAINS[self.domain].mbpo_horizon
        object.__setattr__(self, "horizon_start", start if self.horizon_start is None else self.horizon_start)
        object.__setattr__(self, "horizon_end", max(end, self.horizon_start) if self.horizon_end is None
                           else self.horizon_end)
        for name in ("env_steps", "episode_length", "batch_size", "updates_per_step", "sac_hidden",
                     "model_rollout_every", "rollout_batch", "retain_rounds", "horizon_start", "horizon_end",
                     "eval_every", "eval_episodes", "checkpoint_every", "refit_every", "refit_steps", "reward_steps"):
            check_int(name, getattr(self, name))
        check_int("learning_starts", self.learning_starts, 0)
        check_int("seed", self.seed, 0)
        if self.seed > MAX_SEED:
            raise UserInputError(f"seed must be an integer <= {MAX_SEED}, got {self.seed!r}")
        if not isinstance(self.use_model, bool):
            raise UserInputError(f"use_model must be true or false, got {self.use_model!r}")
        for name in ("real_ratio", "real_ratio_max"):
            check_number(name, getattr(self, name))
            if not 0 <= getattr(self, name) <= 1:
                raise UserInputError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.real_ratio_mode not in REAL_RATIO_MODES:
            raise UserInputError(f"real_ratio_mode must be one of {', '.join(REAL_RATIO_MODES)}, "
                                 f"got {self.real_ratio_mode!r}")
        if self.real_ratio_mode == "model_error" and self.real_ratio_max < self.real_ratio:
            raise UserInputError(f"real_ratio_max ({self.real_ratio_max}) must be >= real_ratio ({self.real_ratio}), "
                                 f"the floor it falls to")
        if self.horizon_end < self.horizon_start:
            raise UserInputError(f"horizon_end ({self.horizon_end}) must be >= horizon_start ({self.horizon_start})")
        if self.imagined_reward not in IMAGINED_REWARDS:
            raise UserInputError(f"imagined_reward must be one of {', '.join(IMAGINED_REWARDS)}, "
                                 f"got {self.imagined_reward!r}")
        if self.imagined_reward == "true":
            check_obs_reward(self.target(), "imagined_reward")
        check_number("reward_lr", self.reward_lr)
        if not 0 < self.reward_lr <= 1:
            raise UserInputError(f"reward_lr must be in (0, 1], got {self.reward_lr}")
        if self.imagination not in IMAGINATIONS:
            raise UserInputError(f"imagination must be one of {', '.join(IMAGINATIONS)}, got {self.imagination!r}")
        if self.refit not in REFITS:
            raise UserInputError(f"refit must be one of {', '.join(REFITS)}, got {self.refit!r}")
        if self.refit != "none" and (not self.use_model or self.imagination != "model"):
            raise UserInputError("refit needs a world model to refit: use_model=true and imagination=model")
        check_number("refit_rehearsal", self.refit_rehearsal)
        if not 0 <= self.refit_rehearsal < 1:
            raise UserInputError(f"refit_rehearsal must be in [0, 1), got {self.refit_rehearsal}")
        check_number("refit_lr", self.refit_lr)
        if not 0 < self.refit_lr <= 1:
            raise UserInputError(f"refit_lr must be in (0, 1], got {self.refit_lr}")

        if self.gate not in GATES:
            raise UserInputError(f"gate must be one of {', '.join(GATES)}, got {self.gate!r}")
        if self.gate != "none" and (not self.use_model or self.imagination != "model"):
            raise UserInputError("gate needs a world model's ensemble: use_model=true and imagination=model")
        check_number("gate_percentile", self.gate_percentile)
        if not 0 < self.gate_percentile <= 100:
            raise UserInputError(f"gate_percentile must be in (0, 100], got {self.gate_percentile}")
        check_number("gate_penalty", self.gate_penalty)

    def unused_fields(self) -> tuple[str, ...]:
        """The fields this run never reads (:data:`IMAGINATION_FIELDS` for a model-free run, else none)."""
        return () if self.use_model else IMAGINATION_FIELDS

    @property
    def oracle(self) -> bool:
        """Whether the imagined rollouts come from the true simulator (the oracle-model arm)."""
        return self.use_model and self.imagination == "oracle"

    def target(self) -> ScenarioSpec:
        """The target scenario: drawn (seeded) from the split's ``range`` for ``domain``."""
        return target_scenario(self.split, self.range, self.domain, self.seed, self.episode_length)

    def horizon(self, step: int) -> int:
        """MBPO's linear horizon schedule over the env steps after ``learning_starts``."""
        span = max(1, (self.env_steps - self.learning_starts) // 2)
        frac = min(1.0, max(0.0, (step - self.learning_starts) / span))
        return int(round(self.horizon_start + frac * (self.horizon_end - self.horizon_start)))

    def model_buffer_size(self, step: int) -> int:
        """Capacity of the model buffer at env step ``step``: the latest ``retain_rounds`` rounds of
        ``rollout_batch`` rollouts at the current horizon (MBPO resizes it as the horizon grows)."""
        return self.retain_rounds * self.rollout_batch * self.horizon(step)

    def buffer_bytes(self, obs_dim: int, act_dim: int) -> int:
        """Memory of the replay buffers at their largest: every real transition plus (with the model) the
        model buffer at the final horizon, each ``(obs, action, reward, next_obs, terminated)`` in float32."""
        transitions = self.env_steps + (self.model_buffer_size(self.env_steps) if self.use_model else 0)
        return transitions * (2 * obs_dim + act_dim + 2) * 4

    def memory_parts(self, obs_dim: int, act_dim: int) -> list[tuple[int, str, str]]:
        """Lower bounds of the memory the run's parts take at their largest (float32), each as ``(bytes, part,
        the fields that size it)``:

        * the replay buffers (:meth:`buffer_bytes`) and the real episodes kept for prompts (each real step's
          observation, action and reward once more);
        * the SAC networks at width ``sac_hidden`` (:func:`~mrcom_train.agents.sac.parameter_counts`): the actor and
          the twin critic with their gradients and Adam's two moments, and the target critic;
        * one SAC update: its batch of ``batch_size`` transitions and the hidden activations its backward pass
          keeps (the actor's and both critics', one per hidden layer);
        * with the model, one round of ``rollout_batch`` imagined rollouts: a step's transitions and the policy's
          hidden activations (the world model's own memory depends on the export and is not counted).
        """
        od, ad, hidden, layers = obs_dim, act_dim, self.sac_hidden, SACConfig.hidden_layers
        transition = 2 * od + ad + 2  # floats of one (obs, action, reward, next_obs, terminated)
        actor, critic = parameter_counts(od, ad, hidden, layers)
        parts = [
            (self.buffer_bytes(od, ad) + 4 * self.env_steps * (od + ad + 1), "the replay buffers",
             "env_steps (--env-steps)" + (", rollout_batch or retain_rounds" if self.use_model else "")),
            (4 * (4 * actor + 5 * critic), f"the SAC networks at sac_hidden={hidden}", "sac_hidden"),
            (4 * self.batch_size * (transition + 3 * layers * hidden), f"a SAC update at batch_size={self.batch_size}",
             "batch_size"),
        ]
        if self.use_model:
            parts.append((4 * self.rollout_batch * (transition + hidden),
                          f"a round of imagined rollouts at rollout_batch={self.rollout_batch}", "rollout_batch"))
        return parts

    def memory_request(self, obs_dim: int, act_dim: int) -> tuple[int, str, str]:
        """The arguments of the up-front :func:`~mrcom_core.io.resources.require_memory` check: the sum of
        :meth:`memory_parts`, described by its largest part, whose fields are the fix."""
        parts = self.memory_parts(obs_dim, act_dim)
        largest, part, fields = max(parts, key=lambda p: p[0])
        return (sum(p[0] for p in parts),
                f"adapting for {self.env_steps} env steps (largest part: {part}, {format_bytes(largest)})",
                f"lower {fields}")


def adaptive_real_ratio(error: float, floor: float, ceiling: float) -> float:
    """The real share of SAC batches for a model whose relative one-step error on recent real transitions is
    ``error`` (:func:`~mrcom_train.rl.diagnostics.relative_error`: 0 for a perfect model, 1 for a reward off
    by as much as the reward itself or a next observation off by the data's own spread): ``floor`` at 0,
    rising linearly to ``ceiling`` at 1 and above."""
    return floor + (ceiling - floor) * min(1.0, max(0.0, float(error)))


def normalized_return(episode_return: float, episode_length: int) -> float:
    return 100.0 * episode_return / episode_length


def read_adapt_config(path) -> dict:
    """The AdaptConfig fields of a JSON file (an adaptation run's ``config.json``: its ``target``, which the
    fields determine, is left out); values are checked when applied (:func:`~mrcom_core.config.apply_overrides`)."""
    from mrcom_core.io.files import read_json

    data = read_json(path, "config file")
    data.pop("target", None)
    return data
