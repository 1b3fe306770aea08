"""The goal-image env contract shared by every ``lewm_envs`` environment.

:class:`GoalImageEnv` owns everything the envs have in common: argument checks, the Dict observation
(``pixels``, ``goal``, ``proprio``, ``state``), ``reset`` options that place start and goal, success
termination, ``info["is_success"]`` / ``info["goal_state"]`` and ``perturb``. A subclass only says how
to sample, place, simulate, render and score its own world.

Layouts (documented per env): a *start state* has ``state_dim`` numbers, a *goal* ``goal_dim``; the
observation ``state`` is their concatenation, so a scripted expert sees the goal. A stored ``state``
row can be passed back as ``options["state"]`` (its goal part is ignored) or as
``options["goal_state"]`` (the goal is then what that state achieves, e.g. the agent position): this
is how dataset-driven evaluation takes "the frame 25 steps later" as the goal.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

RESET_OPTIONS = ("state", "goal_state")


def check_image_size(image_size: Any) -> int:
    """Return ``image_size`` as an int, or raise ValueError if it is not a positive integer."""
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size <= 0:
        raise ValueError(f"image_size must be a positive int (pixels per side), got {image_size!r}")
    return int(image_size)


def require(module: str, extra: str) -> Any:
    """Import an optional dependency, or raise ImportError naming the pip extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"this environment needs the optional package '{module}'; install it with "
            f'pip install "lewm-agent[{extra}]"'
        ) from err


def check_vector(name: str, value: Any, lengths: tuple[int, ...]) -> np.ndarray:
    """``value`` as a finite float64 vector whose length is one of ``lengths``, else ValueError."""
    arr = np.array(value, dtype=np.float64).reshape(-1)
    if arr.size not in lengths:
        raise ValueError(f"{name} must have length {' or '.join(map(str, lengths))}, got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr.tolist()}")
    return arr


def check_box(name: str, value: np.ndarray, low: np.ndarray, high: np.ndarray) -> None:
    """Raise ValueError naming ``name`` and the valid range if ``value`` leaves ``[low, high]``."""
    if np.any(value < low) or np.any(value > high):
        raise ValueError(
            f"{name}={np.round(value, 4).tolist()} is outside the valid range "
            f"[{np.round(low, 4).tolist()}, {np.round(high, 4).tolist()}]"
        )


def wrap_angle(angle: float | np.ndarray) -> float | np.ndarray:
    """Angles (rad) wrapped to [-pi, pi)."""
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi


def random_color(rng: np.random.Generator) -> np.ndarray:
    """A saturated random RGB colour (uint8 [3]), so a colour perturbation is clearly visible."""
    rgb = rng.uniform(0, 255, 3)
    rgb[rng.integers(3)] = 255.0
    rgb[rng.integers(3)] = 0.0
    return rgb.astype(np.uint8)


def as_color(color: Any, rng: np.random.Generator) -> np.ndarray:
    """``color`` (3 ints in [0, 255]) as uint8, or a random colour when None."""
    if color is None:
        return random_color(rng)
    arr = np.asarray(color)
    if arr.shape != (3,) or np.any(arr < 0) or np.any(arr > 255):
        raise ValueError(f"color must be 3 values in [0, 255], got {color!r}")
    return arr.astype(np.uint8)


