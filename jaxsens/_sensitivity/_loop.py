"""The backward pass of every continuous adjoint: ONE adaptive loop over the span.

The loop runs in reversed time `s = -t`, drives a diffrax solver's `step` and a
diffrax step-size controller directly, stops exactly at every save time to add that
time's cotangent jump, and (optionally) hands each accepted step to a callback that
accumulates a quadrature. One loop instead of one `diffeqsolve` per save interval is
the difference between ~85 ms and ~1.3 s on the 100-control neural ODE
(DESIGN.md, "Performance traps").
"""

from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, PyTree

from .._solution import RESULTS
from .base import make_controller


def rms_norm(tree) -> Array:
    leaves = [jnp.ravel(x) for x in jtu.tree_leaves(tree)]
    if not leaves:
        return jnp.array(0.0)
    x = jnp.concatenate(leaves)
    return jnp.sqrt(jnp.mean(jnp.abs(x) ** 2))


def seminorm(select: Callable[[PyTree], PyTree]) -> Callable[[PyTree], Array]:
    """An RMS norm over only the part of the state chosen by `select` (Kidger, Chen
    & Lyons 2021, "Hey, that's not an ODE": the parameter adjoint μ is left out of
    the backward error control)."""

    def norm(tree):
        return rms_norm(select(tree))

    return norm


class LoopOutput(eqx.Module):
    s: Array
    z: PyTree
    extra: PyTree
    jump_index: Array
    num_steps: Array
    num_accepted: Array
    result: Array
    dt: Array


class FlatState:
    """A PyTree state as ONE flat vector, for the backward loop.

    diffrax's Runge–Kutta step does its stage arithmetic leaf by leaf, so a
    backward state of several leaves (`(y, λ, μ)`, with `μ` shaped like every
    trainable leaf) costs that many small ops per stage; on a small problem they,
    not the vjps, set the time of a step. Raveled, each stage is one op per
    combination. Leaves of different dtypes (a float32 parameter with a float64
    state) are promoted to their common dtype and cast back by `unravel`; a state
    that is one vector already is left as it is.
    """

    def __init__(self, like: PyTree):
        leaves = jtu.tree_leaves(like)
        one_vector = len(leaves) == 1 and jnp.ndim(leaves[0]) == 1
        self.active = bool(leaves) and not one_vector
        if self.active:
            flat, self._unravel = ravel_pytree(like)
            self.dtype = flat.dtype

    def ravel(self, tree: PyTree) -> PyTree:
        if not self.active:
            return tree
        # Cast: a value (e.g. the field's output) may come back in another dtype.
        return ravel_pytree(tree)[0].astype(self.dtype)

    def unravel(self, flat: PyTree) -> PyTree:
        return self._unravel(flat) if self.active else flat


def _where(pred, a, b):
    return jtu.tree_map(lambda x, y: jnp.where(pred, x, y), a, b)


