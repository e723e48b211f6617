"""Where the continuous adjoints stand against discrete backprop.

Table A: the dense field `f(t, y, W) = tanh(W y) − 0.1 y` (`W` n×n, p = n²),
5 save times on [0, 1], loss `sum(ys²)`, gradient w.r.t. `W`; float64, Tsit5,
rtol = atol = 1e-6; n = 16, 64, 256, 1024. Table B: seed 002 (282-parameter
controlled MLP, float32, 100 controls, 100 save times), `jax.vmap` over the
controls and one batched state (`jaxsens.batched_field`). Every variant is timed
in the same process (warm median, compile separately), with diffrax's own
adjoints as peers; ratios are to `Discrete`. Memory: XLA's temporary bytes of the
compiled gradient, at 10³–10⁵ forward steps and at two `max_steps`.

    python -m bench adjoints            # tables A, B, memory
    python -m bench adjoints --quick    # n = 16, 256; fewer repeats
    python -m bench.adjoints a          # one table: a, b or memory
"""

import argparse
import datetime
import pathlib
import platform
import sys

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import jaxsens
from bench._timing import fmt_s, pinned, time_fn
from bench.problems import controls as P


jax.config.update("jax_enable_x64", True)

RESULTS_DIR = pathlib.Path(__file__).parent / "results"
ADJOINTS = {
    "Discrete": lambda: jaxsens.Discrete(),
    "Backsolve": lambda: jaxsens.BacksolveAdjoint(),
    "Interpolating": lambda: jaxsens.InterpolatingAdjoint(),
    "Interp. (ckpt)": lambda: jaxsens.InterpolatingAdjoint(checkpoints=4),
    "Gauss": lambda: jaxsens.GaussAdjoint(),
    "Quadrature": lambda: jaxsens.QuadratureAdjoint(),
}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# --- table A -------------------------------------------------------------------


def dense_field(t, y, W):
    return jnp.tanh(W @ y) - 0.1 * y


def table_a_problem(n, seed=0):
    kw, ky = jr.split(jr.key(seed))
    W = jr.normal(kw, (n, n), jnp.float64) / np.sqrt(n)
    y0 = jr.normal(ky, (n,), jnp.float64)
    ts = jnp.linspace(0.0, 1.0, 5, dtype=jnp.float64)
    return W, y0, ts


def table_a_grads(y0, ts, max_steps=4096):
    out = {}
    for name, make in ADJOINTS.items():
        def loss(W, method=make()):
            return jnp.sum(jaxsens.solve(dense_field, y0, ts, W, rtol=1e-6, atol=1e-6,
                                         max_steps=max_steps, sensitivity=method).ys ** 2)
        out[name] = jax.jit(jax.grad(loss))

    def diffrax_loss(W):
        sol = dfx.diffeqsolve(
            dfx.ODETerm(dense_field), dfx.Tsit5(), ts[0], ts[-1], None, y0, args=W,
            saveat=dfx.SaveAt(ts=ts),
            stepsize_controller=dfx.PIDController(rtol=1e-6, atol=1e-6),
            adjoint=dfx.BacksolveAdjoint(), max_steps=max_steps)
        return jnp.sum(sol.ys**2)

    out["diffrax Backsolve"] = jax.jit(jax.grad(diffrax_loss))
    return out


def table_a(ns, repeats):
    rows = []
    for n in ns:
        W, y0, ts = table_a_problem(n)
        fns = table_a_grads(y0, ts)
        row = {"n": n}
        ref = None
        for name, fn in fns.items():
            log(f"  A n={n} {name} …")
            comp, med, _ = time_fn(fn, W, repeats=repeats, min_time=10.0)
            g = np.asarray(fn(W))
            if ref is None:
                ref = g
            err = float(np.linalg.norm(g - ref) / np.linalg.norm(ref))
            row[name] = (med, comp - med, err)
        row["stats"] = gauss_stats(fns["Gauss"], W)
        rows.append(row)
        log(f"  A n={n}: " + ", ".join(
            f"{k} {fmt_s(v[0])}" for k, v in row.items() if isinstance(v, tuple)))
    return rows


