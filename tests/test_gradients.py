"""Every method × every problem: gradient w.r.t. field parameters, y0 and args,
against central finite differences (float64) and against `Discrete` at tight
tolerance, by relative error."""

import functools

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import jaxsens

from .helpers import METHODS, PROBLEMS, central_fd, rel_err, trainable


def _grad_fn(problem, method):
    def loss(inputs):
        field, y0, args = inputs
        return problem.loss(method, field, y0, args)

    return eqx.filter_jit(eqx.filter_grad(loss))


@functools.cache
def reference(name):
    problem = PROBLEMS[name]
    return _grad_fn(problem, jaxsens.Discrete())(problem.inputs())


@functools.cache
def finite_differences(name):
    problem = PROBLEMS[name]

    def loss(inputs):
        field, y0, args = inputs
        return problem.loss(jaxsens.Discrete(), field, y0, args, tol=problem.fd_tol)

    return central_fd(loss, problem.inputs(), eps=1e-4)


def assert_matches_references(name, got):
    """`got` (gradients w.r.t. field, y0, args) against `Discrete` at tight
    tolerance and central finite differences, by relative error."""
    problem = PROBLEMS[name]
    ref, fd = reference(name), finite_differences(name)
    for part, g, r, f in zip(("field", "y0", "args"), got, ref, fd, strict=True):
        g, r, f = trainable(g), trainable(r), trainable(f)
        assert rel_err(g, r) < problem.rel, (part, "vs Discrete", rel_err(g, r))
        assert rel_err(g, f) < problem.rel, (part, "vs finite differences", rel_err(g, f))


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
    (one compiled function, called per member)."""
    grad = jax.jit(lambda y: _lv_y0_grad(y, jaxsens.Discrete()))
    return jnp.stack([grad(y) for y in _lv_batch()])


def assert_vmap_matches_loop(method):
    """vmap-of-grad (w.r.t. y0, Lotka–Volterra) with `method` against a loop of
    `Discrete` grads."""
    got = jax.jit(jax.vmap(lambda y: _lv_y0_grad(y, method)))(_lv_batch())
    for g, r in zip(got, _lv_loop_reference(), strict=True):
        assert rel_err(g, r) < PROBLEMS["lotka_volterra"].rel


@pytest.mark.parametrize("name", sorted(PROBLEMS))
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
    got = _grad_fn(problem, METHODS[method_name])(problem.inputs())
    for part, g, e in zip(("field", "y0", "args"), got, exact, strict=True):
        assert rel_err(trainable(g), trainable(e)) < 1e-7, part


@pytest.mark.parametrize("method_name", list(METHODS))
@pytest.mark.parametrize("name", sorted(set(PROBLEMS) - {"decay"}))
def test_method_matches_references(name, method_name):
    problem = PROBLEMS[name]
    if (name, method_name) == ("robertson_stiff", "BacksolveAdjoint"):
        # Run backwards, a stiff dissipative problem explodes: Backsolve must say
        # so and name the fix, never return a gradient.
        with pytest.raises(eqx.EquinoxRuntimeError, match="InterpolatingAdjoint"):
            _grad_fn(problem, METHODS[method_name])(problem.inputs())
        return
    got = _grad_fn(problem, METHODS[method_name])(problem.inputs())
    assert_matches_references(name, got)


# --- stiff linear system, implicit solver, against the exact (expm) gradient --------
# Regression: the rates mix the state within ~0.01 time units, so after each save
# time λ relaxes at once and the backward controller (which sees λ, not y) took
# steps spanning y's fast transient: gradients 3–90 % wrong until the backward
# loop learnt to stop at every forward step (`_common.forward_stops`).

STIFF_N, STIFF_TS = 5, jnp.linspace(0.0, 4.0, 12)


def _stiff_rates():
    return 100 * jax.random.uniform(jax.random.PRNGKey(0), (STIFF_N, STIFF_N))


def _stiff_matrix(P):
    return P - jnp.diag(jnp.sum(P, axis=1))


def _stiff_loss(P, y0, method):
    if method is None:
        ys = jaxsens.solve(jaxsens.LinearField(_stiff_matrix), y0, STIFF_TS, P,
                           sensitivity=jaxsens.LinearExpm()).ys
    else:
        ys = jaxsens.solve(lambda t, y, P: _stiff_matrix(P) @ y, y0, STIFF_TS, P,
                           solver=diffrax.Kvaerno5(), rtol=1e-8, atol=1e-8,
                           sensitivity=method).ys
    return jnp.sum(jnp.cos(ys) * ys)


@functools.cache
def _stiff_exact():
    P, y0 = _stiff_rates(), jnp.linspace(0.2, 1.0, STIFF_N)
    return jax.jit(jax.grad(_stiff_loss, (0, 1)), static_argnums=2)(P, y0, None)


@pytest.mark.parametrize(
    "method_name",
    ["InterpolatingAdjoint", "InterpolatingAdjoint(checkpoints=3)",
     "QuadratureAdjoint", "GaussAdjoint"],
)
def test_stiff_linear_kvaerno5_matches_exact(method_name):
    P, y0 = _stiff_rates(), jnp.linspace(0.2, 1.0, STIFF_N)
    exact = _stiff_exact()
    got = eqx.filter_jit(jax.grad(_stiff_loss, (0, 1)))(P, y0, METHODS[method_name])
    for part, g, e in zip(("P", "y0"), got, exact, strict=True):
        assert rel_err(g, e) < 1e-4, (method_name, part, rel_err(g, e))


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
    recursive = _grad_fn(problem, jaxsens.Discrete(checkpoints=8))(problem.inputs())
    for r, d in zip(recursive, reference(name), strict=True):
        assert rel_err(trainable(r), trainable(d)) < 1e-12, name


# --- InterpolatingAdjoint(checkpoints=K): intervals too long for one dense output ----
# `segment_max_steps` far below the steps between two checkpoints forces the
# recursive path: every interval is split, the split points' states come from
# marching re-solves, and only a few steps' dense output exists at a time.

SPLIT = jaxsens.InterpolatingAdjoint(checkpoints=2, segment_max_steps=4)


@pytest.mark.parametrize(
    ("name", "segment"),
    # Robertson's re-solves reject most first steps: 4 steps would not move.
    [("lotka_volterra", 4), ("pytree_state", 4), ("robertson_stiff", 16)],
)
def test_checkpointed_interpolating_splits_long_intervals(name, segment):
    problem = PROBLEMS[name]
    method = jaxsens.InterpolatingAdjoint(checkpoints=2, segment_max_steps=segment)
    field, y0, args = problem.inputs()
    sol = jaxsens.solve(field, y0, problem.ts, args, solver=problem.solver,
                        rtol=problem.tol, atol=problem.tol, max_steps=16**4)
    # More steps than two intervals' dense outputs hold: the path under test runs.
    assert int(sol.stats["num_accepted_steps"]) > 2 * segment * method.checkpoints
    got = _grad_fn(problem, method)(problem.inputs())
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


@pytest.mark.parametrize("name", ["lotka_volterra", "pytree_state", "robertson_stiff"])
def test_quadrature_in_segments_matches_references(name):
    problem = PROBLEMS[name]
    got = _grad_fn(problem, SEGMENTED)(problem.inputs())
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


@pytest.mark.parametrize("method_name", [*METHODS, "split checkpoints"])
def test_t0_before_first_save_time(method_name):
    # The stretch [t0, ts[0]] has no save time: λ must still be carried across it
    # (checkpointed: (t0, y0) is the first checkpoint). Exact: the closed form.
    problem = PROBLEMS["decay"]
    ts = jnp.linspace(0.5, 2.0, 4)
    method = SPLIT if method_name == "split checkpoints" else METHODS[method_name]

    def loss(inputs, method):
        field, y0, b = inputs
        if method is None:
            ys = jax.vmap(lambda t: problem.closed_form(field.rate, y0, b, t))(ts)
        else:
            ys = jaxsens.solve(field, y0, ts, b, t0=0.0, rtol=1e-10, atol=1e-10,
                               sensitivity=method).ys
        return jnp.sum(jnp.sin(1.0 + ys) * ys)

    exact = eqx.filter_grad(loss)(problem.inputs(), None)
    got = eqx.filter_jit(eqx.filter_grad(loss))(problem.inputs(), method)
    for part, g, e in zip(("field", "y0", "args"), got, exact, strict=True):
        assert rel_err(trainable(g), trainable(e)) < 1e-7, part


def test_flat_backward_state_round_trip():
    # The backward loop steps its state as one flat vector when that is possible.
    from jaxsens._sensitivity._loop import FlatState

    tree = {"a": jnp.arange(6.0).reshape(2, 3), "b": jnp.array(7.0), "c": jnp.ones(4)}
    flat = FlatState(tree)
    vec = flat.ravel(tree)
    assert flat.active and vec.shape == (11,)
    back = flat.unravel(vec)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(tree)
    for k in tree:
        assert back[k].shape == tree[k].shape and bool(jnp.all(back[k] == tree[k]))
    # One vector already: left alone. Mixed dtypes: promoted, and cast back.
    assert not FlatState(jnp.ones(3)).active
    mixed = (jnp.ones(2), jnp.full(2, 0.1, jnp.float32))
    flat = FlatState(mixed)
    assert flat.ravel(mixed).dtype == jnp.float64
    back = flat.unravel(flat.ravel(mixed))
    assert back[1].dtype == jnp.float32 and bool(jnp.all(back[1] == mixed[1]))


@pytest.mark.parametrize("method_name", ["BacksolveAdjoint", "InterpolatingAdjoint",
                                         "GaussAdjoint", "QuadratureAdjoint"])
def test_mixed_dtype_backward_state(method_name):
    # A float32 rate with a float64 state: the backward state (λ, μ) mixes
    # dtypes; it is stepped promoted to float64 and μ cast back to float32.
    ts = jnp.linspace(0.0, 1.0, 5)
    y0 = {"x": jnp.array([1.0, 2.0]), "z": jnp.array(0.5)}

    def loss(k, method):
        field = lambda t, y, k: {"x": -k[0] * y["x"], "z": -k[1] * y["z"]}  # noqa: E731
        ys = jaxsens.solve(field, y0, ts, k, rtol=1e-10, atol=1e-10,
                           sensitivity=method).ys
        return jnp.sum(ys["x"] ** 2) + jnp.sum(jnp.sin(ys["z"]))

    k = jnp.array([0.7, 1.3], jnp.float32)
    got = jax.jit(jax.grad(loss), static_argnums=1)(k, METHODS[method_name])
    assert got.dtype == jnp.float32
    # Exact: y = y0 e^{-k t}.
    exact = jax.grad(lambda k: sum(
        jnp.sum((y0["x"] * jnp.exp(-k[0].astype(jnp.float64) * t)) ** 2)
        + jnp.sin(y0["z"] * jnp.exp(-k[1].astype(jnp.float64) * t)) for t in ts))(k)
    assert rel_err(got, exact) < 1e-6, (got, exact)
