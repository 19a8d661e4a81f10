"""Freeze a trained world model (and optionally a SAC policy) into ONNX and TorchScript graphs.

:func:`export_model` writes one file per graph of :mod:`.graphs` and format, then checks itself: the ONNX
checker (full check), then parity of every graph with eager PyTorch on random inputs at several batch
sizes, recorded in ``manifest.json`` with names, shapes and dtypes of every input and output,
observation statistics, versions and the SHA-256 of every file. Graphs are traced by the TorchScript-based
ONNX exporter (seconds per graph); the H-step rollout graphs are an ONNX ``Loop`` over a one-step body
(:mod:`.onnx_loop`) and a scripted loop over a traced step in TorchScript, so the horizon is a run-time input
and ``mrcom export`` of the ``small`` model takes seconds, not minutes.

Publication is all or nothing: the export holds the folder's lock (a sibling ``.NAME.mrcom.lock``, so a
second ``mrcom export`` into the same folder stops with a message naming the first), refuses a non-empty
folder unless ``force`` and it is a previous export holding nothing its manifest does not list (and never the
source run, its dataset or the policy, nor a folder holding them: :mod:`mrcom_core.io.outputs`), and writes
everything into a temporary sibling folder that is verified (:func:`~.manifest.read_manifest` with
checksums) and only then swapped in one step (:func:`mrcom_core.io.files.atomic_dir`). A failure or a kill
mid-export leaves the previous export untouched.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import platform
import re
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch

from mrcom_core.base import BaseWorldModel
from mrcom_core.errors import check_int
from mrcom_core.io.files import TMP_PREFIX, atomic_dir, file_checksums, write_json_atomic
from mrcom_core.io.outputs import EXPORT, claimed
from mrcom_core.io.resources import require_memory

from . import graphs as G
from .manifest import FORMAT, MANIFEST, SELF_DIGEST, VERSION, ExportError, manifest_digest, read_manifest
from .onnx_loop import wrap_in_loop

FORMATS = ("onnx", "torchscript")
OPSET = 18
PARITY_BATCHES = (1, 7, 256)
PARITY_TOLERANCE = 1e-4  # per imagined step: an H-step fused graph may differ by H times this


def parity_tolerance(name: str, horizon: int) -> float:
    """Largest max-abs difference graph ``name`` may show against eager PyTorch. float32 rounding differs
    between engines by ~1e-7 per op and a trained model's dynamics amplify it from step to step: measured on
    the demo's trained `small` model, the fused 15-step rollout differs by up to 2.2e-4 from eager on states
    primed from prompts, while every one-step graph stays near 1e-6. So the bound is per step."""
    return PARITY_TOLERANCE * (horizon if name in ("rollout", "policy_rollout") else 1)


def _export_onnx(module: torch.nn.Module, inputs: tuple, spec: G.GraphSpec) -> onnx.ModelProto:
    """``module`` as an ONNX model with the batch axes dynamic, by torch's TorchScript-based exporter (about
    0.5 s a graph where the dynamo exporter takes 5-15 s in ``torch.export`` and decompositions). Inputs the
    tracer dropped (unread) are put back, so every graph keeps the input list of its spec."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    buffer = io.BytesIO()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and constant-folding notes; failures raise
        torch.onnx.export(module, inputs, buffer, dynamo=False, input_names=list(spec.inputs),
                          output_names=list(spec.outputs), opset_version=OPSET,
                          dynamic_axes={n: {spec.batch_axis[n]: "batch",
                                            **({2: "steps"} if n.startswith("recent_") else {})}  # a layer's rollout
                                        for n in (*spec.inputs, *spec.outputs) if n != "t"})
    proto = onnx.load_from_string(buffer.getvalue())
    present = {v.name for v in proto.graph.input}
    missing = [n for n in spec.inputs if n not in present]
    if missing:
        by_name = {v.name: v for v in proto.graph.input}
        for name, x in zip(spec.inputs, inputs, strict=True):
            if name in missing:
                shape: list = list(x.shape)
                if x.dim():
                    shape[spec.batch_axis[name]] = "batch"
                by_name[name] = onnx.helper.make_tensor_value_info(
                    name, onnx.TensorProto.INT64 if x.dtype == torch.int64 else onnx.TensorProto.FLOAT, shape)
        order = [by_name[n] for n in spec.inputs]
        del proto.graph.input[:]
        proto.graph.input.extend(order)
    return proto


