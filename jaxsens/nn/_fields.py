"""Vector fields `f(t, y, args) -> dy/dt` as Equinox modules."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._mlp import cast_like, check_sizes, make_mlp


class MLPField(eqx.Module):
    """A neural vector field `dy/dt = MLP(y)` on a state vector.

    **Arguments:**

    - `state_size`: the length `n` of the state `y`.
    - `width`, `depth`: hidden-layer width and number of hidden layers (`depth=3,
        width=10` is `n→10→10→10→n`).
    - `activation`: applied after each hidden layer (default `jax.nn.softplus`;
        smooth activations give smooth fields, which adaptive solvers reward).
    - `init_scale`: the gain of the Glorot-uniform weight initialisation (biases
        start at zero). Small values (≈0.1) start training from a nearly-zero field,
        whose solves take few steps.
    - `dtype`: parameter dtype (default: JAX's default float).
    - `key`: a `jax.random` key.

    **Returns:** a Module, called as `field(t, y, args)`; `t` and `args` are ignored.

    **Example:**

    ```python
    import jax.numpy as jnp, jax.random as jr, jaxsens
    field = jaxsens.nn.MLPField(2, width=16, depth=2, key=jr.key(0))
    ys = jaxsens.solve(field, jnp.array([1.0, 0.0]), jnp.linspace(0.0, 1.0, 5)).ys
    ```
    """

    mlp: eqx.nn.MLP

    def __init__(self, state_size: int, *, width: int = 32, depth: int = 2,
                 activation: Callable = jax.nn.softplus, init_scale: float = 1.0,
                 dtype=None, key: PRNGKeyArray):
        check_sizes("MLPField", state_size=state_size, width=width, depth=depth)
        self.mlp = make_mlp(state_size, state_size, width, depth, activation,
                            init_scale, dtype, key)

    def __call__(self, t, y: Float[Array, " n"], args=None) -> Float[Array, " n"]:
        if jnp.shape(y) != (self.mlp.in_size,):
            raise ValueError(
                f"`MLPField` expects a state of shape ({self.mlp.in_size},), got "
                f"{jnp.shape(y)}. (For a batch of states, `jax.vmap` the solve or use "
                "`NeuralODE.batched`.)"
            )
        return self.mlp(y)


class ControlledField(eqx.Module):
    """A neural field driven by a control input: `dy/dt = MLP([y; u(t)])`.

    The control `u` is the solve's `args`: a `jaxsens.Control` (or any callable
    `t -> u`), so one field serves every control, a batch of controls is a
    `jax.vmap` over `args`, and gradients reach the control's values too.

    **Arguments:**

    - `state_size`, `control_size`: lengths of `y` and of `u(t)` (a scalar control
        has size 1).
    - `width`, `depth`, `activation`, `init_scale`, `dtype`, `key`: as `MLPField`.

    **Returns:** a Module, called as `field(t, y, control)`.

    **Example:** a 2-state model driven by one control input.

    ```python
    import jax, jax.numpy as jnp, jax.random as jr, jaxsens
    field = jaxsens.nn.ControlledField(2, 1, width=10, depth=3,
                                       activation=jax.nn.selu, init_scale=0.1,
                                       key=jr.key(0))
    ts = jnp.linspace(0.0, 10.0, 20)
    u = jaxsens.Control(ts, jr.normal(jr.key(1), (20,)))
    ys = jaxsens.solve(field, jnp.zeros(2), ts, u).ys      # (20, 2)
    ```
    """

    mlp: eqx.nn.MLP
    state_size: int = eqx.field(static=True)
    control_size: int = eqx.field(static=True)

    def __init__(self, state_size: int, control_size: int, *, width: int = 32,
                 depth: int = 2, activation: Callable = jax.nn.softplus,
                 init_scale: float = 1.0, dtype=None, key: PRNGKeyArray):
        check_sizes("ControlledField", state_size=state_size,
                    control_size=control_size, width=width, depth=depth)
        self.state_size = state_size
        self.control_size = control_size
        self.mlp = make_mlp(state_size + control_size, state_size, width, depth,
                            activation, init_scale, dtype, key)

    def __call__(self, t, y: Float[Array, " n"], args) -> Float[Array, " n"]:
        if not callable(args):
            raise TypeError(
                "`ControlledField` reads the control from `args`: pass a "
                "`jaxsens.Control` (or a callable `t -> u`) as the solve's `args`, "
                f"got {type(args).__name__}."
            )
        if jnp.shape(y) != (self.state_size,):
            raise ValueError(
                f"`ControlledField` expects a state of shape ({self.state_size},), "
                f"got {jnp.shape(y)}."
            )
        u = jnp.ravel(args(t))
        if u.shape != (self.control_size,):
            raise ValueError(
                f"`ControlledField(control_size={self.control_size})` got a control "
                f"with {u.shape[0]} channels at time t."
            )
        return self.mlp(jnp.concatenate([y, cast_like(u, y)]))


class UDE(eqx.Module):
    """A universal differential equation: known physics plus a learned correction,
    `dy/dt = mechanistic(t, y, args) + neural(t, y, args)` (Rackauckas et al. 2020,
    "Universal differential equations for scientific machine learning").

    Both parts are trained together: every inexact array in `mechanistic` (e.g.
    rate constants held by an `eqx.Module`) receives a gradient along with the
    network's weights. Start the network near zero (`init_scale` ≈ 0.1) so that
    training begins from the mechanistic model.

    **Arguments:**

    - `mechanistic`: the known vector field `f(t, y, args)`, a Module (trainable
        parameters) or a function (fixed).
    - `neural`: the correction, e.g. `MLPField` or `ControlledField`.

    **Returns:** a Module, called as `field(t, y, args)`.

    **Example:**

    ```python
    import jax.numpy as jnp, jax.random as jr, equinox as eqx, jaxsens

    class Decay(eqx.Module):
        rate: jnp.ndarray
        def __call__(self, t, y, args):
            return -self.rate * y

    field = jaxsens.nn.UDE(Decay(jnp.array(0.5)),
                           jaxsens.nn.MLPField(2, width=8, depth=1, init_scale=0.1,
                                               key=jr.key(0)))
    ys = jaxsens.solve(field, jnp.ones(2), jnp.linspace(0.0, 1.0, 4)).ys
    ```
    """

    mechanistic: Callable
    neural: Callable

    def __check_init__(self):
        for name in ("mechanistic", "neural"):
            if not callable(getattr(self, name)):
                raise TypeError(
                    f"`UDE({name}=...)` must be a vector field `f(t, y, args)`, got "
                    f"{getattr(self, name)!r}."
                )

    def __call__(self, t, y, args=None):
        return jax.tree_util.tree_map(
            jnp.add, self.mechanistic(t, y, args), self.neural(t, y, args)
        )
