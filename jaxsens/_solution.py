"""The object `jaxsens.solve` returns, and the one enumeration of numerical failures."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PyTree


_VMAP_HINT = (
    " (Under `jax.vmap` this is raised if any member fails; to find which, solve "
    "with `throw=False` and read `sol.result == jaxsens.RESULTS.successful`, one "
    "boolean per member.)"
)


class RESULTS(dfx.RESULTS):  # pyright: ignore[reportGeneralTypeIssues]
    """Why a solve (or a steady-state search) stopped: every failure jaxsens reports.

    A subclass of `diffrax.RESULTS` (itself optimistix's and lineax's), so a code
    from any of them enters with `RESULTS.promote`. Raised as an error when
    `throw=True`; with `throw=False`, `sol.result` holds it.

    **Example:**

    ```python
    import jax.numpy as jnp, jaxsens
    sol = jaxsens.solve(lambda t, y, k: -k * y, jnp.array([1.0]),
                        jnp.linspace(0, 1, 3), 1.0, max_steps=2, throw=False)
    sol.result == jaxsens.RESULTS.step_budget_exhausted  # True
    ```
    """

    successful = ""
    # --- the forward solve
    step_budget_exhausted = (
        "The forward solve used all of `max_steps` before reaching `ts[-1]`, while "
        "still making steady progress. Increase `max_steps` (or loosen "
        "`rtol`/`atol`)." + _VMAP_HINT
    )
    step_size_collapsed_explicit = (
        "The forward solve stalled: its step size collapsed (most steps rejected "
        "or vanishingly small) and `max_steps` ran out. With an explicit solver "
        "this is the signature of a stiff problem: pass an implicit `solver`, "
        "e.g. `diffrax.Kvaerno5()`. (A solution that blows up in finite time, or "
        "a field that is not finite just past the point reached, does the same: "
        "check the field there.)" + _VMAP_HINT
    )
    step_size_collapsed_implicit = (
        "The forward solve stalled: its step size collapsed (most steps rejected "
        "or vanishingly small) and `max_steps` ran out, although the solver is "
        "implicit. The solution may blow up in finite time, the field may be "
        "singular or not finite just past the point reached, or the tolerances may "
        "be unreachable: check the field there, loosen `rtol`/`atol`, or raise "
        "`max_steps`." + _VMAP_HINT
    )
    step_size_collapsed_float32 = (
        "The forward solve stalled: its step size collapsed (most steps rejected "
        "or vanishingly small) and `max_steps` ran out, with an implicit solver in "
        "float32. float32 round-off defeats tight tolerances on stiff problems: "
        "solve in float64 (`jax.config.update('jax_enable_x64', True)` and a "
        "float64 `y0`) or loosen `rtol`/`atol` (to ~1e-4)." + _VMAP_HINT
    )
    field_nonfinite = (
        "The field returned NaN or inf during the forward solve, although `y0` and "
        "the parameters (`args`, arrays of the field) are finite: the state left "
        "the field's domain (e.g. `sqrt`/`log` of a state crossing zero) or blew "
        "up. The solve stopped at the first save time not reached (with "
        "`throw=False`, the rows of `sol.ys` from there on are `inf`). Guard the "
        "field (e.g. `jnp.sqrt(jnp.maximum(y, 0))`) or check the model."
        + _VMAP_HINT
    )
    args_nonfinite = (
        "The field returned NaN or inf because a parameter is not finite: `args`, "
        "or an array the field holds or closes over, contains NaN or inf. Check "
        "how the parameters were built (a previous optimiser step may have "
        "diverged)." + _VMAP_HINT
    )
    solver_failed = (
        "The solver failed inside a step (e.g. an implicit solver's nonlinear solve "
        "did not converge). Try a smaller `dt0`, tighter tolerances, or another "
        "`solver`." + _VMAP_HINT
    )
    # --- the backward pass of a continuous adjoint
    backward_max_steps_reached = (
        "The backward (adjoint) solve used all of its step budget before reaching "
        "`t0`. Increase the sensitivity's `max_steps`, loosen its `rtol`/`atol`, or "
        "use an implicit backward `solver` for stiff problems." + _VMAP_HINT
    )
    backsolve_diverged = (
        "`BacksolveAdjoint`: re-integrating `y` backwards in time diverged from the "
        "states saved on the forward pass, or could not be continued (the problem "
        "is dissipative or stiff, so `y` run backwards is unstable). The gradient "
        "would be wrong. Use `jaxsens.InterpolatingAdjoint()` (or "
        "`QuadratureAdjoint()`/`GaussAdjoint()`), which never re-integrate `y` "
        "backwards." + _VMAP_HINT
    )
    checkpoint_depth_exceeded = (
        "`InterpolatingAdjoint(checkpoints=K)`: re-solving the intervals between "
        "checkpoints did not finish. Either an interval still needed more than "
        "`segment_max_steps` steps after splitting it as often as the checkpoint "
        "stack allows (steps crowding into a short stretch, e.g. a stiff transient), "
        "or the re-solves advanced too slowly (a tiny `dt0`, or every step "
        "rejected). Raise `segment_max_steps` or `checkpoints`." + _VMAP_HINT
    )
    # --- linear systems
    expm_out_of_range = (
        "`LinearExpm`: ‖A Δt‖₁ > 3.5e5 between two save times, beyond the range "
        "of the scaling-and-squaring `expm` (16 squarings). Add intermediate save "
        "times, or use `jaxsens.KrylovExpm()`." + _VMAP_HINT
    )
    linear_nonfinite = (
        "`LinearExpm`/`KrylovExpm`: the solution is not finite although `y0` is: "
        "the matrix `A`, the forcing `b` (or the parameters they are built from) "
        "contain NaN or inf, or `A` has eigenvalues so large and positive that "
        "`expm(A Δt)` overflows. Check how `A` is built." + _VMAP_HINT
    )
    krylov_substeps_exhausted = (
        "`KrylovExpm`: a save interval needed more than `max_substeps` Krylov "
        "substeps (or the step-size control failed). Increase "
        "`KrylovExpm(max_substeps=...)` or `krylov_dim`, add save times, or loosen "
        "`tol`." + _VMAP_HINT
    )
    krylov_backward_failed = (
        "`KrylovExpm`: the backward (adjoint) Krylov stepping failed its error "
        "control, or the cotangent of `ys` is not finite (check the loss for "
        "NaN/inf). Otherwise increase `krylov_dim` or loosen `tol`." + _VMAP_HINT
    )
    # --- steady states
    newton_failed = (
        "`jaxsens.steady_state`: no steady state reached: Newton's method did not "
        "converge from `y0` (it diverged, hit non-finite values, or used all of "
        "`max_steps`). Start closer to the steady state, increase "
        "`Newton(max_steps=...)`, or use `method=jaxsens.Integrate()`, which follows "
        "the dynamics to the stable steady state they reach from `y0`. (Above 200 "
        "states Newton's steps use matrix-free GMRES, which can stall on badly "
        "conditioned Jacobians: try `Newton(linear_solver=lineax.LU())`.)"
    )
    newton_singular = (
        "`jaxsens.steady_state`: Newton's method met a singular Jacobian `f_y` "
        "during its iterations, so its step is undefined. Either the steady state is "
        "not isolated (a conservation law, e.g. species that only convert into each "
        "other, leaves a line of steady states: remove one state per conserved "
        "quantity), or an iterate passed a point where `f_y` is singular: start "
        "elsewhere or use `method=jaxsens.Integrate()`."
    )
    not_steady = (
        "`jaxsens.steady_state`: no steady state reached: integrating the ODE used "
        "all of `Integrate(max_steps=...)` before the state stopped changing "
        "(`‖f(y)‖ < atol + rtol‖y‖` never held). The system may oscillate (a limit "
        "cycle), diverge, or relax very slowly: check the dynamics, increase "
        "`max_steps`, or loosen `rtol`/`atol`. (With an explicit `solver`, the "
        "steps may be jittering on the edge of stability: use an implicit one, "
        "such as the default `diffrax.Kvaerno3()`.)"
    )
    integration_failed = (
        "`jaxsens.steady_state`: the ODE solver failed while integrating towards a "
        "steady state (non-finite values or an implicit solver's failure). The "
        "system may blow up from `y0` or leave the field's domain: start elsewhere, "
        "or pass a smaller `Integrate(dt0=...)`."
    )
    steady_singular = (
        "`jaxsens.steady_state` gradient: the Jacobian `f_y` is singular at the "
        "steady state, so the implicit function theorem does not apply (the steady "
        "state is not an isolated function of the parameters). Usually a "
        "conservation law (e.g. species that only convert into each other) leaves a "
        "whole line of steady states selected by `y0`: eliminate one state per "
        "conserved quantity, or differentiate a long `jaxsens.solve` instead."
    )
    steady_linear_solve_failed = (
        "`jaxsens.steady_state` gradient: the matrix-free linear solve of "
        "`f_yᵀ λ = ȳ` did not converge (stagnation, breakdown or step budget). `f_y` "
        "is singular or badly conditioned at the steady state. Pass "
        "`SteadyStateAdjoint(linear_solver=lineax.LU())` for a dense solve (which also "
        "says whether `f_y` is singular), or an iterative solver with a larger "
        "`max_steps`/`restart`."
    )


def as_result(result) -> RESULTS:
    """A member of `RESULTS`, from one of `RESULTS` or of a parent enumeration
    (diffrax's, optimistix's, lineax's)."""
    if result._enumeration is RESULTS:
        return result
    return RESULTS.promote(result)


def _failed(result) -> Array:
    return result != RESULTS.successful


def checked(x: PyTree, result: RESULTS, throw: bool) -> PyTree:
    """`x`, checked against `result`: with `throw`, an error carrying `result`'s
    message if it is not `successful`; without, `x` with every inexact leaf NaN
    where it failed (so that a value computed from a failed solve never looks
    valid).

    The check runs only if the returned value is used (XLA removes unused
    computations): put it on what the caller's result is computed from.
    """
    if throw:
        return result.error_if(x, _failed(result))
    failed = _failed(result)

    def poison(v):
        if eqx.is_inexact_array(v):
            return jnp.where(failed, jnp.asarray(jnp.nan, v.dtype), v)
        return v

    return jtu.tree_map(poison, x)


@jax.custom_jvp
def _scale_tangent(x, inputs, s):
    return x


@_scale_tangent.defjvp
def _scale_tangent_jvp(primals, tangents):
    x, inputs, s = primals
    tx, t_inputs, _ = tangents
    # `(s - 1)` is exactly 0 on success; on failure it carries NaN (or the check)
    # to every input's derivative, even where `ys` does not depend on it.
    link = sum(jnp.sum(t) for t in jtu.tree_leaves(t_inputs)) * (s - 1)
    return x, jtu.tree_map(lambda t: (t * s + link).astype(t.dtype), tx)


def guarded(ys: PyTree, result: RESULTS, throw: bool, inputs: PyTree = ()) -> PyTree:
    """`ys` unchanged, with its derivative checked against `result`.

    For outputs differentiated by JAX's own rules (diffrax's adjoints, `expm`):
    the tangent of `ys` becomes `ẏ s + (s - 1) Σ ẋ` with `s = checked(1, result,
    throw)`, which is `1` on success, and `ẋ` the tangents of `inputs` (the
    solve's differentiable inputs). It is linear in the tangents, so reverse mode
    transposes it, and `s`, a value every derivative needs, keeps its check alive
    in `grad`, `jit(grad)`, `jacrev`, `jacfwd`, `jvp` and `hessian` whatever the
    loss uses of `ys`. A failure raises (`throw`) or makes every derivative NaN.
    """
    leaves = [v for v in jtu.tree_leaves(ys) if eqx.is_inexact_array(v)]
    if not leaves:
        return ys
    dtype = jnp.result_type(*leaves)
    s = checked(jnp.ones((), dtype), result, throw)
    inputs = eqx.filter(inputs, eqx.is_inexact_array)
    return _scale_tangent(ys, inputs, s)


class DenseOutput(eqx.Module):
    """The forward solve's dense output (diffrax's `DenseInterpolation`), read by
    `Solution.evaluate`. `has_cost`: its state is `(y, c)` with a running cost's
    integral `c`, of which `evaluate` returns `y`."""

    interpolation: dfx.DenseInterpolation
    has_cost: bool = eqx.field(static=True, default=False)

    def evaluate(self, t) -> PyTree[Array]:
        interp = self.interpolation
        t = jnp.asarray(t)
        if t.shape != ():
            raise ValueError(
                f"`Solution.evaluate(t)` takes one scalar time, got shape {t.shape}. "
                "For several times, `jax.vmap(sol.evaluate)(times)`."
            )
        t0, t1 = interp.t0, interp.t1
        t = eqx.error_if(
            t.astype(jnp.result_type(t0)), (t < t0) | (t > t1),
            "`Solution.evaluate(t)`: `t` must lie in the solved span [t0, ts[-1]] "
            "(the dense output does not extrapolate).",
        )
        y = interp.evaluate(t)
        return y[0] if self.has_cost else y


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
        `throw=False` and the solve failed. With `throw=False` a failed solve's
        contribution to any derivative is NaN (never a finite number); under
        `vmap`, mask per member: `jnp.where(sol.result == RESULTS.successful, g, 0)`
        on the per-member gradients `g` of a `vmap(grad(...))`.
    - `sensitivity`: the sensitivity method that was actually used (useful with
        `Auto()`).
    - `event_time`, `event_state`, `event_happened`: with `solve(..., event=...)`,
        the time and state of the first event (the end of the span and the final
        state if none happened) and whether one happened; `None` without `event`.
    - `cost`: with `solve(..., running_cost=g)`, `∫ g(t, y(t), args) dt` from `t0`
        to `ts[-1]` (to the event time with `event=`), differentiable by the
        chosen method; `None` without `running_cost`.
    - `evaluate(t)`: with `solve(..., dense=True)`, the state at any time `t` in
        `[t0, ts[-1]]` (a scalar; `jax.vmap` it over several), structured like
        `y0`: the solver's own interpolation between its steps, differentiable by
        `Discrete` (through diffrax) and by `Forward` (the sensitivities' own
        interpolation), w.r.t. `t` too. Without `dense=True` it raises.

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
    event_time: Float[Array, ""] | None = None
    event_state: PyTree[Array] | None = None
    event_happened: Bool[Array, ""] | None = None
    cost: Float[Array, ""] | None = None
    dense_output: DenseOutput | None = None

    def evaluate(self, t: Float[ArrayLike, ""]) -> PyTree[Array]:
        """The solution at time `t` (a scalar in `[t0, ts[-1]]`), from the forward
        solve's dense output: needs `jaxsens.solve(..., dense=True)`."""
        if self.dense_output is None:
            raise ValueError(
                "`Solution.evaluate(t)` needs the dense output: solve with "
                "`jaxsens.solve(..., dense=True)` (`sensitivity=jaxsens.Discrete()`, "
                "the default there, or `jaxsens.Forward()`)."
            )
        return self.dense_output.evaluate(t)
