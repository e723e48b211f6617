"""`solve(..., jump_ts=...)`: discontinuities of the field stepped to exactly, forward
and backward, by every method; a `Control`'s knots taken by default."""

import functools

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import jaxsens
from jaxsens._control import control_knots
from jaxsens._sensitivity._backward import _recording
from jaxsens._sensitivity._options import SolveOptions

from . import helpers
from .helpers import rel_err


# `Auto` picks `Forward` here (`test_chosen_is_the_method_itself_except_for_auto`).
METHODS = helpers.METHODS
TOL = dict(rtol=1e-10, atol=1e-10, max_steps=256)
Y0 = 1.0
SWITCH = 0.5
# A save time at the switch; the jump times repeat it and reach past both ends.
TS = jnp.array([0.0, 0.25, SWITCH, 1.0])
JUMPS = jnp.array([SWITCH, 0.0, SWITCH, 2.0])
WEIGHTS = jnp.array([0.0, 1.0, -0.5, 2.0])
P = jnp.array([0.7, 2.0])  # (k, a)


def forced(t, y, p):
    """`y' = -k y + a [t > 1/2]`."""
    k, a = p
    return -k * y + a * (t > SWITCH)


def forced_from(t, y, p):
    """The same forcing, on from the switch itself (`t >= 1/2`)."""
    k, a = p
    return -k * y + a * (t >= SWITCH)


def exact_loss(p):
    k, a = p
    after = jnp.maximum(TS - SWITCH, 0.0)
    ys = Y0 * jnp.exp(-k * TS) + a / k * (1 - jnp.exp(-k * after))
    return jnp.sum(WEIGHTS * ys)


@functools.cache
def gradient(name, jump_ts=True):
    """`(loss, steps), ∂loss/∂p` for `METHODS[name]`, compiled once per module."""

    def loss(p):
        sol = jaxsens.solve(forced, Y0, TS, p, sensitivity=METHODS[name],
                            jump_ts=JUMPS if jump_ts else None, **TOL)
        return jnp.sum(WEIGHTS * sol.ys), sol.stats

    return jax.jit(jax.value_and_grad(loss, has_aux=True))


@pytest.mark.parametrize("name", list(METHODS))
def test_gradient_through_a_switch_every_method(name):
    (value, _), grad = gradient(name)(P)
    assert rel_err(value, exact_loss(P)) < 1e-9
    assert rel_err(grad, jax.grad(exact_loss)(P)) < 1e-7


def test_jump_ts_save_steps_forward():
    (_, stats), _ = gradient("Forward")(P)
    (_, without), _ = gradient("Forward", jump_ts=False)(P)
    # Measured: 18 steps (none rejected) against 93 (38 rejected).
    assert 3 * stats["num_steps"] < without["num_steps"]
    assert stats["num_rejected_steps"] <= 2 < without["num_rejected_steps"]


def test_backward_pass_steps_to_the_switch():
    """A backsolve re-integrates `y` backwards through the switch (here not a save
    time): with a loose backward tolerance, stepping over it costs accuracy and
    rejected steps; stepping to it, neither."""
    method = jaxsens.BacksolveAdjoint(rtol=1e-5, atol=1e-5)
    ts = jnp.array([0.0, 0.25, 1.0])
    weights = jnp.array([0.0, 1.0, 2.0])

    def loss_of(jump_ts):
        def loss(p):
            sol = jaxsens.solve(forced_from, Y0, ts, p, sensitivity=method,
                                jump_ts=jump_ts, **TOL)
            return jnp.sum(weights * sol.ys)

        return loss

    def exact(p):
        k, a = p
        after = jnp.maximum(ts - SWITCH, 0.0)
        ys = Y0 * jnp.exp(-k * ts) + a / k * (1 - jnp.exp(-k * after))
        return jnp.sum(weights * ys)

    reference = jax.grad(exact)(P)
    # The backward loop's step counts, recorded while the gradient is traced
    # (as `backward_stats` does, keeping the gradient).
    with _recording() as records:
        err = rel_err(jax.jit(jax.grad(loss_of(JUMPS)))(P), reference)
        jax.effects_barrier()
    stats = {kind: sum(n for k, n in records if k == kind)
             for kind in ("steps", "accepted")}
    err_without = rel_err(jax.jit(jax.grad(loss_of(None)))(P), reference)
    # Measured: 4 backward steps (38, 26 of them rejected, without); gradient
    # error 3e-7 against 2e-4 without.
    assert stats["steps"] == stats["accepted"] <= 8
    assert err < 2e-6 and 100 * err < err_without


