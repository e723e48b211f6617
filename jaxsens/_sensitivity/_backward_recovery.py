"""How a backward pass has `y(t)`: re-integrated, interpolated, or re-solved."""

import dataclasses
import math

import diffrax as dfx
import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, PyTree

from .._solution import RESULTS
from ._backward import AbstractRecovery, DenseData, _count
from ._loop import (
    FlatState,
    LoopField,
    Stops,
    _where,
    backward_loop,
    dense_info_like,
    rms_norm,
)
from .base import Problem, diffrax_result, diffrax_solve, max_abs, state_norm, stats_of


def _plain_forward(problem: Problem):
    sol = diffrax_solve(problem.field, problem.y0, problem.ts, problem.args,
                        problem.options, adjoint=dfx.ForwardMode())
    return sol.ys, stats_of(sol), diffrax_result(sol.result), sol.ys


def _saved(ys, j):
    """The state saved at the `j`-th save time met on the way back."""
    return jtu.tree_map(lambda c: c[c.shape[0] - 2 - j], ys)


def _drift(y, y_saved, rtol, atol):
    """RMS of the difference, in units of the solver's own error scale."""
    diffs = jtu.tree_map(
        lambda a, b: jnp.ravel((a - b) / (atol + rtol * jnp.abs(b))), y, y_saved
    )
    d = jnp.concatenate(jtu.tree_leaves(diffs))
    return jnp.where(jnp.all(jnp.isfinite(d)), jnp.sqrt(jnp.mean(d**2)), jnp.inf)


class Reintegrate(AbstractRecovery):
    """`y' = f` integrated backwards with `λ`, reset to the forward pass's saved
    state at every save time (as SciMLSensitivity's `BacksolveAdjoint` with
    checkpointing); a drift beyond `max_drift` error-scale units fails the pass."""

    max_drift: float = 1e3

    def forward(self, problem):
        return _plain_forward(problem)

    def y0(self, problem, ys):
        return jtu.tree_map(lambda c: c[-1], ys)

    def carry0(self, problem, ys):
        return jnp.array(0.0, jnp.result_type(problem.ts))

    def at_save(self, bp, ys, z, drift, j):
        y_saved = _saved(ys, j)
        drift = jnp.maximum(drift, _drift(z.y, y_saved, bp.rtol, bp.atol))
        return eqx.tree_at(lambda z: z.y, z, y_saved), drift

    def run(self, bp, ys, z, carry):
        out = bp.span(ys, None, z, carry, bp.s0, bp.s_end, 0, bp.problem.options.dt0)
        return out.z, out.carry, out.result

    def result(self, bp, ys, z, drift_saves, result):
        drift = jnp.maximum(drift_saves, _drift(z.y, bp.problem.y0, bp.rtol, bp.atol))
        # Divergence usually shows first as an exhausted step budget or a failed
        # implicit step rather than as drift at a save time; tell the two apart by
        # the drift met so far and by the size of the re-integrated state.
        budget = (result == RESULTS.backward_max_steps_reached) | (
            result == RESULTS.solver_failed)
        blown_up = ~(max_abs(z.y) <= 1e3 * (max_abs(ys) + bp.atol))
        diverged = jnp.where(budget, (drift_saves > self.max_drift) | blown_up,
                             drift > self.max_drift)
        diverged = diverged | (result == RESULTS.solver_failed)
        return RESULTS.where(
            ((result == RESULTS.successful) | budget) & diverged,
            RESULTS.backsolve_diverged, result)


DENSE_BYTES = 2**21
SEGMENT_BYTES = 2**17


