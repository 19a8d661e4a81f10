"""A scenario: the small frozen record that rebuilds one environment anywhere."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from mrcom_core.errors import UserInputError, check_int

from .domains import DOMAINS
from .obs_functions import OBS_FUNCTIONS, affected_count


@dataclass(frozen=True)
class ScenarioSpec:
    """One scenario of the meta-scenario set (paper §2.2, §5.1).

    Attributes:
        domain: ``hopper``, ``walker`` or ``cheetah``.
        length_scale: torso length relative to the suite's.
        size_scale: torso radius relative to the suite's.
        target_speed: the objective ``v_i`` in m/s; ``None`` keeps the suite task's own reward.
        speed_margin: distance from ``v_i`` at which the speed reward reaches 0 in m/s (``None``: v_max / 2; the
            splits set it, see :meth:`~.splits.ScenarioRange.margin`).
        obs_fn: observation function, one of :data:`~.obs_functions.OBS_FUNCTIONS`.
        obs_noise_std: σ of ``add-g``.
        episode_length: steps per episode (the suite's tasks have 1,000).
        seed: seeds the task's initial states, the observation function and ``msk-f``'s fixed dims.
    """

    domain: str
    length_scale: float = 1.0
    size_scale: float = 1.0
    target_speed: float | None = None
    speed_margin: float | None = None
    obs_fn: str = "none"
    obs_noise_std: float = 0.1
    episode_length: int = 1000
    seed: int = 0

    def __post_init__(self):
        if self.domain not in DOMAINS:
            raise UserInputError(f"ScenarioSpec.domain: unknown domain {self.domain!r}; "
                                 f"choose one of {', '.join(DOMAINS)}")
        for name in ("length_scale", "size_scale"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise UserInputError(f"ScenarioSpec.{name} must be a finite number > 0, got {value}")
        if self.target_speed is not None and not math.isfinite(self.target_speed):
            raise UserInputError(f"ScenarioSpec.target_speed must be finite, got {self.target_speed}")
        if self.speed_margin is not None and not self.speed_margin > 0:
            raise UserInputError(f"ScenarioSpec.speed_margin must be > 0, got {self.speed_margin}")
        if self.obs_fn not in OBS_FUNCTIONS:
            raise UserInputError(f"ScenarioSpec.obs_fn: unknown observation function {self.obs_fn!r}; "
                                 f"choose one of {', '.join(OBS_FUNCTIONS)}")
        if not self.obs_noise_std >= 0:
            raise UserInputError(f"ScenarioSpec.obs_noise_std must be >= 0, got {self.obs_noise_std}")
        check_int("ScenarioSpec.episode_length", self.episode_length)

    @property
    def obs_dim(self) -> int:
        """Observation dims this scenario emits (``add-d`` appends 10%, rounded up)."""
        n = DOMAINS[self.domain].obs_dim
        return n + affected_count(n) if self.obs_fn == "add-d" else n

    @property
    def act_dim(self) -> int:
        return DOMAINS[self.domain].act_dim

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ScenarioSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise UserInputError(f"ScenarioSpec: unknown field(s) {sorted(unknown)}")
        return cls(**data)

    def describe(self) -> str:
        speed = "suite reward" if self.target_speed is None else f"v={self.target_speed:.2f}"
        return (f"{self.domain}(len×{self.length_scale:.3f}, size×{self.size_scale:.3f}, {speed}, "
                f"obs={self.obs_fn}, seed={self.seed})")
