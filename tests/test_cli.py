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
    assert cli_options.DomainChoice().choices == tuple(DOMAINS)
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


def test_a_run_config_json_is_accepted_back_by_config(data, tmp_path):
    import json

    main(["train", "--data", str(data), "--out", str(tmp_path / "a"), "--preset", "tiny", "--steps", "2",
          "--set", "model.u_dim=5", "--set", "train.lr=0.002", "--no-progress"])
    main(["train", "--data", str(data), "--out", str(tmp_path / "b"), "--config", str(tmp_path / "a" / "config.json"),
          "--steps", "3", "--no-progress"])
    a, b = (json.loads((tmp_path / r / "config.json").read_text()) for r in ("a", "b"))
    assert a["model"] == b["model"] and b["model"]["u_dim"] == 5
    assert {**a["train"], "steps": 3} == b["train"] and b["train"]["lr"] == 0.002

    main(["adapt", "--model-free", "--domain", "walker", "--env-steps", "40", "--episode-length", "20",
          "--set", "learning_starts=20", "--set", "eval_episodes=1", "--set", "batch_size=8", "--no-progress",
          "--out", str(tmp_path / "c")])
    main(["adapt", "--config", str(tmp_path / "c" / "config.json"), "--env-steps", "60", "--no-progress",
          "--out", str(tmp_path / "d")])
    c, d = (json.loads((tmp_path / r / "config.json").read_text()) for r in ("c", "d"))
    assert {**c, "env_steps": 60} == d
    for run in "abcd":  # each single run draws its learning curves
        assert (tmp_path / run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(SystemExit) as done:
        main(["adapt", "--config", str(tmp_path / "bad.json"), "--model-free", "--out", str(tmp_path / "e")])
    assert done.value.code == 2


def test_an_overshoot_past_the_window_is_refused_unless_it_is_the_presets_own(data, tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["train", "--data", str(data), "--out", str(tmp_path / "a"), "--preset", "tiny", "--steps", "1",
              "--set", "model.overshoot_horizon=12"])
    assert done.value.code == 2 and "longer than the training window" in capsys.readouterr().err
    main(["train", "--data", str(data), "--out", str(tmp_path / "b"), "--preset", "tiny", "--steps", "1",
          "--set", "model.overshoot_horizon=15", "--set", "train.window_len=8", "--no-progress"])  # tiny's own pair
