"""The graph semantics every executor shares (:func:`mrcom_train.executors.run_graph`), in this process; the
pool and Ray run the same graph in tests/test_ray.py."""

import pytest

from mrcom_core.errors import UserInputError
from mrcom_train.executors import LocalExecutor, Task, error_line, make_executor


def _value(v):
    return v


def _fail():
    raise ValueError("no luck")


def test_tasks_run_after_their_dependencies_and_a_failure_skips_only_its_dependents():
    order = []
    graph = [Task("b", _value, (2,), ("a",)), Task("a", _value, (1,)), Task("bad", _fail),
             Task("after", _value, (3,), ("bad", "a")), Task("c", _value, (4,), ("b",))]
    outcome = LocalExecutor(1).run(graph, lambda task, result, error: order.append(task.key))
    assert outcome.results == {"a": 1, "b": 2, "c": 4}
    assert outcome.failures == {"bad": "ValueError: no luck", "after": "skipped: bad failed"}
    assert order.index("a") < order.index("b") < order.index("c") and len(order) == 5


def test_bad_graphs_and_options_are_refused():
    with pytest.raises(ValueError, match="depend on each other in a cycle"):
        LocalExecutor(1).run([Task("x", _value, (1,), ("y",)), Task("y", _value, (1,), ("x",))])
    with pytest.raises(ValueError, match="depends on an unknown task 'nope'"):
        LocalExecutor(1).run([Task("x", _value, (1,), ("nope",))])
    with pytest.raises(ValueError, match="task keys repeat"):
        LocalExecutor(1).run([Task("x", _value, (1,)), Task("x", _value, (2,))])
    with pytest.raises(UserInputError, match="--executor must be one of local, ray"):
        make_executor("slurm")
    with pytest.raises(UserInputError, match="--workers must be an integer >= 1"):
        make_executor("local", 0)


def test_an_error_is_one_line():
    assert error_line(ValueError("first\nsecond line")) == "ValueError: second line"
    assert error_line(RuntimeError("Traceback ...\n  File x\nKeyError: 'obs'")) == "KeyError: 'obs'"
    assert error_line(KeyError()) == "KeyError"
