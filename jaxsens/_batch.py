"""A batch of solves as ONE solve of a batched state, with one shared step size."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp


class BatchedField(eqx.Module):
    """`field` applied to each member of a batched state: `dy_i/dt = f(t, y_i, a_i)`.

    Built by [`jaxsens.batched_field`][]; see there.
    """

    field: Callable
    args_axis: Any = eqx.field(static=True, default=0)

    def __check_init__(self):
        if not callable(self.field):
            raise TypeError(
                f"`batched_field(field)` needs a vector field `f(t, y, args)`, got "
                f"{self.field!r}."
            )

    def __call__(self, t, y, args):
        return jax.vmap(self.field, in_axes=(None, 0, self.args_axis))(t, y, args)


def batched_field(field: Callable, args_axis: Any = 0) -> BatchedField:
    """Turn a field for one trajectory into a field for a batch of them, so that a
    whole batch is solved as ONE state with one shared adaptive step size.
    `jaxsens.solve(field, y0, ts, args, batch=(y0_axis, args_axes))` does this
    for you (and broadcasts a shared `y0`, steps to every member's `Control`
    sample times, sums a running cost); use the field itself to hand the batch
    to other code.

    Two ways to solve `B` trajectories (e.g. one per control input):

    - `jax.vmap` of a solve: each member has its own step-size control, but an
        adaptive loop under `vmap` runs until its *slowest* member has finished,
        evaluating every member at every iteration (finished members are masked,
        not skipped). With a continuous adjoint, each member also carries its own
        parameter adjoint `μ` (B × p) on the way back.
    - `jaxsens.solve(f, y0s, ts, args, batch=(0, 0))`: one loop, one step size for
        all members chosen from the RMS error norm over the whole batch (as
        torchdiffeq does with a batched state). The field's vjp w.r.t. the
        parameters sums over the batch inside the solve, so a continuous adjoint
        carries one `μ` of size p. On many controls this is faster than `vmap`,
        most of all with the continuous adjoints (the README's performance
        section has the figures).
        Avoid `Forward()` here: it carries one tangent per input of the whole
        batch, every control sample included.

    The price of sharing: the step size is set by the batch's error norm, an RMS
    over all members, so an individual member's local error is controlled on
    average rather than one by one — tighten `rtol`/`atol` if single members must
    meet the tolerance, and prefer `vmap` when members are very different (one
    stiff member forces small steps on all).

    **Arguments:**

    - `field`: the single-trajectory field `f(t, y, args)`.
    - `args_axis`: the `jax.vmap` axis spec of `args`: `0` (default: one `args`
        per member, e.g. a stack of `jaxsens.Control`s), `None` (shared), or a
        PyTree of those.

    **Returns:** a field `F(t, Y, args)` for the batched state `Y` (leading axis B).
    `jaxsens.solve` returns `ys` with shape `(len(ts), B, ...)`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp, jax.random as jr, jaxsens

    field = jaxsens.nn.ControlledField(2, 1, width=8, depth=1, key=jr.key(0))
    ts = jnp.linspace(0.0, 1.0, 10)
    controls = jaxsens.Control.stack(
        [jaxsens.Control(ts, v) for v in jr.normal(jr.key(1), (4, 10))])
    ys = jaxsens.solve(jaxsens.batched_field(field), jnp.zeros((4, 2)), ts,
                       controls).ys                                # (10, 4, 2)
    ```
    """
    return BatchedField(field, args_axis)


class _SummedCost(eqx.Module):
    """A per-member running cost summed over a batched state."""

    cost: Callable
    args_axis: Any = eqx.field(static=True, default=0)

    def __call__(self, t, y, args):
        per_member = jax.vmap(self.cost, in_axes=(None, 0, self.args_axis))
        return jnp.sum(per_member(t, y, args))


def as_batch(batch, field, y0, args, running_cost):
    """`solve(..., batch=(y0_axis, args_axes))` as one solve of a batched state:
    `(field, y0, running_cost)` for it, `y0` broadcast to the batch when shared."""
    if not (isinstance(batch, tuple) and len(batch) == 2):
        raise TypeError(
            "`batch` must be a pair `(y0_axis, args_axes)` in `jax.vmap`'s `in_axes` "
            "convention, e.g. `batch=(None, 0)` for one `y0` and a stack of `args` "
            f"(such as `jaxsens.Control.stack([...])`); got {batch!r}."
        )
    y0_axis, args_axes = batch
    if y0_axis not in (0, None):
        raise ValueError(
            f"`batch=({y0_axis!r}, ...)`: the batch axis of `y0` must be 0 (one "
            "initial state per member, stacked along the leading axis) or None (one "
            "initial state for every member). Move the axis first, e.g. "
            "`jnp.moveaxis(y0, axis, 0)`."
        )
    try:
        # vmap checks the axes and the sizes, and broadcasts a shared y0.
        y0 = jax.vmap(lambda y, a: y, in_axes=(y0_axis, args_axes))(y0, args)
    except ValueError as e:
        raise ValueError(
            f"`batch={batch!r}` does not fit `y0` and `args` ({e}). Give every "
            "batched leaf the same leading size (the number of members), with at "
            "least one leaf batched."
        ) from e
    if running_cost is not None:
        running_cost = _SummedCost(running_cost, args_axes)
    return BatchedField(field, args_axes), y0, running_cost
