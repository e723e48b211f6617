"""Gradients against exact ones: a stiff linear system solved implicitly against
its matrix exponential, a first save time after `t0` and float32 parameters of a
float64 state against closed forms; and the flat backward state."""

import functools

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import jaxsens

from .helpers import METHODS, PROBLEMS, rel_err, trainable


# --- stiff linear system, implicit solver, against the exact (expm) gradient --------
# Regression: the rates mix the state within ~0.01 time units, so after each save
# time λ relaxes at once and the backward controller (which sees λ, not y) took
# steps spanning y's fast transient: gradients 3–90 % wrong until the backward
# loop learnt to stop at every forward step (`_common.forward_stops`).

STIFF_N, STIFF_TS = 5, jnp.linspace(0.0, 4.0, 12)


def _stiff_rates():
    return 100 * jax.random.uniform(jax.random.PRNGKey(0), (STIFF_N, STIFF_N))


def _stiff_matrix(P):
    return P - jnp.diag(jnp.sum(P, axis=1))


def _stiff_loss(P, y0, method):
    if method is None:
        ys = jaxsens.solve(jaxsens.LinearField(_stiff_matrix), y0, STIFF_TS, P,
                           sensitivity=jaxsens.LinearExpm()).ys
    else:
        ys = jaxsens.solve(lambda t, y, P: _stiff_matrix(P) @ y, y0, STIFF_TS, P,
                           solver=diffrax.Kvaerno5(), rtol=1e-8, atol=1e-8,
                           sensitivity=method).ys
    return jnp.sum(jnp.cos(ys) * ys)


@functools.cache
def _stiff_exact():
    P, y0 = _stiff_rates(), jnp.linspace(0.2, 1.0, STIFF_N)
    return jax.jit(jax.grad(_stiff_loss, (0, 1)), static_argnums=2)(P, y0, None)


@pytest.mark.parametrize(
    "method_name",
    ["InterpolatingAdjoint", "InterpolatingAdjoint(checkpoints=3)",
     "QuadratureAdjoint", "GaussAdjoint"],
)
def test_stiff_linear_kvaerno5_matches_exact(method_name):
    P, y0 = _stiff_rates(), jnp.linspace(0.2, 1.0, STIFF_N)
    exact = _stiff_exact()
    got = eqx.filter_jit(jax.grad(_stiff_loss, (0, 1)))(P, y0, METHODS[method_name])
    for part, g, e in zip(("P", "y0"), got, exact, strict=True):
        assert rel_err(g, e) < 1e-4, (method_name, part, rel_err(g, e))


# Checkpointed, with every interval split (as in `test_gradients.py`).
SPLIT = jaxsens.InterpolatingAdjoint(checkpoints=2, segment_max_steps=4)


@pytest.mark.parametrize("method_name", [*METHODS, "split checkpoints"])
def test_t0_before_first_save_time(method_name):
    # The stretch [t0, ts[0]] has no save time: λ must still be carried across it
    # (checkpointed: (t0, y0) is the first checkpoint). Exact: the closed form.
    problem = PROBLEMS["decay"]
    ts = jnp.linspace(0.5, 2.0, 4)
    method = SPLIT if method_name == "split checkpoints" else METHODS[method_name]

    def loss(inputs, method):
        field, y0, b = inputs
        if method is None:
            ys = jax.vmap(lambda t: problem.closed_form(field.rate, y0, b, t))(ts)
        else:
            ys = jaxsens.solve(field, y0, ts, b, t0=0.0, rtol=1e-10, atol=1e-10,
                               sensitivity=method).ys
        return jnp.sum(jnp.sin(1.0 + ys) * ys)

    exact = eqx.filter_grad(loss)(problem.inputs(), None)
    got = eqx.filter_jit(eqx.filter_grad(loss))(problem.inputs(), method)
    for part, g, e in zip(("field", "y0", "args"), got, exact, strict=True):
        assert rel_err(trainable(g), trainable(e)) < 1e-7, part


def test_flat_backward_state_round_trip():
    # The backward loop steps its state as one flat vector when that is possible.
    from jaxsens._sensitivity._loop import FlatState

    tree = {"a": jnp.arange(6.0).reshape(2, 3), "b": jnp.array(7.0), "c": jnp.ones(4)}
    flat = FlatState(tree)
    vec = flat.ravel(tree)
    assert flat.active and vec.shape == (11,)
    back = flat.unravel(vec)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(tree)
    for k in tree:
        assert back[k].shape == tree[k].shape and bool(jnp.all(back[k] == tree[k]))
    # One vector already: left alone. Mixed dtypes: promoted, and cast back.
    assert not FlatState(jnp.ones(3)).active
    mixed = (jnp.ones(2), jnp.full(2, 0.1, jnp.float32))
    flat = FlatState(mixed)
    assert flat.ravel(mixed).dtype == jnp.float64
    back = flat.unravel(flat.ravel(mixed))
    assert back[1].dtype == jnp.float32 and bool(jnp.all(back[1] == mixed[1]))


@pytest.mark.parametrize("method_name", ["BacksolveAdjoint", "InterpolatingAdjoint",
                                         "GaussAdjoint", "QuadratureAdjoint"])
def test_mixed_dtype_backward_state(method_name):
    # A float32 rate with a float64 state: the backward state (λ, μ) mixes
    # dtypes; it is stepped promoted to float64 and μ cast back to float32.
    ts = jnp.linspace(0.0, 1.0, 5)
    y0 = {"x": jnp.array([1.0, 2.0]), "z": jnp.array(0.5)}

    def loss(k, method):
        field = lambda t, y, k: {"x": -k[0] * y["x"], "z": -k[1] * y["z"]}  # noqa: E731
        ys = jaxsens.solve(field, y0, ts, k, rtol=1e-10, atol=1e-10,
                           sensitivity=method).ys
        return jnp.sum(ys["x"] ** 2) + jnp.sum(jnp.sin(ys["z"]))

    k = jnp.array([0.7, 1.3], jnp.float32)
    got = jax.jit(jax.grad(loss), static_argnums=1)(k, METHODS[method_name])
    assert got.dtype == jnp.float32
    # Exact: y = y0 e^{-k t}.
    exact = jax.grad(lambda k: sum(
        jnp.sum((y0["x"] * jnp.exp(-k[0].astype(jnp.float64) * t)) ** 2)
        + jnp.sin(y0["z"] * jnp.exp(-k[1].astype(jnp.float64) * t)) for t in ts))(k)
    assert rel_err(got, exact) < 1e-6, (got, exact)
