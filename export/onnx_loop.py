"""Wrap an exported one-step body into an ONNX ``Loop``: the H-step ``rollout`` graphs without unrolling.

Tracing H steps into one graph makes the export H times slower and fixes H at export time. Here the body
(:class:`~.graphs.RolloutBody`: one imagined step on step ``t`` of the per-step inputs) is exported once and
becomes the body of a ``Loop`` node whose trip count is ``actions.shape[1]`` (``noise_action`` for the
policy rollout), so one export serves every horizon. For a streaming context encoder the loop carries only
the rollout's own keys/values and reads the start cache in place (see :class:`~.graphs.RolloutBody`)::

    H = Gather(Shape(actions), 1)
    rk_L = Squeeze(Slice(keys, [L, 0], [L + 1, 0], axes [0, 3]), 0)          (per layer L, and values: no slots)
    u', d', h', obs', rk_0, rv_0, …, obs[H,B,D], reward[H,B] = Loop(H, "", u, d, h, obs, rk_0, rv_0, …)
    keys_next = Slice(Concat(keys, Concat(Unsqueeze(rk_L', 0) …), axis 3), -m, axis 3)   (the FIFO, built once)
    obs_seq = Transpose(obs, [1, 0, 2]); reward_seq = Transpose(reward, [1, 0])

(a model without that encoder carries ``keys``/``values`` themselves). The body reads the per-step inputs and
the start cache from the enclosing graph (ONNX lets a subgraph use outer values); every other name in it is
prefixed with ``loop/`` so it cannot shadow an outer name. Nodes of the body that depend only on outer
values (the start cache split per layer, its transposes) are computed once before the loop
(:func:`hoist_invariants`) instead of on every step.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx
from onnx import TensorProto, helper

PREFIX = "loop/"
HOIST = "hoist/"


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


def _ints(name: str, values: Sequence[int]) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=name,
                            value=helper.make_tensor(name + "_value", TensorProto.INT64, [len(values)], list(values)))


def hoist_invariants(body: onnx.GraphProto, outer: set[str]) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Loop-invariant code motion: remove from ``body`` every node that depends on the enclosing graph's
    values ``outer`` and on constants only (no loop-carried value, no subgraph, not a body output), and return
    those nodes with copies of the constants they read (renamed ``hoist/…``), to run once before the loop.
    Nodes of constants alone stay where they are (ONNX Runtime folds them in the body)."""
    inits = {t.name: t for t in body.initializer}
    producer = {o: n for n in body.node for o in n.output}
    outputs = {v.name for v in body.output}
    const, invariant, moved = set(inits), set(outer), []
    for node in body.node:
        inputs = [i for i in node.input if i]
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            continue
        if all(i in const for i in inputs):
            const.update(node.output)
        elif all(i in const or i in invariant for i in inputs) and not outputs.intersection(node.output):
            invariant.update(node.output)
            moved.append(node)
    if not moved:
        return [], []
    copies: dict[str, onnx.NodeProto | onnx.TensorProto] = {}

    def need(name: str) -> None:  # a copy of constant ``name`` (and what it is made from) outside the loop
        if name in copies:
            return
        if name in inits:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(inits[name])
            tensor.name = HOIST + name
            copies[name] = tensor
            return
        node = onnx.NodeProto()
        node.CopyFrom(producer[name])
        for i in node.input:
            if i:
                need(i)
        node.input[:] = [HOIST + i if i else i for i in node.input]
        node.output[:] = [HOIST + o for o in node.output]
        node.name = HOIST + node.name
        for o in producer[name].output:
            copies[o] = node

    hoisted = []
    for node in moved:
        for i in node.input:
            if i in const:
                need(i)
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [HOIST + i if i in const else i for i in node.input]
        hoisted.append(copy)
    keep = [n for n in body.node if all(n is not m for m in moved)]
    del body.node[:]
    body.node.extend(keep)
    infos = [v for v in body.value_info if v.name not in invariant]  # hoisted values are outer values now
    del body.value_info[:]
    body.value_info.extend(infos)
    const_nodes = list({id(c): c for c in copies.values() if isinstance(c, onnx.NodeProto)}.values())
    tensors = [c for c in copies.values() if isinstance(c, onnx.TensorProto)]
    _prune(body)
    return _topological(const_nodes + hoisted), tensors


