import diffrax as dfx
import jax.numpy as jnp
import jax.tree_util as jtu

from .._solution import RESULTS
from ._common import Jumps, tree_add, vjp_y_and_params, zeros_like
from ._loop import backward_loop, check, rms_norm
from .base import AbstractAdjoint, Problem, diffrax_result, diffrax_solve, stats_of


def _drift(y, y_saved, rtol, atol):
    """RMS of the difference, in units of the solver's own error scale."""
    diffs = jtu.tree_map(
        lambda a, b: jnp.ravel((a - b) / (atol + rtol * jnp.abs(b))), y, y_saved
    )
    d = jnp.concatenate(jtu.tree_leaves(diffs))
    return jnp.where(jnp.all(jnp.isfinite(d)), jnp.sqrt(jnp.mean(d**2)), jnp.inf)


def _max_abs(tree):
    return jnp.max(jnp.stack([jnp.max(jnp.abs(c)) for c in jtu.tree_leaves(tree)]))


class BacksolveAdjoint(AbstractAdjoint):
    """Continuous adjoint that re-integrates `y` backwards together with `λ` and `μ`.

    Cheapest in memory (nothing but the saved outputs is stored), but the backward
    problem `y' = f` run from `t_N` to `t0` is unstable wherever the forward one is
    dissipative: errors grow like the forward problem's decay rate. jaxsens guards
    against the silently wrong gradient that results: at every save time the
    re-integrated `y` is compared with the forward pass's saved state and reset to
    it (as SciMLSensitivity does); if the drift exceeds `max_drift` (measured in
    units of `atol + rtol·|y|`) or is not finite, an error is raised that names
    `InterpolatingAdjoint` as the fix. Prefer `InterpolatingAdjoint` unless memory is
    the binding constraint.

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
    seminorm: bool = True
    max_steps: int | None = None
    max_drift: float = 1e3

    def forward(self, problem: Problem):
        sol = diffrax_solve(
            problem.field, problem.y0, problem.ts, problem.args, problem.options,
            adjoint=dfx.ForwardMode(),
        )
        return sol.ys, stats_of(sol), diffrax_result(sol.result), sol.ys

    def backward(self, problem: Problem, ys, ys_bar):
        solver, rtol, atol, max_steps = self.backward_settings(problem)
        jumps = Jumps(problem, ys_bar)
        norm = (lambda z: rms_norm(z[:2])) if self.seminorm else rms_norm

        def vf(s, z, aux):
            del aux  # `y` is integrated, not interpolated: no forward piece
            y, lam, _ = z
            fy, lam_y, lam_d = vjp_y_and_params(problem, -s, y, lam)
            return jtu.tree_map(jnp.negative, fy), lam_y, lam_d

        def jump_fn(z, drift, j):
            y, lam, mu = z
            y_saved = jtu.tree_map(lambda c: c[jumps.n - 2 - j], ys)
            drift = jnp.maximum(drift, _drift(y, y_saved, rtol, atol))
            return (y_saved, tree_add(lam, jumps.cotangent(j)), mu), drift

        y_end = jtu.tree_map(lambda c: c[-1], ys)
        z0 = (y_end, jumps.initial(), zeros_like(problem.diff))
        dtype = jnp.result_type(problem.ts)
        out = backward_loop(
            vf=vf, z0=z0, s0=jumps.s0, s_end=jumps.s_end, jump_times=jumps.times,
            num_jumps=jumps.num, jump_index=0, jump_fn=jump_fn, solver=solver,
            rtol=rtol, atol=atol, norm=norm, max_steps=max_steps,
            dt0=problem.options.dt0,
            extra0=jnp.array(0.0, dtype),
        )
        y, lam, mu = out.z
        drift = jnp.maximum(out.extra, _drift(y, problem.y0, rtol, atol))
        # Divergence usually shows first as an exhausted step budget or a failed
        # implicit step rather than as drift at a save time.
        budget = (out.result == RESULTS.backward_max_steps_reached) | (
            out.result == RESULTS.solver_failed
        )
        # Tell the two apart by the drift met so far and by the size of the
        # re-integrated state.
        scale = _max_abs(ys)
        size = _max_abs(y)
        blown_up = ~(size <= 1e3 * (scale + atol))
        diverged = jnp.where(
            budget, (out.extra > self.max_drift) | blown_up, drift > self.max_drift
        )
        diverged = diverged | (out.result == RESULTS.solver_failed)
        result = RESULTS.where(
            ((out.result == RESULTS.successful) | budget) & diverged,
            RESULTS.backsolve_diverged,
            out.result,
        )
        # Attach the check to every output: JAX drops unused outputs (and an error
        # attached only to them) when e.g. only parameter gradients are needed.
        return mu, lam, result
