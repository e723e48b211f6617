"""`LinearField`, `LinearExpm` and `KrylovExpm` (issue 3).

References: closed forms, 5-point central finite differences in float64 (error
≈ 1e-12, so a 1e-10 relative tolerance is meaningful), the time-stepped methods
at tight tolerances, and `LinearExpm` for `KrylovExpm`. Compiled functions are
shared through module-scoped fixtures to keep compile time down.
"""

import os


# Tiny LAPACK calls (the small `expm`s inside Krylov steps) stall for several ms
# per call when scipy's OpenBLAS runs multi-threaded on an oversubscribed machine;
# single-threaded BLAS is also the faster choice at these sizes. Set before the
# first linear-algebra call loads OpenBLAS (it is loaded lazily).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import lineax as lx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jaxsens  # noqa: E402
from jaxsens._sensitivity.krylov import arnoldi, lanczos  # noqa: E402


# ---------------------------------------------------------------------------
# helpers


def rel(a, b):
    a, b = np.ravel(np.asarray(a)), np.ravel(np.asarray(b))
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def tree_rel(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    return max(rel(x, y) for x, y in zip(la, lb, strict=True))


def fd5(f, x, d, h=1e-3):
    """5-point central difference of `f` at `x` along `d` (error O(h⁴))."""
    fx = lambda s: float(f(jax.tree.map(lambda a, b: a + s * b, x, d)))  # noqa: E731
    return (-fx(2 * h) + 8 * fx(h) - 8 * fx(-h) + fx(-2 * h)) / (12 * h)


def dot(a, b):
    return sum(
        float(jnp.vdot(x, y))
        for x, y in zip(
            jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True
        )
    )


# ---------------------------------------------------------------------------
# closed form: A -> B decay chain plus a forced scalar, t0 < ts[0], non-uniform


def chain_matrix(k):
    k1, k2, k3 = k
    z = jnp.zeros((), k.dtype)
    return jnp.array([[-k1, z, z], [k1, -k2, z], [z, z, -k3]])


def chain_closed_form(k, s, y0, ts, t0):
    k1, k2, k3 = k
    t = ts - t0
    y1 = y0[0] * jnp.exp(-k1 * t)
    y2 = y0[1] * jnp.exp(-k2 * t) + y0[0] * k1 / (k2 - k1) * (
        jnp.exp(-k1 * t) - jnp.exp(-k2 * t)
    )
    y3 = s / k3 + (y0[2] - s / k3) * jnp.exp(-k3 * t)
    return jnp.stack([y1, y2, y3], axis=1)


CHAIN_TS = jnp.array([0.3, 0.5, 1.4, 2.0, 3.5])
CHAIN_T0 = 0.1
CHAIN_W = jnp.asarray(np.random.default_rng(1).normal(size=(5, 3)))


def chain_solve(k, s, y0, sensitivity=None):
    field = jaxsens.LinearField(
        lambda a: chain_matrix(a[0]), forcing=lambda a: jnp.array([0.0, 0.0, a[1]])
    )
    sensitivity = jaxsens.LinearExpm() if sensitivity is None else sensitivity
    return jaxsens.solve(
        field, y0, CHAIN_TS, (k, s), t0=CHAIN_T0, sensitivity=sensitivity
    )


def test_closed_form_values_and_gradients():
    k, s, y0 = jnp.array([1.3, 0.4, 2.0]), jnp.array(0.7), jnp.array([1.0, 0.5, -0.2])

    def loss(k, s, y0):
        sol = chain_solve(k, s, y0)
        return jnp.sum(CHAIN_W * jnp.sin(sol.ys)), sol

    def ref(k, s, y0):
        ys = chain_closed_form(k, s, y0, CHAIN_TS, CHAIN_T0)
        return jnp.sum(CHAIN_W * jnp.sin(ys))

    vg = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
    (_, sol), g = vg(k, s, y0)
    assert rel(sol.ys, chain_closed_form(k, s, y0, CHAIN_TS, CHAIN_T0)) < 1e-13
    assert int(sol.stats["num_steps"]) == -1
    assert sol.result == jaxsens.RESULTS.successful
    g_ref = jax.grad(ref, argnums=(0, 1, 2))(k, s, y0)
    assert tree_rel(g, g_ref) < 1e-11


# ---------------------------------------------------------------------------
# a small dense system with forcing, built from parameters (args)

N_SMALL = 6


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(0)
    P = jnp.asarray(rng.uniform(size=(N_SMALL, N_SMALL)))
    b = jnp.asarray(rng.normal(size=N_SMALL))
    y0 = jnp.asarray(rng.uniform(size=N_SMALL))
    w = jnp.asarray(rng.normal(size=(5, N_SMALL)))
    field = jaxsens.LinearField(
        lambda a: a[0] - jnp.diag(jnp.sum(a[0], axis=1)) - 0.3 * jnp.eye(N_SMALL),
        forcing=lambda a: a[1],
    )

    def loss(params, y0, ts, sensitivity, **kw):
        sol = jaxsens.solve(
            field, y0, ts, params, t0=0.0, sensitivity=sensitivity, **kw
        )
        return jnp.sum(w * jnp.tanh(sol.ys)), sol

    # One compiled function per method: value, gradient and the solution.
    vg = jax.jit(
        jax.value_and_grad(loss, argnums=(0, 1), has_aux=True), static_argnums=3
    )

    def grad(params, y0, ts, sensitivity):
        return vg(params, y0, ts, sensitivity)[1]

    def value(params, y0, ts, sensitivity):
        return vg(params, y0, ts, sensitivity)[0][0]

    def solution(params, y0, ts, sensitivity):
        return vg(params, y0, ts, sensitivity)[0][1]

    return dict(
        params=(P, b),
        y0=y0,
        loss=lambda *a, **k: loss(*a, **k)[0],
        value=value,
        grad=grad,
        solution=solution,
        field=field,
        w=w,
    )


UNIFORM = jnp.linspace(0.0, 2.0, 5)  # t0 = ts[0]
UNIFORM_LATE = jnp.linspace(0.5, 2.5, 5)  # t0 = ts[0] - h
UNIFORM_OFF = jnp.linspace(0.7, 2.7, 5)  # uniform, but t0 -> ts[0] differs from h
NONUNIFORM = jnp.array([0.2, 0.3, 0.9, 1.0, 2.4])
GRIDS = {
    "uniform": UNIFORM,
    "uniform_t0_h": UNIFORM_LATE,
    "uniform_t0_off": UNIFORM_OFF,
    "nonuniform": NONUNIFORM,
}


def expm_reference(params, y0, ts):
    P, b = params
    A = P - jnp.diag(jnp.sum(P, axis=1)) - 0.3 * jnp.eye(N_SMALL)
    M = jnp.zeros((N_SMALL + 1, N_SMALL + 1)).at[:N_SMALL, :N_SMALL].set(A)
    M = M.at[:N_SMALL, N_SMALL].set(b)
    z0 = jnp.append(y0, 1.0)
    return jnp.stack([(jax.scipy.linalg.expm(M * t) @ z0)[:N_SMALL] for t in ts])


@pytest.mark.parametrize("grid", list(GRIDS))
def test_linear_expm_values_and_fd(small, grid):
    ts = GRIDS[grid]
    params, y0 = small["params"], small["y0"]
    sol = small["solution"](params, y0, ts, jaxsens.LinearExpm())
    assert rel(sol.ys, expm_reference(params, y0, ts)) < 1e-13

    gp, gy = small["grad"](params, y0, ts, jaxsens.LinearExpm())
    f = lambda x: small["value"](x[0], x[1], ts, jaxsens.LinearExpm())  # noqa: E731
    rng = np.random.default_rng(2)
    for _ in range(2):
        d = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), (params, y0))
        assert abs(dot((gp, gy), d) - fd5(f, (params, y0), d)) < 1e-10 * abs(
            fd5(f, (params, y0), d)
        )


