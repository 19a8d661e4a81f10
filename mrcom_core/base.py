"""What every world model shares: the latent state, its sizes, and :class:`BaseWorldModel`, the interface
the trainer, the evaluation, the imagination steps (:mod:`mrcom_core.steps`) and the exporters use.

A world model class (MrCoM or a baseline) subclasses :class:`BaseWorldModel` and declares:

* ``latent_sizes(config)`` — the dims of its latent slots ``u`` (stochastic), ``d`` (deterministic),
  ``h`` (auxiliary) and of its context readout ``c`` (0 = no context encoder);
* ``observe_step`` (posterior) and ``imagine_step`` (prior) — one latent step, noise given as input;
* ``observe_window`` (its ``forward``) — the training pass over a sampled window, returning whatever
  latents its loss needs (a NamedTuple of its own), and ``loss(window, batch, noise)`` — the loss terms;
* ``label`` (its name in tables) and ``Options``: its own switches, a :class:`~mrcom_core.config.ModelOptions`
  dataclass (``config.options`` holds them; a field of another model's options is refused).

It registers itself in :mod:`mrcom_core.registry`; nothing else needs to know about it.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
from torch import nn

from .config import ModelConfig, ModelOptions
from .ensemble import EnsembleHeads
from .layers import KVCache, RolloutCache, StreamingContextEncoder


class LatentState(NamedTuple):
    """``s_t = [u_t, d_t, h_t]``; a slot a model does not have has 0 dims."""

    u: torch.Tensor
    d: torch.Tensor
    h: torch.Tensor

    def cat(self) -> torch.Tensor:
        return torch.cat([self.u, self.d, self.h], dim=-1)


class LatentSizes(NamedTuple):
    """Dims of the latent slots and of the context readout ``c_t`` (0: the model has no such part)."""

    u: int
    d: int
    h: int
    context: int

    @property
    def state(self) -> int:
        """Dims of ``[u, d, h]``."""
        return self.u + self.d + self.h


class Gaussian(NamedTuple):
    """A diagonal Gaussian's raw head output: ``mean`` and ``std_raw`` (std = softplus(raw) + min_std)."""

    mean: torch.Tensor
    std_raw: torch.Tensor

    @classmethod
    def split(cls, raw: torch.Tensor) -> Gaussian:
        # ``split`` by a size, not ``chunk``: the ONNX exporter turns a chunk into shape arithmetic (6 nodes)
        mean, std_raw = raw.split(raw.shape[-1] // 2, dim=-1)
        return cls(mean, std_raw)

    @classmethod
    def stack(cls, steps: list[Gaussian], dim: int = 1) -> Gaussian:
        """Per-step Gaussians (each ``(B, ·)``) as one over the steps (``(B, T, ·)`` for ``dim=1``)."""
        return cls(torch.stack([g.mean for g in steps], dim), torch.stack([g.std_raw for g in steps], dim))


class BaseWorldModel(nn.Module):
    """Observation normalization (buffers saved with the weights), context tokens, the optional streaming
    context encoder, latent bookkeeping, decoding and the reward head's interface (see the module docstring
    for what a subclass adds)."""

    label: ClassVar[str] = ""
    #: the class's own switches (``config.options`` is one of these): none unless a subclass declares them
    Options: ClassVar[type[ModelOptions]] = ModelOptions
    #: the modules a head-only refit trains (those a class has: the decoder, reward head and value heads)
    refit_heads: ClassVar[tuple[str, ...]] = ("decoder", "reward_head", "value_heads", "meta_value", "ensemble_heads")
    #: values of :class:`ModelConfig`'s shared fields this class builds with unless the preset, ablations or
    #: overrides say otherwise (applied by :func:`mrcom_core.registry.model_config`)
    defaults: ClassVar[dict] = {}
    #: whether the class's loss trains ensemble heads (:func:`~mrcom_core.losses.with_ensemble`) and its
    #: :meth:`window_states` gives their inputs: only then does ``ModelConfig.ensemble`` apply
    supports_ensemble: ClassVar[bool] = False

    @classmethod
    def latent_sizes(cls, config: ModelConfig) -> LatentSizes:
        raise NotImplementedError

    def __init__(self, config: ModelConfig, obs_mean=None, obs_std=None, reward_stats=None):
        super().__init__()
        self.config = c = config
        self.sizes = self.latent_sizes(config)
        self.register_buffer("obs_mean", torch.zeros(c.obs_dim) if obs_mean is None
                             else torch.as_tensor(obs_mean, dtype=torch.float32).clone())
        self.register_buffer("obs_std", torch.ones(c.obs_dim) if obs_std is None
                             else torch.as_tensor(obs_std, dtype=torch.float32).clone())
        # the reward head's target scale (ModelConfig.reward_scale): identity for "raw", the data's for "unit"
        mean, std = reward_stats if reward_stats is not None and c.reward_scale == "unit" else (0.0, 1.0)
        self.register_buffer("reward_mean", torch.tensor([float(mean)]))
        self.register_buffer("reward_std", torch.tensor([float(std)]))
        self.encoder = None if self.sizes.context == 0 else self.make_encoder()
        self.ensemble_heads = None  # one-step heads whose disagreement measures what the model does not know
        if c.ensemble:
            self.ensemble_heads = EnsembleHeads(c.ensemble, self.sizes.state + c.act_dim, c.obs_dim + 1, c.hidden_dim,
                                                c.hidden_layers)
            self.register_buffer("elites", torch.ones(c.ensemble))  # chosen on held-out data (mrcom_core.ensemble)

    def make_encoder(self) -> nn.Module:
        """The context encoder (built when ``latent_sizes`` gives the context > 0 dims): MrCoM's streaming
        transformer over the last m tokens; a subclass may return another module with the same interface
        (``forward``, ``step``, ``cache_shape``), e.g. :class:`~mrcom_core.layers.RecurrentContextEncoder`."""
        c = self.config
        return StreamingContextEncoder(c.token_dim, c.ctx_width, c.ctx_layers, c.ctx_heads, self.sizes.context,
                                       c.context_len)

    @classmethod
    def history_steps(cls, config: ModelConfig) -> int:
        """Real steps before a training window (and in an adaptation prompt) that a model of this class reads:
        the context length m; more for a model whose context encoder is recurrent (it reads any length; its
        exported ``prime`` graph still takes m steps and the runtime observes the rest)."""
        return config.context_len

    @property
    def history_len(self) -> int:
        """:meth:`history_steps` of this model's config."""
        return self.history_steps(self.config)

    # ------------------------------------------------------------------------------ observations, tokens
    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.obs_mean) / self.obs_std

    def denormalize(self, obs_n: torch.Tensor) -> torch.Tensor:
        return obs_n * self.obs_std + self.obs_mean

    def tokens(self, obs_n: torch.Tensor, action: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
        """Context tokens ``(o_k, a_k[, r_k])`` from normalized observations."""
        parts = [obs_n, action] + ([reward[..., None]] if self.config.context_reward else [])
        return torch.cat(parts, dim=-1)

    def initial_state(self, batch: int, device=None) -> LatentState:
        s = self.sizes
        return LatentState(torch.zeros(batch, s.u, device=device), torch.zeros(batch, s.d, device=device),
                           torch.zeros(batch, s.h, device=device))

    # ------------------------------------------------------------------------------------------ context
    def cache_shape(self, batch: int) -> tuple[int, ...]:
        """Shape of the key/value FIFO: ``(layers, B, heads, m, head_dim)`` (the encoder's ``cache_shape``); a
        model without a context encoder carries a ``(1, B, 1, 1, 1)`` placeholder that every step passes through
        unchanged."""
        if self.encoder is None:
            return (1, batch, 1, 1, 1)
        return self.encoder.cache_shape(batch)

    def encode_context(self, tokens: torch.Tensor) -> tuple[torch.Tensor, KVCache]:
        """Full-sequence context encoding: ``tokens`` (B, T, E) → readouts (B, T, ctx) and the cache.

        The readout at token k is ``c_{k+1}``. Without an encoder the readouts have 0 dims and the cache
        is the placeholder of :meth:`cache_shape`.
        """
        if self.encoder is None:
            B, T, _ = tokens.shape
            empty = tokens.new_zeros(self.cache_shape(B))
            return tokens.new_zeros(B, T, 0), KVCache(empty, empty)
        return self.encoder(tokens)

    def context_step(self, token: torch.Tensor,
                     cache: KVCache | RolloutCache) -> tuple[torch.Tensor, KVCache | RolloutCache]:
        """Add one token (B, E) to the context: ``c`` of the next step and the shifted cache (or, for a
        :class:`~mrcom_core.layers.RolloutCache`, the cache with the token appended: see :meth:`rollout_cache`)."""
        if self.encoder is None:
            return token.new_zeros(token.shape[0], 0), cache
        if isinstance(cache, RolloutCache):
            return self.encoder.rollout_step(token, cache)
        return self.encoder.step(token, cache)

    @property
    def has_rollout_cache(self) -> bool:
        """Whether the context encoder can step a :class:`~mrcom_core.layers.RolloutCache` (the streaming
        transformer can; a recurrent or absent encoder has no cache worth splitting)."""
        return hasattr(self.encoder, "rollout_step")

    def rollout_cache(self, cache: KVCache) -> RolloutCache:
        """``cache`` as a :class:`~mrcom_core.layers.RolloutCache` for a multi-step rollout (needs
        :attr:`has_rollout_cache`): stepping it appends each new token instead of shifting the whole FIFO."""
        return self.encoder.rollout_cache(cache)

    def fifo(self, cache: RolloutCache) -> KVCache:
        """The FIFO :class:`~mrcom_core.layers.KVCache` at the end of a rollout on a :meth:`rollout_cache`."""
        return self.encoder.fifo(cache)

    def window_context(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``c_0 … c_L`` (B, L+1, ctx) of a sampled window: context (:attr:`history_len` steps) and window read
        as one token sequence."""
        m = self.history_len
        obs_n = self.normalize(batch["obs"])
        B, T1, _ = obs_n.shape
        ctx_tokens = self.tokens(self.normalize(batch["context_obs"]), batch["context_action"],
                                 batch["context_reward"])
        win_tokens = self.tokens(obs_n[:, :-1], batch["action"], batch["reward"])
        tokens = torch.cat([ctx_tokens, win_tokens], dim=1)
        if self.config.ctx_reencode and self.encoder is not None:  # each step's window from scratch (slow)
            windows = tokens.unfold(1, m, 1).transpose(-1, -2)  # (B, L+1, m, E)
            readout, _ = self.encode_context(windows.reshape(B * T1, m, -1))
            return readout[:, -1].reshape(B, T1, -1)
        readout, _ = self.encode_context(tokens)
        return readout[:, m - 1 :]

    # ----------------------------------------------------------------------------------------- readouts
    def decode(self, state: LatentState) -> torch.Tensor:
        """Predicted normalized observation (the Gaussian decoder's mean)."""
        return self.decoder(state.cat())

    def reward(self, state: LatentState, action: torch.Tensor) -> torch.Tensor:
        """The predicted reward ``r(s_t, a_t)``, in the data's units."""
        return self.reward_scaled(state, action) * self.reward_std + self.reward_mean

    def reward_scaled(self, state: LatentState, action: torch.Tensor) -> torch.Tensor:
        """The reward head's own output: the predicted reward standardized by :attr:`reward_mean` /
        :attr:`reward_std` (the rewards themselves under ``reward_scale="raw"``)."""
        return self.reward_head(torch.cat([state.cat(), action], dim=-1))[..., 0]

    def scale_reward(self, reward: torch.Tensor) -> torch.Tensor:
        """``reward`` standardized as the reward head predicts it (:meth:`reward_scaled`)."""
        return (reward - self.reward_mean) / self.reward_std

    def noise_shapes(self, batch_size: int, window_len: int) -> dict[str, tuple[int, ...]]:
        """Shapes of the standard-normal inputs of :meth:`observe_window` and :meth:`loss` for ``window_len``
        = L (the trainer draws them in this order)."""
        u, h = (batch_size, window_len + 1, self.sizes.u), (batch_size, window_len + 1, self.sizes.h)
        ensemble = {"ensemble": (batch_size, self.config.ensemble)} if self.config.ensemble else {}
        return {"u": u, "h": h, "u_prior": u, "h_prior": h, **ensemble}

    # ------------------------------------------------------------------------------ what subclasses add
    def observe_step(self, state: LatentState, context: torch.Tensor, prev_action: torch.Tensor,
                     obs_n: torch.Tensor, noise_u: torch.Tensor, noise_h: torch.Tensor) -> LatentState:
        """Posterior step: ``s_t`` from ``s_{t-1}``, ``c_t``, ``a_{t-1}`` and the normalized ``o_t``."""
        raise NotImplementedError

    def imagine_step(self, state: LatentState, context: torch.Tensor, prev_action: torch.Tensor,
                     noise_u: torch.Tensor, noise_h: torch.Tensor) -> LatentState:
        """Prior step: ``ŝ_t`` from ``s_{t-1}``, ``c_t`` and ``a_{t-1}`` (no observation)."""
        raise NotImplementedError

    def observe_window(self, batch: dict[str, torch.Tensor], noise: dict[str, torch.Tensor]):
        """The training pass over a sampled window (``mrcom_train.datasets.sampler``'s layout)."""
        raise NotImplementedError

    def loss(self, window, batch: dict[str, torch.Tensor], noise: dict[str, torch.Tensor]) -> dict:
        """Loss terms of :meth:`observe_window`'s output: ``{"loss": what to minimize, …terms to log}``. A class
        whose options are :class:`~mrcom_core.losses.OvershootOptions` also takes ``overshoot=False``: the same
        terms without
        :func:`~mrcom_core.losses.loss_overshoot`'s (which the trainer may compute beside them)."""
        raise NotImplementedError

    def window_states(self, window) -> LatentState:
        """The latents ``s_0 … s_{L-1}`` of :meth:`observe_window`'s output, in which the window's actions were
        taken (its ``state`` without the last step; a class whose window has no ``state`` overrides this)."""
        return LatentState(*(x[:, :-1] for x in window.state))

    def forward(self, batch: dict[str, torch.Tensor], noise: dict[str, torch.Tensor]):
        return self.observe_window(batch, noise)
