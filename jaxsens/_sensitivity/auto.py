import dataclasses

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from .._control import Control
from ._options import SolveOptions
from .base import (
    AbstractSensitivity,
    float_args_as_arrays,
    tree_size,
    wider_than_float32,
)
from .discrete import Discrete
from .forward import Forward
from .gauss import GaussAdjoint


def _without_sample_times(tree):
    """`tree` with every `Control`'s sample times dropped: a grid, not a parameter
    (its values may be trained and are counted)."""
    is_control = lambda x: isinstance(x, Control)  # noqa: E731
    return jtu.tree_map(
        lambda x: eqx.tree_at(lambda c: c.ts, x, None) if is_control(x) else x,
        tree,
        is_leaf=is_control,
    )


def _param_leaves(field, args) -> list:
    """The trainable leaves: inexact arrays of the field and of `args` (Python
    floats in `args` count, as `solve` makes them arrays; a `Control`'s sample
    times do not)."""
    tree = _without_sample_times((field, float_args_as_arrays(args)))
    return jtu.tree_leaves(eqx.filter(tree, eqx.is_inexact_array))


def count_sizes(field, y0, args) -> tuple[int, int]:
    """`(n, p)`: state size and number of trainable scalars (field leaves + args,
    not counting `Control` sample times)."""
    return tree_size(jtu.tree_leaves(y0)), tree_size(_param_leaves(field, args))


def has_tracer(tree) -> bool:
    """Whether any leaf of `tree` is a JAX tracer (it may then be differentiated;
    a concrete array never is)."""
    return any(isinstance(x, jax.core.Tracer) for x in jtu.tree_leaves(tree))


def traced_param_size(field, y0, ts, args) -> int:
    """Number of scalars among the traced trainable leaves of the field (arrays a
    plain function closes over included, found by closure conversion) and of
    `args`. Inside `jit`/`grad`/`vmap` these are the parameters that can be
    differentiated."""
    t = jnp.asarray(ts)[0] if jnp.ndim(ts) else jnp.asarray(ts)
    converted = eqx.filter_closure_convert(field, t, y0, args)
    return tree_size([x for x in _param_leaves(converted, args) if has_tracer(x)])


# Auto's cost model (units: one `Discrete` gradient), fitted to the repository's
# crossover benchmark. Only `AutoDecision.estimates` uses it; the choice itself
# follows the documented thresholds.
_FORWARD_BASE = 0.4  # explicit solver, by Jacobian rows: base + per state + per entry
_FORWARD_PER_STATE = 0.15
_FORWARD_PER_ENTRY = 6e-4
_FORWARD_COLUMNS_BASE = 0.15  # explicit solver, by columns
_FORWARD_PER_COLUMN = 0.1
_FORWARD_BASE_IMPLICIT = 0.3  # implicit solver: one tangent per input
_FORWARD_PER_INPUT_IMPLICIT = 0.009
_GAUSS = 1.5
_GAUSS_IMPLICIT = 0.75
_INTERPOLATING = 2.5


def _estimates(n: int, num: int, implicit: bool) -> dict:
    """Estimated warm gradient time of each method, in `Discrete` gradients, for a
    state of `n` entries and `num` inputs to differentiate."""
    if implicit:
        forward = _FORWARD_BASE_IMPLICIT + _FORWARD_PER_INPUT_IMPLICIT * num
    elif n <= num:
        forward = _FORWARD_BASE + _FORWARD_PER_STATE * n + _FORWARD_PER_ENTRY * n * num
    else:
        forward = _FORWARD_COLUMNS_BASE + _FORWARD_PER_COLUMN * num * (1 + n / 4096)
    return {"Forward": forward, "Discrete": 1.0,
            "GaussAdjoint": _GAUSS_IMPLICIT if implicit else _GAUSS,
            "InterpolatingAdjoint": _INTERPOLATING}


