"""`KrylovExpm`: matrix-free `expm(tA) v` by Arnoldi with time stepping, and its VJP.

Forward (Sidje 1998, Expokit's `expv`): on each substep of length τ, build the
Krylov basis `V` (m+1 orthonormal rows) of `A` from the current state `w` (β = ‖w‖)
and the small augmented Hessenberg matrix `H̃` ((m+2)×(m+2)); then
`w(τ) ≈ β Vᵀ exp(τ Ĥ) e₁` with `Ĥ = H̃[:m+1, :m+1]` ("corrected" scheme), with
Expokit's a-posteriori error estimate choosing τ.

Backward (the VJP), for `y(T) = exp(TA) v` and a cotangent `ȳ`:

    ∂L/∂v = exp(TAᵀ) ȳ = λ(0),       λ(s) = exp((T - s)Aᵀ) ȳ,
    ∂L/∂θ = ∫₀ᵀ ∂_θ[λ(s)ᵀ A(θ) w(s)] ds,   w(s) = exp(sA) v.

On a forward substep `w(s_a + r) = β Vᵀ exp(r Ĥ) e₁`; going backwards, λ is itself
stepped with a Krylov basis `W` of `Aᵀ` (its own error control), so on a backward
piece of length σ `λ = γ Wᵀ exp((σ - r) Ĝ) e₁`. The time integral of their outer
product is then exact, with no quadrature error: it is `γβ Wᵀ X V` with
`X = ∫₀^σ exp((σ-r)Ĝ) e₁ uᵀ exp(r Ĥᵀ) dr`, the top-right block of
`expm(σ [[Ĝ, e₁uᵀ], [0, Ĥᵀ]])` (Van Loan 1978), where u is the forward
coefficient vector at the start of the piece (computed transposed, as the block of
`expm(σ [[Ĥ, u e₁ᵀ], [0, Ĝᵀ]])`). Since `∂_θ[λᵀAw]` is bilinear in (λ, w), the
cotangents `Xᵀ W` of the m+1 rows of `V` are summed over the backward pieces of a
forward substep, and each forward substep costs ONE vjp of the matvec per row of
`V`. The gradient is therefore exact up to the Krylov approximation of `w` and
`λ`, both under Expokit's error control (`tol`): no quadrature in time.

For a symmetric `A` (lineax `symmetric_tag`) the basis comes from the Lanczos
three-term recurrence, O(n) instead of O(n m) work per vector. Only vectors of
length n (m+1 of them at a time) and small matrices are ever formed: memory
O(n·(m + max_substeps)), the last for the substep starts of one save interval,
recomputed on the backward pass.
"""

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import lineax as lx
from jax.scipy.linalg import expm

from .._linear_field import linear_parts
from .._solution import RESULTS, checked
from ._krylov_steps import (
    Affine,
    Config,
    adaptive_expm_step,
    arnoldi as arnoldi,
    forward,
    forward_interval,
    intervals,
    lanczos as lanczos,
)
from .base import AbstractSensitivity, all_finite, as_arrays


