"""PushT: push a T-shaped block to a goal pose with a circular agent (pymunk 7, NumPy rendering).

Dynamics follow gym-pusht / DINO-WM / stable-worldmodel (relative actions): a 512x512 world (units
are world pixels, y pointing down as on screen) with walls 5 px from each edge (thick here, so a block
squeezed against one cannot pass through it; see ``_build_space``); a kinematic circle
agent (radius 15) and a dynamic T block (two 30-px-thick bars: 120 x 30 top, 30 x 90 stem, mass 1,
friction 1, no gravity, space damping 0 so the block stops when it is no longer pushed). An action
``a`` in ``[-1, 1]^2`` sets the PD target ``agent_pos + 100 * a``; the controller (k_p = 100,
k_v = 20) runs for 10 substeps of dt = 0.01 s (10 Hz control). The target is clipped to [20, 492]
because pymunk never stops a kinematic body at static walls, so the agent could otherwise leave.

Success (terminates): block position error < 20 px and wrapped angle error < pi/9. With
``dino_wm_success=True`` the position error is instead the L2 norm over (agent xy, block xy), the
exact DINO-WM / stable-worldmodel rule used for the paper's numbers.

Layouts: start state and goal = ``(agent x, agent y, block x, block y, block angle, agent vx,
agent vy)`` (7, the stable-worldmodel layout; the goal's velocity is stored as 0 and its angle wrapped
to [0, 2pi)); ``proprio`` = agent ``(x, y, vx, vy)``; observation ``state`` = start state (angle
wrapped to [0, 2pi)) followed by the goal (14). Block ``(x, y)`` is the body
origin (middle of the top bar's bottom edge), not the centre of mass, as in the original.

Frames are drawn with anti-aliased signed distances (no pygame): white floor, light-grey walls,
slate-grey block, royal-blue agent. The goal pose is not drawn into frames; the goal image is the
scene rendered at the goal state.

``perturb("teleport", agent=None, block=None)`` moves the agent to ``(x, y)`` and the block to
``(x, y, angle)`` (random, non-overlapping when None); ``perturb("color", color=None,
body="block")`` recolours the block (or ``body="agent"``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from lewm_envs.base import GoalImageEnv, as_color, check_box, require, wrap_angle

WORLD = 512.0
WALL_INSET, WALL_RADIUS = 5.0, 2.0
WALL_THICKNESS = 200.0  # how far the static wall boxes reach outside the arena
# The block's origin may lie this far outside [0, 512] when the agent squeezes the block into a wall
# (up to ~20 px measured over 200 episodes of the expert with noise 1.0). Reset accepts it, and the
# simulation holds the block there as a last resort, so every state the env produces is one it accepts.
BLOCK_REACH = 60.0
BLOCK_LOW, BLOCK_HIGH = -BLOCK_REACH, WORLD + BLOCK_REACH
POSITIONS_LOW = np.array([0.0, 0.0, BLOCK_LOW, BLOCK_LOW])  # agent xy, block xy
POSITIONS_HIGH = np.array([WORLD, WORLD, BLOCK_HIGH, BLOCK_HIGH])
AGENT_RADIUS, ACTION_SCALE = 15.0, 100.0
K_P, K_V, DT, SUBSTEPS = 100.0, 20.0, 0.01, 10
# T block in its body frame: (centre x, centre y, half width, half height) of the bar and the stem.
SCALE = 30.0
T_RECTS = np.array([[0.0, SCALE / 2, 2 * SCALE, SCALE / 2], [0.0, 2.5 * SCALE, SCALE / 2, 1.5 * SCALE]])
POS_LOW, POS_HIGH = 20.0, WORLD - 20.0  # where the agent can be driven (PD targets are clipped here)
# The PD controller keeps the agent below ~400 px/s; the bound leaves room and keeps the space finite.
MAX_SPEED = 1000.0
SUCCESS_POS, SUCCESS_ANGLE = 20.0, np.pi / 9
BACKGROUND = np.array([255, 255, 255], np.float32)
WALL_COLOR = np.array([211, 211, 211], np.float32)  # LightGray
BLOCK_COLOR = np.array([119, 136, 153], np.uint8)  # LightSlateGray
AGENT_COLOR = np.array([65, 105, 225], np.uint8)  # RoyalBlue


def tee_distance(x: np.ndarray, y: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Signed distance (world px, negative inside) from points ``(x, y)`` to the T at ``pose``.

    Box distances use the max-norm form, exact on the edges that matter for anti-aliasing.
    """
    c, s = np.cos(pose[2]), np.sin(pose[2])
    dx, dy = x - pose[0], y - pose[1]
    lx, ly = c * dx + s * dy, -s * dx + c * dy  # rotate into the body frame
    d = [np.maximum(np.abs(lx - cx) - hx, np.abs(ly - cy) - hy) for cx, cy, hx, hy in T_RECTS]
    return np.minimum(*d)


