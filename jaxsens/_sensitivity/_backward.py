"""The backward pass of every continuous adjoint, written once.

Every continuous adjoint integrates `λ' = -f_yᵀλ` backwards from `t_N` to `t0`,
adding each save time's cotangent to `λ` on arrival, and returns `∂L/∂y0 = λ(t0)`
and `∂L/∂θ = ∫ f_θᵀλ dt`. They differ in two choices, each a small strategy
object here:

- how `y(t)` is had on the way back (`_recovery.py`): `Reintegrate` (`y` in
    the backward state), `Interpolate` (the forward solve's dense data),
    `Resolve` (re-solved from checkpoints, interval by interval);
- how the parameter integral is accumulated (`_integral.py`): `InState` (`μ` in
    the backward state), `GaussPerStep` (Gauss–Legendre nodes on every backward
    step), `StoredNodes` (nodes stored, then batched into few vjps).

`BackwardPass` composes them: it owns the save-time jumps, the backward ODE and
its error norm, one loop (`_loop.backward_loop`) per span of the recovery, and
the step and vjp counts (`backward_stats`).
"""

import contextlib
import functools
from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import PyTree

from .._solution import RESULTS
from ._loop import LoopField, LoopOutput, Stops, backward_loop, rms_norm
from .base import Problem


def tree_add(a, b):
    return jtu.tree_map(lambda x, y: x + y, a, b)


def zeros_like(tree):
    return jtu.tree_map(jnp.zeros_like, tree)


class AdjointState(eqx.Module):
    """The backward ODE's state: `λ`, and `y` / `μ` when a strategy carries them
    (`None` otherwise)."""

    lam: PyTree
    y: PyTree = None
    mu: PyTree = None


class Carry(eqx.Module):
    """What a pass accumulates beside its ODE state: the parameter integral's and
    the y recovery's running values, and the progress meter's state (`None`
    without a meter)."""

    integral: PyTree
    recovery: PyTree
    progress: PyTree = None


class AbstractRecovery(eqx.Module):
    """How `y(t)` is had on the way back."""

    def forward(self, problem: Problem):
        """The forward solve: `(ys, stats, result, residuals)`."""
        raise NotImplementedError

    def y0(self, problem: Problem, residuals) -> PyTree:
        """`y(t_N)` if it is part of the backward state, else None."""
        return None

    def carry0(self, problem: Problem, residuals) -> PyTree:
        return None

    def at_save(self, bp, residuals, z: AdjointState, carry, j):
        """At the `j`-th save time met (after `λ`'s jump)."""
        return z, carry

    def run(self, bp: "BackwardPass", residuals, z: AdjointState, carry: Carry):
        """Drive `bp.span` over `[s0, s_end]`: `(z, carry, result)`."""
        raise NotImplementedError

    def result(self, bp, residuals, z: AdjointState, carry, result):
        return result


class AbstractIntegral(eqx.Module):
    """How `∫ f_θᵀλ dt` is accumulated."""

    in_state: eqx.AbstractClassVar[bool]
    segmented: eqx.AbstractClassVar[bool]

    def carry0(self, bp) -> PyTree:
        return None

    def on_step(self, bp, data, carry, s_a, s_b, dense, aux, keep, unravel):
        return carry

    def room(self, carry):
        return True

    def flush(self, bp, carry):
        return carry

    def value(self, bp, z: AdjointState, carry):
        """`∂L/∂θ` at the end of the pass."""
        raise NotImplementedError


class DenseData(eqx.Module):
    """`y(t)` as polynomial pieces, one per forward step: a diffrax
    `DenseInterpolation` (or one shaped like it) whose values `unravel` maps back
    to `y`'s PyTree."""

    interp: PyTree
    unravel: Callable = eqx.field(static=True, default=lambda y: y)

    def stops(self):
        return forward_stops(self.interp)

    def piece(self, s_a, s_b, k):
        del s_a, s_b
        interp = self.interp
        index = jnp.clip(interp.ts.shape[0] - 1 - k, 0, jnp.maximum(interp.ts_size - 2, 0))
        return index, polynomial(interp, index)

    def y(self, t, piece=None):
        if piece is None:
            return self.unravel(polynomial(self.interp, dense_index(self.interp, t)).evaluate(t))
        return self.unravel(piece[1].evaluate(t))