def gauss_stats(fn, *args):
    try:
        from jaxsens._sensitivity._backward import backward_stats
    except ImportError:
        return None
    return backward_stats(fn, *args)


def table_a_md(cmd, rows):
    names = [k for k in rows[0] if isinstance(rows[0][k], tuple)]
    out = [f"`{cmd}`", "", "Warm median (× Discrete) · compile s · rel. diff to Discrete", "",
           "| n | " + " | ".join(names) + " |", "| ---: |" + " ---: |" * len(names)]
    for r in rows:
        d = r["Discrete"][0]
        cells = [f"{fmt_s(r[k][0])} ({r[k][0] / d:.2f}×) · {r[k][1]:.1f} s · {r[k][2]:.0e}"
                 for k in names]
        out.append(f"| {r['n']} | " + " | ".join(cells) + " |")
    out += ["", "Gauss backward pass: " + "; ".join(
        f"n={r['n']}: {r['stats']}" for r in rows), ""]
    return "\n".join(out)


# --- table B -------------------------------------------------------------------


def table_b_grads(nc):
    field = P.field()
    ts = P.times()
    y0 = P.y0()
    controls = P.controls(nc)
    params, static = eqx.partition(field, eqx.is_inexact_array)
    tol = dict(rtol=1e-6, atol=1e-6)

    def vmap_loss(method):
        def loss(p, c):
            f = eqx.combine(p, static)
            ys = jax.vmap(lambda u: jaxsens.solve(f, y0, ts, u, **tol,
                                                  sensitivity=method).ys)(c)
            return jnp.sum(ys**2) / P.NT
        return loss

    def shared_loss(method):
        def loss(p, c):
            f = jaxsens.batched_field(eqx.combine(p, static))
            ys = jaxsens.solve(f, jnp.zeros((nc, P.STATE), y0.dtype), ts, c, **tol,
                               sensitivity=method).ys
            return jnp.sum(ys**2) / P.NT
        return loss

    def rca_loss(p, c):
        f = eqx.combine(p, static)

        def one(u):
            return dfx.diffeqsolve(
                dfx.ODETerm(f), dfx.Tsit5(), ts[0], ts[-1], None, y0, args=u,
                saveat=dfx.SaveAt(ts=ts), stepsize_controller=dfx.PIDController(**tol),
                max_steps=4096).ys
        return jnp.sum(jax.vmap(one)(c) ** 2) / P.NT

    fns = {"diffrax RCA, vmap": jax.jit(jax.grad(rca_loss))}
    for name, make in ADJOINTS.items():
        fns[f"{name}, vmap"] = jax.jit(jax.grad(vmap_loss(make())))
        fns[f"{name}, shared"] = jax.jit(jax.grad(shared_loss(make())))
    return params, controls, fns


def table_b(repeats, nc=100):
    params, controls, fns = table_b_grads(nc)
    res = {}
    ref = None
    for name, fn in fns.items():
        log(f"  B {name} …")
        comp, med, _ = time_fn(fn, params, controls, repeats=repeats, min_time=10.0)
        g = jax.flatten_util.ravel_pytree(fn(params, controls))[0]
        if ref is None:
            ref = g
        res[name] = (med, comp - med, float(jnp.linalg.norm(g - ref) / jnp.linalg.norm(ref)))
        log(f"  B {name}: {fmt_s(med)}")
    return res


def table_b_md(cmd, res):
    out = [f"`{cmd}`", "", "Warm median (× jaxsens Discrete of the same row) · compile s · "
           "rel. diff to diffrax RCA (float32)", "",
           "| | diffrax RCA (vmapped) | " + " | ".join(ADJOINTS) + " |",
           "| --- |" + " ---: |" * (len(ADJOINTS) + 1)]
    rca = res["diffrax RCA, vmap"]
    for kind in ("vmap", "shared"):
        d = res[f"Discrete, {kind}"][0]
        cells = [f"{fmt_s(rca[0])} ({rca[0] / d:.2f}×)"]
        cells += [f"{fmt_s(res[f'{k}, {kind}'][0])} ({res[f'{k}, {kind}'][0] / d:.2f}×) · "
                  f"{res[f'{k}, {kind}'][1]:.1f} s · {res[f'{k}, {kind}'][2]:.0e}"
                  for k in ADJOINTS]
        label = "`jax.vmap` over controls" if kind == "vmap" else "one batched state"
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


