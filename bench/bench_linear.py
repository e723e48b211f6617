"""Linear-systems benchmark (issue 3): exact `LinearExpm`, matrix-free `KrylovExpm`.

    /work/venv/bin/python bench/bench_linear.py            # full run (~30 min)
    /work/venv/bin/python bench/bench_linear.py --quick    # fewer repeats, no Forward,
                                                           # 50x50 heat grid

Tables (problems in `bench/problems/linear.py`):

1. Seed 000 exactly (n = 100, 10^4 rates, t = 1..4) and its stiff, long-horizon
   variant (rates × 100, 200 save times on [0, 4]): one gradient w.r.t. all of `P`
   with `LinearExpm`, `KrylovExpm`, every time-stepped jaxsens method, diffrax's
   default `RecursiveCheckpointAdjoint` and `jax.experimental.ode.odeint`
   (rtol = atol = 1e-6), each with its relative error against the exact
   (`LinearExpm`) gradient. Time-stepped methods use `Tsit5` on seed 000 and
   `Kvaerno5` on the stiff variant (diffrax's default adjoint is also run with
   `Tsit5` there). `Forward()` runs in a subprocess and is skipped if one call
   exceeds 60 s.
2. Seed 000's UDE (linear coupling + MLP 4→5→4 on 25 blocks): every adjoint vs
   diffrax's default adjoint; error against `Discrete` at rtol = atol = 1e-10.
3. 2-D heat equation, 100×100 cells (n = 10^4, 10^4 diffusion coefficients),
   matrix-free: `KrylovExpm` vs `InterpolatingAdjoint` with `Tsit5` and with an
   implicit solver (`Kvaerno5`, Newton + GMRES: matrix-free, since a dense
   10^4×10^4 Jacobian does not fit the budget); error against `KrylovExpm` at
   tol = 1e-13 (itself checked against `LinearExpm` on a 20×20 grid); memory:
   XLA's buffer assignment of the compiled gradient (`memory_analysis()`:
   temporaries + arguments + outputs) and the peak resident memory while one
   gradient runs, in a fresh subprocess.

Timing: compile (trace + lower + XLA compile) separately from warm calls; warm
time is the median (and min) of repeats, every method in the same process so the
ratios are comparable. OpenBLAS is pinned to one thread (`OPENBLAS_NUM_THREADS=1`,
for every method alike): on the shared, oversubscribed 2-core machine the
multi-threaded BLAS stalls 5–40 ms inside each small LAPACK triangular solve
(measured: a 100×100 `expm` 0.46 ms single-threaded vs 20–40 ms median
multi-threaded under load).

Writes `bench/results/linear.md` and `bench/results/linear.png`.
"""

import os


os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402


if __name__ == "__main__" and __package__ in (None, ""):
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402


jax.config.update("jax_enable_x64", True)

import diffrax as dfx  # noqa: E402
import equinox as eqx  # noqa: E402
import lineax as lx  # noqa: E402
import numpy as np  # noqa: E402
import optimistix as optx  # noqa: E402
from jax.experimental.ode import odeint  # noqa: E402

import jaxsens  # noqa: E402
from bench._timing import fmt_s  # noqa: E402
from bench.problems import linear as problems  # noqa: E402


HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(HERE, "results")
FORWARD_CAP_S = 60.0
RTOL = ATOL = 1e-6


# --- gradient functions ----------------------------------------------------------


def jaxsens_loss(problem, sensitivity, **solve_kw):
    def loss(params):
        field, args = problem.split(params)
        sol = jaxsens.solve(
            field,
            problem.y0,
            problem.ts,
            args,
            t0=problem.t0,
            sensitivity=sensitivity,
            **solve_kw,
        )
        return problem.loss(sol.ys)

    return loss


def diffrax_loss(problem, solver, max_steps=4096):
    """diffrax's defaults: `RecursiveCheckpointAdjoint`, PID controller."""

    def loss(params):
        field, args = problem.split(params)
        sol = dfx.diffeqsolve(
            dfx.ODETerm(field),
            solver,
            problem.t0,
            problem.ts[-1],
            None,
            problem.y0,
            args=args,
            saveat=dfx.SaveAt(ts=problem.ts),
            stepsize_controller=dfx.PIDController(rtol=RTOL, atol=ATOL),
            max_steps=max_steps,
        )
        return problem.loss(sol.ys)

    return loss


