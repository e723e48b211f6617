"""Steady-state benchmark (issue 5): the implicit-function-theorem gradient of
`jaxsens.steady_state` against differentiating a long solve to t = 1000.

    /work/venv/bin/python bench/bench_steady.py            # full run
    /work/venv/bin/python bench/bench_steady.py --quick    # smaller, fewer repeats

(a) On `bench.problems.steady.reaction_diffusion(n)` (n states, n + 2
parameters), the gradient of a weighted sum of the steady state by

- IFT, `method=Newton()`: Newton from `y0`, one dense LU (or GMRES) solve back;
- IFT, `method=Integrate()`: integrate to the steady-state event (Kvaerno3),
  Newton polish, the same single solve back;
- `jaxsens.solve(..., ts=[0, 1000])` with `Discrete()` (diffrax's recursive
  checkpointing) and with `InterpolatingAdjoint()`, Tsit5, rtol = atol = 1e-6,

reporting the compile time (first call), the warm time (median of repeats, all
methods in one process), XLA's `memory_analysis()` temp bytes of the compiled
gradient, the forward step count, and each gradient's relative difference from
the IFT/Newton gradient.

(b) Dense LU on the materialised Jacobian vs matrix-free GMRES, over n, for the
forward Newton steps and for the IFT backward solve (`f_yᵀ λ = ȳ` + one vjp),
each jitted and timed alone (warm medians). This is the measurement behind
`jaxsens._steady.DENSE_MAX = 200`, the size above which `Newton`, `Integrate`
and `SteadyStateAdjoint` go matrix-free by default.

Dense LAPACK runs single-threaded (`OPENBLAS_NUM_THREADS=1`, set below unless
already set): on the shared, oversubscribed 2-core machine a multi-threaded
OpenBLAS LU of a 300 × 300 matrix took 20–400 ms instead of 1.5 ms.

Writes `bench/results/steady.md` and `bench/results/steady.png`.
"""

import argparse
import os
import platform
import sys
import time


for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

if __name__ == "__main__" and __package__ in (None, ""):
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402


jax.config.update("jax_enable_x64", True)

import diffrax as dfx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import lineax as lx  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

import jaxsens  # noqa: E402
from bench._timing import fmt_s, time_fn  # noqa: E402
from bench.problems import steady as problems  # noqa: E402


HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
T_LONG = 1000.0


def grad_fns(problem):
    """name -> (jitted grad of the field's parameters, jitted forward info)."""
    y0, loss = problem.y0, problem.loss

    def ift(method):
        def f(field):
            return loss(jaxsens.steady_state(field, y0, method=method).y)

        def steps(field):
            st = jaxsens.steady_state(field, y0, method=method).stats
            return st.get("num_steps", st["num_newton_steps"])

        return f, steps

    def long(sens):
        def f(field):
            sol = jaxsens.solve(field, y0, jnp.array([0.0, T_LONG]), sensitivity=sens,
                                solver=dfx.Tsit5())
            return loss(sol.ys[-1])

        def steps(field):
            return jaxsens.solve(field, y0, jnp.array([0.0, T_LONG]),
                                 sensitivity=sens, solver=dfx.Tsit5()
                                 ).stats["num_steps"]

        return f, steps

    table = {
        "IFT, Newton": ift(jaxsens.Newton()),
        "IFT, Integrate": ift(jaxsens.Integrate()),
        f"Discrete, t={T_LONG:g}": long(jaxsens.Discrete()),
        f"InterpolatingAdjoint, t={T_LONG:g}": long(jaxsens.InterpolatingAdjoint()),
    }
    return {k: (jax.jit(jax.grad(f)), jax.jit(s)) for k, (f, s) in table.items()}


def temp_mb(jitted, *args):
    ma = jitted.lower(*args).compile().memory_analysis()
    return ma.temp_size_in_bytes / 2**20 if ma is not None else float("nan")


