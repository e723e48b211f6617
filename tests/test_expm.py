"""The scaling-and-squaring `expm` behind `LinearExpm`, and its hand-written JVP.

References: `scipy.linalg.expm` for values; for derivatives, the Fréchet
derivative from Van Loan's block matrix `expm([[A, E], [0, A]])` (upper-right
block = L(A, E)), computed by scipy. Matrices are scaled from ‖A‖₁ = 5e-3 to
3e3, so that 0 to 8 squarings are exercised; one jitted function serves all
scales.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg as sl

from jaxsens._sensitivity._expm import _powers, _squarings_needed, expm


N = 5
# ‖A‖₁ from 5e-3 (no squaring) to 3e3 (8 squarings).
NORMS = [5e-3, 0.5, 4.0, 30.0, 300.0, 3000.0]


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


def matrix(norm, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(N, N)) - 2 * np.eye(N)  # decaying: expm stays O(1)
    return a * (norm / np.linalg.norm(a, 1))


def frechet(a, e):
    block = np.block([[a, e], [np.zeros_like(a), a]])
    return sl.expm(block)[:N, N:]


@pytest.fixture(scope="module")
def compiled():
    value = jax.jit(expm)
    jvp = jax.jit(lambda a, e: jax.jvp(expm, (a,), (e,)))
    vjp = jax.jit(lambda a, g: jax.vjp(expm, a)[1](g)[0])
    return value, jvp, vjp


def test_squarings_exercised():
    def squarings(a):
        a2, a4, a6 = _powers(a)
        return int(_squarings_needed(a, a4, a6))

    counts = [squarings(jnp.asarray(matrix(x))) for x in NORMS]
    assert counts == [0, 0, 0, 2, 5, 8]


@pytest.mark.parametrize("norm", NORMS)
def test_values_jvp_vjp_against_scipy(compiled, norm):
    value, jvp, vjp = compiled
    a = matrix(norm)
    rng = np.random.default_rng(1)
    e, g = rng.normal(size=(2, N, N))
    exact = sl.expm(a)
    # At ‖A‖₁ = 3e3 expm(A) ~ 1e-85: against a 50-digit mpmath expm, this
    # algorithm is 1.3e-13 off there, JAX's expm 7e-14, scipy's 2e-14.
    assert rel(value(a), exact) < 5e-13
    primal, tangent = jvp(a, e)
    assert rel(primal, exact) < 5e-13
    assert rel(tangent, frechet(a, e)) < 1e-12
    # The VJP is L(Aᵀ, G) (the adjoint of the Fréchet derivative).
    assert rel(vjp(a, g), frechet(a.T, g)) < 1e-12


def test_float32():
    a = matrix(30.0).astype(np.float32)
    e = np.random.default_rng(2).normal(size=(N, N)).astype(np.float32)
    primal, tangent = jax.jit(lambda a, e: jax.jvp(expm, (a,), (e,)))(a, e)
    assert primal.dtype == jnp.float32 and tangent.dtype == jnp.float32
    assert rel(primal, sl.expm(a.astype(np.float64))) < 1e-5
    assert rel(tangent, frechet(a.astype(np.float64), e.astype(np.float64))) < 1e-4


def test_hessian_and_vmap_over_different_squarings():
    # Second derivative: d/dA of ⟨G, L(A, E)⟩ along E, against central
    # differences of the (exact, block-matrix) Fréchet derivative.
    a = matrix(4.0)
    rng = np.random.default_rng(3)
    e, g = rng.normal(size=(2, N, N))

    def first(a):
        return jnp.vdot(g, jax.jvp(expm, (a,), (jnp.asarray(e),))[1])

    second = jax.jit(lambda a, e: jax.jvp(first, (a,), (e,))[1])(a, e)
    h = 1e-4
    fd = (np.vdot(g, frechet(a + h * e, e)) - np.vdot(g, frechet(a - h * e, e))) / (
        2 * h
    )
    assert abs(float(second) - fd) / abs(fd) < 1e-7
    # Reverse-then-forward (`jax.hessian`) agrees with forward-over-forward.
    hess = jax.jit(jax.hessian(lambda a: jnp.vdot(g, expm(a))))(a)
    assert rel(jnp.tensordot(hess, e, 2), second_fd_dir(g, a, e)) < 1e-7
    # A batch whose members take different Padé degrees and squaring counts.
    batch = np.stack([matrix(x, seed=i) for i, x in enumerate([0.1, 4.0, 3000.0])])
    grads = jax.jit(jax.vmap(jax.grad(lambda a: jnp.sum(expm(a) * g))))(batch)
    for a_i, g_i in zip(batch, grads, strict=True):
        assert rel(g_i, frechet(a_i.T, g)) < 1e-12


def second_fd_dir(g, a, e, h=1e-4):
    """d/dA of ⟨G, expm(A)⟩ (= L(Aᵀ, G)) along E, by central differences."""
    return (frechet(a.T + h * e.T, g) - frechet(a.T - h * e.T, g)) / (2 * h)


def test_nan_beyond_range():
    big = matrix(5.4 * 2.0**18)
    assert bool(jnp.all(jnp.isnan(expm(jnp.asarray(big)))))