def odeint_loss(problem):
    """`jax.experimental.ode.odeint` (Dopri5 with its own continuous adjoint)."""
    assert float(problem.t0) == float(problem.ts[0])

    def loss(params):
        field, args = problem.split(params)
        diff, static = eqx.partition((field, args), eqx.is_inexact_array)

        def f(y, t, d):
            fld, a = eqx.combine(d, static)
            return fld(t, y, a)

        ys = odeint(f, problem.y0, problem.ts, diff, rtol=RTOL, atol=ATOL)
        return problem.loss(ys)

    return loss


def compiled_grad(loss, params):
    """`(compiled, dyn, compile_s)`: the jitted gradient, lowered and compiled."""
    dyn, static = eqx.partition(params, eqx.is_inexact_array)

    @jax.jit
    def g(d):
        return eqx.filter_grad(lambda d_: loss(eqx.combine(d_, static)))(d)

    t = time.perf_counter()
    compiled = g.lower(dyn).compile()
    return compiled, dyn, time.perf_counter() - t


def measure(loss, params, repeats, budget_s=30.0, min_spent_s=1.0):
    """Compile time, warm median/min (s), the gradient, XLA buffer sizes (MB).

    Warm repeats stop after `budget_s` seconds (at least 3 are made unless the
    first run alone took more than a third of the budget); fast rows go on past
    `repeats` until `min_spent_s` seconds are spent (at most 1000 calls), so a
    millisecond-scale median rests on hundreds of calls, not 20."""
    compiled, dyn, compile_s = compiled_grad(loss, params)
    t = time.perf_counter()
    grad = jax.block_until_ready(compiled(dyn))  # first run
    first = time.perf_counter() - t
    times = []
    spent = 0.0
    if first < budget_s / 3:
        i = 0
        while i < repeats or (spent < min_spent_s and i < 1000):
            t = time.perf_counter()
            jax.block_until_ready(compiled(dyn))
            times.append(time.perf_counter() - t)
            spent += times[-1]
            i += 1
            if i >= 3 and spent > budget_s:
                break
    else:
        times = [first]
    ma = compiled.memory_analysis()
    mem = ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes
    return dict(
        compile_s=compile_s,
        median_s=statistics.median(times),
        min_s=min(times),
        grad=grad,
        xla_mb=mem / 2**20,
        repeats=len(times),
    )


def error_message(e):
    """The jaxsens/equinox runtime message inside a (possibly wrapped) exception."""
    text = str(e)
    found = re.search(r"EquinoxRuntimeError: ([^\n]*)", text)
    if found:
        return found.group(1)[:200]
    lines = text.strip().splitlines()
    return lines[0][:200] if lines else type(e).__name__


def rel_err(g, ref):
    a = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(g)])
    b = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(ref)])
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# --- the problems and their rows ----------------------------------------------------


PROBLEMS = {
    "seed000": problems.seed000,
    "seed000_stiff": problems.seed000_stiff,
    "seed000_ude": problems.seed000_ude,
    "heat": lambda: problems.heat2d(HEAT_GRID),
}
HEAT_GRID = 100

TIME_STEPPED = [
    ("Discrete()", lambda: jaxsens.Discrete()),
    ("BacksolveAdjoint()", lambda: jaxsens.BacksolveAdjoint()),
    ("InterpolatingAdjoint()", lambda: jaxsens.InterpolatingAdjoint()),
    ("QuadratureAdjoint()", lambda: jaxsens.QuadratureAdjoint()),
    ("GaussAdjoint()", lambda: jaxsens.GaussAdjoint()),
]
DIFFRAX = "diffrax RecursiveCheckpointAdjoint (default)"
ODEINT = "jax.experimental.ode.odeint (Dopri5)"


def implicit_matrix_free():
    """Kvaerno5 whose Newton iterations solve with GMRES: no n×n Jacobian.

    (diffrax's default `VeryChord` root finder fails with an iterative lineax
    solver in these versions: it `stop_gradient`s a state holding a jaxpr.)"""
    newton = dfx.with_stepsize_controller_tols(optx.Newton)(
        linear_solver=lx.GMRES(rtol=1e-8, atol=1e-10, restart=30, stagnation_iters=30)
    )
    return dfx.Kvaerno5(root_finder=newton)


class Row:
    """One table row: `cap` = None runs in the main process; a number runs it in a
    subprocess, reported only if one call takes less than `cap` seconds. `if_wrong`
    explains a gradient that comes out wrong (shown only when it does)."""

    def __init__(self, label, loss, cap=None, if_wrong=""):
        self.label, self.loss, self.cap, self.if_wrong = label, loss, cap, if_wrong


