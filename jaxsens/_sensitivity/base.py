"""The sensitivity interface and the continuous-adjoint contract.

Every method is an `AbstractSensitivity`. The continuous adjoints share one
`custom_vjp` (below): the forward pass is a diffrax solve, the backward pass
receives the cotangents `ȳ_k = ∂L/∂y(t_k)` of every save time and integrates

    λ' = -f_yᵀ λ,   μ' = -f_θᵀ λ       backwards from t_N to t0,
    λ(t_k) += ȳ_k                       at every save time,

returning `∂L/∂y0 = λ(t0)` and `∂L/∂θ = μ(t0)`, where θ is every trainable leaf of
the field and of `args`. Subclasses only say how `y(t)` is recovered on the way
back and how `μ` is accumulated.
"""

import abc
import dataclasses
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, PyTree

from .._solution import RESULTS, as_result, checked, guarded
from ._options import SolveOptions


class AbstractSensitivity(eqx.Module):
    """How the gradient of `jaxsens.solve` is computed.

    Subclasses implement `solve`, a forward solve whose output is differentiable
    by that method.
    """

    @abc.abstractmethod
    def solve(
        self, field, y0: PyTree[Array], ts: Array, args: Any, options: SolveOptions
    ) -> tuple[PyTree[Array], dict[str, Array], Array]:
        """Returns `(ys, stats, result)` with `ys` differentiable by this method."""

    def chosen(
        self, field, y0, ts, args, options: SolveOptions
    ) -> "AbstractSensitivity":
        """The method `jaxsens.solve` runs for these arguments: this one (`Auto`
        picks another)."""
        del field, y0, ts, args, options
        return self


def rms_norm(tree) -> Array:
    """The RMS over every entry of `tree` (0 for an empty one)."""
    leaves = [jnp.ravel(x) for x in jtu.tree_leaves(tree)]
    if not leaves:
        return jnp.array(0.0)
    return jnp.sqrt(jnp.mean(jnp.abs(jnp.concatenate(leaves)) ** 2))


def cost_norm(tree) -> Array:
    """The error norm of a state `(y, c)` carrying a running cost's integral `c`:
    the larger of the two parts' RMS. Never smaller than the RMS over `y` alone,
    so `y`'s steps are controlled at least as tightly as without the cost (an RMS
    over both would dilute `y`'s error by the extra entry)."""
    y, c = tree
    return jnp.maximum(rms_norm(y), rms_norm(c))


def state_norm(options: SolveOptions):
    """The forward solve's error norm for `options`' state: `cost_norm` when it
    carries a running cost, else `None` (diffrax's RMS over the state)."""
    return cost_norm if options.running_cost else None


def make_controller(solver, rtol, atol, dt0, norm=None, jump_ts=None):
    """diffrax's PID controller for adaptive solvers, constant steps otherwise.

    `jump_ts` (sorted, or `None`): diffrax steps to just before and resumes just
    after each of them (`PIDController(jump_ts=...)` is diffrax's
    `ClipStepSizeController` around the PID controller), re-evaluating the field
    there."""
    if isinstance(solver, dfx.AbstractAdaptiveSolver):
        kwargs = {} if norm is None else {"norm": norm}
        if jump_ts is not None:
            kwargs["jump_ts"] = jump_ts
        return dfx.PIDController(rtol=rtol, atol=atol, **kwargs)
    if jump_ts is not None:
        raise ValueError(
            f"`jump_ts`: `solver={type(solver).__name__}()` has no error estimate, "
            "so it takes constant steps of `dt0` and cannot step to given times. "
            "Use an adaptive solver such as `diffrax.Tsit5()`, or leave `jump_ts` "
            "out (pass `jump_ts=[]` to skip a `jaxsens.Control`'s knots)."
        )
    if dt0 is None:
        raise ValueError(
            f"`solver={type(solver).__name__}()` has no error estimate, so it takes "
            "constant steps: pass `dt0=` (the step size), or use an adaptive solver "
            "such as `diffrax.Tsit5()`."
        )
    return dfx.ConstantStepSize()


