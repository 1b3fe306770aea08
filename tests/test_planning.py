"""Planners on toy problems whose answer is known: quadratics, bounds, a linear system, discrete codes."""

import pytest
import torch
import torch.nn.functional as F

from lewm_agent.planning import CEM, MPPI, BeamSearch, CategoricalCEM, GradientPlanner, Planner, make_planner

H, A = 3, 2
TARGET = torch.tensor([[0.5, -0.3], [1.2, 0.0], [-0.8, 0.4]])  # [H, A], inside [-1.5, 1.5]


def quadratic(target: torch.Tensor):
    """cost = ||x - target||^2 summed over the horizon; rows independent."""
    return lambda x: ((x - target) ** 2).sum(dim=(-1, -2))


def recording(cost_fn):
    """Wraps ``cost_fn`` and keeps (candidates, costs) of every call."""
    calls = []

    def fn(x):
        c = cost_fn(x)
        calls.append((x.detach().clone(), c.detach().clone()))
        return c

    fn.calls = calls
    return fn


CONTINUOUS = {
    "cem": dict(),
    "mppi": dict(update_std=True),
    "gradient": dict(lr=0.1, iterations=60),
}


@pytest.mark.parametrize("name", list(CONTINUOUS))
def test_minimises_quadratic(name):
    planner = make_planner(name, **CONTINUOUS[name])
    out = planner.plan(quadratic(TARGET), batch_size=2, horizon=H, action_dim=A)
    assert out.shape == (2, H, A)
    torch.testing.assert_close(out, TARGET.expand(2, H, A), atol=0.05, rtol=0)


def test_mppi_with_fixed_std_still_descends():
    # stable-worldmodel's MPPI keeps the std fixed: it gets close, not exact.
    out = MPPI().plan(quadratic(TARGET), 1, H, A)
    assert quadratic(TARGET)(out[None]).item() < 0.05 * quadratic(TARGET)(torch.zeros(1, 1, H, A)).item()


@pytest.mark.parametrize("name", list(CONTINUOUS))
def test_bounds_respected(name):
    low, high = torch.tensor([-1.0, -0.2]), torch.tensor([1.0, 0.2])
    target = torch.tensor([[3.0, 0.1], [-3.0, 0.0], [0.0, -5.0]])
    cost = recording(quadratic(target))
    out = make_planner(name, **CONTINUOUS[name]).plan(cost, 2, H, A, low=low, high=high)
    for candidates, _ in cost.calls:
        assert (candidates >= low).all() and (candidates <= high).all()
    assert (out >= low).all() and (out <= high).all()
    expected = torch.maximum(torch.minimum(target, high), low)  # the projection of the target
    torch.testing.assert_close(out, expected.expand(2, H, A), atol=0.05, rtol=0)


@pytest.mark.parametrize(
    "planner",
    [CEM(num_samples=50, iterations=4, topk=5), MPPI(num_samples=50, iterations=4),
     GradientPlanner(num_samples=3, iterations=4)],
    ids=["cem", "mppi", "gradient"],
)
def test_batched_equals_single_with_seeds(planner):
    targets = torch.randn(4, 1, H, A)
    cost = lambda x: ((x - targets[: x.shape[0]]) ** 2).sum(dim=(-1, -2))  # noqa: E731
    init = torch.randn(4, H, A)
    seeds = [3, 1, 4, 1]
    bounds = dict(low=-torch.ones(A), high=torch.ones(A))
    batched = planner.plan(cost, 4, H, A, init=init, seeds=seeds, **bounds)
    for i in range(4):
        # Row i alone, with its own target: the cost sees it as row 0.
        single_cost = lambda x, i=i: ((x - targets[i]) ** 2).sum(dim=(-1, -2))  # noqa: E731
        single = planner.plan(single_cost, 1, H, A, init=init[i : i + 1], seeds=[seeds[i]], **bounds)
        assert torch.equal(batched[i], single[0])


def test_categorical_batched_equals_single_with_seeds():
    planner = CategoricalCEM(n_actions=3, num_samples=40, iterations=3, topk=5)
    targets = F.one_hot(torch.randint(0, 3, (3, 1, H, 2)), 3).float().flatten(-2)
    batched = planner.plan(quadratic(targets), 3, H, 6, seeds=[7, 8, 9])
    for i in range(3):
        single = planner.plan(quadratic(targets[i]), 1, H, 6, seeds=[7 + i])
        assert torch.equal(batched[i], single[0])


