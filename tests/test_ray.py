"""The executors on a real local Ray instance: the same graph semantics as the local pool, a task whose worker
dies is retried, tasks spread over a two-node cluster, and a ``smoke`` reproduction through Ray gives the local
run's tables."""

import csv
import os

import pytest
import ray  # the cluster extra, which the dev setup installs

from mrcom_train.executors import LocalExecutor, RayExecutor, Task


@pytest.fixture(scope="module")
def local_ray():
    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import this test module
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"MUJOCO_GL": "disable"}})
    yield
    ray.shutdown()


def _write(tmp, name, value):
    (tmp / name).write_text(str(value))
    return value


def _fail():
    raise ValueError("this task always fails")


def _graph(tmp):
    """``a`` → ``b``; ``bad`` raises → ``after_bad`` is skipped; ``c`` on its own."""
    return [Task("a", _write, (tmp, "a", 1)), Task("b", _write, (tmp, "b", 2), ("a",)), Task("bad", _fail),
            Task("after_bad", _write, (tmp, "after_bad", 3), ("bad",)), Task("c", _write, (tmp, "c", 4))]


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_failed_task_is_reported_its_dependents_skipped_and_the_others_go_on(executor, tmp_path, request):
    if executor == "ray":
        request.getfixturevalue("local_ray")
    run = (LocalExecutor(2) if executor == "local" else RayExecutor()).run
    seen = []
    outcome = run(_graph(tmp_path), lambda task, result, error: seen.append(task.key))
    assert outcome.results == {"a": 1, "b": 2, "c": 4}
    assert outcome.failures == {"bad": "ValueError: this task always fails", "after_bad": "skipped: bad failed"}
    assert seen.index("a") < seen.index("b") and set(seen) == {"a", "b", "bad", "after_bad", "c"}
    assert not (tmp_path / "after_bad").exists() and (tmp_path / "b").read_text() == "2"


def test_training_asks_for_a_gpu_only_where_the_cluster_has_one():
    from mrcom_train.executors import ray_resources

    train, cell = Task("train", _fail, gpu=True), Task("cell", _fail)
    assert ray_resources(train, 0) == ray_resources(cell, 4) == {"num_cpus": 1, "num_gpus": 0}
    assert ray_resources(train, 4) == {"num_cpus": 1, "num_gpus": 1}


def test_a_task_whose_worker_dies_is_retried_and_the_run_completes(local_ray, tmp_path):
    marker = tmp_path / "killed-once"

    def dies_first_time():
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), 9)  # the worker process dies mid-task, as on a lost node
        return "done"

    outcome = RayExecutor().run([Task("fragile", dies_first_time), Task("next", lambda: "ok", (), ("fragile",))])
    assert outcome.results == {"fragile": "done", "next": "ok"} and outcome.failures == {}
    assert marker.exists()


def test_tasks_spread_over_the_nodes_of_a_cluster():
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        def where():
            import time

            time.sleep(1.0)  # both run at once: one CPU per node
            return ray.get_runtime_context().get_node_id()

        outcome = RayExecutor(address=cluster.address).run([Task(f"t{i}", where) for i in range(2)])
        assert outcome.failures == {} and len(set(outcome.results.values())) == 2
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_smoke_reproduction_through_ray_gives_the_local_tables(tmp_path):
    from mrcom_train.cli import main

    args = ["reproduce", "--table", "1", "--budget", "smoke", "--splits", "t1-a5b20", "--arms", "cadm,sac",
            "--domains", "cheetah", "--workers", "2", "--no-progress"]
    main([*args, "--out", str(tmp_path / "local")])
    if ray.is_initialized():
        ray.shutdown()
    main([*args, "--executor", "ray", "--out", str(tmp_path / "ray")])  # a local instance
    tables = {}
    for kind in ("local", "ray"):
        with open(tmp_path / kind / "t1-a5b20" / "table.csv") as f:
            tables[kind] = list(csv.DictReader(f))
    assert tables["ray"] == tables["local"] and len(tables["local"]) == 2 * 4  # ranges × (2 arms + 2 floors)
    for name in ("errors.csv", "table.md"):
        local, through_ray = (tmp_path / kind / "t1-a5b20" / name for kind in ("local", "ray"))
        assert through_ray.read_text() == local.read_text()
    # a rerun after completion does no work
    from mrcom_train.experiments.reproduce import run_reproduction

    lines = []
    run_reproduction(1, "smoke", 1, tmp_path / "ray", splits=("t1-a5b20",), arms=("cadm", "sac"),
                     domains=("cheetah",), executor="ray", workers=2, log=lines.append)
    assert lines == []


def test_bad_executor_options_exit_2_with_one_line(tmp_path, capsys):
    from mrcom_train.cli import main

    with pytest.raises(SystemExit) as e:
        main(["reproduce", "--table", "1", "--ray-address", "auto", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--ray-address needs --executor ray" in capsys.readouterr().err


def test_collect_through_ray_writes_the_local_dataset(tmp_path):
    from mrcom_train.cli import main
    from mrcom_train.datasets.dataset import Dataset

    args = ["collect", "--split", "t1-a5b20", "--domains", "cheetah,walker", "-n", "2", "-k", "2", "--episode-length",
            "40", "--no-progress"]
    main([*args, "--workers", "2", "--out", str(tmp_path / "local")])
    if ray.is_initialized():
        ray.shutdown()
    main([*args, "--executor", "ray", "--workers", "2", "--out", str(tmp_path / "ray")])
    local, through_ray = Dataset(tmp_path / "local"), Dataset(tmp_path / "ray")
    assert len(through_ray.episodes) == len(local.episodes) == 8
    for i in range(8):
        a, b = local.episode(i), through_ray.episode(i)
        assert all((a[k] == b[k]).all() for k in ("obs", "action", "reward"))
