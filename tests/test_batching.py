"""`jax.vmap` over a batch of controls inside one `jax.jit(jax.grad(...))`, with every
sensitivity method: equal to the sum of the members' gradients (each solved alone),
to the other methods, and to finite differences; and the shared-step batched state
(`jaxsens.batched_field`) against it."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

import jaxsens


METHODS = {
    "Discrete": jaxsens.Discrete(),
    "Forward": jaxsens.Forward(),
    "BacksolveAdjoint": jaxsens.BacksolveAdjoint(),
    "InterpolatingAdjoint": jaxsens.InterpolatingAdjoint(),
    "QuadratureAdjoint": jaxsens.QuadratureAdjoint(),
    "GaussAdjoint": jaxsens.GaussAdjoint(),
}
B = 3
TS = jnp.linspace(0.0, 1.0, 4)
TOL = 1e-10
FIELD = jaxsens.nn.ControlledField(2, 1, width=4, depth=1, activation=jnp.tanh,
                                   key=jr.key(0))
PARAMS, STATIC = eqx.partition(FIELD, eqx.is_inexact_array)
CONTROLS = jax.vmap(lambda v: jaxsens.Control(jnp.linspace(0.0, 1.0, 5), v, "cubic"))(
    jr.normal(jr.key(1), (B, 5)))
Y0S = jnp.array([[0.3, -0.1], [0.0, 0.2], [-0.4, 0.1]])


def loss_one(params, y0, control, method):
    ys = jaxsens.solve(eqx.combine(params, STATIC), y0, TS, control, rtol=TOL,
                       atol=TOL, sensitivity=method)
    return jnp.sum(jnp.sin(ys.ys))


def loss_vmap(params, y0s, controls, method):
    per = jax.vmap(loss_one, in_axes=(None, 0, 0, None))(params, y0s, controls, method)
    return jnp.sum(per)


def loss_shared(params, y0s, controls, method):
    ys = jaxsens.solve(jaxsens.batched_field(eqx.combine(params, STATIC)), y0s, TS,
                       controls, rtol=TOL, atol=TOL, sensitivity=method).ys
    return jnp.sum(jnp.sin(ys))


@jax.jit
def sum_of_members(params, y0s, controls):
    """The members' gradients one at a time (`lax.map` runs each solve alone, no
    batching), summed; by `Discrete`."""
    each = jax.lax.map(
        lambda yc: jax.grad(loss_one)(params, *yc, jaxsens.Discrete()), (y0s, controls))
    return jax.tree_util.tree_map(lambda g: jnp.sum(g, 0), each)


def flat(tree):
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(tree)])


def rel(a, b):
    return float(jnp.linalg.norm(flat(a) - flat(b)) / jnp.linalg.norm(flat(b)))


grad_vmap = jax.jit(jax.grad(loss_vmap), static_argnums=3)


@pytest.fixture(scope="module")
def reference():
    return sum_of_members(PARAMS, Y0S, CONTROLS)


@pytest.mark.parametrize("name", list(METHODS))
def test_vmapped_gradient_is_sum_of_members(reference, name):
    """One compiled `jit(grad(Σ vmap))` per method; the reference is each member's
    gradient computed alone (Discrete), summed. 1e-6 is far below any sign or factor
    error and above the methods' differences at tolerance 1e-10."""
    g = grad_vmap(PARAMS, Y0S, CONTROLS, METHODS[name])
    assert rel(g, reference) < 1e-6


def test_vmapped_gradient_matches_finite_differences(reference):
    direction = jax.tree_util.tree_map(
        lambda x: jr.normal(jr.key(7), x.shape), PARAMS)
    loss = jax.jit(lambda eps: loss_vmap(
        jax.tree_util.tree_map(lambda p, d: p + eps * d, PARAMS, direction), Y0S,
        CONTROLS, jaxsens.Discrete()))
    eps = 1e-4
    fd = (loss(eps) - loss(-eps)) / (2 * eps)
    directional = jnp.vdot(flat(reference), flat(direction))
    # Cubic controls have second-derivative jumps at their samples, which leave
    # ~1e-9 noise in the adaptive solves: 1e-4 relative still catches any sign or
    # factor error.
    assert abs(directional - fd) <= 1e-4 * abs(fd)


