"""Cube: OGBench single-cube manipulation (UR5e + Robotiq gripper) from pixels, rendered here.

Wraps OGBench's ``CubeEnv(env_type="single")`` in its data-collection mode (random arm pose, cube
pose and target at every reset) with state observations, and draws the frames itself with the
``front_pixels`` camera and the ``visual-cube-single-v0`` look (translucent arm, purple gripper) through
one reused renderer with shadows, reflections and multisampling off. Even so, CPU (llvmpipe)
rendering of this scene is slow: expect roughly 20-30 env steps/s at 64 px on one core.

Actions are OGBench's ``Box(-1, 1, (5,))``: end-effector displacement xyz, yaw, gripper opening.
Success (terminates): the cube centre is within 0.04 m of the target position (OGBench's rule).

Layouts: start state = MuJoCo ``qpos`` (21) + ``qvel`` (20) of the whole scene; goal = target cube
position ``(x, y, z)`` in metres; ``proprio`` = effector ``(x, y, z, yaw)``, gripper opening and
gripper contact, both in [0, 1] (6, OGBench's own proprio features); observation ``state`` = start
state + goal (44). The goal image shows the cube at the
goal (arm at a random pose, as in OGBench's own goal images). The target marker is never drawn.

Needs the optional extra ``cube`` (``pip install "lewm-agent[cube]"``, i.e. ``ogbench``).

``perturb("teleport", position=None)`` moves the cube to ``(x, y, z)`` (random on the table when
None); ``perturb("color", color=None)`` recolours the cube.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from lewm_envs.base import GoalImageEnv, as_color, check_box, require
from lewm_envs.mujoco_render import Renderer, mujoco

SUCCESS_RADIUS = 0.04  # m
CUBE_QPOS = 14  # qpos address of the cube's free joint (after 6 arm and 8 gripper joints)
# Valid cube positions and targets (m): anywhere on or above the table, like states seen in data.
CUBE_LOW, CUBE_HIGH = np.array([-1.0, -1.0, 0.0]), np.array([1.0, 1.0, 1.0])
TABLE_LOW, TABLE_HIGH = np.array([0.3, -0.3]), np.array([0.55, 0.3])  # OGBench's object sampling area
JOINT_SLACK = 0.1  # joint limits are soft constraints, so observed angles can overshoot a little
MAX_QVEL = 100.0
# Materials made translucent / recoloured exactly as OGBench does for its pixel-based tasks.
TRANSLUCENT = {
    "ur5e/robotiq/metal": 0.1,
    "ur5e/robotiq/silicone": 0.1,
    "ur5e/robotiq/gray": 0.1,
    "ur5e/robotiq/black": 0.1,
    "ur5e/robotiq/pad_gray": 0.5,
    "ur5e/black": 0.1,
    "ur5e/jointgray": 0.1,
    "ur5e/linkgray": 0.1,
    "ur5e/lightblue": 0.1,
}
PURPLE = ("ur5e/robotiq/black", "ur5e/robotiq/pad_gray")


class CubeEnv(GoalImageEnv):
    """OGBench single cube from pixels; see the module docstring.

    Args:
        image_size: side of the square ``pixels`` / ``goal`` images.
        render_mode: only ``"rgb_array"``.
    """

    goal_dim, proprio_dim = 3, 6
    # The cube's position sits at a model-dependent offset of qpos, so it is not listed here.
    quantities = {"end-effector position": ("proprio", (0, 1, 2), None), "gripper opening": ("proprio", (4,), None)}

    def __init__(self, image_size: int = 64, render_mode: str | None = "rgb_array") -> None:
        super().__init__(image_size, render_mode)
        cube_env = require("ogbench.manipspace.envs.cube_env", "cube")
        self.sim = cube_env.CubeEnv(
            env_type="single", ob_type="states", mode="data_collection", visualize_info=False
        )
        self.sim.reset(seed=0)  # compiles the MuJoCo model
        self.model, self.data = self.sim._model, self.sim._data
        for name, alpha in TRANSLUCENT.items():
            rgba = self.model.material(name).rgba
            rgba[:3] = self.sim._colors["purple"][:3] if name in PURPLE else rgba[:3]
            rgba[3] = alpha
        self._cube_qpos = self.model.joint("object_joint_0").qposadr[0]
        assert self._cube_qpos == CUBE_QPOS, "OGBench's cube model changed; update CUBE_QPOS"
        self._cube_qvel = self.model.joint("object_joint_0").dofadr[0]
        self._target_mocap = self.sim._cube_target_mocap_ids[0]
        self._cube_color = self.sim._cube_colors[0].copy()
        self.state_dim = self.model.nq + self.model.nv
        self.action_space = spaces.Box(-1.0, 1.0, (5,), np.float32)
        self._qpos_low, self._qpos_high = self._qpos_bounds()
        qvel = np.full(self.model.nv, MAX_QVEL)
        state_low = np.concatenate([self._qpos_low, -qvel, CUBE_LOW])
        state_high = np.concatenate([self._qpos_high, qvel, CUBE_HIGH])
        proprio_low, proprio_high = [-1.0, -1.0, -0.1, -np.pi, 0.0, 0.0], [1.0, 1.0, 1.0, np.pi, 1.0, 1.0]
        self._build_observation_space((proprio_low, proprio_high), (state_low, state_high))
        self._renderer = Renderer(self.model, self.image_size, camera="front_pixels")

    def _qpos_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Valid qpos: limited joints within their range (+ slack), the cube near the table."""
        low, high = np.full(self.model.nq, -np.inf), np.full(self.model.nq, np.inf)
        for j in range(self.model.njnt):
            if self.model.jnt_limited[j]:
                adr = self.model.jnt_qposadr[j]
                low[adr], high[adr] = self.model.jnt_range[j] + [-JOINT_SLACK, JOINT_SLACK]
        c = self._cube_qpos
        low[c : c + 7] = [*CUBE_LOW, -1.0, -1.0, -1.0, -1.0]  # xyz (m), then a unit quaternion
        high[c : c + 7] = [*CUBE_HIGH, 1.0, 1.0, 1.0, 1.0]
        return low, high

    # ---- placement -----------------------------------------------------------------------------------

    def achieved_goal(self, state: np.ndarray) -> np.ndarray:
        return state[self._cube_qpos : self._cube_qpos + 3].copy()

    def _check_state(self, state: np.ndarray, name: str) -> None:
        nq = self.model.nq
        check_box(f"{name} qpos", state[:nq], self._qpos_low, self._qpos_high)
        check_box(
            f"{name} qvel", state[nq:], np.full(self.model.nv, -MAX_QVEL), np.full(self.model.nv, MAX_QVEL)
        )

    def _check_goal(self, goal: np.ndarray) -> None:
        check_box("options['goal_state'] (cube target xyz, m)", goal, CUBE_LOW, CUBE_HIGH)

    def _begin_episode(self) -> None:
        self.sim._cube_colors[0] = self._cube_color  # undo an earlier colour perturbation
        # OGBench randomises arm, cube and target on reset; seed it from our generator.
        self.sim.reset(seed=int(self.np_random.integers(2**31)))

    def _sample_goal(self) -> np.ndarray:
        return self.data.mocap_pos[self._target_mocap].copy()

    def _sample_state(self, goal: np.ndarray) -> np.ndarray:
        while np.linalg.norm(self._cube_pos() - goal) <= SUCCESS_RADIUS:  # never start solved
            self._teleport()
        return np.concatenate([self.data.qpos, self.data.qvel])

    def _place_goal(self, goal: np.ndarray) -> None:
        self.data.mocap_pos[self._target_mocap] = goal

    def _place_state(self, state: np.ndarray) -> None:
        self.sim.set_state(state[: self.model.nq], state[self.model.nq :])

    # ---- dynamics and scoring ---------------------------------------------------------------------

    def _simulate(self, action: Any) -> None:
        self.sim.step(np.clip(np.asarray(action, dtype=np.float64).reshape(5), -1.0, 1.0))

    def _cube_pos(self) -> np.ndarray:
        return self.data.qpos[self._cube_qpos : self._cube_qpos + 3]

    def _is_success(self) -> bool:
        return bool(np.linalg.norm(self._cube_pos() - self.goal_state) <= SUCCESS_RADIUS)

    def _sim_state(self) -> np.ndarray:
        return np.concatenate([self.data.qpos, self.data.qvel])

    def _proprio(self) -> np.ndarray:
        info = self.sim.compute_ob_info()
        keys = ("effector_pos", "effector_yaw", "gripper_opening", "gripper_contact")
        return np.concatenate([info[f"proprio/{key}"] for key in keys])

    # ---- rendering ---------------------------------------------------------------------------------

    def _render_frame(self) -> np.ndarray:
        return self._renderer.render(self.data)

    def _render_goal(self) -> np.ndarray:
        saved = self.data.qpos.copy()
        self.data.qpos[self._cube_qpos : self._cube_qpos + 3] = self.goal_state
        mujoco.mj_forward(self.model, self.data)
        image = self._render_frame()
        self.data.qpos[:] = saved
        mujoco.mj_forward(self.model, self.data)
        return image

    def close(self) -> None:
        self._renderer.close()

    # ---- perturbations -----------------------------------------------------------------------------

    def _teleport(self, position: Any = None) -> None:
        if position is None:
            xyz = np.array([*self.np_random.uniform(TABLE_LOW, TABLE_HIGH), 0.02])
        else:
            xyz = np.asarray(position, dtype=np.float64).reshape(-1)
            if xyz.shape != (3,):
                raise ValueError(f"position must be the cube's (x, y, z) in metres, got {position!r}")
            check_box("position (cube xyz, m)", xyz, CUBE_LOW, CUBE_HIGH)
        self.data.qpos[self._cube_qpos : self._cube_qpos + 3] = xyz
        self.data.qvel[self._cube_qvel : self._cube_qvel + 6] = 0.0
        mujoco.mj_forward(self.model, self.data)

    def _recolor(self, color: Any = None) -> None:
        # OGBench re-applies _cube_colors to the cube geoms after every step, so change it there.
        self.sim._cube_colors[0, :3] = as_color(color, self.np_random) / 255.0
        for gid in self.sim._cube_geom_ids_list[0]:
            self.model.geom_rgba[gid, :3] = self.sim._cube_colors[0, :3]
