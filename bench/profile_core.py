"""Where the continuous adjoints' time goes on the core problems, and how fast one
could possibly be on seed 002.

    taskset -c 1 /work/venv/bin/python bench/profile_core.py

1. Per problem — Lotka–Volterra float64, seed 002's neural ODE with one control
   (100 save times), and the same neural ODE with 10 save times — the warm
   gradient time of diffrax's `RecursiveCheckpointAdjoint`, `Discrete`, the
   primal solve alone, and every continuous adjoint, with its backward steps and
   the field evaluations (vjps) it makes per backward step (counted by a host
   callback in an instrumented run, never in a timed one).
2. The cost of one backward stage's pieces (µs per call, in a `lax.scan`).
3. A lower bound for a continuous adjoint on seed 002. Its backward pass must stop
   at every save time (λ jumps there), so it takes at least one step per save
   interval; with the forward's solver (Tsit5, FSAL) each step that starts at a
   jump evaluates the vjp 7 times (the first stage cannot reuse the last one:
   λ changed). Lower bound = primal solve + steps × vjps per step × one vjp's
   cost, with every other cost of the loop taken as zero.

Writes `bench/results/core_profile.md`.
"""

import os
import sys


if __name__ == "__main__" and __package__ in (None, ""):
    # Appended, so that `PYTHONPATH=<snapshot>` can pin the jaxsens under test.
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax


jax.config.update("jax_enable_x64", True)

import datetime  # noqa: E402
import importlib  # noqa: E402
import importlib.metadata  # noqa: E402

import diffrax as dfx  # noqa: E402
import equinox as eqx  # noqa: E402
import jax.lax as lax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench import bench_core as bc  # noqa: E402
from bench._timing import fmt_s, pinned, time_fn  # noqa: E402
from jaxsens._sensitivity._common import (  # noqa: E402
    dense_evaluate,
    vjp_params,
    vjp_y,
    vjp_y_and_params,
)
from jaxsens._sensitivity.base import SolveOptions, as_problem  # noqa: E402


PROBLEMS = {
    "lv64": bc.PROBLEMS["lv64"],
    "node": bc.PROBLEMS["node"],
    "node10": lambda: bc.problems.controlled_node(num_times=10),
}
NAMES = {
    "lv64": "LV float64",
    "node": "seed-002 NODE, 100 save times",
    "node10": "seed-002 NODE, 10 save times",
}
REPEATS = 60


def primal_fn(problem):
    """The loss through the plain solve (no gradient), jitted."""
    loss = bc.loss_fn(problem, "Discrete")
    return bc.jitted(loss, problem.params)


def per_call_costs(problem, n=700):
    """µs per call of a backward stage's pieces, each in a scan of `n` calls."""
    opts = SolveOptions(
        problem.ts[0], dfx.Tsit5(), problem.rtol, problem.atol, None,
        problem.max_steps, True,
    )
    field, args = problem.split(problem.params)
    prob = as_problem(field, problem.y0, problem.ts, args, opts)
    sol = dfx.diffeqsolve(
        dfx.ODETerm(field), dfx.Tsit5(), problem.ts[0], problem.ts[-1], None,
        problem.y0, args=args, saveat=dfx.SaveAt(ts=problem.ts, dense=True),
        stepsize_controller=dfx.PIDController(rtol=problem.rtol, atol=problem.atol),
        max_steps=problem.max_steps,
    )
    interp = sol.interpolation
    times = jnp.linspace(problem.ts[-1], problem.ts[0], n).astype(problem.ts.dtype)
    lam = sol.ys[-1]
    y = sol.ys[-1]

    def scan_of(body):
        def run(prob_, interp_, lam_, y_):
            def step(acc, t):
                # y and λ depend on the carry, so XLA cannot hoist the work out of
                # the loop (it would for a time-independent field).
                eps = acc * 1e-30
                out = body(prob_, interp_, t + eps, lam_ + eps, y_ + eps)
                leaves = jax.tree_util.tree_leaves(out)
                return acc + sum(jnp.sum(x) for x in leaves), None

            return lax.scan(step, jnp.zeros((), lam_.dtype), times)[0]

        return eqx.filter_jit(run)

    pieces = {
        "field evaluation f(t, y) (one forward stage)": (
            lambda p, i, t, la, y_: p.f(t, y_)
        ),
        "vjp w.r.t. (y, θ) (one Backsolve/Interpolating stage)": (
            lambda p, i, t, la, y_: vjp_y_and_params(p, t, y_, la)[1:]
        ),
        "vjp w.r.t. y only (one Quadrature/Gauss stage)": (
            lambda p, i, t, la, y_: vjp_y(p, t, y_, la)
        ),
        "vjp w.r.t. θ only (one Gauss–Legendre node)": (
            lambda p, i, t, la, y_: vjp_params(p, t, y_, la)
        ),
        "dense-output lookup (search + evaluate)": (
            lambda p, i, t, la, y_: dense_evaluate(i, t)
        ),
    }
    out = {}
    for name, body in pieces.items():
        _, warm, _ = time_fn(scan_of(body), prob, interp, lam, y, repeats=15)
        out[name] = warm / n * 1e6
    return out


