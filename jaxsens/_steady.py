"""Steady states `f(y*, θ) = 0`, differentiated by the implicit function theorem.

The forward pass finds `y*` however it likes (Newton's method, or integrating the
ODE until it stops moving). The backward pass never looks at those iterations:
differentiating `f(y*(θ), θ) = 0` gives `f_y ∂y*/∂θ = -f_θ`, so for a cotangent `ȳ`

    solve   f_yᵀ λ = ȳ          (one lineax solve, at y* only)
    ∂L/∂θ = -λᵀ f_θ             (one vjp of f)

and `∂L/∂y0 = 0` (an isolated, attracting steady state does not depend on where the
search started). Cost: one linear solve, independent of how long the system took
to settle — "it's quicker to go to infinity than to 1000" (seed 001).
"""

import abc

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import optimistix as optx
from jaxtyping import Array, ArrayLike, Int, PyTree


class STEADY_RESULTS(eqx.Enumeration):
    """Why [`jaxsens.steady_state`][] failed. Raised as an error when `throw=True`.

    **Example:**

    ```python
    import jax.numpy as jnp, jaxsens
    osc = lambda t, y, a: jnp.stack([y[1], -y[0]])      # a centre: never settles
    ss = jaxsens.steady_state(osc, jnp.ones(2), throw=False,
                              method=jaxsens.Integrate(max_steps=50))
    ss.result == jaxsens.STEADY_RESULTS.not_steady      # True
    ```
    """

    successful = ""
    newton_failed = (
        "`jaxsens.steady_state`: no steady state reached: Newton's method did not "
        "converge from `y0` (it diverged, hit non-finite values, or used all of "
        "`max_steps`). Start closer to the steady state, increase "
        "`Newton(max_steps=...)`, or use `method=jaxsens.Integrate()`, which follows "
        "the dynamics to the stable steady state they reach from `y0`. (Above 200 "
        "states Newton's steps use matrix-free GMRES, which can stall on badly "
        "conditioned Jacobians: try `Newton(linear_solver=lineax.LU())`.)"
    )
    newton_singular = (
        "`jaxsens.steady_state`: Newton's method met a singular Jacobian `f_y` "
        "during its iterations, so its step is undefined. Either the steady state is "
        "not isolated (a conservation law, e.g. species that only convert into each "
        "other, leaves a line of steady states: remove one state per conserved "
        "quantity), or an iterate passed a point where `f_y` is singular: start "
        "elsewhere or use `method=jaxsens.Integrate()`."
    )
    not_steady = (
        "`jaxsens.steady_state`: no steady state reached: integrating the ODE used "
        "all of `Integrate(max_steps=...)` before the state stopped changing "
        "(`‖f(y)‖ < atol + rtol‖y‖` never held). The system may oscillate (a limit "
        "cycle), diverge, or relax very slowly: check the dynamics, increase "
        "`max_steps`, or loosen `rtol`/`atol`. (With an explicit `solver`, the "
        "steps may be jittering on the edge of stability: use an implicit one, "
        "such as the default `diffrax.Kvaerno3()`.)"
    )
    integration_failed = (
        "`jaxsens.steady_state`: the ODE solver failed while integrating towards a "
        "steady state (non-finite values or an implicit solver's failure). The "
        "system may blow up from `y0` or leave the field's domain: start elsewhere, "
        "or pass a smaller `Integrate(dt0=...)`."
    )


_SINGULAR_MSG = (
    "`jaxsens.steady_state` gradient: the Jacobian `f_y` is singular at the steady "
    "state, so the implicit function theorem does not apply (the steady state is not "
    "an isolated function of the parameters). Usually a conservation law (e.g. "
    "species that only convert into each other) leaves a whole line of steady "
    "states selected by `y0`: eliminate one state per conserved quantity, or "
    "differentiate a long `jaxsens.solve` instead."
)

_ITERATIVE_MSG = (
    "`jaxsens.steady_state` gradient: the matrix-free linear solve of "
    "`f_yᵀ λ = ȳ` did not converge (stagnation, breakdown or step budget). `f_y` "
    "is singular or badly conditioned at the steady state. Pass "
    "`SteadyStateAdjoint(linear_solver=lineax.LU())` for a dense solve (which also "
    "says whether `f_y` is singular), or an iterative solver with a larger "
    "`max_steps`/`restart`."
)


