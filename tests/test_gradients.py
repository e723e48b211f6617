"""Every method × every problem: gradient w.r.t. field parameters, y0 and args,
against central finite differences (float64) and against `Discrete` at tight
tolerance, by relative error; the checkpointed and segmented backward passes, on
their own and under vmap. Gradients against exact ones: `test_exact_gradients.py`."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
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


def _lv_y0_grad(y0, method):
    problem = PROBLEMS["lotka_volterra"]
    field, _, args = problem.inputs()
    return jax.grad(lambda y: problem.loss(method, field, y, args))(y0)


def _lv_batch():
    y0 = PROBLEMS["lotka_volterra"].y0
    return jnp.stack([y0, 0.5 * y0, jnp.array([2.0, 0.3])])


@functools.cache
def _lv_loop_reference():
    """`Discrete` grads w.r.t. y0 of each member of `_lv_batch()`, one at a time
    (the compiled reference gradient, called per member)."""
    field, _, args = PROBLEMS["lotka_volterra"].inputs()
    grad = grad_fn("lotka_volterra", jaxsens.Discrete())
    return jnp.stack([grad((field, y, args))[1] for y in _lv_batch()])


def assert_vmap_matches_loop(method):
    """vmap-of-grad (w.r.t. y0, Lotka–Volterra) with `method` against a loop of
    `Discrete` grads."""
    got = jax.jit(jax.vmap(lambda y: _lv_y0_grad(y, method)))(_lv_batch())
    for g, r in zip(got, _lv_loop_reference(), strict=True):
        assert rel_err(g, r) < PROBLEMS["lotka_volterra"].rel


# The stiff problem (Robertson) has the same tests in `test_stiff_gradients.py`.
NON_STIFF = sorted(set(PROBLEMS) - {"robertson_stiff"})


@pytest.mark.parametrize("name", NON_STIFF)
def test_discrete_matches_finite_differences(name):
    problem = PROBLEMS[name]
    ref, fd = reference(name), finite_differences(name)
    for part, r, f in zip(("field", "y0", "args"), ref, fd, strict=True):
        err = rel_err(trainable(r), trainable(f))
        assert err < problem.rel, (name, part, err)


@pytest.mark.parametrize("method_name", list(METHODS))
def test_closed_form_decay_gradient(method_name):
    problem = PROBLEMS["decay"]
    # y(t) = b/k + (y0 − b/k) e^{−kt}: differentiate the closed form with JAX.
    def exact_loss(inputs):
        field, y0, b = inputs
        ys = jax.vmap(lambda t: problem.closed_form(field.rate, y0, b, t))(problem.ts)
        return jnp.sum(jnp.sin(1.0 + ys) * ys)

    exact = eqx.filter_grad(exact_loss)(problem.inputs())
    got = grad_fn("decay", METHODS[method_name])(problem.inputs())
    for part, g, e in zip(("field", "y0", "args"), got, exact, strict=True):
        assert rel_err(trainable(g), trainable(e)) < 1e-7, part


@pytest.mark.parametrize("method_name", list(METHODS))
@pytest.mark.parametrize("name", sorted(set(NON_STIFF) - {"decay"}))
def test_method_matches_references(name, method_name):
    got = grad_fn(name, METHODS[method_name])(PROBLEMS[name].inputs())
    assert_matches_references(name, got)


def test_discrete_stores_every_step_up_to_256_kib():
    from jaxsens._sensitivity.discrete import default_checkpoints

    # max_steps copies of the state: 8 float64 × 4096 = 256 KiB is stored whole,
    # one more byte's worth of state is not; float32 halves the bytes.
    assert default_checkpoints(jnp.zeros(8, jnp.float64), 4096) == 4096
    assert default_checkpoints(jnp.zeros(9, jnp.float64), 4096) is None
    assert default_checkpoints(jnp.zeros(16, jnp.float32), 4096) == 4096
    assert default_checkpoints(jnp.zeros(64, jnp.float64), 4096) is None
    assert default_checkpoints(jnp.zeros(64, jnp.float64), 512) == 512
    # A PyTree state counts every leaf, each in its own dtype.
    tree = {"a": jnp.zeros(4, jnp.float64), "b": jnp.zeros(9, jnp.float32)}
    assert default_checkpoints(tree, 4096) is None  # 4·8 + 9·4 = 68 B > 64 B
    assert default_checkpoints(tree, 2048) == 2048


def test_discrete_store_all_equals_recursive_checkpointing():
    # `Discrete()` stores every step on small problems (`default_checkpoints`);
    # diffrax's recursive checkpointing (recomputation) must give the same
    # gradient, to rounding.
    name = sorted(set(PROBLEMS) - {"decay"})[0]
    problem = PROBLEMS[name]
    recursive = grad_fn(name, jaxsens.Discrete(checkpoints=8))(problem.inputs())
    for r, d in zip(recursive, reference(name), strict=True):
        assert rel_err(trainable(r), trainable(d)) < 1e-12, name


# --- InterpolatingAdjoint(checkpoints=K): intervals too long for one dense output ----
# `segment_max_steps` far below the steps between two checkpoints forces the
# recursive path: every interval is split, the split points' states come from
# marching re-solves, and only a few steps' dense output exists at a time.

SPLIT = jaxsens.InterpolatingAdjoint(checkpoints=2, segment_max_steps=4)


@pytest.mark.parametrize(
    ("name", "segment"), [("lotka_volterra", 4), ("pytree_state", 4)]
)
def test_checkpointed_interpolating_splits_long_intervals(name, segment):
    problem = PROBLEMS[name]
    method = jaxsens.InterpolatingAdjoint(checkpoints=2, segment_max_steps=segment)
    field, y0, args = problem.inputs()
    sol = jaxsens.solve(field, y0, problem.ts, args, solver=problem.solver,
                        rtol=problem.tol, atol=problem.tol, max_steps=16**4)
    # More steps than two intervals' dense outputs hold: the path under test runs.
    assert int(sol.stats["num_accepted_steps"]) > 2 * segment * method.checkpoints
    got = grad_fn(name, method)(problem.inputs())
    assert_matches_references(name, got)


def test_checkpointed_interpolating_split_under_vmap():
    # Members of a batch split different intervals at different iterations.
    assert_vmap_matches_loop(SPLIT)


def test_checkpointed_interpolating_memory_is_flat_in_max_steps():
    # The checkpoint stack grows with log(max_steps), the dense output not at all:
    # XLA's temporaries of the compiled gradient barely move over 100× the budget.
    problem = PROBLEMS["lotka_volterra"]
    field, y0, args = problem.inputs()
    method = jaxsens.InterpolatingAdjoint(checkpoints=16)

    def temp_bytes(max_steps):
        def loss(y0):
            return jnp.sum(jaxsens.solve(field, y0, problem.ts, args,
                                         max_steps=max_steps, sensitivity=method).ys)

        compiled = jax.jit(jax.grad(loss)).lower(y0).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    small, large = temp_bytes(1_000), temp_bytes(100_000)
    assert large < 1.5 * small, (small, large)


# --- QuadratureAdjoint: a backward pass longer than its node store -----------------
# `store_steps=4` makes the pass run in many segments, each integrated when it ends.

SEGMENTED = jaxsens.QuadratureAdjoint(store_steps=4)


@pytest.mark.parametrize("name", ["lotka_volterra", "pytree_state"])
def test_quadrature_in_segments_matches_references(name):
    problem = PROBLEMS[name]
    got = grad_fn(name, SEGMENTED)(problem.inputs())
    assert_matches_references(name, got)


def test_quadrature_segments_under_vmap_and_store_is_flat_in_max_steps():
    # Members of a batch end their segments at different steps.
    assert_vmap_matches_loop(SEGMENTED)
    y0 = PROBLEMS["lotka_volterra"].y0

    # The backward budget no longer sizes anything: XLA's temporaries of the
    # compiled gradient stay put over 100× the backward `max_steps`.
    def temp_bytes(max_steps):
        method = jaxsens.QuadratureAdjoint(max_steps=max_steps)
        compiled = jax.jit(lambda y: _lv_y0_grad(y, method)).lower(y0).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    small, large = temp_bytes(1_000), temp_bytes(100_000)
    assert large < 1.1 * small, (small, large)
