"""Batched imagined rollouts from an export folder, with numpy and ONNX Runtime only (no torch).

>>> rt = Runtime("runs/demo/export", seed=0)                  # verifies checksums, picks providers
>>> obs = rt.reset(prompt_obs, prompt_act, prompt_rew, batch=64)  # a real trajectory of the target scenario
>>> obs, reward, latent = rt.step(actions)                     # one imagined step for all 64 rollouts
>>> rt.uncertainty(actions)["disagreement"]                    # (before step) how far the ensemble parts
>>> out = rt.rollout(actions_or_policy, horizon=15)            # H steps; one fused call where exported

The runtime only sequences the exported graphs (``prime`` → ``observe``* for a prompt, then ``step`` or the
fused ``rollout``), which are :mod:`mrcom_core.steps`'s functions frozen; it computes nothing itself. The
latent state and the context's key/value FIFO stay on the execution device between calls (ONNX Runtime
I/O binding: each call's outputs are bound as the next call's inputs); only observations and rewards come
back to the host. Noise comes from the runtime's own seeded generator, into preallocated buffers.

Everything a caller hands in is checked before it reaches ONNX Runtime, each failure one
:class:`~.manifest.ExportError` line naming the argument: the export folder (:func:`~.manifest.read_manifest`:
schema, file names confined to the folder, every graph covered by a checksum, checksums with ``verify``); a
graph file ONNX Runtime cannot load; ``providers`` (each must be in ``ort.get_available_providers()``, checked
before any session exists: no silent fallback to CPU for an explicit request); ``seed``, ``threads``,
``batch`` and ``horizon`` (integers in range, not bools or floats); prompts, actions (also those a callable
policy returns) and caller-supplied ``noise`` (known keys, exact shapes, finite values).
:attr:`Runtime.providers` reports the providers ONNX Runtime actually runs the graphs on.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from mrcom_core.errors import check_int
from mrcom_core.io.resources import require_memory

from .manifest import ExportError, check_graph_io, graph_floats, read_manifest
from .providers import CUDA_PROVIDERS, check_providers, default_providers, provider_name

_STATE = ("u", "d", "h")


def _count(name: str, value, minimum: int = 1) -> int:
    """``value`` as an int, refused (:class:`ExportError`) unless it is an integer >= ``minimum``."""
    return check_int(name, value, minimum, error=ExportError)


def real_array(name: str, value, shape: tuple | str) -> np.ndarray:
    """``value`` as a float32 array, refused unless it holds real numbers (bool, int or float: complex parts,
    strings and objects are never silently dropped or parsed); ``shape`` is what the message asks for."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):  # ragged nesting
        array = None
    if array is None or array.dtype.kind not in "biuf":
        what = f"an array of {array.dtype}" if array is not None else type(value).__name__
        raise ExportError(f"{name} must be a real float array of shape {shape}, got {what}")
    return array.astype(np.float32, copy=False)