def backward_loop(
    *,
    vf: Callable,
    z0: PyTree,
    s0: Array,
    s_end: Array,
    jump_times: Array,
    num_jumps: int,
    jump_index: Array,
    jump_fn: Callable,
    solver: dfx.AbstractSolver,
    rtol: float,
    atol: float,
    norm: Callable,
    max_steps: int | Array,
    dt0: Array | None = None,
    on_step: Callable | None = None,
    extra0: PyTree = None,
    stop_times: Array | None = None,
    piece_of: Callable | None = None,
    dt_start: Array | None = None,
) -> LoopOutput:
    """Integrate `dz/ds = vf(s, z, aux)` from `s0` to `s_end` (`s0 < s_end`).

    Steps are clipped to land exactly on each `jump_times[j]` (ascending, in `s`),
    for `j` from `jump_index` up to `num_jumps - 1`; on arrival
    `(z, extra) = jump_fn(z, extra, j)`. After every step, accepted or not,
    `extra = on_step(extra, s_a, s_b, z_a, z_b, dense_info, aux, keep)`; it must
    itself discard a step with `keep` false (e.g. write a store's next slot but
    advance its counter only if `keep`), so that a large store is not selected
    whole at every step. Steps are also
    clipped (with nothing applied) at `stop_times` (ascending in `s`; those
    `≤ s0` are skipped), e.g. the forward solve's step times. `aux =
    piece_of(s_a, s_b, k)` (None without `piece_of`; `k` is the number of
    `stop_times` passed, `stop_times[k - 1] ≤ s_a < stop_times[k]`) is computed once per step and
    handed to `vf(s, z, aux)` and `on_step`. `dt_start`, where finite, is the
    first step's size instead of the controller's initial choice (to continue a
    pass from another loop's `LoopOutput.dt`).

    The solver steps `FlatState(z0)`'s flat vector; `vf`, `jump_fn`, `norm`,
    `on_step` and the output see `z` as a PyTree like `z0`, except `dense_info`,
    which is the flat state's (`FlatState(z0).unravel` a value of its interpolant).
    """
    dtype = jnp.result_type(s0)
    padded = jnp.concatenate([jump_times, jnp.array([jnp.inf], dtype)])
    if stop_times is None:
        stops = jnp.array([jnp.inf], dtype)
    else:
        stops = jnp.concatenate([stop_times.astype(dtype), jnp.array([jnp.inf], dtype)])
    k0 = jnp.searchsorted(stops, s0, side="right").astype(jnp.int32)
    flat = FlatState(z0)
    z0 = flat.ravel(z0)
    user_norm = norm
    norm = lambda z: user_norm(flat.unravel(z))  # noqa: E731
    term = dfx.ODETerm(lambda s, z, aux: flat.ravel(vf(s, flat.unravel(z), aux)))
    aux_of = piece_of if piece_of is not None else (lambda s_a, s_b, k: None)
    solver, controller = prepare_solver(solver, rtol, atol, dt0, norm)
    error_order = solver.error_order(term)
    s1_guess, cstate = controller.init(
        term, s0, s_end, z0, dt0, aux_of(s0, s0, k0), solver.func, error_order
    )
    if dt_start is not None:
        s1_guess = jnp.where(jnp.isfinite(dt_start), s0 + dt_start, s1_guess)
    s1_guess = jnp.minimum(s1_guess, s_end)
    sstate = solver.init(term, s0, s1_guess, z0, aux_of(s0, s0, k0))

    def cond(c):
        s, *_, nsteps, _, result = c
        return (s < s_end) & (nsteps < max_steps) & (result == RESULTS.successful)

    def body(c):
        s, s_prop, z, sstate, cstate, j, k, made_jump, extra, nsteps, nacc, result = c
        next_stop = jnp.minimum(jnp.minimum(padded[j], stops[k]), s_end)
        s1 = jnp.minimum(s_prop, next_stop)
        aux = aux_of(s, s1, k)
        z1, zerr, dense, sstate1, sres = solver.step(
            term, s, s1, z, aux, sstate, made_jump
        )
        # Step sizes are not differentiated (as in diffrax): stopping gradients here
        # also keeps the controller's internal custom_vjp out of forward-over-adjoint
        # (Hessian-vector product) traces.
        sg = lax.stop_gradient
        keep, next_s0, next_s1, _, cstate1, _ = controller.adapt_step_size(
            sg(s), sg(s1), sg(z), sg(z1), None, sg(zerr), error_order, sg(cstate)
        )
        ok = sres == dfx.RESULTS.successful
        keep = keep & ok
        if on_step is not None:
            extra = on_step(
                extra, s, s1, flat.unravel(z), flat.unravel(z1), dense, aux, keep
            )
        z_new = _where(keep, z1, z)
        hit = keep & (s1 == padded[j]) & (j < num_jumps)
        z_jump, extra_jump = jump_fn(
            flat.unravel(z_new), extra, jnp.minimum(j, num_jumps - 1)
        )
        z_new = _where(hit, flat.ravel(z_jump), z_new)
        extra = _where(hit, extra_jump, extra)
        # A step clipped to a save time must not shrink the steps after it.
        dt_next = next_s1 - next_s0
        clipped = keep & (s1 < s_prop)
        dt_next = jnp.where(clipped, jnp.maximum(dt_next, s_prop - s), dt_next)
        s_new = jnp.where(keep, s1, s)
        sstate = _where(keep, sstate1, sstate)
        # A failed implicit step is retried smaller by the controller; only a step
        # that fails at the smallest representable size is fatal.
        result = RESULTS.where(
            ~ok & (s1 - s <= 10 * jnp.finfo(dtype).eps * jnp.abs(s)),
            RESULTS.solver_failed,
            result,
        )
        return (
            s_new,
            s_new + dt_next,
            z_new,
            sstate,
            cstate1,
            j + hit.astype(j.dtype),
            k + (keep & (s1 >= stops[k])).astype(k.dtype),
            # After a jump the solver's FSAL value is stale until a step from the
            # new state is accepted: a rejected retry must not reuse it.
            hit | (made_jump & ~keep),
            extra,
            nsteps + 1,
            nacc + keep.astype(nacc.dtype),
            result,
        )

    init = (
        s0,
        s1_guess,
        z0,
        sstate,
        cstate,
        jnp.asarray(jump_index, jnp.int32),
        k0,
        jnp.array(False),
        extra0,
        jnp.array(0, jnp.int32),
        jnp.array(0, jnp.int32),
        RESULTS.successful,
    )
    s, s_prop, z, _, _, j, _, _, extra, nsteps, nacc, result = lax.while_loop(
        cond, body, init
    )
    result = RESULTS.where(
        (s < s_end) & (result == RESULTS.successful),
        RESULTS.backward_max_steps_reached,
        result,
    )
    return LoopOutput(s, flat.unravel(z), extra, j, nsteps, nacc, result, s_prop - s)