class GoalImageEnv(gym.Env):
    """Base class: goal-image observations, placeable start/goal, success termination.

    Observation: Dict with ``pixels`` and ``goal`` (uint8 ``[image_size, image_size, 3]``),
    ``proprio`` (float32 ``[proprio_dim]``) and ``state`` (float32 ``[state_dim + goal_dim]`` =
    start-state layout followed by the goal). Reward is 1.0 on the step that reaches the goal, else 0.

    Subclasses set ``action_space``, ``state_dim``, ``goal_dim``, ``proprio_dim`` and the bounds
    ``proprio_low/high`` and ``state_low/high`` (for the observation space), then call
    :meth:`_build_observation_space`, and implement the ``_``-prefixed hooks below.
    """

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 10}
    state_dim: int
    goal_dim: int
    proprio_dim: int
    #: Physical quantities a probe can read from a frame: name -> (stored column, indices, period).
    #: A quantity with a period (an angle: 2 pi; MiniGrid's direction: 4) is probed as the sin and cos
    #: of 2 pi value / period, so that 0 and one period are the same target; None: as it is.
    quantities: ClassVar[dict[str, tuple[str, tuple[int, ...], float | None]]] = {}

    def __init__(self, image_size: int = 64, render_mode: str | None = "rgb_array") -> None:
        self.image_size = check_image_size(image_size)
        if render_mode != "rgb_array":
            raise ValueError(
                f"render_mode must be 'rgb_array' (frames are the observation), got {render_mode!r}"
            )
        self.render_mode = render_mode
        self.goal_state = np.zeros(0)
        self._goal_image: np.ndarray | None = None
        self._frame: np.ndarray | None = None

    def _build_observation_space(self, proprio_bounds: tuple, state_bounds: tuple) -> None:
        """Set the Dict space; bounds are ``(low, high)`` pairs of scalars or arrays."""
        n_proprio, n_state = (self.proprio_dim,), (self.state_dim + self.goal_dim,)
        proprio_bounds = [np.broadcast_to(b, n_proprio).astype(np.float32) for b in proprio_bounds]
        state_bounds = [np.broadcast_to(b, n_state).astype(np.float32) for b in state_bounds]
        img = spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
        self.observation_space = spaces.Dict(
            {
                "pixels": img,
                "goal": img,
                "proprio": spaces.Box(*proprio_bounds, dtype=np.float32),
                "state": spaces.Box(*state_bounds, dtype=np.float32),
            }
        )

    # ---- Gymnasium API -----------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        """Start an episode. ``options``: ``state`` (start-state layout, or an observation ``state``)
        and ``goal_state`` (goal layout, or a state whose achieved goal is taken); each is sampled
        from ``self.np_random`` when omitted."""
        options = dict(options or {})
        unknown = set(options) - set(RESET_OPTIONS)
        if unknown:
            raise ValueError(
                f"unknown reset option(s) {sorted(unknown)}; valid options are {list(RESET_OPTIONS)}"
            )
        # Validate both before touching the simulator, so a bad option leaves the env as it was.
        state = options.get("state")
        goal = options.get("goal_state")
        if state is not None:
            state = check_vector("options['state']", state, (self.state_dim, self.state_dim + self.goal_dim))
            state = state[: self.state_dim]
            self._check_state(state, "options['state']")
        if goal is not None:
            n_state, n_goal = self.state_dim, self.goal_dim
            goal = check_vector(
                "options['goal_state']", goal, tuple(sorted({n_goal, n_state, n_state + n_goal}))
            )
            if goal.size != n_goal:
                self._check_state(goal[:n_state], "options['goal_state']")
                goal = self.achieved_goal(goal[:n_state])
            self._check_goal(goal)
        super().reset(seed=seed)
        self._begin_episode()
        if goal is None:
            goal = self._sample_goal()
        if state is None:
            state = self._sample_state(goal)
        self.goal_state = np.array(goal, dtype=np.float64)  # a copy: _place_goal may normalise it
        self._place_goal(self.goal_state)
        self._goal_image = self._render_goal()
        self._place_state(state)
        return self._observe(), self._info()

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        self._simulate(action)
        obs = self._observe()
        success = self._is_success()
        return obs, float(success), success, False, self._info(success)

    def render(self) -> np.ndarray:
        """The current frame, uint8 ``[image_size, image_size, 3]``."""
        if self._frame is None:
            self._frame = self._render_frame()
        return self._frame.copy()

    def perturb(self, kind: str, **kwargs: Any) -> dict:
        """Surprise experiments: ``"teleport"`` moves the agent/object, ``"color"`` recolours it.

        Keyword arguments are env-specific (see the subclass docstring); omitted ones are random.
        Returns the new observation; the goal image is left unchanged.
        """
        if self._goal_image is None:
            raise RuntimeError("call reset() before perturb()")
        if kind == "teleport":
            self._teleport(**kwargs)
        elif kind == "color":
            self._recolor(**kwargs)
        else:
            raise ValueError(f"perturb kind must be 'teleport' or 'color', got {kind!r}")
        return self._observe()

    # ---- shared plumbing ---------------------------------------------------------------------------

    def _observe(self) -> dict:
        self._frame = self._render_frame()
        sim_state = self._sim_state()
        return {
            "pixels": self._frame.copy(),
            "goal": self._goal_image.copy(),
            "proprio": np.asarray(self._proprio(), dtype=np.float32),
            "state": np.concatenate([sim_state, self.goal_state]).astype(np.float32),
        }

    def _info(self, success: bool | None = None) -> dict:
        if success is None:
            success = self._is_success()
        return {"is_success": bool(success), "goal_state": self.goal_state.astype(np.float32)}

    # ---- hooks for subclasses ----------------------------------------------------------------------

    def achieved_goal(self, state: np.ndarray) -> np.ndarray:
        """The goal (goal layout) that a start-layout ``state`` achieves."""
        raise NotImplementedError

    def _check_state(self, state: np.ndarray, name: str) -> None:
        """Raise ValueError naming ``name`` and the valid range if ``state`` is not a valid state."""
        raise NotImplementedError

    def _check_goal(self, goal: np.ndarray) -> None:
        """Raise ValueError (naming ``options['goal_state']`` and the valid range) for an invalid goal."""
        raise NotImplementedError

    def _begin_episode(self) -> None:
        """Called once per reset after the options are validated, before sampling."""

    def _sample_goal(self) -> np.ndarray:
        raise NotImplementedError

    def _sample_state(self, goal: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _place_goal(self, goal: np.ndarray) -> None:
        """Store the goal in the simulator (called before :meth:`_render_goal`)."""

    def _place_state(self, state: np.ndarray) -> None:
        raise NotImplementedError

    def _simulate(self, action: Any) -> None:
        raise NotImplementedError

    def _render_frame(self) -> np.ndarray:
        raise NotImplementedError

    def _render_goal(self) -> np.ndarray:
        raise NotImplementedError

    def _sim_state(self) -> np.ndarray:
        """The current state in start-state layout (``state_dim`` numbers)."""
        raise NotImplementedError

    def _proprio(self) -> np.ndarray:
        raise NotImplementedError

    def _is_success(self) -> bool:
        raise NotImplementedError

    def _teleport(self, **kwargs: Any) -> None:
        raise NotImplementedError

    def _recolor(self, **kwargs: Any) -> None:
        raise NotImplementedError