class KrylovExpm(AbstractSensitivity):
    """Matrix-free exact-in-the-limit solution of a linear system by Krylov
    expm-actions, with its own VJP (no n×n matrix anywhere).

    Forward: `y(t_k) = expm(A Δt_k) y(t_{k-1})` computed as an *action* by the
    Arnoldi process (Lanczos for an `A` tagged `lineax.symmetric_tag`) with
    Expokit's time stepping and error control (Sidje 1998): each substep costs
    `krylov_dim + 1` matvecs and a small `(krylov_dim+2)²` matrix exponential.
    Backward: the adjoint `λ` is stepped with Krylov actions of `Aᵀ` (the
    transpose of the matvec, by autodiff), and the parameter gradient
    `∫ ∂_θ[λᵀ A(θ) y] dt` is integrated *exactly* over every substep with a small
    Van Loan block exponential, costing one vjp of the matvec per Krylov vector.
    The gradient is exact up to the Krylov error control (`tol`): no quadrature
    in time. See this module's docstring for the derivation.

    Use it for a [`jaxsens.LinearField`][] that is large (n in the thousands to
    10^5) or given matrix-free (`LinearField(matvec=...)` or a lineax operator):
    memory is `O(n · (krylov_dim + max_substeps))`, where a time-stepped adjoint
    stores the forward solution and pays a vjp per stage (the README's
    performance section compares them). For small dense `A`,
    [`jaxsens.LinearExpm`][] is exact and faster. Stiff problems cost more
    substeps (Krylov methods converge once `krylov_dim` exceeds ~ √(‖A‖τ) for a
    symmetric `A`), but never a stiff time integrator.

    `rtol`, `atol`, `solver` and `max_steps` of `solve` are ignored. Supports
    `jax.grad`/`jax.vjp` (not `jax.jvp`: it is a `custom_vjp`), `jit` and `vmap`.

    **Arguments:**

    - `krylov_dim`: the Krylov subspace dimension m (Expokit's default 30).
    - `tol`: local error tolerance of each substep, relative to the norm of the
        state (the forward) or the adjoint (the backward). Default: 1e-10 in
        float64, `100 · eps` in float32 (Krylov convergence is fast, so tight
        tolerances are cheap; the time-stepping `rtol`/`atol` do not apply).
    - `max_substeps`: substep budget per save interval; also the size of the buffer
        of substep start states kept on the backward pass.

    Cites: Sidje 1998 (Expokit); Saad 1992 (Krylov approximation of `exp(A)v`);
    Hochbruck & Lubich 1997 (convergence); Van Loan 1978 (integrals of matrix
    exponentials); Al-Mohy & Higham 2011 (expm-actions).

    **Example:**

    ```python
    import jax, jax.numpy as jnp, jaxsens

    def laplacian(D, v):  # 1-D diffusion with a learnable coefficient per cell
        flux = D * (jnp.roll(v, -1) - v)
        return flux - jnp.roll(flux, 1)

    field = jaxsens.LinearField(matvec=laplacian)
    y0 = jnp.exp(-((jnp.linspace(-1, 1, 200)) ** 2) * 20)
    ts = jnp.array([0.5, 1.0, 2.0])

    def loss(D):
        sol = jaxsens.solve(field, y0, ts, D, sensitivity=jaxsens.KrylovExpm())
        return jnp.sum(sol.ys[-1] ** 2)

    jax.jit(jax.grad(loss))(jnp.full(200, 3.0))
    ```
    """

    krylov_dim: int = 30
    tol: float | None = None
    max_substeps: int = 64

    def __check_init__(self):
        if not isinstance(self.krylov_dim, int) or self.krylov_dim < 2:
            raise ValueError(
                "`KrylovExpm(krylov_dim=...)` must be an int >= 2, got "
                f"{self.krylov_dim!r}."
            )
        if not isinstance(self.max_substeps, int) or self.max_substeps < 1:
            raise ValueError(
                "`KrylovExpm(max_substeps=...)` must be a positive int, got "
                f"{self.max_substeps!r}."
            )
        if self.tol is not None and not (
            isinstance(self.tol, (int, float)) and 0 < self.tol < 1
        ):
            raise ValueError(
                f"`KrylovExpm(tol=...)` must be a float in (0, 1), got {self.tol!r}."
            )

    def solve(self, field, y0, ts, args, options):
        field = linear_parts(field, y0, args, "KrylovExpm")
        op = field.operator(args, y0)
        b = field.forcing_vector(args, y0)
        dtype = jnp.result_type(y0, ts)
        affine = Affine(op, b)
        diff, static = eqx.partition(affine, eqx.is_inexact_array)
        symmetric = b is None and lx.is_symmetric(op)
        tol = self.tol
        if tol is None:
            tol = max(1e-10, 100 * float(jnp.finfo(dtype).eps))
        cfg = Config(self.krylov_dim, self.max_substeps, float(tol), symmetric)
        z0 = y0 if b is None else jnp.concatenate([y0, jnp.ones((1,), y0.dtype)])
        t0 = jnp.asarray(options.t0, dtype)
        zs, stats, result = _krylov_solve(
            (diff, z0, ts.astype(dtype), t0), static, cfg, options.throw
        )
        ys = zs if b is None else zs[:, :-1]
        return ys, stats, result


