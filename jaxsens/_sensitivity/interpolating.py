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
from ._common import (
    Jumps,
    dense_evaluate,
    forward_stops,
    piece_of,
    tree_add,
    vjp_y_and_params,
    zeros_like,
)
from ._loop import FlatState, _where, backward_loop, check, dense_info_like, rms_norm
from .base import (
    AbstractAdjoint,
    Problem,
    diffrax_result,
    diffrax_solve,
    stats_of,
)


def _split_depth(max_steps: int, seg_steps: int, split: int) -> int:
    """Levels of splitting the checkpoint stack makes room for: enough for a
    forward solve of `max_steps` steps spread evenly, plus two for uneven ones."""
    ratio = max(max_steps / seg_steps, 1.0)
    return math.ceil(math.log(ratio) / math.log(split)) + 2


class _Dense(eqx.Module):
    """The dense output of a re-solve, shaped as diffrax's `DenseInterpolation`
    for `piece_of`/`dense_evaluate`/`forward_stops`: `ts` (unused tail `+inf`),
    the number `ts_size` of valid times, one `infos` entry per step, and the
    solver's `interpolation_cls`; its values are `FlatState(y).ravel`ed."""

    ts: Array
    ts_size: Array
    infos: PyTree
    interpolation_cls: type = eqx.field(static=True)


def _resolve(problem: Problem, y_a, a, b, steps: int):
    """`y` re-solved from `(a, y_a)` towards `b` in at most `steps` steps, with its
    dense output: `(dense, unravel, y_end, t_end, reached, too_long)`.

    Driven by `backward_loop` (its time runs forward here; no jumps), which keeps
    each step's dense information in a buffer of `steps` entries. A second
    `diffeqsolve` would do the same, but costs ~0.5 s more to compile.
    """
    opts = problem.options
    dtype = jnp.result_type(problem.ts)
    flat = FlatState(y_a)

    def vf(t, y, aux):
        del aux
        return problem.f(t, y)

    like = dense_info_like(opts.solver, opts.rtol, opts.atol, opts.dt0, vf, a, y_a)
    ts0 = jnp.full(steps + 1, jnp.inf, dtype).at[0].set(a)
    infos0 = jtu.tree_map(lambda x: jnp.zeros((steps,) + x.shape, x.dtype), like)

    def on_step(store, t_a, t_b, y0_, y1_, dense, aux, keep):
        # Slot `k` is overwritten until its step is accepted.
        ts, infos, k = store
        infos = jtu.tree_map(lambda buf, x: buf.at[k].set(x), infos, dense)
        ts = ts.at[k + 1].set(jnp.where(keep, t_b, jnp.inf))
        return ts, infos, k + keep.astype(k.dtype)

    out = backward_loop(
        vf=vf, z0=y_a, s0=a, s_end=b, jump_times=jnp.zeros((0,), dtype),
        num_jumps=0, jump_index=0, jump_fn=lambda z, e, j: (z, e),
        solver=opts.solver, rtol=opts.rtol, atol=opts.atol, norm=rms_norm,
        max_steps=steps, dt0=opts.dt0, on_step=on_step,
        extra0=(ts0, infos0, jnp.array(0, jnp.int32)),
    )
    ts, infos, count = out.extra
    dense = _Dense(ts, count + 1, infos, opts.solver.interpolation_cls)
    reached = (out.result == RESULTS.successful) & (out.s >= b)
    too_long = out.result == RESULTS.backward_max_steps_reached
    return dense, flat.unravel, out.z, out.s, reached, too_long


