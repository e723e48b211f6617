"""`jaxsens.solve`: the one entry point. Checks its inputs, dispatches to a method."""

import dataclasses
from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import ArrayLike, Float, PyTree

from ._batch import as_batch
from ._control import control_knots
from ._event import check_event, solve_with_event
from ._sensitivity._options import (
    DEFAULT_TOL,
    MAX_STEPS,
    SolveOptions,
    SolverSettings,
    static_times,
)
from ._sensitivity.auto import Auto, has_tracer
from ._sensitivity.base import AbstractSensitivity, all_finite
from ._sensitivity.discrete import Discrete
from ._sensitivity.forward import Forward
from ._sensitivity.krylov import KrylovExpm
from ._sensitivity.linear import LinearExpm
from ._solution import DenseOutput, Solution


_WORKING_DTYPES = "float32, float64, complex64 or complex128"


def _check_dtypes(y0):
    """Half precision and non-numeric states are refused with the dtypes that work;
    Python numbers and integer arrays become floating point."""
    for x in jtu.tree_leaves(y0):
        dtype = jnp.result_type(x)
        if jnp.issubdtype(dtype, jnp.inexact) and jnp.finfo(dtype).bits < 32:
            raise ValueError(
                f"`y0` has a leaf of dtype {dtype}: half precision is too coarse for "
                f"an adaptive ODE solve. jaxsens solves in {_WORKING_DTYPES}: pass "
                "e.g. `y0.astype(jnp.float32)`."
            )
        if jnp.issubdtype(dtype, jnp.bool_) or not jnp.issubdtype(dtype, jnp.number):
            raise ValueError(
                f"`y0` has a leaf of dtype {dtype}, which is not a number. jaxsens "
                f"solves in {_WORKING_DTYPES}: pass e.g. `y0.astype(jnp.float64)`."
            )


def _float_dtype(y0):
    """The time dtype: the widest real floating dtype of `y0` (the default float if
    it has none)."""
    leaves = jtu.tree_leaves(y0)
    dtypes = [jnp.result_type(x) for x in leaves
              if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    if dtypes:
        dtype = jnp.result_type(*dtypes)
        return jnp.finfo(dtype).dtype  # real part of a complex dtype
    return jnp.result_type(float)


def _as_state(y0, dtype):
    """`y0` as arrays: integer leaves become `dtype`; every leaf is promoted with
    the time dtype, as diffrax promotes it (a float32 leaf beside a float64 one
    is solved in float64)."""
    leaves = jtu.tree_leaves(y0)
    if not leaves:
        raise ValueError("`y0` has no array leaves: pass the initial state, e.g. "
                         "`y0=jnp.array([1.0, 0.0])`.")

    def convert(x):
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.inexact):
            return x.astype(dtype)
        return x.astype(jnp.result_type(x.dtype, dtype))

    return jtu.tree_map(convert, y0)


def _check_sensitivity(sensitivity):
    if isinstance(sensitivity, type) and issubclass(sensitivity, AbstractSensitivity):
        raise TypeError(
            f"`sensitivity={sensitivity.__name__}` is a class: pass an instance, "
            f"`sensitivity=jaxsens.{sensitivity.__name__}()`."
        )
    if not isinstance(sensitivity, AbstractSensitivity):
        raise TypeError(
            f"`sensitivity` must be a jaxsens method such as `jaxsens.Auto()`, "
            f"`jaxsens.InterpolatingAdjoint()` or `jaxsens.Discrete()`; got "
            f"{sensitivity!r}. (diffrax adjoints are not accepted here: "
            "`jaxsens.Discrete()` wraps diffrax's `RecursiveCheckpointAdjoint`.)"
        )