def test_linear_expm_known_times_path(small):
    # `small` passes `ts` into `jit` (traced: the grid's spacing is decided by a
    # `lax.cond`); closed over, `ts` is known while tracing and the spacing is
    # decided in Python. Both paths must agree on every kind of grid.
    from jaxsens._sensitivity.linear import grid_kind

    params, y0 = small["params"], small["y0"]
    for kind, (name, ts) in enumerate(GRIDS.items()):
        assert int(grid_kind(0.0, np.asarray(ts), np)) == kind, name
        assert int(grid_kind(jnp.asarray(0.0), ts)) == kind, name
        known = jax.jit(
            jax.grad(lambda p, ts=ts: small["loss"](p, y0, ts, jaxsens.LinearExpm()))
        )(params)
        traced = small["grad"](params, y0, ts, jaxsens.LinearExpm())[0]
        assert tree_rel(known, traced) < 1e-13, name


def test_linear_expm_matches_time_stepping(small):
    params, y0 = small["params"], small["y0"]
    g = small["grad"](params, y0, NONUNIFORM, jaxsens.LinearExpm())
    tight = dict(rtol=1e-10, atol=1e-10)
    for method in (jaxsens.Discrete(), jaxsens.InterpolatingAdjoint()):
        g_m = jax.jit(jax.grad(small["loss"], argnums=(0, 1)), static_argnums=3)(
            params, y0, NONUNIFORM, method, **tight
        )
        assert tree_rel(g_m, g) < 1e-7, method


