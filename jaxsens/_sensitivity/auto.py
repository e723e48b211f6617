import equinox as eqx
import jax.tree_util as jtu
import numpy as np

from .base import AbstractSensitivity, SolveOptions
from .forward import Forward
from .interpolating import InterpolatingAdjoint


def count_sizes(field, y0, args) -> tuple[int, int]:
    """`(n, p)`: state size and number of trainable scalars (field leaves + args)."""
    n = sum(int(np.size(x)) for x in jtu.tree_leaves(y0))
    params = eqx.filter((field, args), eqx.is_inexact_array)
    p = sum(int(np.size(x)) for x in jtu.tree_leaves(params))
    return n, p


class Auto(AbstractSensitivity):
    """Let jaxsens choose the sensitivity method.

    The rule (decided at trace time from sizes, so it costs nothing at run time):
    `Forward()` when the state size plus the number of trainable parameters
    `n + p ≤ forward_threshold` (forward sensitivities carry one tangent per input,
    which is cheap when they are few — the classic crossover is near 100), else
    `InterpolatingAdjoint()` (cost independent of `p`, stable on dissipative
    problems). `p` counts the inexact-array leaves of a Module field and of `args`;
    arrays a plain-function field closes over are not counted.

    **Example:**

    ```python
    import jax.numpy as jnp, jaxsens
    sol = jaxsens.solve(lambda t, y, k: -k * y, jnp.array([1.0]), jnp.linspace(0, 1, 3),
                        2.0, sensitivity=jaxsens.Auto())
    sol.sensitivity  # Forward()
    ```
    """

    forward_threshold: int = 100

    def choose(self, field, y0, ts, args) -> AbstractSensitivity:
        # Linear systems (issue 3) are never time-stepped: exact `expm` up to
        # n = 2000 (O(n³), measured in bench/bench_linear.py), Krylov expm-actions
        # above that or when `A` is only available as a matvec.
        from .._linear_field import LinearField
        from .krylov import KrylovExpm
        from .linear import LinearExpm

        if isinstance(field, LinearField):
            n_state = sum(int(np.size(x)) for x in jtu.tree_leaves(y0))
            if n_state > 2000 or field.is_matrix_free(args):
                return KrylovExpm()
            return LinearExpm()
        n, p = count_sizes(field, y0, args)
        if n + p <= self.forward_threshold:
            return Forward()
        return InterpolatingAdjoint()

    def solve(self, field, y0, ts, args, options: SolveOptions):
        return self.choose(field, y0, ts, args).solve(field, y0, ts, args, options)
