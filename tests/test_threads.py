"""Each command's thread count: --threads, OMP_NUM_THREADS, else the cores other processes leave free."""

import os

import pytest
import torch

from mrcom_core.errors import UserInputError
from mrcom_train.threads import busy_cores, choose_threads, describe, usable_cores


def never_measured():
    raise AssertionError("the load was measured although the thread count was given")


@pytest.mark.parametrize("cores, busy, expected", [(2, 0.0, 2), (2, 0.3, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 2.0, 1),
                                                   (8, 2.4, 6), (8, 9.0, 1), (4, None, 4)])
def test_the_cores_others_leave_free_at_least_one(cores, busy, expected):
    choice = choose_threads(None, {}, cores, lambda: busy)
    assert choice.threads == expected
    assert f"{cores} cores" in choice.reason
    if busy is not None:
        assert f"{busy:.1f} busy" in describe(choice)


def test_a_requested_count_wins_and_nothing_is_measured():
    assert choose_threads(3, {"OMP_NUM_THREADS": "1"}, 2, never_measured).threads == 3
    choice = choose_threads(None, {"OMP_NUM_THREADS": " 4 "}, 2, never_measured)
    assert (choice.threads, choice.reason) == (4, "OMP_NUM_THREADS")
    assert describe(choose_threads(1, {}, 2, never_measured)) == "threads: 1 (--threads)"


@pytest.mark.parametrize("requested, omp, message", [(0, "", "--threads must be an integer >= 1, got 0"),
                                                     (None, "two", "OMP_NUM_THREADS must be a whole number"),
                                                     (None, "0", "OMP_NUM_THREADS must be a whole number")])
def test_bad_counts_are_one_line_naming_the_source(requested, omp, message):
    with pytest.raises(UserInputError, match=message):
        choose_threads(requested, {"OMP_NUM_THREADS": omp}, 2, never_measured)


def test_this_machine_is_read():
    cores = usable_cores()
    assert 1 <= cores <= (os.cpu_count() or 1)
    busy = busy_cores(0.05)
    assert busy is None or 0.0 <= busy <= len(os.sched_getaffinity(0)) + 1e-6


def test_the_cli_prints_and_applies_its_choice(tmp_path, capsys):
    from mrcom_train.cli import main

    before = torch.get_num_threads()
    try:
        main(["collect", "-n", "1", "-k", "1", "--episode-length", "20", "--domains", "hopper", "--no-progress",
              "--threads", "2", "--out", str(tmp_path / "data")])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert capsys.readouterr().out.splitlines()[0] == "threads: 2 (--threads)"
    with pytest.raises(SystemExit) as exit_:
        main(["collect", "--threads", "0", "--out", str(tmp_path / "other")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mrcom: error: --threads must be an integer >= 1, got 0"]
