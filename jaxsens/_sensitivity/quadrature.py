import diffrax as dfx
import equinox as eqx

from ._backward_integral import StoredNodes
from ._backward_recovery import Interpolate
from .base import AbstractAdjoint


class QuadratureAdjoint(AbstractAdjoint):
    """Continuous adjoint: `λ` backwards only, then `∂L/∂θ = ∫ λᵀ f_θ dt` by
    Gauss–Legendre quadrature in large batches (SciMLSensitivity's
    `QuadratureAdjoint`).

    The backward pass integrates only `λ' = -f_yᵀλ` (state the size of `y`; `y`
    interpolated from the forward pass) and keeps, for every backward step, `λ`
    (from the step's own interpolant) and `y` at its `nodes` Gauss–Legendre
    points. The parameter integral is then evaluated over the stored nodes,
    `chunk` steps × `nodes` nodes per vjp of the node-batched field — the most
    parallel way to spend the parameter vjps. The store holds `store_steps`
    backward steps: a longer pass empties it whenever it is full, so memory does
    not grow with the number of steps. Forward dense output as `GaussAdjoint`'s.

    **Arguments:** `solver`, `rtol`, `atol`, `max_steps` of the backward solve
    (default: the forward's solver and tolerances, twice its step budget plus
    `len(ts)`); `nodes`, Gauss–Legendre points per backward step; `chunk`,
    backward steps per batched vjp (default: as many as move about 1 MiB of
    nodes, cotangents and parameter cotangents, at most 32); `store_steps`,
    backward steps per store (default: about 4 MiB of nodes, at most 256);
    `dense_steps`, as `GaussAdjoint`'s.

    Cites: SciMLSensitivity.jl `QuadratureAdjoint`; Cao, Li, Petzold & Serban 2003.

    **Example:**

    ```python
    import jax, jax.numpy as jnp, jaxsens
    ts = jnp.linspace(0.0, 1.0, 5)
    loss = lambda k: jnp.sum(jaxsens.solve(lambda t, y, k: -k * y, jnp.array([1.0]),
                             ts, k, sensitivity=jaxsens.QuadratureAdjoint()).ys)
    jax.grad(loss)(2.0)
    ```
    """

    solver: dfx.AbstractSolver | None = None
    rtol: float | None = None
    atol: float | None = None
    max_steps: int | None = None
    nodes: int = eqx.field(static=True, default=3)
    chunk: int | None = eqx.field(static=True, default=None)
    store_steps: int | None = eqx.field(static=True, default=None)
    dense_steps: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        for name in ("nodes", "chunk", "store_steps"):
            v = getattr(self, name)
            if (v is not None or name == "nodes") and (not isinstance(v, int) or v < 1):
                raise ValueError(
                    f"`{name}` must be a positive int"
                    + ("" if name == "nodes" else " or None") + f", got {v!r}.")
        if self.dense_steps is not None and (
                not isinstance(self.dense_steps, int) or self.dense_steps < 1):
            raise ValueError(
                f"`dense_steps` must be a positive int or None, got {self.dense_steps!r}.")

    def strategies(self, problem):
        integral = StoredNodes(self.nodes, self.chunk, self.store_steps)
        return Interpolate(self.dense_steps), integral, True
