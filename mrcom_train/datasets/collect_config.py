"""What ``mrcom collect`` gathers and the checks made before it starts: :class:`CollectConfig` (every field
checked), the memory one worker needs at least (:func:`required_memory`, :func:`check_memory`) and whether a
folder may be resumed with a config (:func:`check_resumable`). The collection itself is :mod:`.collect`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from mrcom_core.errors import UserInputError, check_int
from mrcom_core.io.files import require_fields
from mrcom_core.io.resources import require_memory

from ..scenarios import DOMAINS, ScenarioSpec, UnifiedSpace, get_split, override_range, sample_scenarios
from .dataset import MANIFEST, read_manifest

POLICIES = ("random", "sac")


@dataclass(frozen=True)
class CollectConfig:
    """What ``mrcom collect`` gathers. Every field is checked here; errors name the field.

    ``alpha`` / ``beta`` / ``obs_fn`` override the chosen range of ``split`` (``beta`` replaces a fixed
    target speed). ``sac_*`` configure the behaviour policy when ``policy='sac'``: one gradient update
    every ``sac_update_every`` env steps after ``sac_learning_starts`` random steps. ``sac_chain`` > 1
    warm-starts behaviour policies: each domain's scenarios are taken in chains of that many, run one after
    another by one worker, and every scenario after a chain's first starts from the previous scenario's
    final agent (actor, critics, temperature; its own empty replay, acting from the first step), so later
    scenarios are collected by a policy that already moves. 1 = every scenario from scratch.
    """

    split: str = "t1-a5b20"
    range: str = "train"
    domains: tuple[str, ...] = field(default_factory=lambda: tuple(DOMAINS))
    scenarios_per_domain: int = 4
    episodes_per_scenario: int = 4
    policy: str = "random"
    episode_length: int = 1000
    seed: int = 0
    alpha: float | None = None
    beta: float | None = None
    obs_fn: str | None = None
    sac_hidden_dim: int = 256
    sac_batch_size: int = 256
    sac_learning_starts: int = 1000
    sac_update_every: int = 1
    sac_chain: int = 1
    workers: int = field(default=1, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "domains", tuple(self.domains))
        if not self.domains:
            raise UserInputError("domains: give at least one domain")
        for d in self.domains:
            if d not in DOMAINS:
                raise UserInputError(f"domains: unknown domain {d!r}; choose from {', '.join(DOMAINS)}")
        if len(set(self.domains)) != len(self.domains):
            raise UserInputError(f"domains: listed twice in {','.join(self.domains)}")
        if self.policy not in POLICIES:
            raise UserInputError(f"policy: unknown policy {self.policy!r}; choose from {', '.join(POLICIES)}")
        for name in ("scenarios_per_domain", "episodes_per_scenario", "episode_length", "workers",
                     "sac_hidden_dim", "sac_batch_size", "sac_update_every", "sac_chain"):
            check_int(name, getattr(self, name), 1)
        check_int("sac_learning_starts", self.sac_learning_starts, 0)
        check_int("seed", self.seed, 0)
        if self.sac_chain > 1 and self.policy != "sac":
            raise UserInputError(f"sac_chain: warm-start chains ({self.sac_chain}) need policy='sac', not "
                                 f"{self.policy!r}")
        self.scenario_range()  # validates split, range, alpha, beta and obs_fn

    def scenario_range(self):
        split = get_split(self.split)
        return override_range(split.range(self.range), alpha=self.alpha, beta=self.beta, obs_fn=self.obs_fn)

    def scenarios(self) -> list[ScenarioSpec]:
        return sample_scenarios(self.scenario_range(), self.domains, self.scenarios_per_domain, self.seed,
                                episode_length=self.episode_length)

    def chains(self, specs: list[ScenarioSpec]) -> list[list[int]]:
        """The scenario indices of ``specs`` (this config's scenarios) grouped into warm-start chains: per
        domain, consecutive runs of ``sac_chain`` (one scenario each when 1)."""
        chains: list[list[int]] = []
        for domain in self.domains:
            ids = [i for i, s in enumerate(specs) if s.domain == domain]
            chains += [ids[k: k + self.sac_chain] for k in range(0, len(ids), self.sac_chain)]
        return chains

    def to_dict(self) -> dict:
        data = asdict(self)
        data["domains"] = list(self.domains)
        return data


def required_memory(config: CollectConfig, specs: list[ScenarioSpec], space: UnifiedSpace) -> int:
    """A lower bound of the bytes one worker needs: one episode's float32 arrays (padded to the unified
    dims) plus the random policy's planned actions (float64), or the SAC replay buffer of a whole scenario."""
    T, K = config.episode_length, config.episodes_per_scenario
    need = ((T + 1) * space.obs_dim + T * space.act_dim + T) * 4
    if config.policy == "sac":
        obs_dim, act_dim = max(s.obs_dim for s in specs), max(s.act_dim for s in specs)
        return need + K * T * (2 * obs_dim + act_dim + 2) * 4
    return need + T * max(s.act_dim for s in specs) * 8


def check_memory(config: CollectConfig, specs: list[ScenarioSpec], space: UnifiedSpace) -> None:
    """Stop (:func:`mrcom_core.io.resources.require_memory`) unless one worker's :func:`required_memory` is free."""
    T, K = config.episode_length, config.episodes_per_scenario
    if config.policy == "sac":
        what = f"collecting episodes of {T} steps with a SAC replay of {K * T} transitions"
        fix = "lower --episode-length or --episodes-per-scenario"
    else:
        what, fix = f"collecting episodes of {T} steps", "lower --episode-length"
    require_memory(required_memory(config, specs, space), what, fix)


def check_resumable(out: Path, config: CollectConfig) -> None:
    """Check that ``out`` (a collection to resume) was collected with ``config`` (every compared field)."""
    manifest = read_manifest(out)
    require_fields(manifest, {"collect_config": dict}, str(out / MANIFEST))
    before = manifest["collect_config"]
    now = config.to_dict()
    for f in fields(CollectConfig):
        if f.compare and before.get(f.name, f.default) != now[f.name]:  # fields added later: their default
            raise UserInputError(f"cannot resume {out}: it was collected with {f.name}={before.get(f.name)!r}, "
                                 f"now {now[f.name]!r}")
