"""Batched imagined rollouts from an export folder, with numpy and ONNX Runtime only (no torch).

>>> rt = Runtime("runs/demo/export", seed=0)                  # verifies checksums, picks providers
>>> obs = rt.reset(prompt_obs, prompt_act, prompt_rew, batch=64)  # a real trajectory of the target scenario
>>> obs, reward, latent = rt.step(actions)                     # one imagined step for all 64 rollouts
>>> out = rt.rollout(actions_or_policy, horizon=15)            # H steps; one fused call where exported

The runtime only sequences the exported graphs (``prime`` → ``observe``* for a prompt, then ``step`` or the
fused ``rollout``), which are :mod:`mrcom_core.steps`'s functions frozen; it computes nothing itself. The
latent state and the context's key/value FIFO stay on the execution device between calls (ONNX Runtime
I/O binding: each call's outputs are bound as the next call's inputs); only observations and rewards come
back to the host. Noise comes from the runtime's own seeded generator, into preallocated buffers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .manifest import ExportError, read_manifest

_STATE = ("u", "d", "h")


def default_providers() -> list[str]:
    """CUDA when onnxruntime-gpu sees a GPU, else CPU."""
    available = ort.get_available_providers()
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]


class Runtime:
    """Imagined rollouts of an exported MrCoM model.

    Args:
        export_dir: a folder written by ``mrcom export`` (with the ONNX format).
        providers: ONNX Runtime execution providers (default: :func:`default_providers`).
        seed: seeds the latent noise (and the exported policy's action noise).
        verify: check every file's SHA-256 against the manifest first.
        threads: intra-op threads per session (``None``: ONNX Runtime's default).
    """

    def __init__(self, export_dir: str | Path, *, providers: list[str] | None = None, seed: int = 0,
                 verify: bool = True, threads: int | None = None):
        self.root = Path(export_dir)
        self.manifest = m = read_manifest(self.root, verify=verify)
        if "onnx" not in m["formats"]:
            raise ExportError(f"export {self.root} has no ONNX graphs (formats {m['formats']}); export with "
                              f"--format onnx or all")
        self.providers = providers or default_providers()
        self.device = "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"
        self.threads = threads
        self._options = ort.SessionOptions()
        if threads:
            self._options.intra_op_num_threads = threads
        self.obs_dim, self.act_dim, self.context_len = m["obs_dim"], m["act_dim"], m["context_len"]
        self.latent = m["latent"]
        self.horizon = m["rollout_horizon"]
        self.has_policy = m["policy"] is not None
        self.rng = np.random.default_rng(seed)
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._state: dict[str, ort.OrtValue] | None = None
        self._buffers: dict[tuple, np.ndarray] = {}
        self.batch = 0

    # ------------------------------------------------------------------------------------------ plumbing
    def session(self, name: str) -> ort.InferenceSession:
        if name not in self.manifest["graphs"]:
            raise ExportError(f"export {self.root} has no graph {name!r}")
        if name not in self._sessions:
            path = self.root / self.manifest["graphs"][name]["onnx"]
            self._sessions[name] = ort.InferenceSession(str(path), self._options, providers=self.providers)
        return self._sessions[name]

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
        array = np.asarray(array, dtype=np.float32)
        if array.shape != shape:
            raise ExportError(f"{name} must have shape {shape}, got {array.shape}")
        if not np.isfinite(array).all():
            raise ExportError(f"{name} contains NaN or inf")
        return array

    # ---------------------------------------------------------------------------------------------- API
    def reset(self, prompt_obs, prompt_act, prompt_rew=None, *, batch: int | None = None,
              noise: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Start ``B`` rollouts from prompt trajectories of the target scenario; returns the last observation.

        ``prompt_obs`` ``(B, T+1, obs_dim)``, ``prompt_act`` ``(B, T, act_dim)``, ``prompt_rew`` ``(B, T)``
        with T ≥ context length m (observations and actions zero-padded to the export's dims); or the
        same without the leading B plus ``batch=B`` to start B rollouts from one prompt. The first m steps
        fill the context FIFO and the posterior observes o_m (``prime``); it then observes every later step
        (``observe``), so the state starts at o_T.
        ``noise`` (``{"u": (B, T-m+1, u), "h": (B, T-m+1, h)}``) replaces the posterior's seeded noise.
        """
        obs, act = np.asarray(prompt_obs, dtype=np.float32), np.asarray(prompt_act, dtype=np.float32)
        rew = None if prompt_rew is None else np.asarray(prompt_rew, dtype=np.float32)
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

        def posterior_noise(k: int) -> dict[str, np.ndarray]:
            if noise is not None:
                return {"noise_u": noise["u"][:, k - m], "noise_h": noise["h"][:, k - m]}
            return {"noise_u": self._noise("u", B, lat["u"]), "noise_h": self._noise("h", B, lat["h"])}

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
        (``{"u": (B, u), "h": (B, h)}``) replaces the seeded latent noise.
        """
        self._require_reset()
        B = self.batch
        actions = self._check("actions", actions, (B, self.act_dim))
        noise = noise or {"u": self._noise("u", B, self.latent["u"]), "h": self._noise("h", B, self.latent["h"])}
        out = self._run("step", {k: self._state[k] for k in (*_STATE, "obs", "keys", "values")},
                        {"action": actions, "noise_u": noise["u"], "noise_h": noise["h"]})
        self._state = {**{k: out[f"{k}_next"] for k in _STATE}, "obs": out["obs_next"], "keys": out["keys_next"],
                       "values": out["values_next"]}
        return out["obs_next"].numpy(), out["reward"].numpy(), self.latent_state

    def rollout(self, policy_or_actions: np.ndarray | Callable[[np.ndarray], np.ndarray] | str,
                horizon: int | None = None, *, fused: bool | None = None,
                noise: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """``horizon`` imagined steps for all B rollouts; returns ``obs`` (B, H, D), ``reward`` (B, H),
        ``actions`` (B, H, A) and the final ``latent``.

        ``policy_or_actions``: an array ``(B, H, act_dim)`` of actions; a callable mapping observations
        ``(B, obs_dim)`` to actions ``(B, act_dim)``; or ``"exported"`` for the policy exported with the
        model. Array and exported-policy rollouts whose H equals the export's fused horizon run as one
        graph call unless ``fused=False``. ``noise`` (``{"u": (B, H, u), "h": (B, H, h)}``, plus ``"action"``
        ``(B, H, policy act_dim)`` for the exported policy) replaces the seeded noise.
        """
        self._require_reset()
        B = self.batch
        if isinstance(policy_or_actions, str):
            if policy_or_actions != "exported":
                raise ExportError(f"unknown policy {policy_or_actions!r}: pass actions, a callable or 'exported'")
            if not self.has_policy:
                raise ExportError(f"export {self.root} has no policy; export with --policy")
        horizon = horizon or (np.asarray(policy_or_actions).shape[1] if isinstance(policy_or_actions, np.ndarray)
                              else self.horizon)
        if horizon < 1:
            raise ExportError(f"horizon must be >= 1, got {horizon}")
        can_fuse = horizon == self.horizon and not callable(policy_or_actions)
        if fused and not can_fuse:
            raise ExportError(f"a fused rollout needs horizon={self.horizon} (the exported one) and actions or the "
                              f"exported policy, got horizon={horizon}")
        use_fused = can_fuse if fused is None else fused
        lat = self.latent
        noise = dict(noise or {})
        noise.setdefault("u", self._noise("u", B, horizon, lat["u"]))
        noise.setdefault("h", self._noise("h", B, horizon, lat["h"]))
        state_in = {k: self._state[k] for k in (*_STATE, "obs", "keys", "values")}
        if isinstance(policy_or_actions, str):
            pol = self.manifest["policy"]
            noise_a = noise["action"] if "action" in noise else self._noise("action", B, horizon, pol["act_dim"])
            if use_fused:
                out = self._run("policy_rollout", state_in, {"noise_action": noise_a, "noise_u": noise["u"],
                                                             "noise_h": noise["h"]})
                return self._finish(out, out["action_seq"].numpy())

            noise_steps = iter(noise_a.transpose(1, 0, 2))

            def exported_policy(obs: np.ndarray) -> np.ndarray:
                return self._run("policy", {}, {"obs": obs, "noise_action": next(noise_steps)})["action"].numpy()

            return self._loop(exported_policy, horizon, noise)
        if callable(policy_or_actions):
            return self._loop(policy_or_actions, horizon, noise)
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
              noise: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        obs = self._state["obs"].numpy()
        observations, rewards, actions = [], [], []
        for t in range(horizon):
            a = np.asarray(policy(obs), dtype=np.float32)
            obs, reward, _ = self.step(a, {"u": noise["u"][:, t], "h": noise["h"][:, t]})
            observations.append(obs)
            rewards.append(reward)
            actions.append(a)
        return {"obs": np.stack(observations, 1), "reward": np.stack(rewards, 1), "actions": np.stack(actions, 1),
                "latent": self.latent_state}
