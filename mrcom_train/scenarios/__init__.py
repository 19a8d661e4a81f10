"""Multi-scenario dm_control suite of the paper (§5.1): scaled torsos (α), target speeds (β),
observation functions, named splits, a Gymnasium environment over unified padded spaces, and the
target-speed reward computed from an observation (``obs_reward``)."""

from .domains import DOMAINS, Domain, build_dm_env, register_domain, scaled_xml, unregister_domain
from .env import ScenarioEnv, UnifiedSpace, pad
from .obs_functions import OBS_FUNCTIONS, affected_count, make_obs_function
from .obs_reward import check_obs_reward, reward_from_obs
from .spec import ScenarioSpec
from .splits import SPLITS, ScenarioRange, Split, get_split, override_range, sample_scenarios, target_scenario

__all__ = [
    "DOMAINS", "OBS_FUNCTIONS", "SPLITS", "Domain", "ScenarioEnv", "ScenarioRange", "ScenarioSpec", "Split",
    "UnifiedSpace", "affected_count", "build_dm_env", "check_obs_reward", "get_split", "make_obs_function",
    "override_range", "pad", "register_domain", "reward_from_obs", "sample_scenarios", "scaled_xml",
    "target_scenario", "unregister_domain",
]