def part_a(sizes, repeats, log):
    rows = []
    for n in sizes:
        problem = problems.reaction_diffusion(n)
        fns = grad_fns(problem)
        ref = None
        for name, (grad, steps) in fns.items():
            compile_s, warm_s, _ = time_fn(grad, problem.field, repeats=repeats,
                                           min_time=20.0)
            g = ravel_pytree(grad(problem.field))[0]
            if ref is None:
                ref = g
            diff = float(jnp.max(jnp.abs(g - ref)) / jnp.max(jnp.abs(ref)))
            row = dict(n=n, method=name, compile=compile_s, warm=warm_s,
                       temp_mb=temp_mb(grad, problem.field),
                       steps=int(steps(problem.field)), diff=diff)
            rows.append(row)
            log(f"  n={n:5d} {name:32s} compile {fmt_s(compile_s):>9s} warm "
                f"{fmt_s(warm_s):>9s} temp {row['temp_mb']:8.2f} MB steps "
                f"{row['steps']:5d} diff {diff:.1e}")
    return rows


def part_b_fns(problem):
    """Forward (Newton with dense LU / GMRES steps) and backward (the IFT solve
    `f_yᵀ λ = ȳ` plus the parameter vjp, dense LU / GMRES), separately jitted."""
    y0, loss = problem.y0, problem.loss
    n = y0.size
    gmres = lx.GMRES(rtol=1e-10, atol=1e-10, restart=min(n, 50))

    def forward(linear_solver):
        method = jaxsens.Newton(linear_solver=linear_solver)
        return jax.jit(lambda f: jaxsens.steady_state(f, y0, method=method).y)

    def backward(adjoint):
        @jax.jit
        def bwd(field, y_star):
            y_bar = jax.grad(loss)(y_star)
            lam = adjoint.solve_transposed(lambda y: field(0.0, y, None), y_star,
                                           y_bar)
            _, vjp = jax.vjp(lambda f: f(0.0, y_star, None), field)
            return vjp(-lam)

        return bwd

    forwards = {"dense LU": forward(lx.LU()), "GMRES": forward(gmres)}
    backwards = {
        "dense LU": backward(jaxsens.SteadyStateAdjoint(dense_threshold=10**9)),
        "GMRES": backward(jaxsens.SteadyStateAdjoint(linear_solver=gmres)),
    }
    return forwards, backwards


def part_b(sizes, repeats, log):
    rows = []
    for n in sizes:
        problem = problems.reaction_diffusion(n)
        forwards, backwards = part_b_fns(problem)
        row = dict(n=n)
        y_star = None
        for name, fwd in forwards.items():
            _, row["fwd " + name], _ = time_fn(fwd, problem.field, repeats=repeats,
                                               min_time=10.0)
            y_star = fwd(problem.field)
        for name, bwd in backwards.items():
            _, row["bwd " + name], _ = time_fn(bwd, problem.field, y_star,
                                               repeats=repeats, min_time=10.0)
        rows.append(row)
        log(f"  n={n:5d} forward: LU {fmt_s(row['fwd dense LU']):>9s} GMRES "
            f"{fmt_s(row['fwd GMRES']):>9s} | backward: LU "
            f"{fmt_s(row['bwd dense LU']):>9s} GMRES {fmt_s(row['bwd GMRES']):>9s}")
    return rows


