"""The settings of a solve: how it steps in time (`SolverSettings`, as a user sets
them) and everything a sensitivity method reads from one call (`SolveOptions`)."""

import dataclasses
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array


DEFAULT_TOL = 1e-6
MAX_STEPS = 16**3


def _default_solver(solver):
    return dfx.Tsit5() if solver is None else solver


class SolverSettings(eqx.Module):
    """How a solve steps in time, as a user sets it: the one declaration of the
    settings `jaxsens.solve` takes as keywords, `jaxsens.nn.NeuralODE` stores and
    `jaxsens.explain` hands on, with their defaults and their checks.

    `solver=None` is `diffrax.Tsit5()`. `rtol`/`atol=None`: not given (`solve`
    then uses `DEFAULT_TOL`, or the step-size controller's). `dt0=None`: chosen
    by diffrax. Python numbers are checked here; traced ones (only `solve` gets
    them) by `checked_values`. `solve` resolves these into `SolveOptions`.
    """

    solver: dfx.AbstractSolver = eqx.field(default=None, converter=_default_solver)
    rtol: float | None = None
    atol: float | None = None
    dt0: float | None = None
    max_steps: int = eqx.field(static=True, default=MAX_STEPS)

    def __check_init__(self):
        if not isinstance(self.solver, dfx.AbstractSolver):
            raise TypeError(
                "`solver` must be a diffrax solver such as `diffrax.Tsit5()`, got "
                f"{self.solver!r}."
            )
        if not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(
                f"`max_steps` must be a positive int, got {self.max_steps!r}."
            )
        for name in ("rtol", "atol"):
            tol = getattr(self, name)
            if isinstance(tol, (int, float)) and not tol > 0:
                raise ValueError(f"`{name}` must be positive, got {tol!r}.")
        if isinstance(self.dt0, (int, float)) and not self.dt0 > 0:
            raise ValueError(
                "`dt0` must be positive (the first step size, forwards in time), got "
                f"{self.dt0!r}. Leave it out to have it chosen automatically."
            )

    def checked_values(self) -> "SolverSettings":
        """These settings with a traced `rtol`, `atol` or `dt0` checked on its
        value (under `jit`), as `__check_init__` checks Python numbers."""
        def check(x, message):
            if x is None or isinstance(x, (int, float)):
                return x
            return eqx.error_if(x, ~(jnp.asarray(x) > 0), message)

        return dataclasses.replace(
            self,
            rtol=check(self.rtol, "`rtol` must be positive."),
            atol=check(self.atol, "`atol` must be positive."),
            dt0=check(self.dt0, "`dt0` must be positive (the first step size, "
                      "forwards in time). Leave it out to have it chosen "
                      "automatically."),
        )

    def keywords(self) -> dict[str, Any]:
        """These settings as keywords of `jaxsens.solve` (and of `SolveOptions`)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def of(cls, obj) -> "SolverSettings":
        """The settings held by `obj` (e.g. a `NeuralODE`) as attributes of the
        same names."""
        return cls(**{f.name: getattr(obj, f.name) for f in dataclasses.fields(cls)})


class SolveOptions(eqx.Module):
    """The settings of one `jaxsens.solve` call, handed to a sensitivity method.

    `solver`, `rtol`, `atol`, `dt0`, `max_steps`: a `SolverSettings`' values as
    `solve` resolved them (`SolveOptions(..., **settings.keywords())`): the
    tolerances in use, never `None` (the step-size controller's when one was
    given), possibly traced. They are fields of their own, not one
    `SolverSettings` field, because every method reads them (`options.rtol`).
    `static_times` is `(t0, ts)` as Python floats when both were known at trace
    time (not traced; at most `STATIC_TIMES_MAX` save times), else `None`: a
    method may then decide things about the grid in Python instead of tracing
    both branches of a `lax.cond` (`LinearExpm`: uniform or not). `y0_traced`:
    whether `y0` was a JAX tracer when `solve` was called (so whether it may be
    differentiated; `Auto` counts it then). `jump_ts`: sorted times at which the
    field is discontinuous, which every solve steps exactly to (forward and
    backward), or `None`. `running_cost`: the state is `(y, c)` with `c` the
    running cost's integral (`jaxsens.solve(..., running_cost=g)`); error norms
    then take the larger of the two parts' RMS (`state_norm`). `dense`: the
    forward solve keeps diffrax's dense output (`solve(..., dense=True)`).
    `controller`: the user's diffrax step-size controller
    (`solve(..., stepsize_controller=...)`) with its own `jump_ts` moved into
    `jump_ts`, or `None` for a `PIDController` of `rtol`/`atol`; only the forward
    diffrax solves use it (`forward_controller`), the backward loop builds its
    own from `rtol`/`atol`, which are then the controller's. `progress_meter`: a
    diffrax progress meter for the forward diffrax solves and the backward loop
    of a continuous adjoint, or `None`.
    """

    t0: Array | None
    solver: dfx.AbstractSolver
    rtol: float
    atol: float
    dt0: float | None
    max_steps: int = eqx.field(static=True)
    throw: bool = eqx.field(static=True)
    static_times: tuple[float, tuple[float, ...]] | None = eqx.field(
        static=True, default=None
    )
    y0_traced: bool = eqx.field(static=True, default=False)
    jump_ts: Array | None = None
    running_cost: bool = eqx.field(static=True, default=False)
    dense: bool = eqx.field(static=True, default=False)
    controller: dfx.AbstractStepSizeController | None = None
    progress_meter: dfx.AbstractProgressMeter | None = None

    def at(self, t0) -> "SolveOptions":
        """These settings with the start time `t0` (a method's custom rule takes
        `t0` as a differentiable input and the rest as static settings)."""
        return dataclasses.replace(self, t0=t0)


STATIC_TIMES_MAX = 4096


def static_times(t0, ts, dtype):
    """`(t0, ts)` as floats if both are concrete at trace time (see `SolveOptions`),
    rounded to `dtype` as the solve rounds them."""
    try:
        ts = np.asarray(ts).astype(dtype)
        t0 = ts[0] if t0 is None else np.asarray(t0).astype(dtype)
    except (
        jax.errors.TracerArrayConversionError,
        jax.errors.ConcretizationTypeError,
        TypeError,
        ValueError,
    ):
        return None
    # Bad shapes are left to `solve`'s own checks, which name the argument.
    if ts.ndim != 1 or not 1 <= ts.shape[0] <= STATIC_TIMES_MAX or t0.shape != ():
        return None
    return float(t0), tuple(float(t) for t in ts)
