import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jax.flatten_util import ravel_pytree
from jaxtyping import Array

from .._solution import checked
from ._loop import rms_norm
from .base import (
    AbstractSensitivity,
    Problem,
    as_arrays,
    as_problem,
    diffrax_solve,
    state_norm,
    stats_of,
)


class Forward(AbstractSensitivity):
    """Forward-mode sensitivities: all `∂y(t_k)/∂(θ, y0)` solved with `y`.

    Gives the full sensitivity matrix `S_k = ∂y(t_k)/∂x` for the `P` perturbed
    inputs `x` (the trainable parameters and initial states a transformation
    differentiates). A gradient is then `Σ_k S_kᵀ ȳ_k` and a JVP `S v`, so
    `jax.grad`, `jax.jvp`, `jax.jacfwd`, `jax.jacrev` and `jax.hessian` all work.

    - **Explicit solvers** (`Tsit5`, `Dopri5`, …): the forward sensitivity
      equations `S' = f_y S + f_x` are integrated with `y`, by the same solver on
      the primal's own steps (error control on `y` only, so `y` and its steps
      are exactly the plain solve's). For a Runge–Kutta method this `S` is the
      derivative of the computed solution with its step sizes held fixed.
      `f_y S + f_x` is assembled from `min(n, P)` Jacobian rows (vjps, when
      `n ≤ P`) or columns (jvps) per stage, never from `P` tangents: cost grows
      with `n` when the parameters outnumber the states (a neural ODE with
      `n = 2` and hundreds of parameters costs two vjps per stage, not hundreds
      of tangents).
    - **Implicit solvers** (`Kvaerno5`, …): one tangent per input, vmapped
      through diffrax's solve, Newton iterations included (the sensitivity
      equations would put the `n·P`-sized `S` into every Newton Jacobian). Cost
      grows with `n + P`.

    With `solve(..., dense=True)`, `S` is kept as a dense output too, and the
    derivative of `sol.evaluate(t)` is `S(t)`, interpolated between the steps as
    `y(t)` is (memory: the dense output's, `P` times over).

    Memory grows with `len(ts) · n · P`. The method of choice when `n` (explicit)
    or `n + p` (implicit) is small — `Auto` picks it there — and hopeless for a
    large state with many parameters (`bench/RESULTS.md`: seconds per gradient at
    `n = 100`, `p = 10⁴`, where the reverse methods take milliseconds).

    Cites: Dickinson & Gelinas 1976; Bock 1981 (internal numerical
    differentiation); SciMLSensitivity's `ForwardSensitivity` /
    `ForwardDiffSensitivity`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp, jaxsens
    ts = jnp.linspace(0.0, 1.0, 5)
    loss = lambda k: jnp.sum(jaxsens.solve(lambda t, y, k: -k * y, jnp.array([1.0]),
                             ts, k, sensitivity=jaxsens.Forward()).ys)
    jax.grad(loss)(2.0), jax.jvp(loss, (2.0,), (1.0,))
    ```
    """

    def solve(self, field, y0, ts, args, options):
        problem = as_problem(field, y0, ts, args, options)
        return _forward_solve(
            (problem.diff, y0, ts, options.t0), static=problem.static,
            options=options.at(None),
        )

    def solve_dense(self, field, y0, ts, args, options):
        """`(ys, stats, result, interpolation)`: the solve with diffrax's dense
        output (`solve(..., dense=True)`), both differentiated by this method.

        The tangent of the dense output's coefficients is the dense output of `S`
        (the sensitivity equations are solved with `dense` output too), so the
        tangent of `sol.evaluate(t)` is `S(t) v`, `S` interpolated between the
        steps as `y` is: the derivative of the interpolated solution with its
        steps held fixed. The dense `S` takes `P` times the dense `y`'s memory,
        sized by `max_steps`.
        """
        problem = as_problem(field, y0, ts, args, options)
        return _forward_solve(
            (problem.diff, y0, ts, options.t0), static=problem.static,
            options=options.at(None), dense=True,
        )