class PushTEnv(GoalImageEnv):
    """PushT from pixels; see the module docstring for dynamics, success and layouts.

    Args:
        image_size: side of the square ``pixels`` / ``goal`` images.
        render_mode: only ``"rgb_array"``.
        dino_wm_success: score success with the DINO-WM rule (agent and block xy within 20 px).
    """

    state_dim = goal_dim = 7
    quantities = {"agent position": ("state", (0, 1), None), "block position": ("state", (2, 3), None),
                  "block angle": ("state", (4,), 2 * np.pi)}
    proprio_dim = 4

    def __init__(
        self, image_size: int = 64, render_mode: str | None = "rgb_array", dino_wm_success: bool = False
    ) -> None:
        super().__init__(image_size, render_mode)
        self._pymunk = require("pymunk", "pusht")
        self.dino_wm_success = bool(dino_wm_success)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        v = MAX_SPEED
        pos_vel = (np.array([0, 0, -v, -v]), np.array([WORLD, WORLD, v, v]))
        state_low = np.array([0, 0, BLOCK_LOW, BLOCK_LOW, 0, -v, -v] * 2)
        state_high = np.array([WORLD, WORLD, BLOCK_HIGH, BLOCK_HIGH, 2 * np.pi, v, v])
        self._build_observation_space(pos_vel, (state_low, np.concatenate([state_high, state_high])))
        # Pixel-centre coordinates in world units, and the static floor + walls.
        self._px = WORLD / self.image_size
        centres = (np.arange(self.image_size, dtype=np.float32) + 0.5) * self._px
        self._x, self._y = np.meshgrid(centres, centres)
        self._background = self._draw_background()
        self.block_color, self.agent_color = BLOCK_COLOR.copy(), AGENT_COLOR.copy()
        self._build_space()

    def _build_space(self) -> None:
        """A fresh pymunk space: rebuilt on every reset so no cached contacts carry over."""
        pm = self._pymunk
        self.space = pm.Space()
        self.space.gravity = (0.0, 0.0)
        self.space.damping = 0.0  # quasi-static: the block stops as soon as nothing pushes it
        # Walls: the original's thin segments (inner faces 7 px from each edge) continued outward as
        # thick static boxes. A block squeezed between the kinematic agent and a 4-px segment was
        # pushed through it and out of the arena (x = 538 seen); penetration into a thick box is always
        # resolved inward. Contacts with the inner faces are the original's.
        inner_lo, inner_hi = WALL_INSET + WALL_RADIUS, WORLD - WALL_INSET - 1 - WALL_RADIUS
        far_lo, far_hi = -WALL_THICKNESS, WORLD + WALL_THICKNESS
        for x0, y0, x1, y1 in ((far_lo, far_lo, inner_lo, far_hi), (inner_hi, far_lo, far_hi, far_hi),
                               (far_lo, far_lo, far_hi, inner_lo), (far_lo, inner_hi, far_hi, far_hi)):
            self.space.add(pm.Poly(self.space.static_body, [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]))
        self.agent = pm.Body(body_type=pm.Body.KINEMATIC)
        self.space.add(self.agent, pm.Circle(self.agent, AGENT_RADIUS))
        bar = [(-2 * SCALE, SCALE), (2 * SCALE, SCALE), (2 * SCALE, 0), (-2 * SCALE, 0)]
        stem = [(-SCALE / 2, SCALE), (-SCALE / 2, 4 * SCALE), (SCALE / 2, 4 * SCALE), (SCALE / 2, SCALE)]
        # The original sums the bar's moment twice (not bar + stem); kept for identical dynamics.
        self.block = pm.Body(1.0, 2 * pm.moment_for_poly(1.0, bar))
        shapes = [pm.Poly(self.block, bar), pm.Poly(self.block, stem)]
        for shape in shapes:
            shape.friction = 1.0
        self.block.center_of_gravity = (shapes[0].center_of_gravity + shapes[1].center_of_gravity) / 2
        self.space.add(self.block, *shapes)

    # ---- placement -----------------------------------------------------------------------------------

    def achieved_goal(self, state: np.ndarray) -> np.ndarray:
        return state[:7].copy()

    def _check_state(self, state: np.ndarray, name: str) -> None:
        check_box(f"{name} positions (agent xy, block xy)", state[:4], POSITIONS_LOW, POSITIONS_HIGH)
        check_box(f"{name} agent velocity", state[5:7], np.full(2, -MAX_SPEED), np.full(2, MAX_SPEED))

    def _check_goal(self, goal: np.ndarray) -> None:
        name = "options['goal_state'] positions (agent xy, block xy)"
        check_box(name, goal[:4], POSITIONS_LOW, POSITIONS_HIGH)  # velocities are ignored

    def _sample_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """Random agent xy in [50, 450] and block pose in [100, 400]^2 x [0, 2pi), not overlapping."""
        while True:
            agent = self.np_random.uniform(50, 450, 2)
            block = np.array([*self.np_random.uniform(100, 400, 2), self.np_random.uniform(0, 2 * np.pi)])
            if tee_distance(agent[0], agent[1], block) > AGENT_RADIUS + 5:
                return agent, block

    def _sample_goal(self) -> np.ndarray:
        agent, block = self._sample_pose()
        return np.concatenate([agent, block, [0.0, 0.0]])

    def _sample_state(self, goal: np.ndarray) -> np.ndarray:
        while True:
            agent, block = self._sample_pose()
            state = np.concatenate([agent, block, [0.0, 0.0]])
            if not self._success_between(state, goal):
                return state

    def _place_state(self, state: np.ndarray) -> None:
        self._build_space()
        self.agent.position = tuple(state[:2])
        self.agent.velocity = tuple(state[5:7])
        self.block.angle = float(state[4])
        self.block.position = tuple(state[2:4])

    def _place_goal(self, goal: np.ndarray) -> None:
        goal[4] %= 2 * np.pi
        goal[5:] = 0.0
        self.block_color, self.agent_color = BLOCK_COLOR.copy(), AGENT_COLOR.copy()

    # ---- dynamics and scoring ---------------------------------------------------------------------

    def _simulate(self, action: Any) -> None:
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        target = np.clip(np.asarray(self.agent.position) + ACTION_SCALE * a, POS_LOW, POS_HIGH)
        for _ in range(SUBSTEPS):
            pos, vel = np.asarray(self.agent.position), np.asarray(self.agent.velocity)
            self.agent.velocity = tuple(vel + (K_P * (target - pos) - K_V * vel) * DT)
            self.space.step(DT)
        block = np.asarray(self.block.position)
        if np.any(block < BLOCK_LOW) or np.any(block > BLOCK_HIGH):
            self.block.position = tuple(np.clip(block, BLOCK_LOW, BLOCK_HIGH))
            self.block.velocity = (0.0, 0.0)

    def _success_between(self, state: np.ndarray, goal: np.ndarray) -> bool:
        cols = slice(0, 4) if self.dino_wm_success else slice(2, 4)
        pos_err = np.linalg.norm(state[cols] - goal[cols])
        return bool(pos_err < SUCCESS_POS and abs(wrap_angle(state[4] - goal[4])) < SUCCESS_ANGLE)

    def _is_success(self) -> bool:
        return self._success_between(self._sim_state(), self.goal_state)

    def _sim_state(self) -> np.ndarray:
        a, b = self.agent, self.block
        return np.array([*a.position, *b.position, b.angle % (2 * np.pi), *a.velocity])

    def _proprio(self) -> np.ndarray:
        return np.array([*self.agent.position, *self.agent.velocity])

    # ---- rendering ---------------------------------------------------------------------------------

    def _coverage(self, signed_distance: np.ndarray) -> np.ndarray:
        """Anti-aliased pixel coverage in [0, 1] from a signed distance in world px."""
        return np.clip(0.5 - signed_distance / self._px, 0.0, 1.0)[..., None]

    def _draw_background(self) -> np.ndarray:
        lo, hi = WALL_INSET, WORLD - WALL_INSET - 1
        near_x = np.minimum(np.abs(self._x - lo), np.abs(self._x - hi))
        near_y = np.minimum(np.abs(self._y - lo), np.abs(self._y - hi))
        inside = (self._x >= lo - WALL_RADIUS) & (self._x <= hi + WALL_RADIUS)
        inside &= (self._y >= lo - WALL_RADIUS) & (self._y <= hi + WALL_RADIUS)
        # Walls are thin (4 px of 512), so draw them at least half a pixel wide to keep them visible.
        dist = np.where(inside, np.minimum(near_x, near_y), np.inf) - max(WALL_RADIUS, self._px / 2)
        alpha = self._coverage(dist)
        return BACKGROUND + alpha * (WALL_COLOR - BACKGROUND)

    def _draw(self, agent_xy: np.ndarray, block_pose: np.ndarray) -> np.ndarray:
        img = self._background.copy()
        for dist, color in (
            (tee_distance(self._x, self._y, block_pose), self.block_color),
            (np.hypot(self._x - agent_xy[0], self._y - agent_xy[1]) - AGENT_RADIUS, self.agent_color),
        ):
            alpha = self._coverage(dist)
            img += alpha * (color.astype(np.float32) - img)
        return img.round().astype(np.uint8)

    def _render_frame(self) -> np.ndarray:
        return self._draw(np.asarray(self.agent.position), np.array([*self.block.position, self.block.angle]))

    def _render_goal(self) -> np.ndarray:
        return self._draw(self.goal_state[:2], self.goal_state[2:5])

    # ---- perturbations -----------------------------------------------------------------------------

    def _teleport(self, agent: Any = None, block: Any = None) -> None:
        rand_agent, rand_block = self._sample_pose()
        agent_xy = rand_agent if agent is None else np.asarray(agent, dtype=np.float64).reshape(2)
        block_pose = rand_block if block is None else np.asarray(block, dtype=np.float64).reshape(3)
        positions = np.concatenate([agent_xy, block_pose[:2]])
        check_box("teleport positions (agent xy, block xy)", positions, np.zeros(4), np.full(4, WORLD))
        self.agent.position, self.agent.velocity = tuple(agent_xy), (0.0, 0.0)
        self.block.angle, self.block.position = float(block_pose[2]), tuple(block_pose[:2])

    def _recolor(self, color: Any = None, body: str = "block") -> None:
        if body not in ("block", "agent"):
            raise ValueError(f"body must be 'block' or 'agent', got {body!r}")
        setattr(self, f"{body}_color", as_color(color, self.np_random))