def test_shared_step_batched_state_agrees(reference):
    g = jax.jit(jax.grad(loss_shared), static_argnums=3)(PARAMS, Y0S, CONTROLS,
                                                          jaxsens.Discrete())
    assert rel(g, reference) < 1e-6


def loss_batch(params, y0s, controls, method):
    ys = jaxsens.solve(eqx.combine(params, STATIC), y0s, TS, controls, rtol=TOL,
                       atol=TOL, sensitivity=method, batch=(0, 0)).ys
    return jnp.sum(jnp.sin(ys))


@pytest.mark.parametrize("name", ["Discrete", "GaussAdjoint"])
def test_solve_batch_gradient_is_sum_of_members(reference, name):
    """`solve(..., batch=(0, 0))`: the members as one state with a shared step."""
    g = jax.jit(jax.grad(loss_batch), static_argnums=3)(PARAMS, Y0S, CONTROLS,
                                                         METHODS[name])
    assert rel(g, reference) < 1e-6


def test_solve_batch_broadcasts_y0_and_sums_the_running_cost():
    """A shared `y0` (`batch=(None, 0)`) gives each member's trajectory, `ys` with the
    batch axis second; the running cost is the members' costs summed."""
    field, y0 = FIELD, Y0S[0]

    def cost(t, y, u):
        return jnp.sum(y**2) + u(t) ** 2

    def one(u):
        sol = jaxsens.solve(field, y0, TS, u, rtol=TOL, atol=TOL, running_cost=cost)
        return sol.ys, sol.cost

    ys, costs = jax.jit(jax.vmap(one))(CONTROLS)
    sol = jax.jit(lambda c: jaxsens.solve(field, y0, TS, c, rtol=TOL, atol=TOL,
                                          running_cost=cost, batch=(None, 0)))(CONTROLS)
    assert sol.ys.shape == (TS.shape[0], B, 2)
    assert jnp.max(jnp.abs(sol.ys - jnp.swapaxes(ys, 0, 1))) < 1e-8
    assert abs(sol.cost - jnp.sum(costs)) < 1e-8 * jnp.sum(costs)


def test_solve_batch_steps_to_every_members_knots():
    """The batch steps to the union of its members' `Control` sample times, as
    `jax.vmap` steps each member to its own: the same steps as passing them as
    `jump_ts`, and at a loose tolerance (a few natural steps) more steps than
    the 11 distinct interior knots, where stepping past them takes fewer."""
    shifted = jax.vmap(lambda v, s: jaxsens.Control(
        jnp.linspace(0.0, 1.0, 5) + s, v, "cubic"))(CONTROLS.values,
                                                     jnp.array([0.0, 0.03, 0.07]))
    knots = jnp.sort(jnp.ravel(shifted.ts))

    def steps(**kw):
        sol = jaxsens.solve(FIELD, Y0S, TS, shifted, sensitivity=jaxsens.Discrete(),
                            rtol=1e-3, atol=1e-3, batch=(0, 0), **kw)
        return int(sol.stats["num_steps"])

    default = steps()
    assert default == steps(jump_ts=knots)
    assert default > 11 > steps(jump_ts=[])


@pytest.mark.parametrize(
    "batch, match",
    [(0, "must be a pair"), ((1, 0), "batch axis of `y0` must be 0"),
     ((None, None), "does not fit"), ((0, 0), "does not fit")],
)
def test_solve_batch_errors(batch, match):
    y0 = Y0S[:2] if batch == (0, 0) else Y0S[0]
    with pytest.raises((TypeError, ValueError), match=match):
        jaxsens.solve(FIELD, y0, TS, CONTROLS, batch=batch)


def test_solve_batch_refuses_events():
    import diffrax as dfx

    event = dfx.Event(lambda t, y, args, **kw: y[0, 0] - 10.0)
    with pytest.raises(ValueError, match="`batch=` with `event=`"):
        jaxsens.solve(FIELD, Y0S, TS, CONTROLS, batch=(0, 0), event=event)
