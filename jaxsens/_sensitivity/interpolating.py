import diffrax as dfx
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu

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
from ._loop import backward_loop, check, rms_norm
from .base import AbstractAdjoint, Problem, diffrax_result, diffrax_solve, stats_of


class InterpolatingAdjoint(AbstractAdjoint):
    """Continuous adjoint with `y(t)` interpolated from the forward pass.

    The backward pass integrates `λ' = -f_yᵀλ`, `μ' = -f_θᵀλ` in one adaptive loop
    over the whole span, adding each save time's cotangent to `λ` on arrival; `y(t)`
    comes from the forward solve's dense output (no backward re-integration, so it
    is stable on dissipative problems, unlike `BacksolveAdjoint`).

    With `checkpoints=K` only `K + 1` states are stored on the forward pass; the
    backward pass re-solves `y` forward on each of the `K` intervals (with dense
    output) just before integrating the adjoint over it: memory O(K + steps/K)
    instead of O(steps), at the cost of a second forward solve.

    Like `GaussAdjoint`, its time and memory include the forward dense output,
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
    - `segment_max_steps`: with checkpoints, the step budget of each interval's
        forward re-solve (default `max(256, 4 * max_steps // checkpoints)`).

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

    def _segment_steps(self, max_steps):
        if self.segment_max_steps is not None:
            return self.segment_max_steps
        return max(256, 4 * max_steps // self.checkpoints)

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
            cps = jnp.linspace(opts.t0, problem.ts[-1], self.checkpoints + 1)
            saveat = dfx.SaveAt(
                subs=[dfx.SubSaveAt(ts=problem.ts), dfx.SubSaveAt(ts=cps)]
            )
            sol = diffrax_solve(
                problem.field, problem.y0, problem.ts, problem.args, opts,
                adjoint=dfx.ForwardMode(), saveat=saveat,
            )
            ys, ycps = sol.ys
            residuals = (cps, ycps)
        return ys, stats_of(sol), diffrax_result(sol.result), residuals

    def backward(self, problem: Problem, residuals, ys_bar):
        solver, rtol, atol, max_steps = self.backward_settings(problem)
        jumps = Jumps(problem, ys_bar)
        norm = (lambda z: rms_norm(z[0])) if self.seminorm else rms_norm

        def make_vf(interp):
            def vf(s, z, piece):
                lam, _ = z
                t = -s
                y = dense_evaluate(interp, t, piece)
                _, lam_y, lam_d = vjp_y_and_params(problem, t, y, lam)
                return lam_y, lam_d

            return vf

        def jump_fn(z, extra, j):
            lam, mu = z
            return (tree_add(lam, jumps.cotangent(j)), mu), extra

        def run(interp, z0, s0, s_end, j, dt0):
            return backward_loop(
                vf=make_vf(interp), z0=z0, s0=s0, s_end=s_end,
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
            cps, ycps = residuals
            seg_steps = self._segment_steps(problem.options.max_steps)

            def segment(carry, i):
                z, j, result = carry
                y_start = jtu.tree_map(lambda c: c[i], ycps)
                sol = diffrax_solve(
                    problem.field, y_start, lax.dynamic_slice_in_dim(cps, i + 1, 1), problem.args,
                    problem.options, adjoint=dfx.ForwardMode(), t0=cps[i],
                    saveat=dfx.SaveAt(t1=True, dense=True), max_steps=seg_steps,
                )
                out = run(sol.interpolation, z, -cps[i + 1], -cps[i], j, problem.options.dt0)
                seg_result = diffrax_result(sol.result)
                seg_result = RESULTS.where(
                    seg_result == RESULTS.successful,
                    out.result,
                    RESULTS.backward_max_steps_reached,
                )
                result = RESULTS.where(result == RESULTS.successful, seg_result, result)
                return (out.z, out.jump_index, result), None

            init = (z0, jnp.array(0, jnp.int32), RESULTS.successful)
            (z, _, result), _ = lax.scan(
                segment, init, jnp.arange(self.checkpoints - 1, -1, -1)
            )
            lam, mu = z
        # Attach the check to every output: JAX drops unused outputs (and an error
        # attached only to them) when e.g. only parameter gradients are needed.
        return check((mu, lam), result, problem.options.throw)