def _primal(diff, static, z0, ts, t0, cfg, throw):
    mv = eqx.combine(diff, static).mv
    zs, counts, rejects, ok, tau_first = forward(mv, z0, t0, ts, cfg)
    result = RESULTS.where(
        ok,
        RESULTS.where(all_finite(zs), RESULTS.successful, RESULTS.linear_nonfinite),
        RESULTS.krylov_substeps_exhausted,
    )
    if throw:
        zs = checked(zs, result, True)
    total = jnp.sum(counts)
    stats = {
        "num_steps": total + jnp.sum(rejects),
        "num_accepted_steps": total,
        "num_rejected_steps": jnp.sum(rejects),
    }
    return (zs, stats, result), tau_first


@eqx.filter_custom_vjp
def _krylov_solve(vjp_arg, static, cfg, throw):
    diff, z0, ts, t0 = as_arrays(vjp_arg)
    return _primal(diff, static, z0, ts, t0, cfg, throw)[0]


@_krylov_solve.def_fwd
def _krylov_solve_fwd(perturbed, vjp_arg, static, cfg, throw):
    del perturbed
    diff, z0, ts, t0 = as_arrays(vjp_arg)
    out, tau_first = _primal(diff, static, z0, ts, t0, cfg, throw)
    return out, (out[0], out[2], tau_first)


@_krylov_solve.def_bwd
def _krylov_solve_bwd(residuals, grad_obj, perturbed, vjp_arg, static, cfg, throw):
    _, _, p_ts, p_t0 = perturbed
    diff, z0, ts, t0 = as_arrays(vjp_arg)
    zs, forward_result, tau_first = residuals
    zs_bar = grad_obj[0]
    if zs_bar is None:
        zs_bar = jnp.zeros_like(zs)
    diff_bar, z0_bar, ok = krylov_backward(
        diff, static, z0, zs, zs_bar, tau_first, ts, t0, cfg
    )
    # `t̄_k = (A z_k)ᵀ z̄_k` and `t̄0 = −λ(t0)ᵀ A z0`, with `λ(t0) = z̄0`.
    mv = eqx.combine(diff, static).mv
    ts_bar = (jnp.sum(jax.vmap(mv)(zs) * zs_bar, axis=1) if p_ts
              else jnp.zeros_like(ts))
    t0_bar = -jnp.dot(mv(z0), z0_bar) if p_t0 else jnp.zeros_like(t0)
    result = RESULTS.where(
        forward_result != RESULTS.successful,
        forward_result,
        RESULTS.where(ok, RESULTS.successful, RESULTS.krylov_backward_failed),
    )
    # Checked on every output: any of them may be dead code in the caller's gradient.
    return checked((diff_bar, z0_bar, ts_bar.astype(ts.dtype),
                    t0_bar.astype(t0.dtype)), result, throw)