def _check_positive_int(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")


def _check_tols(name, rtol, atol):
    for label, tol in (("rtol", rtol), ("atol", atol)):
        if tol is not None and isinstance(tol, (int, float)) and not tol > 0:
            raise ValueError(f"`{name}({label}=...)` must be positive, got {tol!r}.")


DENSE_MAX = 200
"""States up to this size get dense linear algebra by default (LU of the
materialised Jacobian), larger ones matrix-free GMRES: the crossover measured in
`bench/results/steady.md` (b)."""


def _size(tree) -> int:
    return sum(int(x.size) for x in jtu.tree_leaves(tree))


def _check_linear_solver(name, solver):
    if solver is not None and not isinstance(solver, lx.AbstractLinearSolver):
        raise TypeError(
            f"`{name}(linear_solver=...)` must be a lineax solver such "
            f"as `lineax.LU()` or `lineax.GMRES(rtol=1e-8, atol=1e-8)`, got "
            f"{solver!r}."
        )


def _default_tol(dtype) -> float:
    # eps**0.6: 4e-10 in float64, 7e-5 in float32. Newton converges quadratically,
    # so the final residual is usually far below this.
    return float(jnp.finfo(dtype).eps) ** 0.6


def _tree_dtype(y):
    return jnp.result_type(*jtu.tree_leaves(y))


class AbstractSteadyStateMethod(eqx.Module):
    """How [`jaxsens.steady_state`][] finds `y*` (the forward pass only).

    Subclasses implement `find(field, y0, args) -> (y, result, stats)`, where
    `field(t, y, args)` is evaluated at `t = 0`. Gradients never go through `find`:
    they come from [`jaxsens.SteadyStateAdjoint`][], so any search works.

    **Example:**

    ```python
    import jax, jax.numpy as jnp, jaxsens

    class Picard(jaxsens.AbstractSteadyStateMethod):   # y <- y + h f(y)
        def find(self, field, y0, args):
            y = jax.lax.fori_loop(0, 200, lambda i, y: y + 0.5 * field(0.0, y, args),
                                  y0)
            return y, jaxsens.STEADY_RESULTS.successful, {}

    f = lambda t, y, k: k - y
    jax.grad(lambda k: jaxsens.steady_state(f, jnp.zeros(2), k,
                                            method=Picard()).y.sum())(2.0)  # 2.0
    ```
    """

    @abc.abstractmethod
    def find(
        self, field, y0: PyTree[Array], args: PyTree
    ) -> tuple[PyTree[Array], STEADY_RESULTS, dict[str, Array]]:
        """Returns `(y*, result, stats)`."""


class Newton(AbstractSteadyStateMethod):
    """Find `y*` by Newton's method on `y ↦ field(0, y, args)` (optimistix).

    Quadratic convergence from a good starting guess; no globalisation, so from a
    poor `y0` it may diverge or reach an unstable steady state (any root of `f`).
    Prefer [`jaxsens.Integrate`][] when you want the steady state the dynamics
    settle into from `y0`.

    **Arguments:**

    - `rtol`, `atol`: convergence tolerances of `optimistix.Newton` (default:
        `eps**0.6` of the state's dtype, 4e-10 in float64).
    - `max_steps`: iteration budget.
    - `linear_solver`: the lineax solver for the Newton steps. Default `None`:
        dense LU (lineax's `AutoLinearSolver`) for states of at most
        `DENSE_MAX = 200` entries, matrix-free GMRES on `jax.linearize` of the
        field (Newton–Krylov) above, where forming and factorising `f_y` costs
        O(n³) per step (measured on a 1000-state reaction–diffusion system:
        0.1–0.35 s with dense LU vs 8 ms with GMRES, `bench/results/steady.md`
        (b)). Pass
        `lineax.LU()` or `lineax.GMRES(...)` to choose.

    **Example:**

    ```python
    import jax.numpy as jnp, jaxsens
    ss = jaxsens.steady_state(lambda t, y, k: k[0] - k[1] * y, jnp.array([1.0]),
                              jnp.array([2.0, 0.5]), method=jaxsens.Newton())
    ss.y  # [4.]
    ```
    """

    rtol: float | None = None
    atol: float | None = None
    max_steps: int = 256
    linear_solver: lx.AbstractLinearSolver | None = None

    def __check_init__(self):
        _check_positive_int("Newton(max_steps=...)", self.max_steps)
        _check_tols("Newton", self.rtol, self.atol)
        _check_linear_solver("Newton", self.linear_solver)

    def find(self, field, y0, args):
        dtype = _tree_dtype(y0)
        rtol = _default_tol(dtype) if self.rtol is None else self.rtol
        atol = _default_tol(dtype) if self.atol is None else self.atol
        t = jnp.zeros((), dtype)
        linear_solver = self.linear_solver
        if linear_solver is None:
            n = _size(y0)
            linear_solver = (
                lx.AutoLinearSolver(well_posed=None)
                if n <= DENSE_MAX
                else lx.GMRES(rtol=rtol, atol=atol, restart=min(n, 50))
            )
        sol = optx.root_find(
            lambda y, a: field(t, y, a),
            optx.Newton(rtol=rtol, atol=atol, linear_solver=linear_solver),
            y0,
            args,
            max_steps=self.max_steps,
            throw=False,
        )
        result = STEADY_RESULTS.where(
            sol.result == optx.RESULTS.successful,
            STEADY_RESULTS.successful,
            STEADY_RESULTS.where(
                sol.result == optx.RESULTS.singular,
                STEADY_RESULTS.newton_singular,
                STEADY_RESULTS.newton_failed,
            ),
        )
        # A "successful" solve that ended on non-finite values is a failure too.
        result = STEADY_RESULTS.where(
            (result == STEADY_RESULTS.successful) & ~_all_finite(sol.value),
            STEADY_RESULTS.newton_failed,
            result,
        )
        stats = {"num_newton_steps": jnp.asarray(sol.stats["num_steps"])}
        return sol.value, result, stats


class Integrate(AbstractSteadyStateMethod):
    """Find `y*` by integrating `dy/dt = field(t, y, args)` from `y0` until it stops
    changing, then (by default) polish it with a few Newton steps.

    The integration runs to `t = ∞` and stops at diffrax's steady-state event
    (`diffrax.steady_state_event`: `‖f(y)‖ < atol + rtol‖y‖`). That only gets `y`
    to within tolerance of `y*`, while the implicit function theorem assumes
    `f(y*) = 0` exactly (seed 001's caveat), so `polish` runs Newton from there:
    it starts in Newton's quadratic basin and makes `f(y*)` vanish to round-off.
    If the polish fails (e.g. `f_y` is singular because of a conservation law) the
    integrated state is kept, and `stats["polished"]` is `False`.

    Which solver (default `None`: by state size, like
    [`jaxsens.SteadyStateAdjoint`][]):

    - up to `DENSE_MAX = 200` entries, the implicit `diffrax.Kvaerno3()`. Near a
      steady state an explicit solver's adaptive steps grow until they sit on the
      edge of its stability region, where the state jitters at the tolerance level
      and the steady-state test may never pass: with `Tsit5` at
      `rtol = atol = 1e-6` this already happens on a two-state chain whose rates
      differ 10-fold, while `Kvaerno3` stops after ~150–300 steps on the same
      chain with rates 10^4-fold apart.
    - above, the explicit `diffrax.Tsit5()`: an implicit solver forms and
      factorises a dense `n × n` Jacobian every step (measured on a 1000-state
      reaction–diffusion system: a 38 s gradient with `Kvaerno3`, 10 ms with
      `Tsit5` and a Newton–Krylov polish). If it does
      not settle (the `not_steady` error), pass `solver=diffrax.Kvaerno3()` and
      accept the cost, or use [`jaxsens.Newton`][] from a good guess.

    **Arguments:**

    - `solver`: a diffrax solver, or `None` (see above).
    - `rtol`, `atol`: step-size tolerances, also the steady-state criterion.
    - `dt0`: initial step (default: automatic).
    - `max_steps`: the integration's step budget.
    - `polish`: a [`jaxsens.Newton`][] run from the integrated state, or `None`.

    **Example:**

    ```python
    import jax.numpy as jnp, jaxsens
    f = lambda t, y, k: jnp.array([k - y[0], y[0] - y[1]])
    ss = jaxsens.steady_state(f, jnp.zeros(2), 3.0, method=jaxsens.Integrate())
    ss.y  # [3., 3.]
    ```
    """

    solver: dfx.AbstractSolver | None = None
    rtol: float = 1e-6
    atol: float = 1e-6
    dt0: float | None = None
    max_steps: int = 16**3
    polish: Newton | None = Newton()

    def __check_init__(self):
        _check_positive_int("Integrate(max_steps=...)", self.max_steps)
        _check_tols("Integrate", self.rtol, self.atol)
        if self.solver is not None and not isinstance(self.solver, dfx.AbstractSolver):
            raise TypeError(
                "`Integrate(solver=...)` must be a diffrax solver such as "
                f"`diffrax.Tsit5()`, got {self.solver!r}."
            )
        if self.polish is not None and not isinstance(self.polish, Newton):
            raise TypeError(
                "`Integrate(polish=...)` must be a `jaxsens.Newton(...)` or None, got "
                f"{self.polish!r}."
            )

    def find(self, field, y0, args):
        dtype = _tree_dtype(y0)
        solver = self.solver
        if solver is None:
            solver = dfx.Kvaerno3() if _size(y0) <= DENSE_MAX else dfx.Tsit5()
        if isinstance(solver, dfx.AbstractAdaptiveSolver):
            controller = dfx.PIDController(rtol=self.rtol, atol=self.atol)
        elif self.dt0 is None:
            raise ValueError(
                f"`Integrate(solver={type(solver).__name__}())` has no error "
                "estimate, so it takes constant steps: pass `Integrate(dt0=...)`, or "
                "use an adaptive solver such as `diffrax.Tsit5()`."
            )
        else:
            controller = dfx.ConstantStepSize()
        event = dfx.Event(dfx.steady_state_event(rtol=self.rtol, atol=self.atol,
                                                 norm=optx.rms_norm))
        sol = dfx.diffeqsolve(
            dfx.ODETerm(field),
            solver,
            jnp.zeros((), dtype),
            jnp.inf,
            self.dt0,
            y0,
            args=args,
            saveat=dfx.SaveAt(t1=True),
            stepsize_controller=controller,
            event=event,
            max_steps=self.max_steps,
            throw=False,
        )
        y = jtu.tree_map(lambda x: x[-1], sol.ys)
        result = STEADY_RESULTS.where(
            sol.result == dfx.RESULTS.event_occurred,
            STEADY_RESULTS.successful,
            STEADY_RESULTS.where(
                sol.result == dfx.RESULTS.max_steps_reached,
                STEADY_RESULTS.not_steady,
                STEADY_RESULTS.integration_failed,
            ),
        )
        result = STEADY_RESULTS.where(
            _all_finite(y), result, STEADY_RESULTS.integration_failed
        )
        stats = {"num_steps": jnp.asarray(sol.stats["num_steps"])}
        if self.polish is None:
            return y, result, stats
        # The integrated state already meets the steady-state criterion, so a
        # failed polish (e.g. a singular `f_y`: a conservation law) keeps it; the
        # gradient then reports the singular `f_y` itself.
        y_polished, polish_result, polish_stats = self.polish.find(field, y, args)
        polished = (polish_result == STEADY_RESULTS.successful) & (
            result == STEADY_RESULTS.successful
        )
        y = jtu.tree_map(lambda a, b: jnp.where(polished, a, b), y_polished, y)
        stats = stats | polish_stats | {"polished": polished}
        return y, result, stats


class SteadyStateAdjoint(eqx.Module):
    """Differentiate a steady state by the implicit function theorem.

    For `f(y*, θ) = 0`: `∂L/∂θ = -λᵀ f_θ` with `f_yᵀ λ = ȳ`, one linear solve at
    `y*` and one vjp of `f`, whatever the forward pass did (Newton iterations or
    10^4 integration steps). `f_y` is never formed for large systems: the
    matrix-free path applies `f_yᵀ` by `jax.vjp`. Cost and memory are those of one
    linear solve, independent of how long the system took to settle. Reverse mode
    only (`jax.grad`, `jax.vjp`, `jax.jacrev`, under `jit`/`vmap`); `jax.jvp`
    raises, as for every `custom_vjp`.

    The gradient is exact for the exact steady state; the forward tolerance enters
    only through `f(y*) ≈ 0` (seed 001's caveat), which `Integrate(polish=...)`
    and `Newton` make round-off small.

    **Arguments:**

    - `linear_solver`: a lineax solver for `f_yᵀ λ = ȳ`. Default `None`: dense
        LU on the materialised Jacobian when the state has at most
        `dense_threshold` entries (and a check that says when `f_y` is singular),
        else matrix-free `lineax.GMRES` using vjps of `f`. An iterative lineax solver
        (`GMRES`, `BiCGStab`) passed here is used matrix-free; a direct one
        (`LU`, `QR`, `SVD`) materialises `f_yᵀ` first.
    - `dense_threshold`: see above.

    Cites: Griewank & Walther 2008, §15 (implicit and iterative functions);
    Johnson, "Notes on adjoint methods" (MIT 18.335); seed 001.

    **Example:**

    ```python
    import jax, jax.numpy as jnp, lineax as lx, jaxsens
    f = lambda t, y, k: k[0] - k[1] * y         # y* = k0 / k1
    adj = jaxsens.SteadyStateAdjoint(linear_solver=lx.GMRES(rtol=1e-10, atol=1e-10))
    grad = jax.grad(lambda k: jaxsens.steady_state(f, jnp.ones(3), k,
                                                   sensitivity=adj).y.sum())
    grad(jnp.array([2.0, 0.5]))  # [3/0.5, -3 * 2/0.5**2] = [6., -24.]
    ```
    """

    linear_solver: lx.AbstractLinearSolver | None = None
    dense_threshold: int = 200  # = DENSE_MAX

    def __check_init__(self):
        _check_linear_solver("SteadyStateAdjoint", self.linear_solver)
        _check_positive_int("SteadyStateAdjoint(dense_threshold=...)",
                            self.dense_threshold)

    def solve_transposed(self, fn_y, y_star, y_bar):
        """Solve `f_yᵀ λ = ȳ` where `fn_y(y) = f(y, θ)`; returns λ (checked)."""
        _, vjp_y = jax.vjp(fn_y, y_star)
        structure = jax.eval_shape(lambda: y_star)
        op = lx.FunctionLinearOperator(lambda v: vjp_y(v)[0], structure)
        size = _size(y_star)
        solver = self.linear_solver
        if solver is None:
            if size <= self.dense_threshold:
                return dense_solve(op, y_bar)
            tol = _default_tol(_tree_dtype(y_star))
            solver = lx.GMRES(rtol=tol, atol=tol, restart=min(size, 50))
        if isinstance(solver, (lx.GMRES, lx.BiCGStab, lx.CG)):
            sol = lx.linear_solve(op, y_bar, solver, throw=False)
            return eqx.error_if(
                sol.value, sol.result != lx.RESULTS.successful, _ITERATIVE_MSG
            )
        sol = lx.linear_solve(lx.materialise(op), y_bar, solver, throw=False)
        return eqx.error_if(sol.value, sol.result != lx.RESULTS.successful,
                            _SINGULAR_MSG)


def dense_solve(op: lx.AbstractLinearOperator, b: PyTree[Array]) -> PyTree[Array]:
    """LU solve of `op x = b` on the materialised operator, raising if `op` is
    singular to working precision.

    Singular means: LU failed (non-finite output, lineax's `singular`), or the
    solution's amplification `‖op‖∞ ‖x‖∞ / ‖b‖∞`, a lower bound on the condition
    number, exceeds `1 / (n·eps)`.
    """
    op = lx.materialise(op)
    sol = lx.linear_solve(op, b, lx.LU(), throw=False)
    matrix = op.as_matrix()
    n = matrix.shape[0]
    eps = jnp.finfo(matrix.dtype).eps
    x_norm = _max_abs(sol.value)
    b_norm = _max_abs(b)
    a_norm = jnp.max(jnp.sum(jnp.abs(matrix), axis=1))
    safe_b = jnp.where(b_norm > 0, b_norm, 1)
    amplified = (b_norm > 0) & (a_norm * x_norm > safe_b / (n * eps))
    singular = (sol.result != lx.RESULTS.successful) | amplified
    return eqx.error_if(sol.value, singular, _SINGULAR_MSG)


class SteadyState(eqx.Module):
    """The result of [`jaxsens.steady_state`][].

    **Attributes:**

    - `y`: the steady state `y*`, structured like `y0`; differentiable with respect
        to the field's parameters and `args` by the implicit function theorem.
    - `result`: a [`jaxsens.STEADY_RESULTS`][] member (`successful` unless
        `throw=False` and the search failed).
    - `stats`: `num_steps` (integration steps, `Integrate` only),
        `num_newton_steps`, and `polished` (`Integrate` with `polish`: whether the
        Newton polish converged; if not, `y` is the integrated state).

    **Example:**

    ```python
    import jax.numpy as jnp, jaxsens
    ss = jaxsens.steady_state(lambda t, y, k: k - y, jnp.zeros(2), 2.0)
    ss.y, ss.stats["num_steps"], ss.result == jaxsens.STEADY_RESULTS.successful
    ```
    """

    y: PyTree[Array]
    result: STEADY_RESULTS
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
    y0 = _as_state(y0)
    t0 = jnp.zeros((), _tree_dtype(y0))
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
        jnp.logical_not(_all_finite(y0)),
        "`steady_state`: `y0` contains NaN or inf. Check how the initial state was "
        "built.",
    )
    # Closure conversion makes arrays the field closes over (tracers included)
    # explicit leaves, so the custom_vjp can return their cotangents.
    field = eqx.filter_closure_convert(field, t0, y0, args)
    diff, static = eqx.partition((field, args), eqx.is_inexact_array)
    y, result, stats = _steady((diff, y0), static, method, sensitivity, throw)
    return SteadyState(y=y, result=result, stats=stats)


