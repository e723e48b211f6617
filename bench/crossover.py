"""Crossover study (issue 6): when does `Forward` beat the adjoints, and `Discrete`
the continuous adjoints? Warm gradient time vs state size + parameter count.

    /work/venv/bin/python -m bench.crossover            # full grid (~30 min)
    /work/venv/bin/python -m bench.crossover --quick    # a few points (~4 min)
    /work/venv/bin/python -m bench.crossover --solver stiff --repeats 5

Field families (`bench/problems/crossover.py`): `mlp` (`y' = A y + U tanh(V y + b)`,
p = 2nh + h, Tsit5), `few` (same coupling, p = 4, large n, Tsit5) and `stiff`
(decay rates in [1, 10³], the same MLP, Kvaerno5). t ∈ [0, 1], 5 save times,
float64, rtol = atol = 1e-6. Each grid point runs in a FRESH subprocess (with
`OPENBLAS_NUM_THREADS=1`) holding every method, compiled one after the other
(first call = trace + compile + one run, in-process) and then timed round-robin
(`--repeats` rounds, default 15; a method stops being repeated once it has used
`PER_METHOD_BUDGET_S`). A method predicted hopeless is skipped with the reason
(`Forward` when ≈ 0.1·(n+p) × Discrete's time exceeds the budget; the adjoints
whose backward state holds the p parameter adjoints are skipped with an implicit
solver when n + p is large: Kvaerno5 factorises a dense (2n+p)² Jacobian).
A point whose subprocess outlives `--timeout` is re-run without the method that
was running.

Writes `bench/results/crossover.json` (every point, every method: median and min
warm time, first-call time, relative difference of the gradient from Discrete's),
`bench/results/crossover.md` (the crossover points) and
`bench/results/crossover.png` (time vs n + p per method; explicit | stiff).
`--quick` writes `crossover_quick.*` instead.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import time

from bench import _child


HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(HERE, "results")
JSON_PATH = os.path.join(RESULTS_DIR, "crossover.json")

METHODS = [
    "Discrete",
    "Forward",
    "BacksolveAdjoint",
    "InterpolatingAdjoint",
    "QuadratureAdjoint",
    "GaussAdjoint",
]
# `InterpolatingAdjoint(checkpoints=K)` is left out: a memory variant of
# InterpolatingAdjoint, never faster (bench/results/core.md), and each method costs
# ~5 s of compile per grid point. It is in the suite (`python -m bench`).
# Adjoints whose backward state carries μ (p entries) through the implicit solver.
AUGMENTED = {"BacksolveAdjoint", "InterpolatingAdjoint"}
PER_METHOD_BUDGET_S = 6.0
# For skipping only: Forward ≈ this × k × Discrete, with k = n + p tangents with an
# implicit solver, and with an explicit one (the sensitivity equations,
# jaxsens/_sensitivity/forward.py) k = min(n, p) Jacobian rows or columns per
# stage, times n·p / 10^4 once the n × p matrix S outgrows the cache (measured
# 1500× Discrete at n = 1024, p = 2049; a 240 s timeout at n = 4096).
FORWARD_PER_INPUT = 0.1
EXPLICIT_FORWARD_K = "min(n,p)·max(1, n·p/10⁴)"


def explicit_forward_k(n: int, p: int) -> float:
    """`k` of the explicit-solver Forward skip estimate above (also bench/run.py)."""
    return min(n, p) * max(1.0, n * p / 1e4)


IMPLICIT_AUGMENTED_MAX = 500  # n + p above which AUGMENTED adjoints skip on Kvaerno5

# (family, n, h). n + p from 4 to ~10^4 along the diagonal n ≈ h, plus points with
# a large state and few parameters and with a small state and many parameters.
GRID = {
    "explicit": [
        ("mlp", 1, 1),
        ("mlp", 2, 2),
        ("mlp", 4, 4),
        ("mlp", 8, 4),
        ("mlp", 8, 8),
        ("mlp", 16, 8),
        ("mlp", 16, 16),
        ("mlp", 32, 16),
        ("mlp", 32, 32),
        ("mlp", 64, 32),
        ("mlp", 64, 64),
        ("mlp", 2, 32),
        ("mlp", 2, 256),
        ("mlp", 2, 2048),
        ("mlp", 256, 1),
        ("mlp", 1024, 1),
        ("mlp", 4096, 1),
        ("few", 16, 0),
        ("few", 256, 0),
        ("few", 4096, 0),
    ],
    "stiff": [
        ("stiff", 1, 1),
        ("stiff", 2, 2),
        ("stiff", 4, 4),
        ("stiff", 8, 4),
        ("stiff", 8, 8),
        ("stiff", 16, 8),
        ("stiff", 16, 16),
        ("stiff", 32, 16),
        ("stiff", 32, 32),
        ("stiff", 64, 32),
        ("stiff", 64, 64),
        ("stiff", 2, 256),
        ("stiff", 2, 2048),
        ("stiff", 256, 1),
    ],
}
GRID["explicit_t10"] = [("mlp_t10", n, n) for n in (1, 2, 4, 8, 16, 32, 64)]
QUICK = {
    "explicit": [
        ("mlp", 1, 1),
        ("mlp", 4, 4),
        ("mlp", 16, 8),
        ("mlp", 32, 32),
        ("mlp", 64, 64),
    ],
    "stiff": [("stiff", 1, 1), ("stiff", 4, 4), ("stiff", 16, 8), ("stiff", 32, 32)],
}


# --- child: one grid point ------------------------------------------------------


def _method(name):
    import jaxsens

    return {
        "Discrete": jaxsens.Discrete,
        "Forward": jaxsens.Forward,
        "BacksolveAdjoint": jaxsens.BacksolveAdjoint,
        "InterpolatingAdjoint": jaxsens.InterpolatingAdjoint,
        "InterpolatingAdjoint(checkpoints=4)": lambda: jaxsens.InterpolatingAdjoint(
            checkpoints=4
        ),
        "QuadratureAdjoint": jaxsens.QuadratureAdjoint,
        "GaussAdjoint": jaxsens.GaussAdjoint,
    }[name]()


def child(family, n, h, rounds, exclude):
    import jax

    jax.config.update("jax_enable_x64", True)
    import diffrax as dfx
    import jax.numpy as jnp
    import numpy as np
    from jax.flatten_util import ravel_pytree

    import jaxsens
    from bench.problems import crossover as cp

    pr = cp.make(family, n, h)
    solver = dfx.Kvaerno5() if pr.stiff else dfx.Tsit5()

    def grad_of(method):
        def loss(params):
            sol = jaxsens.solve(
                pr.field, pr.y0, pr.ts, params, solver=solver, sensitivity=method
            )
            return pr.loss(sol.ys)

        return jax.jit(jax.grad(loss))

    def say(**kw):
        print(json.dumps(kw), flush=True)

    # Forward steps of the primal solve (for the record).
    sol = jax.jit(
        lambda a: (
            jaxsens.solve(
                pr.field, pr.y0, pr.ts, a, solver=solver, sensitivity=jaxsens.Discrete()
            ).stats
        )
    )(pr.params)
    steps = int(sol["num_steps"])
    rows, fns, grads = {}, {}, {}
    for name in METHODS:
        if name in exclude:
            rows[name] = {"skipped": exclude[name]}
            continue
        if name == "Forward" and "Discrete" in fns:
            if pr.stiff:
                k, k_name = n + pr.p, "(n+p)"
            else:
                k, k_name = explicit_forward_k(n, pr.p), EXPLICIT_FORWARD_K
            est = FORWARD_PER_INPUT * k * rows["Discrete"]["probe"]
            if est > PER_METHOD_BUDGET_S:
                rows[name] = {
                    "skipped": f"predicted ≈ {est:.0f} s per gradient "
                    f"(≈ {FORWARD_PER_INPUT}·{k_name} × Discrete)"
                }
                continue
        if pr.stiff and name in AUGMENTED and n + pr.p > IMPLICIT_AUGMENTED_MAX:
            rows[name] = {
                "skipped": f"n + p = {n + pr.p} > {IMPLICIT_AUGMENTED_MAX}: "
                "Kvaerno5 on the augmented backward state (dense Jacobian)"
            }
            continue
        if (
            pr.stiff
            and name == "QuadratureAdjoint"
            and n + pr.p > IMPLICIT_AUGMENTED_MAX
        ):
            rows[name] = {
                "skipped": f"n + p = {n + pr.p} > {IMPLICIT_AUGMENTED_MAX}: "
                "first call did not finish within 240 s at n + p = 544"
            }
            continue
        say(start=name)
        f = grad_of(_method(name))
        t = time.perf_counter()
        try:
            g = jax.block_until_ready(f(pr.params))
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            from bench._child import error_text

            rows[name] = {"error": error_text(e)}
            say(failed=name)
            continue
        first = time.perf_counter() - t
        t = time.perf_counter()
        jax.block_until_ready(f(pr.params))
        probe = time.perf_counter() - t
        rows[name] = {"first": first, "probe": probe, "times": [probe]}
        fns[name] = f
        grads[name] = np.asarray(ravel_pytree(g)[0])
        say(done=name, first=first, probe=probe)
    say(timing=True)
    for _ in range(max(0, rounds - 1)):
        for name, f in fns.items():
            r = rows[name]
            if sum(r["times"]) > PER_METHOD_BUDGET_S:
                continue
            t = time.perf_counter()
            jax.block_until_ready(f(pr.params))
            r["times"].append(time.perf_counter() - t)
    ref = grads.get("Discrete")
    for name in fns:
        r = rows[name]
        r["warm"] = statistics.median(r["times"])
        r["min"] = min(r["times"])
        r["n_warm"] = len(r["times"])
        if ref is not None:
            r["rel_diff_vs_discrete"] = float(
                np.linalg.norm(grads[name] - ref) / max(np.linalg.norm(ref), 1e-300)
            )
        del r["times"], r["probe"]
    say(
        result={
            "family": family,
            "n": n,
            "h": h,
            "p": pr.p,
            "n_plus_p": n + pr.p,
            "solver": type(solver).__name__,
            "forward_steps": steps,
            "rows": rows,
        }
    )
    del jnp


# --- parent ---------------------------------------------------------------------


def run_point(family, n, h, rounds, timeout, log):
    """One grid point in a fresh subprocess (`bench._child.run`); None if it failed."""
    res = _child.run(
        "bench.crossover", [family, n, h], rounds=rounds, timeout=timeout, log=log
    )
    return None if "error" in res else res


def meta_info():
    import diffrax as dfx
    import equinox as eqx
    import jax

    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=HERE,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "jaxsens"],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(HERE),
        ).stdout.strip()
        rev += " (+ uncommitted jaxsens/ changes)" if dirty else ""
    except OSError:
        rev = "?"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared with 3 other "
        f"engineers' jobs), Python {platform.python_version()}",
        "versions": f"jax {jax.__version__}, diffrax {dfx.__version__}, "
        f"equinox {eqx.__version__}",
        "jaxsens": rev,
        "load": os.getloadavg()[0],
    }


def fastest(pt, names=None):
    rows = pt["rows"]
    ok = [m for m in rows if "warm" in rows[m] and (names is None or m in names)]
    return min(ok, key=lambda m: rows[m]["warm"]) if ok else None


ADJOINTS = [m for m in METHODS if m not in ("Discrete", "Forward")]


def analyse(points):
    """Per solver kind: the points sorted by n + p with the fastest method, and the
    crossover estimates (largest n + p where Forward wins, smallest where it loses)."""
    out = {}
    for kind in ("explicit", "explicit_t10", "stiff"):
        pts = sorted(
            (p for p in points if p["kind"] == kind), key=lambda p: p["n_plus_p"]
        )
        if not pts:
            continue
        fwd_wins = [p["n_plus_p"] for p in pts if fastest(p) == "Forward"]
        fwd_loses = [p["n_plus_p"] for p in pts if fastest(p) not in (None, "Forward")]
        out[kind] = {
            "largest_forward_win": max(fwd_wins) if fwd_wins else None,
            "smallest_forward_loss": min(fwd_loses) if fwd_loses else None,
            "points": pts,
        }
    return out


def ratio(pt, a, b):
    r = pt["rows"]
    if "warm" in r.get(a, {}) and "warm" in r.get(b, {}):
        return r[a]["warm"] / r[b]["warm"]
    return float("nan")


def fmt_ms(s):
    return "—" if s is None or s != s else f"{s * 1e3:.3g}"


def _runs(pts, key):
    """Consecutive points (sorted by n + p) with the same `key(p)`, as text."""
    out, cur = [], None
    for p in pts:
        k = key(p)
        if cur and cur[0] == k:
            cur[2] = p["n_plus_p"]
        else:
            cur = [k, p["n_plus_p"], p["n_plus_p"]]
            out.append(cur)
    return "; ".join(
        f"n+p {a}" + (f"–{b}" if b != a else "") + f": {k}" for k, a, b in out
    )


def summary(an):
    """Bullet lines: where each method is fastest, the crossovers."""
    L = []
    for kind, a in an.items():
        pts = a["points"]
        L.append(
            f"- **{kind} ({pts[0]['solver']})**: fastest method by n + p: "
            + _runs(pts, lambda p: fastest(p) or "none")
            + "."
        )
        L.append(
            f"  Forward is fastest up to n + p = {a['largest_forward_win']}; "
            f"the smallest n + p where another method wins is "
            f"{a['smallest_forward_loss']}."
        )
        fr = [
            (p["n_plus_p"], ratio(p, "Forward", fastest(p, ["Discrete"] + ADJOINTS)))
            for p in pts
        ]
        fr = [(x, r) for x, r in fr if r == r]
        if fr:
            L.append(
                "  Forward ÷ fastest reverse-mode method: "
                + ", ".join(f"{r:.2g}× at {x}" for x, r in fr)
                + "."
            )
        dr = [(p["n_plus_p"], ratio(p, "Discrete", fastest(p, ADJOINTS))) for p in pts]
        dr = [(x, r) for x, r in dr if r == r]
        if dr:
            L.append(
                "  Discrete ÷ fastest continuous adjoint: "
                + ", ".join(f"{r:.2g}× at {x}" for x, r in dr)
                + "."
            )
        L.append(
            "  Fastest continuous adjoint by n + p: "
            + _runs(pts, lambda p: fastest(p, ADJOINTS) or "none")
            + "."
        )
    return L


READING = """\
## Reading (explicit and explicit_t10 grids re-run 2026-11-26 17:09 with the raised XLA:CPU small-loop limit, `Forward` on the sensitivity equations and `Discrete` storing every step only up to 256 KiB; stiff grid from the earlier run)

