"""Collocation (two-stage) fitting: smooth the data, fit the field to the smoothed
derivatives without solving the ODE, then refine by shooting.

Stage 1 estimates `û(t_i)` and `û'(t_i)` from noisy samples with a local
polynomial kernel smoother; stage 2 minimises `mean_i ‖û'(t_i) − f(t_i, û(t_i), θ)‖²`
(no ODE solve: a few milliseconds per step); stage 3 refines θ by (multiple)
shooting from there.

Caveat: collocation only asks that `f` match the local slope of the
data. It cannot see how errors accumulate when the ODE is integrated, so a θ
with a small collocation loss can still give a trajectory that drifts away from
the data (and its estimates are biased wherever the smoother is: at the ends of
the record, at sharp peaks, with sparse samples). Use it to initialise, never as
the final fit: always refine by shooting.

Cites: Varah 1982 (spline-based two-stage estimation); Ramsay, Hooker, Campbell &
Cao 2007 (profiled collocation); Liang & Wu 2008 (local polynomial derivative
estimates for ODE parameters); Roesch et al. 2021 (collocation for neural ODEs,
DiffEqFlux's `collocate_data`).
"""

import functools as ft

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, ArrayLike, Float, PyTree

from . import _fit
from ._sensitivity._options import DEFAULT_TOL, MAX_STEPS
from ._sensitivity.auto import Auto
from ._sensitivity.base import AbstractSensitivity
from ._shooting import ShootingModel, init_model, multiple_shooting_loss


class Smoothing(eqx.Module):
    """Smoothed states and derivatives at the sample times, from
    [`jaxsens.collocation.smooth`][].

    **Attributes:**

    - `ts`: the sample times `(T,)`.
    - `u`: smoothed states `û(t_i)`, shape `(T, ...)` like the data.
    - `du`: estimated derivatives `û'(t_i)`, same shape.
    - `bandwidth`: the kernel bandwidth used (chosen by cross-validation unless
        given).

    **Example:**

    ```python
    import jax.numpy as jnp, jaxsens
    ts = jnp.linspace(0.0, 1.0, 11)
    sm = jaxsens.collocation.smooth(ts, (ts**2)[:, None])
    sm.du[:, 0]     # 2 t, exactly: local quadratics reproduce quadratics
    ```
    """

    ts: Float[Array, " times"]
    u: Float[Array, "times ..."]
    du: Float[Array, "times ..."]
    bandwidth: Float[Array, ""]


def _local_fits(ts, y, h, degree):
    """Local polynomial fits at every sample time, bandwidth `h`.

    Returns `(coeffs (T, degree+1, m), leverage (T,))`: `coeffs[i, k]` is the
    k-th Taylor coefficient at `t_i` in units of `h` (value, h·slope, ...), and
    `leverage[i]` the weight of sample `i` in its own fit (for leave-one-out).
    All `T` small normal-equation systems are solved in one batched call.
    """
    s = (ts[None, :] - ts[:, None]) / h               # (T, T): fit at i, sample j
    w = jnp.exp(-0.5 * s**2)                          # Gaussian kernel, K(0) = 1
    x = s[..., None] ** jnp.arange(degree + 1)        # (T, T, p+1)
    wx = w[..., None] * x
    gram = jnp.einsum("ijk,ijl->ikl", wx, x)          # (T, p+1, p+1), SPD
    rhs = jnp.einsum("ijk,jm->ikm", wx, y)            # (T, p+1, m)
    e0 = jnp.zeros((ts.shape[0], degree + 1, 1), y.dtype).at[:, 0, 0].set(1)
    sol = jnp.linalg.solve(gram, jnp.concatenate([rhs, e0], axis=2))
    return sol[:, :, :-1], sol[:, 0, -1]              # coeffs, [G⁻¹]₀₀


def _candidate_bandwidths(ts, n=24):
    span = ts[-1] - ts[0]
    gap = jnp.max(jnp.diff(ts))
    # Below ~gap/2 a window holds one sample and the fits become singular.
    low = 0.6 * gap
    high = jnp.maximum(span / 2, 2 * low)
    return jnp.exp(jnp.linspace(jnp.log(low), jnp.log(high), n))


