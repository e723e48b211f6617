"""`jaxsens.Control`: interpolation, gradients w.r.t. the values, stacking, errors."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jaxsens


TS = jnp.array([0.0, 0.3, 0.7, 1.0, 1.6, 2.0, 2.5])
VALUES = jr.normal(jr.key(0), (7, 2))
QUERY = jnp.concatenate([jnp.linspace(-0.4, 2.9, 97), TS])


@jax.jit
def along(path, q):
    """`path` (a Control or a diffrax interpolation) evaluated at every `q`."""
    return jax.vmap(path.evaluate)(q)


def test_linear_matches_numpy_interp_and_extrapolates_linearly():
    u = jaxsens.Control(TS, VALUES)
    got = along(u, QUERY)
    inside = (QUERY >= TS[0]) & (QUERY <= TS[-1])
    for c in range(2):
        ref = np.interp(QUERY, TS, VALUES[:, c])
        np.testing.assert_allclose(got[inside, c], ref[inside], rtol=1e-13, atol=1e-13)
    # Outside the samples: the end pieces continued.
    slope = (VALUES[-1] - VALUES[-2]) / (TS[-1] - TS[-2])
    np.testing.assert_allclose(u(3.0), VALUES[-1] + 0.5 * slope, rtol=1e-12)
    assert u.evaluate(0.3).shape == (2,)


def test_cubic_matches_diffrax_global_spline_values_and_gradients():
    ref = dfx.CubicInterpolation(TS, dfx.backward_hermite_coefficients(TS, VALUES))
    u = jaxsens.Control(TS, VALUES, method="cubic")
    np.testing.assert_allclose(along(u, QUERY), along(ref, QUERY),
                               rtol=1e-12, atol=1e-12)

    def loss_ours(v):
        return jnp.sum(jnp.sin(along(jaxsens.Control(TS, v, "cubic"), QUERY)))

    def loss_ref(v):
        spline = dfx.CubicInterpolation(TS, dfx.backward_hermite_coefficients(TS, v))
        return jnp.sum(jnp.sin(along(spline, QUERY)))

    np.testing.assert_allclose(jax.jit(jax.grad(loss_ours))(VALUES),
                               jax.jit(jax.grad(loss_ref))(VALUES),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n", [2, 3])
def test_cubic_with_few_samples(n):
    ts, vs = TS[:n], VALUES[:n, 0]
    ref = dfx.CubicInterpolation(ts, dfx.backward_hermite_coefficients(ts, vs))
    u = jaxsens.Control(ts, vs, method="cubic")
    q = jnp.linspace(0.0, float(ts[-1]), 11)
    np.testing.assert_allclose(along(u, q), along(ref, q), rtol=1e-12)


@pytest.mark.parametrize("method", ["linear", "cubic"])
def test_gradient_wrt_values_matches_finite_differences(method):
    def loss(v):
        u = jaxsens.Control(TS, v, method)
        return jnp.sum(along(u, QUERY) ** 3)

    loss = jax.jit(loss)
    grad = jax.jit(jax.grad(loss))(VALUES)
    direction = jr.normal(jr.key(3), VALUES.shape)
    eps = 1e-6
    fd = (loss(VALUES + eps * direction) - loss(VALUES - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(jnp.vdot(grad, direction), fd, rtol=1e-7)


def test_stack_and_vmap_equal_members():
    vals = jr.normal(jr.key(1), (4, 7))
    members = [jaxsens.Control(TS, v, "cubic") for v in vals]
    stacked = jaxsens.Control.stack(members)
    assert stacked.values.shape == (4, 7) and stacked.ts.shape == (4, 7)
    built = jax.vmap(lambda v: jaxsens.Control(TS, v, "cubic"))(vals)
    assert jax.tree_util.tree_structure(built) == jax.tree_util.tree_structure(stacked)
    batched = jax.jit(jax.vmap(along, in_axes=(0, None)))
    want = jnp.stack([along(c, QUERY) for c in members])
    np.testing.assert_allclose(batched(stacked, QUERY), want, rtol=1e-14)
    np.testing.assert_allclose(batched(built, QUERY), want, rtol=1e-14)


def test_control_is_a_trainable_pytree():
    u = jaxsens.Control(TS, VALUES[:, 0])
    grads = eqx.filter_grad(lambda c: c(0.5) * 2.0)(u)
    # u(0.5) = 0.5 v[1] + 0.5 v[2] (halfway between 0.3 and 0.7).
    np.testing.assert_allclose(grads.values, jnp.zeros(7).at[1].set(1.0).at[2].set(1.0),
                               atol=1e-14)
    assert jnp.issubdtype(jaxsens.Control(jnp.arange(3), jnp.arange(3)).values.dtype,
                          jnp.floating)


def test_errors():
    with pytest.raises(ValueError, match="must be 'linear' or 'cubic'"):
        jaxsens.Control(TS, VALUES, method="spline")
    with pytest.raises(ValueError, match="at least 2 sample"):
        jaxsens.Control(TS[:1], VALUES[:1])
    with pytest.raises(ValueError, match="at least 2 sample"):
        jaxsens.Control(jnp.stack([TS, TS]), VALUES)
    with pytest.raises(ValueError, match="one row per sample time"):
        jaxsens.Control(TS, VALUES[:5])
    with pytest.raises(eqx.EquinoxRuntimeError, match="strictly increasing"):
        jaxsens.Control(TS[::-1], VALUES)
    with pytest.raises(eqx.EquinoxRuntimeError, match="NaN or inf"):
        jaxsens.Control(TS, VALUES.at[2, 1].set(jnp.nan))
    with pytest.raises(ValueError, match="at least one"):
        jaxsens.Control.stack([])
    with pytest.raises(TypeError, match="takes `Control`s"):
        jaxsens.Control.stack([jaxsens.Control(TS, VALUES), VALUES])
    with pytest.raises(ValueError, match="same `method`"):
        jaxsens.Control.stack([jaxsens.Control(TS, VALUES),
                               jaxsens.Control(TS, VALUES, "cubic")])