def _check_field_output(field, t0, y0, args):
    if not callable(field):
        raise TypeError(
            f"`field` must be callable as `field(t, y, args)`, got {field!r}.")
    try:
        out = eqx.filter_eval_shape(field, t0, y0, args)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise type(e)(
            f"Calling `field(t0, y0, args)` failed while checking its output: {e}"
        ) from e
    y_struct = jtu.tree_structure(y0)
    o_struct = jtu.tree_structure(out)
    if y_struct != o_struct:
        raise ValueError(
            "`field(t, y, args)` must return dy/dt with the same PyTree structure as "
            f"`y0`; `y0` has structure {y_struct} but the field returned {o_struct}."
        )
    for y, o in zip(jtu.tree_leaves(y0), jtu.tree_leaves(out), strict=True):
        if jnp.issubdtype(o.dtype, jnp.complexfloating) and not jnp.issubdtype(
            jnp.result_type(y), jnp.complexfloating
        ):
            raise ValueError(
                f"`field(t, y, args)` returned complex values ({o.dtype}) for a real "
                f"state ({jnp.result_type(y)}): the state would have to become "
                "complex. Pass a complex `y0` (e.g. `y0.astype(jnp.complex128)`), or "
                "return the real part (`jnp.real(...)`) if the imaginary part is "
                "round-off."
            )
        state_dtype = jnp.result_type(y)
        if (jnp.issubdtype(o.dtype, jnp.inexact)
                and jnp.result_type(state_dtype, o.dtype) != state_dtype):
            raise ValueError(
                f"`field(t, y, args)` returned {o.dtype} for a {state_dtype} state: "
                "its parameters or `args` are wider than `y0`, and the solve keeps "
                f"the state's precision. Pass `y0` as {o.dtype} (e.g. "
                f"`y0.astype(jnp.{o.dtype})`) to solve in it, or cast the field's "
                f"parameters and `args` to {state_dtype}."
            )
        if jnp.shape(y) != o.shape:
            raise ValueError(
                "`field(t, y, args)` must return dy/dt shaped like `y0`: a leaf of "
                f"`y0` has shape {jnp.shape(y)} but the field returned shape "
                f"{o.shape}. Check the field's output (e.g. a missing `.reshape` or "
                "a transposed matrix)."
            )


_CONTROLLERS = ("`diffrax.PIDController(rtol=..., atol=...)` (with any of its "
                "options, `jump_ts` and `step_ts` included) or "
                "`diffrax.ConstantStepSize()`")


def _check_controller(controller, settings: SolverSettings):
    """`(controller, settings, controller_jump_ts)`: the user's step-size
    controller (or `None`), `settings` with the tolerances every solve of this
    call uses (the controller's, or `rtol`/`atol`, by default `DEFAULT_TOL`), and
    the controller's own `jump_ts`."""
    rtol, atol, solver = settings.rtol, settings.atol, settings.solver
    if controller is None:
        return None, dataclasses.replace(
            settings, rtol=DEFAULT_TOL if rtol is None else rtol,
            atol=DEFAULT_TOL if atol is None else atol), None
    inner = (controller.controller
             if isinstance(controller, dfx.ClipStepSizeController) else controller)
    if not isinstance(inner, (dfx.PIDController, dfx.ConstantStepSize)):
        raise TypeError(
            f"`stepsize_controller` must be {_CONTROLLERS}, got {controller!r}."
        )
    if rtol is not None or atol is not None:
        raise ValueError(
            "`stepsize_controller` with `rtol`/`atol`: the tolerances are the "
            "controller's. Pass them to it (`diffrax.PIDController(rtol=..., "
            "atol=...)`) and leave `solve`'s `rtol`/`atol` out."
        )
    if isinstance(inner, dfx.ConstantStepSize):
        if settings.dt0 is None:
            raise ValueError(
                "`stepsize_controller=diffrax.ConstantStepSize()` takes constant "
                "steps of `dt0`: pass `dt0=` (the step size)."
            )
        return controller, dataclasses.replace(
            settings, rtol=DEFAULT_TOL, atol=DEFAULT_TOL), None
    if not isinstance(solver, dfx.AbstractAdaptiveSolver):
        raise ValueError(
            f"`stepsize_controller=PIDController(...)` with `solver="
            f"{type(solver).__name__}()`, which has no error estimate to control "
            "steps by. Use an adaptive solver such as `diffrax.Tsit5()`, or "
            "`diffrax.ConstantStepSize()` with `dt0=`."
        )
    jumps = (controller.jump_ts
             if isinstance(controller, dfx.ClipStepSizeController) else None)
    # Checked as the user's would be (`SolverSettings.__check_init__`).
    return controller, dataclasses.replace(
        settings, rtol=inner.rtol, atol=inner.atol), jumps