def smooth(
    ts: Float[ArrayLike, " times"],
    data: Float[ArrayLike, "times ..."],
    *,
    bandwidth: float | None = None,
    degree: int = 2,
) -> Smoothing:
    """Estimate `u(t_i)` and `u'(t_i)` from noisy samples by local polynomial
    regression with a Gaussian kernel (jittable, pure JAX).

    At each sample time `t_i`, a polynomial of degree `degree` in `t − t_i` is
    fitted by weighted least squares (weights `exp(−(t_j − t_i)²/(2h²))`); its
    constant term is `û(t_i)` and its linear term `û'(t_i)`. Local polynomials
    keep their bias low at the ends of the record, where a plain kernel average
    does not. With `bandwidth=None`, `h` is chosen from 24 candidates by
    leave-one-out cross-validation of `û` (exact for this linear smoother).

    **Arguments:**

    - `ts`: sample times `(T,)`, strictly increasing, `T ≥ degree + 3`.
    - `data`: samples `(T, ...)`, finite.
    - `bandwidth`: kernel bandwidth `h` in time units (default: cross-validated).
        Derivatives are noisier than values: if `du` looks rough, pass a larger
        `h` than the one chosen.
    - `degree`: local polynomial degree, `1` (local linear) or more; `2` (default)
        balances bias and variance of the derivative.

    **Returns:** a [`jaxsens.collocation.Smoothing`][] with `ts`, `u`, `du` and
    `bandwidth`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp, jaxsens
    ts = jnp.linspace(0.0, 6.0, 61)
    data = jnp.sin(ts)[:, None] + 0.05 * jax.random.normal(jax.random.key(0), (61, 1))
    sm = jaxsens.collocation.smooth(ts, data)
    float(jnp.max(jnp.abs(sm.du[5:-5, 0] - jnp.cos(ts[5:-5]))))   # ≈ 0.14
    ```

    Cites: Fan & Gijbels 1996 (local polynomial modelling); Liang & Wu 2008.
    """
    if not isinstance(degree, int) or isinstance(degree, bool) or degree < 1:
        raise ValueError(f"`degree` must be an int >= 1, got {degree!r}.")
    ts, data = _check_samples(ts, data, degree)
    if bandwidth is None:
        h = jnp.zeros((), ts.dtype)
    else:
        if isinstance(bandwidth, (int, float)) and not bandwidth > 0:
            raise ValueError(f"`bandwidth` must be positive, got {bandwidth!r}.")
        h = jnp.asarray(bandwidth, ts.dtype)
    u, du, h = _smooth(ts, data, h, degree, bandwidth is None)
    return Smoothing(ts=ts, u=u, du=du, bandwidth=h)


@ft.partial(jax.jit, static_argnums=(3, 4))
def _smooth(ts, data, h, degree, cross_validate):
    shape = data.shape
    y = data.reshape(shape[0], -1)
    if cross_validate:
        candidates = _candidate_bandwidths(ts)

        def cv(h):
            coeffs, lev = _local_fits(ts, y, h, degree)
            resid = (y - coeffs[:, 0, :]) / (1 - lev)[:, None]
            return jnp.mean(resid**2)

        scores = jax.lax.map(cv, candidates)
        scores = jnp.where(jnp.isfinite(scores), scores, jnp.inf)
        h = candidates[jnp.argmin(scores)]
    coeffs, _ = _local_fits(ts, y, h, degree)
    coeffs = eqx.error_if(
        coeffs,
        ~jnp.all(jnp.isfinite(coeffs)),
        "`collocation.smooth`: the local fits are singular: `bandwidth` is too small "
        "for the sample spacing (each window needs about `degree + 1` samples). Pass "
        "a larger `bandwidth`, or `bandwidth=None` to choose it by cross-validation.",
    )
    u = coeffs[:, 0, :].reshape(shape)
    du = (coeffs[:, 1, :] / h).reshape(shape)
    return u, du, h


def collocation_loss(
    field, smoothing: Smoothing, args: PyTree = None
) -> Float[Array, ""]:
    """`mean_i ‖û'(t_i) − field(t_i, û(t_i), args)‖²` (averaged over state
    components too): how well the field matches the smoothed slopes. No ODE solve.

    **Arguments:**

    - `field`: `field(t, y, args)`, a function or `eqx.Module`.
    - `smoothing`: from [`jaxsens.collocation.smooth`][].
    - `args`: passed to `field`.

    **Returns:** the scalar loss; differentiate it with respect to `field` and/or
    `args`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp, jaxsens
    ts = jnp.linspace(0.0, 3.0, 31)
    sm = jaxsens.collocation.smooth(ts, jnp.exp(-2.0 * ts)[:, None])
    field = lambda t, y, k: -k * y
    jax.grad(lambda k: jaxsens.collocation.collocation_loss(field, sm, k))(1.0)  # < 0
    ```
    """
    if not isinstance(smoothing, Smoothing):
        raise TypeError(
            "`smoothing` must come from `jaxsens.collocation.smooth(ts, data)`, got "
            f"{type(smoothing).__name__}."
        )
    f = jax.vmap(field, in_axes=(0, 0, None))(smoothing.ts, smoothing.u, args)
    return jnp.mean((smoothing.du - f) ** 2)