def profile(key):
    problem = PROBLEMS[key]()
    acc, rej = bc.forward_steps(problem)
    fns = {"diffrax RCA": bc.grad_fn(problem, "diffrax RCA"), "Discrete": bc.grad_fn(
        problem, "Discrete"), "primal solve only (no gradient)": primal_fn(problem)}
    for name in bc.CONTINUOUS:
        fns[name] = bc.grad_fn(problem, name)
    for f, dyn in fns.values():  # compile all before timing
        jax.block_until_ready(f(dyn))
    times = {name: [] for name in fns}
    for _ in range(REPEATS):  # round robin: every method sees the same machine
        for name, (f, dyn) in fns.items():
            times[name].append(time_fn(f, dyn, repeats=1)[1])
    warm = {name: float(np.median(t)) for name, t in times.items()}
    # (steps, accepted, failed, backward-field evaluations)
    steps = {name: bc.backward_counts(problem, name) for name in bc.CONTINUOUS}
    return problem, acc, rej, warm, steps


def main():
    rev = os.environ.get("JAXSENS_REV", "working tree")
    lines = [
        "# Core benchmark: where the continuous adjoints' time goes",
        "",
        f"Command: `{pinned('/work/venv/bin/python bench/profile_core.py')}` — "
        f"shared 2-core machine; run on {datetime.datetime.now():%Y-%m-%d %H:%M}; "
        f"jaxsens under test: {rev}. jax {jax.__version__}, diffrax "
        f"{importlib.metadata.version('diffrax')}. All solves Tsit5, PID, "
        "rtol = atol = 1e-6. Warm = median of "
        f"{REPEATS} round-robin calls (every row of a table interleaved in one "
        "process). Backward steps and vjps counted in a separate, instrumented run.",
        "",
        "## 1. Warm time, backward steps and vjps per backward step",
        "",
    ]
    results = {}
    for key in PROBLEMS:
        problem, acc, rej, warm, steps = profile(key)
        results[key] = (problem, warm, steps)
        rca = warm["diffrax RCA"]
        lines += [
            f"### {NAMES[key]} ({len(problem.ts)} save times; forward steps "
            f"{acc + rej} = {acc} accepted + {rej} rejected)",
            "",
            "| method | warm | × diffrax RCA | backward steps (accepted) | backward-"
            "field evaluations per step |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name, t in warm.items():
            c = steps.get(name)
            extra = (
                f"{c[0]} ({c[1]}) | {c[3] / max(c[0], 1):.1f}"
                if c is not None else " | "
            )
            lines.append(f"| {name} | {fmt_s(t)} | {t / rca:.2f} | {extra} |")
            print(lines[-1], flush=True)
        lines.append("")

    costs = {k: per_call_costs(PROBLEMS[k]()) for k in ("lv64", "node")}
    lines += [
        "## 2. Cost of one backward stage's pieces (µs per call, median, in a scan "
        "of 700 calls)",
        "",
        "| piece | LV float64 | seed-002 NODE (float32) |",
        "| --- | ---: | ---: |",
    ]
    for name in costs["lv64"]:
        lines.append(f"| {name} | {costs['lv64'][name]:.2f} | {costs['node'][name]:.2f} |")

    problem, warm, steps = results["node"]
    vjp_us = costs["node"]["vjp w.r.t. (y, θ) (one Backsolve/Interpolating stage)"]
    intervals = len(problem.ts) - 1
    primal = warm["primal solve only (no gradient)"]
    bound = primal + intervals * 7 * vjp_us * 1e-6
    back = steps["BacksolveAdjoint"]
    _, warm10, _ = results["node10"]
    ten_ratio = warm10["BacksolveAdjoint"] / warm10["diffrax RCA"]
    lines += [
        "",
        "## 3. Lower bound for a continuous adjoint on seed 002 (100 save times)",
        "",
        "| term | value |",
        "| --- | ---: |",
        f"| primal solve (measured, section 1) | {fmt_s(primal)} |",
        f"| backward steps, at least one per save interval | {intervals} |",
        "| vjps per step (Tsit5 after a λ jump: 7 stages, no FSAL reuse) | 7 |",
        f"| one vjp w.r.t. (y, θ) (section 2) | {vjp_us:.2f} µs |",
        f"| **lower bound** (loop overhead, jumps, controller = 0) | **{fmt_s(bound)}** |",
        f"| diffrax RCA (section 1) | {fmt_s(warm['diffrax RCA'])} |",
        f"| Discrete (section 1) | {fmt_s(warm['Discrete'])} |",
        f"| BacksolveAdjoint as shipped (section 1: {back[0]} steps, "
        f"{back[3] / max(back[0], 1):.1f} vjps per step) | "
        f"{fmt_s(warm['BacksolveAdjoint'])} |",
        "",
        f"The bound is {bound / warm['diffrax RCA']:.2f}× diffrax RCA's time: no "
        "continuous adjoint that stops at every save time with the forward's "
        "solver can match RCA here, however little its loop costs. RCA "
        "back-propagates through the forward's steps only (a save time inside a "
        "step is an interpolation, not a stop). With 10 save times (section 1, "
        "last table) the backward pass needs no more steps than λ itself: "
        f"BacksolveAdjoint takes {ten_ratio:.2f}× RCA's time there.",
    ]
    out = os.path.join(bc.RESULTS_DIR, "core_profile.md")
    with open(out, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
