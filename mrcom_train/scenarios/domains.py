"""The three dm_control domains of the paper (§5.1), rebuilt from their own XML with a scaled torso.

One record per domain (:class:`Domain` in :data:`DOMAINS`) holds everything that differs: the suite module
and XML, the torso scaler, the suite task and the target-speed task, the control step, v_max and the
dims. Every domain list in the project derives from :data:`DOMAINS`; :func:`build_dm_env` turns a
scenario's physical parameters into a ``dm_control.rl.control.Environment``.

Torso scaling, per domain (``length`` scales the long axis, ``size`` the capsule radius):

* hopper: the torso capsule runs from z=-0.05 (where the pelvis hangs) to z=0.2. Its top end is scaled
  about the bottom end, and the nose moves with the top end (and outwards with the radius).
* walker: the torso capsule is centred on its body; its half-length scales, both thighs move to the
  new bottom end, and the torso's initial height moves by the same amount so the feet start where
  they did.
* cheetah: the torso capsule runs along x from -0.5 to 0.5; both ends scale about the centre, the back
  thigh and front thigh move to the new ends and the head moves with the front end.

At scales (1, 1) the XML is numerically the suite's own, so the environment equals ``suite.load``.

Target-speed reward (paper §5.1, objective ``v_i``): ``speed_term = tolerance(speed, bounds=(v_i, v_i),
margin=speed_margin, sigmoid='linear', value_at_margin=0)``, i.e. 1 at exactly ``v_i`` falling linearly
to 0 at ``|speed - v_i| = speed_margin`` (the split chooses the margin: by default ``max(v_i, 0.1 v_max)``,
see :class:`~.splits.ScenarioRange`). hopper: a smooth standing factor × speed_term; walker: dm_control's
``(3·standing + upright)/4`` × speed_term; cheetah: speed_term alone. ``target_speed=None`` keeps the suite
task's own reward (hopper-hop, walker-run, cheetah-run).

Hopper's standing factor is our reading: the suite's is binary (``tolerance(height, (0.6, 2))``, no margin),
so a hopper that never stands earns nothing and SAC needs hundreds of thousands of steps to find it; ours
adds a margin of half the standing height, as walker's standing term has (``tolerance(height, (0.6, 2),
margin=0.3)``, dm_control's default Gaussian sigmoid: 0.1 at 0.3 m).
"""

from __future__ import annotations

import logging
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from mrcom_core.errors import UserInputError

try:  # dm_control sets up rendering at import: a GL backend that cannot load fails here
    from dm_control.rl import control
    from dm_control.suite import cheetah, common, hopper, walker
    from dm_control.utils import rewards
except Exception as e:
    gl = os.environ.get("MUJOCO_GL")
    if not gl or gl.strip().lower() in ("disable", "disabled", "off", "false", "0"):
        raise
    raise UserInputError(f"dm_control cannot start with MUJOCO_GL={gl} ({type(e).__name__}: "
                         f"{str(e).strip().splitlines()[-1] if str(e).strip() else e!r}); mrcom never renders, so "
                         f"MUJOCO_GL=disable is enough") from None