ODEINT_WRONG = (
    "its adjoint re-integrates y backwards, unstable on this dissipative system"
)
STEP_WRONG = (
    "differentiates through the adaptive step-size control, which sits at Tsit5's "
    "stability limit here; on a 50×50 grid constant stable steps give 9e-15"
)
IMPLICIT_WRONG = "continuous adjoint with an implicit backward solve: inaccurate here"


def rows_for(name):
    """`(problem, rows, reference_label)` of a table."""
    problem = PROBLEMS[name]()
    if name in ("seed000", "seed000_stiff"):
        stiff = name == "seed000_stiff"
        solver, tag = (dfx.Kvaerno5(), "Kvaerno5") if stiff else (dfx.Tsit5(), "Tsit5")
        rows = [
            Row("LinearExpm()", jaxsens_loss(problem, jaxsens.LinearExpm())),
            Row("KrylovExpm()", jaxsens_loss(problem, jaxsens.KrylovExpm())),
        ]
        for label, method in TIME_STEPPED:
            # Their backward state carries the 10^4 parameter adjoints; an implicit
            # solver's dense Jacobian of it is 10^4 x 10^4: capped.
            big = stiff and label in ("BacksolveAdjoint()", "InterpolatingAdjoint()")
            wrong = IMPLICIT_WRONG if stiff and label != "Discrete()" else ""
            loss = jaxsens_loss(problem, method(), solver=solver)
            rows.append(Row(f"{label}, {tag}", loss, 120.0 if big else None, wrong))
        rows.append(Row(f"{DIFFRAX}, {tag}", diffrax_loss(problem, solver)))
        if stiff:
            loss = diffrax_loss(problem, dfx.Tsit5(), 65536)
            rows.append(Row(f"{DIFFRAX}, Tsit5", loss))
        cap = 120.0 if stiff else None
        rows.append(Row(ODEINT, odeint_loss(problem), cap, ODEINT_WRONG))
        loss = jaxsens_loss(problem, jaxsens.Forward(), solver=solver)
        rows.append(Row(f"Forward(), {tag}", loss, FORWARD_CAP_S))
        return problem, rows, "LinearExpm()"
    if name == "seed000_ude":
        ref = "reference: Discrete(), rtol = atol = 1e-10"
        rows = [
            Row(ref, jaxsens_loss(problem, jaxsens.Discrete(), rtol=1e-10, atol=1e-10))
        ]
        rows += [Row(label, jaxsens_loss(problem, m())) for label, m in TIME_STEPPED]
        rows.append(Row(f"{DIFFRAX}, Tsit5", diffrax_loss(problem, dfx.Tsit5())))
        rows.append(Row(ODEINT, odeint_loss(problem), None, ODEINT_WRONG))
        loss = jaxsens_loss(problem, jaxsens.Forward())
        rows.append(Row("Forward()", loss, FORWARD_CAP_S))
        return problem, rows, ref
    ref = "reference: KrylovExpm(tol=1e-13)"
    implicit = jaxsens_loss(
        problem, jaxsens.InterpolatingAdjoint(), solver=implicit_matrix_free()
    )
    rows = [
        Row(ref, jaxsens_loss(problem, jaxsens.KrylovExpm(tol=1e-13))),
        Row("KrylovExpm()", jaxsens_loss(problem, jaxsens.KrylovExpm())),
        Row(
            "InterpolatingAdjoint(), Tsit5",
            jaxsens_loss(problem, jaxsens.InterpolatingAdjoint()),
        ),
        Row("InterpolatingAdjoint(), Kvaerno5 + GMRES", implicit),
        Row(
            "Discrete(), Tsit5",
            jaxsens_loss(problem, jaxsens.Discrete()),
            if_wrong=STEP_WRONG,
        ),
        Row(
            f"{DIFFRAX}, Tsit5", diffrax_loss(problem, dfx.Tsit5()), if_wrong=STEP_WRONG
        ),
    ]
    return problem, rows, ref


# --- subprocess children: capped rows and peak memory ------------------------------