@dataclasses.dataclass(frozen=True)
class AutoDecision:
    """What [`jaxsens.Auto`][] chose for one problem, and why: returned by
    `Auto.decide`, printed as a short report.

    **Attributes:**

    - `method`: the chosen sensitivity method (an instance).
    - `case`: which branch of the rule fired: `"krylov"`, `"expm"`, `"forward"`,
      `"forward_columns"`, `"gauss"` or `"discrete"`.
    - `facts`: `n` (state size), `p` (trainable scalars counted), `n_times`,
      `linear` (a `LinearField`), `matrix_free`, `implicit` (implicit solver),
      `solver`, `float64` (the state is wider than float32); for non-linear
      fields also `y0_counted` (whether `y0` counts as differentiated), `traced`
      (counted inside a trace), `y0_traced`, `y0_override`
      (`Auto(y0_differentiated=...)`, or `None`).
    - `thresholds`: the `Auto` thresholds the rule compared against.
    - `estimates`: method name → estimated warm gradient time relative to the
      chosen method (1.0), from a cost model fitted to the benchmarks. Estimates,
      not measurements: `jaxsens.explain(..., timing=True)` measures.
    - `rule` (property): the rule that fired, in one line.
    - `reasons` (property): the facts behind it, as sentences.

    **Example:**

    ```python
    import jax.numpy as jnp, jaxsens
    d = jaxsens.Auto().decide(lambda t, y, k: -k * y, jnp.ones(3),
                              jnp.linspace(0.0, 1.0, 4), jnp.ones(3))
    d.method, d.case, d.facts["n"], d.facts["p"]   # Forward(), "forward", 3, 3
    print(d)
    ```
    """

    method: AbstractSensitivity
    case: str
    facts: dict
    thresholds: dict
    estimates: dict

    @property
    def _inputs(self) -> tuple[str, int]:
        f = self.facts
        if f["y0_counted"]:
            return "n + p", f["n"] + f["p"]
        return "p", f["p"]

    @property
    def rule(self) -> str:
        f, th = self.facts, self.thresholds
        if self.case == "krylov":
            return "linear field, large or matrix-free: Krylov expm-actions"
        if self.case == "expm":
            return (f"linear field with n = {f['n']} ≤ {th['linear_dense_max']}: "
                    "exact expm")
        if self.case == "forward_columns":
            return (f"y0 is not differentiated and p = {f['p']} ≤ forward_columns_max "
                    f"= {th['forward_columns_max']}: forward sensitivities, one "
                    "Jacobian column per parameter")
        if f["implicit"]:
            name = "forward_threshold_implicit"
            inputs, num = self._inputs
        else:
            name, inputs, num = "forward_threshold", "n + p", f["n"] + f["p"]
        if self.case == "forward":
            return f"{inputs} = {num} ≤ {name} = {th[name]}: forward sensitivities"
        if self.case == "gauss":
            return (f"{inputs} = {num} > {name} = {th[name]} with an implicit solver "
                    "in float64: the continuous adjoint GaussAdjoint")
        return (f"{inputs} = {num} > {name} = {th[name]}: reverse mode through the "
                "solver's steps")

    @property
    def reasons(self) -> tuple[str, ...]:
        f, th = self.facts, self.thresholds
        n, p = f["n"], f["p"]
        if self.case == "krylov":
            why = ("A is only available as a matvec" if f["matrix_free"] else
                   f"n = {n} > linear_dense_max = {th['linear_dense_max']}")
            return (f"`y' = A y (+ b)` is solved exactly, never time-stepped; {why}, "
                    "so no n×n matrix is formed (memory O(n · Krylov dimension)).",)
        if self.case == "expm":
            return (f"`y' = A y (+ b)` is solved exactly by one `expm(A Δt)` per "
                    f"distinct step (O(n³) = {n}³ flops), with an exact gradient — no "
                    "tolerance error, no time steps.",)
        num = self._inputs[1]
        if self.case == "discrete":
            reasons = (f"Forward would solve the {n} × {num} sensitivity matrix with "
                       "y; one reverse pass costs about 2–3 forward solves whatever "
                       "p is.",
                       "Discrete is the fastest reverse method, or close to it, on "
                       "every non-linear benchmark problem, with flat memory "
                       "(recursive checkpointing), and its gradient is the exact "
                       "gradient of the discretised solution.")
            if f["implicit"]:
                reasons += (f"{f['solver']} is implicit and the state is float32: "
                            "an implicit backward solve in float32 cannot meet tight "
                            "tolerances, so Discrete (which differentiates the "
                            "forward Newton iterations) rather than GaussAdjoint.",)
            elif f["y0_counted"] and n > p and p <= th["forward_columns_max"]:
                reasons += ("If y0 is not differentiated, Forward by Jacobian columns "
                            f"(p = {p} per stage) beats Discrete: inside `jit`/`grad` "
                            "Auto sees that when y0 is a constant (not an argument "
                            "of the traced function); otherwise pass "
                            "`Auto(y0_differentiated=False)`.",)
        elif self.case == "gauss":
            reasons = (f"Forward would solve the {n} × {num} sensitivity matrix with "
                       "y; Discrete would differentiate every Newton iteration of "
                       f"{f['solver']}.",
                       "GaussAdjoint integrates only λ backwards (a state the size of "
                       "y, with the same implicit solver) and the parameter integral "
                       "by Gauss–Legendre nodes, one batched vjp per backward step: "
                       "the fastest reverse method on the benchmarked stiff problems "
                       "(the README's performance section).")
        else:
            if f["implicit"]:
                how = f"{num} tangents through the solve"
            elif n <= num:
                how = f"the sensitivity equations, {n} Jacobian row(s) per stage"
            else:
                how = f"the sensitivity equations, {num} Jacobian column(s) per stage"
            reasons = (f"The {n} × {num} sensitivity matrix (state n = {n}, p = {p} "
                       f"trainable scalars) is solved with y by {how}; no backward "
                       "pass, and `jax.jvp`/`jax.hessian` work too.",)
        return (*reasons, self._counting())

    def _counting(self) -> str:
        f = self.facts
        if f["traced"]:
            text = ("Counted inside a trace, where only traced inputs can be "
                    f"differentiated: p = {f['p']} traced parameter scalars; y0 "
                    + ("is traced" if f["y0_traced"] else "is a constant"))
        else:
            text = (f"Counted outside any trace: all p = {f['p']} trainable scalars; "
                    "y0 taken as differentiated")
        if f["y0_override"] is not None:
            text += (f", but `Auto(y0_differentiated={f['y0_override']})` "
                     "overrides that")
        return text + (f": y0's n = {f['n']} entries count." if f["y0_counted"] else
                       ": y0 does not count.")

    def __str__(self):
        lines = [f"Auto chose {self.method!r}: {self.rule}"]
        lines += [f"  - {r}" for r in self.reasons]
        if self.estimates:
            lines.append("  estimated cost relative to the choice:")
            for name, c in sorted(self.estimates.items(), key=lambda kv: kv[1]):
                lines.append(f"    {name:<24}{c:8.2f}")
        return "\n".join(lines)


