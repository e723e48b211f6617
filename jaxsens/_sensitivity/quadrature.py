import diffrax as dfx
import jax
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
    vjp_y,
    zeros_like,
)
from ._loop import (
    FlatState,
    backward_loop,
    check,
    gauss_legendre,
    rms_norm,
)
from .base import AbstractAdjoint, Problem, diffrax_result, diffrax_solve, stats_of
from .gauss import step_nodes, weighted_param_vjp


def _node_shapes(problem, lam0, nodes, dtype):
    """Shapes of one backward step's nodes `(t, y, wλ)` as `step_nodes` gives
    them: a leading axis of `nodes`."""
    stack = lambda x: jax.ShapeDtypeStruct((nodes,) + jnp.shape(x), jnp.result_type(x))  # noqa: E731
    return (jax.ShapeDtypeStruct((nodes,), dtype),
            jtu.tree_map(stack, problem.y0), jtu.tree_map(stack, lam0))


class QuadratureAdjoint(AbstractAdjoint):
    """Continuous adjoint: `λ` backwards only, then `∂L/∂θ = ∫ λᵀ f_θ dt` by
    Gauss–Legendre quadrature in large batches (SciMLSensitivity's
    `QuadratureAdjoint`).

    The backward pass integrates only `λ' = -f_yᵀλ` (state the size of `y`; `y`
    interpolated from the forward pass) and keeps, for every backward step, `λ`
    (from the step's own interpolant) and `y` at its `nodes` Gauss–Legendre
    points. The parameter integral is then evaluated over the stored nodes
    `chunk` steps × `nodes` nodes per vjp of the node-batched field (θ shared: the
    weighted sum over the nodes comes out of the vjp, no per-node parameter
    cotangents) — the most parallel way to spend the parameter vjps. The store
    holds `store_steps` backward steps (`nodes · (2n + 1)` numbers each): a longer
    pass runs in segments of that many steps, each integrated when it ends, so
    memory does not grow with the number of steps.

    Like `GaussAdjoint`, its time and memory include the forward dense output,
    which diffrax preallocates for `max_steps` steps (see `GaussAdjoint`'s note).

    **Arguments:** `solver`, `rtol`, `atol`, `max_steps` of the backward solve
    (default: the forward's solver and tolerances, twice its step budget plus
    `len(ts)`); `nodes`, Gauss–Legendre points per backward step;
    `chunk`, backward steps per batched vjp; `store_steps`, backward steps per
    segment (the store's size).

    Cites: SciMLSensitivity.jl `QuadratureAdjoint`; Cao, Li, Petzold & Serban 2003.

    **Example:**

    ```python
    import jax, jax.numpy as jnp, jaxsens
    ts = jnp.linspace(0.0, 1.0, 5)
    loss = lambda k: jnp.sum(jaxsens.solve(lambda t, y, k: -k * y, jnp.array([1.0]),
                             ts, k, sensitivity=jaxsens.QuadratureAdjoint()).ys)
    jax.grad(loss)(2.0)
    ```
    """

    solver: dfx.AbstractSolver | None = None
    rtol: float | None = None
    atol: float | None = None
    max_steps: int | None = None
    nodes: int = 3
    chunk: int = 32
    store_steps: int = 256

    def __check_init__(self):
        for name in ("nodes", "chunk", "store_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"`{name}` must be a positive int, got {v!r}.")

    def forward(self, problem: Problem):
        sol = diffrax_solve(
            problem.field, problem.y0, problem.ts, problem.args, problem.options,
            adjoint=dfx.ForwardMode(), dense=True,
        )
        return sol.ys, stats_of(sol), diffrax_result(sol.result), sol.interpolation

    def backward(self, problem: Problem, interp, ys_bar):
        solver, rtol, atol, max_steps = self.backward_settings(problem)
        jumps = Jumps(problem, ys_bar)
        dtype = jnp.result_type(problem.ts)
        nodes, weights = gauss_legendre(self.nodes, dtype)
        # One segment of the backward pass fills at most the whole store.
        seg = min(self.store_steps, max_steps)
        size = -(-seg // self.chunk) * self.chunk

        def vf(s, lam, piece):
            return vjp_y(problem, -s, dense_evaluate(interp, -s, piece), lam)

        def jump_fn(lam, store, j):
            return tree_add(lam, jumps.cotangent(j)), store

        lam0 = jumps.initial()
        unravel = FlatState(lam0).unravel
        # Each accepted step leaves its Gauss–Legendre nodes in the store: `t`, `y`
        # there (from the step's forward piece, already at hand) and the weighted
        # `λ` (from the step's own interpolant). The integral afterwards is then
        # only batched vjps, with no interpolation or gather left to do.
        zeros = lambda x: jnp.zeros((size,) + x.shape, x.dtype)  # noqa: E731
        bufs0 = jtu.tree_map(zeros, _node_shapes(problem, lam0, self.nodes, dtype))

        def on_step(store, s_a, s_b, lam_a, lam_b, dense, aux, keep):
            # Written in place every step; a rejected step's slot is overwritten by
            # the next one (no select over the whole store).
            bufs, k = store
            pts = step_nodes(interp, solver, s_a, s_b, dense, nodes, weights, aux,
                             unravel)
            bufs = jtu.tree_map(lambda buf, x: buf.at[k].set(x), bufs, pts)
            return bufs, k + keep.astype(k.dtype)

        def integrate(bufs, count, mu):
            def integrate_chunk(c, mu):
                i = c * self.chunk
                t, y, lam = jtu.tree_map(
                    lambda x: lax.dynamic_slice_in_dim(x, i, self.chunk), bufs
                )
                # Unused slots (possibly holding a rejected step's non-finite
                # values, or an earlier segment's): weight zero, at a valid node
                # (slot 0), so the field is evaluated only where it was on the way
                # back.
                valid = jnp.arange(self.chunk) + i < count
                mask = lambda x: valid.reshape((-1,) + (1,) * (x.ndim - 1))  # noqa: E731
                t, y = jtu.tree_map(
                    lambda x, b: jnp.where(mask(x), x, b[0][None]), (t, y), bufs[:2]
                )
                lam = jtu.tree_map(lambda x: jnp.where(mask(x), x, 0), lam)
                # chunk × nodes points through one vjp of the batched field.
                merge = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731
                t, y, lam = jtu.tree_map(merge, (t, y, lam))
                return tree_add(mu, weighted_param_vjp(problem, t, y, lam))

            n_chunks = (count + self.chunk - 1) // self.chunk
            return lax.fori_loop(0, n_chunks, integrate_chunk, mu)

        stops, piece = forward_stops(interp), piece_of(interp)

        # The pass runs in segments of at most `seg` steps, so the store holds
        # `seg` steps whatever the step budget: each segment's nodes are
        # integrated when it ends, and the next segment goes on from where it
        # stopped, with the step size it had reached. Sized by the budget
        # instead, the store cost ~35 µs of a ~110 µs Lotka–Volterra gradient
        # just to allocate, and 6 GB on the 2-D heat equation.
        def cond(c):
            s, *_, used, result = c
            return (s < jumps.s_end) & (result == RESULTS.successful) & (used < max_steps)

        def body(c):
            s, lam, j, dt, mu, bufs, used, _ = c
            out = backward_loop(
                vf=vf, z0=lam, s0=s, s_end=jumps.s_end,
                jump_times=jumps.times, num_jumps=jumps.num, jump_index=j,
                jump_fn=jump_fn, solver=solver, rtol=rtol, atol=atol, norm=rms_norm,
                max_steps=jnp.minimum(seg, max_steps - used),
                dt0=problem.options.dt0, on_step=on_step,
                extra0=(bufs, jnp.array(0, jnp.int32)),
                stop_times=stops, piece_of=piece, dt_start=dt,
            )
            bufs, count = out.extra
            mu = integrate(bufs, count, mu)
            # A segment that used its steps is not a failure: the next one goes on.
            result = RESULTS.where(
                out.result == RESULTS.backward_max_steps_reached,
                RESULTS.successful, out.result,
            )
            return (out.s, out.z, out.jump_index, out.dt, mu, bufs,
                    used + out.num_steps, result)

        init = (
            jumps.s0, lam0, jnp.array(0, jnp.int32), jnp.array(jnp.nan, dtype),
            zeros_like(problem.diff), bufs0, jnp.array(0, jnp.int32),
            RESULTS.successful,
        )
        s, lam, _, _, mu, _, _, result = lax.while_loop(cond, body, init)
        result = RESULTS.where(
            (s < jumps.s_end) & (result == RESULTS.successful),
            RESULTS.backward_max_steps_reached, result,
        )
        return mu, lam, result