def _prune(graph: onnx.GraphProto) -> None:
    """Remove the nodes and initializers of ``graph`` that nothing reads any more (the constants only hoisted
    nodes used), so ONNX Runtime has nothing to warn about."""
    def reads(nodes) -> set[str]:  # every name the nodes read, their subgraphs' outer reads included
        names = set()
        for n in nodes:
            names.update(n.input)
            for a in n.attribute:
                for g in [a.g] * (a.type == onnx.AttributeProto.GRAPH) + list(a.graphs):
                    names |= reads(g.node)
        return names

    while True:
        used = reads(graph.node) | {v.name for v in graph.output}
        keep = [n for n in graph.node if used.intersection(n.output)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def _topological(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """``nodes`` in an order where each comes after the producers of its inputs among them."""
    made = {o: k for k, n in enumerate(nodes) for o in n.output}
    done, order = set(), []

    def visit(k: int) -> None:
        if k in done:
            return
        done.add(k)
        for i in nodes[k].input:
            if i in made:
                visit(made[i])
        order.append(nodes[k])

    for k in range(len(nodes)):
        visit(k)
    return order


def wrap_in_loop(body: onnx.ModelProto, carried: Sequence[str], per_step: Sequence[str],
                 inputs: Sequence[tuple[str, Sequence]], outputs: Sequence[tuple[str, Sequence]],
                 scanned: Sequence[str], window: int | None = None) -> onnx.ModelProto:
    """The ``Loop`` model around ``body`` (an exported :class:`~.graphs.RolloutBody`).

    ``body`` has the inputs ``t``, ``carried`` (its loop-carried state: ``u, d, h, obs`` and ``keys, values``
    or the layers' ``recent_keys_L, recent_values_L``) and ``per_step`` (read from the outer graph; the first
    of them with a horizon axis sets the trip count); ``inputs``/``outputs``: the outer graph's (name, shape) in order,
    shapes with symbolic dims as strings; ``scanned``: the outer outputs stacked over the steps
    (``obs_seq``, ``reward_seq``[, ``action_seq``]), in the order the body emits them after the carried state
    (``obs`` first: the step's new observation); ``window``: the context length m when the body carries the
    recent keys/values (the loop then starts them empty and rebuilds the FIFO after the last step).
    """
    graph = onnx.GraphProto()
    graph.CopyFrom(body.graph)
    _rename(graph, set(per_step))
    by_name = {v.name: v for v in graph.input}  # every input of the body's spec (the exporter keeps unread ones)
    t, kept = by_name[PREFIX + "t"], [by_name[PREFIX + n] for n in carried]
    body_outputs = list(graph.output)
    carried_out, per_step_out = body_outputs[: len(carried)], body_outputs[len(carried):]
    graph.node.extend([helper.make_node("Identity", ["loop/cond_in"], ["loop/cond_out"], name="loop/cond"),
                       helper.make_node("Identity", [carried_out[3].name], ["loop/obs_step"], name="loop/obs_step")])
    del graph.input[:]
    graph.input.extend([t, _value("loop/cond_in", [], TensorProto.BOOL), *kept])
    obs_step = onnx.ValueInfoProto()
    obs_step.CopyFrom(carried_out[3])
    obs_step.name = "loop/obs_step"
    del graph.output[:]
    graph.output.extend([_value("loop/cond_out", [], TensorProto.BOOL), *carried_out, obs_step, *per_step_out])
    graph.name = "loop_body"
    hoisted, hoisted_tensors = hoist_invariants(graph, set(per_step))

    out_names = [n for n, _ in outputs]
    split = window is not None
    horizon_from = next(n for n in per_step if n not in ("keys", "values"))
    recent = [n for n in carried if n.startswith("recent_")]  # recent_keys_0, recent_values_0, recent_keys_1 …
    first = {"u": "u", "d": "d", "h": "h", "obs": "obs", "keys": "keys", "values": "values",
             **{n: f"loop_{n}0" for n in recent}}
    last = {"u": "u_next", "d": "d_next", "h": "h_next", "obs": "loop_obs_last", "keys": "keys_next",
            "values": "values_next", **{n: f"loop_{n}" for n in recent}}
    steps_names = [f"loop_{n}_steps" for n in scanned]
    nodes = [
        helper.make_node("Shape", [horizon_from], ["loop_shape"], name="horizon_shape"),
        helper.make_node("Constant", [], ["loop_axis"], name="horizon_axis",
                         value=helper.make_tensor("loop_axis_value", TensorProto.INT64, [], [1])),
        helper.make_node("Gather", ["loop_shape", "loop_axis"], ["loop_horizon"], name="horizon", axis=0),
    ]
    if split:  # the rollout's own keys/values start with no slots: layer L of keys[:, :, :, :0]
        nodes += [_ints("loop_layer_axis", [0]), _ints("loop_slot_axis", [3]), _ints("loop_empty_axes", [0, 3])]
        for n in recent:
            kv, layer = n.removeprefix("recent_").rsplit("_", 1)
            nodes += [_ints(f"loop_{n}_from", [int(layer), 0]), _ints(f"loop_{n}_to", [int(layer) + 1, 0]),
                      helper.make_node("Slice", [kv, f"loop_{n}_from", f"loop_{n}_to", "loop_empty_axes"],
                                       [f"loop_{n}_slice"], name=f"{n}_empty"),
                      helper.make_node("Squeeze", [f"loop_{n}_slice", "loop_layer_axis"], [first[n]],
                                       name=f"{n}_squeeze")]
    nodes += hoisted
    nodes.append(helper.make_node("Loop", ["loop_horizon", "", *(first[n] for n in carried)],
                                  [last[n] for n in carried] + steps_names, name="rollout_loop", body=graph))
    if split:  # the FIFO the rollout ends with: the m newest slots of start + the layers' recent, stacked
        nodes += [_ints("loop_fifo_start", [-window]), _ints("loop_fifo_end", [2**62])]
        for kv in ("keys", "values"):
            layers = [n for n in recent if n.startswith(f"recent_{kv}_")]
            nodes += [helper.make_node("Unsqueeze", [last[n], "loop_layer_axis"], [f"{last[n]}_layer"],
                                       name=f"{n}_unsqueeze") for n in layers]
            nodes += [helper.make_node("Concat", [f"{last[n]}_layer" for n in layers], [f"loop_recent_{kv}"],
                                       name=f"recent_{kv}_stack", axis=0),
                      helper.make_node("Concat", [kv, f"loop_recent_{kv}"], [f"loop_all_{kv}"], name=f"all_{kv}",
                                       axis=3),
                      helper.make_node("Slice", [f"loop_all_{kv}", "loop_fifo_start", "loop_fifo_end",
                                                 "loop_slot_axis"], [f"{kv}_next"], name=f"{kv}_fifo")]
    rank = dict(outputs)
    for name, steps in zip(scanned, steps_names, strict=True):
        perm = [1, 0] + list(range(2, len(rank[name])))
        nodes.append(helper.make_node("Transpose", [steps], [name], name=f"{name}_transpose", perm=perm))
    outer = helper.make_graph(nodes, "rollout", [_value(n, s) for n, s in inputs],
                              [_value(n, rank[n]) for n in out_names], initializer=hoisted_tensors)
    model = helper.make_model(outer, opset_imports=list(body.opset_import), producer_name="mrcom")
    model.ir_version = body.ir_version
    return model
