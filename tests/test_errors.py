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
    with pytest.raises(eqx.EquinoxRuntimeError, match="used all of `max_steps`.*steady "
                       "progress"):
        jaxsens.solve(decay, Y0, TS, 1.0, max_steps=2, sensitivity=jaxsens.Discrete())
    sol = jaxsens.solve(decay, Y0, TS, 1.0, max_steps=2, throw=False,
                        sensitivity=jaxsens.Discrete())
    assert sol.result == jaxsens.RESULTS.step_budget_exhausted


def robertson(t, y, args):
    return jnp.stack([-0.04 * y[0] + 1e4 * y[1] * y[2],
                      0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2,
                      3e7 * y[1] ** 2])


def _raises(match, *args, **kwargs):
    kwargs.setdefault("sensitivity", jaxsens.Discrete())
    with pytest.raises(RUNTIME_ERRORS, match=match):
        jax.block_until_ready(jaxsens.solve(*args, **kwargs).ys)


def test_one_cause_one_message():
    # The field leaves its domain (sqrt of a state crossing zero).
    _raises("field returned NaN or inf.*although `y0` and the parameters",
            lambda t, y, a: -jnp.sqrt(y), jnp.array([1.0]), jnp.linspace(0, 3, 4))
    # A parameter is NaN.
    _raises("because a parameter is not finite", decay, Y0, TS, jnp.nan)
    # Stiff with an explicit solver: the step size collapses; suggest implicit.
    _raises("step size collapsed.*pass an implicit `solver`", robertson,
            jnp.array([1.0, 0.0, 0.0]), jnp.array([0.0, 1.0, 100.0]))
    # Blow-up with an implicit solver: no "use an implicit solver".
    with pytest.raises(RUNTIME_ERRORS, match="although the solver is implicit") as err:
        jax.block_until_ready(jaxsens.solve(
            lambda t, y, a: y**2, jnp.array([1.0]), jnp.linspace(0, 3, 4),
            solver=dfx.Kvaerno5(), sensitivity=jaxsens.Discrete()).ys)
    assert "pass an implicit" not in str(err.value)


def test_step_size_collapse_in_float32_with_an_implicit_solver():
    from jaxsens._sensitivity.base import diagnose

    stats = {"num_steps": jnp.array(4096), "num_rejected_steps": jnp.array(2000)}
    y = jnp.ones(2, jnp.float32)
    result = diagnose(dfx.RESULTS.max_steps_reached, stats, decay, 1.0, dfx.Kvaerno5(),
                      0.0, 1.0, jnp.float32(0.5), y)
    assert result == jaxsens.RESULTS.step_size_collapsed_float32
    assert "solve in float64" in jaxsens.RESULTS[result]
    result = diagnose(dfx.RESULTS.max_steps_reached, stats, decay, 1.0, dfx.Kvaerno5(),
                      0.0, 1.0, 0.5, y.astype(jnp.float64))
    assert result == jaxsens.RESULTS.step_size_collapsed_implicit


def test_input_dtypes_and_settings():
    with pytest.raises(ValueError, match="half precision.*float32, float64"):
        jaxsens.solve(decay, Y0.astype(jnp.float16), TS, 1.0)
    with pytest.raises(ValueError, match="not a number.*float32, float64"):
        jaxsens.solve(decay, jnp.array([True, False]), TS, 1.0)
    with pytest.raises(ValueError, match="`dt0` must be positive"):
        jaxsens.solve(decay, Y0, TS, 1.0, dt0=0.0)
    with pytest.raises(RUNTIME_ERRORS, match="`dt0` must be positive"):
        jax.jit(lambda d: jaxsens.solve(decay, Y0, TS, 1.0, dt0=d).ys)(-0.1)
    with pytest.raises(RUNTIME_ERRORS, match="`rtol` must be positive"):
        jax.jit(lambda r: jaxsens.solve(decay, Y0, TS, 1.0, rtol=r).ys)(-1.0)
    with pytest.raises(ValueError, match="returned complex values.*complex `y0`"):
        jaxsens.solve(lambda t, y, a: 1j * y, Y0, TS)
    with pytest.raises(ValueError, match="returned float64 for a float32 state.*"
                       "`y0.astype\\(jnp.float64\\)`"):
        jaxsens.solve(lambda t, y, a: -a * y, Y0.astype(jnp.float32), TS,
                      jnp.float64(1.0))
    for ts in (jnp.array([]), jnp.array(1.0)):
        with pytest.raises(ValueError, match="`ts` must be a 1-D array"):
            jaxsens.solve(decay, Y0, ts, 1.0)


@pytest.mark.parametrize("method", [jaxsens.Discrete(), jaxsens.Forward(),
                                    jaxsens.InterpolatingAdjoint()])
def test_mixed_precision_leaves_work_as_in_diffrax(method):
    y0 = {"a": jnp.ones(2, jnp.float32), "b": jnp.ones(2)}

    def loss(k):
        ys = jaxsens.solve(lambda t, y, k: jax.tree.map(lambda x: -k * x, y), y0, TS, k,
                           sensitivity=method, rtol=1e-10, atol=1e-10).ys
        return jnp.sum(ys["a"]) + jnp.sum(ys["b"])

    exact = -4 * jnp.sum(TS * jnp.exp(-TS))
    assert float(jax.grad(loss)(1.0)) == pytest.approx(float(exact), rel=1e-7)


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
def dissipative_rates():
    """A dissipative linear system: y' = (P − diag(rowsum P)) y, n = 100."""
    key_p, key_d = jr.split(jr.PRNGKey(0))
    p = jr.uniform(key_p, (100, 100), dtype=jnp.float64)
    data = jr.uniform(key_d, (100, 4), dtype=jnp.float64)
    ts = jnp.array([1.0, 2.0, 3.0, 4.0])

    def loss(p, method):
        a = p - jnp.diag(jnp.sum(p, axis=1))
        ys = jaxsens.solve(lambda t, y, a: a @ y, data[:, 0], ts, a, sensitivity=method).ys
        return jnp.sum((ys - data.T) ** 2)

    return p, loss


def test_backsolve_refuses_dissipative_rates(dissipative_rates):
    p, loss = dissipative_rates
    with pytest.raises(RUNTIME_ERRORS, match="Use `jaxsens.InterpolatingAdjoint"):
        jax.jit(jax.grad(lambda p: loss(p, jaxsens.BacksolveAdjoint()))).__call__(p)
    # throw=False hands back the failure code instead (and its gradient is not used).
    good = jax.jit(jax.grad(lambda p: loss(p, jaxsens.InterpolatingAdjoint())))(p)
    ref = jax.jit(jax.grad(lambda p: loss(p, jaxsens.Discrete())))(p)
    assert jnp.all(jnp.isfinite(good))
    assert float(jnp.linalg.norm(good - ref) / jnp.linalg.norm(ref)) < 0.5


def pulse(t, y, k):
    return -k * y + 50.0 * jnp.exp(-(((t - 0.6) / 3e-2) ** 2))


def test_checkpoint_splitting_runs_out_of_depth():
    # The forward solve's steps crowd into the pulse: splitting intervals into
    # equal halves reaches one step per interval only far deeper than the split
    # depth (sized from max_steps for steps spread evenly) allows.
    method = jaxsens.InterpolatingAdjoint(checkpoints=2, segment_max_steps=1)
    loss = lambda k: jnp.sum(jaxsens.solve(  # noqa: E731
        pulse, Y0, TS, k, max_steps=64, sensitivity=method).ys)
    with pytest.raises(eqx.EquinoxRuntimeError, match="segment_max_steps"):
        jax.grad(loss)(1.0)
