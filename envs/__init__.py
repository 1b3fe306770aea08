"""lewm_envs: the LeWM benchmark environments, registered with Gymnasium on import.

    import gymnasium as gym, lewm_envs
    env = gym.make("lewm/TwoRoom-v0", image_size=64)

Every env gives a Dict observation (``pixels``, ``goal``, ``proprio``, ``state``), reports
``info["is_success"]`` and ``info["goal_state"]``, terminates on success, accepts
``reset(options={"state": ..., "goal_state": ...})`` and has ``perturb(kind, **kw)``. Simulator
imports stay inside each env module, so importing this package is cheap. Scripted experts:
:func:`lewm_envs.experts.make_expert`.
"""

from gymnasium.envs.registration import register, registry

# id -> (entry point, max_episode_steps)
ENVS = {
    "lewm/TwoRoom-v0": ("lewm_envs.two_room:TwoRoomEnv", 100),
    "lewm/PushT-v0": ("lewm_envs.push_t:PushTEnv", 200),
    "lewm/Reacher-v0": ("lewm_envs.reacher:ReacherEnv", 200),
    "lewm/MiniGrid-MultiRoom-v0": ("lewm_envs.minigrid_rooms:MultiRoomEnv", 100),
    "lewm/Cube-v0": ("lewm_envs.cube:CubeEnv", 200),
}

for _id, (_entry_point, _steps) in ENVS.items():
    if _id not in registry:  # re-importing (e.g. reload in a notebook) must not warn
        register(id=_id, entry_point=_entry_point, max_episode_steps=_steps)

__all__ = ["ENVS"]
