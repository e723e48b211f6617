"""`expm` by scaling and squaring, with its Fréchet derivative as the JVP.

The Padé-13 scaling-and-squaring algorithm (Higham 2005), as in
`jax.scipy.linalg.expm`, changed where a gradient through it pays:

- **Fewer squarings.** `s` comes from `α = max(‖A⁴‖^{1/4}, ‖A⁶‖^{1/6})` rather
  than `‖A‖₁` (Al-Mohy & Higham 2009); the powers are needed by the Padé
  approximant anyway. For rate matrices, whose powers grow more slowly than
  `‖A‖₁`, that is often one squaring fewer, each worth three matrix products in
  a gradient.
- **A hand-written JVP**: the Fréchet derivative `L(A, Ȧ)` by the product
  rule through the Padé approximant and through each squaring, `L ← X L + L X`.
  The Padé denominator `Q` is inverted once, so that `Q⁻¹` is applied to the
  primal and to the tangent (and, transposed, to the cotangent) as matrix
  products rather than as triangular solves (cheaper, and safe: `Q` is well
  conditioned at the scaled norms used). JAX transposes it for reverse mode, so the
  backward pass is a straight run of matrix products instead of autodiff back
  through a 16-step `scan` of `lax.cond`s, and every product there has a plain
  (not transposed) left operand (`_left`).

A gradient through it is cheaper than one through `jax.scipy.linalg.expm`
at about the same forward cost (the README's performance section). Being a
`custom_jvp`, it keeps `jax.jvp`, `jax.hessian` and `vmap` working.

Tried and dropped: the trace shift `expm(A) = e^μ expm(A - μI)` (Higham 2005)
also saves a squaring on rate matrices, but makes their decaying modes lose
~1e-11 relative accuracy against the stationary mode's growth; a `lax.switch`
over `s` with unrolled branches is no faster unbatched and much slower under
`vmap` (where it becomes a `select` over all 17 branches).
"""

import jax
import jax.lax as lax
import jax.numpy as jnp


# Padé coefficients b_k of r_13(x) = p_13(x)/p_13(-x), and θ_13, the largest
# scaled norm at which degree 13 is accurate to double-precision roundoff
# (Higham 2005, Table 2.3; the values `jax.scipy.linalg.expm` uses).
_B = (
    64764752532480000.0, 32382376266240000.0, 7771770303897600.0,
    1187353796428800.0, 129060195264000.0, 10559470521600.0, 670442572800.0,
    33522128640.0, 1323241920.0, 40840800.0, 960960.0, 16380.0, 182.0, 1.0,
)  # fmt: skip
_THETA = 5.371920351148152
MAX_SQUARINGS = 16


def _powers(a):
    a2 = a @ a
    a4 = a2 @ a2
    return a2, a4, a4 @ a2


def _squarings_needed(a, a4, a6):
    """`s` from `α = max(‖A⁴‖^{1/4}, ‖A⁶‖^{1/6})` (Al-Mohy & Higham 2009): the
    Padé error depends on these, not on `‖A‖₁` (for rate matrices `α` is often
    well below `‖A‖₁`, one squaring fewer). `‖A⁴‖^{1/4}` bounds the `‖A⁸‖^{1/8}` of
    their `α₃`. Rounded down, as `jax.scipy.linalg.expm` rounds `log2(‖A‖₁/θ)`:
    the scaled `α` stays below `2θ`, so the worst case is that of JAX's `expm`
    (`tests/test_expm.py` compares with scipy)."""
    alpha = jnp.maximum(
        jnp.linalg.norm(a4, 1) ** (1 / 4), jnp.linalg.norm(a6, 1) ** (1 / 6)
    )
    alpha = jnp.minimum(alpha, jnp.linalg.norm(a, 1))
    s = jnp.floor(jnp.log2(alpha / _THETA))
    s = jnp.clip(jnp.where(jnp.isfinite(s), s, 0), 0, MAX_SQUARINGS)
    return s.astype(jnp.int32)


def _scaled(c, a, a2, a4, a6):
    return c * a, c**2 * a2, c**4 * a4, c**6 * a6


