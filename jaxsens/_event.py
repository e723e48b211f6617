"""Terminal events (`jaxsens.solve(..., event=diffrax.Event(...))`) with
differentiable event times, for every sensitivity method.

The event is located without gradients (a diffrax solve with the `Event`); the
chosen method then solves to the event time `τ*` exactly, which it differentiates
as it differentiates any save time; the implicit function theorem on the
triggered condition `g(τ, y(τ), args) = 0` adds the event time's own derivative

    dτ/dθ = −(∂g/∂θ + ∂g/∂y · ∂y(τ*)/∂θ) / (∂g/∂t + ∂g/∂y · f(τ*, y(τ*))),

and the state at the event moves with it, `d y(τ) = d y(τ*) + f(τ*, y(τ*)) dτ`.
The adjoint's jump at the event time (SciMLSensitivity's callback adjoints;
Chen, Amos & Nickel 2021, "Learning neural event functions for ordinary
differential equations") is then the chain rule through these two lines.
"""

import dataclasses

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree

from ._sensitivity._options import SolveOptions
from ._sensitivity.base import (
    as_problem,
    diagnose,
    float_args_as_arrays,
    forward_controller,
    state_norm,
)
from ._solution import RESULTS, as_result, checked, guarded


# Save times within `_MARGIN · (len(ts) + 1)` ulps (of the time scale) before the
# event are not solved to: their state is `y(τ*) + f·(t − τ*)` (second order in a
# distance of a few hundred ulps), so the save times handed to the method stay
# distinct however close a user's save time falls to the event.
_MARGIN = 64


class EventOutputs(eqx.Module):
    """What an event adds to a solve: `ys` at the user's save times (rows past the
    event `inf`), and the event's time, state and whether it happened."""

    ys: PyTree[Array]
    stats: dict
    result: RESULTS
    event_time: Array
    event_state: PyTree[Array]
    event_happened: Array


def _controller(options: SolveOptions):
    """The step-size controller of the method's forward solve (`diffrax_solve`)."""
    return forward_controller(options, state_norm(options))


def _cond_fns(event):
    return jtu.tree_leaves(event.cond_fn, is_leaf=callable)


def _cond_kwargs(field, ts, options, controller, saveat):
    """The keyword arguments diffrax passes every `cond_fn`."""
    return dict(
        terms=dfx.ODETerm(field),
        solver=options.solver,
        t0=options.t0,
        t1=ts[-1],
        dt0=options.dt0,
        saveat=saveat,
        stepsize_controller=controller,
        max_steps=options.max_steps,
    )


def _locate_saveat():
    return dfx.SaveAt(t1=True)


def check_event(event, field, y0, ts, args, options) -> None:
    """Trace-time checks: `event` is a `diffrax.Event` whose every `cond_fn` can be
    called as diffrax calls it and returns a boolean or real scalar."""
    if not isinstance(event, dfx.Event):
        raise TypeError(
            f"`event` must be a `diffrax.Event`, e.g. `diffrax.Event(cond_fn, "
            f"root_finder=optimistix.Newton(1e-10, 1e-10))`; got {event!r}."
        )
    controller = _controller(options)
    kwargs = _cond_kwargs(field, ts, options, controller, _locate_saveat())
    t0 = options.t0
    for cond_fn in _cond_fns(event):
        name = getattr(cond_fn, "__name__", type(cond_fn).__name__)
        try:
            # diffrax calls it positionally on each step and by keyword in the
            # root find.
            out = eqx.filter_eval_shape(cond_fn, t0, y0, args, **kwargs)
            eqx.filter_eval_shape(lambda: cond_fn(t=t0, y=y0, args=args, **kwargs))
        except Exception as e:  # noqa: BLE001 - re-raised with context
            raise TypeError(
                f"`event`: calling the condition `{name}` as diffrax does, "
                "`cond_fn(t, y, args, **kwargs)` (also by keyword, `t=`, `y=`, "
                "`args=`), failed. Define it as `def cond_fn(t, y, args, **kwargs)` "
                f"with the state structured like `y0`. The error was: {e}"
            ) from e
        if (not isinstance(out, jax.ShapeDtypeStruct) or out.shape != ()
                or not (jnp.issubdtype(out.dtype, jnp.bool_)
                        or jnp.issubdtype(out.dtype, jnp.floating))):
            shown = (f"shape {out.shape} and dtype {out.dtype}"
                     if isinstance(out, jax.ShapeDtypeStruct) else repr(out))
            raise ValueError(
                f"`event`: the condition `{name}` must return one boolean or real "
                f"scalar (an event on a vector state picks one component, e.g. "
                f"`y[0]`), got {shown}."
            )
        if jnp.issubdtype(out.dtype, jnp.floating) and event.root_finder is None:
            raise ValueError(
                f"`event`: the condition `{name}` is real-valued but the `Event` has "
                "no `root_finder`, so the event time would be the end of a solver "
                "step, which has no derivative. Pass one, e.g. `diffrax.Event("
                "cond_fn, root_finder=optimistix.Newton(rtol=1e-8, atol=1e-8))`, or "
                "return a boolean to stop at the end of the step on purpose."
            )


