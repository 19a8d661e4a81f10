"""Wrap an exported one-step body into an ONNX ``Loop``: the H-step ``rollout`` graphs without unrolling.

Tracing H steps into one graph makes the export H times slower and fixes H at export time. Here the body
(:class:`~.graphs.RolloutBody`: one :class:`~.graphs.Step` on step ``t`` of the per-step inputs) is exported
once and becomes the body of a ``Loop`` node whose trip count is ``actions.shape[1]`` (``noise_action`` for
the policy rollout), so one export serves every horizon::

    H = Gather(Shape(actions), 1)
    u', d', h', obs', keys', values', obs[H,B,D], reward[H,B] = Loop(H, "", u, d, h, obs, keys, values)
    obs_seq = Transpose(obs, [1, 0, 2]); reward_seq = Transpose(reward, [1, 0])

The body reads the per-step inputs from the enclosing graph (ONNX lets a subgraph use outer values); every
other name in it is prefixed with ``loop/`` so it cannot shadow an outer name.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx
from onnx import TensorProto, helper

PREFIX = "loop/"
_CARRIED = ("u", "d", "h", "obs", "keys", "values")


def _rename(graph: onnx.GraphProto, keep: set[str]) -> None:
    """Prefix every value, initializer and node name of ``graph`` except ``keep`` (and the empty name)."""

    def new(name: str) -> str:
        return name if not name or name in keep else PREFIX + name

    for node in graph.node:
        node.input[:] = [new(n) for n in node.input]
        node.output[:] = [new(n) for n in node.output]
        node.name = PREFIX + node.name
    for group in (graph.input, graph.output, graph.value_info):
        for value in group:
            value.name = new(value.name)
    for tensor in graph.initializer:
        tensor.name = new(tensor.name)


def _value(name: str, shape: Sequence, elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(shape))


def wrap_in_loop(body: onnx.ModelProto, per_step: Sequence[str], inputs: Sequence[tuple[str, Sequence]],
                 outputs: Sequence[tuple[str, Sequence]], scanned: Sequence[str]) -> onnx.ModelProto:
    """The ``Loop`` model around ``body`` (an exported :class:`~.graphs.RolloutBody`).

    ``body`` has every input of its spec (``t``, the carried state, ``per_step``); ``per_step``: the body
    inputs read from the outer graph (the first one's axis 1 is the horizon);
    ``inputs``/``outputs``: the outer graph's (name, shape) in order, shapes with symbolic dims as strings;
    ``scanned``: the outer outputs stacked over the steps (``obs_seq``, ``reward_seq``[, ``action_seq``]),
    in the order the body emits them after the carried state (``obs`` first: the step's new observation).
    """
    graph = onnx.GraphProto()
    graph.CopyFrom(body.graph)
    _rename(graph, set(per_step))
    by_name = {v.name: v for v in graph.input}  # every input of the body's spec (the exporter keeps unread ones)
    t, kept = by_name[PREFIX + "t"], [by_name[PREFIX + n] for n in _CARRIED]
    body_outputs = list(graph.output)
    carried, per_step_out = body_outputs[: len(_CARRIED)], body_outputs[len(_CARRIED):]
    graph.node.extend([helper.make_node("Identity", ["loop/cond_in"], ["loop/cond_out"], name="loop/cond"),
                       helper.make_node("Identity", [carried[3].name], ["loop/obs_step"], name="loop/obs_step")])
    del graph.input[:]
    graph.input.extend([t, _value("loop/cond_in", [], TensorProto.BOOL), *kept])
    obs_step = onnx.ValueInfoProto()
    obs_step.CopyFrom(carried[3])
    obs_step.name = "loop/obs_step"
    del graph.output[:]
    graph.output.extend([_value("loop/cond_out", [], TensorProto.BOOL), *carried, obs_step, *per_step_out])
    graph.name = "loop_body"

    out_names = [n for n, _ in outputs]
    next_names = {"u": "u_next", "d": "d_next", "h": "h_next", "obs": "loop_obs_last", "keys": "keys_next",
                  "values": "values_next"}
    steps_names = [f"loop_{n}_steps" for n in scanned]
    nodes = [
        helper.make_node("Shape", [per_step[0]], ["loop_shape"], name="horizon_shape"),
        helper.make_node("Constant", [], ["loop_axis"], name="horizon_axis",
                         value=helper.make_tensor("loop_axis_value", TensorProto.INT64, [], [1])),
        helper.make_node("Gather", ["loop_shape", "loop_axis"], ["loop_horizon"], name="horizon", axis=0),
        helper.make_node("Loop", ["loop_horizon", "", *_CARRIED], [next_names[n] for n in _CARRIED] + steps_names,
                         name="rollout_loop", body=graph),
    ]
    rank = dict(outputs)
    for name, steps in zip(scanned, steps_names, strict=True):
        perm = [1, 0] + list(range(2, len(rank[name])))
        nodes.append(helper.make_node("Transpose", [steps], [name], name=f"{name}_transpose", perm=perm))
    outer = helper.make_graph(nodes, "rollout", [_value(n, s) for n, s in inputs],
                              [_value(n, rank[n]) for n in out_names])
    model = helper.make_model(outer, opset_imports=list(body.opset_import), producer_name="mrcom")
    model.ir_version = body.ir_version
    return model