# --- memory --------------------------------------------------------------------


def temp_bytes(fn, *args):
    return fn.lower(*args).compile().memory_analysis().temp_size_in_bytes


def memory(n=64):
    """Temporaries of the table-A gradient with the horizon stretched so the
    forward solve takes ~10³–10⁵ steps (the field made fast by a large `W`), and
    with `max_steps` doubled."""
    rows = []
    W, y0, _ = table_a_problem(n)
    for t1, ms in ((1.0, 4096), (1.0, 8192), (100.0, 16384), (1000.0, 131072)):
        ts = jnp.linspace(0.0, t1, 5, dtype=jnp.float64)
        row = {"t1": t1, "max_steps": ms}
        sol = jaxsens.solve(dense_field, y0, ts, W * 20, rtol=1e-6, atol=1e-6,
                            max_steps=ms, sensitivity=jaxsens.Discrete())
        row["steps"] = int(sol.stats["num_steps"])
        for name, fn in table_a_grads(y0, ts, max_steps=ms).items():
            if name in ("Discrete", "diffrax Backsolve", "Backsolve"):
                continue
            row[name] = temp_bytes(fn, W * 20)
        log(f"  memory {row}")
        rows.append(row)
    return rows


def memory_md(cmd, rows):
    names = [k for k in rows[0] if k not in ("t1", "max_steps", "steps")]
    out = [f"`{cmd}`", "", "XLA temporaries of the compiled gradient (MB), n = 64",
           "", "| forward steps | max_steps | " + " | ".join(names) + " |",
           "| ---: | ---: |" + " ---: |" * len(names)]
    for r in rows:
        out.append(f"| {r['steps']} | {r['max_steps']} | "
                   + " | ".join(f"{r[k] / 1e6:.1f}" for k in names) + " |")
    return "\n".join(out) + "\n"


def plot(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    ns = [r["n"] for r in rows]
    for name in rows[0]:
        if isinstance(rows[0][name], tuple) and name != "Discrete":
            ax.plot(ns, [r[name][0] / r["Discrete"][0] for r in rows], "o-", label=name)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(2.0, color="k", lw=0.8, ls="--")
    ax.set(xscale="log", yscale="log", xlabel="n (p = n²)", ylabel="time / Discrete",
           title="dense field tanh(W y) − 0.1 y, 5 save times")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench adjoints", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tables", nargs="*", default=["a", "b", "memory"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(RESULTS_DIR / "adjoints.md"))
    args = parser.parse_args(argv)
    cmd = pinned("python -m bench adjoints " + " ".join(argv if argv is not None
                                                        else sys.argv[1:]))
    repeats = 5 if args.quick else 15
    head = [f"# Continuous adjoints against `Discrete`", "",
            f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
            f"{platform.processor() or platform.machine()}, jax {jax.__version__}, "
            f"diffrax {dfx.__version__ if hasattr(dfx, '__version__') else '?'}", ""]
    parts = []
    if "a" in args.tables:
        log("table A")
        rows = table_a([16, 256] if args.quick else [16, 64, 256, 1024], repeats)
        parts += ["## A. Dense field", "", table_a_md(cmd, rows)]
        plot(rows, pathlib.Path(args.out).with_suffix(".png"))
    if "b" in args.tables:
        log("table B")
        parts += ["## B. Seed 002, 100 controls", "", table_b_md(cmd, table_b(repeats))]
    if "memory" in args.tables:
        log("memory")
        parts += ["## Memory", "", memory_md(cmd, memory())]
    text = "\n".join(head + parts)
    pathlib.Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