def _status_kb(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


def child(name, label):
    problem, rows, ref_label = rows_for(name)
    row = next(r for r in rows if r.label == label)
    cap = row.cap if row.cap is not None else float("inf")
    compiled, dyn, compile_s = compiled_grad(row.loss, problem.params)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak-RSS counter (VmHWM) to the current RSS
    rss0 = _status_kb("VmRSS")
    t = time.perf_counter()
    try:
        grad = jax.block_until_ready(compiled(dyn))
    except Exception as e:  # noqa: BLE001 - reported in the table
        print(json.dumps(dict(error=error_message(e))))
        return
    run_s = time.perf_counter() - t
    out = dict(
        compile_s=compile_s,
        run_s=run_s,
        run_peak_mb=(_status_kb("VmHWM") - rss0) / 1024,
    )
    times = [run_s]
    if row.cap is not None and run_s < cap:
        for _ in range(2):
            t = time.perf_counter()
            jax.block_until_ready(compiled(dyn))
            times.append(time.perf_counter() - t)
    out.update(median_s=statistics.median(times), min_s=min(times))
    if row.cap is None:  # a memory run
        print(json.dumps(out))
        return
    ref_row = next(r for r in rows if r.label == ref_label)
    ref, rdyn, _ = compiled_grad(ref_row.loss, problem.params)
    out["rel_err"] = rel_err(grad, ref(rdyn))
    print(json.dumps(out))


def run_child(name, label, cap):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, label]
    if HEAT_GRID != 100:
        cmd.append("--quick")
    timeout = cap + 90.0  # + start-up and compile (~10 s)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {
            "error": f"not finished after {timeout:.0f} s (cap {cap:.0f} s per call)"
        }
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1][:200]}
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if "run_s" in res and res["run_s"] >= cap:
        return {"error": f"one call took {res['run_s']:.0f} s > {cap:.0f} s cap"}
    return res


# --- the benchmarks ------------------------------------------------------------------


def run_table(name, repeats, quick):
    problem, rows, ref_label = rows_for(name)
    results, ref = [], None
    for row in rows:
        print(f"  {row.label} ...", flush=True)
        if row.cap is not None:
            if quick:
                r = dict(error="skipped (--quick)")
            else:
                r = run_child(name, row.label, row.cap)
                r.setdefault("note", f"subprocess, {row.cap:.0f} s cap per call")
        else:
            try:
                r = measure(row.loss, problem.params, repeats)
            except Exception as e:  # noqa: BLE001 - reported in the table
                r = dict(error=error_message(e))
        r["label"] = row.label
        r["if_wrong"] = row.if_wrong
        if row.label == ref_label:
            ref = r["grad"]
        if "grad" in r:
            r["rel_err"] = rel_err(r.pop("grad"), ref)
        results.append(r)
        print(
            "    "
            + (
                r["error"]
                if "error" in r
                else f"compile {r['compile_s']:.1f} s, warm median "
                f"{fmt_s(r['median_s'])} (min {fmt_s(r['min_s'])}), "
                f"rel. error {r['rel_err']:.1e}"
            ),
            flush=True,
        )
    return results


def heat_table(repeats, quick):
    # Sanity: KrylovExpm against LinearExpm on a 20x20 grid (n = 400).
    small = problems.heat2d(20)
    g_k = measure(jaxsens_loss(small, jaxsens.KrylovExpm()), small.params, 1)["grad"]
    g_l = measure(jaxsens_loss(small, jaxsens.LinearExpm()), small.params, 1)["grad"]
    sanity = rel_err(g_k, g_l)
    print(f"  KrylovExpm vs LinearExpm on 20x20: rel. error {sanity:.1e}")
    results = run_table("heat", repeats, quick)
    problem = PROBLEMS["heat"]()
    sol = jaxsens.solve(
        problem.field,
        problem.y0,
        problem.ts,
        problem.params,
        t0=problem.t0,
        sensitivity=jaxsens.KrylovExpm(),
    )
    krylov_steps = int(sol.stats["num_accepted_steps"])
    for r in results:
        if r["label"].startswith("reference") or "error" in r:
            continue
        print(f"  {r['label']}: peak memory (subprocess) ...", flush=True)
        c = run_child("heat", r["label"], cap=1800.0)
        r["run_peak_mb"] = c.get("run_peak_mb", float("nan"))
    return results, sanity, krylov_steps


# --- report ----------------------------------------------------------------------


