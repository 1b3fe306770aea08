"""Scripted, noisy experts for collecting goal-reaching data in the ``lewm_envs`` environments.

    expert = make_expert("lewm/TwoRoom-v0", noise=0.2, seed=0)
    action = expert(obs)            # obs: ONE env's observation dict (uses obs["state"])

Every expert is a pure function of the observation (plus its own random generator), so one expert
can serve several sub-environments of a vector env. The goal is read from the goal part of
``obs["state"]``. ``noise`` is the standard deviation of Gaussian noise added to continuous actions
(in action units, then clipped to [-1, 1]), or the probability of a random action for MiniGrid.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
from lewm_envs.base import wrap_angle

Expert = Callable[[dict], Any]


def _noisy(action: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(action + noise * rng.standard_normal(action.shape), -1.0, 1.0).astype(np.float32)


def two_room_expert(noise: float, rng: np.random.Generator, **_: Any) -> Expert:
    """Straight to the door when the target is in the other room, then straight to the target."""
    from lewm_envs import two_room as tr

    def act(obs: dict) -> np.ndarray:
        agent, target = obs["state"][:2].astype(np.float64), obs["state"][2:4].astype(np.float64)
        waypoint = target
        if (agent[0] < tr.WALL_X) != (target[0] < tr.WALL_X):
            side = -1.0 if agent[0] < tr.WALL_X else 1.0
            if abs(agent[1] - tr.DOOR_Y) < tr.DOOR_HALF / 2:  # lined up with the door: go through
                waypoint = np.array([tr.WALL_X - side * (tr.BAND_HIGH - tr.WALL_X + 8), tr.DOOR_Y])
            else:  # go to the doorstep on this side first
                waypoint = np.array([tr.WALL_X + side * (tr.BAND_HIGH - tr.WALL_X + 8), tr.DOOR_Y])
        # Divided by the speed, so the last step lands on the waypoint instead of overshooting.
        return _noisy(np.clip((waypoint - agent) / tr.SPEED, -1, 1), noise, rng)

    return act


def reacher_expert(noise: float, rng: np.random.Generator, **_: Any) -> Expert:
    """PD control of the observed joint angles toward the goal configuration."""
    k_p, k_d = 2.0, 0.2

    def act(obs: dict) -> np.ndarray:
        s = obs["state"].astype(np.float64)
        qpos, qvel, goal = s[:2], s[2:4], s[4:6]
        # The shoulder turns freely (take the short way round); the wrist cannot pass +-160 degrees.
        error = np.array([wrap_angle(goal[0] - qpos[0]), goal[1] - qpos[1]])
        return _noisy(np.clip(k_p * error - k_d * qvel, -1, 1), noise, rng)

    return act


def minigrid_expert(noise: float, rng: np.random.Generator, layout: str = "four_rooms", **_: Any) -> Expert:
    """Shortest path (BFS) to the goal cell; with probability ``noise`` a random action instead."""
    from lewm_envs.minigrid_rooms import DIR_TO_VEC, LAYOUTS

    walls = np.array([[ch == "#" for ch in row] for row in LAYOUTS[layout]]).T

    def distances(goal: tuple[int, int]) -> np.ndarray:
        dist = np.full(walls.shape, np.iinfo(np.int64).max)
        dist[goal] = 0
        queue = deque([goal])
        while queue:
            x, y = queue.popleft()
            for dx, dy in DIR_TO_VEC:
                n = (x + dx, y + dy)
                if not walls[n] and dist[n] > dist[x, y] + 1:
                    dist[n] = dist[x, y] + 1
                    queue.append(n)
        return dist

    def act(obs: dict) -> int:
        if rng.random() < noise:
            return int(rng.integers(3))
        x, y, direction, gx, gy = (int(v) for v in obs["state"])
        dist = distances((gx, gy))
        # Directions that step onto a cell one closer to the goal; prefer going straight on.
        good = [d for d, (dx, dy) in enumerate(DIR_TO_VEC) if dist[x + dx, y + dy] == dist[x, y] - 1]
        if not good or direction in good:
            return 2
        turn = (int(rng.choice(good)) - direction) % 4
        return 1 if turn == 1 else 0 if turn == 3 else int(rng.integers(2))

    return act


def push_t_expert(noise: float, rng: np.random.Generator, **_: Any) -> Expert:
    """Pick the contact point on the T whose push best moves it toward the goal pose, get there
    around the block, and push.

    Each candidate contact (points along the T's outline, outward normal ``n``) is scored by how well
    a push along ``-n`` would move the centre of mass toward the goal (translation) and turn the T
    toward the goal angle (torque about the centre of mass).
    """
    from lewm_envs import push_t as pt

    contacts, normals = _t_contacts(pt)
    cog = pt.T_RECTS[:, :2].mean(axis=0)  # centre of mass (body frame): mean of the two bars, as in pymunk
    approach = pt.AGENT_RADIUS + 6.0  # stand-off from the contact point before pushing
    reach = float(np.max(np.linalg.norm(contacts - cog, axis=1)))  # T radius about its CoM
    travel_cost = 0.003  # score per px of travel to a contact

    def rot(theta: float) -> np.ndarray:
        c, s = np.cos(theta), np.sin(theta)
        return np.array([[c, -s], [s, c]])

    def act(obs: dict) -> np.ndarray:
        s = obs["state"].astype(np.float64)
        agent, pose, goal = s[:2], s[2:5], s[9:12]
        r_now, r_goal = rot(pose[2]), rot(goal[2])
        com, com_goal = pose[:2] + r_now @ cog, goal[:2] + r_goal @ cog
        err_pos, err_ang = com_goal - com, float(wrap_angle(goal[2] - pose[2]))
        dist = np.linalg.norm(err_pos)
        points, push = pose[:2] + contacts @ r_now.T, -(normals @ r_now.T)
        arm = points - com
        torque = (arm[:, 0] * push[:, 1] - arm[:, 1] * push[:, 0]) / reach
        score = min(1.0, dist / 40.0) * push @ (err_pos / max(dist, 1e-6))
        score += np.clip(err_ang / 0.5, -1.0, 1.0) * torque
        starts = points - push * approach
        # Prefer nearby contacts: cheaper, and it stops the choice flip-flopping between two sides.
        score -= travel_cost * np.linalg.norm(starts - agent, axis=1)
        # The agent cannot stand outside the arena, so contacts against a wall are out of reach.
        score[np.any((starts < pt.POS_LOW) | (starts > pt.POS_HIGH), axis=1)] = -np.inf
        best = int(np.argmax(score))
        point, direction, start = points[best], push[best], starts[best]
        if np.linalg.norm(agent - start) < 8.0 or _pushing(agent, point, direction, pt.AGENT_RADIUS):
            depth = np.clip(0.6 * dist + 30.0 * abs(err_ang), 8.0, 70.0)
            target = point + direction * depth
        elif _blocked(agent, start, pose, pt):
            target = _around(agent, start, com, pose, pt)
        else:
            target = start
        move = (target - agent) / pt.ACTION_SCALE
        move *= min(1.0, 1.0 / max(np.abs(move).max(), 1e-6))  # keep the direction when clipping
        return _noisy(move, noise, rng)

    return act


def _t_contacts(pt: Any, spacing: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """Points along the T outline (body frame) where the agent can touch it, with outward normals."""
    s = pt.SCALE
    outline = np.array(
        [
            (-2 * s, 0),
            (2 * s, 0),
            (2 * s, s),
            (s / 2, s),
            (s / 2, 4 * s),
            (-s / 2, 4 * s),
            (-s / 2, s),
            (-2 * s, s),
        ]
    )
    origin = np.zeros(3)
    points, normals = [], []
    for a, b in zip(outline, np.roll(outline, -1, axis=0)):
        edge = b - a
        normal = np.array([edge[1], -edge[0]]) / np.linalg.norm(edge)
        mid = (a + b) / 2
        if pt.tee_distance(*(mid + normal), origin) < 0:
            normal = -normal
        for t in np.arange(spacing / 2, np.linalg.norm(edge), spacing) / np.linalg.norm(edge):
            p = a + t * edge
            centre = p + normal * (pt.AGENT_RADIUS + 1.0)
            if pt.tee_distance(*centre, origin) >= pt.AGENT_RADIUS:  # the agent fits there
                points.append(p)
                normals.append(normal)
    return np.array(points), np.array(normals)


def _pushing(agent: np.ndarray, point: np.ndarray, direction: np.ndarray, radius: float) -> bool:
    """Whether the agent sits just behind ``point`` relative to the push ``direction``."""
    rel = agent - point
    along = rel @ direction
    across = abs(rel[0] * direction[1] - rel[1] * direction[0])
    return -radius - 10.0 < along < 0.0 and across < 8.0


def _blocked(agent: np.ndarray, goal: np.ndarray, pose: np.ndarray, pt: Any) -> bool:
    """Whether moving straight from ``agent`` to ``goal`` would brush the T."""
    ts = np.linspace(0.0, 1.0, 12)[:, None]
    path = agent + ts * (goal - agent)
    return bool(np.any(pt.tee_distance(path[:, 0], path[:, 1], pose) < pt.AGENT_RADIUS + 3.0))


def _around(agent: np.ndarray, goal: np.ndarray, com: np.ndarray, pose: np.ndarray, pt: Any) -> np.ndarray:
    """A waypoint that follows the T's outline at a safe clearance, turning around its centre of
    mass the short way toward ``goal`` unless that leaves the arena."""
    clearance, stride, eps = pt.AGENT_RADIUS + 6.0, 40.0, 1.0
    d = pt.tee_distance(*agent, pose)
    grad = np.array(
        [
            pt.tee_distance(agent[0] + eps, agent[1], pose) - d,
            pt.tee_distance(agent[0], agent[1] + eps, pose) - d,
        ]
    )
    out = grad / max(np.linalg.norm(grad), 1e-6)  # away from the T
    rel, to_goal = agent - com, goal - com
    turn = np.sign(rel[0] * to_goal[1] - rel[1] * to_goal[0]) or 1.0  # +1: counter-clockwise
    for sign in (turn, -turn):
        tangent = sign * np.array([-out[1], out[0]])
        waypoint = agent + stride * tangent + (clearance - d) * out
        if np.all((waypoint >= pt.POS_LOW) & (waypoint <= pt.POS_HIGH)):
            return waypoint
    return np.clip(waypoint, pt.POS_LOW, pt.POS_HIGH)


def cube_expert(noise: float, rng: np.random.Generator, **_: Any) -> Expert:
    """Pick and place, after OGBench's Markov data-collection oracle: above the cube, down, grasp,
    lift, above the target, down (the episode ends once the cube is within 4 cm of the target)."""
    from lewm_envs.cube import CUBE_QPOS

    above, lift = np.array([0.0, 0.0, 0.18]), 0.16
    gain_pos, gain_yaw, min_norm = 5.0, 3.0, 0.4

    def shaped(diff: np.ndarray) -> np.ndarray:
        # A minimum step size, as in OGBench, so the arm never crawls near its waypoint.
        norm = np.linalg.norm(diff)
        return diff if norm >= min_norm / gain_pos else diff / (norm + 1e-6) * min_norm / gain_pos

    def act(obs: dict) -> np.ndarray:
        effector, yaw, _opening, contact = obs["proprio"][:3], obs["proprio"][3], *obs["proprio"][4:]
        s = obs["state"].astype(np.float64)
        cube, (w, x, y, z), target = s[CUBE_QPOS : CUBE_QPOS + 3], s[CUBE_QPOS + 3 : CUBE_QPOS + 7], s[-3:]
        cube_yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
        # The cube looks the same every quarter turn: align the fingers with the nearest face.
        turn = (cube_yaw - yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4
        grasped = contact > 0.5 and np.linalg.norm(cube - effector) <= 0.02
        action = np.zeros(5)
        if not grasped:
            if np.linalg.norm(cube[:2] - effector[:2]) > 0.04:
                waypoint, gripper = cube + above, -1.0  # above the cube, open
            elif np.linalg.norm(cube - effector) > 0.02:
                waypoint, gripper = cube, -1.0  # down to the cube
            else:
                waypoint, gripper = cube, 1.0  # close
            action[3] = turn * gain_yaw
        elif effector[2] <= lift and np.linalg.norm(target[:2] - cube[:2]) > 0.04:
            waypoint, gripper = np.array([*cube[:2], 2 * above[2]]), 1.0  # lift
        elif np.linalg.norm(target[:2] - cube[:2]) > 0.04:
            waypoint, gripper = target + above, 1.0  # carry above the target
        else:
            waypoint, gripper = target, 1.0  # lower onto the target
        action[:3] = shaped(waypoint - effector) * gain_pos
        action[4] = gripper
        return _noisy(np.clip(action, -1.0, 1.0), noise, rng)

    return act


EXPERTS: dict[str, Callable[..., Expert]] = {
    "lewm/TwoRoom-v0": two_room_expert,
    "lewm/PushT-v0": push_t_expert,
    "lewm/Reacher-v0": reacher_expert,
    "lewm/MiniGrid-MultiRoom-v0": minigrid_expert,
    "lewm/Cube-v0": cube_expert,
}


def make_expert(env_id: str, noise: float = 0.2, seed: int | None = None, **env_kwargs: Any) -> Expert:
    """A scripted expert ``obs -> action`` for one env of ``env_id``.

    Args:
        env_id: a registered ``lewm/...`` id (see :data:`EXPERTS`).
        noise: action noise (Gaussian std for continuous actions, random-action probability for
            MiniGrid); 0 gives the noiseless expert.
        seed: seeds the expert's noise; None draws fresh entropy.
        env_kwargs: the kwargs the env was made with, where the expert needs them (MiniGrid's
            ``layout``); others are ignored.
    """
    if env_id not in EXPERTS:
        raise ValueError(f"no scripted expert for {env_id!r}; experts exist for {sorted(EXPERTS)}")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    return EXPERTS[env_id](float(noise), np.random.default_rng(seed), **env_kwargs)
