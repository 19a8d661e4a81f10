import csv
import os
import subprocess
import sys

import pytest

from mrcom_train.experiments.reproduce import run_reproduction
from mrcom_train.experiments.tables import ERROR_HORIZON

ENV = {**os.environ, "MUJOCO_GL": "disable", "PYTHONWARNINGS": "ignore"}


def test_smoke_reproduction_writes_a_complete_table_and_resumes(tmp_path, monkeypatch):
    from mrcom_core.registry import MODELS
    from mrcom_train.experiments import reproduce

    assert set(reproduce.model_methods()) == set(MODELS)  # every registered model is a method; three run here
    _only_methods(monkeypatch, reproduce, "mrcom", "cadm", "mamba")
    logs = []
    results = run_reproduction(1, "smoke", 1, tmp_path, splits=("t1-a5b20",), log=logs.append)
    cells = results["t1-a5b20"]
    assert set(cells) == {"in", "ood"}
    for rng in cells.values():
        assert set(rng) == {"hopper", "walker", "cheetah"}
        for methods in rng.values():
            assert set(methods) == {"mrcom", "cadm", "mamba", "sac", "sac-g", "oracle"}
            assert all(0 <= v[0] <= 100 for v in methods.values())
    split = tmp_path / "t1-a5b20"
    table = (tmp_path / "table1.md").read_text()
    assert table.count("| Hopper |") == 4
    header = "| Ours | CaDM | MAMBA | SAC (G=1) | SAC (same G) | Oracle model | _zero-action_ | _random_ |"
    assert header in table
    for kind in ("latents at their means", "latents sampled"):
        assert f"15-step open-loop prediction error, {kind}" in table
    assert table.count("| All |") == 2
    with open(split / "table.csv") as f:
        rows = list(csv.DictReader(f))
    from mrcom_core.io.files import read_json

    methods = {"mrcom", "cadm", "mamba", "sac", "sac-g", "oracle", "floor:zero", "floor:random"}
    assert len(rows) == 2 * 3 * 8 and {r["method"] for r in rows} == methods
    # the two model-free arms: G = 1, and the model-based arms' G (equal compute)
    g = {m: read_json(split / "adapt" / "in" / "walker" / m / "s0" / "config.json", "config")["updates_per_step"]
         for m in ("sac", "sac-g", "mrcom", "oracle")}
    assert g["sac"] == 1 and g["sac-g"] == g["mrcom"] == g["oracle"] == 2
    # the floors are those of each cell's own target scenario, as the adaptation run measured them
    cell = read_json(split / "adapt" / "in" / "walker" / "sac" / "s0" / "result.json", "result")
    zero = next(r for r in rows if r["range"] == "in" and r["domain"] == "walker" and r["method"] == "floor:zero")
    assert float(zero["mean"]) == pytest.approx(cell["floors"]["zero"], abs=0.006)
    for png in ("curves_in.png", "curves_ood.png", "prediction_error.png"):
        assert (split / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(line.startswith("[t1-a5b20] adapted ") for line in logs)
    again = []
    run_reproduction(1, "smoke", 1, tmp_path, splits=("t1-a5b20",), log=again.append)
    assert again == []  # every finished cell is skipped
    import shutil

    for cell in ("in/walker/cadm/s0", "ood/cheetah/sac/s0"):  # rerun two cells, two at a time
        shutil.rmtree(split / "adapt" / cell)
    parallel = []
    rerun = run_reproduction(1, "smoke", 1, tmp_path, splits=("t1-a5b20",), workers=2, log=parallel.append)
    assert parallel[0] == "2 tasks to do (2 adaptation cells), on 2 local worker processes" and len(parallel) == 3
    assert rerun["t1-a5b20"]["in"]["walker"]["cadm"] == cells["in"]["walker"]["cadm"]  # seeded: same result
    assert rerun["t1-a5b20"]["ood"]["cheetah"]["sac"] == cells["ood"]["cheetah"]["sac"]


def _only_methods(monkeypatch, reproduce, *keep: str) -> set[str]:
    """Restrict ``mrcom reproduce``'s methods to ``keep`` (to keep a test short); returns them."""
    every = reproduce.model_methods
    monkeypatch.setattr(reproduce, "model_methods", lambda ablations=False: {
        k: v for k, v in every(ablations).items() if k in keep})
    return set(keep)


def test_a_budget_can_leave_domains_out(tmp_path, monkeypatch):
    """A budget's ``domains`` bound what is collected, adapted and tabulated (``small`` leaves hopper out)."""
    from dataclasses import replace

    from mrcom_core.io.files import read_json
    from mrcom_train.datasets.dataset import Dataset
    from mrcom_train.experiments import reproduce

    assert reproduce.BUDGETS["small"].domains == ("walker", "cheetah")
    monkeypatch.setitem(reproduce.BUDGETS, "smoke", replace(reproduce.BUDGETS["smoke"], domains=("cheetah",)))
    _only_methods(monkeypatch, reproduce, "mrcom")  # (every model's part of the protocol: the smoke test above)
    results = run_reproduction(1, "smoke", 1, tmp_path, splits=("t1-a5b20",), log=lambda s: None)
    assert all(set(rng) == {"cheetah"} for rng in results["t1-a5b20"].values())
    split = tmp_path / "t1-a5b20"
    assert {s.domain for s in Dataset(split / "data").scenarios} == {"cheetah"}
    assert {s.domain for s in Dataset(split / "eval-ood").scenarios} == {"cheetah"}
    assert sorted(p.name for p in (split / "adapt" / "in").iterdir()) == ["cheetah"]
    table = (tmp_path / "table1.md").read_text()
    assert "| Cheetah |" in table and "| Walker |" not in table and "| Hopper |" not in table
    assert read_json(tmp_path / "config.json", "config")["budget_settings"]["domains"] == ["cheetah"]


def test_domains_and_set_customize_the_adaptation_cells(tmp_path, capsys):
    """``--domains`` limits the cells (not what is collected), ``--set`` changes every arm's adaptation setting but
    SAC (G=1)'s G; both are recorded; a setting the protocol owns is refused with one line."""
    from mrcom_core.io.files import read_json
    from mrcom_train.cli import main

    main(["reproduce", "--table", "1", "--budget", "smoke", "--splits", "t1-a5b20", "--arms", "sac,sac-g",
          "--domains", "cheetah", "--set", "updates_per_step=3", "--set", "real_ratio=0.2", "--out", str(tmp_path)])
    cells = tmp_path / "t1-a5b20" / "adapt" / "in"
    assert sorted(p.name for p in cells.iterdir()) == ["cheetah"]
    g = {arm: read_json(cells / "cheetah" / arm / "s0" / "config.json", "config")["updates_per_step"]
         for arm in ("sac", "sac-g")}
    assert g == {"sac": 1, "sac-g": 3}
    settings = read_json(tmp_path / "config.json", "config")["budget_settings"]
    assert settings["adapt_domains"] == ["cheetah"] and settings["adapt"]["real_ratio"] == 0.2
    table = (tmp_path / "table1.md").read_text()
    assert "| Cheetah |" in table and "| Walker |" not in table
    capsys.readouterr()
    for sets, message in ((["seed=3"], "--set seed: the protocol sets it"),
                          (["imagined_reward=true"], "imagined_reward=true needs"),  # smoke's hopper, before any work
                          (["updates_per_step=4", "real_ratio=0.2"], "it ran with updates_per_step=3, now 4")):
        domain = "cheetah" if "real_ratio=0.2" in sets else "hopper"  # the finished cells; or a domain it refuses
        with pytest.raises(SystemExit) as info:
            main(["reproduce", "--table", "1", "--budget", "smoke", "--splits", "t1-a5b20", "--arms", "sac,sac-g",
                  "--domains", domain, *(x for s in sets for x in ("--set", s)), "--out", str(tmp_path)])
        lines = capsys.readouterr().err.strip().splitlines()
        assert info.value.code == 2 and len(lines) == 1 and message in lines[0], lines
    # the model-free cells never read the imagination settings, so another real ratio reuses them as they are
    finished = {p: p.stat().st_mtime_ns for p in cells.glob("cheetah/*/s0/result.json")}
    main(["reproduce", "--table", "1", "--budget", "smoke", "--splits", "t1-a5b20", "--arms", "sac,sac-g",
          "--domains", "cheetah", "--set", "updates_per_step=3", "--set", "real_ratio=0.7", "--out", str(tmp_path)])
    assert len(finished) == 2 and {p: p.stat().st_mtime_ns for p in finished} == finished
    # a world model's settings leave the arms without one alone
    from mrcom_train.experiments.budgets import BUDGETS, customized
    from mrcom_train.experiments.tasks import cell_config as _cell_config

    gated = customized(BUDGETS["smoke"], {"gate": "truncate", "refit": "all"})
    assert _cell_config("t1-a5b20", "in", "cheetah", "sac", 0, gated).gate == "none"
    assert _cell_config("t1-a5b20", "in", "cheetah", "oracle", 0, gated).refit == "none"
    assert _cell_config("t1-a5b20", "in", "cheetah", "mrcom", 0, gated).gate == "truncate"


def test_what_error_writes_the_prediction_error_tables_without_adapting(tmp_path, monkeypatch):
    """``--what error``: every model (and ablation) trained (two at a time in worker processes) and measured, the
    error tables and the error-vs-horizon chart written, no adaptation cell run."""
    from dataclasses import replace

    from mrcom_train.experiments import reproduce

    monkeypatch.setitem(reproduce.BUDGETS, "smoke", replace(reproduce.BUDGETS["smoke"], domains=("cheetah",)))
    every = set(reproduce.model_methods(ablations=True))
    assert {"mamba", reproduce.LITERAL, "w/o d"} <= every  # models and ablations alike; three of them here
    methods = _only_methods(monkeypatch, reproduce, "mrcom", "mamba", reproduce.LITERAL)
    lines: list[str] = []
    assert run_reproduction(1, "smoke", 1, tmp_path, splits=("t1-a5b20",), ablations=True, what="error",
                            workers=2, log=lines.append) == {}
    # 3 datasets, 3 trainings, 3 exports (+ measurements), two at a time
    assert lines[0] == "9 tasks to do (0 adaptation cells), on 2 local worker processes"
    assert sum("] trained " in line for line in lines) == 3 and sum("measured " in line for line in lines) == 3
    split = tmp_path / "t1-a5b20"
    assert not (split / "adapt").exists() and not (tmp_path / "table1.md").exists()
    with open(split / "errors.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["method"] for r in rows} == methods and len(rows) == len(methods) * 2 * 2 * 2  # kind, range, domain
    assert all(float(r["error"]) >= 0 for r in rows)
    text = (tmp_path / "errors1.md").read_text()
    for name in ("Ours", "MAMBA", "Ours (eq. 6 literal)"):
        assert f"| {name} |" in text
    assert "15-step open-loop prediction error, latents sampled" in text and "Cheetah (ood)" in text
    assert (split / "error_vs_horizon.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    errors = reproduce.read_json(split / "errors" / "mamba.json", "errors")
    assert len(errors["sampled"]["ood"]["error_by_step"]) == ERROR_HORIZON
    # a later run of the table's other split into the same folder adds to the summary instead of replacing it
    (tmp_path / "t1-a10b50").mkdir()
    (tmp_path / "t1-a10b50" / "errors.md").write_text("the other split's tables\n")
    run_reproduction(1, "smoke", 1, tmp_path, splits=("t1-a5b20",), ablations=True, what="error", log=lines.append)
    text = (tmp_path / "errors1.md").read_text()
    assert "## t1-a5b20" in text and "## t1-a10b50\n\nthe other split's tables" in text
    assert text.index("## t1-a5b20") < text.index("## t1-a10b50")  # the paper's order


def test_arms_without_a_world_model_need_no_data_training_or_export(tmp_path):
    results = run_reproduction(1, "smoke", 1, tmp_path, splits=("t1-a5b20",), arms=("oracle", "sac-g"),
                               log=lambda s: None)
    split = tmp_path / "t1-a5b20"
    assert {p.name for p in split.iterdir()} >= {"adapt", "table.md"}
    assert not (split / "data").exists() and not (split / "models").exists() and not (split / "exports").exists()
    assert all(set(per) == {"oracle", "sac-g"} for rng in results["t1-a5b20"].values() for per in rng.values())
    table = (tmp_path / "table1.md").read_text()
    assert "| SAC (same G) | Oracle model | _zero-action_ | _random_ |" in table and "open-loop" not in table


def test_mrcom_s_adaptation_variants_run_only_when_named_and_use_its_model(tmp_path):
    from mrcom_core.io.files import read_json

    results = run_reproduction(1, "smoke", 1, tmp_path, splits=("t1-a5b20",), arms=("mrcom+refit-all", "mrcom+follow"),
                               log=lambda s: None)
    split = tmp_path / "t1-a5b20"
    assert sorted(p.name for p in (split / "models").iterdir()) == ["mrcom"]  # trained for the variants' sake
    assert all(set(per) == {"mrcom+refit-all", "mrcom+follow"} for rng in results["t1-a5b20"].values()
               for per in rng.values())
    cell = split / "adapt" / "in" / "walker" / "mrcom+refit-all" / "s0"
    assert read_json(cell / "config.json", "config")["refit"] == "all"
    assert "refit_updates" in (cell / "metrics.csv").read_text().splitlines()[0] and (cell / "model").is_dir()
    table = (tmp_path / "table1.md").read_text()
    assert "| Ours + refit (all) | Ours + real ratio follows |" in table
    assert "Ours" in (split / "errors.md").read_text()  # MrCoM's model is measured all the same


@pytest.mark.parametrize("args,message", [
    (["--table", "1", "--arms", "oracle,dreamer"], "--arms: unknown arm 'dreamer'"),
    (["--table", "1", "--arms", "sac", "--what", "error"], "--arms names none"),
    (["--table", "1", "--what", "returns"], "Invalid value for '--what'"),
    (["--table", "7"], "Invalid value for '--table': '7'"),
    (["--table", "1", "--budget", "huge"], "Invalid value for '--budget': 'huge'"),
    (["--table", "1", "--splits", "t2-a5"], "not part of table 1"),
    (["--table", "1", "--seeds", "0"], "--seeds must be an integer >= 1"),
])
def test_reproduce_bad_input_exits_2(tmp_path, args, message):
    r = subprocess.run([sys.executable, "-m", "mrcom_train.cli", "reproduce", *args, "--out", str(tmp_path / "r")],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr


def test_adaptation_workers_exit_when_the_driver_is_killed(tmp_path):
    """A SIGKILLed ``mrcom reproduce`` must not leave workers running (and writing into its cells)."""
    import signal
    import time

    script = tmp_path / "driver.py"
    script.write_text(
        "import os, time\n"
        "from mrcom_train.executors import _one_thread\n"
        "from mrcom_train.workers import WorkerPool\n"
        "def cell(_):\n"
        "    print(os.getpid(), flush=True)\n"
        "    time.sleep(120)\n"
        "if __name__ == '__main__':\n"
        "    with WorkerPool(1, _one_thread) as pool:\n"
        "        pool.run(cell, [0])\n")
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=ENV)
    worker = int(driver.stdout.readline())

    def alive(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
        except FileNotFoundError:
            return False

    assert alive(worker)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    deadline = time.monotonic() + 15
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(worker)


def test_the_ablation_outputs_follow_figure_3(tmp_path):
    """With the ablations among the methods, a split also gets the paper's Figure 3: MrCoM, its ablations and
    the literal variant side by side (table and grouped bars), floors included; without them, nothing."""
    from mrcom_train.experiments.reproduce import label
    from mrcom_train.experiments.tables import write_outputs
    from mrcom_train.training.evaluation import KEY

    methods = ["mrcom", "rssm", "w/o d", "w/o context", "literal", "sac"]
    scores = {r: {"cheetah": {m: [10.0 + i, 12.0 + i] for i, m in enumerate(methods)}} for r in ("in", "ood")}
    floors = {(r, "cheetah"): {"zero": [1.0, 1.0], "random": [2.0, 4.0]} for r in ("in", "ood")}
    errors = {m: {k: {r: {KEY: 0.5, f"{KEY}_cheetah": 0.5} for r in ("in", "ood")} for k in ("mean", "sampled")}
              for m in methods[:-1]}
    curves = {(r, "cheetah", m): [[(0, 0.0), (10, 1.0)]] * 2 for r in ("in", "ood") for m in methods}
    write_outputs(tmp_path, "t1-a10b50", scores, floors, errors, curves, methods, label, ("sac",))
    rows = (tmp_path / "ablations.md").read_text().splitlines()
    assert rows[0] == "| | Ours | w/o d | w/o context | Ours (eq. 6 literal) | _zero-action_ | _random_ |"
    assert rows[2] == "| Cheetah (in) | 11.0±1.0 | 13.0±1.0 | 14.0±1.0 | 15.0±1.0 | _1.0±0.0_ | _3.0±1.0_ |"
    assert len(rows) == 4 and (tmp_path / "ablations.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    other = tmp_path / "plain"
    other.mkdir()
    write_outputs(other, "t1-a10b50", scores, floors, errors, curves, ["mrcom", "rssm", "sac"], label, ("sac",))
    assert (other / "table.md").exists() and not (other / "ablations.md").exists()


def test_the_efficiency_table_reads_steps_to_the_reference_return_off_the_curves():
    from mrcom_train.experiments.reproduce import BUDGETS, SAC, SAC_G, label
    from mrcom_train.experiments.tables import efficiency_table, steps_to_reach
    from mrcom_train.experiments.tasks import cell_config as _cell_config

    assert steps_to_reach([(0, 1.0), (10, 5.0), (20, 4.0)], 4.5) == 10
    assert steps_to_reach([(0, 1.0)], 2.0) is None
    curves = {("in", "cheetah", "sac"): [[(0, 0.0), (50, 10.0), (100, 20.0)]],
              ("in", "cheetah", "mrcom"): [[(0, 0.0), (25, 21.0), (50, 5.0)]],
              ("in", "cheetah", "sac-g"): [[(0, 0.0), (50, 3.0)]]}
    lines = efficiency_table(curves, ["cheetah"], ["mrcom", "sac", "sac-g"], label, "sac")
    assert "| cheetah in s0 | 20.0 | 100 | 25 (4.00×) | — |" in lines
    long = BUDGETS["long"]  # SAC (G=1) runs twice as long, every arm evaluated every 2,500 steps
    assert _cell_config("t1-a10b50", "in", "cheetah", SAC, 0, long).env_steps == 100_000
    config = _cell_config("t1-a10b50", "in", "cheetah", SAC_G, 0, long)
    assert config.env_steps == 50_000 and config.eval_every == 2500 and config.updates_per_step == 4
