"""The stiff problem (Robertson's kinetics, Kvaerno5) through the checks of
`test_gradients.py`: `Discrete` against finite differences, every method, the
checkpointed splits and the quadrature segments against both; run backwards it
explodes, and `BacksolveAdjoint` must say so."""

import equinox as eqx
import jax
import pytest

import jaxsens

from .helpers import (
    METHODS,
    PROBLEMS,
    assert_matches_references,
    finite_differences,
    grad_fn,
    reference,
    rel_err,
    trainable,
)


NAME = "robertson_stiff"
PROBLEM = PROBLEMS[NAME]


def test_discrete_matches_finite_differences():
    ref, fd = reference(NAME), finite_differences(NAME)
    for part, r, f in zip(("field", "y0", "args"), ref, fd, strict=True):
        err = rel_err(trainable(r), trainable(f))
        assert err < PROBLEM.rel, (part, err)


@pytest.mark.parametrize("method_name", [m for m in METHODS if m != "BacksolveAdjoint"])
def test_method_matches_references(method_name):
    got = grad_fn(NAME, METHODS[method_name])(PROBLEM.inputs())
    assert_matches_references(NAME, got)


def test_backsolve_says_the_backward_solve_explodes():
    # Run backwards, a stiff dissipative problem explodes: Backsolve must say so
    # and name the fix, never return a gradient. (A large backward budget: the
    # solve runs until it blows up, not until its steps run out.)
    method = jaxsens.BacksolveAdjoint(max_steps=16**4)
    with pytest.raises(eqx.EquinoxRuntimeError, match="InterpolatingAdjoint"):
        jax.block_until_ready(grad_fn(NAME, method)(PROBLEM.inputs()))


def test_checkpointed_interpolating_splits_long_intervals():
    # As in `test_gradients.py`, with longer segments: Robertson's re-solves
    # reject most first steps, so 4 steps would not move.
    segment = 16
    method = jaxsens.InterpolatingAdjoint(checkpoints=2, segment_max_steps=segment)
    field, y0, args = PROBLEM.inputs()
    sol = jaxsens.solve(field, y0, PROBLEM.ts, args, solver=PROBLEM.solver,
                        rtol=PROBLEM.tol, atol=PROBLEM.tol, max_steps=16**4)
    # More steps than two intervals' dense outputs hold: the path under test runs.
    assert int(sol.stats["num_accepted_steps"]) > 2 * segment * method.checkpoints
    assert_matches_references(NAME, grad_fn(NAME, method)(PROBLEM.inputs()))


def test_quadrature_in_segments_matches_references():
    got = grad_fn(NAME, jaxsens.QuadratureAdjoint(store_steps=4))(PROBLEM.inputs())
    assert_matches_references(NAME, got)
