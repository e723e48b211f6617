import diffrax as dfx
import equinox as eqx

from ._backward_integral import GaussPerStep, InState
from ._backward_recovery import Interpolate, Resolve
from .base import AbstractAdjoint


class InterpolatingAdjoint(AbstractAdjoint):
    """Continuous adjoint with `y(t)` interpolated from the forward pass.

    The backward pass integrates `λ' = -f_yᵀλ` in one adaptive loop over the whole
    span, adding each save time's cotangent to `λ` on arrival; `y(t)` comes from
    the forward solve's dense output (no backward re-integration, so it is stable
    on dissipative problems, unlike `BacksolveAdjoint`). The dense output is kept
    for a bounded number of steps, as `GaussAdjoint`'s.

    With `checkpoints=K` no dense output is stored: `K + 1` evenly spread entries
    of `(t0, y0), (ts[i], ys[i])` serve as checkpoints (SciMLSensitivity also
    checkpoints at the save times). The backward pass re-solves `y` forward over
    each interval between them, with a dense output of at most
    `segment_max_steps` steps, just before integrating the adjoint over it. An
    interval that needs more steps is split into `K` parts (recursively, as in
    revolve-style checkpointing), the parts' start states found by re-solving.
    Memory is `O(K·log(max_steps)·n)` states plus one dense output of
    `segment_max_steps` steps: flat in the number of steps taken. Time: one more
    forward solve per level of splitting (none when each interval fits).

    With `seminorm=True` (default) `μ` is left out of the error control, and then
    out of the backward state: `∫ f_θᵀλ dt` is taken by Gauss–Legendre
    quadrature on every backward step, so the state is the size of `y` whatever
    the number of parameters (an implicit backward solver then factorises `n × n`,
    not `(n + p) × (n + p)`). `seminorm=False` integrates `μ` in the state, under
    the error control: fine for a few parameters, slow for many.

    **Arguments:**

    - `checkpoints`: `None` (keep the forward dense output) or the number `K` of
        intervals to re-solve.
    - `solver`, `rtol`, `atol`: the backward solve's (default: the forward's).
    - `seminorm`: leave `μ` out of the backward error control (Kidger, Chen & Lyons
        2021).
    - `max_steps`: the backward step budget (default: twice the forward's plus
        `len(ts)`).
    - `segment_max_steps`: with checkpoints, the most steps one re-solve keeps as
        dense output (default: what fits in 128 KiB, between 32 and 256 steps;
        e.g. 113 for 16 float64 states with `Tsit5`); longer intervals are
        split.
    - `dense_steps`: without checkpoints, as `GaussAdjoint`'s.

    Cites: Chen et al. 2018 (neural ODEs); Cao, Li, Petzold & Serban 2003
    (adjoint sensitivity for DAEs); SciMLSensitivity's `InterpolatingAdjoint`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp, jaxsens
    ts = jnp.linspace(0.0, 1.0, 5)
    loss = lambda k: jnp.sum(jaxsens.solve(lambda t, y, k: -k * y, jnp.array([1.0]),
                             ts, k, sensitivity=jaxsens.InterpolatingAdjoint()).ys)
    jax.grad(loss)(2.0)
    ```
    """

    checkpoints: int | None = eqx.field(static=True, default=None)
    solver: dfx.AbstractSolver | None = None
    rtol: float | None = None
    atol: float | None = None
    seminorm: bool = eqx.field(static=True, default=True)
    max_steps: int | None = None
    segment_max_steps: int | None = eqx.field(static=True, default=None)
    dense_steps: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if self.checkpoints is not None and (
            not isinstance(self.checkpoints, int) or self.checkpoints < 1
        ):
            raise ValueError(
                "`InterpolatingAdjoint(checkpoints=...)` must be a positive int "
                f"(the number of re-solved intervals) or None, got {self.checkpoints!r}."
            )

    def strategies(self, problem):
        if self.checkpoints is None:
            recovery = Interpolate(self.dense_steps)
        else:
            recovery = Resolve(self.checkpoints, self.segment_max_steps)
        integral = GaussPerStep() if self.seminorm else InState()
        return recovery, integral, self.seminorm