def forward_controller(options: SolveOptions, norm=None):
    """The step-size controller of every forward diffrax solve: the user's
    (`options.controller`, with `options.jump_ts` put back and `norm`, where a
    method needs its own error norm, replacing diffrax's default one), else
    `make_controller`'s."""
    user = options.controller
    if user is None:
        return make_controller(options.solver, options.rtol, options.atol,
                               options.dt0, norm, options.jump_ts)
    inner = user.controller if isinstance(user, dfx.ClipStepSizeController) else user
    if norm is not None and isinstance(inner, dfx.PIDController):
        if inner.norm is not _DEFAULT_NORM:
            raise ValueError(
                "`stepsize_controller`: this solve needs its own error norm (a "
                "running cost's, or `Forward`'s norm over the state without its "
                "sensitivities), so the `PIDController`'s custom `norm` cannot be "
                "used. Leave `norm` at diffrax's default, or use another "
                "`sensitivity`/no `running_cost`."
            )
        inner = dataclasses.replace(inner, norm=norm)
    if isinstance(user, dfx.ClipStepSizeController):
        return eqx.tree_at(lambda c: (c.controller, c.jump_ts), user,
                           (inner, options.jump_ts), is_leaf=lambda x: x is None)
    if options.jump_ts is not None:
        return dfx.ClipStepSizeController(inner, jump_ts=options.jump_ts)
    return inner


_DEFAULT_NORM = dfx.PIDController(rtol=1.0, atol=1.0).norm


def diffrax_solve(field, y0, ts, args, options, *, adjoint, dense=False, t0=None,
                  saveat=None, max_steps=None, norm=None):
    """The forward solve every method shares: diffrax, saving at `ts` (`norm`: the
    step-size controller's error norm, default diffrax's RMS over all of `y0`).

    The returned diffrax solution's `result` is a `jaxsens.RESULTS` member that
    names the cause of a failure (see `diagnose`), not diffrax's code.
    """
    t0 = options.t0 if t0 is None else t0
    diagnosed = saveat is None
    if diagnosed:
        # The final state too, reached or not: what `diagnose` looks at.
        saveat = dfx.SaveAt(
            subs=[dfx.SubSaveAt(ts=ts), dfx.SubSaveAt(t1=True)], dense=dense
        )
    max_steps = options.max_steps if max_steps is None else max_steps
    norm = state_norm(options) if norm is None else norm
    sol = dfx.diffeqsolve(
        dfx.ODETerm(field),
        options.solver,
        t0,
        ts[-1],
        options.dt0,
        y0,
        args=args,
        saveat=saveat,
        stepsize_controller=forward_controller(options, norm),
        max_steps=max_steps,
        progress_meter=(dfx.NoProgressMeter() if options.progress_meter is None
                        else options.progress_meter),
        adjoint=adjoint,
        throw=False,
    )
    if not diagnosed:
        return eqx.tree_at(lambda s: s.result, sol, as_result(sol.result))
    (ts_out, t_end), (ys, y_end) = sol.ts, sol.ys
    y_end = jtu.tree_map(lambda y: y[0], y_end)
    result = diagnose(sol.result, sol.stats, field, args, options.solver, t0,
                      ts[-1], t_end[0], y_end)
    return eqx.tree_at(lambda s: (s.ts, s.ys, s.result), sol, (ts_out, ys, result))


def discrete_solve(field, y0, ts, args, options, adjoint, *, dense=False):
    """`(ys, stats, result, interpolation)`: the forward solve differentiated by
    diffrax's own `adjoint` (`Discrete`'s), its output and derivative checked
    against the result; `interpolation` is diffrax's dense output with `dense`,
    else `None`."""
    problem = as_problem(field, y0, ts, args, options)
    sol = diffrax_solve(problem.field, y0, ts, problem.args, options,
                        adjoint=adjoint, dense=dense)
    inputs = (problem.diff, y0, ts, options.t0)
    coeffs, rest = eqx.partition(sol.interpolation, eqx.is_inexact_array)
    ys, coeffs = guarded((sol.ys, coeffs), sol.result, options.throw, inputs)
    if options.throw:
        ys, coeffs = checked((ys, coeffs), sol.result, True)
    return ys, stats_of(sol), sol.result, eqx.combine(coeffs, rest)


# At least this many steps, a quarter of them rejected: the step size collapsed.
_COLLAPSE_MIN_STEPS = 64
_COLLAPSE_REJECTED = 0.25


