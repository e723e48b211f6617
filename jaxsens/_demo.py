"""`python -m jaxsens demo`: train a controlled neural ODE, compare gradient methods."""

import argparse
import dataclasses
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

from . import _xla
from ._control import Control
from ._fit import fit
from ._sensitivity.backsolve import BacksolveAdjoint
from ._sensitivity.discrete import Discrete
from ._sensitivity.forward import Forward
from ._sensitivity.gauss import GaussAdjoint
from ._sensitivity.interpolating import InterpolatingAdjoint
from ._sensitivity.quadrature import QuadratureAdjoint
from ._solve import solve
from .nn import ControlledField, NeuralODE


METHODS = {
    "Discrete": Discrete(),
    "Forward": Forward(),
    "BacksolveAdjoint": BacksolveAdjoint(),
    "InterpolatingAdjoint": InterpolatingAdjoint(),
    "QuadratureAdjoint": QuadratureAdjoint(),
    "GaussAdjoint": GaussAdjoint(),
}


# Forward mode solves the n × p sensitivity matrix with the state (n Jacobian rows
# per stage): above this many entries it is far slower than the reverse methods
# and the demo does not time it (the demo's 32 controls give 64 × 1250).
_FORWARD_MAX = 20_000


def true_field(t, y, u):
    """A forced Duffing oscillator: x'' = -x - 0.3 x' - 0.5 x³ + u(t)."""
    x, v = y
    return jnp.stack([v, -x - 0.3 * v - 0.5 * x**3 + u(t)])


@eqx.filter_jit
def make_data(n_controls: int, n_times: int, key):
    ts = jnp.linspace(0.0, 6.0, n_times)
    knots = jnp.linspace(0.0, 6.0, 13)
    values = jr.normal(key, (n_controls, 13))
    controls = jax.vmap(lambda v: Control(knots, v, method="cubic"))(values)
    y0 = jnp.zeros((n_controls, 2))
    ys = solve(true_field, y0, ts, controls, rtol=1e-8, atol=1e-8,
               sensitivity=Discrete(), batch=(0, 0)).ys
    return ts, controls, jnp.swapaxes(ys, 0, 1)


def _time(fn, *args, repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    median = float(np.median(times))
    return max(first - median, 0.0), median


def _rel(a, b):
    fa = jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(a)])
    fb = jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(b)])
    return float(jnp.linalg.norm(fa - fb) / jnp.linalg.norm(fb))


def run(argv=None) -> str:
    parser = argparse.ArgumentParser(
        prog="python -m jaxsens demo",
        description="Train a controlled neural ODE on synthetic data (a batch of "
        "control inputs), compare the gradient time of every sensitivity method on "
        "it, and save a PNG of the loss curve and the fitted trajectories.",
    )
    parser.add_argument("--controls", type=int, default=32,
                        help="number of control inputs in the batch (default 32)")
    parser.add_argument("--steps", type=int, default=300,
                        help="training steps (default 300)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timing repeats per method (default 5)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (4 controls, 20 steps, 2 methods timed): "
                        "a smoke test")
    parser.add_argument("--out", default="jaxsens_demo.png",
                        help="where to write the PNG (default ./jaxsens_demo.png)")
    args = parser.parse_args(argv)
    if args.quick:
        args.controls, args.steps, args.repeats, n_times = 4, 20, 2, 20
        methods = {k: METHODS[k] for k in ("Discrete", "GaussAdjoint")}
    else:
        n_times = 40
        methods = METHODS
    if args.controls < 1 or args.steps < 1 or args.repeats < 1:
        parser.error("--controls, --steps and --repeats must be positive.")

    t_start = time.perf_counter()
    print(f"jaxsens demo: {jax.device_count()} {jax.default_backend()} device(s), "
          f"{args.controls} controls, {args.steps} steps")
    if jax.default_backend() == "cpu":
        print(_xla.status())
    key_data, key_model = jr.split(jr.key(0))
    ts, controls, ys_true = make_data(args.controls, n_times, key_data)
    y0 = jnp.zeros(2)
    field = ControlledField(2, 1, width=32, depth=2, init_scale=0.5, key=key_model)
    model = NeuralODE(field, rtol=1e-4, atol=1e-6, sensitivity=Discrete())

    def loss_fn(model, data):
        controls, ys = data
        pred = model.batched(y0, ts, controls, y0_axis=None)
        return jnp.mean((pred - ys) ** 2)

    result = fit(model, loss_fn, (controls, ys_true),
                 optax.chain(
                     optax.clip_by_global_norm(1.0),
                     optax.adam(optax.warmup_cosine_decay_schedule(
                         1e-3, 1e-2, max(1, min(20, args.steps // 5)),
                         args.steps + 1, 5e-4))),
                 args.steps, desc="training")
    print(f"loss {result.losses[0]:.3g} -> {result.losses[-1]:.3g}")

    # Gradient time of each method on the trained model and the same batch.
    rows = []
    ref = None
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(
        eqx.filter(field, eqx.is_inexact_array)))
    n_state = 2 * args.controls
    for name, method in methods.items():
        if isinstance(method, Forward) and n_state * n_params > _FORWARD_MAX:
            rows.append((name, None, None, None))
            continue
        m = dataclasses.replace(result.model, sensitivity=method)
        grad = eqx.filter_jit(eqx.filter_grad(loss_fn))
        compile_s, warm = _time(grad, m, (controls, ys_true), repeats=args.repeats)
        g = grad(m, (controls, ys_true))
        ref = g if ref is None else ref
        rows.append((name, compile_s, warm, _rel(g, ref)))
    print(f"\ngradient of the batch loss ({args.controls} controls solved as one "
          f"batched state, {n_params} parameters), warm median of {args.repeats}; "
          "compile = first call minus warm:")
    print(f"{'method':<22}{'warm (ms)':>11}{'compile (s)':>13}"
          f"{'rel. diff vs Discrete':>23}")
    for name, compile_s, warm, rel in rows:
        if warm is None:
            print(f"{name:<22}  skipped: a {n_state} × {n_params} sensitivity matrix "
                  f"({n_state} Jacobian rows per stage) — many times Discrete's "
                  "time; Auto uses Forward only up to n + p = 8 (Tsit5)")
            continue
        print(f"{name:<22}{warm * 1e3:>11.1f}{compile_s:>13.1f}{rel:>23.1e}")

    out = _plot(result.losses, ts, ys_true, result.model, controls, y0, args.out)
    print(f"\nwrote {out}  (total {time.perf_counter() - t_start:.0f} s)")
    return out


def _plot(losses, ts, ys_true, model, controls, y0, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pred = model.batched(y0, ts, controls, y0_axis=None)
    fine = jnp.linspace(ts[0], ts[-1], 200)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
    ax0.semilogy(losses)
    ax0.set(xlabel="step", ylabel="loss (MSE)", title="training loss")
    for i in range(min(3, ys_true.shape[0])):
        colour = f"C{i}"
        ax1.plot(ts, ys_true[i, :, 0], "o", color=colour, ms=3,
                 label="data" if i == 0 else None)
        ax1.plot(ts, pred[i, :, 0], "-", color=colour,
                 label="neural ODE" if i == 0 else None)
        member = jax.tree_util.tree_map(lambda x, i=i: x[i], controls)
        u = jax.vmap(member)(fine)
        ax1.plot(fine, 0.3 * u, ":", color=colour, lw=0.8,
                 label="0.3 × control" if i == 0 else None)
    ax1.set(xlabel="t", ylabel="x(t)", title="fitted vs true trajectories")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)