def test_linear_expm_jvp_vmap(small):
    params, y0 = small["params"], small["y0"]
    loss = lambda p: small["loss"](p, y0, UNIFORM, jaxsens.LinearExpm())  # noqa: E731
    g = small["grad"](params, y0, UNIFORM, jaxsens.LinearExpm())[0]
    d = jax.tree.map(jnp.ones_like, params)
    _, tangent = jax.jit(lambda p, d: jax.jvp(loss, (p,), (d,)))(params, d)
    assert abs(float(tangent) - dot(g, d)) < 1e-12 * abs(dot(g, d))

    batch = jax.tree.map(lambda a: jnp.stack([a, 0.5 * a, 2.0 * a]), params)
    gb = jax.jit(jax.vmap(jax.grad(loss)))(batch)
    for i in range(3):
        gi = small["grad"](
            jax.tree.map(lambda a, i=i: a[i], batch), y0, UNIFORM, jaxsens.LinearExpm()
        )[0]
        assert tree_rel(jax.tree.map(lambda a, i=i: a[i], gb), gi) < 1e-12


# ---------------------------------------------------------------------------
# KrylovExpm


def test_krylov_matches_linear_expm_dense_forcing(small):
    params, y0 = small["params"], small["y0"]
    ts = NONUNIFORM
    g_ref = small["grad"](params, y0, ts, jaxsens.LinearExpm())
    # krylov_dim = 5 < n + 1: many error-controlled substeps. (krylov_dim > n + 1,
    # an invariant Krylov space, is `test_krylov_vmap_and_closure`.)
    method = jaxsens.KrylovExpm(krylov_dim=5, tol=1e-8, max_substeps=128)
    sol = small["solution"](params, y0, ts, method)
    assert rel(sol.ys, expm_reference(params, y0, ts)) < 1e-6
    assert int(sol.stats["num_accepted_steps"]) >= 10
    g = small["grad"](params, y0, ts, method)
    assert tree_rel(g, g_ref) < 1e-5


GRID = 12  # a 12 x 12 grid: n = 144


def heat(D, v):
    u = v.reshape(GRID, GRID)
    fx = 0.5 * (D[1:, :] + D[:-1, :]) * (u[1:, :] - u[:-1, :])
    fy = 0.5 * (D[:, 1:] + D[:, :-1]) * (u[:, 1:] - u[:, :-1])
    out = jnp.zeros_like(u).at[:-1].add(fx).at[1:].add(-fx)
    out = out.at[:, :-1].add(fy).at[:, 1:].add(-fy)
    return GRID**2 * out.reshape(-1)


def advection_diffusion(a, v):
    D, c = a
    u = v.reshape(GRID, GRID)
    return heat(D, v) + c * GRID * (jnp.roll(u, 1, axis=0) - u).reshape(-1)


@pytest.fixture(scope="module")
def grid_problem():
    rng = np.random.default_rng(3)
    xc = (jnp.arange(GRID) + 0.5) / GRID
    D = jnp.asarray(0.05 + 0.05 * rng.uniform(size=(GRID, GRID)))
    bump = jnp.exp(-30 * ((xc[:, None] - 0.3) ** 2 + (xc[None, :] - 0.6) ** 2))
    # An exact eigenvector of the constant-D operator: the forward Krylov steps
    # are one per interval (breakdown), while the backward, from rough cotangents,
    # has to split them: this exercises the backward substep splitting.
    mode = jnp.cos(jnp.pi * xc)[:, None] * jnp.ones(GRID)[None, :]
    w = jnp.asarray(rng.normal(size=(3, GRID * GRID)))
    ts = jnp.array([0.02, 0.05, 0.2])
    return dict(D=D, bump=bump.reshape(-1), mode=mode.reshape(-1), w=w, ts=ts)


