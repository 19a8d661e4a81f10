import logging
import os
import warnings

os.environ.setdefault("MUJOCO_GL", "disable")  # no rendering in tests; silences glfw's display warning
warnings.filterwarnings("ignore", module="glfw")
logging.getLogger("absl").setLevel(logging.ERROR)


def make_batch(cfg, batch=4, window=6, seed=0):
    """A random training batch in the sampler's layout for a model config (torch tensors)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    B, L, M, D, A = batch, window, cfg.context_len, cfg.obs_dim, cfg.act_dim
    obs_mask = torch.ones(B, D)
    obs_mask[0, D - 2 :] = 0  # the first row is a scenario with padded dims
    return {
        "context_obs": torch.randn(B, M, D, generator=g) * obs_mask[:, None],
        "context_action": torch.rand(B, M, A, generator=g) * 2 - 1,
        "context_reward": torch.rand(B, M, generator=g),
        "obs": torch.randn(B, L + 1, D, generator=g) * obs_mask[:, None],
        "action": torch.rand(B, L, A, generator=g) * 2 - 1,
        "reward": torch.rand(B, L, generator=g),
        "obs_mask": obs_mask,
        "action_mask": torch.ones(B, A),
        "scenario": torch.arange(B) % cfg.num_scenarios,
    }


def make_noise(model, batch=4, window=6, seed=1):
    import torch

    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in model.noise_shapes(batch, window).items()}