def _arrays(diff):
    # Under `jax.grad` of a Python float, custom_vjp rules can receive the primal as
    # a non-array scalar; closure-converted fields need real arrays.
    return jtu.tree_map(jnp.asarray, diff)


class _Field(eqx.Module):
    """The closure-converted field, callable with a Python-float `t` (as custom
    methods will) and `args` of the traced structure."""

    field: eqx.Module
    args: PyTree

    def __call__(self, t, y, args):
        del args  # always the traced `args`: what the field was converted with
        return self.field(jnp.asarray(t, _tree_dtype(y)), y, self.args)


def _find(diff, static, y0, method, throw):
    diff = _arrays(diff)
    field, args = eqx.combine(diff, static)
    y, result, stats = method.find(_Field(field, args), y0, args)
    if throw:
        y = result.error_if(y, result != STEADY_RESULTS.successful)
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
    diff = _arrays(diff)
    y_bar = jtu.tree_map(
        lambda c, y: jnp.zeros_like(y) if c is None else c,
        grad_obj[0],
        y_star,
        is_leaf=lambda c: c is None,
    )
    t = jnp.zeros((), _tree_dtype(y_star))

    def f(y, d):
        field, args = eqx.combine(d, static)
        return field(t, y, args)

    lam = sensitivity.solve_transposed(lambda y: f(y, diff), y_star, y_bar)
    _, vjp_diff = jax.vjp(lambda d: f(y_star, d), diff)
    (diff_bar,) = vjp_diff(jtu.tree_map(jnp.negative, lam))
    return diff_bar, jtu.tree_map(jnp.zeros_like, y0)


def _as_state(y0):
    leaves = jtu.tree_leaves(y0)
    if not leaves:
        raise ValueError("`y0` has no array leaves: pass the starting state, e.g. "
                         "`y0=jnp.zeros(3)`.")
    dtypes = [jnp.result_type(x) for x in leaves
              if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    dtype = jnp.result_type(*dtypes) if dtypes else jnp.result_type(float)

    def convert(x):
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.inexact):
            x = x.astype(dtype)
        return x

    return jtu.tree_map(convert, y0)


def _all_finite(tree) -> Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jtu.tree_leaves(tree)]))


def _max_abs(tree) -> Array:
    return jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in jtu.tree_leaves(tree)]))