class Auto(AbstractSensitivity):
    """Let jaxsens choose the sensitivity method.

    The rule is decided at trace time from the problem's structure and sizes, so it
    costs nothing at run time. Structure first, then sizes:

    1. A `jaxsens.LinearField` is never time-stepped: `LinearExpm()` (exact, one
       `expm`, O(n³)) up to `n = linear_dense_max`, `KrylovExpm()` above that or
       when `A` is only available as a matvec.
    2. Few inputs to differentiate: `Forward()` when `n + p ≤ forward_threshold`
       with an explicit solver; or, when `y0` is not differentiated, when
       `p ≤ forward_columns_max` whatever `n`; with an implicit solver, when the
       inputs to differentiate (`p`, plus `n` when `y0` counts) number at most
       `forward_threshold_implicit`: its backward pass is dearer. Forward
       sensitivities solve the matrix `∂y/∂(inputs)` with `y` and need no backward
       pass, so they beat every reverse method while that matrix is small.
    3. Otherwise, with an implicit solver and a float64 state, `GaussAdjoint()`:
       `λ` backwards with the same implicit solver and the parameter integral by
       Gauss–Legendre nodes, the fastest reverse method on the benchmarked stiff
       problems (`Discrete` differentiates every Newton iteration). In float32 an
       implicit backward solve cannot meet tight tolerances: `Discrete()` then.
    4. Otherwise `Discrete()`: reverse mode through diffrax's steps with recursive
       checkpointing, the fastest reverse method (or close to it) on the
       benchmarked non-stiff problems, with flat memory. The other continuous
       adjoints remain the choice when memory matters (pick them explicitly).

    The thresholds are where the measured crossovers lie on CPU (the README's
    performance section); `AutoDecision.estimates` gives the cost model's view of
    the alternatives. That forward sensitivities win for small `n + p` and
    adjoints for large `p` is the finding of Ma, Dixit, Innes, Guo & Rackauckas,
    "A comparison of automatic differentiation and continuous sensitivity
    analysis for derivatives of differential equation solutions" (2021).

    **What counts as differentiated.** Inside a trace (`jit`, `grad`, `vmap`),
    only traced inputs can be differentiated: `p` counts the traced
    inexact-array leaves of the field (a Module's, or arrays a plain function
    closes over, found by closure conversion) and of `args` (a `Control`'s
    sample times excluded), and `y0` counts only if it is traced — a `y0` closed
    over as a constant never is. Outside any trace (`decide`, `explain`) `p`
    counts every inexact leaf of a Module field and of `args` and `y0` counts.
    A `y0` passed as an argument of `jit` is traced, so it counts even if only
    the parameters are differentiated: `Auto(y0_differentiated=False)` says so.

    **Arguments:**

    - `forward_threshold`: largest `n + p` for which `Forward()` is chosen with an
        explicit solver (default 8).
    - `forward_threshold_implicit`: the same with an implicit solver (default 64).
    - `forward_columns_max`: largest `p` for which `Forward()` is chosen with an
        explicit solver when `y0` is not differentiated, whatever the state size
        (default 4).
    - `y0_differentiated`: whether `y0` counts as an input to differentiate
        (default `None`: decided as above).
    - `linear_dense_max`: largest state size for which `LinearExpm()` is chosen
        (default 2000).

    **Example:**

    ```python
    import jax.numpy as jnp, jaxsens
    field = lambda t, y, k: -k * y
    y0, ts = jnp.array([1.0]), jnp.linspace(0, 1, 3)
    sol = jaxsens.solve(field, y0, ts, 2.0, sensitivity=jaxsens.Auto())
    print(jaxsens.Auto().decide(field, y0, ts, 2.0))  # Forward(): n + p = 2 ≤ 8
    ```
    """

    forward_threshold: int = 8
    forward_threshold_implicit: int = 64
    forward_columns_max: int = 4
    y0_differentiated: bool | None = None
    linear_dense_max: int = 2000

    def decide(self, field, y0, ts, args=None, *, solver=None,
               y0_traced: bool | None = None) -> AutoDecision:
        """The method `Auto` picks for `jaxsens.solve(field, y0, ts, args,
        solver=solver)`, with the facts it decided on.

        `y0_traced`: whether `y0` is traced (default: read off `y0`; `solve`
        passes what it was given, before its own checks trace it).

        **Returns:** an [`jaxsens.AutoDecision`][] (printable).
        """
        from .._linear_field import LinearField
        from .krylov import KrylovExpm
        from .linear import LinearExpm

        solver = dfx.Tsit5() if solver is None else solver
        n, p = count_sizes(field, y0, args)
        linear = isinstance(field, LinearField)
        facts = dict(
            n=n, p=p, n_times=int(np.size(ts)), linear=linear,
            matrix_free=bool(linear and field.is_matrix_free(args)),
            implicit=isinstance(solver, dfx.AbstractImplicitSolver),
            solver=type(solver).__name__,
            float64=wider_than_float32(y0),
        )
        thresholds = dict(
            forward_threshold=self.forward_threshold,
            forward_threshold_implicit=self.forward_threshold_implicit,
            forward_columns_max=self.forward_columns_max,
            linear_dense_max=self.linear_dense_max,
        )
        if linear:
            if n > self.linear_dense_max or facts["matrix_free"]:
                return AutoDecision(KrylovExpm(), "krylov", facts, thresholds, {})
            return AutoDecision(LinearExpm(), "expm", facts, thresholds, {})

        # What can be differentiated. Inside a trace (`jit`, `grad`, `vmap`) only
        # traced inputs can; a concrete `y0` (closed over, built outside) never is.
        # Outside any trace nothing tells, and everything counts.
        if y0_traced is None:
            y0_traced = has_tracer(y0)
        p_traced = traced_param_size(field, y0, ts, args)
        traced = bool(y0_traced or p_traced > 0)
        if traced:
            p, y0_counted = p_traced, y0_traced
        else:
            y0_counted = True
        if self.y0_differentiated is not None:
            y0_counted = self.y0_differentiated
        facts.update(p=p, y0_counted=y0_counted, traced=traced, y0_traced=y0_traced,
                     y0_override=self.y0_differentiated)
        # The perturbed inputs Forward would carry: columns of the sensitivity matrix.
        num = p + (n if y0_counted else 0)
        if facts["implicit"]:
            case = ("forward" if num <= self.forward_threshold_implicit
                    else "gauss" if facts["float64"] else "discrete")
        elif n + p <= self.forward_threshold:
            case = "forward"
        elif not y0_counted and p <= self.forward_columns_max:
            case = "forward_columns"
        else:
            case = "discrete"
        method = {"discrete": Discrete(), "gauss": GaussAdjoint()}.get(case, Forward())
        costs = _estimates(n, num, facts["implicit"])
        chosen = costs[type(method).__name__]
        estimates = {name: c / chosen for name, c in costs.items()}
        return AutoDecision(method, case, facts, thresholds, estimates)

    def choose(self, field, y0, ts, args, solver=None,
               y0_traced: bool | None = None) -> AbstractSensitivity:
        """The chosen method only (see `decide`)."""
        return self.decide(field, y0, ts, args, solver=solver,
                           y0_traced=y0_traced).method

    def chosen(self, field, y0, ts, args, options: SolveOptions) -> AbstractSensitivity:
        """The method `solve` delegates to, for `solve`'s own arguments (`options`
        carries the solver and whether `y0` was traced). With
        `solve(..., dense=True)`: `Discrete()`, the one method that differentiates
        the dense output."""
        if options.dense:
            return Discrete()
        return self.choose(field, y0, ts, args, solver=options.solver,
                           y0_traced=options.y0_traced)

    def solve(self, field, y0, ts, args, options: SolveOptions):
        method = self.chosen(field, y0, ts, args, options)
        return method.solve(field, y0, ts, args, options)
