"""Validated model configuration, size presets and the paper's ablation names.

Sizes live in one table (:data:`PRESETS`), as TD-MPC2 keeps them: ``tiny`` for tests (seconds on a
CPU), ``small`` the CPU default, ``base`` for a GPU. Every field can be overridden by name
(:func:`apply_overrides`, used by the CLI's ``--set`` and TOML config files). Invalid values raise
:class:`~mrcom_core.errors.UserInputError` whose message names the field.

A :class:`ModelConfig` holds what every world model reads (data dims, context, latent and network sizes, the
reward and KL settings, the ensemble); a model's own switches are its :class:`ModelOptions` subclass, declared
next to the model (``MrCoM.Options``: the ablations, ``u_on_d``, the meta-value weights; the RSSMs' and MrCoM's
:class:`~mrcom_core.losses.OvershootOptions`; MAMBA's ``history_len``) and held in ``ModelConfig.options``.
Saved and set, the two read as one flat table (``model.u_on_d``): :meth:`ModelConfig.to_dict` writes them
together and :func:`apply_overrides` sends each field where it lives. This module knows no model class:
:mod:`mrcom_core.registry` builds a config with the named class's options (``registry.model_config``,
``registry.load_config``) and refuses a field that belongs to another model, naming the models it belongs to.

Ablations (paper §5.3) really remove their component (MrCoM's options):

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
class ModelOptions:
    """A model class's own switches (this base has none): subclass it as a frozen dataclass next to the model,
    set the class's ``Options`` to it, validate single fields in ``__post_init__`` and fields that depend on the
    rest of the config in :meth:`check`. Field names must not repeat :class:`ModelConfig`'s."""

    def check(self, config: ModelConfig) -> None:
        """Checks that need the rest of ``config`` (raise :class:`UserInputError` naming the field)."""


