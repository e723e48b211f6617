"""Krylov expm-actions with Expokit's time stepping (Sidje 1998): the Arnoldi and
Lanczos bases, the error estimate and step-size rule, and the forward substeps
over a save interval. `krylov.py` builds `KrylovExpm` and its VJP on these."""

import math

import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
import lineax as lx
from jax.scipy.linalg import expm
from jaxtyping import Array


_GAMMA = 0.9  # Expokit's safety factor
_DELTA = 1.2  # Expokit's acceptance slack
_MAX_REJECTS = 60


class Affine(eqx.Module):
    """`z ↦ [A y + s b; 0]` on `z = [y; s]` (or just `A y` without forcing): the
    forcing folded into a linear system of size n + 1."""

    op: lx.AbstractLinearOperator
    b: Array | None

    def mv(self, z):
        if self.b is None:
            return self.op.mv(z)
        y, s = z[:-1], z[-1]
        top = self.op.mv(y) + s * self.b
        return jnp.concatenate([top, jnp.zeros((1,), top.dtype)])


class Config(eqx.Module):
    """The static settings of one Krylov solve."""

    m: int = eqx.field(static=True)
    kmax: int = eqx.field(static=True)
    tol: float = eqx.field(static=True)
    symmetric: bool = eqx.field(static=True)

    def basis(self, mv, v):
        return (lanczos if self.symmetric else arnoldi)(mv, v, self.m)


def _safe_div(x, d):
    ok = d > 0
    return jnp.where(ok, x / jnp.where(ok, d, 1.0), 0.0)


def arnoldi(mv, v, m: int):
    """Arnoldi with classical Gram–Schmidt done twice (stable, vectorised).

    Returns `(V, H̃, β, avnorm)`: `V` (m+1, n) with orthonormal rows (rows after a
    breakdown are zero), `H̃` the (m+2)×(m+2) augmented Hessenberg matrix of Expokit
    (`H̃[m+1, m] = 1`), `β = ‖v‖` and `avnorm = ‖A v_{m+1}‖` for the error estimate.
    """
    n = v.shape[0]
    beta = jnp.linalg.norm(v)
    basis = jnp.zeros((m + 1, n), v.dtype).at[0].set(_safe_div(v, beta))
    hess = jnp.zeros((m + 2, m + 2), v.dtype)

    def body(j, carry):
        basis, hess = carry
        w = mv(basis[j])
        wnorm = jnp.linalg.norm(w)
        h = basis @ w
        w = w - basis.T @ h
        h2 = basis @ w
        w = w - basis.T @ h2
        h = h + h2
        hn = jnp.linalg.norm(w)
        # Breakdown: the Krylov space is invariant, the approximation is exact.
        breakdown = hn <= 1e-12 * wnorm
        hn = jnp.where(breakdown, 0.0, hn)
        basis = basis.at[j + 1].set(_safe_div(w, hn))
        col = jnp.zeros((m + 2,), v.dtype).at[: m + 1].set(h).at[j + 1].set(hn)
        hess = hess.at[:, j].set(col)
        return basis, hess

    basis, hess = lax.fori_loop(0, m, body, (basis, hess))
    avnorm = jnp.linalg.norm(mv(basis[m]))
    hess = hess.at[m + 1, m].set(1.0)
    return basis, hess, beta, avnorm


def lanczos(mv, v, m: int):
    """Lanczos for a symmetric `A` (three-term recurrence, O(n) per iteration
    instead of Arnoldi's O(m n)); same outputs as `arnoldi`, `H̃` tridiagonal.
    No reorthogonalisation: for the exponential the loss of orthogonality does
    not spoil the approximation (Druskin & Knizhnerman 1995; Expokit's `dsexpv`).
    """
    beta = jnp.linalg.norm(v)
    v1 = _safe_div(v, beta)

    def step(carry, _):
        v_prev, v_cur, b_prev = carry
        w = mv(v_cur)
        wnorm = jnp.linalg.norm(w)
        w = w - b_prev * v_prev
        alpha = jnp.dot(v_cur, w)
        w = w - alpha * v_cur
        hn = jnp.linalg.norm(w)
        # Breakdown: the Krylov space is invariant; later vectors, α, β are zero.
        hn = jnp.where(hn <= 1e-12 * wnorm, 0.0, hn)
        v_next = _safe_div(w, hn)
        return (v_cur, v_next, hn), (v_next, alpha, hn)

    zero = jnp.zeros((), v.dtype)
    (_, v_last, _), (vs, alphas, betas) = lax.scan(
        step, (jnp.zeros_like(v), v1, zero), None, length=m
    )
    basis = jnp.concatenate([v1[None], vs])
    hess = jnp.zeros((m + 2, m + 2), v.dtype)
    idx = jnp.arange(m)
    hess = hess.at[idx, idx].set(alphas).at[idx + 1, idx].set(betas)
    hess = hess.at[idx[:-1], idx[:-1] + 1].set(betas[:-1])
    avnorm = jnp.linalg.norm(mv(v_last))
    hess = hess.at[m + 1, m].set(1.0)
    return basis, hess, beta, avnorm


