import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from ._common import (
    Jumps,
    dense_evaluate,
    forward_stops,
    piece_of,
    tree_add,
    vjp_y,
    zeros_like,
)
from ._loop import FlatState, backward_loop, check, gauss_legendre, rms_norm
from .base import AbstractAdjoint, Problem, diffrax_result, diffrax_solve, stats_of


def step_nodes(interp, solver, s_a, s_b, dense, nodes, weights, piece, unravel):
    """The Gauss–Legendre nodes of one backward step `[s_a, s_b]`: `(t, y, wλ)`
    with a leading axis of length `len(nodes)`, where `wλ` is `λ` (from the step's
    own interpolant of the loop's flat state, `unravel`ed) times the node's weight
    and the step length, and `y` comes from the forward dense output."""
    h = s_b - s_a
    s_nodes = s_a + nodes * h
    local = solver.interpolation_cls(t0=s_a, t1=s_b, **dense)
    lams = jax.vmap(lambda s: unravel(local.evaluate(s)))(s_nodes)
    ys = jax.vmap(lambda t: dense_evaluate(interp, t, piece))(-s_nodes)
    wh = weights * h
    lams = jtu.tree_map(lambda x: wh.reshape((-1,) + (1,) * (x.ndim - 1)) * x, lams)
    return -s_nodes, ys, lams


def weighted_param_vjp(problem, ts, ys, lams):
    """`Σ_i f_θ(t_i, y_i)ᵀ λ_i` over a batch of nodes (leading axis), as ONE vjp of
    the field vmapped over the nodes with θ shared: the sum over the batch is the
    transpose of θ's broadcast, so per-node parameter cotangents are never
    materialised (for a dense layer the sum is one matmul)."""
    _, vjp = jax.vjp(
        lambda d: jax.vmap(lambda t, y: problem.f(t, y, d))(ts, ys), problem.diff
    )
    (g,) = vjp(lams)
    return g


class GaussAdjoint(AbstractAdjoint):
    """Continuous adjoint with the parameter integral done by Gauss–Legendre
    quadrature on every backward step (SciMLSensitivity's default `GaussAdjoint`).

    Only `λ` is integrated backwards (`y` interpolated from the forward pass), so
    the backward state is the size of `y` whatever the number of parameters. After
    each accepted backward step, `∫ λᵀ f_θ dt` over that step is added using
    `nodes` Gauss–Legendre points on the step's own dense interpolant: one vjp of
    the field batched over the nodes (θ shared, so the weighted sum over the nodes
    comes out of the vjp directly), no dense storage of `λ`. Prefer it when parameters are many and
    memory matters; `QuadratureAdjoint` does the same integral over stored
    nodes, in larger batches.

    Cost of the forward dense output: diffrax preallocates it for `max_steps`
    steps (for `Tsit5`, 7 stage vectors of size `n` per step), and it is written
    on every call, so time and memory grow with `max_steps · n`, not with the steps
    taken. Measured (bench/results/crossover.md, 5 forward steps, default
    `max_steps=4096`): 36 ms per gradient at n = 256 and 0.66 s at n = 4096, where
    `Discrete` takes 1.1 ms and 8 ms. Set `max_steps` near the steps the solve
    needs (see `sol.stats`), or use `Discrete`.

    **Arguments:** `solver`, `rtol`, `atol`, `max_steps` of the backward solve
    (default: the forward's); `nodes`, the Gauss–Legendre points per step.

    Cites: SciMLSensitivity.jl `GaussAdjoint`; Kidger 2021, "On neural differential
    equations", §5.

    **Example:**

    ```python
    import jax, jax.numpy as jnp, jaxsens
    ts = jnp.linspace(0.0, 1.0, 5)
    loss = lambda k: jnp.sum(jaxsens.solve(lambda t, y, k: -k * y, jnp.array([1.0]),
                             ts, k, sensitivity=jaxsens.GaussAdjoint()).ys)
    jax.grad(loss)(2.0)
    ```
    """

    solver: dfx.AbstractSolver | None = None
    rtol: float | None = None
    atol: float | None = None
    max_steps: int | None = None
    nodes: int = 3

    def __check_init__(self):
        if not isinstance(self.nodes, int) or self.nodes < 1:
            raise ValueError(f"`nodes` must be a positive int, got {self.nodes!r}.")

    def forward(self, problem: Problem):
        sol = diffrax_solve(
            problem.field, problem.y0, problem.ts, problem.args, problem.options,
            adjoint=dfx.ForwardMode(), dense=True,
        )
        return sol.ys, stats_of(sol), diffrax_result(sol.result), sol.interpolation

    def backward(self, problem: Problem, interp, ys_bar):
        solver, rtol, atol, max_steps = self.backward_settings(problem)
        jumps = Jumps(problem, ys_bar)
        nodes, weights = gauss_legendre(self.nodes, jnp.result_type(problem.ts))
        unravel = FlatState(jumps.initial()).unravel

        def vf(s, lam, piece):
            return vjp_y(problem, -s, dense_evaluate(interp, -s, piece), lam)

        def jump_fn(lam, mu, j):
            return tree_add(lam, jumps.cotangent(j)), mu

        def on_step(mu, s_a, s_b, lam_a, lam_b, dense, aux, keep):
            inc = weighted_param_vjp(problem, *step_nodes(
                interp, solver, s_a, s_b, dense, nodes, weights, aux, unravel))
            return tree_add(mu, jtu.tree_map(lambda g: jnp.where(keep, g, 0), inc))

        out = backward_loop(
            vf=vf, z0=jumps.initial(), s0=jumps.s0, s_end=jumps.s_end,
            jump_times=jumps.times, num_jumps=jumps.num, jump_index=0,
            jump_fn=jump_fn, solver=solver, rtol=rtol, atol=atol, norm=rms_norm,
            max_steps=max_steps, dt0=problem.options.dt0, on_step=on_step,
            extra0=zeros_like(problem.diff), stop_times=forward_stops(interp),
            piece_of=piece_of(interp),
        )
        return out.extra, out.z, out.result