class Runtime:
    """Imagined rollouts of an exported MrCoM model.

    Args:
        export_dir: a folder written by ``mrcom export`` (with the ONNX format).
        providers: ONNX Runtime execution providers (default: :func:`default_providers`); each must be
            available in this ONNX Runtime build, and an explicitly requested one must also start (no
            silent fallback to CPU).
        seed: seeds the latent noise (and the exported policy's action noise); an integer >= 0.
        verify: check every file's SHA-256 against the manifest first (file names are confined to the
            folder and graphs must be covered by a checksum either way).
        threads: intra-op threads per session (``None`` or 0: ONNX Runtime's default).

    The ``prime`` graph's session is opened here, so :attr:`providers` (and :attr:`device`) report what
    ONNX Runtime actually runs on from the start; later sessions use the same providers.
    """

    def __init__(self, export_dir: str | Path, *, providers: list[str] | None = None, seed: int | None = 0,
                 verify: bool = True, threads: int | None = None):
        if not isinstance(export_dir, str | os.PathLike):
            raise ExportError(f"export_dir must be a path (str or os.PathLike), got {type(export_dir).__name__}")
        self.root = Path(export_dir)
        explicit = bool(providers)
        requested = check_providers(providers) if explicit else default_providers()  # before any session
        if seed is not None:
            seed = _count("seed", seed, 0)
        if threads is not None:
            threads = _count("threads", threads, 0)
        self.manifest = m = read_manifest(self.root, verify=verify)
        if "onnx" not in m["formats"]:
            raise ExportError(f"export {self.root} has no ONNX graphs (formats {m['formats']}); export with "
                              f"--format onnx or all")
        self.threads = threads
        self._options = ort.SessionOptions()
        if threads:
            self._options.intra_op_num_threads = threads
        self.obs_dim, self.act_dim, self.context_len = m["obs_dim"], m["act_dim"], m["context_len"]
        #: steps of history a prompt should carry: m, or more for a model whose context is recurrent (MAMBA)
        self.history_len: int = m["history_len"]
        self.latent = m["latent"]
        self.horizon = m["rollout_horizon"]
        self.has_policy = m["policy"] is not None
        #: whether the model has an ensemble (:meth:`uncertainty`); ``elites`` is its elite mask
        self.has_ensemble = m["ensemble"] is not None
        self.rng = np.random.default_rng(seed)
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._state: dict[str, ort.OrtValue] | None = None
        self._buffers: dict[tuple, np.ndarray] = {}
        self.batch = 0
        self._requested = requested
        first = self.session("prime")  # the providers ONNX Runtime actually took, before anything runs
        self.providers: list[str] = first.get_providers()
        missing = [provider_name(p) for p in requested if provider_name(p) not in self.providers]
        if explicit and missing:
            raise ExportError(f"ONNX Runtime could not start provider(s) {', '.join(missing)} for {self.root} "
                              f"(it would run on {', '.join(self.providers)}); check the provider's installation "
                              f"or pick another")
        self._requested = [p for p in requested if provider_name(p) in self.providers]
        self.device = "cuda" if self.providers[0] in CUDA_PROVIDERS else "cpu"

    # ------------------------------------------------------------------------------------------ plumbing
    def session(self, name: str) -> ort.InferenceSession:
        """The ONNX Runtime session of graph ``name`` (opened on first use)."""
        if name not in self.manifest["graphs"]:
            raise ExportError(f"export {self.root} has no graph {name!r}")
        if name not in self._sessions:
            path = self.root / self.manifest["graphs"][name]["onnx"]
            try:
                sess = ort.InferenceSession(str(path), self._options, providers=self._requested)
            except Exception as e:  # onnxruntime's own exception types (InvalidProtobuf, Fail, …)
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise ExportError(f"{path} is not a loadable ONNX graph: {first}") from None
            check_graph_io(self.manifest, name, path, [(t.name, t.shape, t.type) for t in sess.get_inputs()],
                           [(t.name, t.shape, t.type) for t in sess.get_outputs()])
            self._sessions[name] = sess
        return self._sessions[name]

    def memory_needed(self, batch: int, horizon: int = 0, prompt_steps: int = 0) -> int:
        """A lower bound of the bytes ``batch`` rollouts need: the tensors in and out of one ``rollout`` call of
        ``horizon`` steps (as the manifest gives their shapes) and, with ``prompt_steps`` (T), the prompts of a
        :meth:`reset` and the ``prime`` call's tensors. Sizes are float32."""
        prompts = batch * ((prompt_steps + 1) * self.obs_dim + prompt_steps * (self.act_dim + 1)) if prompt_steps else 0
        return 4 * (prompts + (graph_floats(self.manifest, "rollout", batch, horizon) if horizon else 0)
                    + (graph_floats(self.manifest, "prime", batch) if prompt_steps else 0))

    def _require_memory(self, batch: int, horizon: int = 0, prompt_steps: int = 0) -> None:
        what = (f"{batch} rollouts" + (f" of {horizon} steps" if horizon else "")
                + (f" from prompts of {prompt_steps} steps" if prompt_steps else ""))
        fix = "lower batch" + (" or horizon" if horizon else "") + (" or the prompts' length" if prompt_steps else "")
        require_memory(self.memory_needed(batch, horizon, prompt_steps), what, fix, error=ExportError)

    def _run(self, name: str, values: dict[str, ort.OrtValue], arrays: dict[str, np.ndarray]) -> dict:
        sess = self.session(name)
        io = sess.io_binding()
        for key, value in values.items():
            io.bind_ortvalue_input(key, value)
        for key, array in arrays.items():
            io.bind_cpu_input(key, np.ascontiguousarray(array, dtype=np.float32))
        names = [o.name for o in sess.get_outputs()]
        for key in names:
            io.bind_output(key, self.device)
        sess.run_with_iobinding(io)
        return dict(zip(names, io.get_outputs(), strict=True))

    def _noise(self, key: str, *shape: int) -> np.ndarray:
        """Fresh standard-normal noise in a buffer kept per (key, shape): no allocation per call."""
        out = self._buffers.get((key, shape))
        if out is None:
            out = self._buffers[(key, shape)] = np.empty(shape, dtype=np.float32)
        return self.rng.standard_normal(out=out, dtype=np.float32)

    def _ortvalue(self, array: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array, dtype=np.float32), self.device, 0)

    def _require_reset(self) -> None:
        if self._state is None:
            raise ExportError("call reset(prompt_obs, prompt_act, prompt_rew) before stepping the runtime")

    def _check(self, name: str, array, shape: tuple) -> np.ndarray:
        array = real_array(name, array, shape)
        if array.shape != shape:
            raise ExportError(f"{name} must have shape {shape}, got {array.shape}")
        if not np.isfinite(array).all():
            raise ExportError(f"{name} contains NaN or inf")
        return array

    def _check_noise(self, noise, shapes: dict[str, tuple]) -> dict[str, np.ndarray]:
        """Caller-supplied ``noise``: a dict with some of the keys of ``shapes``, each an array of exactly
        that shape with finite values (keys left out are drawn from the seeded generator)."""
        if noise is None:
            return {}
        if not isinstance(noise, dict):
            raise ExportError(f"noise must be a dict with keys {', '.join(shapes)}, got {type(noise).__name__}")
        unknown = [k for k in noise if k not in shapes]
        if unknown:
            raise ExportError(f"noise has unknown key(s) {unknown}; expected {', '.join(map(repr, shapes))}")
        return {k: self._check(f"noise[{k!r}]", v, shapes[k]) for k, v in noise.items()}

    # ---------------------------------------------------------------------------------------------- API
    def reset(self, prompt_obs, prompt_act, prompt_rew=None, *, batch: int | None = None,
              noise: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Start ``B`` rollouts from prompt trajectories of the target scenario; returns the last observation.

        ``prompt_obs`` ``(B, T+1, obs_dim)``, ``prompt_act`` ``(B, T, act_dim)``, ``prompt_rew`` ``(B, T)``
        with T ≥ context length m (observations and actions zero-padded to the export's dims); or the
        same without the leading B plus ``batch=B`` to start B rollouts from one prompt. The first m steps
        fill the context FIFO and the posterior observes o_m (``prime``); it then observes every later step
        (``observe``), so the state starts at o_T.
        ``noise`` (``{"u": (B, T-m+1, u), "h": (B, T-m+1, h)}``, either key or both) replaces the
        posterior's seeded noise. ``batch`` must be an integer >= 1.
        """
        if batch is not None:
            batch = _count("batch", batch)
        obs = real_array("prompt_obs", prompt_obs, "(B, T+1, obs_dim)")
        act = real_array("prompt_act", prompt_act, "(B, T, act_dim)")
        rew = None if prompt_rew is None else real_array("prompt_rew", prompt_rew, "(B, T)")
        if obs.ndim in (2, 3):  # before a prompt is repeated B times
            self._require_memory(obs.shape[0] if obs.ndim == 3 else batch or 1, prompt_steps=max(obs.shape[-2] - 1, 1))
        if obs.ndim == 2:
            b = 1 if batch is None else batch
            obs, act = np.repeat(obs[None], b, 0), np.repeat(act[None], b, 0)
            rew = None if rew is None else np.repeat(rew[None], b, 0)
        elif batch is not None and batch != obs.shape[0]:
            raise ExportError(f"batch={batch} but the prompts have a batch of {obs.shape[0]}")
        if obs.ndim != 3:
            raise ExportError(f"prompt_obs must be (B, T+1, obs_dim) or (T+1, obs_dim), got shape {obs.shape}")
        B, T1, _ = obs.shape
        T, m = T1 - 1, self.context_len
        if B < 1:
            raise ExportError("the batch must hold at least one rollout (got 0)")
        if T < m:
            raise ExportError(f"prompts need at least context_len={m} steps (T+1 ≥ {m + 1} observations), got T={T}")
        obs = self._check("prompt_obs", obs, (B, T + 1, self.obs_dim))
        act = self._check("prompt_act", act, (B, T, self.act_dim))
        if rew is None:
            if self.manifest["context_reward"]:
                raise ExportError("this model's context tokens include rewards: pass prompt_rew (B, T)")
            rew = np.zeros((B, T), np.float32)
        rew = self._check("prompt_rew", rew, (B, T))

        lat = self.latent
        given = self._check_noise(noise, {k: (B, T - m + 1, lat[k]) for k in ("u", "h")})

        def posterior_noise(k: int) -> dict[str, np.ndarray]:
            return {f"noise_{x}": given[x][:, k - m] if x in given else self._noise(x, B, lat[x]) for x in ("u", "h")}

        out = self._run("prime", {}, {"obs": obs[:, : m + 1], "action": act[:, :m], "reward": rew[:, :m],
                                      **posterior_noise(m)})
        for k in range(m + 1, T + 1):  # the rest of the prompt: token k-1 enters the FIFO, the posterior sees o_k
            state = {name: out[f"{name}_next"] for name in (*_STATE, "keys", "values")}
            out = self._run("observe", state, {"prev_obs": obs[:, k - 1], "prev_action": act[:, k - 1],
                                               "prev_reward": rew[:, k - 1], "obs": obs[:, k], **posterior_noise(k)})
        state = {name: out[f"{name}_next"] for name in _STATE}
        keys, values = out["keys_next"], out["values_next"]
        self._state = {**state, "keys": keys, "values": values, "obs": self._ortvalue(obs[:, T])}
        self.batch = B
        return obs[:, T].copy()

    @property
    def latent_state(self) -> np.ndarray:
        """The current latent ``[u, d, h]`` of every rollout, ``(B, latent_dim)``."""
        self._require_reset()
        return np.concatenate([self._state[k].numpy() for k in _STATE], axis=-1)

    def step(self, actions, noise: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Take ``actions`` ``(B, act_dim)`` in every rollout → ``(next_obs, reward, latent)``.

        ``reward[b]`` is the predicted reward of taking ``actions[b]`` in the current state. ``noise``
        (``{"u": (B, u), "h": (B, h)}``, either key or both) replaces the seeded latent noise.
        """
        self._require_reset()
        B = self.batch
        actions = self._check("actions", actions, (B, self.act_dim))
        lat = self.latent
        given = self._check_noise(noise, {k: (B, lat[k]) for k in ("u", "h")})
        return self._step(actions, {k: given[k] if k in given else self._noise(k, B, lat[k]) for k in ("u", "h")})

    def _step(self, actions: np.ndarray, noise: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`step` with checked inputs."""
        out = self._run("step", {k: self._state[k] for k in (*_STATE, "obs", "keys", "values")},
                        {"action": actions, "noise_u": noise["u"], "noise_h": noise["h"]})
        self._state = {**{k: out[f"{k}_next"] for k in _STATE}, "obs": out["obs_next"], "keys": out["keys_next"],
                       "values": out["values_next"]}
        return out["obs_next"].numpy(), out["reward"].numpy(), self.latent_state

    def uncertainty(self, actions) -> dict[str, np.ndarray]:
        """What the ensemble predicts for taking ``actions`` ``(B, act_dim)`` in every rollout's current state:
        ``{"obs": (B, K, obs_dim), "reward": (B, K), "disagreement": (B,)}`` (each member's next observation and
        reward, and how far the elites part: 0 where they agree, ~1 where they differ by as much as the data
        varies). Call it before :meth:`step` with the same actions. Needs :attr:`has_ensemble`."""
        self._require_reset()
        if not self.has_ensemble:
            raise ExportError(f"export {self.root} has no ensemble (its model was trained with model.ensemble=0)")
        actions = self._check("actions", actions, (self.batch, self.act_dim))
        out = self._run("ensemble", {k: self._state[k] for k in _STATE}, {"action": actions})
        return {"obs": out["ensemble_obs"].numpy(), "reward": out["ensemble_reward"].numpy(),
                "disagreement": out["disagreement"].numpy()}

    def rollout(self, policy_or_actions: np.ndarray | Callable[[np.ndarray], np.ndarray] | str,
                horizon: int | None = None, *, fused: bool | None = None,
                noise: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """``horizon`` imagined steps for all B rollouts; returns ``obs`` (B, H, D), ``reward`` (B, H),
        ``actions`` (B, H, A) and the final ``latent``.

        ``policy_or_actions``: an array ``(B, H, act_dim)`` of actions; a callable mapping observations
        ``(B, obs_dim)`` to actions ``(B, act_dim)``; or ``"exported"`` for the policy exported with the
        model. Array and exported-policy rollouts run as one graph call (an ONNX ``Loop`` over the horizon;
        exports from before it fuse only their ``rollout_horizon``) unless ``fused=False``. ``noise``
        (``{"u": (B, H, u), "h": (B, H, h)}``, plus ``"action"`` ``(B, H, policy act_dim)`` for the exported
        policy; any subset of these keys) replaces the seeded noise. ``horizon`` must be an integer >= 1; a
        callable policy's actions are checked like arrays.
        """
        self._require_reset()
        B = self.batch
        if isinstance(policy_or_actions, str):
            if policy_or_actions != "exported":
                raise ExportError(f"unknown policy {policy_or_actions!r}: pass actions, a callable or 'exported'")
            if not self.has_policy:
                raise ExportError(f"export {self.root} has no policy; export with --policy")
        if horizon is None:
            given_actions = isinstance(policy_or_actions, np.ndarray) and policy_or_actions.ndim >= 2
            horizon = policy_or_actions.shape[1] if given_actions else self.horizon
        horizon = _count("horizon", horizon)
        self._require_memory(B, horizon)
        can_fuse = not callable(policy_or_actions)
        if fused and not can_fuse:
            raise ExportError("a fused rollout needs actions or the exported policy, got a callable")
        use_fused = can_fuse if fused is None else fused
        lat = self.latent
        shapes = {k: (B, horizon, lat[k]) for k in ("u", "h")}
        if isinstance(policy_or_actions, str):
            shapes["action"] = (B, horizon, self.manifest["policy"]["act_dim"])
        noise = self._check_noise(noise, shapes)
        for key, shape in shapes.items():
            if key not in noise:
                noise[key] = self._noise(key, *shape)
        state_in = {k: self._state[k] for k in (*_STATE, "obs", "keys", "values")}
        if isinstance(policy_or_actions, str):
            noise_a = noise["action"]
            if use_fused:
                out = self._run("policy_rollout", state_in, {"noise_action": noise_a, "noise_u": noise["u"],
                                                             "noise_h": noise["h"]})
                return self._finish(out, out["action_seq"].numpy())

            noise_steps = iter(noise_a.transpose(1, 0, 2))

            def exported_policy(obs: np.ndarray) -> np.ndarray:
                return self._run("policy", {}, {"obs": obs, "noise_action": next(noise_steps)})["action"].numpy()

            return self._loop(exported_policy, horizon, noise)
        if callable(policy_or_actions):
            return self._loop(policy_or_actions, horizon, noise, check=True)
        actions = self._check("actions", policy_or_actions, (B, horizon, self.act_dim))
        if use_fused:
            out = self._run("rollout", state_in, {"actions": actions, "noise_u": noise["u"], "noise_h": noise["h"]})
            return self._finish(out, actions)
        planned = iter(actions.transpose(1, 0, 2))
        return self._loop(lambda obs: next(planned), horizon, noise)

    def _finish(self, out: dict, actions: np.ndarray) -> dict[str, np.ndarray]:
        self._state = {**{k: out[f"{k}_next"] for k in _STATE}, "keys": out["keys_next"],
                       "values": out["values_next"]}
        obs = out["obs_seq"].numpy()
        self._state["obs"] = self._ortvalue(obs[:, -1])
        return {"obs": obs, "reward": out["reward_seq"].numpy(), "actions": np.asarray(actions),
                "latent": self.latent_state}

    def _loop(self, policy: Callable[[np.ndarray], np.ndarray], horizon: int,
              noise: dict[str, np.ndarray], check: bool = False) -> dict[str, np.ndarray]:
        """Step ``horizon`` times with ``policy``'s actions (checked when ``check``: a caller's callable)."""
        obs = self._state["obs"].numpy()
        observations, rewards, actions = [], [], []
        for t in range(horizon):
            a = policy(obs)
            if check:
                a = self._check(f"the actions the policy returned at step {t}", a, (self.batch, self.act_dim))
            obs, reward, _ = self._step(np.asarray(a, dtype=np.float32), {"u": noise["u"][:, t], "h": noise["h"][:, t]})
            observations.append(obs)
            rewards.append(reward)
            actions.append(a)
        return {"obs": np.stack(observations, 1), "reward": np.stack(rewards, 1), "actions": np.stack(actions, 1),
                "latent": self.latent_state}
