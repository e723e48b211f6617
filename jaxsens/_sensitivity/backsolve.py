import diffrax as dfx
import equinox as eqx

from ._backward_integral import GaussPerStep, InState
from ._backward_recovery import Reintegrate
from .base import AbstractAdjoint


class BacksolveAdjoint(AbstractAdjoint):
    """Continuous adjoint that re-integrates `y` backwards together with `λ`.

    Cheapest in memory (nothing but the saved outputs is stored), but the backward
    problem `y' = f` run from `t_N` to `t0` is unstable wherever the forward one is
    dissipative: errors grow like the forward problem's decay rate. jaxsens guards
    against the silently wrong gradient that results: at every save time the
    re-integrated `y` is compared with the forward pass's saved state and reset to
    it (as SciMLSensitivity does); if the drift exceeds `max_drift` (measured in
    units of `atol + rtol·|y|`) or is not finite, an error is raised that names
    `InterpolatingAdjoint` as the fix. Prefer `InterpolatingAdjoint` unless memory is
    the binding constraint.

    With `seminorm=True` (default) the parameter adjoint `μ` is left out of the
    backward error control, and then out of the backward state altogether: `∫
    f_θᵀλ dt` is taken by Gauss–Legendre quadrature on every backward step (as
    `GaussAdjoint`), so the state is `(y, λ)` whatever the number of parameters.
    `seminorm=False` integrates `μ` in the state, under the error control.

    **Arguments:**

    - `solver`, `rtol`, `atol`, `max_steps`: the backward solve's (default: the
        forward's).
    - `seminorm`: leave `μ` out of the backward error control (Kidger, Chen & Lyons
        2021).
    - `max_drift`: the largest drift of the re-integrated state, in error-scale
        units, accepted at a save time.

    Cites: Chen, Rubanova, Bettencourt & Duvenaud 2018 (neural ODEs);
    SciMLSensitivity's `BacksolveAdjoint` with `checkpointing=true`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp, jaxsens
    ts = jnp.linspace(0.0, 1.0, 5)
    loss = lambda k: jnp.sum(jaxsens.solve(lambda t, y, k: k * jnp.sin(y), jnp.array([1.0]),
                             ts, k, sensitivity=jaxsens.BacksolveAdjoint()).ys)
    jax.grad(loss)(0.5)
    ```
    """

    solver: dfx.AbstractSolver | None = None
    rtol: float | None = None
    atol: float | None = None
    seminorm: bool = eqx.field(static=True, default=True)
    max_steps: int | None = None
    max_drift: float = 1e3

    def strategies(self, problem):
        integral = GaussPerStep() if self.seminorm else InState()
        return Reintegrate(self.max_drift), integral, self.seminorm