class CollocationFit(eqx.Module):
    """The result of [`jaxsens.collocation.fit`][].

    **Attributes:** `field` and `args` (fitted), `smoothing` (the stage-1
    estimate), `losses` (the collocation loss before each optimiser step).

    **Example:**

    ```python
    import jax.numpy as jnp, jaxsens
    ts = jnp.linspace(0.0, 3.0, 31)
    res = jaxsens.collocation.fit(lambda t, y, k: -k * y, ts,
                                  jnp.exp(-ts)[:, None], jnp.array(0.5), steps=50)
    res.args, res.losses[-1] < res.losses[0]
    ```
    """

    field: object
    args: PyTree
    smoothing: Smoothing
    losses: Float[Array, " steps"]


def fit(
    field,
    ts: Float[ArrayLike, " times"],
    data: Float[ArrayLike, "times ..."],
    args: PyTree = None,
    *,
    optimizer: optax.GradientTransformation | None = None,
    steps: int = 1000,
    bandwidth: float | None = None,
    degree: int = 2,
) -> CollocationFit:
    """Fit the field's parameters and `args` by collocation (no ODE solve).

    Smooths the data ([`jaxsens.collocation.smooth`][]) and runs `steps` optax
    updates on [`jaxsens.collocation.collocation_loss`][], all in one jitted
    `lax.scan`. Every inexact array of `field` and `args` is trained.

    **Arguments:**

    - `field`, `args`: the model and its initial parameters.
    - `ts`, `data`: samples `(T,)` and `(T, ...)`.
    - `optimizer`: an optax optimiser (default `optax.adam(1e-2)`).
    - `steps`: number of updates.
    - `bandwidth`, `degree`: passed to `smooth`.

    **Returns:** a [`jaxsens.collocation.CollocationFit`][].

    **Example:**

    ```python
    import jax.numpy as jnp, optax, jaxsens
    ts = jnp.linspace(0.0, 3.0, 31)
    data = jnp.exp(-2.0 * ts)[:, None]
    res = jaxsens.collocation.fit(lambda t, y, k: -k * y, ts, data, jnp.array(1.0),
                                  steps=300, optimizer=optax.adam(0.05))
    res.args   # ≈ 2
    ```

    Caveat: see the module docstring — refine by shooting
    ([`jaxsens.collocation.two_stage_fit`][]).
    """
    _check_steps(steps)
    optimizer = optax.adam(1e-2) if optimizer is None else optimizer
    smoothing = smooth(ts, data, bandwidth=bandwidth, degree=degree)
    (field, args), losses = _train(
        lambda p: collocation_loss(p[0], smoothing, p[1]), (field, args), optimizer,
        steps,
    )
    return CollocationFit(field=field, args=args, smoothing=smoothing, losses=losses)


class TwoStageFit(eqx.Module):
    """The result of [`jaxsens.collocation.two_stage_fit`][].

    **Attributes:**

    - `model`: the refined [`jaxsens.shooting.ShootingModel`][] (its `field`,
        `args` and segment `starts`).
    - `collocation`: the stage-2 [`jaxsens.collocation.CollocationFit`][].
    - `losses`: the shooting loss before each refinement step.

    **Example:** see [`jaxsens.collocation.two_stage_fit`][]; `res.model.args` are
    the refined parameters, `res.collocation.args` the stage-2 estimate.
    """

    model: ShootingModel
    collocation: CollocationFit
    losses: Float[Array, " steps"]


