import diffrax as dfx
import equinox as eqx

from ._backward_integral import GaussPerStep
from ._backward_recovery import Interpolate
from .base import AbstractAdjoint


class GaussAdjoint(AbstractAdjoint):
    """Continuous adjoint with the parameter integral done by Gauss–Legendre
    quadrature on every backward step (SciMLSensitivity's default `GaussAdjoint`).

    Only `λ` is integrated backwards (`y` interpolated from the forward pass), so
    the backward state is the size of `y` whatever the number of parameters. After
    each accepted backward step, `∫ λᵀ f_θ dt` over that step is added using
    `nodes` Gauss–Legendre points on the step's own dense interpolant: one vjp of
    the field batched over the nodes, no dense storage of `λ`. With many
    parameters this spends fewer parameter vjps than discrete backprop (one
    batched vjp per step against one per stage); `QuadratureAdjoint` does the same
    integral over stored nodes, in larger batches.

    The forward dense output is kept for at most `dense_steps` steps (default:
    what fits in 2 MiB, 32 to 256 steps); a solve that needs more is solved again
    without it and its `y` re-solved from checkpoints at the save times, so memory
    does not grow with `max_steps` or with the steps taken.

    **Arguments:** `solver`, `rtol`, `atol`, `max_steps` of the backward solve
    (default: the forward's); `nodes`, the Gauss–Legendre points per step;
    `dense_steps`, the forward steps whose dense output is kept.

    Cites: SciMLSensitivity.jl `GaussAdjoint`; Kidger 2021, "On neural differential
    equations", §5.

    **Example:**

    ```python
    import jax, jax.numpy as jnp, jaxsens
    ts = jnp.linspace(0.0, 1.0, 5)
    loss = lambda k: jnp.sum(jaxsens.solve(lambda t, y, k: -k * y, jnp.array([1.0]),
                             ts, k, sensitivity=jaxsens.GaussAdjoint()).ys)
    jax.grad(loss)(2.0)
    ```
    """

    solver: dfx.AbstractSolver | None = None
    rtol: float | None = None
    atol: float | None = None
    max_steps: int | None = None
    nodes: int = eqx.field(static=True, default=3)
    dense_steps: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if not isinstance(self.nodes, int) or self.nodes < 1:
            raise ValueError(f"`nodes` must be a positive int, got {self.nodes!r}.")
        _check_dense_steps(self.dense_steps)

    def strategies(self, problem):
        return Interpolate(self.dense_steps), GaussPerStep(self.nodes), True


def _check_dense_steps(n):
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"`dense_steps` must be a positive int or None, got {n!r}.")
