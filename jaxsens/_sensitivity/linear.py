"""`LinearExpm`: the exact solution of a linear system by the matrix exponential."""

import functools

import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np

from .._linear_field import linear_parts
from .._solution import RESULTS, checked, guarded
from ._expm import expm
from .base import AbstractSensitivity, all_finite


# `expm` (as `jax.scipy.linalg.expm`) squares at most 16 times and returns NaN
# beyond ‖M‖₁ = 5.37 · 2^17; anything past 2^16 is reported as a failure.
_EXPM_MAX_NORM = 5.371920351148152 * 2.0**16


def augment(a, b):
    """`[[A, b], [0, 0]]`: the forcing `b` folded into a linear system of size n+1."""
    n = a.shape[0]
    top = jnp.concatenate([a, b[:, None]], axis=1)
    return jnp.concatenate([top, jnp.zeros((1, n + 1), a.dtype)], axis=0)


def _powers_scan(e, z, num):
    def step(y, _):
        y = e @ y
        return y, y

    # Unrolled: the per-iteration loop overhead dominates these small matvecs.
    _, zs = lax.scan(step, z, None, length=num - 1, unroll=8)
    return jnp.concatenate([z[None], zs])


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def powers(e, z, num: int):
    """`[z, E z, E² z, ..., E^(num-1) z]`, shape `(num, n)`.

    Its JVP is written so that the parameter part is ONE matrix product: the
    tangent obeys `ż_k = E ż_{k-1} + Ė z_{k-1}`, and the forcings `Ė z_{k-1}` for
    all k are `Z Ėᵀ`. Transposed for reverse mode, `Ē = Σ_k λ_k z_{k-1}ᵀ` is then
    one GEMM instead of a rank-one update per step.
    """
    return _powers_scan(e, z, num)


@powers.defjvp
def _powers_jvp(num, primals, tangents):
    e, z = primals
    de, dz = tangents
    zs = powers(e, z, num)
    forcing = zs[:-1] @ de.T

    def step(dy, f):
        dy = e @ dy + f
        return dy, dy

    _, dzs = lax.scan(step, dz, forcing, unroll=8)
    return zs, jnp.concatenate([dz[None], dzs])


def grid_kind(t0, ts, xp=jnp):
    """How the save times are spaced: 0, 1, 2 = uniform with a first step
    `t0 -> ts[0]` of zero, of `h`, of anything else; 3 = not uniform. With
    `xp=numpy` on known times (decided while tracing), else traced."""
    num = ts.shape[0]
    dts = xp.diff(ts, prepend=xp.asarray(t0, ts.dtype)[None])
    scale = xp.maximum(xp.maximum(xp.max(xp.abs(ts)), xp.abs(t0)), 1.0)
    tol = 64 * jnp.finfo(ts.dtype).eps * scale
    h = (ts[-1] - ts[0]) / (num - 1)
    uniform = xp.all(xp.abs(dts[1:] - h) <= tol)
    first = xp.where(dts[0] == 0, 0, xp.where(xp.abs(dts[0] - h) <= tol, 1, 2))
    return xp.where(uniform, first, 3)


def with_time_derivatives(zs, m, t0, ts):
    """`zs` (computed with `t0`, `ts` held fixed), given its derivatives in the
    times: `∂z_k/∂t_k = M z_k` and `∂z_k/∂t0 = −M z_k` (M commutes with
    `expm(M τ)`), to second order. The added terms are exactly zero in value."""
    sg = lax.stop_gradient
    tau = (ts - sg(ts))[:, None] - (t0 - sg(t0))
    m1 = zs @ m.T
    return zs + tau.astype(zs.dtype) * (m1 + 0.5 * tau.astype(zs.dtype) * (m1 @ m.T))


def propagate(m, z0, t0, ts, known=None):
    """`z(t_k) = expm(M (t_k - t0)) z0` for every save time, as a `(T, n)` array.

    Uniform save times (up to rounding) use one `expm(M h)` and a scan of
    matrix-vector products, the first step `t0 -> ts[0]` costing nothing when
    `t0 == ts[0]` and nothing extra when it equals `h`. Otherwise one `expm` per
    step, in a `scan` (sequential: `expm`'s data-dependent branches stay branches,
    where `vmap` would turn them into `select`s that evaluate all 16 squarings).
    `known`: `(t0, ts)` as floats when they were known at trace time
    (`SolveOptions.static_times`); the spacing is then decided in Python and only
    one path is compiled, which shortens compilation.
    """
    dts = jnp.diff(ts, prepend=t0[None])
    num = ts.shape[0]
    if num == 1:
        return (expm(m * dts[0]) @ z0)[None]
    h = (ts[-1] - ts[0]) / (num - 1)

    def uniform_branch(m, z0, dts, first):
        e = expm(m * h)
        starts = [lambda: z0, lambda: e @ z0, lambda: expm(m * dts[0]) @ z0]
        if isinstance(first, int):
            z1 = starts[first]()
        else:
            z1 = lax.switch(first, starts)
        return powers(e, z1, num)

    def general_branch(m, z0, dts):
        def step(y, dt):
            y = expm(m * dt) @ y
            return y, y

        _, zs = lax.scan(step, z0, dts)
        return zs

    if known is not None:
        kind = int(grid_kind(np.float64(known[0]), np.asarray(known[1], ts.dtype), np))
        if kind == 3:
            return general_branch(m, z0, dts)
        return uniform_branch(m, z0, dts, kind)
    kind = grid_kind(t0, ts)
    return lax.cond(
        kind < 3,
        lambda m, z0, dts: uniform_branch(m, z0, dts, jnp.minimum(kind, 2)),
        general_branch,
        m, z0, dts,
    )


