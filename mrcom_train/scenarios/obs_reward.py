"""A scenario's target-speed reward computed from its observation alone (numpy, vectorised over a batch).

``mrcom adapt --set imagined_reward=true`` uses it to score imagined transitions with the target task's
true reward function instead of the world model's reward head, so the model's dynamics and its reward
can be told apart. The observation is ScenarioEnv's flattening of dm_control's observation dict (keys in
the suite's order, :class:`~.env.ScenarioEnv`), before padding. What differs per domain sits on the domain's
target-speed task (:mod:`~.domains`): ``state_from_obs`` reads the observation's layout and ``posture_from_obs``
gives the factor the speed term is multiplied by (walker's ``(3·standing + upright)/4``, none for cheetah);
a domain whose task has both qualifies (:func:`supported_domains`).

The speed is dm_control's: the x velocity of the torso subtree's centre of mass (the ``torso_subtreelinvel``
sensor, i.e. of the whole body), computed exactly rather than approximated by the root's x velocity. The
observation holds the whole state but the root's x position, which the velocity does not depend on (walker:
each body's absolute pitch from its ``xx, xz``, the torso height and qvel; cheetah: qpos[1:] and qvel), so a
planar forward kinematics over the scenario's own (torso-scaled) MuJoCo model gives each body's centre of
mass and its x velocity ``ẋ_root + Σ_hinges ω_j (z_com − z_anchor_j)``, mass-weighted. The root velocity
alone is a poor stand-in: with random actions the torso jitters against its legs, and a cheetah's reward
computed from it was off by 0.13 per step on average (rewards averaging 0.29).

Only a target-speed scenario of such a domain whose observation is the true state (``obs_fn="none"``)
qualifies: :func:`check_obs_reward` says why any other does not.
"""

from __future__ import annotations

import functools

import numpy as np

from mrcom_core.errors import UserInputError

from .domains import DOMAINS, JOINT_HINGE, JOINT_SLIDE, _SpeedTerm, common, resolve_margin, scaled_xml
from .spec import ScenarioSpec


def supported_domains() -> tuple[str, ...]:
    """The domains whose target-speed task can score an observation (it has ``state_from_obs``)."""
    return tuple(name for name, d in DOMAINS.items() if hasattr(d.target_task, "state_from_obs"))


def check_obs_reward(spec: ScenarioSpec, field: str = "imagined_reward") -> None:
    """Raise :class:`UserInputError` naming ``field`` unless :func:`reward_from_obs` can score ``spec``: a
    scenario of a :func:`supported_domains` domain with a target speed and ``obs_fn="none"``."""
    why = None
    if spec.domain not in supported_domains():
        why = f"the {spec.domain} domain is not supported (only {', '.join(supported_domains())})"
    elif spec.target_speed is None:
        why = "the target scenario has no target speed (its split keeps the suite's reward)"
    elif spec.obs_fn != "none":
        why = f"the target scenario's observation function is {spec.obs_fn!r}, so its observation is not its state"
    if why is not None:
        raise UserInputError(f"{field}=true needs the target's reward computable from its observation: {why}")


def reward_from_obs(spec: ScenarioSpec, next_obs: np.ndarray) -> np.ndarray:
    """The target-speed reward of ``spec``'s task for observations ``next_obs`` ``(..., D)`` (the observation
    after the step: dm_control computes the reward after it; dims beyond ``spec.obs_dim``, the padding, are
    ignored); returns ``(...)`` float32. Raises :class:`UserInputError` for a scenario
    :func:`check_obs_reward` refuses."""
    check_obs_reward(spec)
    obs = np.asarray(next_obs, np.float64)
    if obs.shape[-1] < spec.obs_dim:
        raise ValueError(f"next_obs has {obs.shape[-1]} dims, scenario {spec.describe()} {spec.obs_dim}")
    shape, obs = obs.shape[:-1], obs.reshape(-1, obs.shape[-1])
    speed = com_x_velocity(spec, obs)
    margin = resolve_margin(spec.domain, spec.speed_margin)
    reward = _SpeedTerm(spec.target_speed, margin)(speed) * DOMAINS[spec.domain].target_task.posture_from_obs(obs)
    return np.asarray(reward, np.float32).reshape(shape)