def _raw(diff, y0, ts, t0, static, options, dense=False):
    """`(ys, stats, result)`, and the dense output with `dense`."""
    problem = Problem(diff, static, y0, ts, options.at(t0))
    sol = diffrax_solve(
        problem.field, y0, ts, problem.args, problem.options, adjoint=dfx.ForwardMode(),
        dense=dense,
    )
    ys, interp = sol.ys, sol.interpolation
    if options.throw:
        # On the dense output too: `evaluate` may be all a loss reads.
        ys, interp = checked((ys, interp), sol.result, True)
    if dense:
        return ys, stats_of(sol), sol.result, interp
    return ys, stats_of(sol), sol.result


@eqx.filter_custom_jvp
def _forward_solve(inputs, *, static, options, dense=False):
    diff, y0, ts, t0 = as_arrays(inputs)
    return _raw(diff, y0, ts, t0, static, options, dense)


@_forward_solve.def_jvp
def _forward_solve_jvp(primals, tangents, *, static, options, dense=False):
    (inputs,) = primals
    (t_inputs,) = tangents
    # Outside `jit`, Python-scalar leaves may arrive as array-like wrappers.
    diff, y0, ts, t0 = as_arrays(inputs)
    t_diff, t_y0, t_ts, t_t0 = t_inputs
    problem = Problem(diff, static, y0, ts, options.at(t0))
    # Moving the start time by δ moves every y(t_k) as moving y0 by −f(t0, y0) δ.
    if t_t0 is not None:
        f0 = problem.f(t0, y0)
        if t_y0 is None:
            t_y0 = jtu.tree_map(jnp.zeros_like, y0)
        t_y0 = jtu.tree_map(lambda t, f: t - (f * t_t0).astype(t.dtype), t_y0, f0)
    # Only the perturbed leaves get tangent directions: under `grad` w.r.t. the
    # field's weights, `args` (e.g. a control's samples) and `y0` cost nothing.
    is_none = lambda t: t is None  # noqa: E731
    t_y0_given = t_y0
    core, t_core = (diff, y0), (t_diff, t_y0)
    perturbed = jtu.tree_map(lambda t: t is not None, t_core, is_leaf=is_none)
    varying, fixed = eqx.partition(core, perturbed)
    t_varying = eqx.filter(t_core, perturbed, is_leaf=is_none)
    flat, unravel = ravel_pytree(varying)
    opts = options.at(t0)

    def outputs_of(x):
        diff, y0 = eqx.combine(unravel(x), fixed)
        out = _raw(diff, y0, ts, t0, static, options, dense)
        return (out[0], out[3].infos if dense else None), out

    # The sensitivity matrix `S = ∂ys/∂(perturbed inputs)` (and with `dense`, the
    # same of the dense output's coefficients), solved together with the primal
    # (which comes back with it, so it is not solved twice). Explicit solvers: the
    # sensitivity equations, below. Implicit ones: one vmapped tangent per
    # perturbed scalar through diffrax's solve, Newton iterations included (the
    # sensitivity equations would put the n·P-sized `S` into every Newton
    # Jacobian). `S` depends on the primal only, so under reverse mode the tangent
    # map below is a plain contraction, which JAX transposes into `Sᵀ ȳ`.
    if flat.shape[0] > 0 and not isinstance(
        options.solver, dfx.AbstractImplicitSolver
    ):
        sens, out = _sensitivity_solve(flat, unravel, fixed, static, ts, opts, dense)
    else:
        sens, out = jax.jacfwd(outputs_of, has_aux=True)(flat)
    ys, stats, result = out[:3]
    # The check sits on `S`, which every derivative is computed from (the primal
    # `ys` is dropped by XLA when only a gradient is used).
    sens = checked(sens, result, options.throw)
    t_flat, _ = ravel_pytree(t_varying)
    t_ys, t_infos = jtu.tree_map(lambda s: s @ t_flat.astype(s.dtype), sens)
    # A save time moved by δ moves its output by f(t_k, y_k) δ.
    if t_ts is not None:
        fs = jax.vmap(problem.f)(ts, ys)
        t_ys = jtu.tree_map(
            lambda t, f: t + f * t_ts.reshape((-1,) + (1,) * (f.ndim - 1)).astype(
                f.dtype), t_ys, fs)
    no_tangent = jtu.tree_map(lambda _: None, (stats, result))
    if not dense:
        return (ys, stats, result), (t_ys, *no_tangent)
    # The dense output's step times are not differentiated (nor are the steps of
    # `S`); its coefficients move by `S`'s coefficients times the tangent, and its
    # trivial-span value (`t0 == ts[-1]`) is `y0`.
    interp = out[3]
    t_interp = eqx.tree_at(
        lambda i: (i.infos, i.y0_if_trivial), jtu.tree_map(lambda _: None, interp),
        (t_infos, t_y0_given), is_leaf=is_none)
    return (ys, stats, result, interp), (t_ys, *no_tangent, t_interp)