- **`Discrete` is 1.2–1.9× faster at n = 16–64 than in the 14:45 run**: it no
  longer stores every step when `max_steps` states exceed 256 KiB (a store sized
  by `max_steps`, 4096 here, whatever the steps taken): (64, 8256) 0.79 → 0.41
  ms, (32, 1040) 0.29 → 0.21 ms, `explicit_t10` (64, 64) 1.52 → 0.89 ms; points
  with n ≤ 8 keep the store (unchanged within noise).

- **`Forward` with an explicit solver now integrates the sensitivity equations**
  (jaxsens/_sensitivity/forward.py): `n` Jacobian rows (vjps) per stage when
  `n ≤ p`, `p` columns (jvps) when the state outnumbers the parameters, each a
  matrix-vector product, so the loop is compiled whole; before, `n + p` tangents
  were batched through diffrax and their matrix-matrix products (YNNPACK
  fusions) kept the loop op by op. Forward ÷ Discrete on the `mlp` family is
  now 0.66, 0.77, 0.86, 1.01, 1.29 at (n, p) = (1, 3), (2, 10), (4, 36),
  (8, 68), (8, 136) (~5 steps; was 0.55, 2.3, 2.4, 2.3, 3.9 with batched
  tangents) and 0.53, 0.76, 1.01, 2.9 at (1, 3), (2, 10), (4, 36), (8, 136) on
  `explicit_t10` (~20 steps; was 0.51, 5.2, 4.7, 10). With n = 2 it grows slowly
  with p: 0.92, 1.75, 4.8 at p = 160, 1280, 10240 (the n × p matrix rides through every stage). With
  p = 4 (`few`, columns) it beats Discrete at every state size: 0.53, 0.47, 0.57
  at n = 16, 256, 4096 (was 0.44, 0.75, 0.94). It is hopeless with many states
  and many parameters: 47× at (32, 1040), 530× at (64, 8256) (1500× at
  (1024, 2049) in the 14:45 run; skipped now as predicted hopeless), where the n
  vmapped rows are matrix-matrix products on an n × p matrix.
  **Explicit (Tsit5): Forward wins up to n + p ≈ 12–40 on MLP fields, and with few parameters whatever n.** (The n = 16 points ran
  with the 16 rows formed one at a time; `UNROLL_MAX` is now 8, so they are
  vmapped: the same speed, 3.6 against 3.4 ms at (16, 264) on 20 steps, and
  half the compile time, 3.3 → 1.7 s.)