@pytest.mark.parametrize(
    "case",
    ["heat_lanczos_lineax", "heat_split_backward", "advection_arnoldi"],
)
def test_krylov_matrix_free_vs_linear_expm(grid_problem, case):
    gp = grid_problem
    D, ts, w = gp["D"], gp["ts"], gp["w"]
    y0 = gp["bump"]
    method = jaxsens.KrylovExpm()
    if case == "heat_lanczos_lineax":
        # A symmetric-tagged lineax operator built from `args`: Lanczos.
        struct = jax.ShapeDtypeStruct((GRID * GRID,), jnp.float64)
        field = jaxsens.LinearField(
            lambda D: lx.FunctionLinearOperator(
                lambda v: heat(D, v), struct, lx.symmetric_tag
            )
        )
        args = D
    elif case == "heat_split_backward":
        field, args = jaxsens.LinearField(matvec=heat), jnp.full_like(D, 0.08)
        y0, method = gp["mode"], jaxsens.KrylovExpm(krylov_dim=8)
    else:  # a non-symmetric `matvec`: Arnoldi
        field, args = jaxsens.LinearField(matvec=advection_diffusion), (D, 0.7)

    def loss(args, y0, method):
        sol = jaxsens.solve(field, y0, ts, args, t0=0.0, sensitivity=method)
        return jnp.sum(w * sol.ys), sol.stats

    vg = jax.jit(
        jax.value_and_grad(loss, argnums=(0, 1), has_aux=True), static_argnums=2
    )
    (v_k, stats), g_k = vg(args, y0, method)
    (v_l, _), g_l = vg(args, y0, jaxsens.LinearExpm())
    assert abs(float(v_k - v_l)) < 1e-10 * abs(float(v_l))
    assert tree_rel(g_k, g_l) < 1e-8
    if case == "heat_split_backward":
        assert int(stats["num_accepted_steps"]) == len(ts)


def test_krylov_vmap_and_closure(small):
    """vmap of a Krylov gradient, a matrix closed over (a tracer under grad), and
    krylov_dim > n + 1 (an invariant Krylov space: exact, one substep per interval
    after the first guess)."""
    params, y0, w = small["params"], small["y0"], small["w"]
    P, b = params
    batch = jnp.stack([P, 0.5 * P])

    def loss(P):
        A = P - jnp.diag(jnp.sum(P, axis=1)) - 0.3 * jnp.eye(N_SMALL)
        field = jaxsens.LinearField(lambda _: A, forcing=b)
        sol = jaxsens.solve(
            field, y0, NONUNIFORM, None, t0=0.0, sensitivity=jaxsens.KrylovExpm()
        )
        return jnp.sum(w * jnp.tanh(sol.ys)), sol.stats["num_accepted_steps"]

    gb, steps = jax.jit(jax.vmap(jax.grad(loss, has_aux=True)))(batch)
    assert np.all(np.asarray(steps) <= len(NONUNIFORM) + 1)  # + the first guess
    for i in range(2):
        g_ref = small["grad"]((batch[i], b), y0, NONUNIFORM, jaxsens.LinearExpm())[0][0]
        assert rel(gb[i], g_ref) < 1e-9


def test_krylov_bases():
    """Arnoldi and Lanczos give orthonormal bases and `V A Vᵀ = H` on a symmetric A."""
    rng = np.random.default_rng(4)
    X = jnp.asarray(rng.normal(size=(40, 40)))
    A = -(X @ X.T) / 40
    v = jnp.asarray(rng.normal(size=40))
    for fn in (arnoldi, lanczos):
        V, Ht, beta, _ = jax.jit(lambda A, v, fn=fn: fn(lambda x: A @ x, v, 8))(A, v)
        assert abs(float(beta) - float(jnp.linalg.norm(v))) < 1e-12
        assert float(jnp.max(jnp.abs(V @ V.T - jnp.eye(9)))) < 1e-10
        H = V[:8] @ A @ V[:8].T
        assert float(jnp.max(jnp.abs(H - Ht[:8, :8]))) < 1e-10
    # An invariant subspace: breakdown, zero rows, exact.
    V, Ht, _, _ = jax.jit(lambda v: arnoldi(lambda x: 2.0 * x, v, 4))(v)
    assert float(jnp.max(jnp.abs(V[1:]))) == 0.0
    assert float(Ht[1, 0]) == 0.0


# ---------------------------------------------------------------------------
# Auto