# Up to this many Jacobian rows (or columns) per stage are formed one product at a
# time (faster: the loop stays eligible for whole-loop compilation); above it, by
# one vmapped product (as fast, and compiled sooner). Figures: bench/RESULTS.md,
# "Design measurements".
UNROLL_MAX = 8


class _Joint(eqx.Module):
    """The state of the sensitivity equations: `y` (flat) and `S = ∂y/∂x`."""

    y: Array
    s: Array


def _unravel_rows(unravel_y, s):
    """`s` (`(..., n, P)`: `P` flat tangents of `y`) → a PyTree like `y`, each leaf
    `(..., *leaf_shape, P)`."""
    lead, (n, num) = s.shape[:-2], s.shape[-2:]
    rows = jax.vmap(jax.vmap(unravel_y, in_axes=1, out_axes=-1))(s.reshape(-1, n, num))
    return jtu.tree_map(lambda x: x.reshape(lead + x.shape[1:]), rows)


def _unravel_values(unravel_y, y):
    """`y` (`(..., n)`, flat states) → a PyTree like `y`, each leaf
    `(..., *leaf_shape)`."""
    lead, n = y.shape[:-1], y.shape[-1]
    values = jax.vmap(unravel_y)(y.reshape(-1, n))
    return jtu.tree_map(lambda x: x.reshape(lead + x.shape[1:]), values)


def _split_dense(interp, unravel_y, y0):
    """The dense output of the joint `(y, S)` solve → `(y's dense output, S's
    coefficients)`: the first shaped as a plain solve's of `y0`, the second like
    its coefficients with a trailing `P` axis, zero on the unused (padding) steps,
    so that a reverse-mode contraction over every step stays finite."""
    is_joint = lambda x: isinstance(x, _Joint)  # noqa: E731
    used = jnp.arange(interp.ts.shape[0] - 1) < interp.ts_size - 1

    def y_part(joint):
        return _unravel_values(unravel_y, joint.y)

    def s_part(joint):
        mask = used.reshape((-1,) + (1,) * (joint.s.ndim - 1))
        return _unravel_rows(unravel_y, jnp.where(mask, joint.s, 0))

    for info in jtu.tree_leaves(interp.infos, is_leaf=is_joint):
        if not is_joint(info):
            raise NotImplementedError(
                "`dense=True` with `Forward()`: this solver's dense output holds "
                "coefficients that are not shaped like the state. Use "
                "`sensitivity=jaxsens.Discrete()`.")
    y_interp = eqx.tree_at(
        lambda i: (i.infos, i.y0_if_trivial), interp,
        (jtu.tree_map(y_part, interp.infos, is_leaf=is_joint), y0))
    return y_interp, jtu.tree_map(s_part, interp.infos, is_leaf=is_joint)


