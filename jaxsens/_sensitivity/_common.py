"""Vjps of a problem's field and dense-output lookups, one call at a time (for
profiling the pieces a backward pass is made of; the pass itself is
`_backward.py`)."""

import jax

from ._backward import dense_index, polynomial
from .base import Problem


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


def dense_evaluate(interp, t):
    """`y(t)` from a forward solve's dense output, extrapolating the first/last
    step's polynomial just outside `[t0, t1]`."""
    return polynomial(interp, dense_index(interp, t)).evaluate(t)
