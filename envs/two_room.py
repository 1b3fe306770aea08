"""TwoRoom: a point agent must pass a door in a wall to reach a goal (PLDM / stable-worldmodel).

Geometry follows stable-worldmodel's ``swm/TwoRoom-v1`` on its 224x224 canvas (all units below are
canvas pixels), drawn here with NumPy at any ``image_size``:

* border lines at 14 px from each edge (4 px thick); a vertical wall centred at x = 112, 10 px thick;
  one door in it centred at y = 49 with half-extent 14;
* the agent is a red Gaussian dot of radius 7; it moves ``pos += action * 5`` per step
  (``action`` in ``[-1, 1]^2``), is clamped to ``[21, 203]`` (border + radius) and cannot enter the
  wall band (``|x - 112| < 12``) unless its y is within the door span +-1.75 px;
* success (terminates) when ``||agent - target|| < 16``.

Layouts: start state = agent ``(x, y)``; goal = target ``(x, y)``; ``proprio`` = agent ``(x, y)``;
observation ``state`` = ``(agent x, agent y, target x, target y)``. The goal image is the scene with
the agent drawn at the target (the target itself is never drawn, as in the original).

``perturb("teleport", position=None)`` moves the agent (random free position when None);
``perturb("color", color=None)`` recolours the agent.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from lewm_envs.base import GoalImageEnv, as_color, check_box

CANVAS = 224.0
BORDER, BORDER_LINE = 14.0, 4.0
WALL_X, WALL_HALF = 112.0, 5.0
DOOR_Y, DOOR_HALF, DOOR_MARGIN = 49.0, 14.0, 1.75
AGENT_RADIUS, SPEED, SUCCESS_RADIUS = 7.0, 5.0, 16.0
POS_LOW, POS_HIGH = BORDER + AGENT_RADIUS, CANVAS - BORDER - AGENT_RADIUS
# The agent's centre may not enter this band of x unless it is in the door.
BAND_LOW, BAND_HIGH = WALL_X - WALL_HALF - AGENT_RADIUS, WALL_X + WALL_HALF + AGENT_RADIUS
AGENT_COLOR = np.array([255, 0, 0], dtype=np.uint8)


def in_door(y: float) -> bool:
    """Whether an agent centred at height ``y`` fits through the door."""
    return abs(y - DOOR_Y) <= DOOR_HALF + DOOR_MARGIN


def is_free(xy: np.ndarray) -> bool:
    """Whether the agent may stand at ``xy`` (inside the border, not in the wall except the door)."""
    inside = bool(np.all(xy >= POS_LOW) and np.all(xy <= POS_HIGH))
    return inside and not (BAND_LOW < xy[0] < BAND_HIGH and not in_door(xy[1]))


def move(pos: np.ndarray, action: np.ndarray) -> np.ndarray:
    """One step of the original dynamics: clamp at the border, stop at the wall outside the door."""
    nxt = np.clip(pos + np.clip(action, -1.0, 1.0) * SPEED, POS_LOW, POS_HIGH)
    if not in_door(nxt[1]):
        # Which side the agent is on is decided by where it started the step, as in the original.
        if pos[0] < WALL_X and nxt[0] > BAND_LOW:
            nxt[0] = BAND_LOW - 0.5
        elif pos[0] >= WALL_X and nxt[0] < BAND_HIGH:
            nxt[0] = BAND_HIGH + 0.5
    return nxt


def render_background(size: int, supersample: int = 4) -> np.ndarray:
    """White room with black border lines and wall, uint8 ``[size, size, 3]``.

    Drawn at ``supersample`` x the resolution and box-averaged, so 1-px features stay visible.
    """
    n = size * supersample
    c = (np.arange(n) + 0.5) * (CANVAS / n)  # canvas coordinate of each sub-pixel centre
    line = ((c >= BORDER - BORDER_LINE) & (c < BORDER)) | (
        (c >= CANVAS - BORDER) & (c < CANVAS - BORDER + BORDER_LINE)
    )
    x, y = c[None, :], c[:, None]
    wall = (np.abs(x - WALL_X) <= WALL_HALF) & (np.abs(y - DOOR_Y) > DOOR_HALF)
    black = line[None, :] | line[:, None] | wall
    white = (~black).astype(np.float32).reshape(size, supersample, size, supersample).mean(axis=(1, 3))
    return np.repeat((white[..., None] * 255.0).round().astype(np.uint8), 3, axis=2)


class TwoRoomEnv(GoalImageEnv):
    """TwoRoom navigation from pixels; see the module docstring for geometry and layouts.

    Args:
        image_size: side of the square ``pixels`` / ``goal`` images.
        render_mode: only ``"rgb_array"``.
        goal_room: ``"any"`` samples start and goal anywhere (at least the success radius apart);
            ``"other"`` puts the sampled start in the room the goal is not in, so every episode goes
            through the door, as in the official TwoRoom data. Placed starts (``options["state"]``)
            are used as given.
    """

    state_dim = goal_dim = proprio_dim = 2
    GOAL_ROOMS = ("any", "other")
    quantities = {"agent position": ("state", (0, 1), None)}

    def __init__(self, image_size: int = 64, render_mode: str | None = "rgb_array", goal_room: str = "any") -> None:
        super().__init__(image_size, render_mode)
        if goal_room not in self.GOAL_ROOMS:
            raise ValueError(f"goal_room must be one of {self.GOAL_ROOMS}, got {goal_room!r}")
        self.goal_room = goal_room
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._build_observation_space((0.0, CANVAS), (0.0, CANVAS))
        self._background = render_background(self.image_size)
        self._scale = self.image_size / CANVAS
        # At least 1.5 px so the dot survives small images.
        self._sigma = max(AGENT_RADIUS * self._scale, 1.5)
        self._half = int(np.ceil(3 * self._sigma))
        self.agent_color = AGENT_COLOR.copy()
        self.agent = np.array([POS_LOW, POS_LOW])

    # ---- placement -----------------------------------------------------------------------------------

    def achieved_goal(self, state: np.ndarray) -> np.ndarray:
        return state[:2].copy()

    def _check_state(self, state: np.ndarray, name: str) -> None:
        check_box(name, state, np.full(2, POS_LOW), np.full(2, POS_HIGH))
        if not is_free(state):
            raise ValueError(
                f"{name}={state.tolist()} is inside the wall (x in ({BAND_LOW}, {BAND_HIGH}) is only "
                f"free for y in [{DOOR_Y - DOOR_HALF - DOOR_MARGIN}, {DOOR_Y + DOOR_HALF + DOOR_MARGIN}])"
            )

    def _check_goal(self, goal: np.ndarray) -> None:
        self._check_state(goal, "options['goal_state']")

    def _sample_free(self) -> np.ndarray:
        while True:
            xy = self.np_random.uniform(POS_LOW, POS_HIGH, 2)
            if not BAND_LOW <= xy[0] <= BAND_HIGH:
                return xy

    def _sample_goal(self) -> np.ndarray:
        return self._sample_free()

    def _sample_state(self, goal: np.ndarray) -> np.ndarray:
        while True:
            xy = self._sample_free()
            other_room = (xy[0] < WALL_X) != (goal[0] < WALL_X)
            if np.linalg.norm(xy - goal) >= SUCCESS_RADIUS and (self.goal_room == "any" or other_room):
                return xy

    def _place_goal(self, goal: np.ndarray) -> None:
        self.agent_color = AGENT_COLOR.copy()  # undo an earlier colour perturbation

    def _place_state(self, state: np.ndarray) -> None:
        self.agent = np.array(state, dtype=np.float64)

    # ---- dynamics and scoring ---------------------------------------------------------------------

    def _simulate(self, action: Any) -> None:
        self.agent = move(self.agent, np.asarray(action, dtype=np.float64).reshape(2))

    def _is_success(self) -> bool:
        return bool(np.linalg.norm(self.agent - self.goal_state) < SUCCESS_RADIUS)

    def _sim_state(self) -> np.ndarray:
        return self.agent

    def _proprio(self) -> np.ndarray:
        return self.agent

    # ---- rendering ---------------------------------------------------------------------------------

    def _draw(self, xy: np.ndarray, color: np.ndarray) -> np.ndarray:
        """Background with a Gaussian dot (std = agent radius) alpha-blended at canvas ``xy``."""
        img = self._background.copy()
        cx, cy = xy * self._scale
        x0, y0 = int(cx) - self._half, int(cy) - self._half
        x1, y1 = max(x0, 0), max(y0, 0)
        x2 = min(x0 + 2 * self._half + 1, self.image_size)
        y2 = min(y0 + 2 * self._half + 1, self.image_size)
        dx = np.arange(x1, x2) + 0.5 - cx
        dy = np.arange(y1, y2) + 0.5 - cy
        alpha = np.exp(-(dy[:, None] ** 2 + dx[None, :] ** 2) / (2 * self._sigma**2))[..., None]
        patch = img[y1:y2, x1:x2].astype(np.float32)
        img[y1:y2, x1:x2] = (patch + alpha * (color.astype(np.float32) - patch)).round()
        return img

    def _render_frame(self) -> np.ndarray:
        return self._draw(self.agent, self.agent_color)

    def _render_goal(self) -> np.ndarray:
        return self._draw(self.goal_state, self.agent_color)

    # ---- perturbations -----------------------------------------------------------------------------

    def _teleport(self, position: Any = None) -> None:
        if position is None:
            self.agent = self._sample_free()
        else:
            xy = np.asarray(position, dtype=np.float64).reshape(-1)
            if xy.shape != (2,):
                raise ValueError(f"position must be (x, y) in canvas pixels, got {position!r}")
            self._check_state(xy, "position")
            self.agent = xy

    def _recolor(self, color: Any = None) -> None:
        self.agent_color = as_color(color, self.np_random)