def fmt_row(r, base, mem=False):
    if "error" in r:
        err = r["error"] + ("; " + r["note"] if r.get("note") else "")
        cells = [r["label"], "—", "—", "—", "—", "—", err]
        return "| " + " | ".join(cells + (["—", "—"] if mem else [])) + " |"
    ratio = r["median_s"] / base if base else float("nan")
    note = r.get("note", "")
    if r.get("rel_err", 0.0) > 0.5:
        why = f" ({r['if_wrong']})" if r.get("if_wrong") else ""
        note = "; ".join(x for x in ("**wrong gradient**" + why, note) if x)
    cells = [
        r["label"],
        fmt_s(r["median_s"]),
        fmt_s(r["min_s"]),
        f"{r.get('compile_s', float('nan')):.1f} s",
        f"{ratio:.2f}×",
        f"{r.get('rel_err', float('nan')):.1e}",
        note,
    ]
    if mem:
        cells += [f"{r['xla_mb']:.1f}", f"{r.get('run_peak_mb', float('nan')):.0f}"]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| method | warm median | warm min | compile | time / diffrax default | "
    "rel. error of gradient | note |"
)


def table(results, base_label, mem=False):
    base = next(
        (
            r["median_s"]
            for r in results
            if r["label"].startswith(base_label) and "median_s" in r
        ),
        None,
    )
    head = HEADER + (" XLA buffers (MB) | run peak RSS (MB) |" if mem else "")
    sep = "|" + "---|" * (7 + (2 if mem else 0))
    return "\n".join([head, sep] + [fmt_row(r, base, mem) for r in results])