- The stiff grid was not re-run: `Forward` with an implicit solver still batches
  its tangents through diffrax's solve (unchanged), and Kvaerno5 loops call
  LAPACK, and a loop with a library call is never compiled whole, so the limit
  leaves them unchanged (Robertson in the suite: ×1.00). **Stiff (Kvaerno5, 25–36 steps): Forward ÷ Discrete is
  0.25, 0.85, 0.67, 0.86 at p = 3, 10, 36, 68, then 1.19× at 136, 3.6× at 264:
  Forward wins for p ≲ 70–100** (its tangents reuse the Newton matrix
  factorisation).
- **Above that, Discrete is the method to pick.** Leaving BacksolveAdjoint aside,
  Discrete is the fastest method, or within 1.1× of Forward, at every explicit
  `mlp` point with n + p ≥ 40 (Forward 0.86–0.92× at (4, 36) and (2, 160) on
  5-step solves, 1.01× at (4, 36) on 20 steps), and the fastest or within 1.5×
  of it at every stiff point with p > 40. BacksolveAdjoint is up to 2.2× faster than Discrete on the explicit family
  (mildly damped: decay 0.5, so the backward re-integration is stable), and up
  to 4.5× slower at p ≈ 10⁴, but it **raised at every stiff point**
  (re-integrating a dissipative system backwards diverges; jaxsens detects it
  and raises instead of returning a wrong gradient) and on seed 000, the UDE and
  the heat equation in the suite. Use it only when it is known to be stable.
