"""The named problems of the suite (`python -m bench`), built from the per-topic
problem modules so every script solves the same problem the same way.

Each builder returns a `SuiteProblem`: what is solved (`field`, `y0`, `ts`, `t0`,
`solver`, tolerances), what the gradient is taken of (`params`, passed as `args`
or being the field itself), the loss of the saved states, and, for the
controlled MLP, `batched=True`: `args` carries a leading axis of controls and the loss
sums over a `jax.vmap` of solves.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp

from . import controls as _controls, core as _core, linear as _linear


@dataclasses.dataclass(frozen=True)
class SuiteProblem:
    name: str
    description: str
    field: Callable
    y0: Any
    ts: jax.Array
    params: Any
    loss: Callable
    grad_of: str = "args"  # or "field"
    args: Any = None  # the non-differentiated args when grad_of == "field"
    t0: float | None = None
    solver: Any = dataclasses.field(default_factory=dfx.Tsit5)
    rtol: float = 1e-6
    atol: float = 1e-6
    max_steps: int = 4096
    batched: bool = False
    linear: bool = False
    # Backward step budget of the continuous adjoints (None: the forward's).
    adjoint_max_steps: int | None = None
    checkpoints: int = 8
    # method name -> why it is not run (hopeless or inapplicable)
    skip: dict = dataclasses.field(default_factory=dict)
    reference: str = "discrete"  # "linear" (LinearExpm), "krylov", "discrete"

    def split(self, params):
        if self.grad_of == "args":
            return self.field, params
        return params, self.args

    @property
    def n(self) -> int:
        return int(sum(x.size for x in jax.tree_util.tree_leaves(self.y0)))

    @property
    def p(self) -> int:
        leaves = jax.tree_util.tree_leaves(
            eqx.filter(self.params, eqx.is_inexact_array)
        )
        return int(sum(x.size for x in leaves))

    def member_args(self):
        """`args` of one solve (the first control when batched)."""
        _, args = self.split(self.params)
        if self.batched:
            return jax.tree_util.tree_map(
                lambda x: x[0] if eqx.is_array(x) else x, args
            )
        return args


# --- problems ------------------------------------------------------------------


def _from(p, name, description, **kw):
    """A `SuiteProblem` from a per-topic problem `p` (field, y0, ts, params, loss)."""
    return SuiteProblem(name, description, p.field, p.y0, p.ts, p.params, p.loss, **kw)


def lotka_volterra(quick=False):
    return _from(_core.lotka_volterra(jnp.float64), "lotka_volterra",
                 "Lotka–Volterra, n = 2, p = 4 (args), t ∈ [0, 10], 50 save times, "
                 "float64, Tsit5")


def _robertson_field(t, y, k):
    y1, y2, y3 = y[0], y[1], y[2]
    return jnp.stack([-k[0] * y1 + k[2] * y2 * y3,
                      k[0] * y1 - k[1] * y2**2 - k[2] * y2 * y3,
                      k[1] * y2**2])


def robertson(quick=False):
    def loss(ys):
        return jnp.sum((ys * jnp.array([1.0, 1e4, 1.0])) ** 2)

    return SuiteProblem(
        "robertson",
        "Robertson's stiff chemical kinetics, n = 3, p = 3 rates "
        "(0.04, 3e7, 1e4), t0 = 0, 15 log-spaced save times in [1e-5, 100], "
        "float64, Kvaerno5, rtol = 1e-6, atol = 1e-10; loss Σ (y·[1, 1e4, 1])²",
        _robertson_field, jnp.array([1.0, 0.0, 0.0]), jnp.logspace(-5.0, 2.0, 15),
        jnp.array([0.04, 3e7, 1e4]), loss, t0=0.0, solver=dfx.Kvaerno5(),
        rtol=1e-6, atol=1e-10,
        skip={"jax odeint": "explicit only (Dopri5): ~10^6 steps on Robertson"},
    )


def linear_rates(quick=False):
    p = _linear.linear_rates()
    return _from(p, "linear_rates",
                 "linear rate system, n = 100, p = 10^4 rates, t ∈ [1, 4], 4 save "
                 "times, float64 (`LinearField`, time-stepped methods Tsit5)",
                 t0=p.t0, linear=True, reference="linear")


def rates_ude(quick=False):
    p = _linear.rates_ude()
    return _from(p, "rates_ude",
                 "UDE on the rate system: rate matrix + MLP 4→5→4 on 25 blocks, "
                 "n = 100, p = 10,049, t ∈ [1, 4], 4 save times, float64, Tsit5",
                 grad_of="field", t0=p.t0)


def _controls_problem(nc):
    field = _controls.field()

    def loss(ys):  # (nc, T, 2)
        return jnp.sum(ys**2) / _controls.NT

    return SuiteProblem(
        f"controls{nc}",
        f"controlled MLP (neural ODE), n = 2, p = 282 (MLP weights), {nc} "
        "control(s) `jax.vmap`ped, t ∈ [0, 10], 100 save times, float32, Tsit5",
        field, _controls.y0(), _controls.times(), field, loss, grad_of="field",
        args=_controls.controls(nc), batched=True,
    )


def controls1(quick=False):
    return _controls_problem(1)


def controls100(quick=False):
    return _controls_problem(100)


def heat2d(quick=False):
    grid = 30 if quick else 100
    skip = {"LinearExpm": f"dense expm of a {grid * grid}² matrix (matrix-free "
                          "field; KrylovExpm is the method)"} if grid > 40 else {}
    p = _linear.heat2d(grid)
    return _from(p, "heat2d",
                 f"2-D heat equation, {grid}×{grid} cells (n = {grid * grid}), a "
                 f"learnable diffusion coefficient per cell (p = {grid * grid}), "
                 "matrix-free `LinearField`, 4 save times in [0.25, 1], float64, "
                 "Tsit5 for time-stepped methods",
                 t0=p.t0, linear=True, reference="krylov", skip=skip)


def long_horizon(quick=False):
    steps = 1_000 if quick else 10_000
    skip = {} if quick else {
        m: "hopeless: measured 16 s per gradient at 10^3 steps (Python-level "
        "stepping), so ~160 s at 10^4"
        for m in ("torchdiffeq odeint", "torchdiffeq odeint_adjoint")}
    p = _core.long_solve(steps)
    return _from(p, "long_horizon",
                 f"memory case: n = 64, p = 10,336, ~{steps} Tsit5 steps, 101 save "
                 "times, float64 (`bench/problems/core.py`); the adjoints' backward "
                 f"budget max_steps = {3 * steps + 1000}, checkpoints = 16",
                 grad_of="field", max_steps=p.max_steps,
                 adjoint_max_steps=3 * steps + 1000, checkpoints=16, skip=skip)


REGISTRY = {
    "linear_rates": linear_rates,
    "rates_ude": rates_ude,
    "controls1": controls1,
    "controls100": controls100,
    "lotka_volterra": lotka_volterra,
    "robertson": robertson,
    "heat2d": heat2d,
    "long_horizon": long_horizon,
}


def cast64(tree):
    return jax.tree_util.tree_map(
        lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, tree
    )
