"""The one registry of world-model classes. Everything that lists or builds models derives from it: the
builder (:func:`build_model`), config checking, the CLI's ``model.model_type`` choices and ``mrcom
reproduce``'s method list and table labels.

Adding a model = one new module with a :class:`~mrcom_core.base.BaseWorldModel` subclass + one line in
:data:`MODELS` (or :func:`register_model` at run time, e.g. from a plug-in or a test).
"""

from __future__ import annotations

from .base import BaseWorldModel
from .config import ModelConfig, apply_overrides, option_names, own_fields, preset_values
from .errors import UserInputError
from .models.cadm import CaDM
from .models.mamba import MambaStyle
from .models.mrcom import MrCoM
from .models.rssm import RSSM, ContextRSSM

#: registry name (``model.model_type``) → class; the order is the order of tables and method lists.
MODELS: dict[str, type[BaseWorldModel]] = {
    "mrcom": MrCoM,
    "rssm_ctx": ContextRSSM,
    "rssm": RSSM,
    "cadm": CaDM,
    "mamba": MambaStyle,
}


def register_model(name: str, cls: type[BaseWorldModel]) -> type[BaseWorldModel]:
    """Add ``cls`` under ``name`` (``model.model_type=name`` then builds it); returns ``cls``."""
    if not (isinstance(cls, type) and issubclass(cls, BaseWorldModel)):
        raise TypeError(f"register_model({name!r}, …): {cls!r} is not a BaseWorldModel subclass")
    if name in MODELS and MODELS[name] is not cls:
        raise ValueError(f"a model is already registered as {name!r} ({MODELS[name].__name__})")
    MODELS[name] = cls
    return cls


def unregister_model(name: str) -> None:
    """Remove ``name`` from the registry (a no-op when it is not there)."""
    MODELS.pop(name, None)


def model_names() -> tuple[str, ...]:
    return tuple(MODELS)


def model_class(name: str) -> type[BaseWorldModel]:
    """The class registered as ``name``; a :class:`UserInputError` naming the field otherwise."""
    if name not in MODELS:
        raise UserInputError(f"model.model_type must be one of {', '.join(MODELS)}, got {name!r}")
    return MODELS[name]


def owners(field: str) -> tuple[str, ...]:
    """The registered models whose options have ``field``."""
    return tuple(n for n, c in MODELS.items() if field in option_names(c.Options))


def check_fields(name: str, fields: dict | list) -> None:
    """Refuse a field that is neither shared nor an option of the model registered as ``name``, naming the models
    whose option it is (a :class:`UserInputError`; a field of no model is left to :func:`apply_overrides`)."""
    cls = model_class(name)
    for field in fields:
        if field not in own_fields() and field not in option_names(cls.Options) and owners(field):
            raise UserInputError(f"model.{field} applies to {', '.join(owners(field))}, not {name}")


def check_config(config: ModelConfig) -> ModelConfig:
    """``config`` if its ``model_type`` is registered, its options are that class's and it sets no ensemble for a
    class whose loss trains none (else a :class:`UserInputError` naming the field)."""
    cls, name = model_class(config.model_type), config.model_type
    if type(config.options) is not cls.Options:
        raise UserInputError(f"model.model_type={name} takes {cls.Options.__name__}, got "
                             f"{type(config.options).__name__} (build the config with registry.model_config)")
    if config.ensemble and not cls.supports_ensemble:
        honoured_by = ", ".join(n for n, c in MODELS.items() if c.supports_ensemble) or "none registered"
        raise UserInputError(f"model.ensemble applies to models whose loss trains ensemble heads ({honoured_by}), "
                             f"not {name}")
    return config


def model_config(preset: str = "small", ablations: tuple[str, ...] | list[str] = (),
                 overrides: dict | None = None, **data_dims) -> ModelConfig:
    """A checked :class:`ModelConfig` from, in order of precedence (last wins): the model class's own
    ``defaults`` and options (the class named by ``overrides["model_type"]``, else ``mrcom``), the preset,
    ablation names, data dims and field overrides. An ``ensemble`` override without ``ensemble_elites`` keeps the
    default elites count where it fits (``ensemble=3``: 3 elites; ``ensemble=0``: none)."""
    overrides = dict(overrides or {})
    name = str(overrides.pop("model_type", ModelConfig.model_type))
    cls = model_class(name)
    sized = preset_values(preset, ablations)
    check_fields(name, [*sized, *overrides])
    config = apply_overrides(ModelConfig(model_type=name, options=cls.Options()),
                             {**cls.defaults, **sized, **data_dims})
    if "ensemble" in overrides and "ensemble_elites" not in overrides:  # a smaller ensemble keeps what elites it can
        members = apply_overrides(ModelConfig(), {"ensemble": overrides["ensemble"]}).ensemble
        overrides = {**overrides, "ensemble_elites": min(config.ensemble_elites, members)}
    return check_config(apply_overrides(config, overrides))


def load_config(saved: dict) -> ModelConfig:
    """The checked :class:`ModelConfig` a run saved (:meth:`ModelConfig.to_dict`'s flat table: every shared field
    and the options of its ``model_type``); a field of another model's options is refused."""
    name = str(saved.get("model_type", ModelConfig.model_type))
    check_fields(name, saved)
    return check_config(apply_overrides(ModelConfig(model_type=name, options=model_class(name).Options()),
                                        {k: v for k, v in saved.items() if k != "model_type"}))


def build_model(config: ModelConfig, obs_mean=None, obs_std=None, reward_stats=None) -> BaseWorldModel:
    """The world model of ``config.model_type``, with the dataset's observation statistics (per-dim mean and
    std) and reward statistics (``(mean, std)``, used under ``config.reward_scale="unit"``)."""
    return model_class(check_config(config).model_type)(config, obs_mean=obs_mean, obs_std=obs_std,
                                                        reward_stats=reward_stats)


def history_steps(config: ModelConfig) -> int:
    """Real steps of history before each training window / in each adaptation prompt for ``config``'s model
    (:meth:`~mrcom_core.base.BaseWorldModel.history_steps`: the context length, longer for recurrent ones)."""
    return model_class(config.model_type).history_steps(config)
