"""Network builders: MLPs, an exportable GRU cell and the context encoders (the streaming transformer over
the last m tokens, and a GRU over the whole history).

Everything here is written for export (ONNX / TorchScript): no Python branching on tensor values, no
fused ``nn.GRUCell``, attention written out with plain matmuls.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn


def mlp(in_dim: int, out_dim: int, hidden_dim: int, hidden_layers: int) -> nn.Sequential:
    """``hidden_layers`` × (Linear → LayerNorm → SiLU), then a Linear to ``out_dim``."""
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(hidden_layers):
        layers += [nn.Linear(dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.SiLU()]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*layers)


class GRUCell(nn.Module):
    """A GRU cell from two Linears (PyTorch's gate layout), exportable where ``nn.GRUCell`` is not.

    r = σ(W_r x + U_r h), z = σ(W_z x + U_z h), n = tanh(W_n x + r ⊙ (U_n h)), h' = (1 − z) ⊙ n + z ⊙ h.
    """

    def __init__(self, input_dim: int, hidden_dim: int):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.x2h = nn.Linear(input_dim, 3 * hidden_dim)
        self.h2h = nn.Linear(hidden_dim, 3 * hidden_dim)
        bound = 1.0 / math.sqrt(hidden_dim)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        xr, xz, xn = self.x2h(x).split(self.hidden_dim, dim=-1)  # not chunk: see Gaussian.split
        hr, hz, hn = self.h2h(h).split(self.hidden_dim, dim=-1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (1 - z) * n + z * h


class KVCache(NamedTuple):
    """Keys and values of the last m tokens of every layer: each ``(layers, B, heads, m, head_dim)``.

    Slot ``m - 1`` is the newest token; stepping shifts every slot one place towards 0 (a FIFO), so a
    slot's distance to the newest token is fixed and the relative-position bias needs no position input.
    """

    keys: torch.Tensor
    values: torch.Tensor


class RolloutCache(NamedTuple):
    """The context cache during a rollout of several imagined steps, in two parts so that stepping never copies
    the cache: ``start``, the :class:`KVCache` of the m tokens before the rollout (read in place, never
    shifted), and ``recent``, one :class:`KVCache` per layer holding the rollout's own tokens so far, ``(B,
    heads, t, head_dim)`` at step t (each grows by one slot per step; per layer, so that a step neither splits
    nor restacks them). The m newest of start + recent are the FIFO that :meth:`StreamingContextEncoder.step`
    would hold (:meth:`StreamingContextEncoder.fifo`)."""

    start: KVCache
    recent: tuple[KVCache, ...]


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, window: int):
        super().__init__()
        self.heads, self.head_dim, self.window = heads, width // heads, window
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.ff = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        # rel_bias[h, k] is added to the score of a key k steps older than the query (k < window).
        self.rel_bias = nn.Parameter(torch.zeros(heads, window))

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(self.heads * self.head_dim, dim=-1)  # not chunk: see Gaussian.split
        shape = (B, T, self.heads, self.head_dim)
        return (q.reshape(shape).transpose(1, 2), k.reshape(shape).transpose(1, 2), v.reshape(shape).transpose(1, 2))

    def _finish(self, x: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        B, _, T, _ = att.shape
        x = x + self.proj(att.transpose(1, 2).reshape(B, T, -1))
        return x + self.ff(self.norm2(x))

    def forward_full(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All T tokens at once; returns the output and this layer's keys/values of every token."""
        T = x.shape[1]
        q, k, v = self._split(x)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        pos = torch.arange(T, device=x.device)
        dist = pos[:, None] - pos[None, :]  # query minus key position
        allowed = (dist >= 0) & (dist < self.window)
        bias = self.rel_bias[:, dist.clamp(0, self.window - 1)]  # (heads, T, T)
        scores = (scores + bias).masked_fill(~allowed, float("-inf"))
        return self._finish(x, torch.softmax(scores, dim=-1) @ v), k, v

    def forward_step(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor):
        """One new token ``x`` (B, 1, W) against this layer's cached keys/values ``(B, heads, m, hd)`` (slot 0,
        the oldest, drops out of the window); returns the output and the token's own key and value
        ``(B, heads, 1, hd)``, which the caller appends to the FIFO.

        Written for the exported graphs: reshapes to constant shapes (the batch as -1; with one token
        ``(B, 1, heads, hd)`` and ``(B, heads, 1, hd)`` are the same memory, so no transposes), and the old
        slots are read where they lie instead of being shifted into a new FIFO first (a copy of the cache
        per layer): the new key's score and value are added beside them."""
        H, hd = self.heads, self.head_dim
        q, k, v = (t.reshape(-1, H, 1, hd) for t in self.qkv(self.norm1(x)).split(H * hd, dim=-1))
        old = (q @ keys.transpose(-1, -2))[..., 1:]  # (B, heads, 1, m - 1): slots 1 … m - 1
        scores = torch.cat([old, (q * k).sum(-1, keepdim=True)], -1) / math.sqrt(hd)  # (B, heads, 1, m)
        p = torch.softmax(scores + self.rel_bias.flip(-1)[None, :, None, :], dim=-1)
        att = nn.functional.pad(p[..., :-1], (1, 0)) @ values + p[..., -1:] * v  # slot 0 gets weight 0
        x = x + self.proj(att.reshape(-1, 1, H * hd))
        return x + self.ff(self.norm2(x)), k, v

    def forward_rollout(self, x: torch.Tensor, start_k: torch.Tensor, start_v: torch.Tensor, recent_k: torch.Tensor,
                        recent_v: torch.Tensor, ages: torch.Tensor):
        """:meth:`forward_step` against a :class:`RolloutCache` layer: the start slots ``(B, heads, m, hd)`` and
        the rollout's earlier tokens ``(B, heads, t, hd)``, then the new token; ``ages`` (m + t + 1,) is each
        position's distance to the new token, ``window`` for the ones out of the window (masked). Returns the
        output and the recent keys/values with the new token appended ``(B, heads, t + 1, hd)``."""
        H, hd = self.heads, self.head_dim
        q, k, v = (t.reshape(-1, H, 1, hd) for t in self.qkv(self.norm1(x)).split(H * hd, dim=-1))
        recent_k, recent_v = torch.cat([recent_k, k], 2), torch.cat([recent_v, v], 2)
        scores = torch.cat([q @ start_k.transpose(-1, -2), q @ recent_k.transpose(-1, -2)], -1) / math.sqrt(hd)
        table = nn.functional.pad(self.rel_bias, (0, 1), value=float("-inf"))  # age ≥ window: masked
        p = torch.softmax(scores + table[:, ages][None, :, None, :], dim=-1)
        att = p[..., : self.window] @ start_v + p[..., self.window :] @ recent_v
        x = x + self.proj(att.reshape(-1, 1, H * hd))
        return x + self.ff(self.norm2(x)), recent_k, recent_v


