"""Pieces the continuous adjoints share: save-time jumps, vjps of the field."""

import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from .base import Problem


def tree_add(a, b):
    return jtu.tree_map(lambda x, y: x + y, a, b)


def tree_scale(a, c):
    return jtu.tree_map(lambda x: c * x, a)


def zeros_like(tree):
    return jtu.tree_map(jnp.zeros_like, tree)


class Jumps:
    """The save times of a problem in reversed time `s = -t`, and their cotangents.

    The backward pass starts at `s0 = -ts[-1]` with `λ = ȳ[-1]`; `times[j]` is the
    j-th save time met on the way back, whose cotangent `ȳ[N - 2 - j]` is added on
    arrival; the pass ends at `s_end = -t0`.
    """

    def __init__(self, problem: Problem, ys_bar):
        ts = problem.ts
        n = ts.shape[0]
        self.n = n
        self.ys_bar = ys_bar
        self.s0 = -ts[-1]
        self.s_end = -problem.options.t0
        self.times = -ts[:-1][::-1]
        self.num = n - 1

    def initial(self):
        return jtu.tree_map(lambda c: c[-1], self.ys_bar)

    def cotangent(self, j):
        return jtu.tree_map(lambda c: c[self.n - 2 - j], self.ys_bar)


def vjp_y_and_params(problem: Problem, t, y, lam):
    """`(f, f_yᵀλ, f_θᵀλ)` from one `jax.vjp` of the field (never a Jacobian)."""
    fy, vjp = jax.vjp(lambda y_, d_: problem.f(t, y_, d_), y, problem.diff)
    lam_y, lam_d = vjp(lam)
    return fy, lam_y, lam_d


def vjp_y(problem: Problem, t, y, lam):
    _, vjp = jax.vjp(lambda y_: problem.f(t, y_), y)
    (lam_y,) = vjp(lam)
    return lam_y


def vjp_params(problem: Problem, t, y, lam):
    _, vjp = jax.vjp(lambda d_: problem.f(t, y, d_), problem.diff)
    (lam_d,) = vjp(lam)
    return lam_d


def dense_index(interp, t):
    """The forward step whose polynomial piece covers `t` (the one ending at `t`
    on a boundary)."""
    index = jnp.searchsorted(interp.ts, t, side="left")
    return jnp.clip(index - 1, 0, jnp.maximum(interp.ts_size - 2, 0))


def piece_of(interp):
    """For `backward_loop(piece_of=...)` with `stop_times=forward_stops(interp)`:
    `(index, polynomial)` of the forward step under a backward step `[s_a, s_b]`
    (which never straddles one). The index is read off the number `k` of forward
    step times already passed rather than searched for, and the step's polynomial
    is gathered from the dense output once per backward step, not once per stage
    (on small problems the gather costs more than the vjp it feeds)."""
    last = interp.ts.shape[0] - 1
    hi = jnp.maximum(interp.ts_size - 2, 0)

    def piece(s_a, s_b, k):
        index = jnp.clip(last - k, 0, hi)
        return index, _polynomial(interp, index)

    return piece


def _polynomial(interp, index):
    info = jtu.tree_map(lambda x: x[index], interp.infos)
    return interp.interpolation_cls(
        t0=interp.ts[index], t1=interp.ts[index + 1], **info
    )


def dense_evaluate(interp, t, piece=None):
    """`y(t)` from a forward solve's dense output (on `piece` from `piece_of`, or
    on the forward step found by search), extrapolating the first/last step's
    polynomial just outside `[t0, t1]`.

    diffrax's own `evaluate` returns NaN there, but implicit solvers such as
    `Kvaerno5` place stages outside their step (c > 1), so the backward pass's
    last step looks slightly before `t0`.
    """
    if piece is None:
        return _polynomial(interp, dense_index(interp, t)).evaluate(t)
    return piece[1].evaluate(t)


def forward_stops(interp):
    """The forward solve's step times as stops of the backward loop: ascending in
    `s = -t`.

    `y(t)` from the dense output is one polynomial per forward step, with kinks
    between them. The forward controller sized those steps to resolve `y`; the
    backward controller only sees `λ` (`μ` too without a seminorm). When `λ` is
    smooth where `y` is not — e.g. a stiff transient of `y` after `λ` has relaxed —
    a backward step spanning several forward steps misses `y`'s variation in
    `∫ λᵀ f_θ dt` (measured: 3–90 % wrong gradients on a stiff linear system).
    Stopping at every forward step keeps each backward step (and its quadrature
    nodes) inside one polynomial piece.
    """
    # diffrax pads the unused tail of `ts` with +inf: reversed and negated, the
    # padding is a -inf head, which `backward_loop` skips (stops ≤ s0).
    return -interp.ts[::-1]
