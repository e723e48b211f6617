"""The MLP every field in `jaxsens.nn` is built from."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
from jaxtyping import PRNGKeyArray


def check_sizes(name: str, **sizes: int) -> None:
    for arg, v in sizes.items():
        low_ok = 0 if arg == "depth" else 1
        if isinstance(v, bool) or not isinstance(v, int) or v < low_ok:
            low = "a non-negative" if arg == "depth" else "a positive"
            raise ValueError(f"`{name}({arg}=...)` must be {low} int, got {v!r}.")


def make_mlp(
    in_size: int,
    out_size: int,
    width: int,
    depth: int,
    activation: Callable,
    init_scale: float,
    dtype,
    key: PRNGKeyArray,
) -> eqx.nn.MLP:
    """`eqx.nn.MLP` with `depth` hidden layers of `width`, no final activation,
    Glorot-uniform weights times `init_scale` (Lux's `glorot_uniform(gain=...)`) and
    zero biases."""
    dtype = jnp.result_type(float) if dtype is None else dtype
    mlp = eqx.nn.MLP(in_size, out_size, width, depth, activation=activation,
                     key=key, dtype=dtype)
    keys = jr.split(key, len(mlp.layers))

    def glorot(w, k):
        fan_out, fan_in = w.shape
        limit = init_scale * jnp.sqrt(6.0 / (fan_in + fan_out))
        return jr.uniform(k, w.shape, dtype, -limit, limit)

    weights = [glorot(layer.weight, k)
               for layer, k in zip(mlp.layers, keys, strict=True)]
    biases = [jnp.zeros_like(layer.bias) for layer in mlp.layers]
    mlp = eqx.tree_at(lambda m: [layer.weight for layer in m.layers], mlp, weights)
    return eqx.tree_at(lambda m: [layer.bias for layer in m.layers], mlp, biases)


def num_params(tree) -> int:
    """The number of trainable scalars (inexact-array entries) in `tree`."""
    return sum(x.size for x in jtu.tree_leaves(eqx.filter(tree, eqx.is_inexact_array)))


def cast_like(x, y):
    """`x` in `y`'s floating dtype (keeps float32 models float32 under x64)."""
    return jax.lax.convert_element_type(x, jnp.result_type(y))