def _sg_tree(tree):
    diff, static = eqx.partition(tree, eqx.is_inexact_array)
    return eqx.combine(jax.lax.stop_gradient(diff), static)


def _locate(field, y0, ts, args, options, event):
    """`(τ*, mask, y(τ*), result)` of a diffrax solve with the event, on
    gradient-free inputs: the same solver and step-size controller as the
    method's forward solve."""
    problem = as_problem(field, y0, ts, args, options)
    # The user's field itself (a closure-converted one is tied to `args`' trace).
    field_c, args_c = _sg_tree((field, float_args_as_arrays(args)))
    y0, t0, t1 = jax.lax.stop_gradient((y0, options.t0, ts[-1]))
    controller = _controller(options)
    sol = dfx.diffeqsolve(
        dfx.ODETerm(field_c), options.solver, t0, t1, options.dt0, y0, args=args_c,
        saveat=_locate_saveat(), stepsize_controller=controller,
        max_steps=options.max_steps, event=_sg_tree(event), throw=False,
    )
    tau = sol.ts[0]
    y_end = jtu.tree_map(lambda y: y[0], sol.ys)
    result = as_result(sol.result)
    result = RESULTS.where(result == RESULTS.event_occurred, RESULTS.successful, result)
    result = diagnose(result, sol.stats, field_c, args_c, options.solver, t0, t1,
                      tau, y_end)
    mask = [jnp.asarray(m) for m in jtu.tree_leaves(sol.event_mask)]
    no_steps = sol.stats["num_steps"] == 0
    return jax.lax.stop_gradient(tau), mask, no_steps, result, problem


def _solve_times(ts, t0, tau):
    """The save times the method solves at: the user's times before the event, the
    rest moved to distinct points between the last of them (or `t0`) and `τ*`, then
    `τ*` itself; and which user rows are kept, and whether the event is at `t0`."""
    sg = jax.lax.stop_gradient
    n = ts.shape[0]
    scale = jnp.maximum(jnp.maximum(jnp.abs(t0), jnp.abs(ts[-1])), ts[-1] - t0)
    scale = sg(jnp.where(scale > 0, scale, 1.0))
    margin = _MARGIN * (n + 1) * jnp.finfo(ts.dtype).eps * scale
    keep = ts < tau - margin
    n_keep = jnp.sum(keep)
    at_t0 = sg(tau - t0) <= margin
    index = jnp.arange(n)
    last = jnp.where(n_keep > 0, ts[jnp.maximum(n_keep - 1, 0)], t0)
    last = sg(last)
    frac = (index - n_keep + 1).astype(ts.dtype) / (n - n_keep + 1).astype(ts.dtype)
    moved = last + (tau - last) * frac
    solve_ts = jnp.concatenate([jnp.where(keep, ts, moved), tau[None]])
    # Event at `t0`: nothing to solve; a tiny span stands in (its rows are unused).
    dummy = sg(t0) + margin * (jnp.arange(n + 1) + 1).astype(ts.dtype) / (n + 1)
    solve_ts = jnp.where(at_t0, dummy, solve_ts)
    return solve_ts, keep, at_t0


