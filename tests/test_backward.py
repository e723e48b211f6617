"""The backward pass written once: its counts, the bounded forward dense output and
its fallback, and the float32 implicit-solver rule."""

import diffrax as dfx
import jax
import jax.numpy as jnp
import pytest

import jaxsens
from jaxsens._sensitivity._backward import backward_stats


TS = jnp.linspace(0.0, 2.0, 4)
Y0 = jnp.array([1.0, -0.5])


def field(t, y, k):
    return -k * jnp.sin(y) + 0.3 * jnp.cos(t)


def loss(k, method, max_steps=4096):
    ys = jaxsens.solve(field, Y0, TS, k, rtol=1e-9, atol=1e-9, max_steps=max_steps,
                       sensitivity=method).ys
    return jnp.sum(ys**2)


def rel_err(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.fixture(scope="module")
def reference():
    return jax.jit(jax.grad(loss, argnums=0), static_argnums=1)(1.3, jaxsens.Discrete())


@pytest.mark.parametrize("method", [
    jaxsens.GaussAdjoint(dense_steps=3),
    jaxsens.QuadratureAdjoint(dense_steps=3, store_steps=4),
    jaxsens.InterpolatingAdjoint(dense_steps=3),
], ids=["Gauss", "Quadrature", "Interpolating"])
def test_solve_longer_than_dense_output_falls_back_to_checkpoints(method, reference):
    # Three steps of dense output for a solve of many: the forward solve is run on
    # its full budget and the backward pass re-solves y from the save times.
    got = jax.jit(jax.grad(loss), static_argnums=1)(1.3, method)
    assert rel_err(got, reference) < 1e-6
    stats = backward_stats(jax.grad(loss), 1.3, method)
    assert stats["resolve_steps"] > 0


def test_counts_of_each_parameter_integral():
    gauss = backward_stats(jax.grad(loss), 1.3, jaxsens.GaussAdjoint())
    # One batched parameter vjp per backward step tried, over 3 nodes each; no
    # re-solve when the dense output holds the solve.
    assert gauss["steps"] >= gauss["accepted"] >= len(TS) - 1
    assert gauss["vjps_params"] == gauss["steps"]
    assert gauss["nodes"] == 3 * gauss["steps"]
    assert gauss["resolve_steps"] == 0
    # Tsit5: six stages per step (FSAL), every one a vjp w.r.t. y.
    assert gauss["vjps_y"] >= 6 * gauss["steps"]
    in_state = backward_stats(jax.grad(loss), 1.3,
                              jaxsens.InterpolatingAdjoint(seminorm=False))
    assert in_state["vjps_params"] == 0 and in_state["steps"] > 0
    quad = backward_stats(jax.grad(loss), 1.3, jaxsens.QuadratureAdjoint(chunk=4))
    # Stored nodes: one vjp per chunk of 4 accepted steps.
    assert quad["vjps_params"] == -(-quad["accepted"] // 4)
    assert backward_stats(jax.grad(loss), 1.3, jaxsens.Discrete())["steps"] == 0


@pytest.mark.parametrize("method", [jaxsens.GaussAdjoint(), jaxsens.QuadratureAdjoint()],
                         ids=["Gauss", "Quadrature"])
def test_memory_does_not_follow_max_steps(method):
    def temp_bytes(max_steps):
        fn = jax.jit(lambda k: jax.grad(loss)(k, method, max_steps))
        return fn.lower(1.3).compile().memory_analysis().temp_size_in_bytes

    small, large = temp_bytes(4096), temp_bytes(65536)
    assert large < 1.1 * small, (small, large)


def robertson(t, y, p):
    k1, k2, k3 = jnp.exp(p)
    y1, y2, y3 = y
    return jnp.stack([-k1 * y1 + k3 * y2 * y3, k1 * y1 - k2 * y2**2 - k3 * y2 * y3,
                      k2 * y2**2])


def robertson_loss(p, method, dtype):
    # y2 starts near its quasi-steady value: a stiff solve of few steps, inside a
    # budget the backward passes' dense output holds (no fallback compiled).
    y0 = jnp.array([1.0, 3.6e-5, 0.0], dtype)
    ts = jnp.array([0.0, 0.1, 1.0, 10.0], dtype)
    ys = jaxsens.solve(robertson, y0, ts, p.astype(dtype), solver=dfx.Kvaerno5(),
                       rtol=1e-6, atol=1e-6, max_steps=256, sensitivity=method).ys
    return jnp.sum(ys.astype(jnp.float64) ** 2)


def test_float32_implicit_backward_solve_says_why_and_the_fix_works():
    p = jnp.log(jnp.array([0.04, 3e7, 1e4]))
    # Raised when the gradient is traced.
    with pytest.raises(ValueError, match="float32 at rtol=1e-06.*float64"):
        jax.eval_shape(lambda p: jax.grad(robertson_loss)(
            p, jaxsens.GaussAdjoint(), jnp.float32), p)
    grad = jax.jit(jax.grad(robertson_loss), static_argnums=(1, 2))
    exact = grad(p, jaxsens.Discrete(), jnp.float64)
    fixed = grad(p, jaxsens.GaussAdjoint(rtol=1e-3, atol=1e-3), jnp.float32)
    assert rel_err(fixed, exact) < 1e-3
