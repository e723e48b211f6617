"""Forward by Jacobian columns against Discrete: a large state, a few parameters,
`y0` not differentiated. The measurements behind `Auto`'s `forward_columns_max`.

    taskset -c 1 python -m bench forward_columns     # ~3 min

Field: `y' = -y/2 + (y₋ − y₊)/2 + θ[zone(i)] tanh(y) + 0.05`, a rolled skew
coupling plus a reaction coefficient that is piecewise constant over `p` equal
zones of the state (a field whose cost is O(n) whatever `p`, as for a PDE with a
few coefficients). t ∈ [0, 1], 5 save times, float64, Tsit5, rtol = atol = 1e-6;
the gradient of `Σ y(t_k)²` w.r.t. θ, with `y0` a constant closed over by the
loss (so `Forward` takes `p` Jacobian columns per stage, never `n` rows). Per
point, both methods are compiled, then timed round-robin in one process
(`ROUNDS` calls each); the table gives medians and the ratio, and the relative
difference of the two gradients. Also records what `Auto` picks inside `grad`.

Writes `bench/results/forward_columns.md` and `forward_columns.png`.
"""

import os
import statistics

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import jaxsens
from bench._common import RESULTS_DIR, command, meta_info, ms as fmt_s
from bench._timing import time_fn


STATES = (16, 64, 256, 1024, 4096)
PARAMS = (1, 2, 4, 6, 8)
ROUNDS = 30


def _coupling(y):
    return 0.5 * (jnp.roll(y, 1) - jnp.roll(y, -1))


def zone_problem(n: int, p: int):
    """`(field, y0, ts, theta)` for state size `n` and `p` zone coefficients."""
    zone = jnp.asarray(np.arange(n) * p // n)

    def field(t, y, theta):
        return -0.5 * y + _coupling(y) + theta[zone] * jnp.tanh(y) + 0.05

    y0 = jr.normal(jr.key(0), (n,), jnp.float64) / np.sqrt(n)
    ts = jnp.linspace(0.0, 1.0, 5)
    theta = jnp.linspace(0.2, 0.4, p)
    return field, y0, ts, theta


def point(n: int, p: int) -> dict:
    field, y0, ts, theta = zone_problem(n, p)
    picked = {}

    def grad_of(sens):
        def loss(th):
            sol = jaxsens.solve(field, y0, ts, th, sensitivity=sens)
            picked[type(sens).__name__] = type(sol.sensitivity).__name__
            return jnp.sum(sol.ys**2)

        return jax.jit(jax.grad(loss))

    fns = {"Discrete": grad_of(jaxsens.Discrete()),
           "Forward": grad_of(jaxsens.Forward())}
    grads = {name: jax.block_until_ready(f(theta)) for name, f in fns.items()}
    jax.block_until_ready(grad_of(jaxsens.Auto())(theta))  # records Auto's pick
    times = {name: [] for name in fns}
    for _ in range(ROUNDS):
        for name, f in fns.items():
            times[name].append(time_fn(f, theta, repeats=1)[1])
    med = {name: statistics.median(t) for name, t in times.items()}
    d, f = grads["Discrete"], grads["Forward"]
    return dict(
        n=n, p=p, discrete=med["Discrete"], forward=med["Forward"],
        ratio=med["Forward"] / med["Discrete"],
        rel=float(jnp.linalg.norm(f - d) / jnp.linalg.norm(d)),
        auto=picked["Auto"],
    )


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for n in STATES:
        pts = [r for r in rows if r["n"] == n]
        ax.plot([r["p"] for r in pts], [r["ratio"] for r in pts], "o-",
                label=f"n = {n}")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axvline(jaxsens.Auto().forward_columns_max + 0.5, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("parameters p (y0 not differentiated)")
    ax.set_ylabel("Forward ÷ Discrete (warm median)")
    ax.set_title("Forward by Jacobian columns vs Discrete")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv):
    jax.config.update("jax_enable_x64", True)
    meta = meta_info(command("forward_columns", argv))
    rows = []
    for n in STATES:
        for p in PARAMS:
            r = point(n, p)
            rows.append(r)
            print(f"n={n:5d} p={p}: Discrete {fmt_s(r['discrete'])}, Forward "
                  f"{fmt_s(r['forward'])}, ratio {r['ratio']:.2f}, Auto {r['auto']}",
                  flush=True)
    lines = [
        "# Forward by Jacobian columns against Discrete (y0 not differentiated)",
        "",
        f"Command: `{meta['cmd']}` — {meta['machine']}; {meta['date']}; jaxsens "
        f"{meta['jaxsens']}; {meta['versions']}. Field, problem and timing: the "
        "module docstring of `bench/forward_columns.py`. Warm = median of "
        f"{ROUNDS} round-robin calls.",
        "",
        "| n | p | Discrete | Forward | Forward ÷ Discrete | rel. diff. of gradients "
        "| Auto picks (inside grad) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['p']} | {fmt_s(r['discrete'])} | {fmt_s(r['forward'])} "
            f"| {r['ratio']:.2f} | {r['rel']:.1e} | {r['auto']} |"
        )
    plot(rows, os.path.join(RESULTS_DIR, "forward_columns.png"))
    lines += ["", "![Forward ÷ Discrete](forward_columns.png)"]
    with open(os.path.join(RESULTS_DIR, "forward_columns.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))

