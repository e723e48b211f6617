import dataclasses

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from .._control import Control
from .base import AbstractSensitivity, SolveOptions, float_args_as_arrays
from .discrete import Discrete
from .forward import Forward


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


def _size(leaves) -> int:
    return sum(int(np.size(x)) for x in leaves)


def count_sizes(field, y0, args) -> tuple[int, int]:
    """`(n, p)`: state size and number of trainable scalars (field leaves + args,
    not counting `Control` sample times)."""
    return _size(jtu.tree_leaves(y0)), _size(_param_leaves(field, args))


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
    return _size([x for x in _param_leaves(converted, args) if has_tracer(x)])


@dataclasses.dataclass(frozen=True)
class AutoDecision:
    """What `Auto` chose for one problem, and why.

    **Attributes:**

    - `method`: the chosen sensitivity method (an instance).
    - `rule`: the rule that fired, in one line.
    - `reasons`: the facts behind it, as sentences.
    - `facts`: `n` (state size), `p` (trainable scalars counted), `n_times`,
      `linear` (a `LinearField`), `matrix_free`, `implicit` (implicit solver),
      `solver`, and `y0_counted` (whether `y0` counts as differentiated; not for
      linear fields).
    - `estimates`: method name → estimated warm gradient time relative to the
      chosen method (1.0), from the cost model in `Auto`'s docstring. Estimates,
      not measurements: `jaxsens.explain(..., timing=True)` measures.
    """

    method: AbstractSensitivity
    rule: str
    reasons: tuple[str, ...]
    facts: dict
    estimates: dict

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
       `expm`, O(n³)) up to `n = linear_dense_max = 2000`, `KrylovExpm()` above that
       or when `A` is only available as a matvec.
    2. Few inputs to differentiate: `Forward()` when `n + p ≤ forward_threshold`
       (8) with an explicit solver; or, when `y0` is not differentiated, when
       `p ≤ forward_columns_max` (4) whatever `n`; with an implicit solver, when
       the inputs to differentiate (`p`, plus `n` when `y0` counts) number at most
       `forward_threshold_implicit` (64): its backward pass is dearer.
       Forward sensitivities solve the matrix `∂y/∂(inputs)` with `y`: with an
       explicit solver by the sensitivity equations (one Jacobian row per state
       per stage, or one column per input when the state outnumbers the inputs),
       with an implicit one by one tangent per input through the solve. No
       backward pass: they beat every reverse method while that matrix is small.
    3. Otherwise `Discrete()`: reverse mode through diffrax's steps with recursive
       checkpointing. Measured on CPU (bench/RESULTS.md), it is the fastest
       reverse method, or within 1.3× of it, on every non-linear benchmark problem
       — the continuous adjoints pay a backward solve with its own step-size
       control, at least one step per save time, and one `vjp` per stage; with
       10⁴ parameters `QuadratureAdjoint` is 1.25–1.3× faster — and its memory
       stays flat (0.8 MB of temporaries for 93,000 steps). The continuous
       adjoints remain the choice when you need a gradient whose cost does not
       depend on differentiating the solver's internals (pick them explicitly).

    **What counts as differentiated.** Inside a trace (`jit`, `grad`, `vmap`),
    only traced inputs can be differentiated: `p` counts the traced
    inexact-array leaves of the field (a Module's, or arrays a plain function
    closes over, found by closure conversion) and of `args` (a `Control`'s
    sample times excluded), and `y0` counts only if it is traced — a `y0` closed
    over as a constant never is. Outside any trace (`decide`, `explain`) `p`
    counts every inexact leaf of a Module field and of `args` and `y0` counts.
    A `y0` passed as an argument of `jit` is traced, so it counts even if only
    the parameters are differentiated: `Auto(y0_differentiated=False)` says so.
    Forward by columns, with `y0` not differentiated, measured against
    Discrete (Tsit5, 5 save times, `n` = 16 … 4096, `python -m
    bench.forward_columns`): 0.18–0.27 at p = 1, 0.30–0.67 at p = 4, 1.17–1.50
    at p = 6 with n ≥ 1024 (0.34–0.61 below).

    The cost model behind `AutoDecision.estimates` (units: one `Discrete`
    gradient) is
    `Forward ≈ forward_base + forward_per_state · n + forward_per_entry · n P`
    with an explicit solver by rows (`P` = inputs to differentiate, `n ≤ P`),
    `forward_columns_base + forward_per_column · P · (1 + n/4096)` by columns,
    `forward_base_implicit + forward_per_input_implicit · P` with an implicit
    one, `GaussAdjoint ≈ gauss_factor`,
    `InterpolatingAdjoint ≈ interpolating_factor`, fitted to the crossover sweep
    (`python -m bench.crossover`, bench/results/crossover.md; within a factor of
    3 of every explicit point below 300× Discrete). On this 2-core CPU, with
    jaxsens's raised XLA:CPU small-loop limit, Forward ÷ Discrete on an MLP
    field with Tsit5 is 0.53 → 0.76 → 1.01 → 2.9 at (n, p) = (1, 3), (2, 10),
    (4, 36), (8, 136) (~20 steps), 0.92 → 1.75 → 4.8 at n = 2 with p = 160,
    1280, 10240 (~4 steps); with Kvaerno5 on a stiff family it is 0.28 → 0.77 at
    n + p = 4, 40 (1.2 → 3.6 at 144, 280): crossovers near n + p = 12 and 80,
    and the thresholds keep `Forward` inside its winning region.

    **Arguments:**

    - `forward_threshold`: largest `n + p` for which `Forward()` is chosen with an
        explicit solver.
    - `forward_threshold_implicit`: the same with an implicit solver.
    - `forward_columns_max`: largest `p` for which `Forward()` is chosen with an
        explicit solver when `y0` is not differentiated, whatever the state size.
    - `y0_differentiated`: whether `y0` counts as an input to differentiate
        (default `None`: decided as above).
    - `linear_dense_max`: largest state size for which `LinearExpm()` is chosen.

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
    # Cost model (units: one Discrete gradient), see the docstring.
    forward_base: float = 0.4
    forward_per_state: float = 0.15
    forward_per_entry: float = 6e-4
    forward_base_implicit: float = 0.3
    forward_per_input_implicit: float = 0.009
    forward_columns_base: float = 0.15
    forward_per_column: float = 0.1
    gauss_factor: float = 1.5
    interpolating_factor: float = 2.5

    def decide(self, field, y0, ts, args=None, *, solver=None,
               y0_traced: bool | None = None) -> AutoDecision:
        """The method `Auto` picks for `jaxsens.solve(field, y0, ts, args,
        solver=solver)`, with the rule that fired and the estimated costs.

        `y0_traced`: whether `y0` is traced (default: read off `y0`; `solve`
        passes what it was given, before its own checks trace it).

        **Returns:** an `AutoDecision` (printable).
        """
        from .._linear_field import LinearField
        from .krylov import KrylovExpm
        from .linear import LinearExpm

        solver = dfx.Tsit5() if solver is None else solver
        n, p = count_sizes(field, y0, args)
        n_times = int(np.size(ts))
        linear = isinstance(field, LinearField)
        facts = dict(
            n=n, p=p, n_times=n_times, linear=linear,
            matrix_free=bool(linear and field.is_matrix_free(args)),
            implicit=isinstance(solver, dfx.AbstractImplicitSolver),
            solver=type(solver).__name__,
        )
        if linear:
            if n > self.linear_dense_max or facts["matrix_free"]:
                why = ("A is only available as a matvec" if facts["matrix_free"]
                       else f"n = {n} > linear_dense_max = {self.linear_dense_max}")
                return AutoDecision(
                    KrylovExpm(), "linear field, large or matrix-free: Krylov expm-actions",
                    (f"`y' = A y (+ b)` is solved exactly, never time-stepped; {why}, "
                     "so no n×n matrix is formed (memory O(n · Krylov dimension)).",),
                    facts, {})
            return AutoDecision(
                LinearExpm(), f"linear field with n = {n} ≤ {self.linear_dense_max}: exact expm",
                (f"`y' = A y (+ b)` is solved exactly by one `expm(A Δt)` per distinct "
                 f"step (O(n³) = {n}³ flops), with an exact gradient — no tolerance "
                 "error, no time steps.",),
                facts, {})

        # What can be differentiated. Inside a trace (`jit`, `grad`, `vmap`) only
        # traced inputs can; a concrete `y0` (closed over, built outside) never is.
        # Outside any trace nothing tells, and everything counts.
        if y0_traced is None:
            y0_traced = has_tracer(y0)
        p_traced = traced_param_size(field, y0, ts, args)
        if y0_traced or p_traced > 0:
            p, y0_counted = p_traced, y0_traced
            counting = ("Counted inside a trace, where only traced inputs can be "
                        f"differentiated: p = {p} traced parameter scalars; y0 "
                        + ("is traced" if y0_traced else "is a constant"))
        else:
            y0_counted = True
            counting = (f"Counted outside any trace: all p = {p} trainable scalars; "
                        "y0 taken as differentiated")
        if self.y0_differentiated is not None:
            y0_counted = self.y0_differentiated
            counting += (f", but `Auto(y0_differentiated={y0_counted})` "
                         "overrides that")
        counting += (f": y0's n = {n} entries count." if y0_counted else
                     ": y0 does not count.")
        facts.update(p=p, y0_counted=y0_counted)
        # The perturbed inputs Forward would carry: columns of the sensitivity matrix.
        num = p + (n if y0_counted else 0)
        k = n + p

        if facts["implicit"]:
            rel_forward = (self.forward_base_implicit
                           + self.forward_per_input_implicit * num)
        elif n <= num:
            rel_forward = (self.forward_base + self.forward_per_state * n
                           + self.forward_per_entry * n * num)
        else:
            rel_forward = (self.forward_columns_base + self.forward_per_column * num
                           * (1 + n / 4096))
        costs = {"Forward": rel_forward, "Discrete": 1.0,
                 "GaussAdjoint": self.gauss_factor,
                 "InterpolatingAdjoint": self.interpolating_factor}
        inputs = "n + p" if y0_counted else "p"
        if facts["implicit"]:
            name, threshold = "forward_threshold_implicit", self.forward_threshold_implicit
            use_forward = num <= threshold
            rule = (f"{inputs} = {num} ≤ {name} = {threshold}: forward sensitivities"
                    if use_forward else
                    f"{inputs} = {num} > {name} = {threshold}: reverse mode through "
                    "the solver's steps")
        else:
            name, threshold = "forward_threshold", self.forward_threshold
            by_columns = (not y0_counted and k > threshold
                          and p <= self.forward_columns_max)
            use_forward = k <= threshold or by_columns
            if by_columns:
                rule = (f"y0 is not differentiated and p = {p} ≤ forward_columns_max = "
                        f"{self.forward_columns_max}: forward sensitivities, one "
                        "Jacobian column per parameter")
            elif use_forward:
                rule = f"n + p = {k} ≤ {name} = {threshold}: forward sensitivities"
            else:
                rule = (f"n + p = {k} > {name} = {threshold}: reverse mode through "
                        "the solver's steps")
        if use_forward:
            method = Forward()
            if facts["implicit"]:
                how = f"{num} tangents through the solve"
            elif n <= num:
                how = f"the sensitivity equations, {n} Jacobian row(s) per stage"
            else:
                how = f"the sensitivity equations, {num} Jacobian column(s) per stage"
            reasons = (f"The {n} × {num} sensitivity matrix (state n = {n}, p = {p} "
                       f"trainable scalars) is solved with y by {how}; no backward "
                       "pass, and `jax.jvp`/`jax.hessian` work too.",)
            chosen = costs["Forward"]
        else:
            method = Discrete()
            reasons = (f"Forward would solve the {n} × {num} sensitivity matrix with "
                       "y; one reverse pass costs about 2–3 forward solves whatever "
                       "p is.",
                       "Discrete is the fastest reverse method, or within 1.3× of "
                       "it, on every non-linear bench problem, with flat memory "
                       "(recursive checkpointing), and its gradient is the exact "
                       "gradient of the discretised solution.")
            if facts["implicit"]:
                reasons += (f"{facts['solver']} is implicit: Discrete differentiates "
                            "its Newton iterations too; still measured fastest.",)
            elif y0_counted and n > p and p <= self.forward_columns_max:
                reasons += ("If y0 is not differentiated, Forward by Jacobian columns "
                            f"(p = {p} per stage) beats Discrete: inside `jit`/`grad` "
                            "Auto sees that when y0 is a constant (not an argument "
                            "of the traced function); otherwise pass "
                            "`Auto(y0_differentiated=False)`.",)
            chosen = costs["Discrete"]
        reasons += (counting,)
        estimates = {name: c / chosen for name, c in costs.items()}
        return AutoDecision(method, rule, reasons, facts, estimates)

    def choose(self, field, y0, ts, args, solver=None,
               y0_traced: bool | None = None) -> AbstractSensitivity:
        """The chosen method only (see `decide`)."""
        return self.decide(field, y0, ts, args, solver=solver,
                           y0_traced=y0_traced).method

    def solve(self, field, y0, ts, args, options: SolveOptions):
        method = self.choose(field, y0, ts, args, solver=options.solver)
        return method.solve(field, y0, ts, args, options)
