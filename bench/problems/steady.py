"""Problems of the steady-state benchmark (issue 5).

- `reaction_diffusion(n)`: `n` cells on a line, each producing a species at its
  own rate with product inhibition and degrading it, coupled by diffusion:

      y_i' = D (y_{i-1} − 2 y_i + y_{i+1}) + p_i / (1 + y_i) − k y_i

  (zero-flux ends). Parameters: the `n` production rates `p` and `log D`,
  `log k` (`n + 2` in all, the field's leaves). The right-hand side is strictly
  decreasing in each `y_i` and diffusion is dissipative, so there is exactly one
  steady state and it attracts every positive start. The loss is a fixed
  weighted sum of the steady state, `Σ w_i y_i*`. Rates (`D = 0.5`, `k = 0.2`)
  make it mildly stiff (diffusion modes up to `4D = 2`, slowest decay ~`k`); an
  explicit solver pays for that on a long solve, which is exactly the cost the
  implicit function theorem avoids.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr


class ReactionDiffusion(eqx.Module):
    prod: jax.Array
    log_d: jax.Array
    log_k: jax.Array

    def __call__(self, t, y, args):
        padded = jnp.concatenate([y[:1], y, y[-1:]])
        lap = padded[:-2] - 2 * y + padded[2:]
        return (jnp.exp(self.log_d) * lap + self.prod / (1 + y)
                - jnp.exp(self.log_k) * y)


@dataclasses.dataclass(frozen=True)
class SteadyProblem:
    """`field` (an `eqx.Module`, its leaves the parameters), the start `y0`, and
    `loss(y) -> scalar` of the steady state (or of the state at a late time)."""

    name: str
    field: ReactionDiffusion
    y0: jax.Array
    weights: jax.Array

    def loss(self, y):
        return jnp.dot(self.weights, y)


def reaction_diffusion(n: int, seed: int = 0) -> SteadyProblem:
    k_prod, k_w = jr.split(jr.key(seed))
    field = ReactionDiffusion(
        prod=jr.uniform(k_prod, (n,), minval=0.5, maxval=1.5),
        log_d=jnp.log(jnp.array(0.5)),
        log_k=jnp.log(jnp.array(0.2)),
    )
    weights = jr.normal(k_w, (n,)) / n
    return SteadyProblem(f"reaction-diffusion n={n}", field, jnp.zeros(n), weights)