def test_auto_chooses_linear_methods():
    ts = jnp.array([0.0, 1.0])
    auto = jaxsens.Auto()
    dense = jaxsens.LinearField(-jnp.eye(3))
    assert auto.choose(dense, jnp.ones(3), ts, None) == jaxsens.LinearExpm()
    built = jaxsens.LinearField(lambda k: -k * jnp.eye(3))
    assert auto.choose(built, jnp.ones(3), ts, 2.0) == jaxsens.LinearExpm()
    free = jaxsens.LinearField(matvec=lambda k, v: -k * v)
    assert auto.choose(free, jnp.ones(3), ts, 2.0) == jaxsens.KrylovExpm()
    op = jaxsens.LinearField(lx.DiagonalLinearOperator(-jnp.ones(3)))
    assert auto.choose(op, jnp.ones(3), ts, None) == jaxsens.KrylovExpm()
    big = jaxsens.LinearField(lambda _: -jnp.eye(2001))
    assert auto.choose(big, jnp.ones(2001), ts, None) == jaxsens.KrylovExpm()
    # Not linear: the usual rule.
    assert not isinstance(
        auto.choose(lambda t, y, a: -y, jnp.ones(3), ts, None),
        (jaxsens.LinearExpm, jaxsens.KrylovExpm),
    )


# ---------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("method", [jaxsens.LinearExpm(), jaxsens.KrylovExpm()])
def test_error_not_linear_field(method):
    with pytest.raises(
        ValueError, match=r"needs a `jaxsens.LinearField`.*InterpolatingAdjoint"
    ):
        jaxsens.solve(
            lambda t, y, a: -y, jnp.ones(2), jnp.array([0.0, 1.0]), sensitivity=method
        )


@pytest.mark.parametrize("method", [jaxsens.LinearExpm(), jaxsens.KrylovExpm()])
def test_error_state_not_vector(method):
    with pytest.raises(ValueError, match=r"needs `y0` to be a 1-D array"):
        method.solve(
            jaxsens.LinearField(-jnp.eye(2)),
            {"a": jnp.ones(2)},
            jnp.array([0.0, 1.0]),
            None,
            None,
        )
    with pytest.raises(ValueError, match=r"1-D state vector"):
        jaxsens.solve(
            jaxsens.LinearField(-jnp.eye(2)),
            jnp.ones((2, 1)),
            jnp.array([0.0, 1.0]),
            sensitivity=method,
        )


def test_error_shapes():
    with pytest.raises(
        ValueError, match=r"must be a square \(n, n\) matrix, got shape \(2, 3\)"
    ):
        jaxsens.LinearField(jnp.ones((2, 3)))
    with pytest.raises(
        ValueError, match=r"acts on states of shape \(3,\) but `y0` has"
    ):
        jaxsens.solve(
            jaxsens.LinearField(-jnp.eye(3)),
            jnp.ones(2),
            jnp.array([0.0, 1.0]),
            sensitivity=jaxsens.LinearExpm(),
        )
    with pytest.raises(
        ValueError, match=r"must be a square \(n, n\) matrix, got shape \(3,\)"
    ):
        jaxsens.solve(
            jaxsens.LinearField(lambda a: jnp.ones(3)),
            jnp.ones(3),
            jnp.array([0.0, 1.0]),
            sensitivity=jaxsens.LinearExpm(),
        )
    with pytest.raises(ValueError, match=r"must be square, mapping \(n,\) to \(n,\)"):
        jaxsens.solve(
            jaxsens.LinearField(matvec=lambda a, v: v[:2]),
            jnp.ones(3),
            jnp.array([0.0, 1.0]),
            sensitivity=jaxsens.KrylovExpm(),
        )
    with pytest.raises(ValueError, match=r"the forcing `b` has shape \(2,\)"):
        jaxsens.solve(
            jaxsens.LinearField(-jnp.eye(3), forcing=jnp.ones(2)),
            jnp.ones(3),
            jnp.array([0.0, 1.0]),
            sensitivity=jaxsens.LinearExpm(),
        )
    with pytest.raises(ValueError, match=r"forcing=...\)` must be a 1-D array"):
        jaxsens.LinearField(-jnp.eye(3), forcing=jnp.ones((3, 1)))
    with pytest.raises(ValueError, match=r"single 1-D array \(not a PyTree"):
        struct = {"a": jax.ShapeDtypeStruct((2,), jnp.float64)}
        jaxsens.LinearField(lx.FunctionLinearOperator(lambda v: v, struct))


