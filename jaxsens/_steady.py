"""Steady states `f(y*, θ) = 0`, differentiated by the implicit function theorem.

The forward pass finds `y*` however it likes (`_steady_methods.py`: Newton's
method, or integrating the ODE until it stops moving). The backward pass
(`_steady_adjoint.py`) never looks at those iterations: one linear solve with
`f_yᵀ` at `y*` and one vjp of `f`, and `∂L/∂y0 = 0` (an isolated, attracting steady
state does not depend on where the search started). Its cost does not depend on how
long the system took to settle.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, ArrayLike, Int, PyTree

from ._sensitivity.base import all_finite, as_arrays
from ._solution import RESULTS, checked
from ._solve import _as_state, _float_dtype
from ._steady_adjoint import SteadyStateAdjoint
from ._steady_methods import AbstractSteadyStateMethod, Integrate, tree_dtype


class SteadyState(eqx.Module):
    """The result of [`jaxsens.steady_state`][].

    **Attributes:**

    - `y`: the steady state `y*`, structured like `y0`; differentiable with respect
        to the field's parameters and `args` by the implicit function theorem.
    - `result`: a [`jaxsens.RESULTS`][] member (`successful` unless
        `throw=False` and the search failed).
    - `stats`: `num_steps` (integration steps, `Integrate` only),
        `num_newton_steps`, and `polished` (`Integrate` with `polish`: whether the
        Newton polish converged; if not, `y` is the integrated state).

    **Example:**

    ```python
    import jax.numpy as jnp, jaxsens
    ss = jaxsens.steady_state(lambda t, y, k: k - y, jnp.zeros(2), 2.0)
    ss.y, ss.stats["num_steps"], ss.result == jaxsens.RESULTS.successful
    ```
    """

    y: PyTree[Array]
    result: RESULTS
    stats: dict[str, Int[Array, ""]]


def steady_state(
    field,
    y0: PyTree[ArrayLike],
    args: PyTree = None,
    *,
    method: AbstractSteadyStateMethod = Integrate(),  # noqa: B008 (immutable)
    sensitivity: SteadyStateAdjoint = SteadyStateAdjoint(),  # noqa: B008
    throw: bool = True,
) -> SteadyState:
    """The steady state `y*` of `dy/dt = field(t, y, args)`: `field(0, y*, args) = 0`,
    differentiable by the implicit function theorem.

    `jax.grad` through `steady_state` costs one linear solve with `f_yᵀ` at `y*`
    (see [`jaxsens.SteadyStateAdjoint`][]) and never differentiates the search, so
    it is cheaper and uses less memory than differentiating a long
    `jaxsens.solve` "to t = 1000" — and it is the exact derivative of the
    `t → ∞` limit. The field should be autonomous: it is evaluated at `t = 0`.

    **Arguments:**

    - `field`: `field(t, y, args) -> dy/dt`, as for [`jaxsens.solve`][]: a plain
        function, a closure over arrays, or an `eqx.Module`. Gradients flow to the
        inexact arrays it holds or closes over and to `args`.
    - `y0`: the starting state (integration start or Newton's initial guess). The
        gradient with respect to `y0` is zero: an isolated steady state does not
        depend on where the search started.
    - `args`: passed to `field`; differentiable.
    - `method`: [`jaxsens.Integrate`][] (default: follow the dynamics to the steady
        state they reach from `y0`, then polish with Newton) or
        [`jaxsens.Newton`][] (faster from a good guess; finds any root of `f`,
        stable or not).
    - `sensitivity`: a [`jaxsens.SteadyStateAdjoint`][].
    - `throw`: raise if no steady state was found (or Newton met a singular `f_y`).
        With `throw=False`, check `.result` instead. A singular `f_y` at `y*` is
        always raised when differentiating: there is no derivative to return.

    **Returns:** a [`jaxsens.SteadyState`][] with `y`, `result` and `stats`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp, jaxsens

    def field(t, y, k):           # production k0, degradation k1: y* = k0 / k1
        return k[0] - k[1] * y

    def loss(k):
        return jnp.sum(jaxsens.steady_state(field, jnp.zeros(2), k).y)

    jax.jit(jax.grad(loss))(jnp.array([2.0, 0.5]))   # [2/0.5, -2*2/0.5**2] = [4., -16.]
    ```
    """
    if not isinstance(method, AbstractSteadyStateMethod):
        raise TypeError(
            "`method` must be `jaxsens.Integrate()` or `jaxsens.Newton()`, got "
            f"{method!r}."
        )
    if not isinstance(sensitivity, SteadyStateAdjoint):
        raise TypeError(
            "`steady_state(sensitivity=...)` must be a `jaxsens.SteadyStateAdjoint()` "
            f"(the implicit function theorem), got {sensitivity!r}. To differentiate "
            "through a long integration instead, use `jaxsens.solve` with a large "
            "final time."
        )
    if not callable(field):
        raise TypeError(
            f"`field` must be callable as `field(t, y, args)`, got {field!r}."
        )
    y0 = _as_state(y0, _float_dtype(y0))
    t0 = jnp.zeros((), tree_dtype(y0))
    out = jax.eval_shape(field, t0, y0, args)
    if jtu.tree_structure(out) != jtu.tree_structure(y0) or any(
        jnp.shape(a) != jnp.shape(b)
        for a, b in zip(jtu.tree_leaves(out), jtu.tree_leaves(y0), strict=True)
    ):
        raise ValueError(
            "`field(t, y, args)` must return dy/dt shaped like `y0` (a steady state "
            f"solves f(y) = 0 with as many equations as unknowns); `y0` is "
            f"{jax.eval_shape(lambda: y0)} but the field returned {out}."
        )
    y0 = eqx.error_if(
        y0,
        jnp.logical_not(all_finite(y0)),
        "`steady_state`: `y0` contains NaN or inf. Check how the initial state was "
        "built.",
    )
    # Closure conversion makes arrays the field closes over (tracers included)
    # explicit leaves, so the custom_vjp can return their cotangents.
    field = eqx.filter_closure_convert(field, t0, y0, args)
    diff, static = eqx.partition((field, args), eqx.is_inexact_array)
    y, result, stats = _steady((diff, y0), static, method, sensitivity, throw)
    return SteadyState(y=y, result=result, stats=stats)


class _Field(eqx.Module):
    """The closure-converted field, callable with a Python-float `t` (as custom
    methods will) and `args` of the traced structure."""

    field: eqx.Module
    args: PyTree

    def __call__(self, t, y, args):
        del args  # always the traced `args`: what the field was converted with
        return self.field(jnp.asarray(t, tree_dtype(y)), y, self.args)


def _find(diff, static, y0, method, throw):
    diff = as_arrays(diff)
    field, args = eqx.combine(diff, static)
    y, result, stats = method.find(_Field(field, args), y0, args)
    if throw:
        y = checked(y, result, True)
    return y, result, stats


@eqx.filter_custom_vjp
def _steady(vjp_arg, static, method, sensitivity, throw):
    diff, y0 = vjp_arg
    return _find(diff, static, y0, method, throw)


@_steady.def_fwd
def _steady_fwd(perturbed, vjp_arg, static, method, sensitivity, throw):
    del perturbed
    diff, y0 = vjp_arg
    out = _find(diff, static, y0, method, throw)
    return out, out[0]


@_steady.def_bwd
def _steady_bwd(y_star, grad_obj, perturbed, vjp_arg, static, method, sensitivity,
                throw):
    del perturbed, method, throw
    diff, y0 = vjp_arg
    diff = as_arrays(diff)
    y_bar = jtu.tree_map(
        lambda c, y: jnp.zeros_like(y) if c is None else c,
        grad_obj[0],
        y_star,
        is_leaf=lambda c: c is None,
    )
    t = jnp.zeros((), tree_dtype(y_star))

    def f(y, d):
        field, args = eqx.combine(d, static)
        return field(t, y, args)

    lam = sensitivity.solve_transposed(lambda y: f(y, diff), y_star, y_bar)
    _, vjp_diff = jax.vjp(lambda d: f(y_star, d), diff)
    (diff_bar,) = vjp_diff(jtu.tree_map(jnp.negative, lam))
    return diff_bar, jtu.tree_map(jnp.zeros_like, y0)
