"""Terminal events: event times and states, and their gradients, for every method."""

import diffrax as dfx
import jax
import jax.numpy as jnp
import optimistix as optx
import pytest

import jaxsens

from .helpers import rel_err

METHODS = {
    "Auto": jaxsens.Auto(),
    "Discrete": jaxsens.Discrete(),
    "Forward": jaxsens.Forward(),
    "Backsolve": jaxsens.BacksolveAdjoint(),
    "Interpolating": jaxsens.InterpolatingAdjoint(),
    "Quadrature": jaxsens.QuadratureAdjoint(),
    "Gauss": jaxsens.GaussAdjoint(),
}
TOL = dict(rtol=1e-10, atol=1e-10)
TS = jnp.array([0.0, 0.5, 3.0])
ROOT = optx.Newton(rtol=1e-12, atol=1e-12)


def ball(t, y, g):
    h, v = y
    return jnp.stack([v, -g])


def ground(t, y, args, **kwargs):
    return y[0]


def impact(x, method):
    """`(τ, v(τ), h(0.5))` of a ball dropped from `h0` with `v0` under gravity `g`,
    and (as aux) the same values, which rows of `ys` are inf, and whether the event
    happened."""
    g, h0, v0 = x
    sol = jaxsens.solve(ball, jnp.stack([h0, v0]), TS, g, sensitivity=method,
                        event=dfx.Event(ground, root_finder=ROOT), **TOL)
    out = jnp.stack([sol.event_time, sol.event_state[1], sol.ys[1, 0]])
    return out, (out, jnp.all(jnp.isinf(sol.ys), axis=1), sol.event_happened)


def closed_form(x):
    g, h0, v0 = x
    tau = (v0 + jnp.sqrt(v0**2 + 2 * g * h0)) / g
    return jnp.stack([tau, v0 - g * tau, h0 + 0.5 * v0 - 0.5 * g * 0.25])


X = jnp.array([9.81, 2.0, 1.0])


@pytest.fixture(scope="module", params=list(METHODS))
def impact_fns(request):
    method = METHODS[request.param]
    return jax.jit(jax.jacrev(lambda x: impact(x, method), has_aux=True))


def test_ball_impact_time_velocity_and_gradients_every_method(impact_fns):
    jac, (value, inf_rows, happened) = impact_fns(X)
    assert rel_err(value, closed_form(X)) < 1e-8
    assert rel_err(jac, jax.jacfwd(closed_form)(X)) < 1e-7
    # The impact is at τ ≈ 0.76: the row at t = 3 is after it, reported as inf.
    assert bool(happened)
    assert inf_rows.tolist() == [False, False, True]


def test_event_that_never_happens_ends_at_the_span():
    sol = jaxsens.solve(ball, jnp.array([100.0, 1.0]), TS, 9.81,
                        event=dfx.Event(ground, root_finder=ROOT), **TOL)
    assert not bool(sol.event_happened)
    assert float(sol.event_time) == pytest.approx(3.0)
    assert rel_err(sol.event_state, sol.ys[-1]) < 1e-12


def test_bouncing_ball_third_impact_gradient_by_restarts():
    def third(ge, method):
        g, e = ge
        def restart(carry, _):
            # Downcrossings only: each restart begins on the ground, going up.
            y, t = carry
            sol = jaxsens.solve(ball, y, jnp.array([10.0]), g, t0=t, sensitivity=method,
                                event=dfx.Event(ground, root_finder=ROOT,
                                                direction=False), **TOL)
            y = jnp.stack([jnp.zeros_like(sol.event_state[0]), -e * sol.event_state[1]])
            return (y, sol.event_time), None

        # A scan: the three impacts compile one solve, not three.
        (_, t), _ = jax.lax.scan(restart, (jnp.array([1.0, 0.0]), jnp.asarray(0.0)),
                                 length=3)
        return t

    def exact(ge):
        g, e = ge
        t1 = jnp.sqrt(2 * 1.0 / g)
        return t1 + 2 * e * t1 + 2 * e**2 * t1

    ge = jnp.array([9.81, 0.8])
    for method in (jaxsens.Discrete(), jaxsens.GaussAdjoint()):
        value, grad = jax.jit(jax.value_and_grad(lambda p, m=method: third(p, m)))(ge)
        assert rel_err(value, exact(ge)) < 1e-8
        assert rel_err(grad, jax.grad(exact)(ge)) < 1e-7


def test_vdp_event_gradients_against_finite_differences_under_vmap():
    def vdp(t, y, mu):
        return jnp.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])

    def cross(t, y, args, **kwargs):
        return y[0] + 0.5

    ts = jnp.array([0.0, 4.0])

    def tau(mu, y00, method):
        sol = jaxsens.solve(vdp, jnp.stack([y00, 0.0]), ts, mu, sensitivity=method,
                            event=dfx.Event(cross, root_finder=ROOT), **TOL)
        return sol.event_time

    mus = jnp.array([0.5, 1.5])
    y00 = jnp.array([1.0, 1.3])
    eps = 1e-5
    # Central differences of the primal event time: one jitted, vmapped solve.
    primal = jax.jit(jax.vmap(lambda m, y: tau(m, y, jaxsens.Discrete())))
    shifted = primal(jnp.concatenate([mus + eps, mus - eps, mus]), jnp.tile(y00, 3))
    fd = (shifted[:2] - shifted[2:4]) / (2 * eps)
    assert float(jnp.abs(shifted[4] - shifted[5])) > 1e-3  # different event times
    for method in (jaxsens.GaussAdjoint(), jaxsens.Forward()):
        g = jax.jit(jax.vmap(jax.grad(lambda m, y: tau(m, y, method))))(mus, y00)
        assert rel_err(g, fd) < 1e-6


def test_boolean_condition_stops_at_a_step_end():
    below = lambda t, y, args, **kw: y[0] < 0  # noqa: E731
    sol = jaxsens.solve(ball, jnp.array([2.0, 1.0]), TS, 9.81, event=dfx.Event(below),
                        **TOL)
    exact = closed_form(X)[0]
    assert bool(sol.event_happened)
    assert float(sol.event_time) >= float(exact) - 1e-12
    assert float(sol.event_state[0]) < 0


def test_bad_conditions_are_named():
    y0 = jnp.array([2.0, 1.0])
    with pytest.raises(TypeError, match="as diffrax does"):
        jaxsens.solve(ball, y0, TS, 9.81,
                      event=dfx.Event(lambda y: y[0], root_finder=ROOT))
    with pytest.raises(ValueError, match="one boolean or real"):
        jaxsens.solve(ball, y0, TS, 9.81,
                      event=dfx.Event(lambda t, y, args, **k: y, root_finder=ROOT))
    with pytest.raises(ValueError, match="no `root_finder`"):
        jaxsens.solve(ball, y0, TS, 9.81, event=dfx.Event(ground))
    with pytest.raises(TypeError, match="must be a `diffrax.Event`"):
        jaxsens.solve(ball, y0, TS, 9.81, event=ground)


def test_eager_grad_of_the_impact_time():
    def tau(g):
        return jaxsens.solve(ball, jnp.array([2.0, 0.0]), TS, g, sensitivity=jaxsens.Discrete(),
                             event=dfx.Event(ground, root_finder=ROOT), **TOL).event_time

    g = 9.81
    exact = -((2 * 2.0 / g) ** 0.5) / (2 * g)
    assert rel_err(jax.grad(tau)(g), exact) < 1e-8