class Interpolate(AbstractRecovery):
    """`y(t)` from the forward solve's dense output, kept for at most
    `dense_steps` forward steps (default: what fits in 2 MiB, between 32 and
    256 steps, never more than `max_steps`), so that its size follows the solve,
    not `max_steps`. A forward solve that needs more steps is run again without
    dense output on its full budget, and its backward pass re-solves `y` from
    checkpoints at the save times (`Resolve`)."""

    dense_steps: int | None = eqx.field(static=True, default=None)

    def steps(self, problem: Problem) -> int:
        max_steps = problem.options.max_steps
        if self.dense_steps is not None:
            return min(self.dense_steps, max_steps)
        return min(max_steps, _steps_in(DENSE_BYTES, problem))

    def forward(self, problem):
        opts = problem.options
        steps = self.steps(problem)
        sol = diffrax_solve(problem.field, problem.y0, problem.ts, problem.args, opts,
                            adjoint=dfx.ForwardMode(), dense=True, max_steps=steps)
        own = (sol.ys, stats_of(sol), diffrax_result(sol.result))
        if steps >= opts.max_steps:
            return (*own, (sol.interpolation, sol.ys, jnp.array(False)))
        # Out of dense storage, not failed: a failure refined into its cause
        # (non-finite field, collapsed step) still used the whole budget.
        over = (own[2] != RESULTS.successful) & (sol.stats["num_steps"] >= steps)

        def full(_):
            # Under `vmap` both branches run: members that fit solve an empty span.
            # No progress meter here: JAX cannot batch its callbacks inside a `cond`.
            ts = jnp.where(over, problem.ts, opts.t0)
            whole = diffrax_solve(problem.field, problem.y0, ts, problem.args,
                                  dataclasses.replace(opts, progress_meter=None),
                                  adjoint=dfx.ForwardMode())
            return whole.ys, stats_of(whole), diffrax_result(whole.result)

        ys, stats, result = lax.cond(over, full, lambda _: own, None)
        return ys, stats, result, (sol.interpolation, ys, over)

    def run(self, bp, residuals, z, carry):
        interp, ys, over = residuals
        s_end = jnp.where(over, bp.s0, bp.s_end)
        # The backward pass starts with the forward solve's last step size (the
        # longer of its last two: the last one may be cut short to land on `t1`).
        last = interp.ts_size - 1
        t = interp.ts[jnp.maximum(last - jnp.arange(3), 0)]
        h = jnp.maximum(t[0] - t[1], t[1] - t[2])
        out = bp.span(residuals, DenseData(interp), z, carry, bp.s0, s_end, 0,
                      bp.problem.options.dt0, dt_start=h)
        if bp.problem.options.max_steps <= self.steps(bp.problem):
            return out.z, out.carry, out.result
        fallback = Resolve(min(bp.num_saves, 8))
        if bp.meter is not None:
            # The meter's callbacks cannot be batched inside a `cond` (`vmap`):
            # run the fallback, which does nothing unless `active`, unconditionally.
            z, carry, result = fallback.run(bp, ys, out.z, out.carry, active=over)
            return z, carry, RESULTS.where(over, result, out.result)
        return lax.cond(
            over,
            lambda: fallback.run(bp, ys, out.z, out.carry, active=over),
            lambda: (out.z, out.carry, out.result),
        )


def _dense_like(problem):
    opts = problem.options
    return dense_info_like(opts.solver, opts.rtol, opts.atol, opts.dt0,
                           lambda t, y, aux: problem.f(t, y), opts.t0, problem.y0)


