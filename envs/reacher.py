"""Reacher: a two-link planar arm (dm_control) must match a goal joint configuration, from pixels.

This is the ``qpos_match`` variant used by DINO-WM / stable-worldmodel for LeWM: the goal is a joint
configuration, and success (terminates) is ``|wrap(qpos - goal)| < 0.05`` rad for *every* joint,
the tolerance of stable-worldmodel's docs. Physics is dm_control's ``reacher.xml`` (timestep
0.02 s, one physics step per env step, torques ``action`` in ``[-1, 1]^2``). The unlimited shoulder
angle is kept wrapped to [-pi, pi) (placed start and goal angles may be any number); the wrist is
limited to +-160 degrees by a soft constraint, so valid states allow 0.1 rad beyond it.

Layouts: start state = ``(qpos shoulder, qpos wrist, qvel shoulder, qvel wrist)`` (rad, rad/s);
goal = goal ``qpos`` (2); ``proprio`` = ``qpos``; observation ``state`` = start state + goal (6).

Frames come from the top-down ``fixed`` camera through one reused ``mujoco.Renderer`` with shadows,
reflections and multisampling off (several times faster on CPU renderers, still clear at 64 px). dm_control's target sphere
is hidden: the goal image is the arm rendered at the goal configuration.

``perturb("teleport", qpos=None)`` sets the arm to ``qpos`` (random when None) at rest;
``perturb("color", color=None)`` recolours the arm.
"""

from __future__ import annotations

import os
from typing import Any

# Before dm_control imports mujoco, which picks its GL backend then (the default, glfw, needs a display).
os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
from dm_control.suite import reacher as dmc_reacher
from gymnasium import spaces
from lewm_envs.base import GoalImageEnv, as_color, check_box, wrap_angle
from lewm_envs.mujoco_render import Renderer, mujoco

TOLERANCE = 0.05  # rad, per joint
WRIST_LIMIT = np.deg2rad(160.0)
QPOS_LOW, QPOS_HIGH = np.array([-np.pi, -WRIST_LIMIT]), np.array([np.pi, WRIST_LIMIT])  # sampling range
# Valid wrist angles: the joint limit is a soft constraint, so the arm can overshoot it a little.
WRIST_VALID = WRIST_LIMIT + 0.1
# Joint damping caps speeds near 5-7 rad/s under full torque; the bound keeps the space finite.
MAX_QVEL = 50.0
ARM_GEOMS = ("arm", "hand", "finger")
HIDDEN_GROUP = 3  # geom groups >= 3 are not drawn with mujoco's default visual options


