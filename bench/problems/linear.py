"""Problems of the linear-systems benchmark.

- `linear_rates(seed)`: a linear rate system, 100 states and 10^4 rates. `P`
  uniform random 100×100 (the parameters), `A = P - diag(rowsum P)`
  (`du_i = Σ_j P_ij (u_j - u_i)`), `data` uniform random 100×4, `u0 = data[:, 0]`,
  `t0 = 1`, save times 1, 2, 3, 4, loss `Σ (pred - data)²`, float64.
- `rates_ude(seed)`: a universal differential equation on the same system: the
  linear coupling plus a small MLP 4→5→4 (`tanh` on the hidden layer, so the
  model is genuinely non-linear) applied to each of the 25 blocks of 4 states,
  `u' = A u + NN(u)`. Parameters: `P` (10^4) + MLP (49). Same data, times and
  loss as `linear_rates`. Non-linear, so time-stepped.
- `heat2d(grid)`: a 2-D heat equation `u_t = ∇·(D ∇u)` on the unit square with
  `grid × grid` cells (n = grid²; 100 → 10^4), a learnable diffusion coefficient
  per cell (D, n parameters), no-flux (Neumann) boundaries, finite volumes with
  the arithmetic-mean face coefficient. The operator is matrix-free
  (`LinearField(matvec=heat_matvec)`). `u0` is a Gaussian bump, `D` a smooth
  field in [0.5, 1.5]·10^-2, save times 0.25, 0.5, 0.75, 1.0 (t0 = 0; the slowest
  mode's time scale is 1/(π² D) ≈ 10, the stiffest `8 D grid²` ≈ 1.2·10³ per
  unit time), loss `Σ (u(t_k) - target_k)²` against a target made with
  a different `D`.

Each constructor returns a `LinearProblem`: `field`, `y0`, `ts`, `t0`, the
differentiable `params` (passed as `args` unless `grad_of == "field"`), and
`loss(ys)`.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

import jaxsens


@dataclasses.dataclass(frozen=True)
class LinearProblem:
    """One benchmark problem: `solve(field, y0, ts, args=params, t0=t0)`, `loss(ys)`.

    `grad_of` is `"args"` (gradient w.r.t. `params`, passed as `args`) or `"field"`
    (`params` is the field itself, an `eqx.Module`, and `args` is None).
    """

    name: str
    field: Callable
    y0: jax.Array
    ts: jax.Array
    t0: float
    params: Any
    loss: Callable
    grad_of: str = "args"

    def split(self, params):
        """`(field, args)` for the solve, with `params` in place."""
        if self.grad_of == "args":
            return self.field, params
        return params, None

    def num_params(self) -> int:
        leaves = jax.tree_util.tree_leaves(
            eqx.filter(self.params, eqx.is_inexact_array)
        )
        return sum(x.size for x in leaves)


def rate_matrix(P):
    """`A = P - diag(rowsum P)`: `du_i/dt = Σ_j P_ij (u_j - u_i)`."""
    return P - jnp.diag(jnp.sum(P, axis=1))


def _sq_loss(data):
    def loss(ys):  # ys: (T, n), data: (n, T)
        return jnp.sum((ys.T - data) ** 2)

    return loss


def linear_rates(seed: int = 0) -> LinearProblem:
    rng = np.random.default_rng(seed)
    P = jnp.asarray(rng.uniform(size=(100, 100)))
    data = jnp.asarray(rng.uniform(size=(100, 4)))
    ts = jnp.array([1.0, 2.0, 3.0, 4.0])
    return LinearProblem(
        name="linear_rates",
        field=jaxsens.LinearField(rate_matrix),
        y0=data[:, 0],
        ts=ts,
        t0=1.0,
        params=P,
        loss=_sq_loss(data),
    )


class UDEField(eqx.Module):
    """`u' = (P - diag(rowsum P)) u + MLP(u in blocks of 4)`, the rate system's UDE."""

    P: jax.Array
    mlp: eqx.nn.MLP

    def __call__(self, t, y, args):
        del t, args
        nn = jax.vmap(self.mlp)(y.reshape(-1, 4)).reshape(-1)
        return rate_matrix(self.P) @ y + nn


def rates_ude(seed: int = 0) -> LinearProblem:
    rng = np.random.default_rng(seed)
    P = jnp.asarray(rng.uniform(size=(100, 100)))
    data = jnp.asarray(rng.uniform(size=(100, 4)))
    mlp = eqx.nn.MLP(4, 4, 5, 1, activation=jnp.tanh, key=jax.random.key(seed))
    mlp = jax.tree_util.tree_map(
        lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, mlp
    )
    field = UDEField(P, mlp)
    return LinearProblem(
        name="rates_ude",
        field=field,
        y0=data[:, 0],
        ts=jnp.array([1.0, 2.0, 3.0, 4.0]),
        t0=1.0,
        params=field,
        loss=_sq_loss(data),
        grad_of="field",
    )


def heat_matvec(D, v):
    """`∇·(D ∇u)` by finite volumes on a `g × g` grid of the unit square, no-flux
    boundaries; `D` is `(g, g)` (one coefficient per cell), `v` the flattened `u`.
    Linear in `v`, never forms a matrix."""
    g = D.shape[0]
    u = v.reshape(g, g)
    inv_h2 = float(g * g)
    fx = 0.5 * (D[1:, :] + D[:-1, :]) * (u[1:, :] - u[:-1, :])
    fy = 0.5 * (D[:, 1:] + D[:, :-1]) * (u[:, 1:] - u[:, :-1])
    zx = jnp.zeros((1, g), v.dtype)
    zy = jnp.zeros((g, 1), v.dtype)
    div = (
        jnp.concatenate([fx, zx], 0)
        - jnp.concatenate([zx, fx], 0)
        + jnp.concatenate([fy, zy], 1)
        - jnp.concatenate([zy, fy], 1)
    )
    return inv_h2 * div.reshape(-1)


def _heat_D(x, y, shift):
    return 1e-2 * (1.0 + 0.5 * jnp.sin(2 * jnp.pi * (x + shift)) * jnp.cos(jnp.pi * y))


def heat2d(grid: int = 100) -> LinearProblem:
    xc = (jnp.arange(grid) + 0.5) / grid
    X, Y = jnp.meshgrid(xc, xc, indexing="ij")
    u0 = jnp.exp(-40.0 * ((X - 0.35) ** 2 + (Y - 0.6) ** 2)).reshape(-1)
    D = _heat_D(X, Y, 0.0)
    D_true = _heat_D(X, Y, 0.2)
    ts = jnp.array([0.25, 0.5, 0.75, 1.0])
    field = jaxsens.LinearField(matvec=heat_matvec, tags=lx.symmetric_tag)
    sol = jaxsens.solve(field, u0, ts, D_true, t0=0.0, sensitivity=jaxsens.KrylovExpm())
    target = sol.ys.T
    return LinearProblem(
        name=f"heat2d_{grid}x{grid}",
        field=field,
        y0=u0,
        ts=ts,
        t0=0.0,
        params=D,
        loss=_sq_loss(target),
    )
