"""Bad input gives an error that names the argument and the fix; never a NaN."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

import jaxsens


def decay(t, y, k):
    return -k * y


RUNTIME_ERRORS = (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError)
Y0 = jnp.array([1.0, 2.0])
TS = jnp.linspace(0.0, 1.0, 4)


def test_non_increasing_ts():
    with pytest.raises(eqx.EquinoxRuntimeError, match="`ts` must be strictly increasing"):
        jaxsens.solve(decay, Y0, jnp.array([0.0, 0.5, 0.5, 1.0]), 1.0)
    # Under a plain `jax.jit` (not `eqx.filter_jit`) JAX re-raises it as its own type.
    with pytest.raises(RUNTIME_ERRORS, match="`ts` must be strictly increasing"):
        jax.jit(lambda ts: jaxsens.solve(decay, Y0, ts, 1.0).ys)(jnp.array([0.0, 1.0, 0.5]))


def test_bad_ts_shape_and_t0():
    with pytest.raises(ValueError, match="`ts` must be a 1-D array"):
        jaxsens.solve(decay, Y0, jnp.zeros((2, 2)), 1.0)
    with pytest.raises(eqx.EquinoxRuntimeError, match="`t0` must be <= `ts\\[0\\]`"):
        jaxsens.solve(decay, Y0, TS, 1.0, t0=0.5)
    with pytest.raises(ValueError, match="`t0` must be a scalar"):
        jaxsens.solve(decay, Y0, TS, 1.0, t0=jnp.zeros(2))


def test_field_output_mismatch():
    with pytest.raises(ValueError, match="shaped like `y0`"):
        jaxsens.solve(lambda t, y, a: jnp.concatenate([y, y]), Y0, TS)
    with pytest.raises(ValueError, match="same PyTree structure as `y0`"):
        jaxsens.solve(lambda t, y, a: (y, y), Y0, TS)
    with pytest.raises(TypeError, match="`field` must be callable"):
        jaxsens.solve(3.0, Y0, TS)
    with pytest.raises(TypeError, match="Calling `field\\(t0, y0, args\\)` failed"):
        jaxsens.solve(lambda t, y, a: y @ jnp.ones((3, 3)), Y0, TS)


def test_non_finite_y0():
    with pytest.raises(eqx.EquinoxRuntimeError, match="`y0` contains NaN or inf"):
        jaxsens.solve(decay, jnp.array([1.0, jnp.nan]), TS, 1.0)
    with pytest.raises(ValueError, match="`y0` has no array leaves"):
        jaxsens.solve(decay, (), TS, 1.0)


def test_forward_step_budget():
    with pytest.raises(eqx.EquinoxRuntimeError, match="used all of `max_steps`"):
        jaxsens.solve(decay, Y0, TS, 1.0, max_steps=2, sensitivity=jaxsens.Discrete())
    sol = jaxsens.solve(decay, Y0, TS, 1.0, max_steps=2, throw=False,
                        sensitivity=jaxsens.Discrete())
    assert sol.result == jaxsens.RESULTS.max_steps_reached


@pytest.mark.parametrize(
    "method",
    [
        jaxsens.InterpolatingAdjoint(max_steps=2),
        jaxsens.GaussAdjoint(max_steps=2),
        # The budget counts over all of its segments, not per segment.
        jaxsens.QuadratureAdjoint(max_steps=6, store_steps=2),
    ],
)
def test_backward_step_budget(method):
    loss = lambda k: jnp.sum(jaxsens.solve(decay, Y0, TS, k, sensitivity=method).ys)  # noqa: E731
    with pytest.raises(eqx.EquinoxRuntimeError, match="backward \\(adjoint\\) solve used all"):
        jax.grad(loss)(1.0)


def test_unknown_sensitivity_and_solver():
    with pytest.raises(TypeError, match="`sensitivity` must be a jaxsens method"):
        jaxsens.solve(decay, Y0, TS, 1.0, sensitivity=dfx.RecursiveCheckpointAdjoint())
    with pytest.raises(TypeError, match="is a class: pass an instance"):
        jaxsens.solve(decay, Y0, TS, 1.0, sensitivity=jaxsens.Forward)
    with pytest.raises(TypeError, match="`solver` must be a diffrax solver"):
        jaxsens.solve(decay, Y0, TS, 1.0, solver="tsit5")
    with pytest.raises(ValueError, match="pass `dt0=`"):
        jaxsens.solve(decay, Y0, TS, 1.0, solver=dfx.Euler())
    with pytest.raises(ValueError, match="`max_steps` must be a positive int"):
        jaxsens.solve(decay, Y0, TS, 1.0, max_steps=0)
    with pytest.raises(ValueError, match="`rtol` must be positive"):
        jaxsens.solve(decay, Y0, TS, 1.0, rtol=-1.0)


def test_bad_method_settings():
    with pytest.raises(ValueError, match="checkpoints"):
        jaxsens.InterpolatingAdjoint(checkpoints=0)
    with pytest.raises(ValueError, match="checkpoints"):
        jaxsens.Discrete(checkpoints=-1)
    with pytest.raises(ValueError, match="does not take `checkpoints`"):
        jaxsens.Discrete(checkpoints=4, forward_mode=True)
    with pytest.raises(ValueError, match="`nodes` must be a positive int"):
        jaxsens.GaussAdjoint(nodes=0)
    with pytest.raises(ValueError, match="`chunk` must be a positive int"):
        jaxsens.QuadratureAdjoint(chunk=0)


def test_constant_step_solver_with_dt0_works_for_adjoints():
    loss = lambda k: jnp.sum(jaxsens.solve(  # noqa: E731
        decay, Y0, TS, k, solver=dfx.Heun(), dt0=0.01,
        sensitivity=jaxsens.InterpolatingAdjoint()).ys)
    ref = lambda k: jnp.sum(jaxsens.solve(  # noqa: E731
        decay, Y0, TS, k, solver=dfx.Heun(), dt0=0.01,
        sensitivity=jaxsens.Discrete()).ys)
    # Continuous and discrete adjoints of a 2nd-order method differ by O(dt^2).
    assert float(jax.grad(loss)(1.0)) == pytest.approx(float(jax.grad(ref)(1.0)), rel=1e-3)


@pytest.fixture(scope="module")
def seed000():
    """Seed 000's dissipative linear system: y' = (P − diag(rowsum P)) y, n = 100."""
    key_p, key_d = jr.split(jr.PRNGKey(0))
    p = jr.uniform(key_p, (100, 100), dtype=jnp.float64)
    data = jr.uniform(key_d, (100, 4), dtype=jnp.float64)
    ts = jnp.array([1.0, 2.0, 3.0, 4.0])

    def loss(p, method):
        a = p - jnp.diag(jnp.sum(p, axis=1))
        ys = jaxsens.solve(lambda t, y, a: a @ y, data[:, 0], ts, a, sensitivity=method).ys
        return jnp.sum((ys - data.T) ** 2)

    return p, loss


def test_backsolve_refuses_seed000_instead_of_a_wrong_gradient(seed000):
    p, loss = seed000
    with pytest.raises(RUNTIME_ERRORS, match="Use `jaxsens.InterpolatingAdjoint"):
        jax.jit(jax.grad(lambda p: loss(p, jaxsens.BacksolveAdjoint()))).__call__(p)
    # throw=False hands back the failure code instead (and its gradient is not used).
    good = jax.jit(jax.grad(lambda p: loss(p, jaxsens.InterpolatingAdjoint())))(p)
    ref = jax.jit(jax.grad(lambda p: loss(p, jaxsens.Discrete())))(p)
    assert jnp.all(jnp.isfinite(good))
    assert float(jnp.linalg.norm(good - ref) / jnp.linalg.norm(ref)) < 0.5


def test_checkpoint_splitting_runs_out_of_depth():
    # A tiny first step (dt0) makes every re-solve take several steps, however
    # short its interval: the split depth (sized from max_steps) runs out.
    method = jaxsens.InterpolatingAdjoint(checkpoints=2, segment_max_steps=1)
    loss = lambda k: jnp.sum(jaxsens.solve(  # noqa: E731
        decay, Y0, TS, k, dt0=1e-9, max_steps=64, sensitivity=method).ys)
    with pytest.raises(eqx.EquinoxRuntimeError, match="segment_max_steps"):
        jax.grad(loss)(1.0)