def dense_index(interp, t):
    """The forward step whose polynomial piece covers `t` (the one ending at `t`
    on a boundary)."""
    index = jnp.searchsorted(interp.ts, t, side="left")
    return jnp.clip(index - 1, 0, jnp.maximum(interp.ts_size - 2, 0))


def polynomial(interp, index):
    """The forward step `index`'s polynomial. Evaluated just outside `[t0, t1]`
    it extrapolates (diffrax's own `evaluate` returns NaN there, but implicit
    solvers such as `Kvaerno5` place stages outside their step, c > 1)."""
    info = jtu.tree_map(lambda x: x[index], interp.infos)
    return interp.interpolation_cls(t0=interp.ts[index], t1=interp.ts[index + 1], **info)


def forward_stops(interp):
    """The forward solve's step times as plain stops of the backward loop
    (ascending in `s = -t`).

    `y(t)` from dense data is one polynomial per forward step, with kinks between
    them. The backward controller only sees `λ`: when `λ` is smooth where `y` is
    not (a stiff transient of `y` after `λ` has relaxed), a backward step spanning
    several forward steps misses `y`'s variation in `∫ λᵀ f_θ dt`. Stopping at
    every forward step keeps each backward step inside one polynomial piece.
    """
    # The unused tail of `ts` is +inf: reversed and negated, a -inf head, which
    # the loop skips (stops ≤ s0).
    return -interp.ts[::-1]


# --- counts ------------------------------------------------------------------------

_RECORDS: list | None = None


@contextlib.contextmanager
def _recording():
    global _RECORDS
    outer, _RECORDS = _RECORDS, []
    try:
        yield _RECORDS
    finally:
        _RECORDS = outer


def _count(kind: str, n=1):
    records = _RECORDS
    if records is not None:
        jax.debug.callback(lambda k: records.append((kind, int(np.sum(k)))), n)


def backward_stats(fn: Callable, *args) -> dict[str, int]:
    """Run `fn(*args)` once and count the work of the continuous-adjoint backward
    passes in it.

    `fn` is traced afresh (pass a function, not a function jitted already: a
    cached trace would not count). Counts are summed over every backward pass
    run (every member under `jax.vmap`, finished members included):

    - `steps`, `accepted`: backward loop steps (all tried, accepted);
    - `vjps_y`: vjps of the field w.r.t. `y` (one per stage of every step, `μ`'s
        included when it is in the state);
    - `vjps_params`: batched vjps w.r.t. the parameters made by a quadrature
        (`GaussAdjoint`: one per step; `QuadratureAdjoint`: one per chunk), and
        `nodes`, the points they cover;
    - `resolve_steps`: forward steps re-solved from checkpoints.

    **Example:**

    ```python
    import jax, jax.numpy as jnp, jaxsens
    from jaxsens._sensitivity._backward import backward_stats
    ts = jnp.linspace(0.0, 1.0, 5)
    loss = lambda k: jnp.sum(jaxsens.solve(lambda t, y, k: -k * y, jnp.array([1.0]),
                             ts, k, sensitivity=jaxsens.GaussAdjoint()).ys)
    backward_stats(jax.grad(loss), 2.0)   # {'steps': ..., 'vjps_y': ..., ...}
    ```
    """
    with _recording() as records:
        jax.block_until_ready(eqx.filter_jit(lambda *a: fn(*a))(*args))
        jax.effects_barrier()
    out = dict.fromkeys(
        ("steps", "accepted", "vjps_y", "vjps_params", "nodes", "resolve_steps"), 0)
    for kind, n in records:
        out[kind] += n
    return out


# --- the pass ----------------------------------------------------------------------


