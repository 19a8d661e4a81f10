"""The export folder's ``manifest.json``: reading, validating and checksum verification (numpy-free, torch-free).

:func:`read_manifest` turns anything wrong with a manifest into one :class:`ExportError` line naming the file and
the field, before any graph is opened:

* format and version (``read_versioned_json``);
* the schema the runtime relies on: ``files`` (name → SHA-256 hex), ``graphs`` (name → ``{"onnx": …,
  "torchscript": …}`` file names, one per listed format, and ``inputs``/``outputs``: each tensor's name and
  shape), ``latent`` (int ``u``, ``d``, ``h``), ``formats``, ``obs_dim``, ``act_dim``, ``context_len``,
  ``history_len`` (int >= ``context_len``), ``kv_shape``, ``rollout_horizon``, ``context_reward``, ``policy``
  (null or int ``obs_dim``/``act_dim``), ``obs_mean``/``obs_std`` (``obs_dim`` finite numbers),
  ``reward_mean`` / ``reward_std`` (the reward head's scale, already applied inside the graphs) and
  ``ensemble`` (null, or the ensemble's ``members`` K and ``elites`` mask, with an ``ensemble`` graph). The
  fused rollout graphs loop over any horizon (an ONNX ``Loop``); ``rollout_horizon`` is the default one;
* the fields against the graphs' tensors (:func:`_check_io`): every observation, action, latent and key/value
  tensor of every graph has the size the fields say (``prime``'s prompt is ``context_len`` steps), so an
  edited ``context_len`` or ``latent`` is one line here, not a dimension error inside ONNX Runtime;
* always, even with ``verify=False``: every file name in ``files`` and ``graphs`` is a plain relative name
  inside the export folder (no absolute path, no ``..``, no symlink out), and every graph file has a
  checksum in ``files`` (a graph no checksum covers is refused);
* with ``verify``: the manifest's own fields match ``manifest_sha256`` (:func:`manifest_digest`: an edit that
  did not recompute it is tampering), and every ``files`` entry exists and matches its SHA-256.

What a graph file really takes and returns is checked against its manifest entry when the runtime opens it
(:func:`check_graph_io`, from ONNX Runtime's own report, before anything runs): graphs swapped between names
or another model's graphs under this manifest are one line too.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

from mrcom_core.errors import UserInputError
from mrcom_core.io.files import inside, read_versioned_json, require_fields, sha256, verify_checksums

__all__ = ["FORMAT", "VERSION", "MANIFEST", "GRAPH_FORMATS", "ExportError", "read_manifest", "manifest_digest",
           "check_graph_io", "graph_floats", "sha256"]

FORMAT = "mrcom-export"
VERSION = 4  # 4: every field required, the fused rollouts loop over any horizon (see CHANGELOG for older ones)
MANIFEST = "manifest.json"
GRAPH_FORMATS = ("onnx", "torchscript")  # a graph's entry holds one file name per format
REDO = "export the model again"
_HEX = re.compile(r"[0-9a-f]{64}")
SELF_DIGEST = "manifest_sha256"


class ExportError(UserInputError):
    """An export folder or a runtime input is unusable; the message says what and where."""


def _fail(where: str, message: str) -> ExportError:
    return ExportError(f"{where}: {message} (the file is damaged or was not written by this mrcom; {REDO})")


def _check_schema(m: dict, where: str) -> None:
    require_fields(m, {"files": dict, "graphs": dict, "latent": dict, "formats": list, "obs_dim": int,
                       "act_dim": int, "context_len": int, "history_len": int, "kv_shape": list,
                       "rollout_horizon": int, "context_reward": bool, "policy": (dict, type(None)), "obs_mean": list,
                       "obs_std": list, "reward_mean": (int, float), "reward_std": (int, float),
                       "ensemble": (dict, type(None))}, where, ExportError)
    require_fields(m["latent"], {"u": int, "d": int, "h": int}, f"{where} 'latent'", ExportError)
    if m["policy"] is not None:
        require_fields(m["policy"], {"obs_dim": int, "act_dim": int}, f"{where} 'policy'", ExportError)
    for field, low in (("obs_dim", 1), ("act_dim", 1), ("context_len", 1), ("rollout_horizon", 1)):
        if m[field] < low:
            raise _fail(where, f"field {field!r} is {m[field]}, expected >= {low}")
    if m["history_len"] < m["context_len"]:
        raise _fail(where, f"field 'history_len' is {m['history_len']}, expected >= context_len={m['context_len']}")
    kv = m["kv_shape"]
    if (len(kv) != 5 or kv[1] != "batch"
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for i, n in enumerate(kv) if i != 1)):
        raise _fail(where, f"field 'kv_shape' is {kv!r}, expected [layers, \"batch\", heads, slots, head_dim] "
                           f"(positive integers)")
    for key, value in m["latent"].items():
        if key in ("u", "d", "h") and value < 0:
            raise _fail(where, f"'latent' field {key!r} is {value}, expected >= 0")
    if m["policy"] is not None and min(m["policy"]["obs_dim"], m["policy"]["act_dim"]) < 1:
        raise _fail(where, f"'policy' has obs/action dims {m['policy']['obs_dim']}/{m['policy']['act_dim']}")
    for field in ("obs_mean", "obs_std"):
        values = m[field]
        if len(values) != m["obs_dim"] or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise _fail(where, f"field {field!r} must hold obs_dim={m['obs_dim']} finite numbers")
    if any(v <= 0 for v in m["obs_std"]):
        raise _fail(where, "field 'obs_std' must be positive")
    ens = m["ensemble"]
    if ens is not None and not (isinstance(ens, dict) and isinstance(ens.get("members"), int) and ens["members"] >= 1
                                and isinstance(ens.get("elites"), list) and len(ens["elites"]) == ens["members"]
                                and all(v in (0, 1) for v in ens["elites"]) and any(ens["elites"])):
        raise _fail(where, f"field 'ensemble' is {ens!r}, expected null or {{\"members\": K, \"elites\": K zeros and "
                           f"ones, at least one 1}}")
    if (ens is None) != ("ensemble" not in m["graphs"]):
        raise _fail(where, "field 'ensemble' and the 'ensemble' graph must come together")
    for field in ("reward_mean", "reward_std"):  # the reward head's scale (informative: the graphs apply it)
        value = m[field]
        if not (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
                and (field == "reward_mean" or value > 0)):
            raise _fail(where, f"field {field!r} is {value!r}, expected a finite number"
                               + (" > 0" if field == "reward_std" else ""))
    formats = m["formats"]
    if not formats or not all(f in GRAPH_FORMATS for f in formats):
        raise _fail(where, f"field 'formats' is {formats!r}, expected a non-empty list of {', '.join(GRAPH_FORMATS)}")
    for name, digest in m["files"].items():
        if not isinstance(digest, str) or not _HEX.fullmatch(digest):
            raise _fail(where, f"'files' entry {name!r} is not a SHA-256 hex digest")
    for name, graph in m["graphs"].items():
        if not isinstance(graph, dict):
            raise _fail(where, f"graph {name!r} is a {type(graph).__name__}, expected an object")
        for fmt in formats:
            if not isinstance(graph.get(fmt), str):
                raise _fail(where, f"graph {name!r} has no {fmt} file name although 'formats' lists {fmt}")
        for side in ("inputs", "outputs"):
            tensors = graph.get(side)
            if not isinstance(tensors, list) or not all(
                    isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("shape"), list)
                    and all(_is_dim(n) for n in t["shape"]) for t in tensors):
                raise _fail(where, f"graph {name!r} has no valid {side!r} list (name and shape of each tensor)")
    _check_io(m, where)


def _is_dim(n) -> bool:
    """A shape entry: a size (int >= 0) or the name of a dynamic axis (``batch``, ``horizon``)."""
    return isinstance(n, str) or (isinstance(n, int) and not isinstance(n, bool) and n >= 0)


#: the field each tensor's last axis must equal, by tensor name (``noise_action``: the policy's own actions)
_LAST_AXIS = {**dict.fromkeys(("obs", "prev_obs", "obs_next", "obs_seq", "ensemble_obs"), "obs_dim"),
              **dict.fromkeys(("action", "prev_action", "actions", "action_seq"), "act_dim"),
              **{f"{x}{suffix}": f"latent.{x}" for x in ("u", "d", "h") for suffix in ("", "_next")},
              "noise_u": "latent.u", "noise_h": "latent.h", "noise_action": "policy.act_dim"}
_KV = ("keys", "values", "keys_next", "values_next")


def _field(m: dict, field: str) -> int | None:
    head, _, tail = field.partition(".")
    value = m[head] if head in m else None
    return value.get(tail) if tail and isinstance(value, dict) else value


def _check_io(m: dict, where: str) -> None:
    """Every graph's tensors against the manifest's fields: last axes (:data:`_LAST_AXIS`), the key/value
    cache (``kv_shape``) and the prompt of ``prime`` and ``context_full`` (``context_len`` steps)."""
    steps = {("prime", "obs"): m["context_len"] + 1, ("prime", "action"): m["context_len"],
             ("prime", "reward"): m["context_len"], ("context_full", "obs"): m["context_len"],
             ("context_full", "action"): m["context_len"], ("context_full", "reward"): m["context_len"]}
    for graph, meta in m["graphs"].items():
        for side in ("inputs", "outputs"):
            for tensor in meta[side]:
                name, shape = tensor["name"], tensor["shape"]
                checks = []
                if name in _KV:
                    checks.append(("kv_shape", shape == m["kv_shape"], m["kv_shape"]))
                elif name in _LAST_AXIS:
                    field = _LAST_AXIS[name]
                    expected = _field(m, field)
                    checks.append((field, bool(shape) and shape[-1] == expected, expected))
                if (graph, name) in steps:
                    checks.append(("context_len", len(shape) > 1 and shape[1] == steps[graph, name], m["context_len"]))
                for field, ok, expected in checks:
                    if not ok:
                        raise _fail(where, f"graph {graph!r} {side[:-1]} {name!r} has shape {shape}, which disagrees "
                                           f"with field {field!r} ({expected})")


def graph_floats(manifest: dict, graph: str, batch: int, horizon: int = 0) -> int:
    """How many numbers one call of ``graph`` takes and returns at ``batch`` (and ``horizon``), by the shapes
    its manifest entry lists (0 for a graph the export does not have)."""
    meta = manifest["graphs"].get(graph, {"inputs": [], "outputs": []})
    sizes = {"batch": batch, "horizon": horizon}
    return sum(math.prod(sizes.get(d, 1) if isinstance(d, str) else d for d in t["shape"])
               for t in (*meta["inputs"], *meta["outputs"]))


def manifest_digest(manifest: dict) -> str:
    """SHA-256 of the manifest's fields (all but ``manifest_sha256`` itself), as canonical JSON."""
    fields = {k: v for k, v in manifest.items() if k != SELF_DIGEST}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_graph_io(manifest: dict, graph: str, path: Path | str, inputs: list, outputs: list) -> None:
    """Check graph file ``path``'s real ``inputs``/``outputs`` (``(name, shape, type)`` triples as ONNX Runtime
    reports them: sizes as ints, dynamic axes as names or None) against the manifest's entry of ``graph``:
    the same names in the same order, float32 tensors, every size the graph fixes equal to the manifest's,
    and the dynamic axes of the inputs dynamic (an output size shape inference left symbolic is not held
    against it). A mismatch is one :class:`ExportError` line naming the file and the tensor."""
    meta = manifest["graphs"][graph]
    for side, real in (("inputs", inputs), ("outputs", outputs)):
        expected = meta[side]
        names = [r[0] for r in real]
        if names != [t["name"] for t in expected]:
            raise ExportError(f"{path} does not match manifest graph {graph!r}: its {side} are {names}, the manifest "
                              f"lists {[t['name'] for t in expected]} (graph files swapped or from another export; "
                              f"{REDO})")
        for (name, shape, kind), tensor in zip(real, expected, strict=True):
            want = tensor["shape"]
            # an input's every size is declared; an output's may be left symbolic by ONNX shape inference
            fits = kind == "tensor(float)" and (shape is None or (len(shape) == len(want) and all(
                g == w if isinstance(g, int) else isinstance(w, str) or side == "outputs"
                for g, w in zip(shape, want, strict=True))))
            if not fits:
                raise ExportError(f"{path} does not match manifest graph {graph!r}: {side[:-1]} {name!r} is {kind} "
                                  f"{shape}, the manifest says float32 {want} (a graph of another model or "
                                  f"export; {REDO})")