def diagnose(result, stats, field, args, solver, t0, t1, t_end, y_end) -> RESULTS:
    """diffrax's `result`, with "used all of `max_steps`" refined into its cause.

    From the final state `(t_end, y_end)` of the solve and its step counts: a
    parameter (`args`, the field's arrays) not finite; the field not finite at
    the final state or one explicit-Euler probe past it (a state leaving the
    field's domain); the step size collapsed (at least `_COLLAPSE_MIN_STEPS`
    steps, more than `_COLLAPSE_REJECTED` of them rejected: stiffness with an
    explicit solver, float32 round-off with an implicit one, or a blow-up);
    else the budget ran out while progressing.
    """
    result = as_result(result)
    y_end = jax.lax.stop_gradient(y_end)
    t_end = jax.lax.stop_gradient(t_end)
    f_end = field(t_end, y_end, args)
    h = 1e-3 * jnp.abs(t1 - t_end) + jnp.finfo(jnp.result_type(t_end)).eps
    y_probe = jtu.tree_map(lambda y, f: y + (h * f).astype(y.dtype), y_end, f_end)
    f_probe = field(t_end + h, y_probe, args)
    field_ok = all_finite((y_end, f_end, f_probe))
    params_ok = all_finite(eqx.filter((field, args), eqx.is_inexact_array))
    steps = stats["num_steps"]
    collapsed = (steps >= _COLLAPSE_MIN_STEPS) & (
        stats["num_rejected_steps"] > _COLLAPSE_REJECTED * steps
    )
    if not isinstance(solver, dfx.AbstractImplicitSolver):
        stalled = RESULTS.step_size_collapsed_explicit
    elif jnp.finfo(jnp.result_type(*jtu.tree_leaves(y_end))).bits <= 32:
        stalled = RESULTS.step_size_collapsed_float32
    else:
        stalled = RESULTS.step_size_collapsed_implicit
    cause = RESULTS.where(
        ~params_ok,
        RESULTS.args_nonfinite,
        RESULTS.where(
            ~field_ok,
            RESULTS.field_nonfinite,
            RESULTS.where(collapsed, stalled, RESULTS.step_budget_exhausted),
        ),
    )
    return RESULTS.where(result == RESULTS.max_steps_reached, cause, result)


def diffrax_result(result) -> RESULTS:
    """A `jaxsens.RESULTS` member for a diffrax result code (or a member already)."""
    return as_result(result)


def as_arrays(tree):
    """Every leaf as a JAX array (custom rules may receive Python scalars, or
    array-like wrappers of them, outside `jit`)."""
    return jtu.tree_map(jnp.asarray, tree)


def tree_size(tree) -> int:
    return sum(int(np.size(x)) for x in jtu.tree_leaves(tree))


def all_finite(tree) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jtu.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def max_abs(tree) -> Array:
    return jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in jtu.tree_leaves(tree)]))


def tree_dot(a, b) -> Array:
    """`Σ aᵢ bᵢ` over every leaf of two PyTrees shaped alike (real parts)."""
    terms = [jnp.sum(jnp.real(x * y)) for x, y in
             zip(jtu.tree_leaves(a), jtu.tree_leaves(b), strict=True)]
    return sum(terms)


def stats_of(sol) -> dict[str, Array]:
    return {
        "num_steps": jnp.asarray(sol.stats["num_steps"]),
        "num_accepted_steps": jnp.asarray(sol.stats["num_accepted_steps"]),
        "num_rejected_steps": jnp.asarray(sol.stats["num_rejected_steps"]),
    }


class Problem(eqx.Module):
    """One solve, with the trainable leaves (`diff`) split from everything else.

    `field` has been closure-converted, so every array it closes over (including
    tracers from an enclosing `jit`/`grad`) is a leaf of `diff` or `static`.
    """

    diff: PyTree
    static: PyTree
    y0: PyTree[Array]
    ts: Array
    options: SolveOptions

    def f(self, t, y, diff=None):
        field, args = eqx.combine(self.diff if diff is None else diff, self.static)
        return field(t, y, args)

    @property
    def field(self):
        return eqx.combine(self.diff, self.static)[0]

    @property
    def args(self):
        return eqx.combine(self.diff, self.static)[1]


