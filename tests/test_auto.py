"""`Auto` counts what a trace can differentiate: a constant `y0` does not count, and
with a few parameters `Forward` (by Jacobian columns) is picked whatever the
state size."""

import functools

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import jaxsens

from .helpers import central_fd, rel_err


N, P = 32, 4
ZONE = jnp.asarray(np.arange(N) * P // N)
TS = jnp.linspace(0.0, 1.0, 4)
Y0 = jnp.linspace(0.5, 1.0, N)
THETA = jnp.array([0.2, 0.3, 0.35, 0.4])


def zone_field(t, y, theta):
    # A state of N, a reaction coefficient per zone: P parameters.
    coupling = 0.5 * (jnp.roll(y, 1) - jnp.roll(y, -1))
    return -0.5 * y + coupling + theta[ZONE] * jnp.tanh(y)


def _loss_and_pick(sensitivity):
    picked = []

    def loss(theta, y0=Y0):
        sol = jaxsens.solve(zone_field, y0, TS, theta, sensitivity=sensitivity)
        picked.append(sol.sensitivity)
        return jnp.sum(sol.ys**2)

    return loss, picked


@functools.cache
def discrete_grad():
    """The `Discrete` gradient w.r.t. θ at `THETA`: the reference."""
    discrete, _ = _loss_and_pick(jaxsens.Discrete())
    return jax.jit(jax.grad(discrete))(THETA)


def test_outside_a_trace_everything_counts():
    decision = jaxsens.Auto().decide(zone_field, Y0, TS, THETA)
    assert decision.method == jaxsens.Discrete()
    assert decision.facts["y0_counted"] and decision.facts["p"] == P
    assert f"n + p = {N + P} > forward_threshold" in decision.rule
    # The hint says what to do when y0 is not differentiated.
    assert any("Auto(y0_differentiated=False)" in r for r in decision.reasons)
    assert any("Counted outside any trace" in r for r in decision.reasons)

    told = jaxsens.Auto(y0_differentiated=False).decide(zone_field, Y0, TS, THETA)
    assert told.method == jaxsens.Forward() and not told.facts["y0_counted"]
    assert "p = 4 ≤ forward_columns_max = 4" in told.rule
    assert f"{P} Jacobian column(s) per stage" in told.reasons[0]
    assert told.estimates["Discrete"] > 1.0  # Forward estimated cheaper


def test_constant_y0_inside_grad_picks_forward_by_columns():
    loss, picked = _loss_and_pick(jaxsens.Auto())
    grad = jax.jit(jax.grad(loss))(THETA)
    assert picked[-1] == jaxsens.Forward()

    assert rel_err(grad, discrete_grad()) < 1e-8
    fd = central_fd(lambda th: loss(th), THETA)
    assert rel_err(grad, fd) < 1e-6


def test_traced_y0_counts():
    loss, picked = _loss_and_pick(jaxsens.Auto())
    # Differentiated w.r.t. y0 too: y0's n entries count (the choice is made while
    # tracing, so tracing is all these checks need).
    jax.eval_shape(jax.grad(loss, argnums=(0, 1)), THETA, Y0)
    assert picked[-1] == jaxsens.Discrete()
    # Only θ differentiated, but y0 is an argument of `jit`, hence traced: Auto
    # cannot tell, and counts it ...
    jax.eval_shape(jax.jit(jax.grad(loss)), THETA, Y0)
    assert picked[-1] == jaxsens.Discrete()
    # ... unless told.
    told, picked_told = _loss_and_pick(jaxsens.Auto(y0_differentiated=False))
    g = jax.jit(jax.grad(told))(THETA, Y0)
    assert picked_told[-1] == jaxsens.Forward()
    assert rel_err(g, discrete_grad()) < 1e-8


def test_closed_over_traced_arrays_count():
    # A plain function closing over a traced weight vector: its N entries are
    # parameters, although neither `args` nor a Module shows them.
    facts = {}

    def loss(w):
        def field(t, y, scale):
            return -0.5 * y + w * jnp.tanh(y) * scale

        facts.update(jaxsens.Auto().decide(field, Y0, TS, 1.0).facts)
        sol = jaxsens.solve(field, Y0, TS, 1.0)
        facts["method"] = sol.sensitivity
        return jnp.sum(sol.ys**2)

    jax.grad(loss)(jnp.full(N, 0.1))
    # `w` (traced) counts; `scale` (a Python float, constant) and y0 do not.
    assert facts["p"] == N and not facts["y0_counted"]
    assert facts["method"] == jaxsens.Discrete()


def test_only_y0_traced_and_implicit_counts():
    field = eqx.nn.MLP(2, 2, 16, 2, key=jax.random.PRNGKey(0))
    y0s = jnp.array([[1.0, 0.5], [0.5, 1.0]])
    ts = jnp.linspace(0.0, 1.0, 3)
    facts = {}

    def solve(y0, sensitivity=None):
        sensitivity = jaxsens.Auto() if sensitivity is None else sensitivity
        facts.update(jaxsens.Auto().decide(lambda t, y, m: m(y), y0, ts, field).facts)
        return jaxsens.solve(lambda t, y, m: m(y), y0, ts, field,
                             sensitivity=sensitivity).ys

    # vmap over y0 with the MLP's 354 weights constant: only y0 can vary.
    ys = jax.vmap(solve)(y0s)
    assert facts["p"] == 0 and facts["y0_counted"]
    assert rel_err(ys, jax.vmap(lambda y: solve(y, jaxsens.Discrete()))(y0s)) < 1e-12

    # Implicit solver, a constant y0 of 100 states, 3 traced rates: 3 tangents.
    def decide(k):
        d = jaxsens.Auto().decide(lambda t, y, k: -k[0] * y + k[1] - k[2] * y**2,
                                  jnp.ones(100), ts, k, solver=diffrax.Kvaerno5())
        facts["rule"] = d.rule
        return jnp.sum(k)

    jax.grad(decide)(jnp.array([1.0, 0.1, 0.2]))
    assert facts["rule"].startswith("p = 3 ≤ forward_threshold_implicit = 64")


def test_implicit_many_inputs_picks_gauss_in_float64_discrete_in_float32():
    """Above `forward_threshold_implicit`, an implicit solve is differentiated by
    `GaussAdjoint` in float64 (the crossover's fastest reverse method on the stiff
    grid) and by `Discrete` in float32 (an implicit backward solve cannot meet tight
    tolerances there); the gradient Auto gives is GaussAdjoint's, equal to
    Discrete's."""
    rates = jnp.linspace(1.0, 100.0, 70)  # p = 70 > 64

    def field(t, y, k):
        return -k * y + 0.1 * jnp.roll(y, 1)

    y0, ts = jnp.ones(70), jnp.linspace(0.0, 1.0, 3)
    decide = functools.partial(jaxsens.Auto().decide, solver=diffrax.Kvaerno5())
    d64 = decide(field, y0, ts, rates)
    assert d64.method == jaxsens.GaussAdjoint() and d64.case == "gauss"
    assert "GaussAdjoint" in str(d64)
    d32 = decide(field, y0.astype(jnp.float32), ts, rates.astype(jnp.float32))
    assert d32.method == jaxsens.Discrete() and "float32" in str(d32)

    def grad(method):
        return jax.jit(jax.grad(lambda k: jnp.sum(jaxsens.solve(
            field, y0, ts, k, solver=diffrax.Kvaerno5(), rtol=1e-8, atol=1e-8,
            sensitivity=method).ys ** 2)))(rates)

    auto = grad(jaxsens.Auto())
    assert rel_err(auto, grad(jaxsens.Discrete())) < 1e-5
