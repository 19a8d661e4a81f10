"""``docs/config.md``: every config field with its type and default, generated from the dataclasses themselves.

``python -m mrcom_train.config_reference docs/config.md`` writes it; ``tests/test_config_reference.py`` fails when
the committed file differs from what the dataclasses give, so the page cannot drift from the code. Each section is
one dataclass: its docstring (without Sphinx markup), then a table of its fields, with the presets' values where
the presets set them.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
from pathlib import Path

HEADER = """# Config reference

Generated from the config dataclasses by `python -m mrcom_train.config_reference docs/config.md` (a test checks
that this file is what they give). Set a field with `--set` (`mrcom train --set model.u_dim=16 --set
train.lr=1e-3`, `mrcom adapt --set real_ratio=0.2`), a TOML `--config` file (`[model]` and `[train]` tables), or
a run's own `config.json` given back to `--config`.
"""


def plain(text: str) -> str:
    """Text without its Sphinx markup: ``x`` → x, :class:`~a.B` → B, :func:`f` → f."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", lambda m: m.group(1).rsplit(".", 1)[-1], text)
    return text.replace("``", "`")


def _type_name(kind) -> str:
    text = kind.__name__ if isinstance(kind, type) else str(kind)
    return text.replace("typing.", "")


def _value(value) -> str:
    if isinstance(value, tuple):
        value = ",".join(map(str, value)) or "(none)"
    return f"`{value}`"


def _section(title: str, cls, how: str, presets: dict[str, dict] | None = None) -> str:
    doc = plain(typing.cast(str, cls.__doc__ or "")).strip()
    doc = "\n".join(line[4:] if line.startswith("    ") else line for line in doc.splitlines())
    hints = typing.get_type_hints(cls)
    names = list(presets or {})
    head = ["field", "type", "default", *names]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for f in dataclasses.fields(cls):
        if f.name == "options":  # ModelConfig's: each model's options have their own section
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        cells = [f"`{f.name}`", _type_name(hints[f.name]), _value(default)]
        cells += [_value(presets[p][f.name]) if f.name in presets[p] else "" for p in names]
        rows.append("| " + " | ".join(cells) + " |")
    return f"## {title}\n\n{how}\n\n{doc}\n\n" + "\n".join(rows) + "\n"


def _option_sections() -> list[str]:
    """One section per options class of the registered models (the models that share it in its title)."""
    from mrcom_core.registry import MODELS

    users: dict[type, list[str]] = {}
    for name, cls in MODELS.items():
        users.setdefault(cls.Options, []).append(name)
    sections, plain_models = [], []
    for options, names in users.items():
        if not dataclasses.fields(options):
            plain_models += names
            continue
        listed = ", ".join(f"`{n}`" for n in names)
        sections.append(_section(f"Model options of {listed} (`{options.__name__}`)", options,
                                 f"`mrcom train --set model.FIELD=VALUE` with `model.model_type` {listed} "
                                 f"(`{options.__module__.replace('.', '/')}.py`); models without them refuse them."))
    if plain_models:
        sections.append("## Models without options of their own\n\n" + ", ".join(f"`{n}`" for n in plain_models)
                        + ": only the shared fields above.\n")
    return sections


def render() -> str:
    """The whole page."""
    from mrcom_core.config import PRESETS, ModelConfig

    from .agents.sac import SACConfig
    from .datasets.collect_config import CollectConfig
    from .rl.adapt_config import AdaptConfig
    from .training.config import TRAIN_PRESETS, TrainConfig

    sections = [
        _section("Model (`ModelConfig`)", ModelConfig, "`mrcom train --set model.FIELD=VALUE`; `--preset` sets the "
                 "columns on the right (`mrcom_core/config.py`).", PRESETS),
        *_option_sections(),
        _section("Training (`TrainConfig`)", TrainConfig, "`mrcom train --set train.FIELD=VALUE` (and `--steps`, "
                 "`--batch-size`, `--device`); `--preset` sets the columns on the right.", TRAIN_PRESETS),
        _section("Adaptation (`AdaptConfig`)", AdaptConfig, "`mrcom adapt --set FIELD=VALUE` (and its flags), "
                 "`mrcom reproduce --set FIELD=VALUE` for every arm."),
        _section("Data collection (`CollectConfig`)", CollectConfig, "`mrcom collect`'s flags."),
        _section("SAC (`SACConfig`)", SACConfig, "The agent of `mrcom adapt` (its `sac_hidden` and `batch_size`) "
                 "and of `mrcom collect --policy sac` (its `--sac-*` flags)."),
    ]
    return HEADER + "\n" + "\n".join(sections)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m mrcom_train.config_reference OUT.md")
    Path(sys.argv[1]).write_text(render())
