"""`jaxsens.steady_state`: values and implicit-function-theorem gradients against a
closed form, central finite differences and `Discrete` through a long solve; the
dense and matrix-free linear solves; every error."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import jaxsens
from jaxsens._steady_adjoint import dense_solve


class Chain(eqx.Module):
    """y0' = a - b y0,  y1' = c y0 - d y1²:  y0* = a/b,  y1* = sqrt(c a / (b d))."""

    ab: jax.Array

    def __call__(self, t, y, cd):
        a, b = self.ab
        c, d = cd
        return jnp.stack([a - b * y[0], c * y[0] - d * y[1] ** 2])


def chain_closed_form(ab, cd):
    a, b = ab
    c, d = cd
    return jnp.stack([a / b, jnp.sqrt(c * a / (b * d))])


W = jnp.array([0.2, -0.5, 0.3])


class TanhNet(eqx.Module):
    """y' = gain · tanh(M y + v) − y: a contraction, so one attracting steady state."""

    m: jax.Array
    v: jax.Array

    def __call__(self, t, y, gain):
        return gain * jnp.tanh(self.m @ y + self.v) - y


@pytest.fixture(scope="module")
def net():
    key_m, key_v = jax.random.split(jax.random.key(0))
    m = 0.4 * jax.random.normal(key_m, (3, 3)) / jnp.sqrt(3.0)
    v = jax.random.normal(key_v, (3,))
    return TanhNet(m, v), jnp.array(1.3)


