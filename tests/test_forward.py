"""`Forward` with an explicit solver: the sensitivity equations, assembled from
Jacobian rows (n ≤ P) or columns (n > P), one product at a time or vmapped,
against `Discrete` and finite differences; the primal unchanged; the loop
compiled whole on an MLP field."""

import functools

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

import jaxsens
from jaxsens import _xla
from jaxsens._sensitivity import forward

from .helpers import PROBLEMS, central_fd, rel_err


TS = jnp.linspace(0.0, 1.5, 4)


def _field(t, y, theta):
    # Every state decays at one of the P rates (P may be larger or smaller than
    # n), plus a non-linear coupling between neighbours.
    n, num = y.shape[0], theta.shape[0]
    rates = jax.nn.softplus(theta)[jnp.arange(n) % num]
    return -rates * y + 0.3 * jnp.sin(jnp.roll(y, 1)) + 0.1 * theta[0] * t


def _loss(theta, y0, method):
    ys = jaxsens.solve(_field, y0, TS, theta, rtol=1e-10, atol=1e-10,
                       sensitivity=method).ys
    return jnp.sum(jnp.sin(1.0 + ys) * ys)


# (n, P, UNROLL_MAX): which assembly each case exercises. The two cases of each
# assembly share a shape, so they share the `Discrete` references below.
CASES = {
    "rows, one at a time": (2, 5, 16),
    "columns, one at a time": (4, 2, 16),
    "rows, vmapped": (2, 5, 1),
    "columns, vmapped": (4, 2, 1),
}


def _inputs(n, num):
    return jnp.linspace(-0.5, 0.8, num), jnp.linspace(1.0, -0.4, n)


@functools.cache
def _references(n, num):
    """`Discrete`'s gradient w.r.t. (θ, y0), and central finite differences of its
    loss w.r.t. θ, for the inputs of shape (n, num)."""
    theta, y0 = _inputs(n, num)
    both = jax.jit(jax.grad(_loss, argnums=(0, 1)), static_argnums=2)
    fd = central_fd(lambda th: _loss(th, y0, jaxsens.Discrete()), theta, eps=1e-4)
    return both(theta, y0, jaxsens.Discrete()), fd


@pytest.mark.parametrize("case", list(CASES))
def test_assemblies_match_discrete_and_finite_differences(case, monkeypatch):
    n, num, unroll_max = CASES[case]
    monkeypatch.setattr(forward, "UNROLL_MAX", unroll_max)
    theta, y0 = _inputs(n, num)
    ref, fd = _references(n, num)
    # Gradient w.r.t. θ only (P = num inputs) and w.r.t. (θ, y0) (P = num + n),
    # traced afresh under this UNROLL_MAX.
    got = jax.jit(jax.grad(_loss), static_argnums=2)(theta, y0, jaxsens.Forward())
    assert rel_err(got, ref[0]) < 1e-8, (got, ref[0])
    assert rel_err(got, fd) < 1e-6, (got, fd)
    both = jax.jit(jax.grad(_loss, argnums=(0, 1)), static_argnums=2)
    got = both(theta, y0, jaxsens.Forward())
    assert rel_err(got, ref) < 1e-8, (got, ref)


def test_primal_and_steps_are_the_plain_solves():
    # Error control sees y only, so the differentiated solve takes the plain
    # solve's steps and returns its values.
    theta, y0 = jnp.array([0.3, -0.2, 0.5]), jnp.array([1.0, 0.5])

    def ys(theta):
        return jaxsens.solve(_field, y0, TS, theta, rtol=1e-6, atol=1e-6,
                             sensitivity=jaxsens.Forward()).ys

    plain = jax.jit(ys)(theta)
    primal, tangent = jax.jit(lambda th, v: jax.jvp(ys, (th,), (v,)))(
        theta, jnp.array([1.0, 0.0, 0.0]))
    assert rel_err(primal, plain) < 1e-14
    # The tangent is the derivative of the computed solution: the same as
    # differentiating through diffrax's steps (Discrete, forward mode).
    direct = jax.jit(lambda th, v: jax.jvp(lambda th: jaxsens.solve(
        _field, y0, TS, th, rtol=1e-6, atol=1e-6,
        sensitivity=jaxsens.Discrete(forward_mode=True)).ys, (th,), (v,))[1])(
        theta, jnp.array([1.0, 0.0, 0.0]))
    assert rel_err(tangent, direct) < 1e-10, (tangent, direct)