def write(rows_a, rows_b, args, elapsed):
    os.makedirs(RESULTS, exist_ok=True)
    cmd = "/work/venv/bin/python bench/bench_steady.py" + (" --quick" if args.quick
                                                           else "")
    out = [
        "# Steady states: implicit function theorem vs a long solve",
        "",
        f"Command: `{cmd}` ({elapsed:.0f} s). Machine: {platform.machine()}, "
        f"{os.cpu_count()} cores shared with other jobs (timings are noisy: warm "
        "times are medians of repeats, every method measured in the same process; "
        "compile = first call, tracing + XLA compilation + one run; LAPACK "
        "single-threaded). "
        f"jax {jax.__version__}, float64.",
        "",
        "Problem: `bench/problems/steady.py::reaction_diffusion(n)`, n states and "
        "n + 2 parameters, gradient of a weighted sum of the steady state. `temp` = "
        "XLA `memory_analysis()` temp buffers of the compiled gradient (the long "
        "solves use the default `max_steps=4096`; buffers preallocated from it "
        "count, e.g. `InterpolatingAdjoint`'s dense output). `diff` = "
        "max-abs relative difference from the IFT/Newton gradient. `steps` = "
        "forward steps (integration steps, or Newton iterations for IFT/Newton).",
        "",
        "## (a) Gradient: IFT vs differentiating a solve to t = 1000",
        "",
        "| n | method | warm | × IFT/Newton | compile | temp MB | steps | diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base = {r["n"]: r["warm"] for r in rows_a if r["method"] == "IFT, Newton"}
    for r in rows_a:
        out.append(
            f"| {r['n']} | {r['method']} | {fmt_s(r['warm'])} | "
            f"{r['warm'] / base[r['n']]:.1f} | {fmt_s(r['compile'])} | "
            f"{r['temp_mb']:.2f} | {r['steps']} | {r['diff']:.1e} |"
        )
    out += [
        "",
        "## (b) The backward linear solve: dense LU vs matrix-free GMRES",
        "",
        "Forward = Newton with dense-LU or GMRES steps (steady state only); "
        "backward = the IFT solve `f_yᵀ λ = ȳ` plus the parameter vjp, dense LU on "
        "the materialised Jacobian vs matrix-free GMRES (vjps). Warm medians.",
        "",
        "| n | forward, LU | forward, GMRES | backward, LU | backward, GMRES |",
        "|---|---|---|---|---|",
    ]
    for r in rows_b:
        out.append(f"| {r['n']} | {fmt_s(r['fwd dense LU'])} | "
                   f"{fmt_s(r['fwd GMRES'])} | {fmt_s(r['bwd dense LU'])} | "
                   f"{fmt_s(r['bwd GMRES'])} |")
    out += ["", "![steady](steady.png)", ""]
    with open(os.path.join(RESULTS, "steady.md"), "w") as fh:
        fh.write("\n".join(out))
    plot(rows_a, rows_b)


def plot(rows_a, rows_b):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    methods = list(dict.fromkeys(r["method"] for r in rows_a))
    for m in methods:
        rs = [r for r in rows_a if r["method"] == m]
        ns = [r["n"] for r in rs]
        axes[0].loglog(ns, [r["warm"] for r in rs], "o-", label=m)
        axes[1].loglog(ns, [max(r["temp_mb"], 1e-3) for r in rs], "o-", label=m)
    axes[0].set(xlabel="state size n", ylabel="warm gradient time [s]",
                title="gradient time")
    axes[1].set(xlabel="state size n", ylabel="XLA temp memory [MB]",
                title="gradient memory")
    axes[0].legend(fontsize=8)
    ns = [r["n"] for r in rows_b]
    for key, style in (("bwd dense LU", "o-"), ("bwd GMRES", "s-"),
                       ("fwd dense LU", "o:"), ("fwd GMRES", "s:")):
        axes[2].loglog(ns, [r[key] for r in rows_b], style, label=key)
    axes[2].set(xlabel="state size n", ylabel="warm time [s]",
                title="dense LU vs matrix-free GMRES")
    axes[2].legend(fontsize=8)
    fig.suptitle("jaxsens.steady_state (shared 2-core machine; medians)")
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, "steady.png"), dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes_a = [10, 100] if args.quick else [10, 100, 1000]
    sizes_b = [10, 100, 300] if args.quick else [10, 30, 100, 300, 1000]
    repeats = 5 if args.quick else 15
    start = time.perf_counter()
    print("(a) IFT vs long solve")
    rows_a = part_a(sizes_a, repeats, print)
    print("(b) dense vs GMRES backward")
    rows_b = part_b(sizes_b, repeats, print)
    write(rows_a, rows_b, args, time.perf_counter() - start)
    print("wrote bench/results/steady.md, steady.png")


if __name__ == "__main__":
    main()