def test_without_seeds_plans_are_reproducible_per_planner_seed():
    a = CEM(iterations=2, seed=5).plan(quadratic(TARGET), 2, H, A)
    b = CEM(iterations=2, seed=5).plan(quadratic(TARGET), 2, H, A)
    c = CEM(iterations=2, seed=6).plan(quadratic(TARGET), 2, H, A)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_cem_semantics_candidate0_is_mean_std_starts_at_init_std_final_mean_returned():
    planner = CEM(num_samples=20, iterations=3, topk=4, init_std=0.7)
    cost = recording(quadratic(TARGET))
    init = torch.full((1, H, A), 2.0)  # a warm start shifts the mean but not the std
    out = planner.plan(cost, 1, H, A, init=init, seeds=[11])
    eps = torch.randn(19, H, A, generator=torch.Generator().manual_seed(11))
    first = cost.calls[0][0][0]
    assert torch.equal(first[0], init[0])
    torch.testing.assert_close(first[1:], init[0] + 0.7 * eps)
    means = [init[0]]
    for candidates, costs in cost.calls:
        assert torch.equal(candidates[0, 0], means[-1])  # candidate 0 is the current mean
        elites = candidates[0, costs[0].argsort()[:4]]
        means.append(elites.mean(dim=0))
    torch.testing.assert_close(out[0], means[-1])  # the final mean, not the best sample


def test_mppi_candidate0_is_mean():
    cost = recording(quadratic(TARGET))
    init = torch.randn(2, H, A)
    MPPI(num_samples=20, iterations=3, topk=None, temperature=0.5).plan(cost, 2, H, A, init=init)
    assert torch.equal(cost.calls[0][0][:, 0], init)
    for (prev, prev_costs), (nxt, _) in zip(cost.calls, cost.calls[1:]):
        w = torch.softmax(-prev_costs / 0.5, dim=1)  # over all 20 candidates
        torch.testing.assert_close(nxt[:, 0], (w[:, :, None, None] * prev).sum(dim=1))


@pytest.mark.parametrize("name", list(CONTINUOUS))
def test_warm_start_at_optimum(name):
    target = torch.full((H, A), 2.5)
    cold = make_planner(name, **{**CONTINUOUS[name], "iterations": 1}).plan(quadratic(target), 1, H, A)
    warm = make_planner(name, **{**CONTINUOUS[name], "iterations": 1}).plan(
        quadratic(target), 1, H, A, init=target[None]
    )
    assert (warm - target).abs().max() < 0.3
    assert (warm - target).norm() < 0.25 * (cold - target).norm()


def test_init_shorter_than_horizon_is_zero_padded():
    cost = recording(quadratic(TARGET))
    CEM(num_samples=10, iterations=1, topk=2).plan(cost, 1, H, A, init=torch.ones(1, 1, A))
    torch.testing.assert_close(cost.calls[0][0][0, 0], torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]))


@pytest.mark.parametrize("cls", [CEM, MPPI])
def test_block_noise_shares_a_blocks_perturbation_between_its_env_steps(cls):
    block, step = 5, 2
    zero = lambda x: x.sum(dim=(-1, -2)) * 0  # noqa: E731
    draws = {}
    for share in (0.0, 0.5, 1.0):
        cost = recording(zero)
        cls(num_samples=2001, iterations=1, block_noise=share).plan(cost, 1, H, block * step, action_block=block)
        eps = cost.calls[0][0][0, 1:].unflatten(-1, (block, step))  # [S - 1, H, block, step] around a zero mean
        draws[share] = eps
        assert abs(eps.var().item() - 1) < 0.05  # unit variance whatever is shared
        first, second = eps[..., 0, :].flatten(), eps[..., 1, :].flatten()
        corr = torch.corrcoef(torch.stack([first, second]))[0, 1].item()
        assert abs(corr - share) < 0.06  # env steps of a block correlate by the shared share
    assert torch.equal(draws[1.0], draws[1.0][..., :1, :].expand_as(draws[1.0]))  # one draw per block
    # Share 0 draws what the planner drew before the setting existed: the same generator calls.
    gen = torch.Generator().manual_seed(0)
    expected = torch.randn(1, 2000, H, block * step, generator=gen)[0].unflatten(-1, (block, step))
    torch.testing.assert_close(draws[0.0], expected)


def test_block_noise_needs_a_block_that_divides_the_features():
    with pytest.raises(ValueError, match="action_block"):
        CEM(block_noise=1.0).plan(quadratic(TARGET), 1, H, A, action_block=3)


def test_categorical_finds_best_sequence():
    n, block = 4, 2
    best = torch.tensor([[1, 3], [0, 2], [3, 3]])  # [H, block]
    target = F.one_hot(best, n).float().flatten(-2)  # [H, block * n]
    out = CategoricalCEM(n_actions=n).plan(quadratic(target), 2, H, block * n)
    assert torch.equal(out, target.expand(2, H, block * n))


