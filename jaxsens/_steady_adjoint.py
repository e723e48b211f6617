"""`SteadyStateAdjoint`: the implicit function theorem's backward pass.

Differentiating `f(y*(θ), θ) = 0` gives `f_y ∂y*/∂θ = -f_θ`, so for a cotangent `ȳ`

    solve   f_yᵀ λ = ȳ          (one lineax solve, at y* only)
    ∂L/∂θ = -λᵀ f_θ             (one vjp of f)

whatever the forward search did.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, PyTree

from ._sensitivity.base import max_abs, tree_size
from ._solution import RESULTS, checked
from ._steady_methods import (
    DENSE_MAX,
    check_linear_solver,
    check_positive_int,
    default_tol,
    tree_dtype,
)


class SteadyStateAdjoint(eqx.Module):
    """Differentiate a steady state by the implicit function theorem.

    For `f(y*, θ) = 0`: `∂L/∂θ = -λᵀ f_θ` with `f_yᵀ λ = ȳ`, one linear solve at
    `y*` and one vjp of `f`, whatever the forward pass did (Newton iterations or
    10^4 integration steps). `f_y` is never formed for large systems: the
    matrix-free path applies `f_yᵀ` by `jax.vjp`. Cost and memory are those of one
    linear solve, independent of how long the system took to settle. Reverse mode
    only (`jax.grad`, `jax.vjp`, `jax.jacrev`, under `jit`/`vmap`); `jax.jvp`
    raises, as for every `custom_vjp`.

    The gradient is exact for the exact steady state; the forward tolerance enters
    only through `f(y*) ≈ 0`, which `Integrate(polish=...)`
    and `Newton` make round-off small.

    **Arguments:**

    - `linear_solver`: a lineax solver for `f_yᵀ λ = ȳ`. Default `None`: dense
        LU on the materialised Jacobian when the state has at most
        `dense_threshold` entries (and a check that says when `f_y` is singular),
        else matrix-free `lineax.GMRES` using vjps of `f`. An iterative lineax solver
        (`GMRES`, `BiCGStab`) passed here is used matrix-free; a direct one
        (`LU`, `QR`, `SVD`) materialises `f_yᵀ` first.
    - `dense_threshold`: see above.

    Cites: Griewank & Walther 2008, §15 (implicit and iterative functions);
    Johnson, "Notes on adjoint methods" (MIT 18.335).

    **Example:**

    ```python
    import jax, jax.numpy as jnp, lineax as lx, jaxsens
    f = lambda t, y, k: k[0] - k[1] * y         # y* = k0 / k1
    adj = jaxsens.SteadyStateAdjoint(linear_solver=lx.GMRES(rtol=1e-10, atol=1e-10))
    grad = jax.grad(lambda k: jaxsens.steady_state(f, jnp.ones(3), k,
                                                   sensitivity=adj).y.sum())
    grad(jnp.array([2.0, 0.5]))  # [3/0.5, -3 * 2/0.5**2] = [6., -24.]
    ```
    """

    linear_solver: lx.AbstractLinearSolver | None = None
    dense_threshold: int = DENSE_MAX

    def __check_init__(self):
        check_linear_solver("SteadyStateAdjoint", self.linear_solver)
        check_positive_int("SteadyStateAdjoint(dense_threshold=...)",
                            self.dense_threshold)

    def solve_transposed(self, fn_y, y_star, y_bar):
        """Solve `f_yᵀ λ = ȳ` where `fn_y(y) = f(y, θ)`; returns λ (checked)."""
        _, vjp_y = jax.vjp(fn_y, y_star)
        structure = jax.eval_shape(lambda: y_star)
        op = lx.FunctionLinearOperator(lambda v: vjp_y(v)[0], structure)
        size = tree_size(y_star)
        solver = self.linear_solver
        if solver is None:
            if size <= self.dense_threshold:
                return dense_solve(op, y_bar)
            tol = default_tol(tree_dtype(y_star))
            solver = lx.GMRES(rtol=tol, atol=tol, restart=min(size, 50))
        if isinstance(solver, (lx.GMRES, lx.BiCGStab, lx.CG)):
            sol = lx.linear_solve(op, y_bar, solver, throw=False)
            failure = RESULTS.steady_linear_solve_failed
        else:
            sol = lx.linear_solve(lx.materialise(op), y_bar, solver, throw=False)
            failure = RESULTS.steady_singular
        ok = sol.result == lx.RESULTS.successful
        return checked(sol.value, RESULTS.where(ok, RESULTS.successful, failure),
                       True)


def dense_solve(op: lx.AbstractLinearOperator, b: PyTree[Array]) -> PyTree[Array]:
    """LU solve of `op x = b` on the materialised operator, raising if `op` is
    singular to working precision.

    Singular means: LU failed (non-finite output, lineax's `singular`), or the
    solution's amplification `‖op‖∞ ‖x‖∞ / ‖b‖∞`, a lower bound on the condition
    number, exceeds `1 / (n·eps)`.
    """
    op = lx.materialise(op)
    sol = lx.linear_solve(op, b, lx.LU(), throw=False)
    matrix = op.as_matrix()
    n = matrix.shape[0]
    eps = jnp.finfo(matrix.dtype).eps
    x_norm = max_abs(sol.value)
    b_norm = max_abs(b)
    a_norm = jnp.max(jnp.sum(jnp.abs(matrix), axis=1))
    safe_b = jnp.where(b_norm > 0, b_norm, 1)
    amplified = (b_norm > 0) & (a_norm * x_norm > safe_b / (n * eps))
    singular = (sol.result != lx.RESULTS.successful) | amplified
    result = RESULTS.where(singular, RESULTS.steady_singular, RESULTS.successful)
    return checked(sol.value, result, True)