def test_error_time_dependent():
    with pytest.raises(ValueError, match=r"time-dependent.*InterpolatingAdjoint"):
        jaxsens.LinearField(lambda t, args: -jnp.eye(2) * t)
    with pytest.raises(
        ValueError, match=r"takes \(t\), which looks like a time-dependent"
    ):
        jaxsens.LinearField(lambda t: -jnp.eye(2) * t)
    with pytest.raises(
        ValueError, match=r"`matvec` takes \(t, args, v\).*time-dependent"
    ):
        jaxsens.LinearField(matvec=lambda t, args, v: -t * v)
    with pytest.raises(
        ValueError, match=r"`forcing` takes \(t, args\).*time-dependent"
    ):
        jaxsens.LinearField(-jnp.eye(2), forcing=lambda t, args: jnp.ones(2) * t)


def test_error_construction():
    with pytest.raises(ValueError, match=r"exactly one of `matrix`.*got neither"):
        jaxsens.LinearField()
    with pytest.raises(ValueError, match=r"exactly one of `matrix`.*got both"):
        jaxsens.LinearField(-jnp.eye(2), matvec=lambda a, v: v)
    with pytest.raises(TypeError, match=r"`LinearField\(matrix=...\)` must be"):
        jaxsens.LinearField("A")
    with pytest.raises(
        TypeError, match=r"`LinearField\(matvec=...\)` must be a function"
    ):
        jaxsens.LinearField(matvec=3)
    with pytest.raises(ValueError, match=r"must take two positional arguments"):
        jaxsens.LinearField(matvec=lambda v: v)
    with pytest.raises(ValueError, match=r"takes no positional argument"):
        jaxsens.LinearField(lambda: -jnp.eye(2))
    with pytest.raises(
        TypeError, match=r"forcing=...\)` must be a 1-D array or a function"
    ):
        jaxsens.LinearField(-jnp.eye(2), forcing="b")
    with pytest.raises(TypeError, match=r"`matrix\(args\)` must return"):
        jaxsens.solve(
            jaxsens.LinearField(lambda a: "A"),
            jnp.ones(2),
            jnp.array([0.0, 1.0]),
            sensitivity=jaxsens.LinearExpm(),
        )
    with pytest.raises(ValueError, match=r"krylov_dim=...\)` must be an int >= 2"):
        jaxsens.KrylovExpm(krylov_dim=1)
    with pytest.raises(ValueError, match=r"max_substeps=...\)` must be a positive int"):
        jaxsens.KrylovExpm(max_substeps=0)
    with pytest.raises(ValueError, match=r"tol=...\)` must be a float in \(0, 1\)"):
        jaxsens.KrylovExpm(tol=2.0)


def test_error_runtime():
    ts = jnp.array([0.0, 1.0])
    field = jaxsens.LinearField(lambda k: -k * jnp.eye(2))
    run = jax.jit(
        lambda k: (
            jaxsens.solve(
                field, jnp.ones(2), ts, k, sensitivity=jaxsens.LinearExpm()
            ).ys
        )
    )
    assert rel(run(1.0)[-1], jnp.exp(-1.0) * jnp.ones(2)) < 1e-14
    with pytest.raises(Exception, match=r"beyond the range of the scaling-and-squar"):
        jax.block_until_ready(run(1e6))

    stiff = jaxsens.LinearField(matvec=lambda k, v: -k * jnp.arange(1.0, 41.0) * v)
    method = jaxsens.KrylovExpm(krylov_dim=4, max_substeps=2)
    solve = eqx.filter_jit(
        lambda k, throw: jaxsens.solve(
            stiff, jnp.ones(40), ts, k, sensitivity=method, throw=throw
        )
    )
    with pytest.raises(Exception, match=r"needed more than `max_substeps`"):
        jax.block_until_ready(solve(100.0, True).ys)
    assert solve(100.0, False).result == jaxsens.RESULTS.krylov_substeps_exhausted

    def bad_loss(k):
        ys = jaxsens.solve(
            stiff, jnp.ones(40), ts, k, sensitivity=jaxsens.KrylovExpm()
        ).ys
        return jnp.sum(ys * jnp.inf)

    with pytest.raises(Exception, match=r"cotangent of `ys` is not finite"):
        jax.block_until_ready(eqx.filter_jit(jax.grad(bad_loss))(1.0))