def _check_names(m: dict, root: Path, where: str) -> None:
    """The security part, enforced whether or not checksums are verified: names stay inside ``root`` and
    every graph file is covered by a checksum."""
    for name in m["files"]:
        inside(root, name, f"{where} 'files'", ExportError)
    for graph, meta in m["graphs"].items():
        for fmt in GRAPH_FORMATS:
            if fmt not in meta:
                continue
            name = meta[fmt]
            inside(root, name, f"{where} graph {graph!r} ({fmt})", ExportError)
            if name not in m["files"]:
                raise ExportError(f"export {root}: graph file {name} is not covered by the manifest's checksums "
                                  f"(refusing to load it; {REDO})")


def read_manifest(export_dir: Path | str, verify: bool = True) -> dict:
    """Load and validate ``export_dir/manifest.json`` (see the module docstring); with ``verify``, also
    check every file's SHA-256. Raises :class:`ExportError` with one line naming the file and field."""
    root = Path(export_dir)
    path = root / MANIFEST
    manifest = read_versioned_json(path, FORMAT, VERSION, "export", REDO, ExportError)
    if verify and manifest.get(SELF_DIGEST) != manifest_digest(manifest):
        raise ExportError(f"{path}: its fields changed after the export was written ({SELF_DIGEST} does not match "
                          f"them; {REDO})")
    _check_schema(manifest, str(path))
    _check_names(manifest, root, str(path))
    if verify:
        verify_checksums(root, manifest["files"], str(path), REDO, ExportError)
    return manifest
