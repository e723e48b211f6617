"""Problems of the core benchmark (issue 2, "Speed"): self-contained definitions.

- `lotka_volterra(dtype)`: n = 2 states, 4 parameters (passed as `args`),
  t ∈ [0, 10], 50 save times, loss = Σ y².
- `controlled_node(key)`: seed 002's controlled neural ODE with ONE control:
  state 2, u0 = 0, MLP 3→10→10→10→2 (282 parameters, selu, Glorot-uniform with
  gain 0.1, zero biases, as Lux's `Dense(...; init_weight=glorot_uniform(gain=0.1))`),
  float32, t ∈ [0, 10], 100 save times, the control a `diffrax.LinearInterpolation`
  of 100 standard-normal values on the save times (passed as `args`),
  loss = Σ pred² / 100.
- `long_solve(num_steps)`: the memory problem: state 64, 10,336 parameters,
  `y' = A y − c W1ᵀ tanh(W1 y + b1)` with `A` skew-symmetric (a rotation) and a
  small, energy-removing MLP term, so the state stays bounded over 10^5 steps and
  backsolve is stable. Tsit5 at rtol = atol = 1e-6 takes a number of steps proportional
  to the time span; `T` is set from a measured step rate so that the solve takes
  about `num_steps` steps (the exact count is measured and reported). An adaptive
  solver is used because jaxsens's continuous adjoints do not accept
  constant-step solvers (`diffrax.Euler()` with `dt0`): the backward loop builds
  its controller without `dt0` and raises.

Every constructor returns a `Problem` holding the field (`field(t, y, args)`),
`y0`, `ts`, the differentiable object (`params`: what the gradient is taken with
respect to), `args`, the loss of `ys`, and how to split `params`/`args` (`grad_of`).
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr


@dataclasses.dataclass(frozen=True)
class Problem:
    """One benchmark problem.

    - `name`: a short label.
    - `field`: `field(t, y, args)`; for `grad_of="field"` an `eqx.Module` whose
        inexact leaves are the parameters.
    - `y0`, `ts`, `args`: the solve's inputs.
    - `grad_of`: `"args"` (the gradient is w.r.t. `args`) or `"field"` (w.r.t. the
        field's parameters).
    - `loss`: `loss(ys) -> scalar`.
    - `rtol`, `atol`, `max_steps`: the solve's settings.
    """

    name: str
    field: Callable
    y0: jax.Array
    ts: jax.Array
    args: Any
    grad_of: str
    loss: Callable
    rtol: float = 1e-6
    atol: float = 1e-6
    max_steps: int = 4096

    @property
    def params(self):
        return self.args if self.grad_of == "args" else self.field

    def split(self, params):
        """`(field, args)` with `params` put in place of the differentiable part."""
        if self.grad_of == "args":
            return self.field, params
        return params, self.args

    def num_params(self) -> int:
        leaves = jax.tree_util.tree_leaves(
            eqx.filter(self.params, eqx.is_inexact_array)
        )
        return sum(x.size for x in leaves)

    def astype(self, dtype) -> "Problem":
        """The same problem with every floating array cast to `dtype`."""

        def cast(x):
            if eqx.is_inexact_array(x):
                return x.astype(dtype)
            return x

        return dataclasses.replace(
            self,
            field=jax.tree_util.tree_map(cast, self.field),
            y0=cast(self.y0),
            ts=cast(self.ts),
            args=jax.tree_util.tree_map(cast, self.args),
        )


# --- (a) Lotka–Volterra --------------------------------------------------------


def _lv_field(t, y, p):
    a, b, c, d = p[0], p[1], p[2], p[3]
    x, z = y[0], y[1]
    return jnp.stack([a * x - b * x * z, -c * z + d * x * z])


def _sum_sq(ys):
    return jnp.sum(ys**2)


def lotka_volterra(dtype=jnp.float64) -> Problem:
    """Lotka–Volterra, 2 states, 4 parameters `(a, b, c, d) = (1.5, 1, 3, 1)`."""
    return Problem(
        name=f"LV {jnp.dtype(dtype).name}",
        field=_lv_field,
        y0=jnp.array([1.0, 1.0], dtype),
        ts=jnp.linspace(0.0, 10.0, 50, dtype=dtype),
        args=jnp.array([1.5, 1.0, 3.0, 1.0], dtype),
        grad_of="args",
        loss=_sum_sq,
    )


# --- (b) seed 002, one control -------------------------------------------------


def glorot_linear(key, fan_in, fan_out, gain, dtype):
    """`eqx.nn.Linear` initialised as Lux's `glorot_uniform(gain=gain)`, zero bias."""
    lin = eqx.nn.Linear(fan_in, fan_out, key=key, dtype=dtype)
    bound = gain * (6.0 / (fan_in + fan_out)) ** 0.5
    w = jr.uniform(key, (fan_out, fan_in), dtype, -bound, bound)
    lin = eqx.tree_at(lambda m: m.weight, lin, w)
    return eqx.tree_at(lambda m: m.bias, lin, jnp.zeros((fan_out,), dtype))


class ControlledMLPField(eqx.Module):
    """`dy/dt = MLP([y; u(t)])` with selu hidden layers and a linear output layer."""

    layers: tuple

    def __call__(self, t, y, control):
        u = control.evaluate(t)
        h = jnp.concatenate([y, u])
        for layer in self.layers[:-1]:
            h = jax.nn.selu(layer(h))
        return self.layers[-1](h)


def controlled_node(
    key=None,
    *,
    num_times: int = 100,
    hidden: int = 10,
    gain: float = 0.1,
    dtype=jnp.float32,
) -> Problem:
    """Seed 002's neural ODE with one control (282 parameters for `hidden=10`)."""
    if key is None:
        key = jr.PRNGKey(1111)
    kc, *kl = jr.split(key, 5)
    sizes = [3, hidden, hidden, hidden, 2]
    layers = tuple(
        glorot_linear(k, a, b, gain, dtype)
        for k, a, b in zip(kl, sizes[:-1], sizes[1:], strict=True)
    )
    ts = jnp.linspace(0.0, 10.0, num_times, dtype=dtype)
    values = jr.normal(kc, (num_times, 1), dtype)
    control = dfx.LinearInterpolation(ts=ts, ys=values)
    return Problem(
        name="seed-002 NODE (1 control)",
        field=ControlledMLPField(layers),
        y0=jnp.zeros((2,), dtype),
        ts=ts,
        args=control,
        grad_of="field",
        loss=lambda ys: jnp.sum(ys**2) / num_times,
    )


# --- (c) long solve, for memory ----------------------------------------------

LONG_STATE = 64
LONG_HIDDEN = 96
LONG_DAMPING = 0.002
# Tsit5 steps per unit time at rtol = atol = 1e-6 for `long_field` (measured with
# a forward solve; the realised counts are reported with the results).
LONG_STEPS_PER_TIME = 2.49


class LongField(eqx.Module):
    """`y' = A y − c W1ᵀ tanh(W1 y + b1)`: 64 states, 10,336 parameters.

    `A` starts skew-symmetric (a rotation) and the MLP term only removes energy
    (`yᵀ W1ᵀ tanh(W1 y) ≥ 0` for `b1 = 0`), so `|y|` stays bounded over 10^5 steps
    (a generic MLP perturbation grows like `exp(rate · T)` over such spans) and
    the backward re-integration of `BacksolveAdjoint` grows by at most the same,
    small, factor.
    """

    A: jax.Array
    W1: jax.Array
    b1: jax.Array

    def __call__(self, t, y, args):
        return self.A @ y - LONG_DAMPING * (self.W1.T @ jnp.tanh(self.W1 @ y + self.b1))


def long_field(key=None, dtype=jnp.float64) -> LongField:
    if key is None:
        key = jr.PRNGKey(0)
    ka, k1 = jr.split(key, 2)
    n, h = LONG_STATE, LONG_HIDDEN
    s = jr.normal(ka, (n, n), dtype)
    a = (s - s.T) / (2.0 * n**0.5)  # skew-symmetric: eigenvalues on the imaginary axis
    w1 = jr.normal(k1, (h, n), dtype) * (0.1 / n**0.5)
    return LongField(a, w1, jnp.zeros((h,), dtype))


def long_solve(
    num_steps: int,
    *,
    num_times: int = 101,
    dtype=jnp.float64,
    steps_per_time: float = LONG_STEPS_PER_TIME,
) -> Problem:
    """The memory problem, sized to take about `num_steps` Tsit5 steps."""
    t1 = num_steps / steps_per_time
    y0 = jnp.ones((LONG_STATE,), dtype) / LONG_STATE**0.5
    return Problem(
        name=f"long solve (~{num_steps} steps)",
        field=long_field(dtype=dtype),
        y0=y0,
        ts=jnp.linspace(0.0, t1, num_times, dtype=dtype),
        args=None,
        grad_of="field",
        loss=_sum_sq,
        max_steps=int(1.25 * num_steps) + 64,
    )
