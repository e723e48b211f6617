"""Problems of the crossover study : a field family with state size `n`
and parameter count `p` set independently.

- `"mlp"` (explicit, Tsit5): `y' = -y/2 + (y₋ − y₊)/2 + U tanh(V y + b)`, where
  `y₋, y₊` are `y` rolled by ±1 (a fixed, parameter-free, O(n) skew coupling) and
  `U` (n×h), `V` (h×n), `b` (h) are the parameters: `p = 2 n h + h`.
- `"mlp_t10"`: `"mlp"` on t ∈ [0, 10] (5 save times): ~10× the steps, to see how
  the crossover moves when per-call overheads matter less.
- `"few"` (explicit, Tsit5): the same coupling plus `θ₀ tanh(θ₁ y + θ₂) + θ₃`:
  `p = 4` whatever `n` (large state, few parameters).
- `"stiff"` (Kvaerno5): `y' = -Λ y + (y₋ − y₊)/2 + U tanh(V y + b)` with the decay
  rates `Λ` log-spaced in [1, 10³] (stiffness ratio 10³ on a unit horizon;
  Tsit5 would need ~400 steps, Kvaerno5 takes about 10).

t ∈ [0, 1] (`mlp_t10`: [0, 10]), 5 save times (t0 = ts[0] = 0), loss `Σ y(t_k)²`,
float64, rtol = atol = 1e-6. The parameters are passed as `args` (a dict), so `Auto`
counts them; the field is a plain function (the coupling is a constant).
"""

import dataclasses

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np


NUM_TIMES = 5
T1 = 1.0


@dataclasses.dataclass(frozen=True)
class CrossoverProblem:
    family: str
    n: int
    h: int
    field: object
    y0: jax.Array
    ts: jax.Array
    params: dict
    stiff: bool

    @property
    def p(self) -> int:
        return sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(self.params))

    def loss(self, ys):
        return jnp.sum(ys**2)


def _coupling(y):
    return 0.5 * (jnp.roll(y, 1) - jnp.roll(y, -1))


def _mlp_field(decay):
    def field(t, y, a):
        return -decay * y + _coupling(y) + a["U"] @ jnp.tanh(a["V"] @ y + a["b"])

    return field


def _few_field(t, y, a):
    th = a["theta"]
    return -0.5 * y + _coupling(y) + th[0] * jnp.tanh(th[1] * y + th[2]) + th[3]


def make(family: str, n: int, h: int = 1, *, seed: int = 0) -> CrossoverProblem:
    """One grid point: `family` in `{"mlp", "few", "stiff"}`, state size `n`,
    hidden width `h` (ignored by `"few"`)."""
    ku, kv, kb, ky = jr.split(jr.key(seed), 4)
    dtype = jnp.float64
    y0 = jr.normal(ky, (n,), dtype) / np.sqrt(n)
    t1 = 10.0 if family == "mlp_t10" else T1
    ts = jnp.linspace(0.0, t1, NUM_TIMES, dtype=dtype)
    if family == "few":
        params = {"theta": jnp.array([0.3, 1.0, 0.1, 0.05], dtype)}
        return CrossoverProblem(family, n, 0, _few_field, y0, ts, params, False)
    params = {
        "U": 0.5 * jr.normal(ku, (n, h), dtype) / np.sqrt(h),
        "V": jr.normal(kv, (h, n), dtype) / np.sqrt(n),
        "b": 0.1 * jr.normal(kb, (h,), dtype),
    }
    if family in ("mlp", "mlp_t10"):
        decay = 0.5
    elif family == "stiff":
        decay = jnp.asarray(np.logspace(0.0, 3.0, n) if n > 1 else [1e3], dtype)
    else:
        raise ValueError(f"unknown family {family!r}")
    return CrossoverProblem(
        family, n, h, _mlp_field(decay), y0, ts, params, family == "stiff"
    )
