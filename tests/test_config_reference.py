"""docs/config.md is what the config dataclasses give (python -m mrcom_train.config_reference docs/config.md)."""

import dataclasses
from pathlib import Path

from mrcom_train.config_reference import render

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def test_the_committed_reference_is_the_generated_one():
    assert DOC.read_text() == render(), "docs/config.md is stale: python -m mrcom_train.config_reference docs/config.md"


def test_every_field_of_every_config_is_listed_once():
    from mrcom_core.config import ModelConfig
    from mrcom_core.registry import MODELS
    from mrcom_train.agents.sac import SACConfig
    from mrcom_train.datasets.collect_config import CollectConfig
    from mrcom_train.rl.adapt_config import AdaptConfig
    from mrcom_train.training.config import TrainConfig

    text = render()
    options = {m.Options for m in MODELS.values() if dataclasses.fields(m.Options)}  # each model's own switches
    for cls in (ModelConfig, *options, TrainConfig, AdaptConfig, CollectConfig, SACConfig):
        section = text.split(f"(`{cls.__name__}`)")[1].split("\n## ")[0]
        for f in dataclasses.fields(cls):
            listed = 0 if f.name == "options" else 1  # ModelConfig's options are the sections of their own
            assert section.count(f"| `{f.name}` |") == listed, (cls.__name__, f.name)
    assert "## Models without options of their own\n\n`cadm`" in text
    assert ":class:" not in text and "``" not in text