def com_x_velocity(spec: ScenarioSpec, obs: np.ndarray) -> np.ndarray:
    """x velocity of the whole body's centre of mass (dm_control's ``torso_subtreelinvel[0]``) for observations
    ``obs`` ``(N, D)`` of a :func:`supported_domains` scenario; ``(N,)``."""
    tree = _tree(spec.domain, spec.length_scale, spec.size_scale)
    qpos, qvel = DOMAINS[spec.domain].target_task.state_from_obs(tree, obs)
    n = len(obs)
    zero = np.zeros(n)
    angle, x, z, vx, hinges = [zero], [zero], [zero], [zero], [[]]  # per body, the world first
    momentum = np.zeros(n)
    for b in range(1, len(tree.parent)):
        p = tree.parent[b]
        a, v, hs = angle[p], vx[p], list(hinges[p])
        bx, bz = _rotate(a, *tree.pos[b])
        px, pz = x[p] + bx, z[p] + bz
        for kind, adr, ax, az, jx, jz in tree.joints[b]:
            if kind == JOINT_SLIDE:
                wx, wz = _rotate(a, ax, az)
                px, pz, v = px + wx * qpos[:, adr], pz + wz * qpos[:, adr], v + wx * qvel[:, adr]
            else:  # a hinge about ±y (the sign is in ax) at (jx, jz): its anchor stays put
                ox, oz = _rotate(a, jx, jz)
                anchor_z = pz + oz
                a = a + ax * qpos[:, adr]
                nx, nz = _rotate(a, jx, jz)
                px, pz = px + ox - nx, anchor_z - nz
                hs.append((anchor_z, ax * qvel[:, adr]))
        angle.append(a), x.append(px), z.append(pz), vx.append(v), hinges.append(hs)
        com_z = pz + _rotate(a, *tree.ipos[b])[1]
        momentum += tree.mass[b] * (v + sum(omega * (com_z - anchor) for anchor, omega in hs))
    return momentum / tree.mass[1:].sum()


def _rotate(angle, x: float, z: float):
    """(x, z) rotated by ``angle`` about +y: ``(cos·x + sin·z, −sin·x + cos·z)``."""
    c, s = np.cos(angle), np.sin(angle)
    return c * x + s * z, -s * x + c * z


class Tree:
    """The planar kinematic tree of a (torso-scaled) planar model: per body its parent, position
    and centre of mass (x, z in the parent's / its own frame), mass and joints ``(type, qpos address, axis,
    position)``, where a slide's axis is ``(x, z)`` and a hinge's is ``(±1, 0)`` (its y component)."""

    def __init__(self, model):
        planar = set(model.jnt_type) <= {JOINT_SLIDE, JOINT_HINGE}
        if not (np.all(model.body_quat == [1, 0, 0, 0]) and model.nq == model.nv and planar
                and np.all(model.jnt_qposadr == model.jnt_dofadr)):
            raise RuntimeError("the dm_control model is not the planar tree obs_reward expects")  # pragma: no cover
        self.parent = [int(p) for p in model.body_parentid]
        self.pos = [(float(p[0]), float(p[2])) for p in model.body_pos]
        self.ipos = [(float(p[0]), float(p[2])) for p in model.body_ipos]
        self.mass = np.asarray(model.body_mass, np.float64)
        self.nq = int(model.nq)
        self.joints: list[list[tuple]] = [[] for _ in self.parent]
        for j in range(model.njnt):
            kind, axis, pos = int(model.jnt_type[j]), model.jnt_axis[j], model.jnt_pos[j]
            if (kind == JOINT_HINGE and abs(abs(axis[1]) - 1) > 1e-9) or (kind == JOINT_SLIDE and axis[1] != 0):
                raise RuntimeError("obs_reward expects hinges about y and slides in the x-z plane")  # pragma: no cover
            ax, az = (float(axis[1]), 0.0) if kind == JOINT_HINGE else (float(axis[0]), float(axis[2]))
            self.joints[int(model.jnt_bodyid[j])].append((kind, int(model.jnt_qposadr[j]), ax, az, float(pos[0]),
                                                          float(pos[2])))


@functools.lru_cache(maxsize=32)
def _tree(domain: str, length_scale: float, size_scale: float) -> Tree:
    physics = DOMAINS[domain].module.Physics.from_xml_string(scaled_xml(domain, length_scale, size_scale),
                                                            common.ASSETS)
    return Tree(physics.model)
