"""`NeuralODE`: a vector field bundled with how it is solved and differentiated."""

from collections.abc import Callable
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, ArrayLike, Float, PyTree

from .._sensitivity._options import DEFAULT_TOL, MAX_STEPS, SolverSettings
from .._sensitivity.auto import Auto
from .._sensitivity.base import AbstractSensitivity
from .._solution import Solution
from .._solve import solve


class NeuralODE(eqx.Module):
    """A vector field together with its solver, tolerances and sensitivity method:
    `model(y0, ts, args)` returns the trajectory, differentiable w.r.t. the field's
    parameters, `y0` and `args` by the chosen method (neural ODEs: Chen,
    Rubanova, Bettencourt & Duvenaud 2018).

    Only the field's inexact arrays are trainable; the settings are static, so
    `eqx.filter_grad`, `eqx.filter_jit`, `eqx.tree_serialise_leaves` and
    `jaxsens.fit` see exactly the parameters.

    **Arguments:**

    - `field`: the vector field, e.g. `jaxsens.nn.MLPField` or `ControlledField`.
    - `solver`: a diffrax solver (default `diffrax.Tsit5()`).
    - `rtol`, `atol`, `dt0`, `max_steps`: as in `jaxsens.solve`.
    - `sensitivity`: the gradient method (default `jaxsens.Auto()`). For a batch
        of controls solved with `model.batched`, `jaxsens.Discrete()` is usually
        the fastest (see the README's performance section).

    **Returns:** a Module; `model(y0, ts, args)` gives `ys` of shape
    `(len(ts), *y0.shape)`, `model.solve(...)` the full `jaxsens.Solution`, and
    `model.batched(...)` a batch solved with one shared step size. The settings
    are static fields: change one with `dataclasses.replace(model, sensitivity=...)`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp, jax.random as jr, equinox as eqx, jaxsens

    model = jaxsens.nn.NeuralODE(
        jaxsens.nn.MLPField(2, width=16, depth=2, key=jr.key(0)),
        sensitivity=jaxsens.InterpolatingAdjoint())
    ts = jnp.linspace(0.0, 1.0, 8)
    grads = eqx.filter_grad(lambda m: jnp.sum(m(jnp.ones(2), ts) ** 2))(model)
    ```
    """

    field: Callable
    # `SolverSettings`' fields, declared again because they are this Module's
    # public attributes (`model.rtol`, `dataclasses.replace(model, rtol=...)`);
    # `__init__` sets them from one `SolverSettings`, `solve` hands them on as one.
    solver: dfx.AbstractSolver = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    dt0: float | None = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    sensitivity: AbstractSensitivity = eqx.field(static=True)

    def __init__(self, field: Callable, *, solver: dfx.AbstractSolver | None = None,
                 rtol: float = DEFAULT_TOL, atol: float = DEFAULT_TOL,
                 dt0: float | None = None, max_steps: int = MAX_STEPS,
                 sensitivity: AbstractSensitivity | None = None):
        if not callable(field):
            raise TypeError(
                "`NeuralODE(field)` needs a vector field `f(t, y, args)`, got "
                f"{field!r}."
            )
        self.field = field
        # Its defaults (`solver=None` is Tsit5) and checks, as `solve` has them.
        settings = SolverSettings(solver, rtol, atol, dt0, max_steps)
        for name, value in settings.keywords().items():
            setattr(self, name, value)
        self.sensitivity = Auto() if sensitivity is None else sensitivity

    def solve(self, y0: PyTree[ArrayLike], ts: Float[ArrayLike, " times"],
              args: PyTree = None, *, batch: tuple | None = None) -> Solution:
        """The full `jaxsens.Solution` of `dy/dt = field(t, y, args)` from `y0`
        (`batch` as for [`jaxsens.solve`][])."""
        return solve(self.field, y0, ts, args, sensitivity=self.sensitivity,
                     batch=batch, **SolverSettings.of(self).keywords())

    def __call__(self, y0: PyTree[ArrayLike], ts: Float[ArrayLike, " times"],
                 args: PyTree = None) -> PyTree[Array]:
        return self.solve(y0, ts, args).ys

    def batched(self, y0: PyTree[ArrayLike], ts: Float[ArrayLike, " times"],
                args: PyTree = None, *, y0_axis: int | None = 0,
                args_axis: Any = 0) -> PyTree[Array]:
        """Solve a batch of trajectories as one batched state with one shared
        adaptive step size (`jaxsens.solve(..., batch=...)`; see there for when
        this wins).

        **Arguments:** `y0`, `ts`, `args` as for `model(...)`, where `y0` and `args`
        carry a leading batch axis unless their axis is `None`: `y0_axis=None`
        starts every member from the same `y0`; `args_axis` is a `jax.vmap` axis
        spec (default `0`, e.g. a `Control.stack`).

        **Returns:** `ys` with shape `(B, len(ts), ...)`, as
        `jax.vmap(model, in_axes=(y0_axis, None, args_axis))(y0, ts, args)` would
        give.

        **Example:**

        ```python
        import jax.numpy as jnp, jax.random as jr, jaxsens
        model = jaxsens.nn.NeuralODE(
            jaxsens.nn.ControlledField(2, 1, width=8, depth=1, key=jr.key(0)))
        ts = jnp.linspace(0.0, 1.0, 10)
        us = jaxsens.Control.stack(
            [jaxsens.Control(ts, v) for v in jr.normal(jr.key(1), (4, 10))])
        model.batched(jnp.zeros(2), ts, us, y0_axis=None).shape   # (4, 10, 2)
        ```
        """
        if y0_axis not in (0, None):
            raise ValueError(f"`y0_axis` must be 0 or None, got {y0_axis!r}.")
        ys = self.solve(y0, ts, args, batch=(y0_axis, args_axis)).ys
        return jtu.tree_map(lambda y: jnp.swapaxes(y, 0, 1), ys)