def _jump_times(jump_ts, field, args, solver, dtype, constant_steps=False,
                stacked=False):
    """`jump_ts` checked, sorted and in the time dtype (`None` if empty); by
    default the sample times of every `jaxsens.Control` in `field` or `args`
    (adaptive steps only: constant steps cannot be placed). The times are not
    differentiated: they place steps, the solution does not depend on them.
    `stacked`: a batch solved as one state also steps to its members' times."""
    if jump_ts is not None and constant_steps:
        raise ValueError(
            "`jump_ts` with `stepsize_controller=diffrax.ConstantStepSize()`: "
            "constant steps cannot be placed at given times. Use "
            "`diffrax.PIDController(...)`, or leave `jump_ts` out."
        )
    if jump_ts is None:
        if constant_steps or not isinstance(solver, dfx.AbstractAdaptiveSolver):
            return None
        jump_ts = control_knots((field, args), stacked=stacked)
        if jump_ts is None:
            return None
    jump_ts = jnp.asarray(jump_ts)
    if jump_ts.ndim != 1:
        raise ValueError(
            "`jump_ts` must be a 1-D array of the times at which the field is "
            f"discontinuous, got shape {jump_ts.shape}. Pass e.g. "
            "`jump_ts=jnp.array([0.5])`."
        )
    if jnp.issubdtype(jump_ts.dtype, jnp.bool_) or not jnp.issubdtype(
        jump_ts.dtype, jnp.integer) and not jnp.issubdtype(jump_ts.dtype, jnp.floating):
        raise ValueError(
            f"`jump_ts` must hold real times, got dtype {jump_ts.dtype}."
        )
    if jump_ts.shape[0] == 0:
        return None
    jump_ts = jnp.sort(lax.stop_gradient(jump_ts.astype(dtype)))
    return eqx.error_if(
        jump_ts, ~jnp.all(jnp.isfinite(jump_ts)),
        "`jump_ts` must be finite (NaN or inf found): pass only the times at which "
        "the field is discontinuous.",
    )


def _check_running_cost(cost, t0, y0, args):
    if not callable(cost):
        raise TypeError(
            "`running_cost` must be callable as `running_cost(t, y, args)`, "
            f"returning the integrand as a scalar; got {cost!r}."
        )
    try:
        out = eqx.filter_eval_shape(cost, t0, y0, args)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise type(e)(
            f"Calling `running_cost(t0, y0, args)` failed while checking its output: "
            f"{e}"
        ) from e
    if (not isinstance(out, jax.ShapeDtypeStruct) or out.shape != ()
            or jnp.issubdtype(out.dtype, jnp.bool_)
            or not (jnp.issubdtype(out.dtype, jnp.floating)
                    or jnp.issubdtype(out.dtype, jnp.integer))):
        shown = (f"shape {out.shape} and dtype {out.dtype}"
                 if isinstance(out, jax.ShapeDtypeStruct) else repr(out))
        raise ValueError(
            "`running_cost(t, y, args)` must return one real scalar, the integrand "
            f"`g` of `∫ g dt`; got {shown}. Reduce over the state, e.g. "
            "`jnp.sum(y**2)` (for a complex state, `jnp.sum(jnp.abs(y)**2)`)."
        )


class _WithCost(eqx.Module):
    """The field of the state `(y, c)` a running cost adds: `(f, g)`."""

    field: Callable
    cost: Callable

    def __call__(self, t, z, args):
        y, c = z
        g = jnp.asarray(self.cost(t, y, args)).astype(jnp.result_type(c))
        return self.field(t, y, args), g


class _OnState(eqx.Module):
    """An event condition of the state `(y, c)`, called on `y` alone."""

    cond_fn: Callable

    def __call__(self, t, y, args, **kwargs):
        return self.cond_fn(t, y[0], args, **kwargs)


def _on_state(event: dfx.Event) -> dfx.Event:
    wrapped = jtu.tree_map(_OnState, event.cond_fn, is_leaf=callable)
    return eqx.tree_at(lambda e: e.cond_fn, event, wrapped)