class ReacherEnv(GoalImageEnv):
    """dm_control Reacher with a goal joint configuration; see the module docstring.

    Args:
        image_size: side of the square ``pixels`` / ``goal`` images.
        render_mode: only ``"rgb_array"``.
    """

    state_dim, goal_dim, proprio_dim = 4, 2, 2
    quantities = {"joint angles": ("state", (0, 1), 2 * np.pi)}

    def __init__(self, image_size: int = 64, render_mode: str | None = "rgb_array") -> None:
        super().__init__(image_size, render_mode)
        self.model = mujoco.MjModel.from_xml_string(*dmc_reacher.get_model_and_assets())
        self.data = mujoco.MjData(self.model)
        self.model.geom_group[self.model.geom("target").id] = HIDDEN_GROUP
        self._arm_ids = [self.model.geom(name).id for name in ARM_GEOMS]
        self._arm_rgba = self.model.geom_rgba[self._arm_ids].copy()
        self._arm_matids = self.model.geom_matid[self._arm_ids].copy()
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        # The wrist limit is a soft constraint, so bound observed angles by pi rather than 160 degrees.
        state_low = np.array([-np.pi, -np.pi, -MAX_QVEL, -MAX_QVEL, -np.pi, -np.pi])
        self._build_observation_space((-np.pi, np.pi), (state_low, -state_low))
        self._renderer = Renderer(self.model, self.image_size, camera="fixed")

    # ---- placement -----------------------------------------------------------------------------------

    def achieved_goal(self, state: np.ndarray) -> np.ndarray:
        return state[:2].copy()

    def _check_state(self, state: np.ndarray, name: str) -> None:
        # Any shoulder angle is valid (it is wrapped); only the wrist is limited.
        check_box(f"{name} wrist qpos (rad)", state[1:2], np.array([-WRIST_VALID]), np.array([WRIST_VALID]))
        check_box(f"{name} qvel (rad/s)", state[2:4], np.full(2, -MAX_QVEL), np.full(2, MAX_QVEL))

    def _check_goal(self, goal: np.ndarray) -> None:
        check_box(
            "options['goal_state'] wrist qpos (rad)",
            goal[1:2],
            np.array([-WRIST_VALID]),
            np.array([WRIST_VALID]),
        )

    def _sample_qpos(self) -> np.ndarray:
        return self.np_random.uniform(QPOS_LOW, QPOS_HIGH)

    def _sample_goal(self) -> np.ndarray:
        return self._sample_qpos()

    def _sample_state(self, goal: np.ndarray) -> np.ndarray:
        while True:
            qpos = self._sample_qpos()
            if np.any(np.abs(wrap_angle(qpos - goal)) >= TOLERANCE):
                return np.concatenate([qpos, [0.0, 0.0]])

    def _set_physics(self, qpos: np.ndarray, qvel: np.ndarray) -> None:
        self.data.qpos[:] = [wrap_angle(qpos[0]), qpos[1]]
        self.data.qvel[:] = qvel
        self.data.ctrl[:] = 0.0
        mujoco.mj_forward(self.model, self.data)

    def _place_goal(self, goal: np.ndarray) -> None:
        goal[0] = wrap_angle(goal[0])
        self._restore_colors()  # undo an earlier colour perturbation
        self._set_physics(goal, np.zeros(2))  # posed so that _render_goal draws the goal

    def _place_state(self, state: np.ndarray) -> None:
        self._set_physics(state[:2], state[2:4])

    # ---- dynamics and scoring ---------------------------------------------------------------------

    def _simulate(self, action: Any) -> None:
        self.data.ctrl[:] = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        mujoco.mj_step(self.model, self.data)
        # The shoulder is an unlimited hinge: wrapping its angle changes nothing physically.
        self.data.qpos[0] = wrap_angle(self.data.qpos[0])

    def _is_success(self) -> bool:
        return bool(np.all(np.abs(wrap_angle(self.data.qpos - self.goal_state)) < TOLERANCE))

    def _sim_state(self) -> np.ndarray:
        return np.concatenate([self.data.qpos, self.data.qvel])

    def _proprio(self) -> np.ndarray:
        return self.data.qpos.copy()

    # ---- rendering ---------------------------------------------------------------------------------

    def _render_frame(self) -> np.ndarray:
        return self._renderer.render(self.data)

    def _render_goal(self) -> np.ndarray:
        return self._render_frame()

    def close(self) -> None:
        self._renderer.close()

    # ---- perturbations -----------------------------------------------------------------------------

    def _teleport(self, qpos: Any = None) -> None:
        if qpos is None:
            qpos = self._sample_qpos()
        qpos = np.asarray(qpos, dtype=np.float64).reshape(-1)
        if qpos.shape != (2,):
            raise ValueError(f"qpos must be 2 joint angles (rad), got {qpos.tolist()}")
        check_box("qpos (rad)", qpos[1:2], np.array([-WRIST_VALID]), np.array([WRIST_VALID]))
        self._set_physics(qpos, np.zeros(2))

    def _recolor(self, color: Any = None) -> None:
        # Geom rgba is only drawn for geoms without a material, so drop the materials.
        self.model.geom_matid[self._arm_ids] = -1
        self.model.geom_rgba[self._arm_ids] = np.append(as_color(color, self.np_random) / 255.0, 1.0)

    def _restore_colors(self) -> None:
        self.model.geom_matid[self._arm_ids] = self._arm_matids
        self.model.geom_rgba[self._arm_ids] = self._arm_rgba