def plot(all_results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(all_results), figsize=(5 * len(all_results), 5))
    for ax, (title, results) in zip(
        np.atleast_1d(axes), all_results.items(), strict=True
    ):
        rows = [
            r for r in results if "median_s" in r and not r["label"].startswith("ref")
        ]
        labels = [
            r["label"]
            .replace(" (default)", "")
            .replace("RecursiveCheckpointAdjoint", "RCA")
            for r in rows
        ]
        vals = [r["median_s"] * 1e3 for r in rows]
        wrong = [r.get("rel_err", 0.0) > 0.5 for r in rows]
        labels = [
            lab + " (WRONG grad.)" if w else lab
            for lab, w in zip(labels, wrong, strict=True)
        ]
        colors = [
            "tab:red" if w else ("tab:green" if "Expm" in lab else "tab:gray")
            for lab, w in zip(labels, wrong, strict=True)
        ]
        ax.barh(range(len(rows)), vals, color=colors)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("warm gradient time (ms, median)")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--only",
        nargs="*",
        default=["seed000", "stiff", "ude", "heat"],
        help="run only these tables; the others are kept from the last run's "
        "bench/results/linear.json",
    )
    parser.add_argument("--child", nargs=2, metavar=("PROBLEM", "METHOD"))
    args = parser.parse_args()
    global HEAT_GRID
    if args.quick:
        HEAT_GRID = 50
    if args.child:
        child(*args.child)
        return
    repeats = 5 if args.quick else 20
    cmd = "python bench/bench_linear.py" + (" --quick" if args.quick else "")
    if args.only != ["seed000", "stiff", "ude", "heat"]:
        cmd += " --only " + " ".join(args.only)

    def provenance():
        return dict(
            command=cmd,
            commit=_commit(),
            load=os.getloadavg()[0],
            date=time.strftime("%Y-%m-%d %H:%M"),
        )

    out = {}
    jobs = [
        ("seed000", "seed000", repeats),
        ("stiff", "seed000_stiff", max(3, repeats // 4)),
        ("ude", "seed000_ude", repeats),
    ]
    for key, name, reps in jobs:
        if key in args.only:
            print(name)
            prov = provenance()
            out[key] = dict(rows=run_table(name, reps, args.quick), **prov)
    if "heat" in args.only:
        print(f"Heat equation {HEAT_GRID}x{HEAT_GRID}")
        prov = provenance()
        res, sanity, ksteps = heat_table(max(3, repeats // 4), args.quick)
        out["heat"] = dict(
            rows=res, sanity=sanity, krylov_steps=ksteps, grid=HEAT_GRID, **prov
        )
    path = os.path.join(RESULTS_DIR, "linear.json")
    merged = {}
    if os.path.exists(path):
        with open(path) as fh:
            merged = json.load(fh)
    merged.update(out)
    os.makedirs(RESULTS_DIR, exist_ok=True)
    with open(path, "w") as fh:
        json.dump(merged, fh, indent=1, default=float)
    write_report(merged)


def _made(entry):
    return (
        f"Made by `{entry['command']}` at commit `{entry['commit']}` "
        f"({entry['date']}, load average {entry['load']:.1f} at start)."
    )


def write_report(out):
    lines = [
        "# Linear systems: `LinearExpm`, `KrylovExpm` (issue 3)",
        "",
        "Machine: the shared 2-core development box "
        f"({platform.processor() or platform.machine()}), with other engineers' "
        "jobs running, so times are noisy: every row is the median (and min) of "
        "warm repeats with all methods of a table in ONE process (rows marked "
        "'subprocess' excepted), ratios taken from those medians; compile time "
        "(trace + lower + XLA compile) is separate. jax "
        f"{jax.__version__}, diffrax {dfx.__version__}, float64, "
        "`OPENBLAS_NUM_THREADS=1` for every method (multi-threaded OpenBLAS stalls "
        "5–40 ms per small LAPACK call on this oversubscribed machine). "
        "Time-stepped methods at rtol = atol = 1e-6.",
        "",
    ]
    if "seed000" in out:
        lines += [
            "## 1a. Seed 000: 100 states, gradient w.r.t. all 10^4 rates",
            "",
            _made(out["seed000"]) + " Relative error against the exact gradient "
            "(`LinearExpm`, itself checked against finite differences to 1e-10 in "
            "`tests/test_linear.py`). Forward() runs in a subprocess (skipped if one "
            "call takes > 60 s).",
            "",
            table(out["seed000"]["rows"], "diffrax RecursiveCheckpointAdjoint"),
            "",
        ]
    if "stiff" in out:
        lines += [
            "## 1b. Seed 000, stiff and long: rates × 100, 200 save times on [0, 4]",
            "",
            _made(out["stiff"]) + " t0 = ts[0] = 0. Time-stepped jaxsens methods use "
            "`Kvaerno5` (explicit solvers need ~10^4 steps). Ratio against diffrax's "
            "default adjoint with `Kvaerno5`. Backsolve/Interpolating with Kvaerno5 "
            "carry the 10^4 parameter adjoints in the implicitly-solved backward "
            "state (a dense 10^4×10^4 Jacobian per step).",
            "",
            table(
                out["stiff"]["rows"],
                "diffrax RecursiveCheckpointAdjoint (default), Kvaerno5",
            ),
            "",
        ]
    if "ude" in out:
        lines += [
            "## 2. Seed 000's UDE: linear coupling + MLP 4→5→4 on 25 blocks "
            "(non-linear)",
            "",
            _made(out["ude"]) + " 10,049 parameters, `Tsit5`. Error against "
            "`Discrete` at rtol = atol = 1e-10.",
            "",
            table(out["ude"]["rows"], "diffrax RecursiveCheckpointAdjoint"),
            "",
        ]
    if "heat" in out:
        h = out["heat"]
        g = h["grid"]
        lines += [
            f"## 3. 2-D heat equation, {g}×{g} cells (n = {g * g}), learnable "
            "diffusion per cell, matrix-free",
            "",
            _made(h) + " `LinearField(matvec=heat_matvec, tags=lx.symmetric_tag)`: "
            f"KrylovExpm uses Lanczos, {h['krylov_steps']} Krylov substeps of "
            "dimension 30 over 4 save times. Reference: KrylovExpm(tol=1e-13); "
            "KrylovExpm vs LinearExpm on a 20×20 grid: relative gradient error "
            f"{h['sanity']:.1e}. XLA buffers = `memory_analysis()` of the compiled "
            "gradient (temporaries + arguments + outputs); run peak RSS = growth of "
            "the resident set while one compiled gradient runs, in a fresh "
            "subprocess. (InterpolatingAdjoint's buffers are its dense output, "
            "sized by `max_steps` = 4096.)",
            "",
            table(h["rows"], "diffrax RecursiveCheckpointAdjoint", mem=True),
            "",
        ]
    lines += ["![gradient times](linear.png)", ""]
    with open(os.path.join(RESULTS_DIR, "linear.md"), "w") as fh:
        fh.write("\n".join(lines))
    titles = {
        "seed000": "seed 000",
        "stiff": "seed 000 stiff",
        "ude": "seed 000 UDE",
        "heat": "heat equation",
    }
    plot(
        {titles[k]: out[k]["rows"] for k in titles if k in out},
        os.path.join(RESULTS_DIR, "linear.png"),
    )
    print("\n".join(lines))


def _commit():
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=HERE,
        ).stdout.strip()
    except Exception:  # noqa: BLE001
        return "?"


if __name__ == "__main__":
    main()