def two_stage_fit(
    field,
    ts: Float[ArrayLike, " times"],
    data: Float[ArrayLike, "times ..."],
    args: PyTree = None,
    *,
    n_segments: int = 1,
    continuity_weight: float = 1.0,
    collocation_steps: int = 1000,
    shooting_steps: int = 200,
    collocation_optimizer: optax.GradientTransformation | None = None,
    shooting_optimizer: optax.GradientTransformation | None = None,
    bandwidth: float | None = None,
    degree: int = 2,
    sensitivity: AbstractSensitivity = Auto(),  # noqa: B008 (immutable Module)
    solver=None,
    rtol: float = DEFAULT_TOL,
    atol: float = DEFAULT_TOL,
    max_steps: int = MAX_STEPS,
) -> TwoStageFit:
    """Collocation, then shooting: the two-stage method.

    1. [`jaxsens.collocation.fit`][]: θ from the smoothed slopes (cheap, no ODE
       solve, nearly convex for models linear in θ).
    2. Shooting from there: [`jaxsens.shooting.multiple_shooting_loss`][] with
       `n_segments` segments (`1`: single shooting), segment start states
       initialised from the *smoothed* data `û`, optimised by optax.

    Collocation puts θ in the basin of the shooting loss's global minimum, which
    shooting from a poor guess often misses on long, oscillatory records; the
    shooting stage then removes collocation's bias (which it cannot see: errors
    accumulate along the trajectory, see the module docstring).

    **Arguments:**

    - `field`, `args`, `ts`, `data`: as [`jaxsens.collocation.fit`][].
    - `n_segments`, `continuity_weight`: the shooting loss's.
    - `collocation_steps`, `shooting_steps`: optax steps of each stage.
    - `collocation_optimizer`, `shooting_optimizer`: optax optimisers (default
        `optax.adam(1e-2)` each).
    - `bandwidth`, `degree`: the smoother's.
    - `sensitivity`, `solver`, `rtol`, `atol`, `max_steps`: for the shooting
        stage's [`jaxsens.solve`][].

    **Returns:** a [`jaxsens.collocation.TwoStageFit`][].

    **Example:**

    ```python
    import jax.numpy as jnp, optax, jaxsens
    ts = jnp.linspace(0.0, 3.0, 31)
    data = jnp.exp(-2.0 * ts)[:, None]
    res = jaxsens.collocation.two_stage_fit(
        lambda t, y, k: -k * y, ts, data, jnp.array(1.0), collocation_steps=300,
        shooting_steps=20, collocation_optimizer=optax.adam(0.05),
        sensitivity=jaxsens.Forward())
    res.model.args   # ≈ 2
    ```
    """
    _check_steps(shooting_steps, "shooting_steps")
    stage1 = fit(field, ts, data, args, optimizer=collocation_optimizer,
                 steps=collocation_steps, bandwidth=bandwidth, degree=degree)
    ts = stage1.smoothing.ts
    u = stage1.smoothing.u
    model = init_model(stage1.field, ts, u, n_segments, args=stage1.args)
    data = jnp.asarray(data, u.dtype)
    optimizer = optax.adam(1e-2) if shooting_optimizer is None else shooting_optimizer

    def loss(m):
        return multiple_shooting_loss(
            m, ts, data, n_segments, continuity_weight, sensitivity=sensitivity,
            solver=solver, rtol=rtol, atol=atol, max_steps=max_steps,
        )

    model, losses = _train(loss, model, optimizer, shooting_steps)
    return TwoStageFit(model=model, collocation=stage1, losses=losses)


def _train(loss, model, optimizer, steps):
    """`jaxsens.fit` of a loss without data: `(trained model, losses)`."""
    result = _fit.fit(model, lambda m, _: loss(m), None, optimizer, steps,
                      progress=False)
    return result.model, result.losses


def _check_steps(steps, name="steps"):
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"`{name}` must be a positive int, got {steps!r}.")


def _check_samples(ts, data, degree):
    ts = jnp.asarray(ts)
    data = jnp.asarray(data)
    if ts.ndim != 1:
        raise ValueError(f"`ts` must be a 1-D array of sample times, got shape "
                         f"{ts.shape}.")
    if data.ndim < 1 or data.shape[0] != ts.shape[0]:
        raise ValueError(
            f"`data` must have one sample per time, shape `(len(ts), ...)`; got "
            f"{data.shape} for {ts.shape[0]} times."
        )
    if ts.shape[0] < degree + 3:
        raise ValueError(
            f"Too few samples for the smoother: got {ts.shape[0]}, but a local "
            f"polynomial of degree {degree} with a cross-validated bandwidth needs at "
            f"least `degree + 3 = {degree + 3}`. Collocation needs densely sampled "
            "data; with few samples, fit by shooting instead."
        )
    dtype = jnp.result_type(ts.dtype, data.dtype, float)
    ts = ts.astype(dtype)
    data = data.astype(dtype)
    ts = eqx.error_if(
        ts,
        jnp.any(ts[1:] <= ts[:-1]) | ~jnp.all(jnp.isfinite(ts)),
        "`ts` must be finite and strictly increasing.",
    )
    data = eqx.error_if(
        data,
        ~jnp.all(jnp.isfinite(data)),
        "`data` contains NaN or inf. Remove or interpolate the missing samples "
        "before smoothing.",
    )
    return ts, data