def _sensitivity_solve(x, unravel, fixed, static, ts, options, dense=False):
    """`S = ∂ys/∂x` from the forward sensitivity equations `S' = f_y S + f_x`,
    integrated by the primal's own solver on the primal's own steps.

    The state is `(y, S)` with `S` an `n × P` matrix (`P = x.size` perturbed
    scalars); error control sees `y` only, so the steps are exactly the primal
    solve's, and for a Runge–Kutta method the `S` so computed is the derivative of
    the computed solution with those steps held fixed (applying an RK method to
    the linearised equations is linearising the RK method: "internal
    differentiation", Bock 1981). `f_y S + f_x` needs no `P` tangents: with
    `n ≤ P` it is assembled row by row from `n` vector-Jacobian products
    `eᵢᵀ [f_y, f_x]` (one row `eᵢᵀ f_y S + eᵢᵀ f_x` each), else column by column
    from `P` Jacobian-vector products. One product at a time (up to `UNROLL_MAX`),
    every matmul in them is a matrix-vector product, which keeps the loop eligible
    for XLA:CPU's whole-loop compilation (jaxsens/_xla.py); batched, they would be
    matrix-matrix products, which XLA:CPU hands to a library and runs op by op.

    Returns `((S, S_dense), (ys, stats, result[, interpolation]))`: `S` for each
    leaf of `y` with a trailing `P` axis; with `dense`, `S_dense` the same of the
    dense output's coefficients (else `None`) and `interpolation` `y`'s dense
    output.
    """
    _, y0 = eqx.combine(unravel(x), fixed)
    y0_flat, unravel_y = ravel_pytree(y0)
    n, num = y0_flat.shape[0], x.shape[0]
    s_dtype = jnp.result_type(y0_flat, x)
    s0 = jax.jacfwd(
        lambda x: ravel_pytree(eqx.combine(unravel(x), fixed)[1])[0].astype(s_dtype)
    )(x)

    def f_flat(t, y_flat, x):
        diff, _ = eqx.combine(unravel(x), fixed)
        problem = Problem(diff, static, y0, ts, options)
        return ravel_pytree(problem.f(t, unravel_y(y_flat)))[0]

    def rows(t, y_flat, s, x):
        f, vjp = jax.vjp(lambda y, x: f_flat(t, y, x), y_flat, x)
        eye = jnp.eye(n, dtype=f.dtype)

        def row(e):
            jy, jx = vjp(e)
            return jy.astype(s_dtype) @ s + jx.astype(s_dtype)

        if n <= UNROLL_MAX:
            return f, jnp.stack([row(eye[i]) for i in range(n)])
        return f, jax.vmap(row)(eye)

    def columns(t, y_flat, s, x):
        eye = jnp.eye(num, dtype=x.dtype)
        # The field once, then one Jacobian-vector product per column.
        f, jvp = jax.linearize(lambda y, x: f_flat(t, y, x), y_flat, x)

        def column(s_j, e_j):
            return jvp(s_j.astype(y_flat.dtype), e_j)

        if num <= UNROLL_MAX:
            cols = [column(s[:, j], eye[j]) for j in range(num)]
            return f, jnp.stack(cols, axis=1).astype(s_dtype)
        return f, jax.vmap(column, in_axes=(1, 0), out_axes=1)(s, eye).astype(s_dtype)

    products = rows if n <= num else columns

    def augmented(t, state, x):
        return _Joint(*products(t, state.y, state.s, x))

    # Error control on `y` alone, by the primal solve's norm (an RMS over every
    # element of y), so the steps are the primal's.
    y_norm = state_norm(options) or rms_norm
    sol = diffrax_solve(augmented, _Joint(y0_flat, s0), ts, x, options,
                        adjoint=dfx.ForwardMode(), dense=dense,
                        norm=lambda err: y_norm(unravel_y(err.y)))
    ys = jax.vmap(unravel_y)(sol.ys.y)
    # `S` per save time, `n × P` → each leaf of y with a trailing `P` axis.
    sens = _unravel_rows(unravel_y, sol.ys.s)
    out = (ys, stats_of(sol), sol.result)
    if not dense:
        if options.throw:
            ys = checked(ys, sol.result, True)
        return (sens, None), (ys, *out[1:])
    interp, sens_dense = _split_dense(sol.interpolation, unravel_y, y0)
    if options.throw:
        ys, interp = checked((ys, interp), sol.result, True)
    return (sens, sens_dense), (ys, *out[1:], interp)