def _pade13(a, a2, a4, a6):
    """`r_13(A) = (V - U)⁻¹(U + V)`'s pieces: `(U, V, W, W₁, Z₁)` with
    `U = A W`, `W = A⁶W₁ + ...`, `V = A⁶Z₁ + ...` (U odd, V even in A)."""
    b = _B
    eye = jnp.eye(a.shape[0], dtype=a.dtype)
    w1 = b[13] * a6 + b[11] * a4 + b[9] * a2
    z1 = b[12] * a6 + b[10] * a4 + b[8] * a2
    w = a6 @ w1 + b[7] * a6 + b[5] * a4 + b[3] * a2 + b[1] * eye
    v = a6 @ z1 + b[6] * a6 + b[4] * a4 + b[2] * a2 + b[0] * eye
    return a @ w, v, w, w1, z1


def _square(s, step, *xs):
    """`s` squarings, `xs = step(*xs)` each: an unrolled run of `lax.cond`s, so
    that the untaken squarings cost nothing, and under `vmap` (where a `cond` on
    a batched `s` becomes a `select`) at most 16 are made, not the 136 of a
    `switch` over `s`."""
    for j in range(MAX_SQUARINGS):
        xs = lax.cond(j < s, step, lambda *x: x, *xs)
    return xs


def _left(k):
    """The linear map `d ↦ k @ d`, written as `(dᵀ kᵀ)ᵀ` with `kᵀ` stored.

    Reverse mode runs the transpose, `c ↦ kᵀ c`. Left as `k @ d`, XLA computes
    that as a product with a transposed left operand, slower on CPU than a
    plain one; this form transposes to
    `(cᵀ k)ᵀ`, a plain product between two cheap transposes."""
    kt = lax.optimization_barrier(k.T)
    return lambda d: (d.T @ kt).T


@jax.custom_jvp
def expm(a):
    """`expm(a)` for a square float matrix `a`; NaN if `‖a‖₁` > 7e5."""
    a2, a4, a6 = _powers(a)
    s = _squarings_needed(a, a4, a6)
    u, v, *_ = _pade13(*_scaled(0.5 ** s.astype(a.dtype), a, a2, a4, a6))
    (x,) = _square(s, lambda x: (x @ x,), jnp.linalg.solve(v - u, u + v))
    return _nan_beyond_range(a, x)


def _nan_beyond_range(a, out):
    too_big = jnp.linalg.norm(a, 1) > _THETA * 2.0 ** (MAX_SQUARINGS + 1)
    return jnp.where(too_big, jnp.nan, out)


@expm.defjvp
def _expm_jvp(primals, tangents):
    """The Fréchet derivative through the Padé approximant and each squaring,
    by the product rule, every `constant @ tangent` through `_left`."""
    (a0,), (da,) = primals, tangents
    b = _B
    a2, a4, a6 = _powers(a0)
    s = _squarings_needed(a0, a4, a6)
    c = 0.5 ** s.astype(a0.dtype)
    a, a2, a4, a6 = _scaled(c, a0, a2, a4, a6)
    e = c * da
    u, v, w, w1, z1 = _pade13(a, a2, a4, a6)
    left_a, left_a6 = _left(a), _left(a6)
    m2 = left_a(e) + e @ a
    m4 = _left(a2)(m2) + m2 @ a2
    m6 = _left(a4)(m2) + m4 @ a2
    dw1 = b[13] * m6 + b[11] * m4 + b[9] * m2
    dz1 = b[12] * m6 + b[10] * m4 + b[8] * m2
    dw = left_a6(dw1) + m6 @ w1 + b[7] * m6 + b[5] * m4 + b[3] * m2
    du = left_a(dw) + e @ w
    dv = left_a6(dz1) + m6 @ z1 + b[6] * m6 + b[4] * m4 + b[2] * m2
    q_inv = jnp.linalg.inv(v - u)
    r = q_inv @ (u + v)
    # d(Q⁻¹P) = Q⁻¹(dP - dQ R), dP = dU + dV, dQ = dV - dU.
    dr = _left(q_inv)((du + dv) + (du - dv) @ r)

    def step(x, dx):
        return x @ x, _left(x)(dx) + dx @ x

    x, dx = _square(s, step, r, dr)
    return _nan_beyond_range(a0, x), dx
