"""Control signals `u(t)`: interpolants over sampled values, as PyTrees."""

from collections.abc import Sequence
from typing import Literal

import diffrax as dfx
import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, ArrayLike, Float, Real


class Control(eqx.Module):
    """A control signal `u(t)` interpolated from samples, differentiable w.r.t. them.

    Linear interpolation uses `diffrax.LinearInterpolation`; cubic uses diffrax's
    Hermite cubic with backward differences (`diffrax.backward_hermite_coefficients`
    + `diffrax.CubicInterpolation`, Morrill et al. 2021), whose coefficients on an
    interval only depend on the neighbouring samples, so they are built on the fly
    from a three-sample window at each evaluation. The only leaves are `ts` and
    `values`: `jax.grad` with respect to `values` (e.g. to optimise the control
    itself with `jaxsens.fit`) is exact, and outside `[ts[0], ts[-1]]` the first or
    last piece is extrapolated.

    Many controls are one PyTree with a leading batch axis (`Control.stack`, or
    `jax.vmap` of the constructor), which `jax.vmap` maps over, e.g. as the `args` of
    a vmapped solve.

    **Arguments:**

    - `ts`: increasing sample times, shape `(T,)`.
    - `values`: samples, shape `(T,)` (scalar control) or `(T, channels)`; must be
        finite (an error is raised under `jit` otherwise).
    - `method`: `"linear"` (default: piecewise linear, a kink at every sample, which
        an adaptive solver pays for in rejected steps) or `"cubic"` (C¹, fewer
        steps; the better choice unless the data really is piecewise linear).

    A `Control` in a solve's `args` (or in its field) has its sample times stepped
    to exactly (`jaxsens.solve`'s `jump_ts`, forward and backward), for both
    methods: each linear sample is a kink, and a cubic's second derivative jumps
    at each sample, which costs a high-order solver rejected steps there too.

    **Returns:** calling `control(t)` gives `u(t)` with shape `values.shape[1:]`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp, jax.random as jr, jaxsens

    ts = jnp.linspace(0.0, 1.0, 11)
    u = jaxsens.Control(ts, jnp.sin(ts), method="cubic")
    u(0.25)                                          # ≈ sin(0.25)
    controls = jaxsens.Control.stack(
        [jaxsens.Control(ts, v) for v in jr.normal(jr.key(0), (3, 11))])
    jax.vmap(lambda c: c(0.5))(controls).shape       # (3,)
    ```
    """

    ts: Real[Array, " times"]
    values: Float[Array, " times *channels"]
    method: Literal["linear", "cubic"] = eqx.field(static=True, default="linear")

    def __init__(
        self,
        ts: Real[ArrayLike, " times"],
        values: Float[ArrayLike, " times *channels"],
        method: Literal["linear", "cubic"] = "linear",
    ):
        if method not in ("linear", "cubic"):
            raise ValueError(
                f"`Control(method=...)` must be 'linear' or 'cubic', got {method!r}."
            )
        ts = jnp.asarray(ts)
        values = jnp.asarray(values)
        if not jnp.issubdtype(values.dtype, jnp.inexact):
            values = values.astype(jnp.result_type(float))
        if ts.ndim != 1 or ts.shape[0] < 2:
            raise ValueError(
                "`Control(ts, values)`: `ts` must be 1-D with at least 2 sample "
                f"times, got shape {ts.shape}. (To stack controls use "
                "`Control.stack([...])`.)"
            )
        if values.ndim < 1 or values.shape[0] != ts.shape[0]:
            raise ValueError(
                "`Control(ts, values)`: `values` must have one row per sample time, "
                f"shape `(len(ts), ...)` = `({ts.shape[0]}, ...)`; got {values.shape}."
            )
        if not jnp.issubdtype(ts.dtype, jnp.floating):
            ts = ts.astype(values.dtype)
        ts = eqx.error_if(
            ts, jnp.any(ts[1:] <= ts[:-1]),
            "`Control(ts, values)`: `ts` must be strictly increasing.",
        )
        values = eqx.error_if(
            values, ~jnp.all(jnp.isfinite(values)),
            "`Control(ts, values)`: `values` contains NaN or inf; fill missing "
            "samples first.",
        )
        self.ts = ts
        self.values = values
        self.method = method

    def __call__(self, t: Real[ArrayLike, ""]) -> Float[Array, "*channels"]:
        if self.method == "linear":
            return dfx.LinearInterpolation(self.ts, self.values).evaluate(t)
        return self._cubic(t)

    def evaluate(self, t: Real[ArrayLike, ""]) -> Float[Array, "*channels"]:
        """`u(t)`, the same as `control(t)`."""
        return self(t)

    def _cubic(self, t):
        n = self.ts.shape[0]
        if n <= 3:
            ts, ys = self.ts, self.values
        else:
            # Interval i's coefficients depend only on samples i-1, i, i+1 (i >= 1;
            # the derivative at t_i is a backward difference) or 0, 1 (i = 0): the
            # window's second interval (its first, for i = 0) is exactly the global
            # spline's interval i, and the window's own search picks it.
            i = jnp.clip(jnp.searchsorted(self.ts, t, side="left") - 1, 0, n - 2)
            start = jnp.clip(i - 1, 0, n - 3)
            ts = lax.dynamic_slice_in_dim(self.ts, start, 3)
            ys = lax.dynamic_slice_in_dim(self.values, start, 3)
        coeffs = dfx.backward_hermite_coefficients(ts, ys)
        return dfx.CubicInterpolation(ts, coeffs).evaluate(t)

    @classmethod
    def stack(cls, controls: Sequence["Control"]) -> "Control":
        """Stack controls of one shape into one `Control` with a leading batch axis
        on `ts` and `values`, to `jax.vmap` over.

        **Arguments:** `controls`, a non-empty sequence of `Control`s with the same
        number of samples, channels and `method`.

        **Returns:** a `Control` whose leaves have a leading axis `len(controls)`.
        Call it only under `jax.vmap` (each member is a `Control`).

        **Example:**

        ```python
        import jax, jax.numpy as jnp, jaxsens
        ts = jnp.linspace(0.0, 1.0, 5)
        cs = jaxsens.Control.stack([jaxsens.Control(ts, ts * k) for k in (1.0, 2.0)])
        jax.vmap(lambda c: c(1.0))(cs)   # [1., 2.]
        ```
        """
        controls = list(controls)
        if not controls:
            raise ValueError("`Control.stack` needs at least one `Control`.")
        for c in controls:
            if not isinstance(c, Control):
                raise TypeError(f"`Control.stack` takes `Control`s, got {c!r}.")
        first = controls[0]
        for c in controls[1:]:
            if c.method != first.method or c.values.shape != first.values.shape:
                raise ValueError(
                    "`Control.stack`: every control needs the same `method` and "
                    f"`values` shape; got {first.method!r} {first.values.shape} and "
                    f"{c.method!r} {c.values.shape}."
                )
        return jtu.tree_map(lambda *xs: jnp.stack(xs), *controls)


def _is_control(x) -> bool:
    return isinstance(x, Control)


def control_knots(tree, stacked: bool = False) -> Array | None:
    """The sample times of every `Control` in `tree` (itself one, or among its
    leaves, inside Modules too), concatenated; `None` if there is none. Stacked
    controls (sample times not 1-D: outside the `vmap` that unstacks them) are
    left out, unless `stacked` (a batch solved as one state, which steps to every
    member's times)."""
    found = [
        jnp.ravel(x.ts) for x in jtu.tree_leaves(tree, is_leaf=_is_control)
        if _is_control(x) and (stacked or jnp.ndim(x.ts) == 1)
    ]
    if not found:
        return None
    return jnp.concatenate([jnp.asarray(t) for t in found])
