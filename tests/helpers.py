"""Problems and methods shared by the tests (diffrax's `helpers.py` habit).

Every problem has trainable leaves in its field (an `eqx.Module`), in `y0` and in
`args`, several save times including `t0`, and a scalar loss of the whole
trajectory, so one gradient exercises every cotangent path.
"""

import dataclasses
import functools
from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
from jax.flatten_util import ravel_pytree

import jaxsens


class Decay(eqx.Module):
    rate: jax.Array

    def __call__(self, t, y, b):
        return -self.rate * y + b


class LotkaVolterra(eqx.Module):
    alpha_beta: jax.Array

    def __call__(self, t, y, gamma_delta):
        x, z = y
        a, b = self.alpha_beta
        c, d = gamma_delta
        return jnp.stack([a * x - b * x * z, d * x * z - c * z])


class NeuralField(eqx.Module):
    mlp: eqx.nn.MLP

    def __call__(self, t, y, scale):
        return self.mlp(y) - scale * y


class Robertson(eqx.Module):
    log_k12: jax.Array

    def __call__(self, t, y, log_k3):
        k1, k2 = jnp.exp(self.log_k12)
        k3 = jnp.exp(log_k3)
        y1, y2, y3 = y
        return jnp.stack(
            [
                -k1 * y1 + k3 * y2 * y3,
                k1 * y1 - k2 * y2**2 - k3 * y2 * y3,
                k2 * y2**2,
            ]
        )


class Oscillator(eqx.Module):
    """A PyTree state: {"x": position (2,), "v": velocity (2,)}."""

    omega: jax.Array

    def __call__(self, t, y, damping):
        return {"x": y["v"], "v": -(self.omega**2) * y["x"] - damping * y["v"]}


def sum_squares(ys):
    return sum(jnp.sum(jnp.sin(1.0 + leaf) * leaf) for leaf in jtu.tree_leaves(ys))


@dataclasses.dataclass(frozen=True)
class Problem:
    name: str
    field: eqx.Module
    y0: object
    ts: jax.Array
    args: object
    solver: dfx.AbstractSolver = dfx.Tsit5()
    tol: float = 1e-10
    rel: float = 1e-6  # accepted relative error against the references
    fd_tol: float = 1e-12  # forward tolerance for the finite-difference reference
    fd_eps: float = 1e-4  # its relative step (`central_fd`)
    closed_form: Callable | None = None
    # A step budget no larger than the dense output the interpolating adjoints keep
    # (256 steps for these states), so that their fallback for longer solves is not
    # compiled into every test (`tests/test_backward.py` tests it); tighter
    # tolerances than `tol` (the finite-difference references) get a large budget.
    max_steps: int = 256

    def loss(self, method, field=None, y0=None, args=None, tol=None):
        tol = self.tol if tol is None else tol
        sol = jaxsens.solve(
            self.field if field is None else field,
            self.y0 if y0 is None else y0,
            self.ts,
            self.args if args is None else args,
            solver=self.solver,
            rtol=tol,
            atol=tol,
            sensitivity=method,
            max_steps=self.max_steps if tol >= self.tol else 16**4,
        )
        return sum_squares(sol.ys)

    def inputs(self):
        return (self.field, self.y0, self.args)


def _mlp_field():
    mlp = eqx.nn.MLP(2, 2, 8, 1, activation=jnp.tanh, key=jr.PRNGKey(0))
    mlp = jtu.tree_map(lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, mlp)
    return NeuralField(mlp)


