"""jit, vmap, vmap-of-grad, value_and_grad, closures over traced arrays, and
forward-mode AD (jvp, jacfwd, hessian; Hessian-vector products for adjoints)."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import jaxsens

from .helpers import METHODS, PROBLEMS, central_fd, rel_err, sum_squares, trainable


LV = PROBLEMS["lotka_volterra"]
TOL = 1e-9


def lv_loss(method, alpha_beta, y0, args):
    field = LV.field.__class__(alpha_beta)
    return LV.loss(method, field, y0, args, tol=TOL)


@functools.cache
def value_and_grads(method_name):
    """The jitted value and gradient w.r.t. (rates, y0, args) of the Lotka–Volterra
    loss by one method: compiled once, called by every test that needs it."""
    loss = functools.partial(lv_loss, METHODS[method_name])
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def discrete_grad(p):
    """The `Discrete` gradient of the Lotka–Volterra loss w.r.t. its rates `p`."""
    return value_and_grads("Discrete")(p, LV.y0, LV.args)[1][0]


@pytest.mark.parametrize("method_name", list(METHODS))
def test_vmap_of_grad_equals_loop_of_grads(method_name):
    method = METHODS[method_name]
    grad = jax.grad(lambda p, y0, a: lv_loss(method, p, y0, a), argnums=(0, 1, 2))
    y0s = jnp.stack([LV.y0, LV.y0 * 1.3])
    args = jnp.stack([LV.args, LV.args * 0.9])
    p = LV.field.alpha_beta
    batched = jax.jit(jax.vmap(grad, in_axes=(None, 0, 0)))(p, y0s, args)
    # Under vmap an FSAL solver re-evaluates its first stage for every member when
    # any member has just crossed a save time (diffrax batches that decision), so
    # adaptive step sequences of the continuous adjoints can differ at rounding
    # level and results at the solver's tolerance level (measured: 4e-8 at 1e-9).
    tol = 1e-10 if method_name in ("Discrete", "Forward") else 1e-6
    for i in range(2):
        _, one = value_and_grads(method_name)(p, y0s[i], args[i])
        for b, o in zip(batched, one, strict=True):
            assert rel_err(b[i], o) < tol


@pytest.mark.parametrize("method_name", ["Forward", "InterpolatingAdjoint", "Discrete"])
def test_jit_equals_eager(method_name):
    loss = functools.partial(lv_loss, METHODS[method_name])
    inputs = (LV.field.alpha_beta, LV.y0, LV.args)
    value, grads = value_and_grads(method_name)(*inputs)
    eager_value, eager_grads = jax.value_and_grad(loss, argnums=(0, 1, 2))(*inputs)
    assert float(value) == pytest.approx(float(eager_value), rel=1e-12)
    assert rel_err(grads, eager_grads) < 1e-12


def test_value_and_grad_and_vmap_of_solve():
    method = jaxsens.InterpolatingAdjoint()
    p = LV.field.alpha_beta
    value, grads = value_and_grads("InterpolatingAdjoint")(p, LV.y0, LV.args)
    discrete_value, discrete_grads = value_and_grads("Discrete")(p, LV.y0, LV.args)
    assert float(value) == pytest.approx(float(discrete_value), rel=1e-8)
    assert rel_err(grads, discrete_grads) < 1e-6
    # vmap of the solve itself, over args.
    args = jnp.stack([LV.args, LV.args * 0.9, LV.args * 1.1])
    ys_of = jax.jit(lambda a: jaxsens.solve(LV.field, LV.y0, LV.ts, a, sensitivity=method).ys)
    ys = jax.jit(jax.vmap(ys_of))(args)
    assert ys.shape == (3, LV.ts.shape[0], 2)
    assert rel_err(ys[1], ys_of(args[1])) < 1e-12


@pytest.mark.parametrize("method_name", ["Forward", "GaussAdjoint", "BacksolveAdjoint"])
def test_gradient_reaches_arrays_closed_over_by_a_plain_function(method_name):
    # Users write closures over traced arrays inside grad; the gradient must reach them.
    method = METHODS[method_name]
    ts = jnp.linspace(0.0, 1.0, 4)

    def loss(k):
        field = lambda t, y, args: -k * y  # noqa: E731 - a closure, on purpose
        ys = jaxsens.solve(field, jnp.array([1.0, 2.0]), ts, sensitivity=method,
                           rtol=1e-10, atol=1e-10).ys
        return jnp.sum(ys)

    k = jnp.array([0.5, 1.5])
    exact = jax.grad(lambda k: jnp.sum(jnp.array([1.0, 2.0]) * jnp.exp(-k * ts[:, None])))(k)
    assert rel_err(jax.jit(jax.grad(loss))(k), exact) < 1e-7


def test_solution_fields_and_auto_choice():
    sol = jaxsens.solve(LV.field, LV.y0, LV.ts, LV.args)
    assert isinstance(sol.sensitivity, jaxsens.Forward)  # n + p = 6 ≤ 8
    assert sol.ys.shape == (LV.ts.shape[0], 2)
    assert int(sol.stats["num_accepted_steps"]) > 0
    assert sol.result == jaxsens.RESULTS.successful
    big = eqx.nn.MLP(2, 2, 16, 2, key=jax.random.PRNGKey(0))
    sol = jaxsens.solve(lambda t, y, m: m(y), LV.y0, LV.ts, big)
    assert isinstance(sol.sensitivity, jaxsens.Discrete)  # n + p = 356 > 32
    decision = jaxsens.Auto().decide(lambda t, y, m: m(y), LV.y0, LV.ts, big)
    assert decision.facts["n"] == 2 and decision.facts["p"] == 354
    assert "356 > forward_threshold" in decision.rule and "Discrete()" in str(decision)
    assert decision.estimates["Discrete"] == 1.0 and decision.estimates["Forward"] > 1
    tree = PROBLEMS["pytree_state"]
    sol = jaxsens.solve(tree.field, tree.y0, tree.ts, tree.args)
    assert set(sol.ys) == {"x", "v"} and sol.ys["x"].shape == (tree.ts.shape[0], 2)


# --- forward mode ------------------------------------------------------------------

FORWARD_CAPABLE = {
    "Forward": jaxsens.Forward(),
    "Discrete(forward_mode=True)": jaxsens.Discrete(forward_mode=True),
}


@pytest.fixture(scope="module")
def fd_hessian():
    p = LV.field.alpha_beta
    eps = 1e-5
    grad = discrete_grad
    cols = [(grad(p.at[i].add(eps)) - grad(p.at[i].add(-eps))) / (2 * eps) for i in range(2)]
    return jnp.stack(cols, axis=1)


@pytest.mark.parametrize("method_name", list(FORWARD_CAPABLE))
def test_jvp_jacfwd_hessian(method_name, fd_hessian):
    method = FORWARD_CAPABLE[method_name]
    p = LV.field.alpha_beta
    loss = lambda p: lv_loss(method, p, LV.y0, LV.args)  # noqa: E731
    ref_grad = discrete_grad(p)
    v = jnp.array([0.3, -0.7])
    _, tangent = jax.jit(lambda p, v: jax.jvp(loss, (p,), (v,)))(p, v)
    assert float(tangent) == pytest.approx(float(ref_grad @ v), rel=1e-7)

    def ys_twice(p):  # the Jacobian of ys, and ys itself as the auxiliary output
        ys = jaxsens.solve(LV.field.__class__(p), LV.y0, LV.ts, LV.args,
                           sensitivity=method, rtol=TOL, atol=TOL).ys
        return ys, ys

    jac, ys = jax.jit(jax.jacfwd(ys_twice, has_aux=True))(p)
    assert jac.shape == (LV.ts.shape[0], 2, 2)
    cotangent = jax.grad(sum_squares)(ys)
    assert rel_err(jnp.einsum("tij,ti->j", jac, cotangent), ref_grad) < 1e-6
    hess = jax.jit(jax.hessian(loss))(p)
    assert rel_err(hess, fd_hessian) < 1e-5
    assert rel_err(hess, hess.T) < 1e-8


# The checkpointed adjoint's splitting path (a while loop of re-solves and conds)
# must be forward-differentiable too.
HVP_METHODS = {
    **{m: METHODS[m] for m in ("BacksolveAdjoint", "InterpolatingAdjoint",
                               "QuadratureAdjoint", "GaussAdjoint")},
    "InterpolatingAdjoint(checkpoints=2, split)": jaxsens.InterpolatingAdjoint(
        checkpoints=2, segment_max_steps=4),
}


@pytest.mark.parametrize("method_name", list(HVP_METHODS))
def test_hessian_vector_product_forward_over_adjoint(method_name, fd_hessian):
    method = HVP_METHODS[method_name]
    p = LV.field.alpha_beta
    grad = jax.grad(lambda p: lv_loss(method, p, LV.y0, LV.args))
    v = jnp.array([0.3, -0.7])
    _, hvp = jax.jit(lambda p, v: jax.jvp(grad, (p,), (v,)))(p, v)
    assert rel_err(hvp, fd_hessian @ v) < 1e-5


def test_finite_difference_helper_is_accurate():
    # The reference itself must be able to fail: a known quadratic.
    fd = central_fd(lambda x: jnp.sum(x**3), jnp.array([1.0, -2.0]))
    assert rel_err(fd, jnp.array([3.0, 12.0])) < 1e-8
    assert rel_err(trainable((jnp.array([1.0]),)), (jnp.array([1.0]),)) == 0.0