class _DropSetTotalMassWarning(logging.Filter):
    """dm_control's own cheetah.xml uses ``settotalmass``, which MuJoCo 3.17 warns about on every build."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "settotalmass" not in record.getMessage()


logging.getLogger("absl").addFilter(_DropSetTotalMassWarning())


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split()]


def _fmt(values: list[float]) -> str:
    return " ".join(repr(float(v)) for v in values)


def _find(root: ET.Element, tag: str, name: str) -> ET.Element:
    node = root.find(f".//{tag}[@name='{name}']")
    if node is None:  # pragma: no cover - guards against a changed dm_control XML
        raise RuntimeError(f"dm_control XML has no <{tag} name='{name}'>")
    return node


def _scale_hopper(root: ET.Element, length: float, size: float) -> None:
    torso = _find(root, "geom", "torso")
    x0, y0, z0, x1, y1, z1 = _floats(torso.get("fromto"))
    new_z1 = z0 + (z1 - z0) * length
    radius = _floats(torso.get("size"))[0]
    torso.set("fromto", _fmt([x0, y0, z0, x1, y1, new_z1]))
    torso.set("size", _fmt([radius * size]))
    nose = _find(root, "geom", "nose")
    a = _floats(nose.get("fromto"))
    dx, dz = radius * (size - 1.0), new_z1 - z1
    nose.set("fromto", _fmt([a[0] + dx, a[1], a[2] + dz, a[3] + dx, a[4], a[5] + dz]))


def _scale_walker(root: ET.Element, length: float, size: float) -> None:
    torso_geom = _find(root, "geom", "torso")
    radius, half = _floats(torso_geom.get("size"))
    torso_geom.set("size", _fmt([radius * size, half * length]))
    for thigh in ("right_thigh", "left_thigh"):
        body = _find(root, "body", thigh)
        x, y, z = _floats(body.get("pos"))
        body.set("pos", _fmt([x, y, z * length]))
    torso_body = _find(root, "body", "torso")
    x, y, z = _floats(torso_body.get("pos"))
    torso_body.set("pos", _fmt([x, y, z + half * (length - 1.0)]))


def _scale_cheetah(root: ET.Element, length: float, size: float) -> None:
    torso = _find(root, "geom", "torso")
    x0, y0, z0, x1, y1, z1 = _floats(torso.get("fromto"))
    torso.set("fromto", _fmt([x0 * length, y0, z0, x1 * length, y1, z1]))
    torso.set("size", _fmt([_floats(torso.get("size"))[0] * size]))
    head = _find(root, "geom", "head")
    hx, hy, hz = _floats(head.get("pos"))
    head.set("pos", _fmt([hx + x1 * (length - 1.0), hy, hz]))
    for thigh in ("bthigh", "fthigh"):
        body = _find(root, "body", thigh)
        x, y, z = _floats(body.get("pos"))
        body.set("pos", _fmt([x * length, y, z]))


def scaled_xml(domain: str, length_scale: float, size_scale: float) -> str:
    """The domain's suite XML with the torso length and radius scaled (see the module docstring)."""
    info = DOMAINS[domain]
    root = ET.fromstring(common.read_model(info.xml_file))
    info.scale_torso(root, float(length_scale), float(size_scale))
    return ET.tostring(root, encoding="unicode")


class _SpeedTerm:
    """``tolerance(speed, bounds=(v, v), margin, sigmoid='linear', value_at_margin=0)`` as a callable."""

    def __init__(self, target_speed: float, margin: float):
        self.target, self.margin = float(target_speed), float(margin)

    def __call__(self, speed: float) -> float:
        return rewards.tolerance(speed, bounds=(self.target, self.target), margin=self.margin,
                                 sigmoid="linear", value_at_margin=0.0)


class HopperTargetSpeed(hopper.Hopper):
    """Hopper whose reward is (smooth) standing × how close the forward speed is to the scenario's target."""

    def __init__(self, target_speed: float, speed_margin: float, random=None):
        super().__init__(hopping=True, random=random)
        self._speed_term = _SpeedTerm(target_speed, speed_margin)

    def get_reward(self, physics):
        standing = rewards.tolerance(physics.height(), (hopper._STAND_HEIGHT, 2), margin=hopper._STAND_HEIGHT / 2)
        return standing * self._speed_term(physics.speed())


JOINT_SLIDE, JOINT_HINGE = 2, 3  # mjtJoint