def _implicit_step(cond_fns, mask, tau, y_star, f_star, args, kwargs):
    """`τ − τ*` to first order, zero in value: `−(g − sg g) / sg(dg/dt)` for the
    real-valued condition that triggered (zero for a boolean one)."""
    sg = jax.lax.stop_gradient
    step = jnp.zeros((), tau.dtype)
    for cond_fn, hit in zip(cond_fns, mask, strict=True):
        g = cond_fn(tau, y_star, args, **kwargs)
        if not jnp.issubdtype(jnp.result_type(g), jnp.floating):
            continue  # boolean: located to the step's end, not differentiable
        _, dg_dt = jax.jvp(
            lambda t, y, cond_fn=cond_fn: cond_fn(t, y, sg(args), **kwargs),
            (tau, sg(y_star)),
            (jnp.ones_like(tau), sg(f_star)),
        )
        dg_dt = sg(dg_dt)
        safe = jnp.where(hit & (dg_dt != 0), dg_dt, 1.0)
        term = -(g - sg(g)) / safe
        step = step + jnp.where(hit, term, 0.0).astype(tau.dtype)
    return step


def solve_with_event(method, field, y0, ts, args, options: SolveOptions, event):
    """`method`'s solve, stopped at the first event (see the module docstring)."""
    sg = jax.lax.stop_gradient
    tau, mask, no_steps, located, problem = _locate(field, y0, ts, args, options, event)
    happened = jnp.any(jnp.stack(mask)) if mask else jnp.array(False)
    t0 = options.t0
    solve_ts, keep, at_t0 = _solve_times(ts, t0, tau)
    # The method's own grid decisions must not see the user's times.
    inner = dataclasses.replace(options, static_times=None)
    ys_new, stats, result = method.solve(field, y0, solve_ts, args, inner)
    result = RESULTS.where(located == RESULTS.successful, as_result(result), located)

    def f(t, y):
        return field(t, y, args)

    def last(y):
        return y[-1]

    y_solved = jtu.tree_map(last, ys_new)
    f0 = f(t0, y0)
    # Near `t0`: `y(τ*) = y0 + f(t0, y0)(τ* − t0)`, to second order.
    y_near = jtu.tree_map(lambda y, v: y + v * (tau - t0).astype(y.dtype), y0, f0)
    y_star = jtu.tree_map(lambda a, b: jnp.where(at_t0, a, b), y_near, y_solved)
    f_star = f(tau, y_star)

    controller = _controller(options)
    kwargs = _cond_kwargs(field, ts, options, controller, _locate_saveat())
    implicit = tau + _implicit_step(_cond_fns(event), mask, tau, y_star, f_star, args,
                                    kwargs)
    # No event: the end of the span, differentiable as such.
    event_time = jnp.where(happened, implicit, tau + (ts[-1] - sg(ts[-1])))
    shift = event_time - sg(event_time)
    event_state = jtu.tree_map(lambda y, v: y + v * shift.astype(y.dtype), y_star,
                               f_star)

    # The user's rows: solved before the event, first order from the event state
    # within the margin before it, `inf` after it (as diffrax reports them; all of
    # them when the condition already holds at `t0` and no step is taken).
    reached = (ts <= tau) & ~(happened & no_steps)

    def rows(y_new, y_ev, v_ev):
        y_new = y_new[:-1]
        shape = (-1,) + (1,) * (y_new.ndim - 1)
        dt = (ts - tau).astype(y_new.dtype).reshape(shape)
        near = y_ev[None] + v_ev[None] * dt
        out = jnp.where(keep.reshape(shape), y_new, near)
        return jnp.where(reached.reshape(shape), out, jnp.inf)

    ys = jtu.tree_map(rows, ys_new, y_star, f_star)
    outputs = (ys, event_time, event_state)
    # The locating solve's failure, on the values and on their derivatives.
    inputs = (problem.diff, y0, t0, ts)
    outputs = guarded(outputs, located, options.throw, inputs)
    outputs = checked(outputs, located, options.throw)
    ys, event_time, event_state = outputs
    return EventOutputs(ys, stats, result, event_time, event_state, happened)
