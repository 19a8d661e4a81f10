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
  it (``model.history_len``; default 8 × ``context_len``: 256 at ``small``), read by the GRU; where
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

from dataclasses import dataclass

from torch import nn

from ..config import ModelConfig
from ..errors import UserInputError, check_int
from ..layers import RecurrentContextEncoder
from ..losses import OvershootOptions
from .rssm import ContextRSSM


@dataclass(frozen=True)
class MambaOptions(OvershootOptions):
    """The RSSM's options and ``history_len`` (0 = :attr:`MambaStyle.history_factor` × ``context_len``): real
    steps of history before each training window, all read by the recurrent context encoder (MAMBA trains on
    sequences that include their history); the exported ``prime`` graph still takes ``context_len`` steps and
    the runtime observes the rest of a longer prompt step by step."""

    history_len: int = 0

    def __post_init__(self):
        super().__post_init__()
        check_int("model.history_len", self.history_len, minimum=0)

    def check(self, config: ModelConfig) -> None:
        if self.history_len and self.history_len < config.context_len:
            raise UserInputError(f"model.history_len ({self.history_len}) must be 0 or >= model.context_len "
                                 f"({config.context_len})")


class MambaStyle(ContextRSSM):
    """The context-augmented RSSM with a GRU over the whole history as its context encoder."""

    label = "MAMBA"
    Options = MambaOptions
    #: history steps per training window when ``model.history_len`` is 0, as a multiple of m
    history_factor = 8

    def make_encoder(self) -> nn.Module:
        c = self.config
        return RecurrentContextEncoder(c.token_dim, c.ctx_width, self.sizes.context)

    @classmethod
    def history_steps(cls, config: ModelConfig) -> int:
        return config.options.history_len or cls.history_factor * config.context_len
