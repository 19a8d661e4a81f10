"""The optimizer settings shared by world-model training and the SAC agent."""

from __future__ import annotations

import torch


def adam_options(device: torch.device) -> dict:
    """Keyword arguments for ``torch.optim.Adam`` picking its fastest implementation on ``device``: the fused
    kernel on CPU and CUDA (one pass over all parameters instead of about ten small ops per parameter),
    else the multi-tensor (``foreach``) one."""
    return {"fused": True} if device.type in ("cpu", "cuda") else {"foreach": True}
