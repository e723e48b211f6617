"""Problems of the suite and of `python -m bench adjoints`, self-contained.

- `lotka_volterra(dtype)`: n = 2 states, 4 parameters (passed as `args`),
  t ∈ [0, 10], 50 save times, loss = Σ y².
- `long_solve(num_steps)`: the memory problem: state 64, 10,336 parameters,
  `y' = A y − c W1ᵀ tanh(W1 y + b1)` with `A` skew-symmetric (a rotation) and a
  small, energy-removing MLP term, so the state stays bounded over 10^5 steps and
  backsolve is stable. Tsit5 at rtol = atol = 1e-6 takes a number of steps proportional
  to the time span; `T` is set from a measured step rate so that the solve takes
  about `num_steps` steps (the exact count is measured and reported). An adaptive
  solver is used because jaxsens's continuous adjoints do not accept
  constant-step solvers (`diffrax.Euler()` with `dt0`): the backward loop builds
  its controller without `dt0` and raises.
- `dense_tanh(n)`: `y' = tanh(W y) − 0.1 y`, `W` n×n (p = n², passed as `args`),
  t ∈ [0, t1], 5 save times, loss = Σ y².

Every constructor returns a `Problem` holding the field (`field(t, y, args)`),
`y0`, `ts`, the differentiable object (`params`: what the gradient is taken with
respect to), `args`, the loss of `ys`, and how to split `params`/`args` (`grad_of`).
"""

import dataclasses
from collections.abc import Callable
from typing import Any

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


# --- Lotka–Volterra --------------------------------------------------------


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


# --- long solve, for memory ------------------------------------------------

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


# --- dense field, for the adjoints' table ---------------------------------


def _dense_field(t, y, W):
    return jnp.tanh(W @ y) - 0.1 * y


def dense_tanh(n: int, *, t1: float = 1.0, scale: float = 1.0,
               max_steps: int = 4096) -> Problem:
    """`y' = tanh(W y) − 0.1 y` with `W` (n×n, standard normal ÷ √n, times `scale`:
    a larger `scale` makes the field faster and the solve take more steps)."""
    kw, ky = jr.split(jr.key(0))
    return Problem(
        name=f"dense tanh, n = {n}",
        field=_dense_field,
        y0=jr.normal(ky, (n,), jnp.float64),
        ts=jnp.linspace(0.0, t1, 5, dtype=jnp.float64),
        args=scale * jr.normal(kw, (n, n), jnp.float64) / n**0.5,
        grad_of="args",
        loss=_sum_sq,
        max_steps=max_steps,
    )