def float_args_as_arrays(args):
    """Python floats in `args` become arrays, so they are traced (and trainable)
    the same way in every solve; ints stay static (they may set shapes)."""
    return jtu.tree_map(
        lambda x: jnp.asarray(x) if isinstance(x, (float, complex)) else x, args
    )


def as_problem(field, y0, ts, args, options) -> Problem:
    args = float_args_as_arrays(args)
    # Closure conversion makes arrays closed over by a plain function (or hidden in
    # a Module) explicit leaves, so the custom_vjp can return their cotangents.
    field = eqx.filter_closure_convert(field, options.t0, y0, args)
    diff, static = eqx.partition((field, args), eqx.is_inexact_array)
    return Problem(diff, static, y0, ts, options)


def zeros_like_ct(ct, like):
    """Replace missing (`None`) cotangents by zeros shaped like `like`."""
    return jtu.tree_map(
        lambda c, x: jnp.zeros_like(x) if c is None else c,
        ct,
        like,
        is_leaf=lambda c: c is None,
    )


class AbstractAdjoint(AbstractSensitivity):
    """A continuous adjoint: the contract in this module's docstring.

    A subclass declares its backward solver settings and `strategies`: how `y(t)`
    is had on the way back and how `∂L/∂θ` is accumulated (`_backward.py`). The
    forward solve is the y recovery's; the backward pass is one `BackwardPass` of
    the two.
    """

    solver: eqx.AbstractVar[dfx.AbstractSolver | None]
    rtol: eqx.AbstractVar[float | None]
    atol: eqx.AbstractVar[float | None]
    max_steps: eqx.AbstractVar[int | None]

    @abc.abstractmethod
    def strategies(self, problem: "Problem"):
        """`(recovery, integral, seminorm)`: an `AbstractRecovery`, an
        `AbstractIntegral`, and whether the error norm leaves `μ` out."""

    def forward(self, problem: "Problem") -> tuple[PyTree, dict, Array, PyTree]:
        """Returns `(ys, stats, result, residuals)`."""
        recovery, _, _ = self.strategies(problem)
        return recovery.forward(problem)

    def backward(self, problem: "Problem", residuals: PyTree, ys_bar: PyTree):
        """Returns `(diff_bar, y0_bar, result)`: cotangents of the trainable leaves
        and of `y0` (exactly `λ(t0)`), and the backward pass's `RESULTS` member,
        not checked here."""
        from ._backward import BackwardPass

        recovery, integral, seminorm = self.strategies(problem)
        solver, rtol, atol, max_steps = self.backward_settings(problem)
        _check_implicit_precision(type(self).__name__, solver, rtol, problem.y0)
        bp = BackwardPass(problem, ys_bar, recovery, integral, solver, rtol, atol,
                          max_steps, seminorm)
        return bp.run(residuals)

    def backward_settings(self, problem: "Problem"):
        """The backward solve's solver, tolerances and step budget."""
        opts = problem.options
        solver = opts.solver if self.solver is None else self.solver
        rtol = opts.rtol if self.rtol is None else self.rtol
        atol = opts.atol if self.atol is None else self.atol
        # The backward pass stops at every save time, every jump time (twice:
        # the jump and just past it) and (interpolating methods) every forward
        # step, on top of the steps λ itself needs.
        jumps = 0 if opts.jump_ts is None else 2 * int(opts.jump_ts.shape[0])
        default = 2 * opts.max_steps + int(problem.ts.shape[0]) + jumps
        max_steps = default if self.max_steps is None else self.max_steps
        return solver, rtol, atol, max_steps

    def solve(self, field, y0, ts, args, options):
        problem = as_problem(field, y0, ts, args, options)
        return _adjoint_solve(
            (problem.diff, y0, ts, options.t0), problem.static, self, options.at(None)
        )


def time_cotangents(problem: Problem, ys, ys_bar, y0_bar, perturbed_ts, perturbed_t0):
    """`(t̄s, t̄0)`: `t̄_k = f(t_k, y_k)ᵀ ȳ_k` for the save times and
    `t̄0 = −λ(t0)ᵀ f(t0, y0)` for the start time (`λ(t0) = y0_bar`); zeros for an
    input that is not perturbed (nothing is evaluated for it)."""
    ts, t0 = problem.ts, problem.options.t0
    if perturbed_ts:
        def one(t, y, c):
            return tree_dot(problem.f(t, y), c)

        ts_bar = jax.vmap(one)(ts, ys, ys_bar).astype(ts.dtype)
    else:
        ts_bar = jnp.zeros_like(ts)
    if perturbed_t0:
        t0_bar = -tree_dot(problem.f(t0, problem.y0), y0_bar).astype(t0.dtype)
    else:
        t0_bar = jnp.zeros_like(t0)
    return ts_bar, t0_bar