def problems() -> dict[str, Problem]:
    f64 = jnp.float64
    decay = Problem(
        "decay",
        Decay(jnp.array([0.7, 1.3], f64)),
        jnp.array([1.0, -0.5], f64),
        jnp.linspace(0.0, 2.0, 5),
        jnp.array([0.2, 0.1], f64),
        closed_form=lambda k, y0, b, t: b / k + (y0 - b / k) * jnp.exp(-k * t),
    )
    lv = Problem(
        "lotka_volterra",
        LotkaVolterra(jnp.array([1.5, 1.0], f64)),
        jnp.array([1.0, 1.0], f64),
        jnp.linspace(0.0, 4.0, 6),
        jnp.array([3.0, 1.0], f64),
    )
    neural = Problem(
        "neural_ode",
        _mlp_field(),
        jnp.array([0.5, -0.3], f64),
        jnp.linspace(0.0, 1.5, 4),
        jnp.array(0.3, f64),
    )
    stiff = Problem(
        "robertson_stiff",
        Robertson(jnp.log(jnp.array([0.04, 3e7], f64))),
        # y2 starts near its quasi-steady value (~3.6e-5), so the solve skips the
        # initial transient (hundreds of rejected steps) but stays stiff: ~140
        # steps at `tol`, inside the shared step budget.
        jnp.array([1.0, 3.6e-5, 0.0], f64),
        jnp.array([0.0, 0.1, 1.0, 10.0], f64),
        jnp.log(jnp.array(1e4, f64)),
        solver=dfx.Kvaerno5(),
        tol=1e-8,
        rel=1e-4,
        fd_tol=1e-11,
        fd_eps=1e-5,  # below y2(0): a negative concentration blows up
    )
    pytree = Problem(
        "pytree_state",
        Oscillator(jnp.array(2.0, f64)),
        {"x": jnp.array([1.0, 0.0], f64), "v": jnp.array([0.0, 0.5], f64)},
        jnp.linspace(0.0, 2.0, 5),
        jnp.array(0.3, f64),
    )
    return {p.name: p for p in (decay, lv, neural, stiff, pytree)}


PROBLEMS = problems()

METHODS = {
    "Discrete": jaxsens.Discrete(),
    "Forward": jaxsens.Forward(),
    "BacksolveAdjoint": jaxsens.BacksolveAdjoint(),
    "InterpolatingAdjoint": jaxsens.InterpolatingAdjoint(),
    "InterpolatingAdjoint(checkpoints=3)": jaxsens.InterpolatingAdjoint(checkpoints=3),
    "QuadratureAdjoint": jaxsens.QuadratureAdjoint(),
    "GaussAdjoint": jaxsens.GaussAdjoint(),
}


def rel_err(a, b) -> float:
    """Relative error ‖a − b‖ / ‖b‖ of two PyTrees (flattened)."""
    fa, _ = ravel_pytree(a)
    fb, _ = ravel_pytree(b)
    return float(jnp.linalg.norm(fa - fb) / jnp.linalg.norm(fb))


def trainable(tree):
    return eqx.filter(tree, eqx.is_inexact_array)


def central_fd(fn, tree, eps=1e-5):
    """Central finite differences of scalar `fn` w.r.t. every inexact leaf of `tree`,
    with a relative step `eps·max(1, |x|)`."""
    params, static = eqx.partition(tree, eqx.is_inexact_array)
    flat, unravel = ravel_pytree(params)
    flat = np.asarray(flat)
    loss = jax.jit(lambda x: fn(eqx.combine(unravel(x), static)))
    grad = np.zeros_like(flat)
    for i in range(flat.size):
        h = eps * max(1.0, abs(flat[i]))
        e = np.zeros_like(flat)
        e[i] = h
        grad[i] = (float(loss(flat + e)) - float(loss(flat - e))) / (2 * h)
    return unravel(jnp.asarray(grad))


# --- reference gradients of the problems (compiled once per process) ---------------


@functools.cache
def grad_fn(name, method):
    """The jitted gradient of problem `name`'s loss w.r.t. (field, y0, args) by
    `method`: one per pair, so tests of the same pair share one compilation."""
    problem = PROBLEMS[name]

    def loss(inputs):
        field, y0, args = inputs
        return problem.loss(method, field, y0, args)

    return eqx.filter_jit(eqx.filter_grad(loss))


@functools.cache
def reference(name):
    """`Discrete`'s gradient of problem `name` at its own tolerance."""
    return grad_fn(name, jaxsens.Discrete())(PROBLEMS[name].inputs())


@functools.cache
def finite_differences(name):
    """Central finite differences of problem `name`'s loss (`Discrete`, at
    `fd_tol`)."""
    problem = PROBLEMS[name]

    def loss(inputs):
        field, y0, args = inputs
        return problem.loss(jaxsens.Discrete(), field, y0, args, tol=problem.fd_tol)

    return central_fd(loss, problem.inputs(), eps=problem.fd_eps)


def assert_matches_references(name, got):
    """`got` (gradients w.r.t. field, y0, args) against `Discrete` at tight
    tolerance and central finite differences, by relative error."""
    problem = PROBLEMS[name]
    ref, fd = reference(name), finite_differences(name)
    for part, g, r, f in zip(("field", "y0", "args"), got, ref, fd, strict=True):
        g, r, f = trainable(g), trainable(r), trainable(f)
        assert rel_err(g, r) < problem.rel, (part, "vs Discrete", rel_err(g, r))
        err = rel_err(g, f)
        assert err < problem.rel, (part, "vs finite differences", err)
