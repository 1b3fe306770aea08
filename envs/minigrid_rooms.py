"""MiniGrid multi-room navigation from full top-down pixels: reach the goal cell.

A fixed multi-room grid (``layout="four_rooms"``: 11x11 with four 4x4 rooms joined by one-cell
gaps, or ``"two_rooms"``: 9x7 with one gap) drawn in MiniGrid's style with MiniGrid's tile
primitives: black floor with grey grid lines, grey walls, a green goal cell and the red agent
triangle. The whole grid is rendered (not MiniGrid's egocentric partial view) and area-resized to
``image_size``. Actions are restricted to ``Discrete(3)``: 0 = turn left, 1 = turn right,
2 = move forward (MiniGrid's indices); the remaining MiniGrid actions (pickup, toggle, ...) have
nothing to act on here. Directions: 0 = +x (east), 1 = +y (south), 2 = west, 3 = north.

Success (terminates): the agent stands on the goal cell.

``show_goal=False`` leaves the green goal cell out of the frames, as TwoRoom and PushT leave their
goals out: a stored frame then shows where the agent is and nothing of the episode's goal, so a frame
of one episode is a valid goal image for another start (the dataset protocol's goals).

Layouts: start state = ``(x, y, direction)`` (cells, integers); goal = goal cell ``(x, y)``;
``proprio`` = ``(x, y, direction)``; observation ``state`` = start state + goal (5). The goal image
shows the agent on the goal cell facing east.

``perturb("teleport", position=None, direction=None)`` moves the agent (random free cell /
direction when None); ``perturb("color", color=None)`` recolours the agent.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from gymnasium import spaces
from lewm_envs.base import GoalImageEnv, as_color
from minigrid.core.constants import COLORS
from minigrid.utils.rendering import downsample, fill_coords, point_in_rect, point_in_triangle, rotate_fn

LAYOUTS = {
    "four_rooms": (
        "###########",
        "#....#....#",
        "#....#....#",
        "#.........#",
        "#....#....#",
        "##.#####.##",
        "#....#....#",
        "#....#....#",
        "#.........#",
        "#....#....#",
        "###########",
    ),
    "two_rooms": (
        "#########",
        "#...#...#",
        "#...#...#",
        "#.......#",
        "#...#...#",
        "#...#...#",
        "#########",
    ),
}
DIR_TO_VEC = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]])
AGENT_COLOR = np.array([255, 0, 0], dtype=np.uint8)
FLOOR, WALL, GOAL = 0, 1, 2


def area_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` weights averaging each output pixel over the input pixels it covers."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    pix = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, pix + 1) - np.maximum(lo, pix), 0.0, None)
    return (overlap / (n_in / n_out)).astype(np.float32)


class MultiRoomEnv(GoalImageEnv):
    """Reach the goal cell of a multi-room grid from pixels; see the module docstring.

    Args:
        image_size: side of the square ``pixels`` / ``goal`` images.
        render_mode: only ``"rgb_array"``.
        layout: ``"four_rooms"`` (default) or ``"two_rooms"``.
        show_goal: draw the goal cell into the frames (MiniGrid's look; see the module docstring).
    """

    state_dim, goal_dim, proprio_dim = 3, 2, 3
    quantities = {"agent cell": ("state", (0, 1), None), "agent direction": ("state", (2,), 4)}

    def __init__(
        self, image_size: int = 64, render_mode: str | None = "rgb_array", layout: str = "four_rooms",
        show_goal: bool = True,
    ) -> None:
        super().__init__(image_size, render_mode)
        self.show_goal = bool(show_goal)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
        rows = LAYOUTS[layout]
        self.walls = np.array([[ch == "#" for ch in row] for row in rows]).T  # indexed [x, y]
        self.width, self.height = self.walls.shape
        self.free_cells = np.argwhere(~self.walls)  # [n, 2] of (x, y)
        self.action_space = spaces.Discrete(3)
        high = np.array([self.width - 1, self.height - 1, 3, self.width - 1, self.height - 1])
        self._build_observation_space((0, high[:3]), (0, high))
        # Draw at >= 2x the output resolution, then area-average down: thin grid lines stay visible.
        side = max(self.width, self.height)
        self._tile = max(4, math.ceil(2 * self.image_size / side))
        self._resize = area_resize_matrix(side * self._tile, self.image_size)
        self._tiles: dict[tuple, np.ndarray] = {}
        # The empty grid, hi-res and resized once: the only full-image resize (a large matmul that
        # can stall for 100+ ms in a multi-threaded BLAS when the cores are shared).
        self._grid = self._draw_grid()
        chw = np.ascontiguousarray(self._grid.transpose(2, 0, 1))
        self._grid_small = np.stack([self._resize @ c @ self._resize.T for c in chw], axis=-1)
        self.agent_color = AGENT_COLOR.copy()
        self.agent = np.zeros(2, dtype=np.int64)
        self.direction = 0

    # ---- placement -----------------------------------------------------------------------------------

    def achieved_goal(self, state: np.ndarray) -> np.ndarray:
        return state[:2].copy()

    def _check_cell(self, name: str, xy: np.ndarray) -> None:
        if np.any(xy != np.round(xy)) or not (0 <= xy[0] < self.width and 0 <= xy[1] < self.height):
            raise ValueError(
                f"{name} cell {xy.tolist()} must be integers in x in [0, {self.width - 1}], "
                f"y in [0, {self.height - 1}]"
            )
        if self.walls[int(xy[0]), int(xy[1])]:
            raise ValueError(
                f"{name} cell {xy.astype(int).tolist()} is a wall; free cells are '.' in the layout"
            )

    def _check_state(self, state: np.ndarray, name: str) -> None:
        self._check_cell(name, state[:2])
        if state[2] not in (0, 1, 2, 3):
            raise ValueError(f"{name} direction must be 0, 1, 2 or 3, got {state[2]}")

    def _check_goal(self, goal: np.ndarray) -> None:
        self._check_cell("options['goal_state']", goal)

    def _random_cell(self) -> np.ndarray:
        return self.free_cells[self.np_random.integers(len(self.free_cells))].astype(np.float64)

    def _sample_goal(self) -> np.ndarray:
        return self._random_cell()

    def _sample_state(self, goal: np.ndarray) -> np.ndarray:
        while True:
            xy = self._random_cell()
            if not np.array_equal(xy, goal):
                return np.array([*xy, self.np_random.integers(4)], dtype=np.float64)

    def _place_goal(self, goal: np.ndarray) -> None:
        self.agent_color = AGENT_COLOR.copy()  # undo an earlier colour perturbation
        xy = goal.astype(np.int64)
        self._background = self._grid.copy()
        self._background_small = self._grid_small.copy()
        if self.show_goal:
            rows, cols, patch = self._cell_patch(self._grid, self._grid_small, xy, self._tile_image(GOAL))
            self._background[self._cell(xy)] = self._tile_image(GOAL)
            self._background_small[rows, cols] = patch
        self._frame_base = self._background_small.round().astype(np.uint8)
        self._agent_patches: dict[tuple, tuple[slice, slice, np.ndarray]] = {}

    def _place_state(self, state: np.ndarray) -> None:
        self.agent = state[:2].astype(np.int64)
        self.direction = int(state[2])

    # ---- dynamics and scoring ---------------------------------------------------------------------

    def _simulate(self, action: Any) -> None:
        a = np.asarray(action)
        if a.size != 1 or a.reshape(()).item() not in (0, 1, 2):
            raise ValueError(f"action must be 0 (left), 1 (right) or 2 (forward), got {action!r}")
        a = int(a.reshape(()).item())
        if a == 2:
            ahead = self.agent + DIR_TO_VEC[self.direction]
            if not self.walls[ahead[0], ahead[1]]:
                self.agent = ahead
        else:
            self.direction = (self.direction + (1 if a == 1 else -1)) % 4

    def _is_success(self) -> bool:
        return bool(np.array_equal(self.agent, self.goal_state))

    def _sim_state(self) -> np.ndarray:
        return np.array([*self.agent, self.direction], dtype=np.float64)

    def _proprio(self) -> np.ndarray:
        return self._sim_state()

    # ---- rendering ---------------------------------------------------------------------------------

    def _tile_image(self, kind: int, direction: int | None = None, color: tuple = ()) -> np.ndarray:
        """One cell in MiniGrid's style (float32 ``[tile, tile, 3]``), cached."""
        key = (kind, direction, color)
        if key not in self._tiles:
            sub = 3  # MiniGrid's supersampling
            img = np.zeros((self._tile * sub, self._tile * sub, 3), dtype=np.uint8)
            fill_coords(img, point_in_rect(0, 0.031, 0, 1), (100, 100, 100))
            fill_coords(img, point_in_rect(0, 1, 0, 0.031), (100, 100, 100))
            if kind != FLOOR:
                fill_coords(img, point_in_rect(0, 1, 0, 1), COLORS["grey" if kind == WALL else "green"])
            if direction is not None:
                tri = point_in_triangle((0.12, 0.19), (0.87, 0.50), (0.12, 0.81))
                fill_coords(img, rotate_fn(tri, cx=0.5, cy=0.5, theta=0.5 * math.pi * direction), color)
            self._tiles[key] = downsample(img, sub).astype(np.float32)
        return self._tiles[key]

    def _draw_grid(self) -> np.ndarray:
        """The hi-res grid without goal or agent (float32; a non-square layout is padded)."""
        side, t = max(self.width, self.height), self._tile
        img = np.zeros((side * t, side * t, 3), dtype=np.float32)
        for x, y in np.ndindex(self.walls.shape):
            img[self._cell((x, y))] = self._tile_image(WALL if self.walls[x, y] else FLOOR)
        return img

    def _cell(self, xy: Any) -> tuple[slice, slice]:
        """The hi-res pixels (rows, cols) of cell ``xy``."""
        t = self._tile
        return slice(xy[1] * t, (xy[1] + 1) * t), slice(xy[0] * t, (xy[0] + 1) * t)

    def _cell_patch(
        self, hi: np.ndarray, small: np.ndarray, xy: np.ndarray, tile: np.ndarray
    ) -> tuple[slice, slice, np.ndarray]:
        """Output pixels (rows, cols, float patch) of ``small`` = resized ``hi`` after cell ``xy`` of
        ``hi`` becomes ``tile``: resizing is linear, so only the cell's change is resized."""
        rows, cols = self._cell(xy)
        scale = self.image_size / self._resize.shape[1]
        out_rows = slice(int(rows.start * scale), math.ceil(rows.stop * scale))
        out_cols = slice(int(cols.start * scale), math.ceil(cols.stop * scale))
        delta = tile - hi[rows, cols]
        r_rows, r_cols = self._resize[out_rows, rows], self._resize[out_cols, cols].T
        change = np.stack([r_rows @ delta[..., c] @ r_cols for c in range(3)], axis=-1)
        return out_rows, out_cols, small[out_rows, out_cols] + change

    def _agent_patch(self, xy: np.ndarray, direction: int, color: tuple) -> tuple[slice, slice, np.ndarray]:
        """The output pixels that change when the agent is drawn at ``xy``: (rows, cols, uint8),
        cached per episode."""
        key = (int(xy[0]), int(xy[1]), direction, color)
        if key not in self._agent_patches:
            kind = GOAL if self.show_goal and np.array_equal(xy, self.goal_state) else FLOOR
            tile = self._tile_image(kind, direction, color)
            rows, cols, patch = self._cell_patch(self._background, self._background_small, xy, tile)
            self._agent_patches[key] = (rows, cols, patch.round().astype(np.uint8))
        return self._agent_patches[key]

    def _draw(self, xy: np.ndarray, direction: int, color: np.ndarray) -> np.ndarray:
        rows, cols, patch = self._agent_patch(xy, direction, tuple(int(c) for c in color))
        img = self._frame_base.copy()
        img[rows, cols] = patch
        return img

    def _render_frame(self) -> np.ndarray:
        return self._draw(self.agent, self.direction, self.agent_color)

    def _render_goal(self) -> np.ndarray:
        return self._draw(self.goal_state.astype(np.int64), 0, self.agent_color)

    # ---- perturbations -----------------------------------------------------------------------------

    def _teleport(self, position: Any = None, direction: int | None = None) -> None:
        xy = self._random_cell() if position is None else np.asarray(position, dtype=np.float64).reshape(2)
        self._check_cell("position", xy)
        d = int(self.np_random.integers(4)) if direction is None else direction
        if d not in (0, 1, 2, 3):
            raise ValueError(f"direction must be 0, 1, 2 or 3, got {direction!r}")
        self.agent, self.direction = xy.astype(np.int64), int(d)

    def _recolor(self, color: Any = None) -> None:
        self.agent_color = as_color(color, self.np_random)