def krylov_backward(diff, static, z0, zs, zs_bar, tau_first, ts, t0, cfg):
    """`(∂L/∂diff, ∂L/∂z0, ok)` given the cotangents `zs_bar` of the saved states
    (`ok`: the backward Krylov stepping passed its error control)."""
    m = cfg.m

    def mv_of(d):
        return eqx.combine(d, static).mv

    mv = mv_of(diff)
    if cfg.symmetric:
        mv_t = mv
    else:
        _, mv_vjp = jax.vjp(mv, jnp.zeros_like(z0))

        def mv_t(v):
            return mv_vjp(v)[0]

    dense = isinstance(eqx.combine(diff, static).op, lx.MatrixLinearOperator)

    def batched_param_vjp(basis, cots):
        """`∂_θ Σ_b cots_bᵀ A(θ) basis_b`: the parameter cotangent of one substep."""
        if dense:
            # One outer-product contraction (a GEMM) for a dense matrix.
            _, vjp = jax.vjp(lambda d: jax.vmap(mv_of(d))(basis), diff)
            return vjp(cots)[0]

        # A matrix-free operator: one vjp per basis vector, accumulated (XLA handles
        # the vmapped transpose of stencils poorly).
        def one(g, vc):
            _, vjp = jax.vjp(lambda d: mv_of(d)(vc[0]), diff)
            return jax.tree.map(jnp.add, g, vjp(vc[1])[0]), None

        g, _ = lax.scan(one, jax.tree.map(jnp.zeros_like, diff), (basis, cots))
        return g

    lengths = intervals(t0, ts)
    starts = jnp.concatenate([z0[None], zs[:-1]])

    def substep_backward(i, carry, substarts, taus):
        """Backward over forward substep `i` (of the current interval)."""
        lam, gbar, sig_try, ok = carry
        basis, hess, beta, _ = cfg.basis(mv, substarts[i])
        h_hat = hess[: m + 1, : m + 1]

        # Cotangents of the rows of `basis`, accumulated over the backward pieces of
        # this substep, so that the (costly) vjp of the matvec is taken once.
        def cond(c):
            r_end, _, _, _, _ = c
            return r_end > 0

        def body(c):
            r_end, lam, cots, sig_try, ok = c
            wbasis, ghess, gamma, f, sig, sig_next, _, ok_step = adaptive_expm_step(
                mv_t, lam, r_end, sig_try, cfg
            )
            g_hat = ghess[: m + 1, : m + 1]
            e1 = jnp.zeros((m + 1,), lam.dtype).at[0].set(1.0)
            # The forward coefficients at the start of this piece (e₁ unless the
            # forward substep was split on the way back).
            offset = r_end - sig
            u = lax.cond(offset > 0, lambda: expm(offset * h_hat)[:, 0], lambda: e1)
            # Xᵀ = ∫₀^σ exp((σ-s)Ĥ) u e₁ᵀ exp(s Ĝᵀ) ds, the top-right block (built
            # transposed so the (m+1)×n product below needs no transpose).
            block = jnp.block(
                [[h_hat, jnp.outer(u, e1)], [jnp.zeros_like(h_hat), g_hat.T]]
            )
            x_t = expm(sig * block)[: m + 1, m + 1 :]
            cots = cots + (gamma * beta) * (x_t @ wbasis)
            lam = gamma * (wbasis.T @ f[: m + 1, 0])
            r_end = jnp.where(sig >= r_end, 0.0, r_end - sig)
            return r_end, lam, cots, sig_next, ok & ok_step

        init = (taus[i], lam, jnp.zeros_like(basis), sig_try, ok)
        _, lam, cots, sig_try, ok = lax.while_loop(cond, body, init)
        gbar = jax.tree.map(jnp.add, gbar, batched_param_vjp(basis, cots))
        return lam, gbar, sig_try, ok

    def interval(carry, k):
        lam, gbar, sig_try, ok = carry
        lam = lam + zs_bar[k]
        # Re-run the forward substeps of this interval, recording their starts.
        _, _, count, _, _, (substarts, taus) = forward_interval(
            mv, starts[k], lengths[k], tau_first[k], cfg, record=True
        )

        def cond(c):
            i, _ = c
            return i >= 0

        def body(c):
            i, inner = c
            return i - 1, substep_backward(i, inner, substarts, taus)

        _, (lam, gbar, sig_try, ok) = lax.while_loop(
            cond, body, (count - 1, (lam, gbar, sig_try, ok))
        )
        return (lam, gbar, sig_try, ok), None

    gbar0 = jax.tree.map(jnp.zeros_like, diff)
    init = (jnp.zeros_like(z0), gbar0, jnp.array(jnp.inf, ts.dtype), jnp.array(True))
    (lam, gbar, _, ok), _ = lax.scan(
        interval, init, jnp.arange(ts.shape[0] - 1, -1, -1)
    )
    return gbar, lam, ok
