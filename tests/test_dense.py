"""`solve(..., dense=True)` (`sol.evaluate(t)`), `stepsize_controller=` and
`progress_meter=`, on exponential decay `y' = -k y` (closed form `y0 e^{-k t}`)."""

import diffrax as dfx
import jax
import jax.numpy as jnp
import pytest

import jaxsens


Y0 = jnp.array([1.0, 2.0])
TS = jnp.array([0.0, 0.5, 1.0])
K = 0.7
TOL = 1e-10


def decay(t, y, k):
    return -k * y


def _rel(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def _dense(k, sensitivity=jaxsens.Discrete(), **kwargs):
    return jaxsens.solve(decay, Y0, TS, k, rtol=TOL, atol=TOL, dense=True,
                         sensitivity=sensitivity, **kwargs)


@pytest.fixture(scope="module")
def evaluate():
    """`(k, t) -> (y(t), d Σy(0.37)/dk)` from the dense output, vmapped over four
    times `t`: one compiled function."""

    def run(k, t):
        values = jax.vmap(lambda t: _dense(k).evaluate(t))(t)
        grad = jax.grad(lambda k: jnp.sum(_dense(k).evaluate(0.37)))(k)
        return values, grad

    return jax.jit(run)


def test_evaluate_between_save_times(evaluate):
    t = jnp.array([0.13, 0.37, 0.81, 1.0])
    exact = Y0 * jnp.exp(-K * t)[:, None]
    assert _rel(evaluate(K, t)[0], exact) <= 1e-6


def test_evaluate_gradient(evaluate):
    grad = evaluate(K, jnp.array([0.13, 0.37, 0.81, 1.0]))[1]
    exact = -0.37 * jnp.sum(Y0) * jnp.exp(-K * 0.37)
    assert abs(float(grad - exact)) / abs(float(exact)) <= 1e-6


def test_auto_picks_discrete_with_running_cost():
    def run():
        sol = jaxsens.solve(decay, Y0, TS, K, dense=True,
                            running_cost=lambda t, y, k: y[0])
        return sol, sol.evaluate(0.37)

    sol, y = jax.eval_shape(run)
    assert sol.sensitivity == jaxsens.Discrete()
    assert y.shape == Y0.shape


def test_dense_errors():
    with pytest.raises(ValueError, match="only `Discrete\\(\\)` differentiates"):
        _dense(K, sensitivity=jaxsens.GaussAdjoint())
    with pytest.raises(ValueError, match="only `Discrete\\(\\)` differentiates"):
        _dense(K, sensitivity=jaxsens.Forward())
    with pytest.raises(TypeError, match="`dense` must be True or False"):
        jaxsens.solve(decay, Y0, TS, K, dense="yes")
    event = dfx.Event(lambda t, y, args, **kw: y[0] < 0.5)
    with pytest.raises(ValueError, match="`dense=True` with `event=`"):
        jaxsens.solve(decay, Y0, TS, K, dense=True, event=event)
    with pytest.raises(ValueError, match="needs the dense output"):
        jax.eval_shape(lambda: jaxsens.solve(decay, Y0, TS, K).evaluate(0.3))


def test_evaluate_errors(evaluate):
    with pytest.raises(ValueError, match="takes one scalar time"):
        jax.eval_shape(lambda: _dense(K).evaluate(jnp.array([0.1, 0.2])))
    with pytest.raises(Exception, match="must lie in the solved span"):
        jax.block_until_ready(evaluate(K, jnp.array([0.1, 0.2, 0.3, 1.5])))