def _control_problem(n_knots=11):
    knots = jnp.linspace(0.0, 1.0, n_knots)
    u = jaxsens.Control(knots, jnp.sin(7.0 * knots))
    return u, jnp.linspace(0.0, 1.0, 3)


def control_field(t, y, u):
    return -y + u(t)


class HoldsControl(eqx.Module):
    u: jaxsens.Control

    def __call__(self, t, y, args):
        return -y + self.u(t)


def test_control_knots_are_jump_times_by_default():
    u, ts = _control_problem()

    def steps(**kw):
        sol = jax.jit(lambda u: jaxsens.solve(
            control_field, jnp.array(1.0), ts, u, rtol=1e-9, atol=1e-9, max_steps=256,
            sensitivity=jaxsens.Discrete(), **kw))(u)
        return int(sol.stats["num_steps"])

    # Measured: 24 steps against 185 when stepping past the kinks freely.
    assert 3 * steps() < steps(jump_ts=[])
    # Constant steps cannot be placed: the knots are not used, and nothing fails.
    assert int(steps(solver=dfx.Euler(), dt0=0.01)) == 100


def test_control_knots_are_found_in_containers_and_modules():
    u, _ = _control_problem(5)
    other = jaxsens.Control(jnp.array([0.1, 0.3]), jnp.ones(2), method="cubic")
    assert jnp.array_equal(control_knots(u), u.ts)
    assert jnp.array_equal(control_knots((HoldsControl(u), {"v": other, "k": 1.0})),
                           jnp.concatenate([u.ts, other.ts]))
    assert control_knots((control_field, {"k": jnp.ones(3)})) is None
    # A stack of controls (unstacked only under `vmap`) has no single knot vector.
    assert control_knots(jaxsens.Control.stack([u, u])) is None


def test_linear_methods_accept_jump_ts():
    field = jaxsens.LinearField(lambda k: jnp.array([[-k]]))
    sol = jax.jit(lambda k: jaxsens.solve(field, jnp.array([1.0]), TS, k,
                                          sensitivity=jaxsens.LinearExpm(),
                                          jump_ts=JUMPS))(0.7)
    assert rel_err(sol.ys[:, 0], jnp.exp(-0.7 * TS)) < 1e-9


def test_bad_jump_ts_are_named():
    with pytest.raises(ValueError, match="`jump_ts` must be a 1-D array"):
        jaxsens.solve(forced, Y0, TS, P, jump_ts=jnp.ones((2, 2)))
    with pytest.raises(ValueError, match="`jump_ts` must hold real times"):
        jaxsens.solve(forced, Y0, TS, P, jump_ts=jnp.array([0.5 + 1j]))
    with pytest.raises(ValueError, match="has no error estimate, so it takes constant"):
        jaxsens.solve(forced, Y0, TS, P, jump_ts=JUMPS, solver=dfx.Euler(), dt0=0.1)
    with pytest.raises(Exception, match="`jump_ts` must be finite"):
        jaxsens.solve(forced, Y0, TS, P, jump_ts=jnp.array([0.5, jnp.nan]),
                      sensitivity=jaxsens.Discrete())


def test_chosen_is_the_method_itself_except_for_auto():
    method = jaxsens.GaussAdjoint()
    assert method.chosen(forced, Y0, TS, P, None) is method
    options = SolveOptions(jnp.array(0.0), dfx.Tsit5(), 1e-6, 1e-6, None, 16, True)
    assert isinstance(jaxsens.Auto().chosen(forced, jnp.array(Y0), TS, P, options),
                      jaxsens.Forward)
    sol = jax.eval_shape(lambda p: jaxsens.solve(forced, Y0, TS, p, jump_ts=JUMPS), P)
    assert isinstance(sol.sensitivity, jaxsens.Forward)
