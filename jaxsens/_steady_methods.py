"""How `jaxsens.steady_state` finds `y*` (the forward pass only): Newton's method,
or integrating the ODE until it stops moving. Gradients never go through these
searches (see `_steady_adjoint.py`)."""

import abc

import diffrax as dfx
import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import optimistix as optx
from jaxtyping import Array, PyTree

from ._sensitivity._options import DEFAULT_TOL, MAX_STEPS
from ._sensitivity.base import all_finite, tree_size
from ._solution import RESULTS


DENSE_MAX = 200
"""States up to this size get dense linear algebra by default (LU of the
materialised Jacobian), larger ones matrix-free GMRES: forming and factorising
`f_y` costs O(n³), a Krylov solve O(n) per iteration."""


def check_positive_int(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")


def _check_tols(name, rtol, atol):
    for label, tol in (("rtol", rtol), ("atol", atol)):
        if tol is not None and isinstance(tol, (int, float)) and not tol > 0:
            raise ValueError(f"`{name}({label}=...)` must be positive, got {tol!r}.")


def check_linear_solver(name, solver):
    if solver is not None and not isinstance(solver, lx.AbstractLinearSolver):
        raise TypeError(
            f"`{name}(linear_solver=...)` must be a lineax solver such "
            f"as `lineax.LU()` or `lineax.GMRES(rtol=1e-8, atol=1e-8)`, got "
            f"{solver!r}."
        )


def default_tol(dtype) -> float:
    # eps**0.6: 4e-10 in float64, 7e-5 in float32. Newton converges quadratically,
    # so the final residual is usually far below this.
    return float(jnp.finfo(dtype).eps) ** 0.6


def tree_dtype(y):
    return jnp.result_type(*jtu.tree_leaves(y))


def _translate(code, ok, named, named_as, otherwise):
    """A search's result in `jaxsens.RESULTS`: `code` is another library's result
    (optimistix's or diffrax's); `ok` there is `successful` here, `named` is
    `named_as`, anything else `otherwise`."""
    return RESULTS.where(
        code == ok,
        RESULTS.successful,
        RESULTS.where(code == named, named_as, otherwise),
    )


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
            return y, jaxsens.RESULTS.successful, {}

    f = lambda t, y, k: k - y
    jax.grad(lambda k: jaxsens.steady_state(f, jnp.zeros(2), k,
                                            method=Picard()).y.sum())(2.0)  # 2.0
    ```
    """

    @abc.abstractmethod
    def find(
        self, field, y0: PyTree[Array], args: PyTree
    ) -> tuple[PyTree[Array], RESULTS, dict[str, Array]]:
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
        O(n³) per step while a Krylov iteration costs one Jacobian-vector
        product (the README's performance section has the crossover). Pass
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
        check_positive_int("Newton(max_steps=...)", self.max_steps)
        _check_tols("Newton", self.rtol, self.atol)
        check_linear_solver("Newton", self.linear_solver)

    def find(self, field, y0, args):
        dtype = tree_dtype(y0)
        rtol = default_tol(dtype) if self.rtol is None else self.rtol
        atol = default_tol(dtype) if self.atol is None else self.atol
        t = jnp.zeros((), dtype)
        linear_solver = self.linear_solver
        if linear_solver is None:
            n = tree_size(y0)
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
        result = _translate(sol.result, optx.RESULTS.successful,
                                  optx.RESULTS.singular, RESULTS.newton_singular,
                                  RESULTS.newton_failed)
        # A "successful" solve that ended on non-finite values is a failure too.
        result = RESULTS.where(
            (result == RESULTS.successful) & ~all_finite(sol.value),
            RESULTS.newton_failed,
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
    `f(y*) = 0` exactly, so `polish` runs Newton from there:
    it starts in Newton's quadratic basin and makes `f(y*)` vanish to round-off.
    If the polish fails (e.g. `f_y` is singular because of a conservation law) the
    integrated state is kept, and `stats["polished"]` is `False`.

    Which solver (default `None`: by state size, like
    [`jaxsens.SteadyStateAdjoint`][]):

    - up to `DENSE_MAX = 200` entries, the implicit `diffrax.Kvaerno3()`. Near a
      steady state an explicit solver's adaptive steps grow until they sit on the
      edge of its stability region, where the state jitters at the tolerance level
      and the steady-state test may never pass, even on mildly stiff systems; an
      implicit solver's steps are not limited by stability, so it settles.
    - above, the explicit `diffrax.Tsit5()`: an implicit solver forms and
      factorises a dense `n × n` Jacobian every step, which dominates the cost of
      large systems. If it does not settle (the `not_steady` error), pass
      `solver=diffrax.Kvaerno3()` and accept the cost, or use
      [`jaxsens.Newton`][] from a good guess.

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
    rtol: float = DEFAULT_TOL
    atol: float = DEFAULT_TOL
    dt0: float | None = None
    max_steps: int = MAX_STEPS
    polish: Newton | None = Newton()

    def __check_init__(self):
        check_positive_int("Integrate(max_steps=...)", self.max_steps)
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
        dtype = tree_dtype(y0)
        solver = self.solver
        if solver is None:
            solver = dfx.Kvaerno3() if tree_size(y0) <= DENSE_MAX else dfx.Tsit5()
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
        result = _translate(sol.result, dfx.RESULTS.event_occurred,
                                  dfx.RESULTS.max_steps_reached, RESULTS.not_steady,
                                  RESULTS.integration_failed)
        result = RESULTS.where(
            all_finite(y), result, RESULTS.integration_failed
        )
        stats = {"num_steps": jnp.asarray(sol.stats["num_steps"])}
        if self.polish is None:
            return y, result, stats
        # The integrated state already meets the steady-state criterion, so a
        # failed polish (e.g. a singular `f_y`: a conservation law) keeps it; the
        # gradient then reports the singular `f_y` itself.
        y_polished, polish_result, polish_stats = self.polish.find(field, y, args)
        polished = (polish_result == RESULTS.successful) & (
            result == RESULTS.successful
        )
        y = jtu.tree_map(lambda a, b: jnp.where(polished, a, b), y_polished, y)
        stats = stats | polish_stats | {"polished": polished}
        return y, result, stats