class InterpolatingAdjoint(AbstractAdjoint):
    """Continuous adjoint with `y(t)` interpolated from the forward pass.

    The backward pass integrates `λ' = -f_yᵀλ`, `μ' = -f_θᵀλ` in one adaptive loop
    over the whole span, adding each save time's cotangent to `λ` on arrival; `y(t)`
    comes from the forward solve's dense output (no backward re-integration, so it
    is stable on dissipative problems, unlike `BacksolveAdjoint`).

    With `checkpoints=K` no dense output is stored: `K + 1` evenly spread entries
    of `(t0, y0), (ts[i], ys[i])` serve as checkpoints (SciMLSensitivity also
    checkpoints at the save times). The
    backward pass re-solves `y` forward over each interval between them, with a
    dense output of at most `segment_max_steps` steps, just before integrating the
    adjoint over it. An interval that needs more steps is split into `K` parts
    (recursively, as in revolve-style checkpointing), the parts' start states
    found by re-solving. Memory is `O(K·log(max_steps)·n)` states plus one dense
    output of `segment_max_steps` steps: flat in the number of steps taken. Time:
    one more forward solve per level of splitting (none when each interval fits).

    Without checkpoints, its time and memory include the forward dense output,
    which diffrax preallocates for `max_steps` steps (see `GaussAdjoint`'s note).

    With an implicit backward solver (`Kvaerno5`), `μ` (one entry per parameter) is
    part of the implicitly solved state, so each step factorises an
    `(n + p) × (n + p)` matrix: fine for a few parameters, hopeless for 10⁴ (seed
    000's stiff variant did not finish in 120 s). Prefer `GaussAdjoint` there: it
    integrates only `λ` (size `n`) and gets `μ` by quadrature.

    **Arguments:**

    - `checkpoints`: `None` (store the whole dense output) or the number `K` of
        intervals to re-solve.
    - `solver`, `rtol`, `atol`: the backward solve's (default: the forward's).
    - `seminorm`: leave `μ` out of the backward error control (Kidger, Chen & Lyons
        2021); fewer steps, same accuracy in `λ`.
    - `max_steps`: the backward step budget (default: twice the forward's plus
        `len(ts)`).
    - `segment_max_steps`: with checkpoints, the most steps one re-solve keeps as
        dense output (default 256); longer intervals are split.

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

    checkpoints: int | None = None
    solver: dfx.AbstractSolver | None = None
    rtol: float | None = None
    atol: float | None = None
    seminorm: bool = True
    max_steps: int | None = None
    segment_max_steps: int | None = None

    def __check_init__(self):
        if self.checkpoints is not None and (
            not isinstance(self.checkpoints, int) or self.checkpoints < 1
        ):
            raise ValueError(
                "`InterpolatingAdjoint(checkpoints=...)` must be a positive int "
                f"(the number of re-solved intervals) or None, got {self.checkpoints!r}."
            )

    def _segment_steps(self):
        return 256 if self.segment_max_steps is None else self.segment_max_steps

    def _checkpointed(self, problem: Problem, residuals, run, z0):
        """The backward pass from `K + 1` stored states, in constant memory.

        A stack holds checkpoints `(t, y)`; the interval under work is
        `[T[h], T[h + 1]]`. Each iteration makes one forward solve of at most
        `segment_max_steps` steps with dense output (its buffer is preallocated once,
        whatever the length of the whole solve):

        - from `T[h]`: if it reaches `T[h + 1]`, the adjoint is integrated back over
          the interval on that dense output and the interval is popped. If not, the
          interval is split into `R` equal parts: their times go on the stack and a
          *march* starts, filling in their states.
        - while marching: the solve continues from where the last one stopped; the
          split points it passes get their states from its dense output. When it
          reaches the end of the interval, the march is over and the last part is
          the interval under work.

        Recursive checkpointing (as in revolve): memory `(K + (R - 1)·depth)·n`
        states plus one dense output of `segment_max_steps` steps, flat in the
        number of steps; cost: one more forward solve per level of splitting. One
        solve, traced once, serves both purposes, which keeps compile time down.
        """
        opts = problem.options
        # Checkpoints: K + 1 evenly spread entries of (t0, y0), (ts[i], ys[i]).
        num = problem.ts.shape[0]
        picks = np.unique(np.round(np.linspace(0, num, self.checkpoints + 1)).astype(int))
        cps = jnp.concatenate([opts.t0[None], problem.ts])[picks]
        ycps = jtu.tree_map(
            lambda y0, ys: jnp.concatenate([y0[None], ys])[picks], problem.y0, residuals
        )
        k = picks.shape[0] - 1
        split = max(k, 2)
        seg_steps = self._segment_steps()
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
            return (c[2] >= 0) & (c[5] == RESULTS.successful) & (c[9] < max_iters)

        def body(c):
            stack_t, stack_y, h, z, j, result, marching, t_m, y_m, it = c
            # While marching, the interval being split ends at T[h + R].
            end = h + jnp.where(marching, split, 1)
            a = jnp.where(marching, t_m, stack_t[h])
            y_a = _where(marching, y_m, at(stack_y, h))
            b = stack_t[end]
            interp, unravel, y_end, t_end, reached, too_long = _resolve(
                problem, y_a, a, b, seg_steps
            )
            leaf = reached & ~marching

            def adjoint(_):
                # Under vmap both branches run: an empty interval costs nothing.
                out = run(interp, z, -b, jnp.where(leaf, -a, -b), j, opts.dt0, unravel)
                return out.z, out.jump_index, out.result

            z, j, back_result = lax.cond(
                leaf, adjoint, lambda _: (z, j, RESULTS.successful), None
            )
            # A solve that ran out of steps starts a march (or continues one).
            start = too_long & ~marching
            room = h + split < capacity
            parts = stack_t[h] + (b - stack_t[h]) * fractions
            new_t = jnp.where(start, jnp.concatenate([parts, b[None]]),
                              lax.dynamic_slice_in_dim(stack_t, h + 1, split))
            old_y = jtu.tree_map(lambda x: lax.dynamic_slice_in_dim(x, h + 1, split), stack_y)
            end_y = jtu.tree_map(lambda x, e: x.at[-1].set(e), old_y, at(stack_y, h + 1))
            new_y = _where(start, end_y, old_y)
            # The states of the split points this solve passed.
            t_stop = jnp.where(reached, b, t_end)
            passed = (new_t > a) & (new_t <= t_stop) & (jnp.arange(split) < split - 1)
            passed = passed & (marching | start)
            y_pass = jax.vmap(lambda t: unravel(dense_evaluate(interp, t)))(new_t)
            new_y = jtu.tree_map(
                lambda old, new: jnp.where(
                    passed.reshape((-1,) + (1,) * (old.ndim - 1)), new, old
                ),
                new_y, y_pass,
            )
            put = lambda x, new: lax.dynamic_update_slice_in_dim(x, new, h + 1, 0)  # noqa: E731
            stack_t = put(stack_t, new_t)
            stack_y = jtu.tree_map(put, stack_y, new_y)
            march_on = (marching | start) & ~reached
            march_done = marching & reached
            t_m = jnp.where(march_on, t_stop, t_m)
            y_m = _where(march_on, y_end, y_m)
            h = jnp.where(leaf, h - 1, jnp.where(march_done, h + split - 1, h))
            status = RESULTS.where(
                reached | too_long, back_result, RESULTS.solver_failed
            )
            # Out of room for a split, or a march that cannot move (every step of a
            # re-solve rejected): give up rather than loop.
            stuck = (start & ~room) | (march_on & ~(t_stop > a))
            status = RESULTS.where(stuck, RESULTS.checkpoint_depth_exceeded, status)
            return (stack_t, stack_y, h, z, j, status, march_on, t_m, y_m, it + 1)

        init = (
            pad(cps), jtu.tree_map(pad, ycps), jnp.array(k - 1, jnp.int32), z0,
            jnp.array(0, jnp.int32), RESULTS.successful, jnp.array(False),
            cps[0], at(ycps, 0), jnp.array(0, jnp.int32),
        )
        out = lax.while_loop(cond, body, init)
        (lam, mu), result = out[3], out[5]
        unfinished = (out[2] >= 0) & (result == RESULTS.successful)
        result = RESULTS.where(unfinished, RESULTS.checkpoint_depth_exceeded, result)
        return lam, mu, result

    def forward(self, problem: Problem):
        opts = problem.options
        if self.checkpoints is None:
            sol = diffrax_solve(
                problem.field, problem.y0, problem.ts, problem.args, opts,
                adjoint=dfx.ForwardMode(), dense=True,
            )
            residuals = sol.interpolation
            ys = sol.ys
        else:
            # The checkpoints are K + 1 of the saved states (and y0): the forward
            # solve is a plain one, with no second set of save times to trace.
            sol = diffrax_solve(
                problem.field, problem.y0, problem.ts, problem.args, opts,
                adjoint=dfx.ForwardMode(),
            )
            ys = sol.ys
            residuals = ys
        return ys, stats_of(sol), diffrax_result(sol.result), residuals

    def backward(self, problem: Problem, residuals, ys_bar):
        solver, rtol, atol, max_steps = self.backward_settings(problem)
        jumps = Jumps(problem, ys_bar)
        norm = (lambda z: rms_norm(z[0])) if self.seminorm else rms_norm

        def make_vf(interp, unravel):
            def vf(s, z, piece):
                lam, _ = z
                t = -s
                y = unravel(dense_evaluate(interp, t, piece))
                _, lam_y, lam_d = vjp_y_and_params(problem, t, y, lam)
                return lam_y, lam_d

            return vf

        def jump_fn(z, extra, j):
            lam, mu = z
            return (tree_add(lam, jumps.cotangent(j)), mu), extra

        def run(interp, z0, s0, s_end, j, dt0, unravel=lambda y: y):
            return backward_loop(
                vf=make_vf(interp, unravel), z0=z0, s0=s0, s_end=s_end,
                jump_times=jumps.times, num_jumps=jumps.num, jump_index=j,
                jump_fn=jump_fn, solver=solver, rtol=rtol, atol=atol, norm=norm,
                max_steps=max_steps, dt0=dt0, stop_times=forward_stops(interp),
                piece_of=piece_of(interp),
            )

        z0 = (jumps.initial(), zeros_like(problem.diff))
        if self.checkpoints is None:
            out = run(residuals, z0, jumps.s0, jumps.s_end, 0, problem.options.dt0)
            (lam, mu), result = out.z, out.result
        else:
            lam, mu, result = self._checkpointed(problem, residuals, run, z0)
        # Attach the check to every output: JAX drops unused outputs (and an error
        # attached only to them) when e.g. only parameter gradients are needed.
        return mu, lam, result