class BackwardPass(eqx.Module):
    """One backward pass: `problem`'s adjoint for the cotangents `ys_bar`, with
    `y` had by `recovery` and `∂L/∂θ` accumulated by `integral`."""

    problem: Problem
    ys_bar: PyTree
    recovery: AbstractRecovery
    integral: AbstractIntegral
    solver: dfx.AbstractSolver
    rtol: float
    atol: float
    max_steps: int = eqx.field(static=True)
    seminorm: bool = eqx.field(static=True, default=True)

    # Save times: the pass starts at s0 = -ts[-1] with λ = ȳ[-1]; the j-th save
    # time met, -ts[N - 2 - j], adds ȳ[N - 2 - j]; it ends at s_end = -t0.

    @property
    def num_saves(self) -> int:
        return self.problem.ts.shape[0]

    @property
    def s0(self):
        return -self.problem.ts[-1]

    @property
    def s_end(self):
        return -self.problem.options.t0

    def stops(self, data: DenseData | None) -> Stops:
        """The save times (λ's jumps), the forward steps of `data` (plain stops)
        and the field's `jump_ts` (kinks), all as reversed times `s = -t`."""
        jump_ts = self.problem.options.jump_ts
        kinks = None if jump_ts is None else -jump_ts
        return Stops.of(-self.problem.ts[:-1][::-1],
                        None if data is None else data.stops(), kinks)

    @property
    def meter(self) -> dfx.AbstractProgressMeter | None:
        """The progress meter of `solve(..., progress_meter=...)`, `None` for none
        (nor for `NoProgressMeter`: the loop then carries and calls nothing)."""
        meter = self.problem.options.progress_meter
        return None if isinstance(meter, dfx.NoProgressMeter) else meter

    def progress(self, carry: Carry, s) -> Carry:
        """The meter told the fraction of the whole pass, `[t0, ts[-1]]`, covered
        at `s` (diffrax's progress of a forward solve, run backwards)."""
        span = self.s_end - self.s0
        done = jnp.where(span > 0, (s - self.s0) / jnp.where(span > 0, span, 1), 0)
        state = self.meter.step(carry.progress, jnp.clip(done, 0, 1))
        return Carry(carry.integral, carry.recovery, state)

    def cotangent(self, j):
        return jtu.tree_map(lambda c: c[self.num_saves - 2 - j], self.ys_bar)

    # The backward ODE, in reversed time s = -t.

    def vf(self, data: DenseData | None, s, z: AdjointState, piece) -> AdjointState:
        t = -s
        f = self.problem.f
        y = z.y if data is None else data.y(t, piece)
        _count("vjps_y")
        if z.mu is not None:
            fy, vjp = jax.vjp(lambda y_, d_: f(t, y_, d_), y, self.problem.diff)
            lam_y, mu = vjp(z.lam)
        else:
            fy, vjp = jax.vjp(lambda y_: f(t, y_), y)
            (lam_y,), mu = vjp(z.lam), None
        dy = None if z.y is None else jtu.tree_map(jnp.negative, fy)
        return AdjointState(lam_y, dy, mu)

    def norm(self, z: AdjointState):
        if self.problem.options.running_cost:
            # State `(y, c)`: the parts by `y` and by the cost, each by its RMS
            # (as the forward solve's `cost_norm`), so the cost's constant
            # adjoint does not dilute `λ`'s error.
            def part(i):
                return (z.lam[i], None if z.y is None else z.y[i])

            main = part(0) if self.seminorm else (part(0), z.mu)
            return jnp.maximum(rms_norm(main), rms_norm(part(1)))
        if self.seminorm:
            return rms_norm((z.lam, z.y))
        return rms_norm(z)

    def nodes_y(self, data: DenseData | None, ts, states: AdjointState, piece):
        """`y` at a step's quadrature nodes: from `data`, or from the nodes'
        states when `y` is integrated."""
        if data is None:
            return states.y
        return jax.vmap(lambda t: data.y(t, piece))(ts)

    def param_vjp(self, ts, ys, lams):
        """`Σ_i f_θ(t_i, y_i)ᵀ λ_i` over a batch of nodes (leading axis), as ONE vjp
        of the field vmapped over the nodes with θ shared: the sum over the batch
        is the transpose of θ's broadcast, so per-node parameter cotangents are
        never materialised (for a dense layer the sum is one matmul)."""
        _count("vjps_params")
        _count("nodes", ts.shape[0])
        problem = self.problem
        _, vjp = jax.vjp(
            lambda d: jax.vmap(lambda t, y: problem.f(t, y, d))(ts, ys), problem.diff
        )
        (g,) = vjp(lams)
        return g

    def span(self, residuals, data: DenseData | None, z: AdjointState, carry: Carry,
             s0, s_end, jump_index, dt0=None, max_steps=None,
             dt_start=None) -> LoopOutput:
        """Integrate the pass from `s0` to `s_end` (nothing if equal), with `y` from
        `data` (or in the state), applying the jumps from `jump_index` on.
        `dt_start`, where finite and positive, is the first step's size (as
        `backward_loop`'s).

        A segmented integral (a store of nodes) ends the loop when its store is
        full; the span then empties it and goes on with the step size reached.
        """
        dtype = jnp.result_type(self.problem.ts)
        max_steps = self.max_steps if max_steps is None else max_steps

        def jump(z, carry, j):
            z = eqx.tree_at(lambda z: z.lam, z, tree_add(z.lam, self.cotangent(j)))
            z, rc = self.recovery.at_save(self, residuals, z, carry.recovery, j)
            return z, Carry(carry.integral, rc, carry.progress)

        unravel = _unravel_of(z)

        def on_step(carry, s_a, s_b, z_a, z_b, dense, aux, keep):
            ic = self.integral.on_step(self, data, carry.integral, s_a, s_b, dense, aux,
                                       keep, unravel)
            return Carry(ic, carry.recovery, carry.progress)

        field = LoopField(
            vf=functools.partial(self.vf, data),
            jump=jump,
            on_step=None if type(self.integral).on_step is AbstractIntegral.on_step
            else on_step,
            piece=None if data is None else data.piece,
            room=lambda carry: self.integral.room(carry.integral),
            progress=None if self.meter is None else self.progress,
        )
        loop = functools.partial(
            backward_loop, field, stops=self.stops(data), solver=self.solver,
            rtol=self.rtol, atol=self.atol, norm=self.norm, dt0=dt0,
        )
        if not self.integral.segmented:
            out = loop(z, s0, s_end, max_steps=max_steps, carry0=carry,
                       jump_index=jump_index, dt_start=dt_start)
            _count("steps", out.num_steps)
            _count("accepted", out.num_accepted)
            return out

        def cond(out):
            return ((out.s < s_end) & (out.result == RESULTS.successful)
                    & (out.num_steps < max_steps))

        def body(prev):
            out = loop(prev.z, prev.s, s_end, max_steps=max_steps - prev.num_steps,
                       carry0=prev.carry, jump_index=prev.jump_index, dt_start=prev.dt)
            carry = Carry(self.integral.flush(self, out.carry.integral),
                          out.carry.recovery, out.carry.progress)
            # A segment that used its share of the budget is not a failure yet.
            result = RESULTS.where(out.result == RESULTS.backward_max_steps_reached,
                                   RESULTS.successful, out.result)
            return LoopOutput(out.s, out.z, carry, out.jump_index,
                              prev.num_steps + out.num_steps,
                              prev.num_accepted + out.num_accepted, result, out.dt)

        zero = jnp.array(0, jnp.int32)
        init = LoopOutput(s0, z, carry, jnp.asarray(jump_index, jnp.int32), zero, zero,
                          RESULTS.successful,
                          jnp.array(jnp.nan, dtype) if dt_start is None else dt_start)
        out = lax.while_loop(cond, body, init)
        _count("steps", out.num_steps)
        _count("accepted", out.num_accepted)
        result = RESULTS.where(
            (out.s < s_end) & (out.result == RESULTS.successful),
            RESULTS.backward_max_steps_reached, out.result)
        return eqx.tree_at(lambda o: o.result, out, result)

    def run(self, residuals):
        """`(∂L/∂θ, ∂L/∂y0, result)`; the result is not checked here."""
        problem = self.problem
        lam0 = jtu.tree_map(lambda c: c[-1], self.ys_bar)
        z0 = AdjointState(
            lam0,
            self.recovery.y0(problem, residuals),
            zeros_like(problem.diff) if self.integral.in_state else None,
        )
        meter = self.meter
        carry0 = Carry(self.integral.carry0(self),
                       self.recovery.carry0(problem, residuals),
                       None if meter is None else meter.init())
        z, carry, result = self.recovery.run(self, residuals, z0, carry0)
        if meter is not None:
            meter.close(carry.progress)
        result = self.recovery.result(self, residuals, z, carry.recovery, result)
        return self.integral.value(self, z, carry.integral), z.lam, result


def _unravel_of(z):
    from ._loop import FlatState

    return FlatState(z).unravel