def test_mixed_dtypes():
    # float32 rates, float64 state: S is stepped in float64, the gradient comes
    # back float32 and exact to float32 precision.
    ts = jnp.linspace(0.0, 1.0, 5)
    y0 = jnp.array([1.0, 2.0])

    def loss(k):
        ys = jaxsens.solve(lambda t, y, k: -k * y, y0, ts, k, rtol=1e-10, atol=1e-10,
                           sensitivity=jaxsens.Forward()).ys
        return jnp.sum(ys**2)

    k = jnp.array([0.7, 1.3], jnp.float32)
    got = jax.jit(jax.grad(loss))(k)
    exact = jax.grad(lambda k: sum(
        jnp.sum((y0 * jnp.exp(-k.astype(jnp.float64) * t)) ** 2) for t in ts))(k)
    assert got.dtype == jnp.float32
    assert rel_err(got, exact) < 1e-6, (got, exact)


def test_loop_compiled_whole_on_an_mlp_field():
    # Regression (the controlled MLP's neural ODE): batched tangents through
    # an MLP are matrix-matrix products, which XLA:CPU hands to a library (YNNPACK
    # fusions) and which keep the whole solve loop op by op. The one-at-a-time
    # products are matrix-vector only, and the loop is compiled whole.
    problem = PROBLEMS["neural_ode"]
    field, y0, args = problem.inputs()
    params, static = eqx.partition(field, eqx.is_inexact_array)

    def loss(params):
        return problem.loss(jaxsens.Forward(), eqx.combine(params, static), y0, args,
                            tol=1e-6)

    text = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
    assert _xla.WHOLE_LOOP_MARKER in text
    assert "ynn_fusion" not in text


def test_many_parameters_few_states():
    # n = 2, P = 242 (an MLP 2→10→10→2 with a time input): the regime the
    # sensitivity equations were built for, against Discrete.
    mlp = eqx.nn.MLP(3, 2, 10, 2, activation=jnp.tanh, key=jr.PRNGKey(3))
    mlp = jax.tree_util.tree_map(
        lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, mlp)
    field = lambda t, y, m: m(jnp.concatenate([y, t[None]]))  # noqa: E731

    def loss(m, method):
        ys = jaxsens.solve(field, jnp.array([0.4, -0.2]), TS, m, rtol=1e-10,
                           atol=1e-10, sensitivity=method).ys
        return jnp.sum(ys**2)

    grad = eqx.filter_jit(eqx.filter_grad(loss))
    got, ref = grad(mlp, jaxsens.Forward()), grad(mlp, jaxsens.Discrete())
    assert rel_err(eqx.filter(got, eqx.is_inexact_array),
                   eqx.filter(ref, eqx.is_inexact_array)) < 1e-8


def test_step_budget_constant_steps_and_t0():
    theta, y0 = jnp.array([0.3, -0.2, 0.5]), jnp.array([1.0, 0.5])
    grad = eqx.filter_jit(jax.grad(lambda th, kw: _loss_kw(th, y0, jaxsens.Forward(), kw)))
    ref = eqx.filter_jit(jax.grad(lambda th, kw: _loss_kw(th, y0, jaxsens.Discrete(), kw)))
    # An exhausted step budget raises under differentiation too.
    with pytest.raises(eqx.EquinoxRuntimeError, match="used all of `max_steps`"):
        grad(theta, _Kw(max_steps=2))
    # Constant steps (no error estimate, `dt0`) and t0 before the first save time.
    for kw in (_Kw(solver=diffrax.Euler(), dt0=0.01), _Kw(t0=-0.5)):
        got, want = grad(theta, kw), ref(theta, kw)
        assert rel_err(got, want) < 1e-8, (kw, got, want)


class _Kw(eqx.Module):
    """Keyword arguments for `solve` (static under `eqx.filter_jit`)."""

    solver: diffrax.AbstractSolver | None = None
    dt0: float | None = None
    t0: float | None = None
    max_steps: int = 4096


def _loss_kw(theta, y0, method, kw):
    ys = jaxsens.solve(_field, y0, TS, theta, rtol=1e-10, atol=1e-10, t0=kw.t0,
                       solver=kw.solver, dt0=kw.dt0, max_steps=kw.max_steps,
                       sensitivity=method).ys
    return jnp.sum(jnp.sin(1.0 + ys) * ys)
