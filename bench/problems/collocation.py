"""Problems of the fitting benchmark (issue 5: collocation and multiple shooting).

- `lotka_volterra_record(n_samples, t_end, noise, seed)`: prey–predator dynamics
  `x' = a x − b x z`, `z' = −c z + d x z` with θ = (1.5, 1.0, 3.0, 1.0) from
  (1, 1), sampled at `n_samples` evenly spaced times on `[0, t_end]` (t_end = 30
  is ~8 periods) with multiplicative Gaussian noise of relative size `noise`.
  The initial guess `THETA0` is 30–35 % off in every parameter. Single shooting
  from `t0` stalls in a local minimum on this record; see
  `tests/test_shooting.py`.
"""

import jax
import jax.numpy as jnp
import jax.random as jr

import jaxsens


THETA = jnp.array([1.5, 1.0, 3.0, 1.0])
THETA0 = jnp.array([1.0, 0.7, 2.0, 0.7])
Y0 = jnp.array([1.0, 1.0])


def lotka_volterra(t, y, theta):
    a, b, c, d = theta
    x, z = y
    return jnp.stack([a * x - b * x * z, -c * z + d * x * z])


def lotka_volterra_record(n_samples=241, t_end=30.0, noise=0.02, seed=0):
    """Returns `(ts, data, clean)`: times `(T,)`, noisy samples `(T, 2)`, and the
    noise-free trajectory."""
    ts = jnp.linspace(0.0, t_end, n_samples)
    clean = jaxsens.solve(lotka_volterra, Y0, ts, THETA, rtol=1e-10, atol=1e-10).ys
    data = clean * (1 + noise * jr.normal(jr.key(seed), clean.shape))
    return ts, data, clean


def param_error(theta: jax.Array) -> jax.Array:
    """Largest relative error over the four parameters."""
    return jnp.max(jnp.abs(theta / THETA - 1))