def export_loop(name: str, model: BaseWorldModel, policy: G.PolicyActor | None, example: tuple,
                meta: dict, split: bool = True) -> onnx.ModelProto:
    """``rollout``/``policy_rollout`` as an ONNX ``Loop`` over their one-step body (:mod:`.onnx_loop`);
    ``example``: inputs of the graph; ``meta`` holds its input and output shapes (:func:`_io_spec`, or the
    manifest's entry); ``split``: see :class:`~.graphs.RolloutBody` (``False``: the FIFO body)."""
    body = G.loop_body(name, model, policy, split).eval()
    given = dict(zip(G.GRAPHS[name].spec.inputs, example, strict=True))
    if body.split:  # its recent keys/values are traced at 3 steps (a dynamic axis: the loop grows them)
        given.update({f"recent_{kv}_{i}": given[kv][i, :, :, :3] for kv in ("keys", "values")
                      for i in range(given[kv].shape[0])})
    proto = _export_onnx(body, (torch.tensor(0), *(given[n] for n in body.spec.inputs[1:])), body.spec)
    outputs = [(o["name"], o["shape"]) for o in meta["outputs"]]
    scanned = [n for n in ("obs_seq", "reward_seq", "action_seq") if n in dict(outputs)]
    return wrap_in_loop(proto, body.carried, body.per_step, [(i["name"], i["shape"]) for i in meta["inputs"]],
                        outputs, scanned, window=model.config.context_len if body.split else None)


#: the inputs and outputs of the loop graphs whose axis 1 is the horizon
_PER_STEP = ("actions", "noise_action", "noise_u", "noise_h", "obs_seq", "reward_seq", "action_seq")


def _io_spec(spec: G.GraphSpec, tensors, names, looped: bool) -> list[dict]:
    out = []
    for name, t in zip(names, tensors, strict=True):
        shape: list = list(t.shape)
        shape[spec.batch_axis[name]] = "batch"
        if looped and name in _PER_STEP:
            shape[1] = "horizon"
        out.append({"name": name, "shape": shape, "dtype": "float32"})
    return out