def _error(f, avnorm, m: int):
    """Expokit's local error estimate (relative to β) and the exponent 1/m or
    1/(m-1) of its step-size rule."""
    phi1 = jnp.abs(f[m, 0])
    phi2 = jnp.abs(f[m + 1, 0]) * avnorm
    err = jnp.where(
        phi1 > 10 * phi2,
        phi2,
        jnp.where(
            phi1 > phi2, phi1 * phi2 / jnp.where(phi1 > phi2, phi1 - phi2, 1.0), phi1
        ),
    )
    xm = jnp.where(phi1 > phi2, 1.0 / m, 1.0 / max(m - 1, 1))
    err = jnp.where(jnp.isfinite(err), err, jnp.inf)
    return err, xm


def _factor(err, xm, tol):
    """Step-size factor γ (tol/err)^xm, limited to [0.05, 10]."""
    ratio = tol / jnp.maximum(err, jnp.finfo(err.dtype).tiny)
    fac = _GAMMA * jnp.exp(xm * jnp.log(ratio))
    return jnp.where(jnp.isfinite(err), jnp.clip(fac, 0.05, 10.0), 0.05)


def _initial_step(hess, m: int, tol):
    """Expokit's first step from an estimate of ‖A‖ (here ‖H̃[:m+1, :m]‖₁)."""
    anorm = jnp.maximum(jnp.max(jnp.sum(jnp.abs(hess[: m + 1, :m]), axis=0)), 1e-300)
    log_fact = (m + 1) * (math.log(m + 1) - 1.0) + 0.5 * math.log(2 * math.pi * (m + 1))
    log_tau = -jnp.log(anorm) + (log_fact + jnp.log(tol) - jnp.log(4 * anorm)) / m
    return jnp.exp(log_tau)


def adaptive_expm_step(mv, w, tau_max, tau_try, cfg: Config):
    """One accepted Krylov substep from `w`, of length τ ≤ `tau_max` (first try
    `min(tau_max, tau_try)`; `tau_try = inf` uses Expokit's initial guess).

    Returns `(V, H̃, β, f, τ, τ_next, rejects, ok)` with `f = expm(τ H̃)`.
    """
    m, tol = cfg.m, cfg.tol
    basis, hess, beta, avnorm = cfg.basis(mv, w)
    tau0 = jnp.where(jnp.isinf(tau_try), _initial_step(hess, m, tol), tau_try)
    tau0 = jnp.minimum(tau0, tau_max)

    # One loop for the first attempt and the rejections (one `expm` call site).
    def cond(c):
        _, _, err, _, rej, first = c
        return first | ((err > _DELTA * tol) & (rej < _MAX_REJECTS))

    def body(c):
        tau, _, err, xm, rej, first = c
        tau = jnp.where(first, tau, tau * jnp.minimum(_factor(err, xm, tol), 0.5))
        f = expm(tau * hess)
        err, xm = _error(f, avnorm, m)
        return tau, f, err, xm, rej + jnp.where(first, 0, 1), jnp.array(False)

    init = (
        tau0,
        jnp.zeros_like(hess),
        jnp.array(jnp.inf, hess.dtype),
        jnp.array(1.0 / m, hess.dtype),
        jnp.array(0),
        jnp.array(True),
    )
    tau, f, err, xm, rej, _ = lax.while_loop(cond, body, init)
    ok = err <= _DELTA * tol
    tau_next = tau * _factor(err, xm, tol)
    return basis, hess, beta, f, tau, tau_next, rej, ok


def forward_interval(mv, z, length, tau_try, cfg: Config, record: bool):
    """Propagate `z` over a save interval of length `length` by adaptive substeps.

    Returns `(z, tau_try, count, rejects, ok, record)`; with `record=True`,
    `record = (starts, taus)`: the substep start states (kmax, n) and lengths (kmax,).
    """
    m, kmax = cfg.m, cfg.kmax
    zero = jnp.zeros((), length.dtype)
    rec = (
        (jnp.zeros((kmax,) + z.shape, z.dtype), jnp.zeros((kmax,), length.dtype))
        if record
        else None
    )

    def cond(c):
        t_now, _, _, count, _, ok, _ = c
        return (t_now < length) & (count < kmax) & ok

    def body(c):
        t_now, z, tau_try, count, rejects, ok, rec = c
        remaining = length - t_now
        basis, _, beta, f, tau, tau_next, rej, ok_step = adaptive_expm_step(
            mv, z, remaining, tau_try, cfg
        )
        if record:
            rec = (rec[0].at[count].set(z), rec[1].at[count].set(tau))
        z = beta * (basis.T @ f[: m + 1, 0])
        t_now = jnp.where(tau >= remaining, length, t_now + tau)
        return t_now, z, tau_next, count + 1, rejects + rej, ok & ok_step, rec

    init = (zero, z, tau_try, jnp.array(0), jnp.array(0), jnp.array(True), rec)
    t_now, z, tau_try, count, rejects, ok, rec = lax.while_loop(cond, body, init)
    ok = ok & (t_now >= length)
    return z, tau_try, count, rejects, ok, rec


def intervals(t0, ts):
    return jnp.diff(ts, prepend=t0[None])


def forward(mv, z0, t0, ts, cfg: Config):
    def step(carry, length):
        z, tau_try, ok = carry
        tau_first = tau_try
        z, tau_try, count, rejects, ok_k, _ = forward_interval(
            mv, z, length, tau_try, cfg, record=False
        )
        return (z, tau_try, ok & ok_k), (z, count, rejects, tau_first)

    init = (z0, jnp.array(jnp.inf, ts.dtype), jnp.array(True))
    (_, _, ok), (zs, counts, rejects, tau_first) = lax.scan(
        step, init, intervals(t0, ts)
    )
    return zs, counts, rejects, ok, tau_first