def _forward(vjp_arg, static, adjoint, options):
    diff, y0, ts, t0 = as_arrays(vjp_arg)
    problem = Problem(diff, static, y0, ts, options.at(t0))
    ys, stats, result, residuals = adjoint.forward(problem)
    result = as_result(result)
    if options.throw:
        ys = checked(ys, result, True)
    return (ys, stats, result), (result, ys, residuals)


# Below this backward `rtol`, a float32 implicit backward solve of a stiff
# problem cannot converge: the roundoff of `f_yᵀλ` (large terms that cancel)
# exceeds the tolerance its Newton iterations must meet.
IMPLICIT_FLOAT32_RTOL = 1e-3


def wider_than_float32(y0) -> bool:
    """Whether any floating leaf of `y0` is wider than 32 bits (float64)."""
    return any(jnp.finfo(jnp.result_type(x)).bits > 32 for x in jtu.tree_leaves(y0)
               if jnp.issubdtype(jnp.result_type(x), jnp.inexact))


def _check_implicit_precision(name, solver, rtol, y0):
    if not isinstance(solver, dfx.AbstractImplicitSolver):
        return
    if not jtu.tree_leaves(y0) or wider_than_float32(y0):
        return
    try:
        rtol = float(rtol)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return
    if rtol < IMPLICIT_FLOAT32_RTOL:
        raise ValueError(
            f"`{name}` with the implicit backward solver "
            f"`{type(solver).__name__}` in float32 at rtol={rtol:g}: the adjoint's "
            "Newton iterations cannot meet that tolerance in float32 on a stiff "
            "problem (the roundoff of `f_yᵀλ` exceeds it), so the backward solve "
            "would exhaust its step budget. Use float64 "
            "(`jax.config.update('jax_enable_x64', True)` and a float64 `y0`), "
            f"or `{name}(rtol={IMPLICIT_FLOAT32_RTOL:g}, "
            f"atol={IMPLICIT_FLOAT32_RTOL:g})` for a looser backward solve, or "
            "`jaxsens.Discrete()`."
        )


@eqx.filter_custom_vjp
def _adjoint_solve(vjp_arg, static, adjoint, options):
    return _forward(vjp_arg, static, adjoint, options)[0]


@_adjoint_solve.def_fwd
def _adjoint_solve_fwd(perturbed, vjp_arg, static, adjoint, options):
    del perturbed
    return _forward(vjp_arg, static, adjoint, options)


@_adjoint_solve.def_bwd
def _adjoint_solve_bwd(residuals, grad_obj, perturbed, vjp_arg, static, adjoint,
                       options):
    forward_result, ys, residuals = residuals
    diff, y0, ts, t0 = as_arrays(vjp_arg)
    p_diff, _, p_ts, p_t0 = perturbed
    # Only perturbed leaves get a parameter adjoint: the others (e.g. a control's
    # samples when training the field's weights) join the static part, so μ and
    # the vjps carry nothing for them.
    diff_perturbed, diff_fixed = eqx.partition(diff, p_diff)
    problem = Problem(diff_perturbed, eqx.combine(diff_fixed, static), y0, ts,
                      options.at(t0))
    ys_bar = zeros_like_ct(grad_obj[0], ys)
    diff_bar, y0_bar, result = adjoint.backward(problem, residuals, ys_bar)
    ts_bar, t0_bar = time_cotangents(problem, ys, ys_bar, y0_bar,
                                     any(jtu.tree_leaves(p_ts)),
                                     any(jtu.tree_leaves(p_t0)))
    # The forward pass's failure first: a backward pass from a failed solve is
    # meaningless. Checked on every cotangent: XLA keeps the check if any is used.
    result = RESULTS.where(
        forward_result != RESULTS.successful, forward_result, as_result(result)
    )
    return checked((diff_bar, y0_bar, ts_bar, t0_bar), result, options.throw)