def rel_err(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


AB = jnp.array([2.0, 0.5])
CD = jnp.array([1.5, 0.8])
Y0 = jnp.array([1.0, 1.0])


def exact_grad(ab, cd):
    return jax.grad(lambda ab, cd: W[:2] @ chain_closed_form(ab, cd), (0, 1))(ab, cd)


def chain_loss(field, cd, method, adjoint):
    ss = jaxsens.steady_state(field, Y0, cd, method=method, sensitivity=adjoint)
    return W[:2] @ ss.y, ss


def test_closed_form_newton_dense_matrix_free_vmap():
    dense = jaxsens.SteadyStateAdjoint()
    matrix_free = jaxsens.SteadyStateAdjoint(dense_threshold=1)  # forces GMRES
    grad = jax.grad(chain_loss, argnums=(0, 1), has_aux=True)
    newton = jaxsens.Newton()

    @jax.jit
    def run(ab, cd):
        (g_field, g_cd), ss = grad(Chain(ab), cd, newton, dense)
        (g_field_mf, g_cd_mf), _ = grad(Chain(ab), cd, newton, matrix_free)
        batch = jax.vmap(lambda c: grad(Chain(ab), c, newton, dense)[0][1])(
            jnp.stack([cd, 1.5 * cd])
        )
        # y0 gets a zero cotangent: an isolated steady state forgets its start.
        g_y0 = jax.grad(lambda y0: jaxsens.steady_state(
            Chain(ab), y0, cd, method=newton).y.sum())(Y0)
        return ss.y, g_field.ab, g_cd, g_field_mf.ab, g_cd_mf, batch, g_y0

    y, g_ab, g_cd, g_ab_mf, g_cd_mf, batch, g_y0 = run(AB, CD)
    assert np.all(np.asarray(g_y0) == 0)
    e_ab, e_cd = exact_grad(AB, CD)
    assert rel_err(y, chain_closed_form(AB, CD)) < 1e-9
    assert rel_err(g_ab, e_ab) < 1e-8
    assert rel_err(g_cd, e_cd) < 1e-8
    assert rel_err(g_ab_mf, e_ab) < 1e-7
    assert rel_err(g_cd_mf, e_cd) < 1e-7
    assert rel_err(batch[1], exact_grad(AB, 1.5 * CD)[1]) < 1e-8


def test_closed_form_integrate():
    grad = jax.grad(chain_loss, argnums=(0, 1), has_aux=True)
    run = jax.jit(lambda ab, cd: grad(Chain(ab), cd, jaxsens.Integrate(),
                                      jaxsens.SteadyStateAdjoint()))
    (g_field, g_cd), ss = run(AB, CD)
    e_ab, e_cd = exact_grad(AB, CD)
    assert rel_err(ss.y, chain_closed_form(AB, CD)) < 1e-9
    assert rel_err(g_field.ab, e_ab) < 1e-8
    assert rel_err(g_cd, e_cd) < 1e-8
    assert ss.result == jaxsens.RESULTS.successful
    assert int(ss.stats["num_steps"]) > 0 and bool(ss.stats["polished"])


def test_large_state_defaults_are_matrix_free():
    # n > DENSE_MAX: Integrate uses Tsit5 + a Newton–Krylov polish, Newton uses
    # GMRES steps, the adjoint GMRES with vjps. y* = M⁻¹ p, ∂(w·y*)/∂p = M⁻ᵀ w.
    n = 250
    p = jax.random.uniform(jax.random.key(1), (n,), minval=0.5, maxval=1.5)
    w = jax.random.normal(jax.random.key(2), (n,))
    field = lambda t, y, p: p - 0.5 * y + 0.2 * (jnp.roll(y, 1) - y)
    m = 0.7 * jnp.eye(n) - 0.2 * jnp.roll(jnp.eye(n), 1, axis=0)

    @jax.jit
    def run(p):
        out = []
        for method in (jaxsens.Integrate(), jaxsens.Newton()):
            loss = lambda p, m=method: w @ jaxsens.steady_state(
                field, jnp.zeros(n), p, method=m).y
            out.append(jax.value_and_grad(loss)(p))
        return out

    (v_int, g_int), (v_newton, g_newton) = run(p)
    assert rel_err(v_int, w @ jnp.linalg.solve(m, p)) < 1e-9
    assert rel_err(v_newton, w @ jnp.linalg.solve(m, p)) < 1e-9
    assert rel_err(g_int, jnp.linalg.solve(m.T, w)) < 1e-7
    assert rel_err(g_newton, jnp.linalg.solve(m.T, w)) < 1e-7


def test_gradient_matches_finite_differences(net):
    field, gain = net
    params = (field, gain)
    flat, unravel = jax.flatten_util.ravel_pytree(params)

    @jax.jit
    def value(x):
        f, g = unravel(x)
        y = jaxsens.steady_state(f, jnp.zeros(3), g, method=jaxsens.Newton()).y
        return W @ y

    grad = jax.jit(jax.grad(lambda x: W @ jaxsens.steady_state(
        unravel(x)[0], jnp.zeros(3), unravel(x)[1]).y))(flat)
    h = 1e-5
    eye = np.eye(flat.size)
    fd = np.array([(value(flat + h * e) - value(flat - h * e)) / (2 * h) for e in eye])
    assert rel_err(grad, fd) < 1e-7
    assert np.all(np.abs(fd) > 0)  # every parameter matters: no vacuous check


def test_matches_discrete_through_long_solve(net):
    field, gain = net
    y0 = jnp.array([0.5, -0.5, 0.0])

    def long_solve(f, g):
        sol = jaxsens.solve(f, y0, jnp.array([0.0, 1000.0]), g, rtol=1e-10,
                            atol=1e-10, sensitivity=jaxsens.Discrete())
        return W @ sol.ys[-1]

    def ift(f, g):
        return W @ jaxsens.steady_state(f, y0, g, method=jaxsens.Newton()).y

    g_long = jax.jit(jax.grad(long_solve, argnums=(0, 1)))(field, gain)
    g_ift = jax.jit(jax.grad(ift, argnums=(0, 1)))(field, gain)
    for a, b in zip(jax.tree.leaves(g_ift), jax.tree.leaves(g_long), strict=True):
        assert rel_err(a, b) < 1e-6


def test_closure_pytree_state_and_lineax_solvers():
    # A field closing over the differentiated array; a dict state; user solvers.
    def loss(k, solver):
        def field(t, y, args):
            return {"p": k[0] - k[1] * y["p"], "q": y["p"] - k[2] * y["q"]}

        adjoint = jaxsens.SteadyStateAdjoint(linear_solver=solver)
        y = jaxsens.steady_state(field, {"p": jnp.ones(()), "q": jnp.ones(())},
                                 method=jaxsens.Newton(), sensitivity=adjoint).y
        return y["p"] + 2 * y["q"]

    k = jnp.array([2.0, 0.5, 4.0])
    exact = jax.grad(lambda k: k[0] / k[1] + 2 * k[0] / (k[1] * k[2]))(k)
    for solver in (None, lx.LU()):
        assert rel_err(jax.grad(loss)(k, solver), exact) < 1e-9


# --- errors -------------------------------------------------------------------

CONSERVED = jnp.array([[-1.0, 1.0], [1.0, -1.0]])  # y0 <-> y1, total conserved


def conversion(t, y, k):
    return k * (CONSERVED @ y)


def test_error_no_steady_state_integrate():
    osc = lambda t, y, a: jnp.stack([y[1], -y[0]])  # a centre: never settles
    method = jaxsens.Integrate(solver=dfx.Tsit5(), max_steps=64, polish=None)
    bad = jaxsens.steady_state(osc, Y0, method=method, throw=False)
    assert bad.result == jaxsens.RESULTS.not_steady
    with pytest.raises(Exception, match="no steady state reached: integrating"):
        jaxsens.steady_state(osc, Y0, method=method)


def test_error_integration_fails():
    # Constant steps into a region where the field is NaN.
    nan_beyond = lambda t, y, a: jnp.where(y > 2.0, jnp.nan, 1.0 + 0 * y)
    method = jaxsens.Integrate(solver=dfx.Euler(), dt0=0.1, max_steps=64)
    with pytest.raises(Exception, match="the ODE solver failed"):
        jaxsens.steady_state(nan_beyond, jnp.array([0.5]), method=method)


def test_error_newton_diverges():
    with pytest.raises(Exception, match="Newton's method did not converge"):
        jaxsens.steady_state(lambda t, y, a: jnp.arctan(y), jnp.array([2.0]),
                             method=jaxsens.Newton())


def test_error_newton_singular():
    with pytest.raises(Exception, match="Newton's method met a singular Jacobian"):
        jaxsens.steady_state(conversion, Y0, 0.7, method=jaxsens.Newton())


def test_error_gradient_singular():
    # Integrate finds a steady state (the total is conserved), but not an isolated
    # one: Newton's polish fails and keeps the integrated state; the gradient
    # raises instead of returning inf/NaN.
    y0 = jnp.array([1.0, 3.0])
    method = jaxsens.Integrate(solver=dfx.Tsit5())

    def loss(k):
        ss = jaxsens.steady_state(conversion, y0, k, method=method)
        return ss.y[0], ss

    value, ss = loss(0.7)
    assert rel_err(ss.y, jnp.array([2.0, 2.0])) < 1e-5
    assert not bool(ss.stats["polished"])
    with pytest.raises(Exception, match="singular at the steady state"):
        jax.grad(loss, has_aux=True)(0.7)


@pytest.mark.parametrize(
    "adjoint, match",
    [
        (jaxsens.SteadyStateAdjoint(), "singular at the steady state"),
        (jaxsens.SteadyStateAdjoint(linear_solver=lx.LU()), "singular at the steady"),
        (jaxsens.SteadyStateAdjoint(dense_threshold=1), "matrix-free linear solve"),
    ],
    ids=["dense", "user-lu", "gmres"],
)
def test_singular_transposed_solve(adjoint, match):
    # The linear solve alone, on the conservation law's singular f_y.
    fn = lambda y: 0.7 * (CONSERVED @ y)
    y_star, y_bar = jnp.array([2.0, 2.0]), jnp.array([1.0, 0.0])
    with pytest.raises(Exception, match=match):
        adjoint.solve_transposed(fn, y_star, y_bar)
    fine = lambda y: jnp.array([[-2.0, 1.0], [0.5, -1.0]]) @ y
    lam = adjoint.solve_transposed(fine, y_star, y_bar)
    assert rel_err(lam, jnp.linalg.solve(jnp.array([[-2.0, 0.5], [1.0, -1.0]]),
                                         y_bar)) < 1e-7


def test_dense_solve_flags_nearly_singular():
    # Not exactly singular (LU succeeds) but singular to working precision.
    eps = float(jnp.finfo(jnp.float64).eps)
    a = jnp.array([[1.0, 1.0], [1.0, 1.0 + 2 * eps]])
    b = jnp.array([1.0, 0.0])
    with pytest.raises(Exception, match="singular at the steady state"):
        dense_solve(lx.MatrixLinearOperator(a), b)
    ok = dense_solve(lx.MatrixLinearOperator(jnp.array([[2.0, 1.0], [1.0, 3.0]])), b)
    assert rel_err(ok, jnp.array([0.6, -0.2])) < 1e-12


def test_error_nonfinite_y0():
    with pytest.raises(Exception, match="`y0` contains NaN or inf"):
        jaxsens.steady_state(Chain(AB), jnp.array([jnp.nan, 1.0]), CD,
                             method=jaxsens.Newton())


def test_trace_time_errors():
    f = Chain(AB)
    with pytest.raises(TypeError, match="`method` must be"):
        jaxsens.steady_state(f, Y0, CD, method="newton")
    with pytest.raises(TypeError, match="must be a `jaxsens.SteadyStateAdjoint"):
        jaxsens.steady_state(f, Y0, CD, sensitivity=jaxsens.Discrete())
    with pytest.raises(TypeError, match="`field` must be callable"):
        jaxsens.steady_state(3.0, Y0, CD)
    with pytest.raises(ValueError, match="must return dy/dt shaped like `y0`"):
        jaxsens.steady_state(lambda t, y, a: y[:1], Y0)
    with pytest.raises(ValueError, match="`y0` has no array leaves"):
        jaxsens.steady_state(f, {}, CD)
    with pytest.raises(ValueError, match="has no error estimate"):
        jaxsens.steady_state(f, Y0, CD, method=jaxsens.Integrate(solver=dfx.Euler()))
    with pytest.raises(ValueError, match=r"`Newton\(max_steps=...\)` must be a pos"):
        jaxsens.Newton(max_steps=0)
    with pytest.raises(ValueError, match=r"`Integrate\(rtol=...\)` must be positive"):
        jaxsens.Integrate(rtol=-1.0)
    with pytest.raises(TypeError, match=r"`Integrate\(solver=...\)` must be a diffrax"):
        jaxsens.Integrate(solver="tsit5")
    with pytest.raises(TypeError, match=r"`Integrate\(polish=...\)` must be"):
        jaxsens.Integrate(polish="newton")
    with pytest.raises(TypeError, match=r"linear_solver=...\)` must be a lineax"):
        jaxsens.SteadyStateAdjoint(linear_solver="lu")
    with pytest.raises(TypeError, match=r"`Newton\(linear_solver=...\)` must be"):
        jaxsens.Newton(linear_solver="lu")
    with pytest.raises(ValueError, match=r"dense_threshold=...\)` must be a positive"):
        jaxsens.SteadyStateAdjoint(dense_threshold=0)
