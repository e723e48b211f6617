"""The object `jaxsens.solve` returns, and the messages of numerical failures."""

import equinox as eqx
from jaxtyping import Array, Float, Int, PyTree


class RESULTS(eqx.Enumeration):
    """Why a solve stopped. Raised as an error when `solve(..., throw=True)`."""

    successful = ""
    max_steps_reached = (
        "The forward solve used all of `max_steps` before reaching `ts[-1]`. "
        "Increase `max_steps`, loosen `rtol`/`atol`, or pass an implicit `solver` "
        "(e.g. `diffrax.Kvaerno5()`) if the problem is stiff."
    )
    backward_max_steps_reached = (
        "The backward (adjoint) solve used all of its step budget before reaching "
        "`t0`. Increase the sensitivity's `max_steps`, loosen its `rtol`/`atol`, or "
        "use an implicit backward `solver` for stiff problems."
    )
    backsolve_diverged = (
        "`BacksolveAdjoint`: re-integrating `y` backwards in time diverged from the "
        "states saved on the forward pass, or could not be continued (the problem "
        "is dissipative or stiff, so `y` run backwards is unstable). The gradient "
        "would be wrong. Use "
        "`jaxsens.InterpolatingAdjoint()` (or `QuadratureAdjoint()`/"
        "`GaussAdjoint()`), which never re-integrate `y` backwards."
    )
    checkpoint_depth_exceeded = (
        "`InterpolatingAdjoint(checkpoints=K)`: re-solving the intervals between "
        "checkpoints did not finish. Either an interval still needed more than "
        "`segment_max_steps` steps after splitting it as often as the checkpoint "
        "stack allows (steps crowding into a short stretch, e.g. a stiff transient), "
        "or the re-solves advanced too slowly (a tiny `dt0`, or every step "
        "rejected). Raise `segment_max_steps` or `checkpoints`."
    )
    solver_failed = (
        "The solver failed inside a step (e.g. an implicit solver's nonlinear solve "
        "did not converge). Try a smaller `dt0`, tighter tolerances, or another "
        "`solver`."
    )


class Solution(eqx.Module):
    """The result of [`jaxsens.solve`][].

    **Attributes:**

    - `ts`: the save times, as passed in.
    - `ys`: the solution at `ts`; the same PyTree structure as `y0`, each leaf with
        a leading axis of length `len(ts)`. Differentiable by the chosen method.
    - `stats`: a dict of step counts: `num_steps`, `num_accepted_steps` and
        `num_rejected_steps` of the forward solve (diffrax's counts, `-1` where a
        method does not step in time).
    - `result`: a [`jaxsens.RESULTS`][] member; `RESULTS.successful` unless
        `throw=False` and the solve failed.
    - `sensitivity`: the sensitivity method that was actually used (useful with
        `Auto()`).

    **Example:**

    ```python
    import jax.numpy as jnp, jaxsens
    sol = jaxsens.solve(lambda t, y, a: -a * y, jnp.array(1.0), jnp.linspace(0, 1, 3), 2.0)
    sol.ys  # ≈ exp(-2 t)
    ```
    """

    ts: Float[Array, " times"]
    ys: PyTree[Array]
    stats: dict[str, Int[Array, ""]]
    result: RESULTS
    sensitivity: object = eqx.field(static=True)
