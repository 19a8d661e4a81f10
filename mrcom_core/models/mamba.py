"""A MAMBA-style world model (Rimon et al. 2024, "MAMBA: an effective world model approach for
meta-reinforcement learning"): a DreamerV3-style RSSM whose belief about the scenario is a recurrent state
that runs over the whole history of the scenario, instead of an attention window over the last m steps.

What MAMBA does (read from its paper's summary and its official code, zoharri/mamba, a fork of
dreamerv3-torch) and what is kept here:

* **Kept: a recurrent belief over the whole history, rewards included.** MAMBA's RSSM state runs over the
  whole meta-episode (all sub-episodes of one task, reset only at its start) and reads the reward as an
  input. Here a GRU (:class:`~mrcom_core.layers.RecurrentContextEncoder`) reads the same ``(o, a, r)``
  tokens as MrCoM's encoder, one per step, with no window: its readout ``c_t`` feeds the RSSM's prior
  and posterior exactly as in :class:`~mrcom_core.models.rssm.ContextRSSM` (the paper's DreamerV3), so the
  two rows differ only in how the history is read. At run time the state carries over a prompt of any
  length (the runtime's ``reset`` observes every step after the first m), and adaptation prompts carry
  :attr:`history_len` steps.
* **Kept: training on long sequences that include their history.** MAMBA trains on whole meta-episodes
  from their first step. Here every training window comes with :attr:`history_len` steps of history before
  it (``ModelConfig.history_len``; default 8 × ``context_len``: 256 at ``small``), read by the GRU; where
  the window starts early in its episode, the history is filled from another episode of the same scenario,
  which is MAMBA's meta-episode (sub-episodes of one task) in our data layout.
* **Changed: two recurrences instead of one.** MAMBA's single RSSM state is both dynamics memory and
  belief; here the belief GRU is separate from the RSSM's ``d`` (which restarts at each window, as in the
  other models here), because that is what lets it share the trainer's window sampler, the exported
  ``prime``/``observe``/``step`` graphs and the runtime with every other model.
* **Not kept:** the normalized time-step input (our prompts do not carry the episode step), discrete
  latents, symlog and KL balancing (as for our DreamerV3 row), the local reconstruction heads of its code,
  the growing training-sequence length (its only schedule; its imagination horizon is fixed at 10 in its
  code, and imagination here follows the adaptation loop's per-domain MBPO horizon schedule for every
  model alike), and its smaller network sizes (the comparison keeps one size for all models).
"""

from __future__ import annotations

from torch import nn

from ..config import ModelConfig
from ..layers import RecurrentContextEncoder
from .rssm import ContextRSSM


class MambaStyle(ContextRSSM):
    """The context-augmented RSSM with a GRU over the whole history as its context encoder."""

    label = "MAMBA"
    recurrent_history = True
    #: history steps per training window when ``ModelConfig.history_len`` is 0, as a multiple of m
    history_factor = 8

    def make_encoder(self) -> nn.Module:
        c = self.config
        return RecurrentContextEncoder(c.token_dim, c.ctx_width, self.sizes.context)

    @classmethod
    def history_steps(cls, config: ModelConfig) -> int:
        return config.history_len or cls.history_factor * config.context_len