def _max_error(a, b, names, obs_std: np.ndarray) -> float:
    """Max abs difference over all outputs; predicted observations are compared in normalized units
    (divided by the dataset's std), the scale the model computes in, so a velocity dim with std 20 does not
    count its float32 rounding twenty times over."""
    worst = 0.0
    for name, x, y in zip(names, a, b, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        if not x.size:
            continue
        diff = np.abs(x - y)
        if name in ("obs_next", "obs_seq"):
            diff = diff / obs_std
        worst = max(worst, float(diff.max()))
    return worst


def export_model(model: BaseWorldModel, out_dir: Path | str, *, formats: tuple[str, ...] = FORMATS, horizon: int = 15,
                 policy: G.PolicyActor | None = None, blocks: bool = True, source: dict | None = None,
                 force: bool = False, log: Callable[[str], None] = print) -> dict:
    """Export ``model`` into ``out_dir`` and return the manifest (also written as ``manifest.json``).

    ``blocks=False`` leaves out the building-block graphs (:data:`~.graphs.BLOCK_GRAPHS`: context encoder,
    latent transition, reward head) that only hand-written loops need; the runtime, the vector env and the
    C++ examples use :data:`~.graphs.RUNTIME_GRAPHS`.

    The ``rollout`` graphs loop over any horizon (ONNX ``Loop``, scripted TorchScript loop); ``horizon`` is
    the one their parity checks run and the runtime's default (``rollout_horizon``); ``policy`` (a
    :class:`~.graphs.PolicyActor`) adds the ``policy`` and ``policy_rollout`` graphs. Raises
    :class:`ExportError` if a graph fails the checker or the parity check (max abs error above
    :func:`parity_tolerance`: :data:`PARITY_TOLERANCE` per imagined step), or if ``out_dir`` is not empty
    and ``force`` is not set; :class:`~mrcom_core.io.locks.FolderLocked` if another process exports into
    ``out_dir``. The new export replaces ``out_dir`` in one step once it is complete and verified; on any
    failure ``out_dir`` keeps what it held.
    """
    unknown = set(formats) - set(FORMATS)
    if unknown or not formats:
        raise ExportError(f"unknown export format(s) {sorted(unknown)}; choose from {', '.join(FORMATS)}")
    check_int("rollout horizon", horizon, error=ExportError)
    check_parity_memory(model, int(horizon), policy)
    out = Path(out_dir)
    source = source or {}
    inputs = {"training run": source.get("run"), "dataset of the training run": source.get("data"),
              "policy": source.get("policy")}
    with claimed(out, EXPORT, "mrcom export", beside=True, inputs=inputs, flag="--force", given=force, replaces=True,
                 allowed=_export_entries(out), label="export folder", error=ExportError):
        _remove_stale_exports(out)
        with atomic_dir(out) as tmp:
            manifest = _write_export(model, tmp, tuple(formats), int(horizon), policy, blocks, source, log)
            read_manifest(tmp, verify=True)  # what gets swapped in is exactly what a reader will accept
    return manifest


def check_parity_memory(model: BaseWorldModel, horizon: int, policy: G.PolicyActor | None = None) -> None:
    """Refuse (one :class:`ExportError` line naming ``--horizon``) a horizon whose parity checks cannot fit in
    memory: at the largest parity batch the rollout graphs' per-step inputs (actions, latent noise) and outputs
    (observations, rewards) are held by the eager reference and by each format's result."""
    c, s = model.config, model.sizes
    per_step = c.act_dim + s.u + s.h + c.obs_dim + 1 + (2 * policy.act_dim if policy is not None else 0)
    require_memory(4 * 3 * max(PARITY_BATCHES) * horizon * per_step, f"the parity checks of a {horizon}-step rollout",
                   "lower --horizon (the rollout graphs take any horizon at run time; --horizon is only the checks' "
                   "and the runtime's default)", error=ExportError)


def _export_entries(folder: Path) -> set[str]:
    """The names an export folder may hold: its manifest and every file the manifest lists."""
    try:
        manifest = json.loads((folder / MANIFEST).read_bytes())
        files = manifest.get("files") if isinstance(manifest, dict) else None
    except (OSError, ValueError):
        files = None
    return {MANIFEST, *(name for name in files if isinstance(name, str))} if isinstance(files, dict) else {MANIFEST}


def _remove_stale_exports(out: Path) -> None:
    """Delete the temporary folders a killed export of ``out`` left beside it (the caller holds its lock):
    ``.tmp-NAME-PID`` (:func:`~mrcom_core.io.files.atomic_dir`) and ``.tmp-old-PID-NAME`` (its swap fallback)."""
    if not out.parent.is_dir():
        return
    name = re.escape(out.name)
    stale = re.compile(rf"{re.escape(TMP_PREFIX)}(?:{name}-\d+|old-\d+-{name})")
    for path in out.parent.iterdir():
        if stale.fullmatch(path.name):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def _write_export(model: BaseWorldModel, out: Path, formats: tuple[str, ...], horizon: int,
                  policy: G.PolicyActor | None, blocks: bool, source: dict | None,
                  log: Callable[[str], None]) -> dict:
    """Write every graph, check it and write ``manifest.json``, all into the (temporary) folder ``out``."""
    import onnxruntime as ort

    model = model.float().eval().cpu()
    names = [*(G.BLOCK_GRAPHS if blocks else ()), *G.RUNTIME_GRAPHS,
             *(G.ENSEMBLE_GRAPHS if model.ensemble_heads is not None else ())]
    if policy is not None:
        policy = policy.float().eval().cpu()
        names += ["policy", "policy_rollout"]
    policy_act = policy.act_dim if policy is not None else 0
    gen = torch.Generator().manual_seed(0)
    obs_std = model.obs_std.numpy()
    graphs_meta, parity, tolerances = {}, {}, {}
    log(f"{len(names)} graphs, each checked against eager PyTorch:")
    for name in names:
        start = time.perf_counter()
        module = G.build_graph(name, model, policy).eval()
        spec = module.spec
        example = G.example_inputs(name, model, 7, horizon, policy_act, gen)
        with torch.no_grad():
            example_out = module(*example)
        example_out = example_out if isinstance(example_out, tuple) else (example_out,)
        looped = name in G.LOOP_GRAPHS
        meta = {"inputs": _io_spec(spec, example, spec.inputs, looped),
                "outputs": _io_spec(spec, example_out, spec.outputs, looped)}
        sessions = {}
        if "onnx" in formats:
            path = out / f"{name}.onnx"
            try:
                proto = (export_loop(name, model, policy, example, meta) if looped
                         else _export_onnx(module, example, spec))
                onnx.checker.check_model(proto, full_check=True)
                onnx.save(proto, str(path))
            except Exception as e:  # surface which graph failed, with the exporter's first line
                raise ExportError(f"ONNX export of graph {name!r} failed: {str(e).strip().splitlines()[0]}") from e
            meta["onnx"] = path.name
            sessions["onnx"] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        if "torchscript" in formats:
            path = out / f"{name}.pt"
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated upstream
                # split sizes read from a Linear's output width are constants by design (parity checks below)
                warnings.filterwarnings("ignore", "Converting a tensor to a Python integer", torch.jit.TracerWarning)
                traced = (G.scripted_rollout(name, model, policy, gen) if looped
                          else torch.jit.trace(module, example, check_trace=False))
                traced.save(str(path))
                sessions["torchscript"] = torch.jit.load(str(path))
            meta["torchscript"] = path.name
        errors = {}
        for batch in PARITY_BATCHES:
            inputs = G.example_inputs(name, model, batch, horizon, policy_act, gen)
            with torch.no_grad():
                ref = module(*inputs)
            ref = [t.numpy() for t in (ref if isinstance(ref, tuple) else (ref,))]
            for fmt, sess in sessions.items():
                if fmt == "onnx":
                    got = sess.run(None, {n: t.numpy() for n, t in zip(spec.inputs, inputs, strict=True)})
                else:
                    with torch.no_grad():
                        got = sess(*inputs)
                    got = [t.numpy() for t in (got if isinstance(got, tuple) else (got,))]
                errors[f"{fmt}@{batch}"] = _max_error(got, ref, spec.outputs, obs_std)
        worst, tolerance = max(errors.values()), parity_tolerance(name, horizon)
        if worst > tolerance:
            bad = {k: v for k, v in errors.items() if v > tolerance}
            raise ExportError(f"graph {name!r} differs from eager PyTorch beyond {tolerance:.0e}: {bad}")
        parity[name] = errors
        tolerances[name] = tolerance
        graphs_meta[name] = meta
        log(f"  {name:<15} {', '.join(formats)}  parity max |Δ| {worst:.1e} at batch {PARITY_BATCHES}  "
            f"({time.perf_counter() - start:.1f}s)")

    c = model.config
    manifest = {
        "format": FORMAT, "version": VERSION,
        "model_config": c.to_dict(), "model_type": c.model_type,
        "obs_dim": c.obs_dim, "act_dim": c.act_dim, "context_len": c.context_len,
        "history_len": model.history_len, "context_reward": c.context_reward,
        "latent": {"u": model.sizes.u, "d": model.sizes.d, "h": model.sizes.h},
        "kv_shape": list(model.cache_shape(1)[:1]) + ["batch"] + list(model.cache_shape(1)[2:]),
        "obs_mean": model.obs_mean.tolist(), "obs_std": model.obs_std.tolist(),
        "reward_mean": float(model.reward_mean), "reward_std": float(model.reward_std),
        "ensemble": None if model.ensemble_heads is None else {"members": c.ensemble,
                                                               "elites": model.elites.tolist()},
        "rollout_horizon": horizon,
        "policy": None if policy is None else {"obs_dim": policy.obs_dim, "act_dim": policy.act_dim},
        "graphs": graphs_meta, "parity": parity, "parity_tolerance": tolerances,
        "formats": list(formats), "opset": OPSET,
        "exporter": "torch.onnx.export(dynamo=False); rollout graphs: ONNX Loop over a one-step body"
                    if "onnx" in formats else None,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                     "python": platform.python_version()},
        "source": source or {},
    }
    files = sorted(p.name for p in out.iterdir() if p.suffix in (".onnx", ".pt") and p.stem in graphs_meta)
    manifest["files"] = file_checksums(out, files)
    manifest[SELF_DIGEST] = manifest_digest(manifest)
    write_json_atomic(out / MANIFEST, manifest)
    return manifest
