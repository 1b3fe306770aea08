"""Fast offscreen MuJoCo rendering shared by the Reacher and Cube envs.

CPU (llvmpipe) rendering is dominated by shadows, reflections and multisampling, so all three are
turned off: frames are 3-5x faster and still clear at 64 px.

The OpenGL (EGL) context is only created at the first frame. Gymnasium's ``AsyncVectorEnv`` builds a
throw-away env in the parent to read the spaces and then forks its workers; a context made in the
parent before the fork leaves the workers' own contexts hanging forever inside Mesa. A parent that has
rendered MuJoCo frames itself must start workers with ``context="spawn"``; :func:`context_made` tells,
and the collector does so.
Renderers are also closed at interpreter exit *before* MuJoCo tears down its EGL display, which
otherwise prints EGLError noise.
"""

from __future__ import annotations

import atexit
import os
import weakref

# Before mujoco is imported, which picks its GL backend then (the default, glfw, needs a display).
os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco
import numpy as np

_LIVE: weakref.WeakSet = weakref.WeakSet()
_CONTEXT_MADE = False  # whether this process has made an EGL context (forked children must not inherit it)


def context_made() -> bool:
    """Whether this process has rendered a MuJoCo frame: subprocess envs must then be spawned, not forked."""
    return _CONTEXT_MADE


def _close_all() -> None:
    for renderer in list(_LIVE):
        renderer.close()


class Renderer:
    """Frames of ``camera`` at ``size`` x ``size`` without shadows, reflections or MSAA."""

    def __init__(self, model: mujoco.MjModel, size: int, camera: str) -> None:
        self.model, self.size, self.camera = model, size, camera
        self._renderer: mujoco.Renderer | None = None

    def render(self, data: mujoco.MjData) -> np.ndarray:
        """uint8 ``[size, size, 3]`` image of ``data``."""
        if self._renderer is None:
            global _CONTEXT_MADE
            _CONTEXT_MADE = True
            self.model.vis.quality.offsamples = 0  # read when the offscreen buffer is created
            self._renderer = mujoco.Renderer(self.model, self.size, self.size)
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
            if not _LIVE:
                # MuJoCo registers its EGL teardown when the first context is made; hooks run last-in
                # first-out, so registering after it closes our renderers while EGL is still alive.
                atexit.unregister(_close_all)
                atexit.register(_close_all)
            _LIVE.add(self._renderer)
        self._renderer.update_scene(data, camera=self.camera)
        return self._renderer.render()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
