"""The adaptive loop under every continuous adjoint's backward pass (see
`_backward.py` for the pass itself): ONE loop over the span.

The loop runs in reversed time `s = -t`, drives a diffrax solver's `step` and a
diffrax step-size controller directly, stops exactly at every jump time to apply that
time's jump, and (optionally) hands each accepted step to a callback that
accumulates a quadrature. One loop instead of one `diffeqsolve` per save interval
keeps the backward pass's cost in its steps, not in the per-solve overhead of many
short solves (figures: bench/RESULTS.md, "Design measurements").
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
from .base import make_controller, rms_norm as rms_norm


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


class Stops(eqx.Module):
    """Where the backward loop lands exactly, ascending in reversed time `s`.

    - `jumps`: the save times (λ jumps by their cotangent; later also event
        times), padded with one `+inf`.
    - `plain`: stops with nothing applied, counted (the count `k` selects the
        forward solve's polynomial piece): the forward solve's step times (those
        `≤ s0` are skipped), padded with one `+inf`.
    - `kinks`: the field's discontinuities (`jump_ts`), padded with one `+inf`:
        stepped to one ulp before, then resumed one ulp past (as diffrax does
        forwards), so that no stage evaluates the field at the discontinuity.
        Not counted: duplicates, and kinks equal to another stop or to `s0`, are
        harmless.
    """

    jumps: Array
    plain: Array
    num_jumps: int = eqx.field(static=True)
    kinks: Array | None = None

    @classmethod
    def of(cls, jump_times: Array, plain: Array | None = None,
           kinks: Array | None = None) -> "Stops":
        dtype = jump_times.dtype
        inf = jnp.array([jnp.inf], dtype)
        plain = inf if plain is None else jnp.concatenate([plain.astype(dtype), inf])
        if kinks is not None:
            kinks = jnp.concatenate([jnp.sort(kinks.astype(dtype)), inf])
        return cls(jnp.concatenate([jump_times, inf]), plain, jump_times.shape[0],
                   kinks)

    def next_kink(self, s) -> Array:
        """The first kink strictly after `s` (`+inf` if none)."""
        if self.kinks is None:
            return jnp.array(jnp.inf, jnp.result_type(s))
        return self.kinks[jnp.searchsorted(self.kinks, s, side="right")]


class LoopState(eqx.Module):
    """The carry of `backward_loop`'s `lax.while_loop`."""

    s: Array  # current (reversed) time
    s_next: Array  # the controller's proposal for the next step's end
    z: Array  # the flat ODE state
    solver_state: PyTree
    controller_state: PyTree
    jump: Array  # index of the next jump time
    stop: Array  # number of plain stops passed
    made_jump: Array  # the solver's FSAL value is stale
    carry: PyTree  # what `on_step`/`jump` accumulate
    num_steps: Array
    num_accepted: Array
    result: Array


class LoopOutput(eqx.Module):
    s: Array
    z: PyTree
    carry: PyTree
    jump_index: Array
    num_steps: Array
    num_accepted: Array
    result: Array
    dt: Array


class LoopField(eqx.Module):
    """What `backward_loop` integrates, as callbacks (a module so a pass can say
    them once): `vf(s, z, aux)`, `jump(z, carry, j)`,
    `on_step(carry, s_a, s_b, z_a, z_b, dense, aux, keep)` (optional), `piece(s_a,
    s_b, k)` → `aux` (optional), `room(carry)` → whether another step fits
    (optional), `progress(carry, s)` → `carry`, told the time reached after every
    step (optional: a progress meter's update)."""

    vf: Callable
    jump: Callable = lambda z, carry, j: (z, carry)
    on_step: Callable | None = None
    piece: Callable | None = None
    room: Callable | None = None
    progress: Callable | None = None


def _where(pred, a, b):
    return jtu.tree_map(lambda x, y: jnp.where(pred, x, y), a, b)


def backward_loop(
    field: LoopField,
    z0: PyTree,
    s0: Array,
    s_end: Array,
    stops: Stops,
    *,
    solver: dfx.AbstractSolver,
    rtol: float,
    atol: float,
    norm: Callable,
    max_steps: int | Array,
    dt0: Array | None = None,
    carry0: PyTree = None,
    jump_index: Array | int = 0,
    dt_start: Array | None = None,
) -> LoopOutput:
    """Integrate `dz/ds = field.vf(s, z, aux)` from `s0` to `s_end` (`s0 ≤ s_end`;
    equal: nothing is done).

    Steps are clipped to land exactly on each of `stops.jumps[j]` for `j` from
    `jump_index` on; on arrival `(z, carry) = field.jump(z, carry, j)`. Steps are
    clipped to one ulp before each of `stops.kinks` too, and the next one starts
    one ulp past it (unless a jump is that close) with the field re-evaluated; a
    jump exactly at a kink is applied one ulp before it, where the step stops, and
    a plain stop within a few ulps is passed without a step of its own (each such
    one-ulp step would cost a whole step: a control's knots that are also save
    times made every other backward step one). After every
    step, accepted or not, `carry = field.on_step(carry, s_a, s_b, z_a, z_b,
    dense_info, aux, keep)`; it must itself discard a step with `keep` false (e.g.
    write a store's next slot but advance its counter only if `keep`), so that a
    large store is not selected whole at every step. After every step, too,
    `carry = field.progress(carry, s)` with the time `s` reached (accepted or not,
    as diffrax updates its progress meter). Steps are also clipped (with
    nothing applied) at `stops.plain`. `aux = field.piece(s_a, s_b, k)` (`k` the
    number of plain stops passed) is computed once per step and handed to `vf` and
    `on_step`. The loop also ends (successfully) when `field.room(carry)` is false,
    so that a caller can empty a store and go on from `LoopOutput.s`. `dt_start`,
    where finite and positive, is the first step's size (to continue from another
    loop's `LoopOutput.dt`, or from the forward solve's last step); with no `dt0`
    it also skips the controller's initial-step heuristic.

    The solver steps `FlatState(z0)`'s flat vector; the callbacks and the output
    see `z` as a PyTree like `z0`, except `dense_info`, which is the flat state's.
    """
    dtype = jnp.result_type(s0)
    inf = jnp.asarray(jnp.inf, dtype)
    near = 4 * jnp.finfo(dtype).eps
    jumps, plain = stops.jumps, stops.plain
    num_jumps = stops.num_jumps
    k0 = jnp.searchsorted(plain, s0, side="right").astype(jnp.int32)
    flat = FlatState(z0)
    z0 = flat.ravel(z0)
    user_norm = norm
    norm = lambda z: user_norm(flat.unravel(z))  # noqa: E731
    vf = field.vf
    term = dfx.ODETerm(lambda s, z, aux: flat.ravel(vf(s, flat.unravel(z), aux)))
    aux_of = field.piece if field.piece is not None else (lambda s_a, s_b, k: None)
    room = field.room if field.room is not None else (lambda carry: True)
    solver, controller = prepare_solver(solver, rtol, atol, dt0, norm)
    error_order = solver.error_order(term)

    def init(dt):
        return controller.init(
            term, s0, s_end, z0, dt, aux_of(s0, s0, k0), solver.func, error_order
        )

    if dt_start is None:
        s1_guess, cstate = init(dt0)
    else:
        usable = jnp.isfinite(dt_start) & (dt_start > 0)
        if dt0 is not None:
            s1_guess, cstate = init(dt0)
            s1_guess = jnp.where(usable, s0 + dt_start, s1_guess)
        else:
            # A step size carried over from another loop skips the controller's
            # initial-step heuristic (two evaluations of the field).
            s1_guess, cstate = lax.cond(usable, lambda: init(dt_start),
                                        lambda: init(None))
    s1_guess = jnp.minimum(s1_guess, s_end)
    sstate = solver.init(term, s0, s1_guess, z0, aux_of(s0, s0, k0))

    def cond(st: LoopState):
        return ((st.s < s_end) & (st.num_steps < max_steps)
                & (st.result == RESULTS.successful) & room(st.carry))

    def body(st: LoopState) -> LoopState:
        s, j, k = st.s, st.jump, st.stop
        # A plain stop a few ulps ahead (a forward step's end next to a kink) is
        # passed without a step of its own: that step would cost a full step.
        k = k + (plain[k] - s <= near * jnp.maximum(jnp.abs(s), jnp.abs(plain[k]))
                 ).astype(k.dtype)
        # The next kink is stepped to one ulp before it (as diffrax's `jump_ts`
        # forwards: no stage evaluates the field at the discontinuity), or to it
        # if already there.
        kink = stops.next_kink(s)
        before = jnp.nextafter(kink, -inf)
        kink_stop = jnp.where(before > s, before, kink)
        next_stop = jnp.minimum(jnp.minimum(jumps[j], plain[k]), s_end)
        s1 = jnp.minimum(st.s_next, jnp.minimum(next_stop, kink_stop))
        aux = aux_of(s, s1, k)
        z1, zerr, dense, sstate1, sres = solver.step(
            term, s, s1, st.z, aux, st.solver_state, st.made_jump
        )
        # Step sizes are not differentiated (as in diffrax): stopping gradients here
        # also keeps the controller's internal custom_vjp out of forward-over-adjoint
        # (Hessian-vector product) traces.
        sg = lax.stop_gradient
        keep, next_s0, next_s1, _, cstate1, _ = controller.adapt_step_size(
            sg(s), sg(s1), sg(st.z), sg(z1), None, sg(zerr), error_order,
            sg(st.controller_state),
        )
        ok = sres == dfx.RESULTS.successful
        keep = keep & ok
        carry = st.carry
        if field.on_step is not None:
            carry = field.on_step(
                carry, s, s1, flat.unravel(st.z), flat.unravel(z1), dense, aux, keep
            )
        z_new = _where(keep, z1, st.z)
        # A jump at a kink is applied one ulp before it, where the step stops,
        # rather than after a one-ulp step of its own.
        at_jump = (s1 == jumps[j]) | ((s1 == before) & (jumps[j] == kink))
        hit = keep & at_jump & (j < num_jumps)
        if num_jumps > 0:
            z_jump, carry_jump = field.jump(
                flat.unravel(z_new), carry, jnp.minimum(j, num_jumps - 1)
            )
            z_new = _where(hit, flat.ravel(z_jump), z_new)
            carry = _where(hit, carry_jump, carry)
        # A step clipped to a stop must not shrink the steps after it.
        dt_next = next_s1 - next_s0
        clipped = keep & (s1 < st.s_next)
        dt_next = jnp.where(clipped, jnp.maximum(dt_next, st.s_next - s), dt_next)
        s_new = jnp.where(keep, s1, s)
        j_new = j + hit.astype(j.dtype)
        k_new = k + (keep & (s1 >= plain[k])).astype(k.dtype)
        # Then on from one ulp past it, unless another stop comes first (a save
        # time at the kink is applied on the way).
        at_kink = keep & ((s1 == before) | (s1 == kink))
        past = jnp.nextafter(kink, inf)
        following = jnp.minimum(jumps[j_new], s_end)
        s_new = jnp.where(at_kink & (past < following) & (past <= plain[k_new]),
                          past, s_new)
        if field.progress is not None:
            carry = field.progress(carry, s_new)
        # A failed implicit step is retried smaller by the controller; only a step
        # that fails at the smallest representable size is fatal.
        result = RESULTS.where(
            ~ok & (s1 - s <= 10 * jnp.finfo(dtype).eps * jnp.abs(s)),
            RESULTS.solver_failed,
            st.result,
        )
        return LoopState(
            s=s_new,
            s_next=s_new + dt_next,
            z=z_new,
            solver_state=_where(keep, sstate1, st.solver_state),
            controller_state=cstate1,
            jump=j_new,
            stop=k_new,
            # After a jump (or a kink) the solver's FSAL value is stale until a
            # step from the new state is accepted: a rejected retry must not
            # reuse it.
            made_jump=hit | at_kink | (st.made_jump & ~keep),
            carry=carry,
            num_steps=st.num_steps + 1,
            num_accepted=st.num_accepted + keep.astype(jnp.int32),
            result=result,
        )

    init = LoopState(
        s=s0, s_next=s1_guess, z=z0, solver_state=sstate, controller_state=cstate,
        jump=jnp.asarray(jump_index, jnp.int32), stop=k0, made_jump=jnp.array(False),
        carry=carry0, num_steps=jnp.array(0, jnp.int32),
        num_accepted=jnp.array(0, jnp.int32), result=RESULTS.successful,
    )
    st = lax.while_loop(cond, body, init)
    ran_out = (st.s < s_end) & (st.num_steps >= max_steps)
    result = RESULTS.where(
        ran_out & (st.result == RESULTS.successful),
        RESULTS.backward_max_steps_reached,
        st.result,
    )
    return LoopOutput(st.s, flat.unravel(st.z), st.carry, st.jump, st.num_steps,
                      st.num_accepted, result, st.s_next - st.s)


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