def _steps_in(nbytes: int, problem) -> int:
    """How many steps of the solver's dense information (e.g. Tsit5's 7 stage
    vectors per step) fit in `nbytes`, kept between 32 and 256."""
    per_step = sum(math.prod(x.shape) * x.dtype.itemsize
                   for x in jtu.tree_leaves(_dense_like(problem)))
    return max(32, min(256, nbytes // max(per_step, 1)))


class _Dense(eqx.Module):
    """The dense output of a re-solve, shaped as diffrax's `DenseInterpolation`:
    `ts` (unused tail `+inf`), the number `ts_size` of valid times, one `infos`
    entry per step, and the solver's `interpolation_cls`; its values are
    `FlatState(y).ravel`ed."""

    ts: Array
    ts_size: Array
    infos: PyTree
    interpolation_cls: type = eqx.field(static=True)


def _resolve_field(problem: Problem):
    def vf(t, y, aux):
        del aux
        return problem.f(t, y)
    return vf


def _resolve_store(problem: Problem, steps: int):
    """The buffer of `steps` steps' dense information that every re-solve of a
    backward pass writes into (allocated once, not per re-solve)."""
    opts = problem.options
    like = dense_info_like(opts.solver, opts.rtol, opts.atol, opts.dt0,
                           _resolve_field(problem), opts.t0, problem.y0)
    return jtu.tree_map(lambda x: jnp.zeros((steps,) + x.shape, x.dtype), like)


def _resolve(problem: Problem, y_a, a, b, infos0, dt_start):
    """`y` re-solved from `(a, y_a)` towards `b` in at most as many steps as the
    buffer `infos0` (from `_resolve_store`) holds, with its dense output:
    `(dense, y_end, t_end, reached, too_long, dt)`; the first step is `dt_start`
    where finite, and `dt` is the step size to go on with.

    Driven by `backward_loop` (its time runs forward here; no jumps), which writes
    each step's dense information into `infos0` in place. Entries past the steps
    taken are stale (an earlier re-solve's) and never read: their times are
    `+inf`. A second `diffeqsolve` would do the same, but compiles a second
    adaptive loop.
    """
    opts = problem.options
    dtype = jnp.result_type(problem.ts)
    flat = FlatState(y_a)
    vf = _resolve_field(problem)
    steps = jtu.tree_leaves(infos0)[0].shape[0]
    ts0 = jnp.full(steps + 1, jnp.inf, dtype).at[0].set(a)

    def on_step(store, t_a, t_b, y0_, y1_, dense, aux, keep):
        # Slot `k` is overwritten until its step is accepted.
        ts, infos, k = store
        infos = jtu.tree_map(lambda buf, x: buf.at[k].set(x), infos, dense)
        ts = ts.at[k + 1].set(jnp.where(keep, t_b, jnp.inf))
        return ts, infos, k + keep.astype(k.dtype)

    # Forwards in time: the field's `jump_ts` are kinks as they are.
    out = backward_loop(
        LoopField(vf=vf, on_step=on_step), y_a, a, b,
        Stops.of(jnp.zeros((0,), dtype), kinks=opts.jump_ts), solver=opts.solver,
        rtol=opts.rtol, atol=opts.atol, norm=state_norm(opts) or rms_norm,
        max_steps=steps, dt0=opts.dt0,
        carry0=(ts0, infos0, jnp.array(0, jnp.int32)), dt_start=dt_start,
    )
    _count("resolve_steps", out.num_steps)
    ts, infos, count = out.carry
    dense = DenseData(_Dense(ts, count + 1, infos, opts.solver.interpolation_cls),
                      flat.unravel)
    reached = (out.result == RESULTS.successful) & (out.s >= b)
    too_long = out.result == RESULTS.backward_max_steps_reached
    return dense, out.z, out.s, reached, too_long, out.dt


def _split_depth(max_steps: int, seg_steps: int, split: int) -> int:
    """Levels of splitting the checkpoint stack makes room for: enough for a
    forward solve of `max_steps` steps spread evenly, plus two for uneven ones."""
    ratio = max(max_steps / seg_steps, 1.0)
    return math.ceil(math.log(ratio) / math.log(split)) + 2


class Resolve(AbstractRecovery):
    """`y` re-solved forward from `checkpoints + 1` evenly spread entries of `(t0,
    y0), (ts[i], ys[i])`, interval by interval, each re-solve keeping at most
    `segment_steps` steps of dense output; longer intervals are split
    recursively (revolve-style). Memory is flat in the number of steps; each
    level of splitting costs one more forward solve. Griewank & Walther 2000.

    `segment_steps=None`: what fits in `SEGMENT_BYTES`, between 32 and 256 steps
    (the buffer is filled once per backward pass, so a large one costs time
    even when the re-solves take few steps)."""

    checkpoints: int = eqx.field(static=True)
    segment_steps: int | None = eqx.field(static=True, default=None)

    def steps(self, problem: Problem) -> int:
        if self.segment_steps is not None:
            return self.segment_steps
        return _steps_in(SEGMENT_BYTES, problem)

    def forward(self, problem):
        return _plain_forward(problem)

    def run(self, bp, ys, z, carry, active=True):
        """A stack holds checkpoints `(t, y)`; the interval under work is `[T[h],
        T[h + 1]]`. Each iteration makes one forward re-solve of at most
        `segment_steps` steps with dense output:

        - from `T[h]`: if it reaches `T[h + 1]`, the adjoint is integrated back
          over the interval on that dense output and the interval is popped. If
          not, the interval is split into `R` equal parts: their times go on the
          stack and a *march* starts, filling in their states.
        - while marching: the re-solve continues from where the last one stopped;
          the split points it passes get their states from its dense output.
          When it reaches the end of the interval, the last part is the interval
          under work.

        `active` false (a member of a batch that does not need this path): no
        iteration runs.
        """
        problem = bp.problem
        opts = problem.options
        num = problem.ts.shape[0]
        picks = np.unique(np.round(np.linspace(0, num, self.checkpoints + 1)).astype(int))
        cps = jnp.concatenate([opts.t0[None], problem.ts])[picks]
        ycps = jtu.tree_map(
            lambda y0, c: jnp.concatenate([y0[None], c])[picks], problem.y0, ys)
        k = picks.shape[0] - 1
        split = max(k, 2)
        seg_steps = self.steps(problem)
        capacity = k + 1 + (split - 1) * _split_depth(opts.max_steps, seg_steps, split)
        dtype = cps.dtype
        fractions = jnp.arange(1, split, dtype=dtype) / split

        def pad(x):
            shape = (capacity - x.shape[0],) + x.shape[1:]
            return jnp.concatenate([x, jnp.zeros(shape, x.dtype)])

        def at(tree, i):
            return jtu.tree_map(lambda x: x[i], tree)

        # Each iteration is one re-solve of at most `seg_steps` steps; a bound on
        # their number ends a march that crawls (a tiny `dt0`, rejected steps).
        max_iters = 2 * (capacity + 1) * (opts.max_steps // seg_steps + split + 1)

        def cond(c):
            return (c["h"] >= 0) & (c["result"] == RESULTS.successful) & (
                c["it"] < max_iters)

        def body(c):
            stack_t, stack_y, h = c["t"], c["y"], c["h"]
            marching, t_m, y_m = c["marching"], c["t_m"], c["y_m"]
            # While marching, the interval being split ends at T[h + R].
            end = h + jnp.where(marching, split, 1)
            a = jnp.where(marching, t_m, stack_t[h])
            y_a = _where(marching, y_m, at(stack_y, h))
            b = stack_t[end]
            # Each loop starts with the step size the last one reached (the
            # re-solves forwards, the adjoint spans backwards), not with the
            # controller's initial-step heuristic.
            dense, y_end, t_end, reached, too_long, dt_f = _resolve(
                problem, y_a, a, b, c["store"], c["dt_f"])
            leaf = reached & ~marching

            def adjoint(_):
                # Under vmap both branches run: an empty interval costs nothing.
                out = bp.span(ys, dense, c["z"], c["carry"], -b,
                              jnp.where(leaf, -a, -b), c["j"], opts.dt0,
                              dt_start=c["dt_b"])
                dt_b = jnp.where(leaf, out.dt, c["dt_b"])
                return out.z, out.carry, out.jump_index, out.result, dt_b

            if bp.meter is None:
                z, carry_, j, back_result, dt_b = lax.cond(
                    leaf, adjoint,
                    lambda _: (c["z"], c["carry"], c["j"], RESULTS.successful,
                               c["dt_b"]), None)
            else:
                # The meter's callbacks cannot be batched inside a `cond`
                # (`vmap`); off a leaf the span is empty and changes nothing.
                z, carry_, j, back_result, dt_b = adjoint(None)
            # A solve that ran out of steps starts a march (or continues one).
            start = too_long & ~marching
            room = h + split < capacity
            parts = stack_t[h] + (b - stack_t[h]) * fractions
            new_t = jnp.where(start, jnp.concatenate([parts, b[None]]),
                              lax.dynamic_slice_in_dim(stack_t, h + 1, split))
            old_y = jtu.tree_map(lambda x: lax.dynamic_slice_in_dim(x, h + 1, split),
                                 stack_y)
            end_y = jtu.tree_map(lambda x, e: x.at[-1].set(e), old_y, at(stack_y, h + 1))
            new_y = _where(start, end_y, old_y)
            # The states of the split points this solve passed.
            t_stop = jnp.where(reached, b, t_end)
            passed = (new_t > a) & (new_t <= t_stop) & (jnp.arange(split) < split - 1)
            passed = passed & (marching | start)
            y_pass = jax.vmap(dense.y)(new_t)
            new_y = jtu.tree_map(
                lambda old, new: jnp.where(
                    passed.reshape((-1,) + (1,) * (old.ndim - 1)), new, old),
                new_y, y_pass)
            put = lambda x, new: lax.dynamic_update_slice_in_dim(x, new, h + 1, 0)  # noqa: E731
            stack_t = put(stack_t, new_t)
            stack_y = jtu.tree_map(put, stack_y, new_y)
            march_on = (marching | start) & ~reached
            march_done = marching & reached
            status = RESULTS.where(reached | too_long, back_result,
                                   RESULTS.solver_failed)
            # Out of room for a split, or a march that cannot move (every step of a
            # re-solve rejected): give up rather than loop.
            stuck = (start & ~room) | (march_on & ~(t_stop > a))
            status = RESULTS.where(stuck, RESULTS.checkpoint_depth_exceeded, status)
            return dict(
                t=stack_t, y=stack_y,
                h=jnp.where(leaf, h - 1, jnp.where(march_done, h + split - 1, h)),
                z=z, carry=carry_, j=j, result=status, marching=march_on,
                t_m=jnp.where(march_on, t_stop, t_m), y_m=_where(march_on, y_end, y_m),
                it=c["it"] + 1, store=dense.interp.infos, dt_f=dt_f, dt_b=dt_b)

        init = dict(
            t=pad(cps), y=jtu.tree_map(pad, ycps),
            h=jnp.where(active, k - 1, -1).astype(jnp.int32), z=z, carry=carry,
            j=jnp.array(0, jnp.int32), result=RESULTS.successful,
            marching=jnp.array(False), t_m=cps[0], y_m=at(ycps, 0),
            it=jnp.array(0, jnp.int32), store=_resolve_store(problem, seg_steps),
            dt_f=jnp.array(jnp.nan, dtype), dt_b=jnp.array(jnp.nan, dtype))
        out = lax.while_loop(cond, body, init)
        result = out["result"]
        unfinished = (out["h"] >= 0) & (result == RESULTS.successful)
        result = RESULTS.where(unfinished, RESULTS.checkpoint_depth_exceeded, result)
        return out["z"], out["carry"], result