def test_categorical_candidate0_is_mode_and_warm_start():
    n = 3
    best = F.one_hot(torch.tensor([[2], [0], [1]]), n).float().flatten(-2)  # [H, n]
    cost = recording(quadratic(best))
    out = CategoricalCEM(n_actions=n, iterations=1).plan(cost, 1, H, n, init=best[None])
    assert torch.equal(cost.calls[0][0][0, 0], best)  # the mode of the warm start
    assert torch.equal(out[0], best)
    candidates = cost.calls[0][0]
    assert set(candidates.unique().tolist()) <= {0.0, 1.0} and (candidates.sum(-1) == 1).all()


# A walk on the integers: actions move -1, 0 or +1 per env step, from 0.
STEPS = torch.tensor([-1.0, 0.0, 1.0])


def walk_positions(candidates):
    """``[B, S, h, block * 3]`` one-hot plans -> the position after every planned step ``[B, S, h]``."""
    return (candidates.unflatten(-1, (-1, 3)) * STEPS).sum(dim=(-1, -2)).cumsum(dim=-1)


def needle(target: float):
    """Cost 0 when the walk passes through ``target`` at some step, else 1: no hint of where it is."""
    return lambda c: 1.0 - (walk_positions(c) == target).any(dim=-1).float()


def walk_end(candidates):
    return walk_positions(candidates)[..., -1:]  # the state a plan ends in: its last position


def test_beam_finds_a_needle_that_no_cost_points_to():
    plan = BeamSearch(n_actions=3).plan(needle(5.0), 2, 6, 3, state_fn=walk_end)
    assert (needle(5.0)(plan[:, None]) == 0).all()
    # Two env steps per planned step: all nine blocks are tried, so +6 is reached in three steps.
    plan = BeamSearch(n_actions=3).plan(needle(6.0), 1, 3, 6, action_block=2, state_fn=walk_end)
    assert walk_positions(plan[:, None])[0, 0].tolist() == [2.0, 4.0, 6.0]


def test_beam_keeps_one_plan_per_state_and_at_most_width():
    cost = recording(needle(100.0))  # unreachable: every plan costs the same
    BeamSearch(n_actions=3, merge=1e-6).plan(cost, 1, 4, 3, state_fn=walk_end)
    # After d steps the walk ends in one of 2d + 1 positions; each is extended by the 3 moves.
    assert [x.shape[1] for x, _ in cost.calls] == [3, 9, 15, 21]
    cost = recording(needle(100.0))
    BeamSearch(n_actions=3, width=4, merge=1e-6).plan(cost, 1, 4, 3, state_fn=walk_end)
    assert [x.shape[1] for x, _ in cost.calls] == [3, 9, 12, 12]


def test_beam_merges_states_closer_than_merge_times_the_spread():
    def noisy_end(c):  # the predicted position drifts a little with the path, as a model's does
        path_number = (c.argmax(dim=-1) * 3 ** torch.arange(c.shape[2])).sum(dim=-1, keepdim=True)
        return walk_end(c) + 1e-3 * path_number

    for merge, expected in [(1e-9, [3, 9, 27]), (0.05, [3, 9, 15])]:
        cost = recording(needle(100.0))
        BeamSearch(n_actions=3, merge=merge).plan(cost, 1, 3, 3, state_fn=noisy_end)
        assert [x.shape[1] for x, _ in cost.calls] == expected, merge


def test_beam_rows_are_independent_and_it_needs_state_fn():
    cost = lambda c: (walk_positions(c)[..., -1] - torch.tensor([[3.0], [-2.0]])) ** 2  # noqa: E731
    plan = BeamSearch(n_actions=3).plan(cost, 2, 3, 3, state_fn=walk_end)
    assert walk_positions(plan[:, None])[:, 0, -1].tolist() == [3.0, -2.0]
    with pytest.raises(ValueError, match="state_fn"):
        BeamSearch(n_actions=3).plan(cost, 2, 3, 3)
    with pytest.raises(ValueError, match="width"):
        BeamSearch(n_actions=3, width=0)
    with pytest.raises(ValueError, match="merge"):
        BeamSearch(n_actions=3, merge=0)


