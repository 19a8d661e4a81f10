"""The command line as a user meets it: choices, help without markup, plain `mrcom`, headers before errors."""

import re

import click
import pytest

from mrcom_train import cli_options
from mrcom_train.cli import cli, main

MARKUP = re.compile(r"``|:(class|func|mod|data|meth|attr):`")


def test_the_option_choices_are_the_library_lists():
    from mrcom_core.config import PRESETS
    from mrcom_export.exporter import FORMATS
    from mrcom_train.datasets.collect_config import POLICIES
    from mrcom_train.experiments.budgets import BUDGETS
    from mrcom_train.scenarios import DOMAINS, SPLITS
    from mrcom_train.scenarios.obs_functions import OBS_FUNCTIONS

    assert cli_options.PRESETS == tuple(PRESETS)
    assert cli_options.POLICIES == POLICIES
    assert cli_options.OBS_FUNCTIONS == OBS_FUNCTIONS
    assert cli_options.EXPORT_FORMATS == (*FORMATS, "all")
    assert cli_options.BUDGET_NAMES == tuple(BUDGETS)
    assert cli_options.DOMAIN_NAMES == tuple(DOMAINS)
    for split in SPLITS.values():
        assert {"train", *split.evaluate} == set(cli_options.RANGES)


def _commands():
    return [(name, command) for name, command in cli.commands.items()]


@pytest.mark.parametrize("name", [n for n, _ in _commands()])
def test_help_has_no_sphinx_markup_and_every_option_says_something(name, capsys):
    main([name, "--help"])  # returns (exit status 0 from the `mrcom` script)
    text = capsys.readouterr().out
    assert not MARKUP.search(text), text
    missing = [p.opts[0] for p in cli.commands[name].params if isinstance(p, click.Option) and not p.help]
    assert not missing, f"mrcom {name}: options without help: {missing}"


def test_plain_mrcom_prints_the_overview_and_exits_0(capsys):
    main([])
    out = capsys.readouterr().out
    assert "Commands:" in out and "train" in out and "adapt" in out


def test_models_lists_aligned_plain_rows(capsys):
    main(["models"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "label", "summary"]
    column = lines[0].index("summary")
    assert all(not MARKUP.search(line) for line in lines)
    assert all(line[column - 2 : column] == "  " and line[column] != " " for line in lines[1:])
    assert {line.split()[0] for line in lines[1:]} >= {"mrcom", "rssm", "rssm_ctx", "cadm", "mamba"}


def test_export_into_a_full_folder_prints_only_the_error(data, tmp_path, capsys):
    main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--preset", "tiny", "--steps", "2",
          "--no-progress"])
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "notes.txt").write_text("mine")
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "export")])
    assert done.value.code == 2
    captured = capsys.readouterr()
    assert "exporting" not in captured.out
    assert captured.err.startswith("mrcom: error:") and "--force" in captured.err


def test_adapt_says_when_the_agent_never_updates_and_names_the_flag(tmp_path, capsys):
    main(["adapt", "--model-free", "--env-steps", "60", "--episode-length", "30", "--no-progress",
          "--set", "learning_starts=100", "--set", "eval_episodes=1", "--out", str(tmp_path / "run")])
    assert "warning: env_steps 60 <= learning_starts 100: the agent never updates" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["adapt", "--out", str(tmp_path / "other")])
    assert "--model-free" in capsys.readouterr().err
