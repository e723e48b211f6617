"""Crossover study: when does `Forward` beat the adjoints, and `Discrete`
the continuous adjoints? Warm gradient time vs state size + parameter count.

    python -m bench crossover            # full grid (~30 min)
    python -m bench crossover --quick    # a few points (~4 min)
    python -m bench crossover --solver stiff --repeats 5

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
import statistics

from bench import _child
from bench._common import (
    ADJOINTS,
    CROSSOVER_METHODS,
    RESULTS_DIR,
    command,
    meta_info,
    method,
)
from bench._timing import timed


JSON_PATH = os.path.join(RESULTS_DIR, "crossover.json")

METHODS = CROSSOVER_METHODS
# `InterpolatingAdjoint(checkpoints=K)` is left out: a memory variant of
# InterpolatingAdjoint, never faster, and each method costs ~5 s of compile per
# grid point. It is in the suite (`python -m bench suite`).
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
    """`k` of the explicit-solver Forward skip estimate above (also the suite's)."""
    return min(n, p) * max(1.0, n * p / 1e4)


IMPLICIT_AUGMENTED_MAX = 500  # n + p above which AUGMENTED adjoints skip on Kvaerno5

# (family, n, h). n + p from 4 to ~10^4 along the diagonal n ≈ h, plus points with
# a large state and few parameters and with a small state and many parameters.
GRID = {
    "explicit": [("mlp", n, h) for n, h in (
        (1, 1), (2, 2), (4, 4), (8, 4), (8, 8), (16, 8), (16, 16), (32, 16), (32, 32),
        (64, 32), (64, 64), (2, 32), (2, 256), (2, 2048), (256, 1), (1024, 1),
        (4096, 1))] + [("few", n, 0) for n in (16, 256, 4096)],
    "stiff": [("stiff", n, h) for n, h in (
        (1, 1), (2, 2), (4, 4), (8, 4), (8, 8), (16, 8), (16, 16), (32, 16), (32, 32),
        (64, 32), (64, 64), (2, 256), (2, 2048), (256, 1))],
    "explicit_t10": [("mlp_t10", n, n) for n in (1, 2, 4, 8, 16, 32, 64)],
}
QUICK = {
    "explicit": [("mlp", n, h)
                 for n, h in ((1, 1), (4, 4), (16, 8), (32, 32), (64, 64))],
    "stiff": [("stiff", n, h) for n, h in ((1, 1), (4, 4), (16, 8), (32, 32))],
}


# --- child: one grid point ------------------------------------------------------


def child(family, n, h, rounds, exclude):
    import jax

    jax.config.update("jax_enable_x64", True)
    import diffrax as dfx
    import numpy as np
    from jax.flatten_util import ravel_pytree

    import jaxsens
    from bench.problems import crossover as cp

    say = _child.say
    pr = cp.make(family, n, h)
    solver = dfx.Kvaerno5() if pr.stiff else dfx.Tsit5()

    def grad_of(method):
        def loss(params):
            return pr.loss(jaxsens.solve(pr.field, pr.y0, pr.ts, params, solver=solver,
                                         sensitivity=method).ys)
        return jax.jit(jax.grad(loss))

    # Forward steps of the primal solve (for the record).
    steps = int(jax.jit(lambda a: jaxsens.solve(
        pr.field, pr.y0, pr.ts, a, solver=solver,
        sensitivity=jaxsens.Discrete()).stats["num_steps"])(pr.params))
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
        if pr.stiff and n + pr.p > IMPLICIT_AUGMENTED_MAX and (
                name in AUGMENTED or name == "QuadratureAdjoint"):
            why = ("Kvaerno5 on the augmented backward state (dense Jacobian)"
                   if name in AUGMENTED else
                   "first call did not finish within 240 s at n + p = 544")
            rows[name] = {"skipped": f"n + p = {n + pr.p} > {IMPLICIT_AUGMENTED_MAX}: "
                          + why}
            continue
        say(start=name)
        f = grad_of(method(name))
        try:
            first, g = timed(f, pr.params)
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            rows[name] = {"error": _child.error_text(e)}
            say(failed=name)
            continue
        probe = timed(f, pr.params)[0]
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
            r["times"].append(timed(f, pr.params)[0])
    ref = grads.get("Discrete")
    for name in fns:
        r = rows[name]
        r["warm"] = statistics.median(r["times"])
        r["min"] = min(r["times"])
        r["n_warm"] = len(r["times"])
        if ref is not None:
            r["rel_diff_vs_discrete"] = float(
                np.linalg.norm(grads[name] - ref) / max(np.linalg.norm(ref), 1e-300))
        del r["times"], r["probe"]
    say(result=dict(family=family, n=n, h=h, p=pr.p, n_plus_p=n + pr.p,
                    solver=type(solver).__name__, forward_steps=steps, rows=rows))


# --- parent ---------------------------------------------------------------------


def run_point(family, n, h, rounds, timeout, log):
    """One grid point in a fresh subprocess (`bench._child.run`); None if it failed."""
    res = _child.run("crossover", [family, n, h], rounds=rounds, timeout=timeout,
                     log=log)
    return None if "error" in res else res


def fastest(pt, names=None):
    rows = pt["rows"]
    ok = [m for m in rows if "warm" in rows[m] and (names is None or m in names)]
    return min(ok, key=lambda m: rows[m]["warm"]) if ok else None


def analyse(points):
    """Per solver kind: the points sorted by n + p with the fastest method, and the
    crossover estimates (largest n + p where Forward wins, smallest where it loses)."""
    out = {}
    for kind in ("explicit", "explicit_t10", "stiff"):
        pts = sorted((p for p in points if p["kind"] == kind),
                     key=lambda p: p["n_plus_p"])
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


def _ms(s):
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
            "# Crossover study: Forward vs adjoints vs Discrete",
            "",
            "Made by " + "; ".join(made) + f". {meta['machine']}; {meta['versions']}.",
            "",
            "The 2 cores were loaded by other jobs: times are noisy; every method "
            "of a point was timed in the same process, round-robin, so compare "
            "within a row. Warm = median of the round-robin calls (ms); the grid is "
            "in `crossover.json` (with mins, first-call times and each gradient's "
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
            "What the points say: `bench/RESULTS.md`, \"Reading the crossover\".",
            "",
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
            cells = [_ms(rows[m]["warm"]) if "warm" in rows.get(m, {}) else
                     "skip" if "skipped" in rows.get(m, {}) else "fail"
                     for m in METHODS]
            L.append(
                f"| {p['family']} | {p['n']} | {p['p']} | {p['n_plus_p']} "
                f"| {p['forward_steps']} | {fastest(p)} "
                f"| {ratio(p, 'Forward', best_rev) if best_rev else float('nan'):.2f} "
                f"| {ratio(p, 'Discrete', best_adj) if best_adj else float('nan'):.2f} "
                f"| " + " | ".join(cells) + " |"
            )
        rs = [(p, m, r) for p in a["points"] for m, r in p["rows"].items()]
        notes = sorted({f"{m}: {r['skipped']}" for p, m, r in rs
                        if "skipped" in r and "predicted" not in r["skipped"]})
        errs = sorted({f"{m} (n={p['n']}, p={p['p']}): {r['error']}"
                       for p, m, r in rs if "error" in r})
        if notes or errs:
            L += ["", "Skips and failures: " + "; ".join(notes + errs) + "."]
    return "\n".join(L) + "\n"


def _warm_ms(points, m):
    """`(n + p, warm ms)` of method `m` at the points where it ran."""
    ran = [p for p in points if "warm" in p["rows"].get(m, {})]
    return [p["n_plus_p"] for p in ran], [p["rows"][m]["warm"] * 1e3 for p in ran]


def plot(data, tag=""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    an = analyse(data["points"])
    kinds = [k for k in ("explicit", "explicit_t10", "stiff") if k in an]
    kinds = kinds or ["explicit"]
    fig, axes = plt.subplots(1, len(kinds), figsize=(6.5 * len(kinds), 5), sharey=True)
    axes = list(getattr(axes, "flat", [axes]))
    for ax, kind in zip(axes, kinds, strict=True):
        if kind not in an:
            ax.set_title(f"{kind}: no data")
            continue
        pts = [p for p in an[kind]["points"] if p["family"] != "few"]
        few = [p for p in an[kind]["points"] if p["family"] == "few"]
        for i, m in enumerate(METHODS):
            style = dict(color=f"C{i}", lw=2.2 if m in ("Discrete", "Forward") else 1.2)
            if (xy := _warm_ms(pts, m))[0]:
                ax.plot(*xy, "o", label=m, ms=4, **style)
            if (xy := _warm_ms(few, m))[0]:
                ax.plot(*xy, "x", color=f"C{i}", ms=7)
        # lines through the diagonal n ≈ h points only (a 1-D family)
        diag = sorted([p for p in pts if p["n"] == p["h"] or p["h"] == p["n"] // 2],
                      key=lambda p: p["n_plus_p"])
        for i, m in enumerate(METHODS):
            ax.plot(*_warm_ms(diag, m), "-", color=f"C{i}",
                    lw=2.2 if m in ("Discrete", "Forward") else 1.0, alpha=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("n + p (state size + parameter count)")
        ax.set_title(f"{kind} ({an[kind]['points'][0]['solver']}); lines: n ≈ h, "
                     "dots: other shapes, x: p = 4")
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
    argv = ((["--quick"] if quick else [])
            + ([f"--solver {solver}"] if solver != "both" else [])
            + ([f"--repeats {repeats}"] if repeats else []))
    data = {"meta": meta_info(command("crossover", argv)), "points": []}
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
            + ", ".join(f"{m}={_ms(r.get('warm'))}" for m, r in res["rows"].items())
        )
        write(data, tag)
    write(data, tag)
    return data


def main(argv):
    ap = argparse.ArgumentParser(prog="python -m bench crossover",
                                 description=__doc__.splitlines()[0])
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
    a = ap.parse_args(argv)
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