class StreamingContextEncoder(nn.Module):
    """Transformer over context tokens with causal attention limited to the last ``window`` tokens.

    ``c_t`` is read out at the token of step ``t - 1``: it sees the ``window`` (= m) tokens of steps
    ``t - m … t - 1`` (in deeper layers through their own windows, as any streaming transformer).

    * :meth:`forward` encodes a whole token sequence in one pass (training: context + window), returning
      a readout per token and the :class:`KVCache` of the last m tokens.
    * :meth:`step` adds one token against that cache (imagination): a FIFO of keys/values per layer.

    ``step`` after ``forward`` gives exactly what ``forward`` on the longer sequence gives (a test).
    """

    def __init__(self, token_dim: int, width: int, layers: int, heads: int, out_dim: int, window: int):
        super().__init__()
        self.window, self.width, self.heads = window, width, heads
        self.embed = nn.Linear(token_dim, width)
        self.blocks = nn.ModuleList(_Block(width, heads, window) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, out_dim)

    def cache_shape(self, batch: int) -> tuple[int, ...]:
        """``(layers, B, heads, m, head_dim)``."""
        return (len(self.blocks), batch, self.heads, self.window, self.width // self.heads)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, KVCache]:
        """``tokens`` (B, T, token_dim) with T ≥ window → readouts (B, T, out_dim) and the cache."""
        x = self.embed(tokens)
        keys, values = [], []
        for block in self.blocks:
            x, k, v = block.forward_full(x)
            keys.append(k[:, :, -self.window :])
            values.append(v[:, :, -self.window :])
        return self.out(self.norm(x)), KVCache(torch.stack(keys), torch.stack(values))

    def step(self, token: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        """One token (B, token_dim) → readout (B, out_dim) and the shifted cache (one copy of it: every
        layer's new key/value joins the FIFO in a single concatenation)."""
        x = self.embed(token)[:, None]
        keys, values = [], []
        for block, old_k, old_v in zip(self.blocks, cache.keys.unbind(0), cache.values.unbind(0), strict=True):
            x, k, v = block.forward_step(x, old_k, old_v)
            keys.append(k)
            values.append(v)
        shifted = (torch.cat([old[:, :, :, 1:], torch.stack(new)], dim=3)
                   for old, new in ((cache.keys, keys), (cache.values, values)))
        return self.out(self.norm(x[:, 0])), KVCache(*shifted)

    def rollout_step(self, token: torch.Tensor, cache: RolloutCache) -> tuple[torch.Tensor, RolloutCache]:
        """:meth:`step` on a :class:`RolloutCache`: the start cache is read where it lies and only the new
        token's keys/values are written (appended to ``recent``), so a rollout of H steps copies O(H²) slots
        instead of the whole cache per step. Same readouts as :meth:`step` (a test)."""
        m, t = self.window, cache.recent[0].keys.shape[2]
        ages = (m + t - torch.arange(m + t + 1, device=token.device)).clamp(max=m)
        x = self.embed(token)[:, None]
        recent = []
        for block, k, v, layer in zip(self.blocks, cache.start.keys.unbind(0), cache.start.values.unbind(0),
                                      cache.recent, strict=True):
            x, rk, rv = block.forward_rollout(x, k, v, layer.keys, layer.values, ages)
            recent.append(KVCache(rk, rv))
        return self.out(self.norm(x[:, 0])), RolloutCache(cache.start, tuple(recent))

    @staticmethod
    def rollout_cache(cache: KVCache) -> RolloutCache:
        """The :class:`RolloutCache` at the start of a rollout from ``cache`` (no recent tokens yet)."""
        return RolloutCache(cache, tuple(KVCache(k[:, :, :0], v[:, :, :0])
                                         for k, v in zip(cache.keys, cache.values, strict=True)))

    def fifo(self, cache: RolloutCache) -> KVCache:
        """The FIFO :class:`KVCache` a rollout ends with: the m newest slots of start + recent."""
        recent = [torch.stack([getattr(layer, f) for layer in cache.recent]) for f in KVCache._fields]
        return KVCache(*(torch.cat([s, r], 3)[:, :, :, -self.window :]
                         for s, r in zip(cache.start, recent, strict=True)))


class RecurrentContextEncoder(nn.Module):
    """A GRU over context tokens: the belief of a recurrent meta-RL model, with no window (every token since
    the start can reach its state; how much it keeps is learned).

    Same interface as :class:`StreamingContextEncoder`: :meth:`forward` reads a whole token sequence (any
    length) and returns a readout per token and the "cache", here the GRU state after the last token,
    stored as ``KVCache(state, state)`` with shape ``(1, B, 1, 1, width)`` so that the exported graphs and
    the runtime pass it on like the key/value FIFO; :meth:`step` adds one token.
    """

    #: initial bias of the GRU's update gate: σ(2) ≈ 0.88 of the state is kept per step at initialization (as an
    #: LSTM's forget-gate bias of 1–2), so the history is remembered from the start rather than only once trained
    UPDATE_BIAS = 2.0

    def __init__(self, token_dim: int, width: int, out_dim: int):
        super().__init__()
        self.width = width
        self.embed = nn.Linear(token_dim, width)
        self.gru = GRUCell(width, width)
        with torch.no_grad():
            self.gru.x2h.bias[width : 2 * width] += self.UPDATE_BIAS  # the z (update) gate's slice
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, out_dim)

    def cache_shape(self, batch: int) -> tuple[int, ...]:
        """``(1, B, 1, 1, width)``: the GRU state in the key/value FIFO's layout."""
        return (1, batch, 1, 1, self.width)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, KVCache]:
        """``tokens`` (B, T, token_dim) → readouts (B, T, out_dim) and the state after the last token."""
        x = self.embed(tokens)
        h = x.new_zeros(x.shape[0], self.width)
        states = []
        for t in range(x.shape[1]):
            h = self.gru(x[:, t], h)
            states.append(h)
        state = h[None, :, None, None]
        return self.out(self.norm(torch.stack(states, 1))), KVCache(state, state)

    def step(self, token: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        """One token (B, token_dim) → readout (B, out_dim) and the new state."""
        h = self.gru(self.embed(token), cache.keys[0, :, 0, 0])
        state = h[None, :, None, None]
        return self.out(self.norm(h)), KVCache(state, state)
