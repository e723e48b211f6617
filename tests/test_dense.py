"""`solve(..., dense=True)` (`sol.evaluate(t)`, by `Discrete()` and `Forward()`),
`stepsize_controller=` and
`progress_meter=`, on exponential decay `y' = -k y` (closed form `y0 e^{-k t}`)."""

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsens


Y0 = jnp.array([1.0, 2.0])
TS = jnp.array([0.0, 0.5, 1.0])
K = 0.7
TOL = 1e-10


def decay(t, y, k):
    return -k * y


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


DISCRETE = jaxsens.Discrete()


def _dense(k, sensitivity=DISCRETE, y0=Y0, **kwargs):
    return jaxsens.solve(decay, y0, TS, k, rtol=TOL, atol=TOL, dense=True,
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


# --- `Forward()` with `dense=True`: against the closed form and against `Discrete()`

FORWARD = jaxsens.Forward()
T_IN = jnp.array([0.13, 0.37, 0.81])
W = jnp.array([1.0, -3.0])  # a weighted loss, so that a sign or a swap shows


@pytest.fixture(scope="module")
def forward_dense():
    """At each of `T_IN`, by `Forward()`, with `L(t) = W·y(t)`: `y(t)` and
    `∂y/∂(k, y0)` by `jax.jacfwd`, `∂L/∂(k, y0, t)` by `jax.grad`: one compiled
    function."""

    def values(k, y0):
        return jax.vmap(lambda t: _dense(k, FORWARD, y0=y0).evaluate(t))(T_IN)

    def loss(k, y0, t):
        return jnp.dot(W, _dense(k, FORWARD, y0=y0).evaluate(t))

    def run(k, y0):
        jac, ys = jax.jacfwd(lambda k, y0: (values(k, y0),) * 2, (0, 1),
                             has_aux=True)(k, y0)
        grads = jax.vmap(lambda t: jax.grad(loss, (0, 1, 2))(k, y0, t))(T_IN)
        return ys, jac, grads

    return jax.tree_util.tree_map(np.asarray, jax.jit(run)(K, Y0))


def test_forward_evaluate(forward_dense, evaluate):
    """`sol.evaluate(t)` by `Forward()` between save times: value, `jacfwd` and
    `grad` (w.r.t. `k`, `y0` and `t`) against the closed form and `Discrete()`."""
    ys, (j_k, j_y0), (g_k, g_y0, g_t) = forward_dense
    t = np.asarray(T_IN)
    decay_t = np.exp(-K * t)
    y0, w = np.asarray(Y0), np.asarray(W)
    assert _rel(ys, y0 * decay_t[:, None]) <= 1e-8
    # ∂y_i(t)/∂k = -t e^{-kt} y0_i, ∂y_i(t)/∂y0_j = e^{-kt} δ_ij.
    assert _rel(j_k, -(t * decay_t)[:, None] * y0) <= 1e-8
    assert _rel(j_y0, decay_t[:, None, None] * np.eye(2)) <= 1e-8
    # ∂L/∂k = -t e^{-kt} W·y0, ∂L/∂y0 = e^{-kt} W, ∂L/∂t = -k e^{-kt} W·y0.
    assert _rel(g_k, -t * decay_t * (w @ y0)) <= 1e-8
    assert _rel(g_y0, decay_t[:, None] * w) <= 1e-8
    assert _rel(g_t, -K * decay_t * (w @ y0)) <= 1e-8
    # `Discrete()` differentiates the same computed solution: agreement far below
    # the tolerance, in value and in `d Σy(0.37)/dk` (`T_IN[1] = 0.37`).
    d_values, d_grad = evaluate(K, jnp.array([0.13, 0.37, 0.81, 1.0]))
    assert _rel(ys, d_values[:3]) <= 1e-12
    assert _rel(np.sum(j_k[1]), d_grad) <= 1e-9


def test_auto_picks_discrete_with_running_cost():
    def run():
        sol = jaxsens.solve(decay, Y0, TS, K, dense=True,
                            running_cost=lambda t, y, k: y[0])
        return sol, sol.evaluate(0.37)

    sol, y = jax.eval_shape(run)
    assert sol.sensitivity == jaxsens.Discrete()
    assert y.shape == Y0.shape


def test_dense_errors():
    match = "only `Discrete\\(\\)` .* and `Forward\\(\\)` .* differentiate"
    with pytest.raises(ValueError, match=match):
        _dense(K, sensitivity=jaxsens.GaussAdjoint())
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


# --- `stepsize_controller=` and `progress_meter=`

PID = dfx.PIDController(rtol=TOL, atol=TOL, pcoeff=0.3, icoeff=0.4, jump_ts=[0.25])


@pytest.mark.parametrize("method", [jaxsens.Discrete(), jaxsens.GaussAdjoint()],
                         ids=["Discrete", "GaussAdjoint"])
def test_controller_and_progress_meter_gradient(method, capfd):
    """A `PIDController` with its own coefficients (and a progress meter) gives
    the gradient `rtol`/`atol` give, under `jit(grad)`; a continuous adjoint's
    backward pass reports to the meter too, which leaves its gradient unchanged
    (to round-off)."""

    def grad(**kwargs):
        return jax.grad(lambda k: jnp.sum(jaxsens.solve(
            decay, Y0, TS, k, sensitivity=method, **kwargs).ys[-1]))(K)

    adjoint = isinstance(method, jaxsens.GaussAdjoint)
    both = jax.jit(lambda: (
        grad(stepsize_controller=PID, progress_meter=dfx.TextProgressMeter()),
        grad(rtol=TOL, atol=TOL),
        grad(stepsize_controller=PID) if adjoint else None))
    with_controller, with_tols, without_meter = jax.block_until_ready(both())
    lines = capfd.readouterr().out.split()
    assert "100.00%" in lines
    if adjoint:
        # Two meters, the forward solve's and the backward pass's, each from 0 to
        # 100% through the steps between; the gradient is the one without them.
        assert lines.count("0.00%") == 2 and lines.count("100.00%") == 2
        assert len(lines) > 6
        assert _rel(with_controller, without_meter) <= 1e-14
    exact = -TS[-1] * jnp.sum(Y0) * jnp.exp(-K * TS[-1])
    assert _rel(with_controller, with_tols) <= 1e-7
    assert _rel(with_controller, exact) <= 1e-7


def test_controllers_used_as_is():
    """The steps are diffrax's with the same controller (the controller's
    `jump_ts` merged with `solve`'s); `ConstantStepSize` takes steps of `dt0`."""

    def run(k):
        pid = jaxsens.solve(decay, Y0, TS, k, stepsize_controller=PID,
                            jump_ts=jnp.array([0.6]), sensitivity=jaxsens.Discrete())
        constant = jaxsens.solve(decay, Y0, TS, k, dt0=0.05,
                                 stepsize_controller=dfx.ConstantStepSize(),
                                 sensitivity=jaxsens.Discrete())
        ref = dfx.diffeqsolve(
            dfx.ODETerm(decay), dfx.Tsit5(), 0.0, 1.0, None, Y0, args=k,
            saveat=dfx.SaveAt(ts=TS), stepsize_controller=dfx.PIDController(
                rtol=TOL, atol=TOL, pcoeff=0.3, icoeff=0.4, jump_ts=[0.25, 0.6]))
        return pid, constant, ref

    pid, constant, ref = jax.jit(run)(K)
    assert int(pid.stats["num_steps"]) == int(ref.stats["num_steps"])
    assert _rel(pid.ys, ref.ys) <= 1e-13
    assert int(constant.stats["num_steps"]) == 20


def test_controller_errors():
    def solve(**kwargs):
        return jax.eval_shape(lambda: jaxsens.solve(decay, Y0, TS, K, **kwargs))

    with pytest.raises(TypeError, match="`stepsize_controller` must be"):
        solve(stepsize_controller="pid")
    with pytest.raises(TypeError, match="`stepsize_controller` must be"):
        solve(stepsize_controller=dfx.StepTo(ts=TS))
    with pytest.raises(ValueError, match="the tolerances are the controller's"):
        solve(stepsize_controller=PID, rtol=1e-8)
    with pytest.raises(ValueError, match="takes constant steps of `dt0`"):
        solve(stepsize_controller=dfx.ConstantStepSize())
    with pytest.raises(ValueError, match="no error estimate to control"):
        solve(stepsize_controller=PID, solver=dfx.Euler())
    with pytest.raises(ValueError, match="constant steps cannot be placed"):
        solve(stepsize_controller=dfx.ConstantStepSize(), dt0=0.1, jump_ts=[0.5])
    with pytest.raises(TypeError, match="`progress_meter` must be a diffrax"):
        solve(progress_meter="tqdm")
    custom = dfx.PIDController(rtol=TOL, atol=TOL, norm=lambda e: jnp.max(jnp.abs(e)))
    with pytest.raises(ValueError, match="needs its own error norm"):
        jax.eval_shape(jax.grad(lambda k: jnp.sum(jaxsens.solve(
            decay, Y0, TS, k, stepsize_controller=custom,
            sensitivity=jaxsens.Forward()).ys)), K)