def check_bool(name: str, value) -> None:
    """Refuse a non-bool (e.g. ``u_on_d = 1`` in a TOML file) with a message naming ``name``."""
    if not isinstance(value, bool):
        raise UserInputError(f"{name} must be true or false, got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Everything that shapes a world model and its losses that every model reads; the model's own switches
    are ``options`` (see the module docstring).

    Data-dependent fields (``obs_dim``, ``act_dim``, ``num_scenarios``) are filled in from the dataset.

    ``model_type``: the registry name of the world-model class (:mod:`mrcom_core.registry`): ``mrcom`` (the
    paper's model), ``rssm_ctx`` (the paper's DreamerV3: a context-augmented RSSM), ``rssm`` (the same
    without context), ``cadm`` (CaDM-style), ``mamba`` (MAMBA-style: a recurrent context over the whole
    history), or any class registered there (``mrcom models`` lists them). Each class reads the fields it
    needs and declares its latent sizes and its ``Options``.

    Context: ``context_len`` (m) tokens of ``(o, a[, r])`` (``context_reward``: the previous reward is
    part of each token — without it a reward head cannot tell scenarios with different target speeds
    apart). The streaming encoder has ``ctx_layers`` pre-LN transformer blocks of width ``ctx_width``
    with ``ctx_heads`` heads, causal attention restricted to the last m tokens (band mask) and a learned
    relative-position bias; its output ``c_t`` has ``ctx_dim`` dims. ``ctx_reencode`` instead encodes
    every step's m-token window from scratch during training (the literal ``Enc(C_t)``; several times
    slower, kept for comparison by ``bench/train.py``).

    Latents: ``u_dim`` (stochastic), ``d_dim`` (GRU), ``h_dim`` (auxiliary); MLPs of ``hidden_layers``
    × ``hidden_dim``; Gaussian std = softplus(raw) + ``min_std``.

    Losses: ``lambda_var`` weighs the variational term (eq. 16's ``L_var``: KL plus the reconstruction and
    the reward likelihood, ``reward_loss_weight`` on the reward's). ``kl_direction``: ``post_prior`` = KL(q‖p),
    the variational bound's direction (default); ``prior_post`` = KL(p‖q) as eq. 10 is printed.
    ``kl_free_nats``: per-row KL below this many nats gives no gradient (DreamerV3's free bits).
    ``reward_scale``: ``unit`` (default) regresses the reward head on rewards standardized by the training data's
    mean and std (kept with the weights, so the head's reward and every exported graph are in the data's own
    units), as the decoder regresses standardized observations; ``raw`` regresses the rewards as they are, which
    a 20-dim reconstruction term swamps (per-step rewards vary by ~0.1, an observation by ~1 per dim).
    ``ensemble`` > 0: that many one-step heads on the latent state (:mod:`mrcom_core.ensemble`) whose
    disagreement tells imagination where the model does not know, with the ``ensemble_elites`` best on held-out
    data (0: all) making the ``elites`` mask; only for a class whose loss trains them (``supports_ensemble``).

    A new config is built by :func:`mrcom_core.registry.model_config`, which applies the model class's
    ``defaults`` (every built-in model's ``ensemble = 5``, ``ensemble_elites = 4``) and its options' own
    defaults.
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
    lambda_var: float = 1.0
    kl_direction: str = "post_prior"
    kl_free_nats: float = 1.0
    reward_loss_weight: float = 1.0
    reward_scale: str = "unit"
    ensemble: int = 0
    ensemble_elites: int = 0
    options: ModelOptions = ModelOptions()

    def __post_init__(self):
        positive = ("obs_dim", "act_dim", "num_scenarios", "context_len", "ctx_width", "ctx_layers", "ctx_heads",
                    "ctx_dim", "u_dim", "h_dim", "hidden_dim", "hidden_layers")
        for name in positive:
            check_int(f"model.{name}", getattr(self, name))
        check_int("model.d_dim", self.d_dim, hint=" (use no_d to remove d)")
        if self.ctx_width % self.ctx_heads:
            raise UserInputError(f"model.ctx_width ({self.ctx_width}) must be divisible by model.ctx_heads "
                                 f"({self.ctx_heads})")
        for name in ("min_std", "lambda_var", "kl_free_nats", "reward_loss_weight"):
            check_number(f"model.{name}", getattr(self, name))
        for name in ("ensemble", "ensemble_elites"):
            check_int(f"model.{name}", getattr(self, name), minimum=0)
            if getattr(self, name) == 1:  # one member (or elite) cannot disagree with itself
                raise UserInputError(f"model.{name} must be 0 or >= 2 (one member has no disagreement), got 1")
        if self.ensemble_elites > self.ensemble:
            raise UserInputError(f"model.ensemble_elites ({self.ensemble_elites}) must be at most model.ensemble "
                                 f"({self.ensemble})")
        for name in ("context_reward", "ctx_reencode"):
            check_bool(f"model.{name}", getattr(self, name))
        if not isinstance(self.model_type, str) or not self.model_type:
            raise UserInputError(f"model.model_type must be a model name, got {self.model_type!r}")
        if self.reward_scale not in REWARD_SCALES:
            raise UserInputError(f"model.reward_scale must be one of {', '.join(REWARD_SCALES)}, "
                                 f"got {self.reward_scale!r}")
        if self.kl_direction not in KL_DIRECTIONS:
            raise UserInputError(f"model.kl_direction must be one of {', '.join(KL_DIRECTIONS)}, "
                                 f"got {self.kl_direction!r}")
        if not isinstance(self.options, ModelOptions):
            raise TypeError(f"ModelConfig.options must be a ModelOptions, got {type(self.options).__name__}")
        shadowed = set(option_names(self.options)) & set(own_fields())
        if shadowed:
            raise TypeError(f"{type(self.options).__name__} repeats ModelConfig's fields {sorted(shadowed)}")
        self.options.check(self)

    @property
    def token_dim(self) -> int:
        return self.obs_dim + self.act_dim + (1 if self.context_reward else 0)

    def to_dict(self) -> dict:
        """Every field, the options' beside the rest (the flat form ``config.json``, checkpoints and ``--set``
        use)."""
        own = {name: getattr(self, name) for name in own_fields()}
        return {**own, **dataclasses.asdict(self.options)}


def own_fields() -> tuple[str, ...]:
    """:class:`ModelConfig`'s fields but ``options``."""
    return tuple(f.name for f in fields(ModelConfig) if f.name != "options")


def option_names(options: ModelOptions | type[ModelOptions]) -> tuple[str, ...]:
    """The fields of a :class:`ModelOptions` (instance or class)."""
    return tuple(f.name for f in fields(options))


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
    """A copy of the dataclass ``config`` with ``overrides`` (field → value or string) applied, validated. For a
    :class:`ModelConfig` a field of its ``options`` goes there (the flat table of :meth:`ModelConfig.to_dict`)."""
    options = getattr(config, "options", None)
    if isinstance(options, ModelOptions):
        nested = {name: value for name, value in overrides.items() if name in option_names(options)}
        unknown = [name for name in overrides if name not in nested and name not in own_fields()]
        if unknown:
            raise UserInputError(f"{prefix}: unknown field {unknown[0]!r} for model_type {config.model_type!r}; "
                                 f"known fields: {', '.join((*own_fields(), *option_names(options)))}")
        overrides = {name: value for name, value in overrides.items() if name not in nested}
        if nested:
            overrides["options"] = apply_overrides(options, nested, prefix)
    changes = {name: value if name == "options" else _coerce(type(config), name, value, prefix)
               for name, value in overrides.items()}
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
