"""Validated model configuration, size presets and ablation switches.

Sizes live in one table (:data:`PRESETS`), as TD-MPC2 keeps them: ``tiny`` for tests (seconds on a
CPU), ``small`` the CPU default, ``base`` for a GPU. Every field can be overridden by name
(:func:`apply_overrides`, used by the CLI's ``--set`` and TOML config files). Invalid values raise
:class:`~mrcom_core.errors.UserInputError` whose message names the field.

This module knows no model class: which ``model_type`` values exist, which latent sizes each has and
which switches it honours is declared by the model classes and checked by :mod:`mrcom_core.registry`
(``registry.model_config`` builds a config and checks both).

Ablations (paper §5.3) really remove their component (MrCoM only):

==============  ===========================================================================
``no_d``        no deterministic state: no GRU, ``d`` has 0 dims, latent ``s = [u, h]``
``no_context``  no context encoder: the u/h heads see no ``c_t`` (and no prompt)
``no_ls``       no meta-state regularization ``L_s`` (eq. 12)
``no_lv``       no value heads, no meta-value, no ``L_v`` (eqs. 13–15)
==============  ===========================================================================
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, fields

from .errors import UserInputError, check_int, check_number

ABLATIONS = ("no_d", "no_context", "no_ls", "no_lv")
KL_DIRECTIONS = ("post_prior", "prior_post")
REWARD_SCALES = ("raw", "unit")


@dataclass(frozen=True)
class ModelConfig:
    """Everything that shapes the world model and its losses.

    Data-dependent fields (``obs_dim``, ``act_dim``, ``num_scenarios``) are filled in from the dataset.

    ``model_type``: the registry name of the world-model class (:mod:`mrcom_core.registry`): ``mrcom`` (the
    paper's model), ``rssm_ctx`` (the paper's DreamerV3: a context-augmented RSSM), ``rssm`` (the same
    without context), ``cadm`` (CaDM-style), ``mamba`` (MAMBA-style: a recurrent context over the whole
    history), or any class registered there (``mrcom models`` lists them). Each class reads the fields it
    needs and declares its latent sizes; a switch it does not honour is refused
    (:attr:`~mrcom_core.base.BaseWorldModel.switches`), other fields it ignores are harmless.

    Context: ``context_len`` (m) tokens of ``(o, a[, r])`` (``context_reward``: the previous reward is
    part of each token — without it a reward head cannot tell scenarios with different target speeds
    apart). The streaming encoder has ``ctx_layers`` pre-LN transformer blocks of width ``ctx_width``
    with ``ctx_heads`` heads, causal attention restricted to the last m tokens (band mask) and a learned
    relative-position bias; its output ``c_t`` has ``ctx_dim`` dims. ``ctx_reencode`` instead encodes
    every step's m-token window from scratch during training (the literal ``Enc(C_t)``; several times
    slower, kept for comparison by ``bench/train.py``).

    Latents: ``u_dim`` (stochastic), ``d_dim`` (GRU), ``h_dim`` (auxiliary); MLPs of ``hidden_layers``
    × ``hidden_dim``; Gaussian std = softplus(raw) + ``min_std``.

    Losses (eq. 16): ``L = lambda_var·L_var + lambda_s·L_s + lambda_v·L_v`` plus the value heads' own TD
    and regression losses (weight ``value_loss_weight``; they only train the value heads).
    ``kl_direction``: ``post_prior`` = KL(q‖p), the variational bound's direction (default);
    ``prior_post`` = KL(p‖q) as eq. 10 is printed. ``kl_free_nats``: per-row KL below this many nats
    gives no gradient (DreamerV3's free bits). ``reward_scale``: ``unit`` regresses the reward head on rewards
    standardized by the training data's mean and std (kept with the weights, so the head's reward and every
    exported graph are in the data's own units), as the decoder regresses standardized observations; ``raw``
    regresses the rewards as they are, which a 20-dim reconstruction term swamps (per-step rewards vary by
    ~0.1, an observation by ~1 per dim). ``ensemble`` > 0: that many one-step heads on the latent state
    (:mod:`mrcom_core.ensemble`) whose disagreement tells imagination where the model does not know, with the
    ``ensemble_elites`` best on held-out data (0: all) making the ``elites`` mask. ``gamma``: TD discount of
    the value heads (eq. 14).
    ``overshoot_horizon`` > 0 adds a loss that is not in the paper: each window's first posterior state
    imagines that many steps open loop (mean latents, predictions fed back into the context, as in
    imagination) and the decoded observations are regressed on the real ones, weight
    ``overshoot_weight`` (see ``mrcom_core.losses.loss_overshoot``). A window of L steps holds at most L of them
    (``H = min(overshoot_horizon, L)``), so ``mrcom train`` refuses a horizon above ``train.window_len`` when
    either is set by the user (a preset's own pair stands: ``tiny`` imagines its 8-step windows).

    ``u_on_d`` (MrCoM only; off = eq. 6 read literally, ``p(u_t | c_t, a_{t-1})``): also condition
    u's prior and posterior on the previous deterministic state, ``p(u_t | c_t, a_{t-1}, d_{t-1})`` and
    ``q(u_t | c_t, a_{t-1}, d_{t-1}, o_t)``. Eq. 15 writes the transition from the whole ``s̃_t = {u, d, h}``
    and §5.3 says d carries the temporal information; read literally, u has no recurrent input and in
    imagination all memory of the previous step passes through the decoded prediction in the context.
    ``d_{-1}`` is the model's initial d (zeros), in training and in the one-step functions alike. Under
    ``no_d`` there is no d to feed (0 dims), so ``u_on_d`` changes nothing there (a documented no-op, which
    keeps the w/o d ablation runnable whatever the default). Other model types ignore it (RSSM's u already
    depends on d).

    ``history_len`` (recurrent-history models only, i.e. ``mamba``; 0 = ``context_len``): real steps of
    history before each training window, all read by the model's recurrent context encoder (MAMBA trains on
    sequences that include their history); the exported ``prime`` graph still takes ``context_len`` steps
    and the runtime observes the rest of a longer prompt step by step.

    The field defaults here are the neutral ones (no overshooting, eq. 6 literal, raw rewards), so a config
    saved before a switch existed loads as it was trained (and no ensemble). A new config is built by
    :func:`mrcom_core.registry.model_config`, which starts from the model class's ``defaults``: every model's
    ``reward_scale = unit`` (and every built-in model's ``ensemble = 5``, ``ensemble_elites = 4``), MrCoM's
    ``u_on_d = true`` and ``overshoot_horizon = 15`` (the best of the four combinations measured in
    docs/results.md). The literal reading is ``mrcom train --config
    configs/mrcom-literal.toml`` (or ``--set model.u_on_d=false --set model.overshoot_horizon=0``).
    """

    model_type: str = "mrcom"
    obs_dim: int = 1
    act_dim: int = 1
    num_scenarios: int = 1
    context_len: int = 32
    context_reward: bool = True
    ctx_reencode: bool = False
    ctx_width: int = 64
    ctx_layers: int = 2
    ctx_heads: int = 4
    ctx_dim: int = 64
    u_dim: int = 32
    d_dim: int = 128
    h_dim: int = 16
    hidden_dim: int = 256
    hidden_layers: int = 2
    min_std: float = 0.1
    no_d: bool = False
    no_context: bool = False
    no_ls: bool = False
    no_lv: bool = False
    lambda_var: float = 1.0
    lambda_s: float = 0.1
    lambda_v: float = 0.1
    value_loss_weight: float = 1.0
    kl_direction: str = "post_prior"
    kl_free_nats: float = 1.0
    reward_loss_weight: float = 1.0
    reward_scale: str = "raw"
    ensemble: int = 0
    ensemble_elites: int = 0
    gamma: float = 0.99
    overshoot_horizon: int = 0
    overshoot_weight: float = 1.0
    u_on_d: bool = False
    history_len: int = 0

    def __post_init__(self):
        positive = ("obs_dim", "act_dim", "num_scenarios", "context_len", "ctx_width", "ctx_layers", "ctx_heads",
                    "ctx_dim", "u_dim", "h_dim", "hidden_dim", "hidden_layers")
        for name in positive:
            check_int(f"model.{name}", getattr(self, name))
        check_int("model.d_dim", self.d_dim, hint=" (use no_d to remove d)")
        if self.ctx_width % self.ctx_heads:
            raise UserInputError(f"model.ctx_width ({self.ctx_width}) must be divisible by model.ctx_heads "
                                 f"({self.ctx_heads})")
        for name in ("min_std", "lambda_var", "lambda_s", "lambda_v", "value_loss_weight", "kl_free_nats",
                     "reward_loss_weight", "overshoot_weight"):
            check_number(f"model.{name}", getattr(self, name))
        for name in ("overshoot_horizon", "history_len", "ensemble", "ensemble_elites"):
            check_int(f"model.{name}", getattr(self, name), minimum=0)
        if self.history_len and self.history_len < self.context_len:
            raise UserInputError(f"model.history_len ({self.history_len}) must be 0 or >= model.context_len "
                                 f"({self.context_len})")
        for name in ("ensemble", "ensemble_elites"):  # one member (or elite) cannot disagree with itself
            if getattr(self, name) == 1:
                raise UserInputError(f"model.{name} must be 0 or >= 2 (one member has no disagreement), got 1")
        if self.ensemble_elites > self.ensemble:
            raise UserInputError(f"model.ensemble_elites ({self.ensemble_elites}) must be at most model.ensemble "
                                 f"({self.ensemble})")
        if not isinstance(self.u_on_d, bool):
            raise UserInputError(f"model.u_on_d must be true or false, got {self.u_on_d!r}")
        if not 0 <= self.gamma < 1:
            raise UserInputError(f"model.gamma must be in [0, 1), got {self.gamma!r}")
        if not isinstance(self.model_type, str) or not self.model_type:
            raise UserInputError(f"model.model_type must be a model name, got {self.model_type!r}")
        if self.reward_scale not in REWARD_SCALES:
            raise UserInputError(f"model.reward_scale must be one of {', '.join(REWARD_SCALES)}, "
                                 f"got {self.reward_scale!r}")
        if self.kl_direction not in KL_DIRECTIONS:
            raise UserInputError(f"model.kl_direction must be one of {', '.join(KL_DIRECTIONS)}, "
                                 f"got {self.kl_direction!r}")

    @property
    def token_dim(self) -> int:
        return self.obs_dim + self.act_dim + (1 if self.context_reward else 0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict] = {
    "tiny": dict(context_len=8, ctx_width=16, ctx_layers=1, ctx_heads=2, ctx_dim=16, u_dim=4, d_dim=16, h_dim=4,
                 hidden_dim=32, hidden_layers=1),
    "small": dict(context_len=32, ctx_width=64, ctx_layers=2, ctx_heads=4, ctx_dim=64, u_dim=32, d_dim=128,
                  h_dim=16, hidden_dim=256, hidden_layers=2),
    "base": dict(context_len=64, ctx_width=128, ctx_layers=3, ctx_heads=8, ctx_dim=128, u_dim=64, d_dim=512,
                 h_dim=32, hidden_dim=512, hidden_layers=3),
}


def _coerce(cls, name: str, value, prefix: str):
    """Convert ``value`` (possibly a string from the CLI) to the type of ``cls.name``."""
    hints = typing.get_type_hints(cls)
    if name not in hints:
        known = ", ".join(f.name for f in fields(cls))
        raise UserInputError(f"{prefix}: unknown field {name!r}; known fields: {known}")
    kind = hints[name]
    args = typing.get_args(kind)
    if isinstance(kind, types.UnionType) and type(None) in args:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        kind = next(a for a in args if a is not type(None))
    if not isinstance(value, str):
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value
    try:
        if kind is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind is int:
            return int(value)
        if kind is float:
            return float(value)
    except ValueError:
        raise UserInputError(f"{prefix}.{name}: cannot read {value!r} as {kind.__name__}") from None
    return value


def apply_overrides(config, overrides: dict, prefix: str = "model"):
    """A copy of the dataclass ``config`` with ``overrides`` (field → value or string) applied, validated."""
    changes = {name: _coerce(type(config), name, value, prefix) for name, value in overrides.items()}
    return dataclasses.replace(config, **changes)


def preset_values(preset: str, ablations: tuple[str, ...] | list[str] = ()) -> dict:
    """The field values of ``preset`` with the named ablations switched on (names checked)."""
    if preset not in PRESETS:
        raise UserInputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    for name in ablations:
        if name not in ABLATIONS:
            raise UserInputError(f"unknown ablation {name!r}; choose from {', '.join(ABLATIONS)}")
    return {**PRESETS[preset], **{name: True for name in ablations}}


def parse_assignments(items, sections: tuple[str, ...] = ()) -> dict:
    """``FIELD=VALUE`` strings (``--set``) as a dict; with ``sections``, ``SECTION.FIELD=VALUE`` strings as
    ``{section: {field: value}}``. Values stay strings (:func:`apply_overrides` converts them)."""
    out: dict = {s: {} for s in sections}
    for item in items:
        key, sep, value = str(item).partition("=")
        key, value = key.strip(), value.strip()
        if sections:
            section, dot, name = key.partition(".")
            if not sep or not dot or section not in sections or not name:
                raise UserInputError(f"--set {item!r}: expected " + " or ".join(f"{s}.FIELD=VALUE" for s in sections))
            out[section][name] = value
        else:
            if not sep or not key:
                raise UserInputError(f"--set {item!r}: expected FIELD=VALUE")
            out[key] = value
    return out