def test_toy_latent_dynamics_all_planners_reach_goal():
    """x_{t+1} = x_t + a_t from x_0; only the distance of x_H to the goal counts (like LeWM's cost)."""
    x0, goal = torch.tensor([0.5, -0.5]), torch.tensor([2.0, 1.5])

    def terminal(actions):  # [B, S, H, A] -> [B, S]
        return ((x0 + actions.sum(dim=-2) - goal) ** 2).sum(dim=-1)

    # Adam at lr 0.1 moves ~0.1 per step, so it gets more steps than the paper's 30 to settle.
    planners = [
        CEM(),
        MPPI(update_std=True),
        GradientPlanner(iterations=100),
        GradientPlanner(optimizer="adamw", num_samples=3, iterations=100),
        GradientPlanner(optimizer="sgd"),
    ]
    for planner in planners:
        plan = planner.plan(terminal, 2, 5, 2)
        assert terminal(plan[:, None]).max() < 1e-3, planner

    # Discrete: moves {-1, 0, +1} on a line, two per step; reach +4 from 0 in 3 steps.
    moves = torch.tensor([-1.0, 0.0, 1.0])
    walk = lambda a: ((a.unflatten(-1, (2, 3)) * moves).sum(dim=(-1, -2, -3)) - 4) ** 2  # noqa: E731
    plan = CategoricalCEM(n_actions=3).plan(walk, 2, 3, 6)
    assert (walk(plan[:, None]) == 0).all()


def test_gradient_planner_works_under_inference_mode_and_leaves_model_grads_alone():
    weight = torch.nn.Parameter(torch.ones(A))
    cost = lambda x: (((x * weight) - TARGET) ** 2).sum(dim=(-1, -2))  # noqa: E731
    with torch.inference_mode():
        out = make_planner("adam", iterations=60).plan(cost, 1, H, A)
    torch.testing.assert_close(out[0], TARGET, atol=0.05, rtol=0)
    assert weight.grad is None


def test_output_is_a_plain_tensor_on_inits_dtype():
    out = CEM(iterations=1).plan(quadratic(TARGET), 1, H, A, init=torch.zeros(1, H, A, dtype=torch.float64))
    assert out.dtype == torch.float64 and not out.is_inference()
    out += 1  # callers may edit the plan in place (e.g. to shift it for the next warm start)


def test_settings_round_trip_through_make_planner():
    planners = [CEM(topk=10), MPPI(temperature=2.0), GradientPlanner(lr=0.5), CategoricalCEM(n_actions=5),
                BeamSearch(n_actions=3, width=9)]
    for planner in planners:
        rebuilt = make_planner(planner.name, **planner.settings)
        assert type(rebuilt) is type(planner) and rebuilt.settings == planner.settings
        assert isinstance(rebuilt, Planner)


@pytest.mark.parametrize(
    "name, settings, match",
    [
        ("dijkstra", {}, "valid names"),
        ("cem", {"samples": 3}, "valid settings"),
        ("cem", {"topk": 400}, "topk"),
        ("cem", {"iterations": 0}, "iterations"),
        ("cem", {"topk": 1}, "topk"),
        ("cem", {"init_std": 0.0}, "init_std"),
        ("cem", {"num_samples": 2.5}, "num_samples"),
        ("mppi", {"temperature": -1.0}, "temperature"),
        ("mppi", {"topk": 301}, "topk"),
        ("gradient", {"optimizer": "lbfgs"}, "optimizer"),
        ("adam", {"lr": 0}, "lr"),
        ("categorical_cem", {}, "n_actions"),
        ("categorical_cem", {"n_actions": 3, "smoothing": -0.1}, "smoothing"),
        ("cem", {"block_noise": 1.5}, "block_noise"),
        ("mppi", {"block_noise": -0.1}, "block_noise"),
    ],
)
def test_bad_settings_raise(name, settings, match):
    with pytest.raises(ValueError, match=match):
        make_planner(name, **settings)


def test_bad_plan_arguments_raise_before_calling_cost():
    def never(x):
        raise AssertionError("cost_fn must not run")

    cem = CEM()
    bad = [
        dict(batch_size=0, horizon=H, action_dim=A),
        dict(batch_size=1, horizon=H, action_dim=A, init=torch.zeros(2, H, A)),
        dict(batch_size=1, horizon=H, action_dim=A, init=torch.zeros(1, H + 1, A)),
        dict(batch_size=2, horizon=H, action_dim=A, seeds=[1]),
        dict(batch_size=1, horizon=H, action_dim=10, low=torch.zeros(2), high=torch.ones(2)),
        dict(batch_size=1, horizon=H, action_dim=A, low=torch.ones(A), high=torch.zeros(A)),
    ]
    for kwargs in bad:
        with pytest.raises(ValueError):
            cem.plan(never, **kwargs)
    with pytest.raises(ValueError, match="multiple of n_actions"):
        CategoricalCEM(n_actions=3).plan(never, 1, H, 4)
    with pytest.raises(ValueError, match="repeat"):
        cem.plan(never, 1, H, 10, low=-torch.ones(2))


def test_bad_cost_functions_raise():
    with pytest.raises(ValueError, match="shape"):
        CEM().plan(lambda x: x.sum(), 1, H, A)
    with pytest.raises(ValueError, match="differentiable"):
        GradientPlanner().plan(lambda x: quadratic(TARGET)(x).detach(), 1, H, A)