class LinearExpm(AbstractSensitivity):
    """Exact solution of a linear system `y' = A y + b` by the matrix exponential.

    `y(t_k) = expm(A (t_k - t_{k-1})) y(t_{k-1})`: no time steps and no tolerance
    (`rtol`, `atol`, `solver` and `max_steps` are ignored). On uniformly spaced save
    times one `expm(A h)` is computed and reused ("compute `exp(A)` once and take
    powers"), otherwise one `expm` per step. A forcing `b` is folded into
    the augmented matrix `[[A, b], [0, 0]]` (Van Loan 1978). The gradient with
    respect to everything `A` and `b` are built from, and to `y0`, goes through
    the Fréchet derivative of the scaling-and-squaring Padé algorithm (the
    algorithm of `jax.scipy.linalg.expm`, with a hand-written JVP that JAX
    transposes; Al-Mohy & Higham 2009: that derivative is the Fréchet
    derivative to working accuracy), so `jax.grad`, `jax.jvp`,
    `jax.hessian`, `jit` and `vmap` all work, and the gradient agrees with finite
    differences to ~1e-11 relative in float64.

    Use it for a [`jaxsens.LinearField`][] of up to a few thousand states
    (`Auto()` picks it for n ≤ 2000): cost O(n³) per distinct step and memory
    O(n²) per step on the backward pass. A time-stepped gradient of the same
    problem is off by the solver tolerance and is slower, the more so the stiffer
    the system (the README's performance section has the figures). For larger or
    matrix-free `A` use [`jaxsens.KrylovExpm`][].

    **Arguments:** none.

    Under `jit`, whether the grid is uniform is decided at run time (`lax.cond`);
    under a `vmap` over `ts` both paths are evaluated.

    Cites: Moler & Van Loan 2003 ("Nineteen dubious ways"); Al-Mohy & Higham 2009
    (Padé scaling and squaring, and its Fréchet derivative); Van Loan 1978
    (block-triangular exponentials).

    **Example:**

    ```python
    import jax, jax.numpy as jnp, jaxsens

    field = jaxsens.LinearField(lambda k: jnp.array([[-k, 0.0], [k, -1.0]]),
                                forcing=jnp.array([0.0, 0.5]))
    ts = jnp.linspace(0.0, 2.0, 5)
    loss = lambda k: jnp.sum(jaxsens.solve(field, jnp.array([1.0, 0.0]), ts, k,
                                           sensitivity=jaxsens.LinearExpm()).ys ** 2)
    jax.jit(jax.grad(loss))(2.0)
    ```
    """

    def solve(self, field, y0, ts, args, options):
        field = linear_parts(field, y0, args, "LinearExpm")
        a = field.dense_matrix(args, y0)
        b = field.forcing_vector(args, y0)
        n = y0.shape[0]
        dtype = jnp.result_type(a, y0, ts, *(() if b is None else (b,)))
        if b is None:
            m, z0 = a.astype(dtype), y0.astype(dtype)
        else:
            m = augment(a.astype(dtype), b.astype(dtype))
            z0 = jnp.concatenate([y0.astype(dtype), jnp.ones((1,), dtype)])
        t0 = jnp.asarray(options.t0, ts.dtype)
        # The grid's derivative in the times is added in closed form: the uniform
        # path (one `expm(M h)`) does not depend on each time separately.
        sg = lax.stop_gradient
        zs = propagate(m, z0, sg(t0), sg(ts), options.static_times)
        zs = with_time_derivatives(zs, m, t0, ts)
        ys = zs[:, :n].astype(y0.dtype)
        largest_step = jnp.max(jnp.diff(ts, prepend=t0[None]))
        result = RESULTS.where(
            jnp.linalg.norm(m, 1) * largest_step > _EXPM_MAX_NORM,
            RESULTS.expm_out_of_range,
            RESULTS.where(all_finite(ys), RESULTS.successful, RESULTS.linear_nonfinite),
        )
        ys = guarded(ys, result, options.throw, (m, y0, ts, t0))
        if options.throw:
            ys = checked(ys, result, True)
        minus_one = jnp.array(-1, jnp.int32)
        stats = {
            "num_steps": minus_one,
            "num_accepted_steps": minus_one,
            "num_rejected_steps": minus_one,
        }
        return ys, stats, result