class WalkerTargetSpeed(walker.PlanarWalker):
    """Walker whose reward is dm_control's stand reward × closeness to the target speed.

    Its observation (24 dims, the suite's order): ``orientations`` (xx, xz of the 7 bodies' rotation matrices,
    torso first: 0–13), ``height`` (torso z: 14), ``velocity`` (qvel: rootz, rootx, rooty, 6 joints: 15–23).
    """

    ORIENTATIONS, HEIGHT, VELOCITY = slice(0, 14), 14, slice(15, 24)

    def __init__(self, target_speed: float, speed_margin: float, random=None):
        super().__init__(move_speed=walker._RUN_SPEED, random=random)
        self._speed_term = _SpeedTerm(target_speed, speed_margin)

    def get_reward(self, physics):
        standing = rewards.tolerance(physics.torso_height(), bounds=(walker._STAND_HEIGHT, float("inf")),
                                     margin=walker._STAND_HEIGHT / 2)
        upright = (1 + physics.torso_upright()) / 2
        return (3 * standing + upright) / 4 * self._speed_term(physics.horizontal_velocity())

    @classmethod
    def posture_from_obs(cls, obs: np.ndarray) -> np.ndarray:
        """The factor :meth:`get_reward` multiplies the speed term by, from observations ``(N, D)``: the torso
        rotates about y only, so its ``zz`` (upright) equals its ``xx`` (obs 0)."""
        standing = rewards.tolerance(obs[:, cls.HEIGHT], bounds=(walker._STAND_HEIGHT, float("inf")),
                                     margin=walker._STAND_HEIGHT / 2)
        return (3 * standing + (1 + obs[:, cls.ORIENTATIONS.start]) / 2) / 4

    @classmethod
    def state_from_obs(cls, tree, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(qpos, qvel)`` from observations ``(N, D)`` over the planar kinematic ``tree`` of the scenario's
        model (:class:`~.obs_reward.Tree`); the root's x position, which the observation lacks, is 0."""
        n = len(obs)
        xx, xz = obs[:, cls.ORIENTATIONS][:, 0::2], obs[:, cls.ORIENTATIONS][:, 1::2]
        pitch = np.concatenate([np.zeros((n, 1)), np.arctan2(xz, xx)], 1)  # per body, absolute; the world's 0
        qpos = np.zeros((n, tree.nq))
        for b in range(1, len(tree.parent)):
            for kind, adr, ax, az, _, _ in tree.joints[b]:
                if kind == JOINT_HINGE:
                    qpos[:, adr] = ax * (pitch[:, b] - pitch[:, tree.parent[b]])
                elif az:  # rootz: the torso's height above its rest height
                    qpos[:, adr] = (obs[:, cls.HEIGHT] - tree.pos[b][1]) / az
        return qpos, obs[:, cls.VELOCITY]


class CheetahTargetSpeed(cheetah.Cheetah):
    """Cheetah whose reward is closeness of its forward speed to the target speed.

    Its observation (17 dims): ``position`` (qpos without rootx: 0–7), ``velocity`` (qvel: rootx, rootz, rooty,
    6 joints: 8–16).
    """

    POSITION, VELOCITY = slice(0, 8), slice(8, 17)

    def __init__(self, target_speed: float, speed_margin: float, random=None):
        super().__init__(random=random)
        self._speed_term = _SpeedTerm(target_speed, speed_margin)

    def get_reward(self, physics):
        return self._speed_term(physics.speed())

    @staticmethod
    def posture_from_obs(obs: np.ndarray) -> np.ndarray:
        """The speed term's factor: none (1)."""
        return np.ones(len(obs))

    @classmethod
    def state_from_obs(cls, tree, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(qpos, qvel)`` from observations ``(N, D)``, the root's x position (not observed) 0."""
        return np.concatenate([np.zeros((len(obs), 1)), obs[:, cls.POSITION]], 1), obs[:, cls.VELOCITY]


@dataclass(frozen=True)
class Domain:
    """Everything that differs per domain. ``v_max`` is the suite's own saturation speed of the task reward
    (hopper ``_HOP_SPEED``, walker ``_RUN_SPEED``, cheetah ``_RUN_SPEED``): our choice for the paper's
    "fastest speed under default dynamics", overridable per split."""

    name: str
    module: ModuleType  # the dm_control suite module (its Physics class)
    xml_file: str
    scale_torso: Callable[[ET.Element, float, float], None]  # (root, length_scale, size_scale), in place
    task: str  # the suite task whose reward a scenario without a target speed keeps (``suite.load(name, task)``)
    suite_task: Callable  # (random) -> that task, built on our physics
    target_task: type  # (target_speed, speed_margin, random) -> the target-speed task
    control_timestep: float | None  # None: the physics step
    v_max: float
    obs_dim: int
    act_dim: int
    # MBPO's imagined-rollout length (start, end), linear over an adaptation's env steps (Janner et al. 2019,
    # appendix C: Hopper 1 → 15 over epochs 20 → 100, Walker2d and HalfCheetah 1)
    mbpo_horizon: tuple[int, int]


DOMAINS: dict[str, Domain] = {d.name: d for d in (
    Domain("hopper", hopper, "hopper.xml", _scale_hopper, "hop",
           lambda random: hopper.Hopper(hopping=True, random=random),
           HopperTargetSpeed, hopper._CONTROL_TIMESTEP, float(hopper._HOP_SPEED), 15, 4, (1, 15)),
    Domain("walker", walker, "walker.xml", _scale_walker, "run",
           lambda random: walker.PlanarWalker(move_speed=walker._RUN_SPEED, random=random),
           WalkerTargetSpeed, walker._CONTROL_TIMESTEP, float(walker._RUN_SPEED), 24, 6, (1, 1)),
    Domain("cheetah", cheetah, "cheetah.xml", _scale_cheetah, "run", lambda random: cheetah.Cheetah(random=random),
           CheetahTargetSpeed, None, float(cheetah._RUN_SPEED), 17, 6, (1, 1)),
)}


def register_domain(domain: Domain) -> Domain:
    """Add ``domain`` to :data:`DOMAINS` (at the end: scenario sampling seeds a domain by its position, so the
    built-in domains keep their scenarios); every domain list, option and check then includes it. Returns it."""
    if not isinstance(domain, Domain):
        raise TypeError(f"register_domain: {domain!r} is not a Domain")
    if domain.name in DOMAINS and DOMAINS[domain.name] is not domain:
        raise ValueError(f"a domain is already registered as {domain.name!r}")
    DOMAINS[domain.name] = domain
    return domain


def unregister_domain(name: str) -> None:
    """Remove ``name`` from :data:`DOMAINS` (a no-op when it is not there)."""
    DOMAINS.pop(name, None)


def resolve_margin(domain: str, speed_margin: float | None) -> float:
    """The speed margin (m/s) a scenario's reward uses: ``speed_margin``, or the suite's ``v_max / 2`` when None."""
    return DOMAINS[domain].v_max / 2 if speed_margin is None else speed_margin


def build_dm_env(domain: str, length_scale: float = 1.0, size_scale: float = 1.0,
                 target_speed: float | None = None, speed_margin: float | None = None,
                 random=None) -> control.Environment:
    """A dm_control environment of ``domain`` with a scaled torso and (optionally) a target-speed reward.

    The environment has no time limit of its own: :class:`~mrcom_train.scenarios.env.ScenarioEnv` counts
    steps. ``random`` seeds the task (an int or ``numpy.random.RandomState``), as in ``suite.load``.
    """
    if domain not in DOMAINS:
        raise KeyError(domain)
    info = DOMAINS[domain]
    physics = info.module.Physics.from_xml_string(scaled_xml(domain, length_scale, size_scale), common.ASSETS)
    if target_speed is None:
        task = info.suite_task(random)
    else:
        margin = resolve_margin(domain, speed_margin)
        task = info.target_task(target_speed, margin, random=random)
    return control.Environment(physics, task, time_limit=math.inf, control_timestep=info.control_timestep)
