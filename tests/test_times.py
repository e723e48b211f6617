"""Gradients with respect to the save times `ts` and the start time `t0`, for every
method, against float64 central finite differences.

`t̄_k = f(t_k, y_k)ᵀ ȳ_k` and `t̄0 = −λ(t0)ᵀ f(t0, y0)`; a sign or factor error in
either is far outside the tolerances used here.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsens

from .helpers import rel_err


TOL = 1e-11
Y0 = jnp.array([1.0, -0.5])
K = jnp.array([0.7, 1.3])


def forced(t, y, k):
    return -k * y + 0.5 * jnp.cos(2.0 * t)


def loss_of(method, field, args, t0_given=True):
    def loss(ts, t0):
        sol = jaxsens.solve(field, Y0, ts, args, t0=t0 if t0_given else None,
                            sensitivity=method, rtol=TOL, atol=TOL, max_steps=16**4)
        return jnp.sum(jnp.sin(1.0 + sol.ys) * sol.ys)

    return loss


def central_fd(loss, ts, t0, eps=1e-5):
    f = jax.jit(loss)
    ts = np.asarray(ts, np.float64)
    g_ts = np.zeros_like(ts)
    for i in range(ts.size):
        e = np.zeros_like(ts)
        e[i] = eps
        g_ts[i] = (float(f(ts + e, t0)) - float(f(ts - e, t0))) / (2 * eps)
    if t0 is None:
        return jnp.asarray(g_ts), None
    g_t0 = (float(f(ts, t0 + eps)) - float(f(ts, t0 - eps))) / (2 * eps)
    return jnp.asarray(g_ts), g_t0


NONLINEAR = {
    "Discrete": jaxsens.Discrete(),
    "Discrete(forward_mode=True)": jaxsens.Discrete(forward_mode=True),
    "Forward": jaxsens.Forward(),
    "BacksolveAdjoint": jaxsens.BacksolveAdjoint(),
    "InterpolatingAdjoint": jaxsens.InterpolatingAdjoint(),
    "InterpolatingAdjoint(checkpoints=2)": jaxsens.InterpolatingAdjoint(checkpoints=2),
    "QuadratureAdjoint": jaxsens.QuadratureAdjoint(),
    "GaussAdjoint": jaxsens.GaussAdjoint(),
    "Auto": jaxsens.Auto(),
}
# t0 before the first save time, non-uniform save times.
TS = jnp.array([0.0, 0.4, 1.0, 1.7])
T0 = -0.3


@pytest.fixture(scope="module")
def reference():
    return central_fd(loss_of(jaxsens.Discrete(), forced, K), TS, T0)


@pytest.mark.parametrize("name", list(NONLINEAR))
def test_ts_and_t0_gradients(name, reference):
    g_ts, g_t0 = jax.jit(jax.grad(loss_of(NONLINEAR[name], forced, K), argnums=(0, 1)))(
        TS, T0)
    assert rel_err(g_ts, reference[0]) < 1e-6
    assert float(g_t0) == pytest.approx(reference[1], rel=1e-6)


TS1, T01 = jnp.array([0.8]), 0.1


@pytest.fixture(scope="module")
def single_reference():
    """Finite differences for one save time after `t0`, and the `Discrete` gradient
    w.r.t. `ts` with `t0` left out."""
    fd = central_fd(loss_of(jaxsens.Discrete(), forced, K), TS1, T01)
    default = loss_of(jaxsens.Discrete(), forced, K, t0_given=False)
    return fd, jax.jit(jax.grad(lambda ts: default(ts, None)))(TS)


@pytest.mark.parametrize("name", ["Forward", "InterpolatingAdjoint", "GaussAdjoint"])
def test_single_save_time_and_default_t0(name, single_reference):
    # len(ts) == 1 with t0 < ts[0]; and t0 left out (t0 = ts[0] follows ts).
    (ref_ts, ref_t0), ref = single_reference
    loss = loss_of(NONLINEAR[name], forced, K)
    g_ts, g_t0 = jax.jit(jax.grad(loss, argnums=(0, 1)))(TS1, T01)
    assert rel_err(g_ts, ref_ts) < 1e-6
    assert float(g_t0) == pytest.approx(ref_t0, rel=1e-6)
    default = loss_of(NONLINEAR[name], forced, K, t0_given=False)
    g = jax.jit(jax.grad(lambda ts: default(ts, None)))(TS)
    assert rel_err(g, ref) < 1e-6


@pytest.mark.parametrize("name", ["Forward", "QuadratureAdjoint"])
def test_time_gradients_under_vmap(name, reference):
    loss = loss_of(NONLINEAR[name], forced, K)
    shifts = jnp.array([0.0, 0.2])
    grad = jax.grad(loss, argnums=(0, 1))
    g_ts, g_t0 = jax.jit(jax.vmap(grad, in_axes=(0, None)))(
        TS[None] + shifts[:, None] * jnp.array([0, 1, 1, 1.0]), T0)
    assert rel_err(g_ts[0], reference[0]) < 1e-6
    assert float(g_t0[0]) == pytest.approx(reference[1], rel=1e-6)
    one = jax.jit(grad)(TS + 0.2 * jnp.array([0, 1, 1, 1.0]), T0)
    assert rel_err(g_ts[1], one[0]) < 1e-6


# --- linear systems: uniform and non-uniform grids, with and without forcing ---

A = jnp.array([[-1.0, 0.5], [0.2, -0.7]])
LINEAR = jaxsens.LinearField(lambda a: a, forcing=jnp.array([0.3, -0.1]))
LINEAR_METHODS = {
    "LinearExpm": jaxsens.LinearExpm(),
    "KrylovExpm": jaxsens.KrylovExpm(),
    "Auto": jaxsens.Auto(),
}
GRIDS = {
    "uniform, t0 = ts[0] (default)": (jnp.linspace(0.5, 1.5, 5), None),
    "uniform, t0 < ts[0]": (jnp.linspace(0.5, 1.5, 5), 0.0),
    "non-uniform": (jnp.array([0.5, 0.6, 1.0, 2.0]), 0.2),
}


@functools.cache
def linear_reference(grid):
    ts, t0 = GRIDS[grid]
    return central_fd(loss_of(jaxsens.LinearExpm(), LINEAR, A, t0 is not None), ts, t0)


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("name", list(LINEAR_METHODS))
def test_linear_ts_and_t0_gradients(name, grid):
    ts, t0 = GRIDS[grid]
    given = t0 is not None
    loss = loss_of(LINEAR_METHODS[name], LINEAR, A, given)
    ref_ts, ref_t0 = linear_reference(grid)
    if not given:
        g_ts = jax.jit(jax.grad(lambda ts: loss(ts, None)))(ts)
        assert rel_err(g_ts, ref_ts) < 1e-7
        return
    g_ts, g_t0 = jax.jit(jax.grad(loss, argnums=(0, 1)))(ts, t0)
    assert rel_err(g_ts, ref_ts) < 1e-7
    assert float(g_t0) == pytest.approx(ref_t0, rel=1e-7)


def test_linear_expm_matches_the_closed_form_time_derivative():
    # Without forcing: ∂y_k/∂t_k = A y_k, so d/dts of Σ y_k is 1ᵀ A y_k.
    field = jaxsens.LinearField(A)
    ts = jnp.linspace(0.0, 1.0, 5)
    ys = jaxsens.solve(field, Y0, ts, sensitivity=jaxsens.LinearExpm()).ys
    g = jax.grad(lambda ts: jnp.sum(jaxsens.solve(
        field, Y0, ts, t0=0.0, sensitivity=jaxsens.LinearExpm()).ys))(ts)
    assert rel_err(g, jnp.sum(ys @ A.T, axis=1)) < 1e-12
