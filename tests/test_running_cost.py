"""`solve(..., running_cost=g)`: `sol.cost = ∫ g(t, y, args) dt`, differentiable by
every method."""

import diffrax as dfx
import jax
import jax.numpy as jnp
import optimistix as optx
import pytest

import jaxsens

from . import helpers
from .helpers import rel_err


# `Auto` picks `Forward` here (`test_auto_picks_from_the_state_with_its_cost`).
METHODS = {k: m for k, m in helpers.METHODS.items() if "checkpoints" not in k}
TOL = dict(rtol=1e-10, atol=1e-10, max_steps=256)
T = 2.0
TS = jnp.array([0.0, 1.0, T])
K, Y0 = 0.8, 1.5


def decay(t, y, k):
    return -k * y


def square(t, y, k):
    return y**2


def exact(k, y0):
    """`(∫_0^T y² dt, y(ts))` for `y = y0 e^{-kt}`."""
    return y0**2 * (1 - jnp.exp(-2 * k * T)) / (2 * k), y0 * jnp.exp(-k * TS)


@pytest.mark.parametrize("name", list(METHODS))
def test_cost_and_its_gradient_every_method(name):
    def cost(k, y0):
        sol = jaxsens.solve(decay, y0, TS, k, sensitivity=METHODS[name],
                            running_cost=square, **TOL)
        return sol.cost, sol.ys

    (value, ys), grad = jax.jit(jax.value_and_grad(cost, argnums=(0, 1),
                                                   has_aux=True))(K, Y0)
    exact_cost, exact_ys = exact(K, Y0)
    assert rel_err(value, exact_cost) < 1e-8
    assert ys.shape == TS.shape and rel_err(ys, exact_ys) < 1e-8
    exact_grad = jax.grad(lambda k, y0: exact(k, y0)[0], argnums=(0, 1))(K, Y0)
    assert rel_err(grad, exact_grad) < 1e-6


def test_auto_picks_from_the_state_with_its_cost():
    sol = jax.eval_shape(lambda k: jaxsens.solve(decay, Y0, TS, k, running_cost=square),
                         K)
    assert isinstance(sol.sensitivity, jaxsens.Forward)
    assert sol.cost.shape == () and sol.ys.shape == TS.shape


def test_nonlinear_cost_against_finite_differences():
    """Lotka–Volterra with a cost of both states and of time, by one adjoint."""
    ts = jnp.array([0.0, 1.5])

    def field(t, y, p):
        a, b = p
        x, z = y
        return jnp.stack([a * x - b * x * z, b * x * z - z])

    def g(t, y, p):
        return jnp.sin(t) * y[0] * y[1] + p[0] * y[1] ** 2

    def cost(p, method):
        return jaxsens.solve(field, jnp.array([1.0, 0.5]), ts, p, sensitivity=method,
                             running_cost=g, **TOL).cost

    p = jnp.array([1.1, 0.6])
    value_and_grad = jax.jit(jax.value_and_grad(
        lambda p: cost(p, jaxsens.InterpolatingAdjoint())))
    grad = value_and_grad(p)[1]
    h = 1e-5
    fd = jnp.stack([(value_and_grad(p + h * e)[0] - value_and_grad(p - h * e)[0])
                    / (2 * h) for e in jnp.eye(2)])
    assert rel_err(grad, fd) < 1e-6


def test_the_cost_does_not_loosen_the_state_error_control():
    y0 = jnp.array([1.5, 0.3])
    ks = jnp.array([0.8, 3.0])

    def solve(running_cost):
        return jax.jit(lambda: jaxsens.solve(decay, y0, TS, ks, max_steps=256,
                                             running_cost=running_cost,
                                             sensitivity=jaxsens.Discrete()))()

    plain, costed = solve(None), solve(lambda t, y, k: jnp.sum(y**2))
    assert plain.cost is None
    assert costed.stats["num_steps"] >= plain.stats["num_steps"]
    exact_ys = y0 * jnp.exp(-ks * TS[:, None])
    assert rel_err(costed.ys, exact_ys) <= rel_err(plain.ys, exact_ys) * 1.01


def test_cost_up_to_an_event():
    """`y = y0 e^{-kt}` stops at `y = 1/2`: `τ = ln 3 / k`, and `∫_0^τ y² dt =
    y0² (1 − 1/9) / (2k) = 1/k` for `y0 = 3/2`."""
    event = dfx.Event(lambda t, y, args, **kw: y - 0.5,
                      root_finder=optx.Newton(1e-12, 1e-12))

    def cost(k):
        sol = jaxsens.solve(decay, Y0, TS, k, running_cost=square, event=event,
                            sensitivity=jaxsens.GaussAdjoint(), **TOL)
        return sol.cost, (sol.event_time, sol.event_state)

    (value, (tau, state)), grad = jax.jit(jax.value_and_grad(cost, has_aux=True))(K)
    assert rel_err(value, 1 / K) < 1e-8 and rel_err(grad, -1 / K**2) < 1e-6
    assert rel_err(tau, jnp.log(3.0) / K) < 1e-8 and rel_err(state, 0.5) < 1e-8


def test_bad_running_costs_are_named():
    named = r"`running_cost\(t, y, args\)` must return one real scalar"
    with pytest.raises(ValueError, match=named):
        jaxsens.solve(decay, jnp.ones(2), TS, K, running_cost=lambda t, y, k: y**2)
    with pytest.raises(ValueError, match="must return one real scalar"):
        jaxsens.solve(decay, Y0, TS, K, running_cost=lambda t, y, k: y * 1j)
    with pytest.raises(TypeError, match="`running_cost` must be callable"):
        jaxsens.solve(decay, Y0, TS, K, running_cost=1.0)
    with pytest.raises(ValueError, match="`running_cost` with `sensitivity=LinearExpm"):
        jaxsens.solve(jaxsens.LinearField(lambda k: jnp.array([[-k]])), jnp.ones(1),
                      TS, K, running_cost=lambda t, y, k: jnp.sum(y**2),
                      sensitivity=jaxsens.LinearExpm())
