"""A neural ODE driven by control inputs (the controlled MLP).

State 2, `u0 = 0`; the field is a 282-parameter MLP `[y; u] 3→10→10→10→2` with
selu, Glorot-uniform weights of gain 0.1 and zero biases (Lux's defaults); float32;
Tsit5 on t ∈ [0, 10] saved at 100 times; each control is the linear interpolation
of 100 standard-normal values at the save times; loss = Σ over controls of
`sum(pred²) / 100`. Tolerances rtol = atol = 1e-6 (jaxsens's defaults; Julia's
would be rtol = 1e-3, atol = 1e-6: pass `rtol=1e-3`).
"""

import jax
import jax.numpy as jnp
import jax.random as jr

import jaxsens


STATE = 2
NT = 100
T1 = 10.0


def field(key=0, dtype=jnp.float32) -> jaxsens.nn.ControlledField:
    """The 282-parameter controlled MLP field."""
    return jaxsens.nn.ControlledField(
        STATE, 1, width=10, depth=3, activation=jax.nn.selu, init_scale=0.1,
        dtype=dtype, key=jr.key(key),
    )


def times(dtype=jnp.float32):
    return jnp.linspace(0.0, T1, NT, dtype=dtype)


def controls(nc: int, key=1, dtype=jnp.float32) -> jaxsens.Control:
    """`nc` linear controls stacked along a leading axis (one PyTree)."""
    ts = times(dtype)
    values = jr.normal(jr.key(key), (nc, NT), dtype)
    return jax.vmap(lambda v: jaxsens.Control(ts, v))(values)


def y0(dtype=jnp.float32):
    return jnp.zeros(STATE, dtype)