- **The continuous adjoints other than Backsolve cost 1.3–6.8× Discrete's time
  on the explicit `mlp` points with n ≤ 64** (GaussAdjoint or QuadratureAdjoint
  the best of them from p ≈ 1000 on; the upper end grew with Discrete's faster
  default at n ≥ 16). **GaussAdjoint is the best continuous adjoint on the stiff
  problem** (0.75–1.7× Discrete's time, mostly 0.9–1.1×). The adjoints whose
  backward state carries the p parameter adjoints through the implicit solver
  (Interpolating, Backsolve) blow up with p on Kvaerno5: InterpolatingAdjoint
  591 ms vs Discrete 14 ms at n + p = 280, and > 240 s at 544 (QuadratureAdjoint
  too); skipped above 500.
- **Interpolating/Quadrature/Gauss adjoints slow down badly with the state size n**
  on the explicit problem, regardless of p: at p = 4, n = 256 they take 24–26 ms
  vs Discrete's 0.48 ms, at n = 4096 382–461 ms vs 5.0 ms. **Cause: the forward
  dense output they read is preallocated from `max_steps`** (≈ 4096 × 8 × n
  floats; XLA temp 256 MB at n = 1024 with the default `max_steps = 4096`) and the
  time follows the buffer, not the steps taken (measured before: `few`,
  n = 1024, GaussAdjoint 79 ms at `max_steps = 4096`, 1.7 ms at 256). Sizing
  `max_steps` to the solve removes most of the gap.
- Accuracy: every gradient agrees with Discrete's to < 1e-4 relative on the
  explicit grids; on the stiffest point of the stiff grid (n = 1, decay rate 10³,
  Kvaerno5) Quadrature/GaussAdjoint are 9 % off — the same weakness as their 0.96
  error on seed 000's stiff variant (results/linear.md).
- Caveat: on t ∈ [0, 1] the explicit solves take 3–8 steps, so small points are
  dominated by per-call overheads; `explicit_t10` (t ∈ [0, 10], n = h, 19–23
  steps) is the more realistic explicit curve. There, leaving Backsolve aside
  (0.83–0.94× Discrete up to p = 136, 1.4–3.1× above), Discrete is the fastest
  method from p = 36 on, and the best other continuous adjoint takes 1.3–3.9×
  Discrete's time.
- A rule this supports: linear → LinearExpm/KrylovExpm (suite); else Forward if
  n + p ≤ ~8–12 with an explicit solver or p ≤ ~64 with an implicit one; else
  Discrete. `Auto` keeps 8: between 8 and 12 the two are within 1.3× of each
  other. The `few` case, where Forward takes p columns and wins at any n, needs
  `y0` not differentiated: inside a trace `Auto` counts `y0` only when it is
  traced, and picks Forward for p ≤ 4 when it is not
  (results/forward_columns.md: 0.18–0.67× Discrete for p ≤ 4, n ≤ 4096). The
  continuous adjoints
  only when memory matters (long horizons), or with ~10⁴ parameters (suite:
  QuadratureAdjoint 1.25–1.3× faster than Discrete on seed 000's UDE and the
  long horizon).
"""


def markdown(data):
    meta = data["meta"]
    an = analyse(data["points"])
    made = []
    for p in data["points"]:
        mb = p.get("made_by", {k: meta[k] for k in ("cmd", "date", "jaxsens")})
        line = f"`{mb['cmd']}` ({mb['date']}, jaxsens {mb['jaxsens']})"
        if line not in made:
            made.append(line)
    L = (
        [
            "# Crossover study: Forward vs adjoints vs Discrete (issue 6)",
            "",
            "Made by " + "; ".join(made) + f". {meta['machine']}; {meta['versions']}.",
            "",
            "The machine was **shared** (2 cores, other engineers' test runs): times are "
            "noisy; every method of a point was timed in the same process, round-robin, "
            "so compare within a row. Warm = median of the round-robin calls (ms); the "
            "grid is in `crossover.json` (with mins, first-call times and each gradient's "
            "relative difference from Discrete's) for fitting a rule. Problems: "
            "`bench/problems/crossover.py` (t ∈ [0, 1], 5 save times, float64, "
            "rtol = atol = 1e-6; explicit = Tsit5 on `y' = A y + U tanh(V y + b)` or "
            "the p = 4 `few` family; stiff = Kvaerno5, decay rates in [1, 10³]).",
            "",
            "## Summary (generated from the points measured so far)",
            "",
        ]
        + summary(an)
        + [
            "",
            READING,
            "![crossover](crossover.png)",
        ]
    )
    for kind, a in an.items():
        L += ["", f"## {kind} ({a['points'][0]['solver']})", ""]
        L.append(
            f"- Forward fastest up to n + p = {a['largest_forward_win']}; "
            f"first point where something else is fastest: n + p = "
            f"{a['smallest_forward_loss']}."
        )
        L += [
            "",
            "| family | n | p | n+p | steps | fastest | Forward/best-reverse | "
            "Discrete/best-adjoint | " + " | ".join(METHODS) + " |",
            "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | "
            + " | ".join("---:" for _ in METHODS)
            + " |",
        ]
        for p in a["points"]:
            rows = p["rows"]
            best_rev = fastest(p, ["Discrete"] + ADJOINTS)
            best_adj = fastest(p, ADJOINTS)
            cells = []
            for m in METHODS:
                r = rows.get(m, {})
                if "warm" in r:
                    cells.append(fmt_ms(r["warm"]))
                elif "skipped" in r:
                    cells.append("skip")
                else:
                    cells.append("fail")
            L.append(
                f"| {p['family']} | {p['n']} | {p['p']} | {p['n_plus_p']} "
                f"| {p['forward_steps']} | {fastest(p)} "
                f"| {ratio(p, 'Forward', best_rev) if best_rev else float('nan'):.2f} "
                f"| {ratio(p, 'Discrete', best_adj) if best_adj else float('nan'):.2f} "
                f"| " + " | ".join(cells) + " |"
            )
        notes = sorted(
            {
                f"{m}: {r['skipped']}"
                for p in a["points"]
                for m, r in p["rows"].items()
                if "skipped" in r and "predicted" not in r["skipped"]
            }
        )
        errs = sorted(
            {
                f"{m} (n={p['n']}, p={p['p']}): {r['error']}"
                for p in a["points"]
                for m, r in p["rows"].items()
                if "error" in r
            }
        )
        if notes or errs:
            L += ["", "Skips and failures: " + "; ".join(notes + errs) + "."]
    return "\n".join(L) + "\n"


def plot(data, tag=""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    an = analyse(data["points"])
    kinds = [k for k in ("explicit", "explicit_t10", "stiff") if k in an] or [
        "explicit"
    ]
    fig, axes = plt.subplots(1, len(kinds), figsize=(6.5 * len(kinds), 5), sharey=True)
    axes = list(getattr(axes, "flat", [axes]))
    for ax, kind in zip(axes, kinds, strict=True):
        if kind not in an:
            ax.set_title(f"{kind}: no data")
            continue
        pts = [p for p in an[kind]["points"] if p["family"] != "few"]
        few = [p for p in an[kind]["points"] if p["family"] == "few"]
        for i, m in enumerate(METHODS):
            xs = [p["n_plus_p"] for p in pts if "warm" in p["rows"].get(m, {})]
            ys = [
                p["rows"][m]["warm"] * 1e3
                for p in pts
                if "warm" in p["rows"].get(m, {})
            ]
            style = dict(color=f"C{i}", lw=2.2 if m in ("Discrete", "Forward") else 1.2)
            if xs:
                ax.plot(xs, ys, "o", label=m, ms=4, **style)
            xs = [p["n_plus_p"] for p in few if "warm" in p["rows"].get(m, {})]
            ys = [
                p["rows"][m]["warm"] * 1e3
                for p in few
                if "warm" in p["rows"].get(m, {})
            ]
            if xs:
                ax.plot(xs, ys, "x", color=f"C{i}", ms=7)
        # lines through the diagonal n ≈ h points only (a 1-D family)
        diag = sorted(
            [p for p in pts if p["n"] == p["h"] or p["h"] == p["n"] // 2],
            key=lambda p: p["n_plus_p"],
        )
        for i, m in enumerate(METHODS):
            xs = [p["n_plus_p"] for p in diag if "warm" in p["rows"].get(m, {})]
            ys = [
                p["rows"][m]["warm"] * 1e3
                for p in diag
                if "warm" in p["rows"].get(m, {})
            ]
            ax.plot(
                xs,
                ys,
                "-",
                color=f"C{i}",
                lw=2.2 if m in ("Discrete", "Forward") else 1.0,
                alpha=0.8,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("n + p (state size + parameter count)")
        ax.set_title(
            f"{kind} ({an[kind]['points'][0]['solver']}); lines: n ≈ h, "
            "dots: other shapes, x: p = 4"
        )
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("warm gradient time (ms, median)")
    axes[0].legend(fontsize=8)
    fig.suptitle("Crossover: warm gradient time vs n + p (shared 2-core CPU)")
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS_DIR, f"crossover{tag}.png"), dpi=110)
    plt.close(fig)


def write(data, tag=""):
    """`crossover{tag}.json/.md/.png`; `--quick` runs use `tag="_quick"`, so they
    never overwrite the full grid's files."""
    with open(os.path.join(RESULTS_DIR, f"crossover{tag}.json"), "w") as fh:
        json.dump(data, fh, indent=1)
    md = markdown(data)
    if tag:
        md = md.replace("(crossover.png)", f"(crossover{tag}.png)")
    with open(os.path.join(RESULTS_DIR, f"crossover{tag}.md"), "w") as fh:
        fh.write(md)
    plot(data, tag)


def run(
    *, quick=False, solver="both", repeats=None, timeout=None, log=print, merge=True
):
    """The sweep; returns the data written to `crossover.json`."""
    rounds = repeats or (7 if quick else 15)
    timeout = timeout or (120 if quick else 240)
    grid = QUICK if quick else GRID
    kinds = ["explicit", "stiff"] if solver == "both" else [solver]
    if solver == "both" and not quick:
        kinds.append("explicit_t10")
    cmd = (
        "python -m bench.crossover"
        + (" --quick" if quick else "")
        + (f" --solver {solver}" if solver != "both" else "")
        + (f" --repeats {repeats}" if repeats else "")
    )
    data = {"meta": dict(meta_info(), cmd=cmd), "points": []}
    tag = "_quick" if quick else ""
    json_path = os.path.join(RESULTS_DIR, f"crossover{tag}.json")
    if merge and os.path.exists(json_path):
        # Keep the previous run's points that this run does not redo.
        with open(json_path) as fh:
            old = json.load(fh)
        redo = {(k, f, n, h) for k in kinds for f, n, h in grid[k]}
        data["points"] = [
            p
            for p in old["points"]
            if (p["kind"], p["family"], p["n"], p["h"]) not in redo
        ]
    # Explicit and stiff points alternate, so a partial run covers both.
    order = []
    for i in range(max(len(grid[k]) for k in kinds)):
        order += [(k, grid[k][i]) for k in kinds if i < len(grid[k])]
    for kind, (family, n, h) in order:
        log(f"  {kind} {family} n={n} h={h}")
        res = run_point(family, n, h, rounds, timeout, log)
        if res is None:
            continue
        res["kind"] = kind
        res["made_by"] = {k: data["meta"][k] for k in ("cmd", "date", "jaxsens")}
        data["points"].append(res)
        best = fastest(res)
        log(
            f"    n+p={res['n_plus_p']} steps={res['forward_steps']} fastest={best} "
            + ", ".join(f"{m}={fmt_ms(r.get('warm'))}" for m, r in res["rows"].items())
        )
        write(data, tag)
    write(data, tag)
    return data


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--solver",
        choices=["both", "explicit", "stiff", "explicit_t10"],
        default="both",
    )
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=None)
    ap.add_argument("--child", nargs=3)
    ap.add_argument("--exclude", default="{}")
    a = ap.parse_args()
    if a.child:
        f, n, h = a.child
        return child(f, int(n), int(h), a.repeats or 15, json.loads(a.exclude))
    os.makedirs(RESULTS_DIR, exist_ok=True)
    run(
        quick=a.quick,
        solver=a.solver,
        repeats=a.repeats,
        timeout=a.timeout,
        log=lambda s: print(s, flush=True),
    )


if __name__ == "__main__":
    main()
