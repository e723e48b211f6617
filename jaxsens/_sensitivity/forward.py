import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jax.flatten_util import ravel_pytree

from .base import (
    AbstractSensitivity,
    Problem,
    as_problem,
    checked,
    diffrax_flags,
    diffrax_solve,
    result_from_flags,
    stats_of,
)


class Forward(AbstractSensitivity):
    """Forward-mode sensitivities: all `∂y(t_k)/∂(θ, y0)` by batched JVPs.

    The solve carries one tangent per input direction (the `p + n` trainable
    parameters and initial states, vmapped through diffrax's forward-mode solve),
    giving the full sensitivity matrix `S_k = ∂y(t_k)/∂(θ, y0)`. A gradient is then
    `Σ_k S_kᵀ ȳ_k` and a JVP `S v`, so `jax.grad`, `jax.jvp`, `jax.jacfwd`,
    `jax.jacrev` and `jax.hessian` all work. Cost grows with `n + p` (one tangent
    solve each) and memory with `len(ts) · n · (n + p)`: the method of choice when
    `n + p` is below about 100, and hopeless for 10^4 parameters (seed 000's
    27-second gradient).

    Cites: Dickinson & Gelinas 1976; SciMLSensitivity's `ForwardSensitivity` /
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
        ys, stats, flags = _forward_solve(
            (problem.diff, y0), static=problem.static, ts=ts, options=options
        )
        return ys, stats, result_from_flags(*flags)


def _raw(diff, y0, static, ts, options):
    problem = Problem(diff, static, y0, ts, options)
    sol = diffrax_solve(
        problem.field, y0, ts, problem.args, options, adjoint=dfx.ForwardMode()
    )
    flags = diffrax_flags(sol.result)
    ys = checked(sol.ys, result_from_flags(*flags), options.throw)
    return ys, stats_of(sol), flags


@eqx.filter_custom_jvp
def _forward_solve(inputs, *, static, ts, options):
    diff, y0 = jtu.tree_map(jnp.asarray, inputs)
    return _raw(diff, y0, static, ts, options)


@_forward_solve.def_jvp
def _forward_solve_jvp(primals, tangents, *, static, ts, options):
    (inputs,) = primals
    (t_inputs,) = tangents
    # Outside `jit`, Python-scalar leaves may arrive as array-like wrappers.
    inputs = jtu.tree_map(jnp.asarray, inputs)
    # Only the perturbed leaves get tangent directions: under `grad` w.r.t. the
    # field's weights, `args` (e.g. a control's samples) and `y0` cost nothing.
    is_none = lambda t: t is None  # noqa: E731
    perturbed = jtu.tree_map(lambda t: t is not None, t_inputs, is_leaf=is_none)
    varying, fixed = eqx.partition(inputs, perturbed)
    t_varying = eqx.filter(t_inputs, perturbed, is_leaf=is_none)
    flat, unravel = ravel_pytree(varying)

    def ys_of(x):
        diff, y0 = eqx.combine(unravel(x), fixed)
        out = _raw(diff, y0, static, ts, options)
        return out[0], out

    # The sensitivity matrix `S = ∂ys/∂(perturbed inputs)`: one vmapped tangent
    # per perturbed scalar, carried by the same diffrax solve as the primal (the
    # primal comes back as `aux`, so it is not solved twice). `S` depends on the
    # primal only, so under reverse mode the tangent map below is a plain
    # contraction, which JAX transposes into `Sᵀ ȳ`.
    sens, (ys, stats, flags) = jax.jacfwd(ys_of, has_aux=True)(flat)
    t_flat, _ = ravel_pytree(t_varying)
    t_ys = jtu.tree_map(lambda s: s @ t_flat.astype(s.dtype), sens)
    no_tangent = jtu.tree_map(lambda _: None, (stats, flags))
    return (ys, stats, flags), (t_ys, *no_tangent)