def dense_info_like(solver, rtol, atol, dt0, vf, s0, z0):
    """The `dense_info` one step of `backward_loop` hands to `on_step` (shapes and
    dtypes only), for preallocating a store of them."""
    flat = FlatState(z0)
    z0 = flat.ravel(z0)
    term = dfx.ODETerm(lambda s, z, _: flat.ravel(vf(s, flat.unravel(z), None)))
    step_solver, _ = prepare_solver(solver, rtol, atol, dt0)
    s1 = s0 + 1e-3
    return jax.eval_shape(
        lambda: step_solver.step(
            term, s0, s1, z0, None, step_solver.init(term, s0, s1, z0, None), False
        )[2]
    )


# diffrax's "take this tolerance from the step-size controller" marker, obtained
# through its public API.
_FROM_CONTROLLER = dfx.with_stepsize_controller_tols(dfx.VeryChord)().rtol


def prepare_solver(solver, rtol, atol, dt0, norm=rms_norm):
    """The backward solver (with its root finder's tolerances filled in) and its
    step-size controller."""
    controller = make_controller(solver, rtol, atol, dt0, norm=norm)
    if isinstance(solver, dfx.AbstractRungeKutta) and solver.scan_kind is None:
        # As diffrax's `ForwardMode`: a plain loop over the stages, which
        # forward-mode AD (Hessian-vector products over the adjoint) can trace.
        solver = eqx.tree_at(
            lambda s: s.scan_kind, solver, "lax", is_leaf=lambda x: x is None
        )
    return _root_finder_tolerances(solver, controller), controller


def _root_finder_tolerances(solver, controller):
    """An implicit solver's root finder may defer its tolerances to the step-size
    controller (`diffrax.use_stepsize_tol`); `diffeqsolve` fills them in, and since
    this loop drives `solver.step` itself, so must we."""
    finder = getattr(solver, "root_finder", None)
    if finder is None:
        return solver
    for attr in ("rtol", "atol", "norm"):
        if getattr(finder, attr, None) is _FROM_CONTROLLER:
            if not isinstance(controller, dfx.PIDController):
                raise ValueError(
                    f"The implicit solver's root finder takes its `{attr}` from an "
                    "adaptive step-size controller, but this solve takes constant "
                    "steps; give the root finder explicit tolerances."
                )
            solver = eqx.tree_at(
                lambda s: getattr(s.root_finder, attr), solver,  # noqa: B023 (used at once)
                getattr(controller, attr),
            )
    return solver


def gauss_legendre(n: int, dtype) -> tuple[Array, Array]:
    """Nodes in [0, 1] and weights (summing to 1) of n-point Gauss–Legendre."""
    import numpy as np

    x, w = np.polynomial.legendre.leggauss(n)
    return jnp.asarray((x + 1) / 2, dtype), jnp.asarray(w / 2, dtype)


def check(x, result: Array, throw: bool):
    """Raise the message of `result` (a `RESULTS` member) under jit, if asked."""
    if not throw:
        return x
    return result.error_if(x, result != RESULTS.successful)