def _check_dense(dense, method, event):
    if not isinstance(dense, bool):
        raise TypeError(f"`dense` must be True or False, got {dense!r}.")
    if not dense:
        return
    if event is not None:
        raise ValueError(
            "`dense=True` with `event=`: the dense output of a solve stopped by an "
            "event is not supported. Save the times you need with `ts`, or solve "
            "without the event."
        )
    if not isinstance(method, (Discrete, Forward)):
        raise ValueError(
            f"`dense=True` with `sensitivity={type(method).__name__}()`: only "
            "`Discrete()` (through diffrax's own backpropagation) and `Forward()` "
            "(the sensitivities' own dense output) differentiate the dense output "
            "`sol.evaluate(t)`, and `Auto()` then picks `Discrete()`. Pass "
            "`sensitivity=jaxsens.Discrete()` or `jaxsens.Forward()`, or add the "
            "times you need to `ts` and keep this method."
        )


def solve(
    field,
    y0: PyTree[ArrayLike],
    ts: Float[ArrayLike, " times"],
    args: PyTree = None,
    *,
    t0: float | None = None,
    solver: dfx.AbstractSolver | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    dt0: float | None = None,
    max_steps: int = MAX_STEPS,
    sensitivity: AbstractSensitivity = Auto(),  # noqa: B008 (immutable Module)
    throw: bool = True,
    event: dfx.Event | None = None,
    jump_ts: Float[ArrayLike, " jumps"] | None = None,
    running_cost: Callable | None = None,
    dense: bool = False,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    progress_meter: dfx.AbstractProgressMeter | None = None,
    batch: tuple | None = None,
) -> Solution:
    """Solve `dy/dt = field(t, y, args)` from `y0` and save at `ts`, differentiably.

    **Arguments:**

    - `field`: `field(t, y, args) -> dy/dt`. A plain function, a closure over arrays
        (traced ones too), or an `eqx.Module` whose inexact-array leaves are
        trainable. Gradients flow to all of them.
    - `y0`: the initial state at `t0`, any PyTree of arrays.
    - `ts`: strictly increasing save times, shape `(T,)`.
    - `args`: passed to `field`; its inexact arrays are differentiable too.
    - `t0`: start time (default `ts[0]`); must be `<= ts[0]`.
    - `solver`: a diffrax solver (default `diffrax.Tsit5()`; use
        `diffrax.Kvaerno5()` for stiff problems).
    - `rtol`, `atol`: tolerances of the adaptive step-size control (default
        `1e-6` each), of the forward solve and of a continuous adjoint's
        backward pass (unless the adjoint sets its own).
    - `dt0`: initial step (default: chosen automatically; required for solvers
        without an error estimate, which then take constant steps).
    - `max_steps`: the forward step budget.
    - `sensitivity`: how the output is differentiated: `Auto()` (default),
        `Discrete()`, `Forward()`, `BacksolveAdjoint()`, `InterpolatingAdjoint()`,
        `QuadratureAdjoint()`, `GaussAdjoint()`; see the README's table.
    - `throw`: raise on failure (step budget exhausted, solver failure, backsolve
        divergence). With `throw=False`, check `sol.result` instead.
    - `event`: a `diffrax.Event` that stops the solve at its first occurrence;
        `sol.event_time`, `sol.event_state` and `sol.event_happened` are then
        differentiable by every method (the README's "Events"). Rows of `ys`
        after the event are `inf`, as in diffrax.
    - `jump_ts`: times at which the field is discontinuous or has a kink (e.g. a
        piecewise-constant forcing). The forward solve steps to just before each
        and resumes just after it (diffrax's `jump_ts`), and a continuous
        adjoint's backward pass does the same, so no step straddles one: fewer
        rejected steps, and a gradient as accurate as elsewhere. Default: the
        sample times of every `jaxsens.Control` in `args` or in the field
        (adaptive solvers only); pass `jump_ts=[]` to step past them freely.
        Adaptive solvers only; the times are not differentiated.
        `LinearExpm`/`KrylovExpm` take no time steps and ignore them.
    - `running_cost`: `g(t, y, args) -> scalar`; then `sol.cost = ∫ g(t, y(t),
        args) dt` from `t0` to `ts[-1]` (to the event time with `event=`),
        differentiable by every time-stepping method. It is integrated with the
        state (a state `(y, c)`); the error control takes the larger of `y`'s and
        `c`'s errors, so `y` is never solved less accurately than without it
        (a few more steps when `c` needs them). Not with `LinearExpm`/`KrylovExpm`.
    - `dense`: keep the solver's dense output, so that `sol.evaluate(t)` gives
        the state at any `t` in `[t0, ts[-1]]`, differentiable (w.r.t. `t` too)
        by `Discrete()` (through diffrax) or `Forward()` (the sensitivities'
        own dense output); `Auto()` then picks `Discrete()`, other methods raise.
        Not with `event=`.
    - `progress_meter`: a diffrax progress meter, e.g.
        `diffrax.TqdmProgressMeter()`, for the forward solve and for a continuous
        adjoint's backward pass (its own meter, by the fraction of `[t0, ts[-1]]`
        covered).
    - `batch`: `(y0_axis, args_axes)`, in `jax.vmap`'s `in_axes` convention, to
        solve a batch of problems (e.g. one per control input) as ONE solve of the
        stacked state with one shared adaptive step: `batch=(None, 0)` for one
        `y0` and a stack of `args` (such as `jaxsens.Control.stack([...])`),
        `batch=(0, 0)` for a stack of both; `ys` then has shape
        `(len(ts), B, ...)` and `running_cost` is summed over the members. The
        field's parameter vjp sums over the batch inside the solve and every
        step is taken once for all members, where `jax.vmap` of `solve` steps
        each member under its own control until the slowest has finished. The
        price: the step size follows the batch's RMS error norm, so a member's
        error is controlled on average (tighten `rtol`/`atol` if each must meet
        it; prefer `jax.vmap` when members differ a lot, e.g. one stiff member).
        The solve steps to every member's `Control` sample times (pass
        `jump_ts=[]` to step past them). Not with `event=`. The README's
        "Models, controls, batching, training" compares the two.

    **Returns:** a [`jaxsens.Solution`][] with `ys` (structured like `y0`, leading
    axis `len(ts)`), `ts`, `stats`, `result`, the `sensitivity` used, `cost`
    with `running_cost` and `evaluate(t)` with `dense=True`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp, jaxsens

    def field(t, y, k):
        return -k * y

    ts = jnp.linspace(0.0, 2.0, 5)

    def loss(k):
        sol = jaxsens.solve(field, jnp.array([1.0, 2.0]), ts, k,
                            sensitivity=jaxsens.InterpolatingAdjoint())
        return jnp.sum(sol.ys**2)

    jax.jit(jax.grad(loss))(0.5)
    ```
    """
    _check_sensitivity(sensitivity)
    settings = SolverSettings(solver, rtol, atol, dt0, max_steps)
    if progress_meter is not None and not isinstance(
            progress_meter, dfx.AbstractProgressMeter):
        raise TypeError(
            "`progress_meter` must be a diffrax progress meter such as "
            f"`diffrax.TqdmProgressMeter()`, got {progress_meter!r}."
        )
    controller, settings, controller_jumps = _check_controller(
        stepsize_controller, settings)
    # Before the checks below turn it into a traced value inside `jit`: whether
    # `y0` can be differentiated at all, for `Auto`.
    y0_traced = has_tracer(y0)
    _check_dtypes(y0)
    dtype = _float_dtype(y0)
    y0 = _as_state(y0, dtype)
    if batch is not None:
        if event is not None:
            raise ValueError(
                "`batch=` with `event=`: an event would stop every member of the "
                "batch at the first member's event. Solve the members with "
                "`jax.vmap` instead, each with its own event."
            )
        field, y0, running_cost = as_batch(batch, field, y0, args, running_cost)
    ts = jnp.asarray(ts)
    if ts.ndim != 1 or ts.shape[0] < 1:
        raise ValueError(
            f"`ts` must be a 1-D array of save times with at least one entry, got "
            f"shape {ts.shape}."
        )
    known_times = static_times(t0, ts, dtype)
    if not jnp.issubdtype(ts.dtype, jnp.floating) or ts.dtype != dtype:
        ts = ts.astype(dtype)
    t0 = ts[0] if t0 is None else jnp.asarray(t0, dtype)
    if t0.shape != ():
        raise ValueError(f"`t0` must be a scalar, got shape {t0.shape}.")
    _check_field_output(field, t0, y0, args)

    if ts.shape[0] > 1:
        ts = eqx.error_if(
            ts,
            jnp.any(ts[1:] <= ts[:-1]),
            "`ts` must be strictly increasing (no repeats). Sort it, e.g. "
            "`jnp.unique(ts)`.",
        )
    ts = eqx.error_if(ts, ~jnp.all(jnp.isfinite(ts)), "`ts` must be finite.")
    t0 = eqx.error_if(
        t0,
        t0 > ts[0],
        "`t0` must be <= `ts[0]` (the solve starts at `t0` and saves at `ts`). "
        "Pass `t0=ts[0]` or leave it out.",
    )
    t0 = eqx.error_if(t0, ~jnp.isfinite(t0), "`t0` must be finite.")
    y0 = eqx.error_if(
        y0,
        ~all_finite(y0),
        "`y0` contains NaN or inf. Check how the initial state was built.",
    )
    # Traced settings are checked on their own values, before diffrax reads them
    # (a Python number was checked when `settings` was built).
    settings = settings.checked_values()

    constant_steps = isinstance(controller, dfx.ConstantStepSize)
    jump_ts = _jump_times(jump_ts, field, args, settings.solver, dtype, constant_steps,
                          stacked=batch is not None)
    if controller_jumps is not None:
        # The controller's own `jump_ts` join `jump_ts`, where the backward pass
        # sees them too; the controller keeps the rest of its settings.
        controller_jumps = _jump_times(controller_jumps, field, args, settings.solver,
                                       dtype)
        jump_ts = controller_jumps if jump_ts is None else jnp.sort(
            jnp.concatenate([jump_ts, controller_jumps]))
        controller = eqx.tree_at(lambda c: c.jump_ts, controller, None)
    options = SolveOptions(t0, **settings.keywords(), throw=throw,
                           static_times=known_times, y0_traced=y0_traced,
                           jump_ts=jump_ts, dense=dense, controller=controller,
                           progress_meter=progress_meter)
    if event is not None:
        check_event(event, field, y0, ts, args, options)
    if running_cost is not None:
        _check_running_cost(running_cost, t0, y0, args)
        field = _WithCost(field, running_cost)
        y0 = (y0, jnp.zeros((), dtype))
        options = dataclasses.replace(options, running_cost=True)
        event = None if event is None else _on_state(event)
    method = sensitivity.chosen(field, y0, ts, args, options)
    _check_dense(dense, method, event)
    if running_cost is not None and isinstance(method, (LinearExpm, KrylovExpm)):
        raise ValueError(
            f"`running_cost` with `sensitivity={type(method).__name__}()`: the cost "
            "is integrated with the state, which only a time-stepping method does "
            "(`LinearExpm`/`KrylovExpm` solve `y' = A y + b` exactly). Use "
            "`Discrete()`, `Forward()`, `BacksolveAdjoint()`, "
            "`InterpolatingAdjoint()`, `QuadratureAdjoint()`, `GaussAdjoint()` or "
            "`Auto()`."
        )

    def split(ys, state=None):
        """`(ys, state, cost)` of the user's state from the `(y, c)` one."""
        if running_cost is None:
            return ys, state, None
        if state is None:
            return ys[0], None, ys[1][-1]
        return ys[0], state[0], state[1]

    if event is not None:
        out = solve_with_event(method, field, y0, ts, args, options, event)
        ys, event_state, cost = split(out.ys, out.event_state)
        return Solution(ts=ts, ys=ys, stats=out.stats, result=out.result,
                        sensitivity=method, event_time=out.event_time,
                        event_state=event_state, event_happened=out.event_happened,
                        cost=cost)
    if dense:
        # `_check_dense` let through only the methods that have a dense solve.
        ys, stats, result, interpolation = method.solve_dense(
            field, y0, ts, args, options)
        ys, _, cost = split(ys)
        dense_output = DenseOutput(interpolation, has_cost=running_cost is not None)
        return Solution(ts=ts, ys=ys, stats=stats, result=result, sensitivity=method,
                        cost=cost, dense_output=dense_output)
    # Each method checks its failures where its derivative is computed, too.
    ys, stats, result = method.solve(field, y0, ts, args, options)
    ys, _, cost = split(ys)
    return Solution(ts=ts, ys=ys, stats=stats, result=result, sensitivity=method,
                    cost=cost)
