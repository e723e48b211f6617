"""Write `bench/RESULTS.md` and `bench/results/suite.png` from the suite's and the
crossover's JSON (`bench/results/suite.json`, `bench/results/crossover.json`).

    /work/venv/bin/python -m bench --report
"""

import json
import os


HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(HERE, "results")
SUITE_JSON = os.path.join(RESULTS_DIR, "suite.json")
CROSSOVER_JSON = os.path.join(RESULTS_DIR, "crossover.json")

TOPIC_FILES = [
    (
        "core.md",
        "core methods vs diffrax on LV and seed 002 (1 control), memory on "
        "a long solve (issue 2)",
    ),
    (
        "small_loops.md",
        "every suite row with XLA:CPU's default small-loop limit and with jaxsens's",
    ),
    (
        "core_xla_default.md",
        "the same with XLA:CPU's default small-loop limit (JAXSENS_SMALL_LOOP_BYTES=0): "
        "what jaxsens's raised limit buys",
    ),
    ("core_profile.md", "where the adjoints' time goes (profile)"),
    ("forward_columns.md", "Forward by Jacobian columns vs Discrete, y0 not differentiated"),
    (
        "loop_dtype.md",
        "float32 against float64 inner while loops on XLA:CPU, with XLA's default "
        "small-loop limit and jaxsens's: why float64 loops were ~3× dearer",
    ),
    (
        "linear.md",
        "seed 000, its stiff variant, the UDE and the 2-D heat equation: "
        "`LinearExpm`/`KrylovExpm` (issue 3)",
    ),
    (
        "controls.md",
        "seed 002 with 1–1000 controls, vmap vs shared step, torchdiffeq (issue 4)",
    ),
    ("steady.md", "steady-state adjoint (issue 5)"),
    ("collocation.md", "collocation / two-stage fitting (issue 5)"),
    ("crossover.md", "the crossover study (issue 6)"),
]


FINDINGS = """\
## Findings (written 2026-11-26 from the runs below; re-check after a re-run)

- **`Forward` with an explicit solver integrates the sensitivity equations**
  (`S' = f_y S + f_θ` on the primal's own steps, assembled from `n` Jacobian rows
  or `p` columns per stage, one matrix-vector product each) instead of batching
  `n + p` tangents through diffrax, whose matrix-matrix products XLA:CPU hands to
  a library and runs op by op. Seed 002 (n = 2, p = 282): 7.4 ms → 0.59 ms (1
  control, Discrete 0.54 ms), 1.22 s → 331 ms (100 controls, vmapped); Lotka–
  Volterra: Forward is now the fastest jaxsens method (109 µs, Discrete 144 µs,
  Backsolve 142 µs in this run); seed 000 (n = 100, p = 10⁴): 6.9 s per gradient
  (was 27–43 s; the seed's ForwardDiff 27.5 s). Crossover (results/crossover.md):
  Forward ÷ Discrete 0.53, 0.76, 1.01, 2.9 at n + p = 4, 12, 40, 144 (was 0.51,
  5.2, 4.7, 10), and 0.47–0.57 with p = 4 at any state size. Implicit solvers
  (Robertson) keep the batched tangents: unchanged.
- **No continuous adjoint can match diffrax RCA on seed 002 (1 control, 100 save
  times)** (results/core_profile.md): λ jumps at each save time, so the backward
  pass takes ≥ 99 steps where the forward took 43, each step after a jump costs 7
  vjps of the field (0.69 µs each) on top of the 107 µs primal: a lower bound of
  584 µs, 1.53× RCA's 382 µs, with every other cost of the loop taken as zero.
  BacksolveAdjoint takes 669 µs. With 10 save times it takes 1.02× RCA's time.
  `Discrete` (0.97× RCA) is the method for such problems, and Auto picks it.

- **XLA:CPU's small-loop limit sets the speed of small solves.** XLA:CPU runs a
  program op by op (~0.1–1 µs per op) except `while` loops moving under
  `xla_cpu_small_while_loop_byte_threshold` bytes per iteration (1 KiB by
  default), which it compiles whole. `import jaxsens` raises it to 1 MiB
  (jaxsens/_xla.py). Same code, same process for all methods and peers
  (results/core.md against results/core_xla_default.md): Lotka–Volterra
  gradients 4–6× faster (Backsolve 364 → 72 µs, Gauss 590 → 105 µs, diffrax RCA
  1.04 ms → 93 µs), seed 002 (1 control) 2–3× (Discrete 836 → 340 µs), compile
  0.3–0.5 s shorter; problems with large states (seed 000, heat, 100 controls)
  and implicit solvers (Robertson: the linear solves are library calls, which
  keep a loop op by op) are unchanged. results/small_loops.md has every suite
  row under both settings. Every table below is made with the raised limit
  unless it says otherwise.
- **Linear fields are never time-stepped by Auto, and that is right**: seed 000
  `LinearExpm` ≈ 1.75 ms vs ≈ 8–12 ms for Discrete/diffrax and an exact gradient
  (time-stepped ones are 4e-3 off at rtol = 1e-6); heat 100×100 `KrylovExpm`
  ≈ 0.13 s vs ≈ 0.87 s for Discrete/diffrax RCA, whose gradient is **wrong by 8e5**
  (differentiating the step-size controller at Tsit5's stability limit, see
  results/linear.md).
- **Silent wrong gradients among the peers**: on seed 000, the UDE and the heat
  equation, diffrax `BacksolveAdjoint`, `jax.experimental.ode.odeint` and
  torchdiffeq `odeint_adjoint` return gradients off by 1e18–1e119 without an
  error (backward re-integration of a dissipative system). jaxsens's
  `BacksolveAdjoint` raises instead on the same problems.
- **Forward is hopeless at p ≈ 10^4, as seed 000 said**: 6.9 s per gradient on
  seed 000 with the sensitivity equations (27–43 s with batched tangents,
  results/linear.md), vs 1.9 ms for `LinearExpm`.
- **Seed 000 UDE (p ≈ 10^4)**: `QuadratureAdjoint` 10.1 ms and `GaussAdjoint`
  10.2 ms are the fastest, ahead of Discrete 12.7 ms and diffrax RCA 13.0 ms
  (Interpolating ≈ 35 ms); Auto still picks Discrete (1.26× the fastest).
  Discrete no longer stores every step here (n = 100: 3.2 MB of states at
  `max_steps` = 4096, above its 256 KiB limit): XLA temporaries 6.7 → 0.5 MB,
  compile 3.1 → 4.1 s (diffrax RCA's 4.2 s), warm time unchanged within noise.
  Quadrature took 31 ms while its node store was sized by the backward step
  budget; it now holds 256 steps and is integrated whenever it fills.
- **Long horizon (10^4 steps)**: `QuadratureAdjoint` 0.49 s is the fastest, ahead
  of Discrete 0.63 s (= diffrax RCA) and Gauss 0.67 s: the parameter integral is
  ONE vjp of the field batched over the quadrature nodes with θ shared.
  Backsolve 3.2 s (diffrax's 4.0 s), Interpolating 4.3 s,
  Interpolating(checkpoints=16) 4.7 s: their backward state `(y, λ, μ)` carries
  the 10^4 parameter adjoints through every stage. Auto picks Discrete (1.27× the
  fastest; the rule was measured before these changes; within the 1.5× check).
  XLA temp buffers: Discrete 0.3 MB, checkpointed Interpolating 2.1 MB,
  Backsolve 1.1 MB, Gauss/Interpolating/Quadrature ≈ 50 MB (the forward dense
  output; see results/core.md for resident-memory measurements).
- **Checkpointed memory is flat** (results/core.md, memory case, 10^3 → 10^5
  steps): `InterpolatingAdjoint(checkpoints=16)` 2.05 → 2.07 MB of XLA temporaries
  (was 2.6 → 124 MB before intervals too long for one 256-step dense output were
  split recursively), `BacksolveAdjoint` 1.06 MB throughout, `Discrete` 0.2 →
  0.84 MB (recursive checkpointing at every size now: at 10^3 steps with a tight
  `max_steps` it used to store every step, 1.5 MB and 49 ms against 0.2 MB and
  65 ms now). At 93,000 forward steps: checkpointed 46 s, Backsolve 31 s,
  Discrete 5.8 s. On
  heat2d (n = 10^4) `checkpoints=8` needs 161 MB instead of 2.5 GB and takes
  0.66 s, less than Discrete (0.88 s).
- **The dense-output adjoints' forward dense output is sized by `max_steps`**, and
  their time follows its size (crossover reading): GaussAdjoint 79 ms → 1.7 ms on
  a 1024-state problem when `max_steps` goes from 4096 to 256. This inflates every
  such time at large n in these tables (heat: 1.4–2.1 s, XLA temp 2.5–2.7 GB for
  Gauss/Interpolating/Quadrature).
- **Robertson (stiff, Kvaerno5)**: Forward ≈ 8 ms, Discrete ≈ 18 ms (it stores
  every step of small problems; ≈ 50 ms with recomputation), the continuous
  adjoints 23–30 ms (diffrax RCA 25 ms); jaxsens's `BacksolveAdjoint` raises (the
  backward re-integration diverges) and diffrax's exhausts its step budget.
- **Under `vmap`, a store carried by the loop is paid per member and per step**:
  seed 002 with 100 controls vmapped, `QuadratureAdjoint` 1.47 s with a
  budget-sized store, 90 ms with the 256-step one (Gauss 60 ms, Discrete 32 ms).
- **Tolerance-dominated gradients**: seed 002 at rtol = atol = 1e-6 in float32 is
  30 % off (1 control) / 2 % (100 controls) for every method, diffrax's and
  torchdiffeq's included: atol sits above the state's scale (≈ 1e-4).
- **Compile times** are 1–10 s per method and problem on this machine (most of
  a `--quick` run).
"""


def ms(s):
    if s is None or s != s:
        return "—"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1.0:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.2f} s"


def secs(s):
    return "—" if s is None or s != s else f"{s:.1f} s"


def _load(path):
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def headline(problems):
    from bench.run import OURS, PEERS, auto_check

    L = [
        "| problem | n | p | solver | fastest jaxsens (warm median) | fastest by min "
        "| Auto picks | Auto (warm) | Auto check (≤ 1.5× fastest) | fastest peer "
        "(warm) | fastest jaxsens / fastest peer |",
        "| --- | ---: | ---: | --- | --- | --- | --- | ---: | --- | --- | ---: |",
    ]
    checks = []
    for name, res in problems.items():
        if "rows" not in res:
            L.append(
                f"| {name} | | | | failed: {res.get('error', '?')[:120]} | | | | | | |"
            )
            continue
        rows = res["rows"]
        ours = [m for m in OURS if m != "Auto()" and "warm" in rows.get(m, {})]
        peers = [m for m in PEERS if "warm" in rows.get(m, {})]
        best = min(ours, key=lambda m: rows[m]["warm"]) if ours else None
        bp = min(peers, key=lambda m: rows[m]["warm"]) if peers else None
        bmin = min(ours, key=lambda m: rows[m]["min"]) if ours else None
        st, aw, _, bw, ratio, cr = auto_check(res)
        auto = res.get("auto", {})
        pick = auto.get("method", auto.get("error", "?"))
        checks.append((name, res, st, aw, best, bw, ratio, cr))
        L.append(
            f"| {name} | {res['n']} | {res['p']} | {res['solver']} "
            f"| {best} ({ms(rows[best]['warm']) if best else '—'}) "
            f"| {bmin} ({ms(rows[bmin]['min']) if bmin else '—'}) | {pick} "
            f"| {ms(aw)} | **{st}**"
            + (f" (×{cr:.2f})" if cr else "")
            + f" | {bp} ({ms(rows[bp]['warm']) if bp else '—'}) "
            f"| {rows[best]['warm'] / rows[bp]['warm'] if best and bp else float('nan'):.2f} |"
        )
    return L, checks


def problem_table(name, res):
    from bench.run import OURS, PEERS

    meta = res.get("meta", {})
    L = [f"### {name}", ""]
    if "rows" not in res:
        return L + [f"Failed: {res.get('error')}", ""]
    L += [
        f"{res['description']}. rtol = {res['rtol']:g}, atol = {res['atol']:g}. "
        f"Reference gradient: {res.get('reference')}.",
        "",
        f"Made by `{meta.get('cmd')}` on {meta.get('date')} (load average "
        f"{meta.get('load')} at start); jaxsens {meta.get('jaxsens')}; "
        f"{meta.get('versions')}; XLA:CPU small-loop limit: "
        f"{meta.get('xla', 'XLA default (before jaxsens raised it)')}.",
        "",
        "| method | warm median | warm min | × diffrax RCA | compile | first run "
        "| XLA temp (MB) | rel. error vs reference | note |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    rows = res["rows"]
    rca = rows.get("diffrax RCA", {}).get("warm")
    for m in OURS + PEERS:
        if m not in rows:
            continue
        r = rows[m]
        label = m
        if m == "Auto()":
            label = f"Auto() → {res.get('auto', {}).get('method', '?')}"
        if m == "InterpolatingAdjoint(checkpoints=K)":
            label = m.replace("K", "16" if name == "long_horizon" else "8")
        if "warm" not in r:
            why = r.get("skipped") or r.get("error") or "?"
            kind = "skipped" if "skipped" in r else "**failed**"
            L.append(f"| {label} | {kind} | | | | | | | {why} |")
            continue
        note = ""
        err = r.get("rel_err")
        if err is not None and err > 0.1:
            note = "**gradient off by > 10 %**"
        L.append(
            f"| {label} | {ms(r['warm'])} | {ms(r['min'])} "
            f"| {r['warm'] / rca if rca else float('nan'):.2f} "
            f"| {secs(r.get('compile'))} | {ms(r.get('first'))} "
            f"| {r['temp_mb']:.1f} | "
            if "temp_mb" in r
            else f"| {label} | {ms(r['warm'])} | {ms(r['min'])} "
            f"| {r['warm'] / rca if rca else float('nan'):.2f} "
            f"| {secs(r.get('compile'))} | {ms(r.get('first'))} | — | "
        )
        L[-1] += (f"{err:.1e}" if err is not None else "—") + f" | {note} |"
    return L + [""]


def crossover_section(xo):
    from bench.crossover import READING, analyse, fastest, markdown, ratio

    an = analyse(xo["points"])
    L = [
        "## Crossover: Forward vs adjoints vs Discrete",
        "",
        markdown(xo).split("\n")[2] + " Full grid and per-point tables: "
        "[results/crossover.md](results/crossover.md), data for fitting a rule: "
        "[results/crossover.json](results/crossover.json).",
        "",
        "![crossover](results/crossover.png)",
        "",
        READING.replace("## Reading", "### Reading"),
        "| grid (solver) | n | p | n+p | fastest | Forward | best reverse "
        "| Discrete | best adjoint |",
        "| --- | ---: | ---: | ---: | --- | ---: | --- | ---: | --- |",
    ]
    adj = [
        "BacksolveAdjoint",
        "InterpolatingAdjoint",
        "QuadratureAdjoint",
        "GaussAdjoint",
    ]
    for a in an.values():
        for p in a["points"]:
            rows = p["rows"]
            br = fastest(p, ["Discrete"] + adj)
            ba = fastest(p, adj)
            fw = rows.get("Forward", {})
            L.append(
                f"| {p['kind']} ({p['solver']}) | {p['n']} | {p['p']} "
                f"| {p['n_plus_p']} | "
                f"{fastest(p)} | {ms(fw.get('warm')) if 'warm' in fw else 'skipped'} "
                f"| {br} {ms(rows[br]['warm']) if br else ''} "
                f"| {ms(rows.get('Discrete', {}).get('warm'))} "
                f"| {ba} {ms(rows[ba]['warm']) if ba else ''} |"
            )
    del ratio
    return L + [""]


def plot(problems, png):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.run import OURS

    items = [(k, v) for k, v in problems.items() if "rows" in v]
    if not items:
        return
    cols = 2
    rws = (len(items) + 1) // 2
    fig, axes = plt.subplots(rws, cols, figsize=(13, 3.3 * rws))
    axes = list(getattr(axes, "flat", [axes]))
    for ax, (name, res) in zip(axes, items, strict=False):
        rows = res["rows"]
        names = [m for m in rows if "warm" in rows[m]]
        vals = [rows[m]["warm"] * 1e3 for m in names]
        colors = [
            "tab:orange" if m == "Auto()" else ("tab:blue" if m in OURS else "tab:gray")
            for m in names
        ]
        ax.barh(names, vals, color=colors)
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title(
            f"{name} (n={res['n']}, p={res['p']}, {res['solver']})", fontsize=9
        )
        ax.set_xlabel("warm gradient (ms, median, log)", fontsize=8)
    for ax in axes[len(items) :]:
        ax.axis("off")
    fig.suptitle("jaxsens (blue), Auto (orange), peers (gray); shared 2-core CPU")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def write(suite_json=SUITE_JSON, out=None, png=None):
    out = out or os.path.join(HERE, "RESULTS.md")
    png = png or os.path.join(RESULTS_DIR, "suite.png")
    suite = _load(suite_json) or {"problems": {}}
    xo = _load(CROSSOVER_JSON)
    problems = suite["problems"]
    from bench.problems import registry

    order = [k for k in registry() if k in problems]
    problems = {k: problems[k] for k in order}
    metas = [v.get("meta", {}) for v in problems.values()]
    L = [
        "# jaxsens benchmark results",
        "",
        "Regenerated by `python -m bench` (suite: `bench/run.py`; crossover: "
        "`bench/crossover.py`; this file: `bench/report.py`, also "
        "`python -m bench --report`). Each table names the command that made it, "
        "its date and the jaxsens commit.",
        "",
        "**The machine was shared**: 2 cores (x86_64) with 3–5 other engineers "
        "running test suites at the same time, so absolute times are noisy (load "
        "averages 3–6 were common). Within a table every method ran in the same "
        "process, warm calls interleaved round-robin; medians and mins are "
        "reported; compare ratios within a table rather than across tables.",
    ]
    if metas:
        m0 = metas[0]
        L += ["", f"Machine: {m0.get('machine')}. Versions: {m0.get('versions')}."]
    L += [
        "",
        "## Headline: fastest method, Auto's pick, peers",
        "",
        "Warm = median of round-robin warm calls of the jitted gradient (µs/ms/s). "
        "'Fastest jaxsens' excludes `Auto()` itself; the Auto check (next section) "
        "passes when Auto's choice is within 1.5× of it. Fastest peer: "
        "diffrax (`RecursiveCheckpointAdjoint`, `BacksolveAdjoint`), "
        "`jax.experimental.ode.odeint`, torchdiffeq (`odeint`, `odeint_adjoint`), "
        "whichever ran — a peer's time counts even when its gradient is wrong "
        "(see the per-problem error columns).",
        "",
    ]
    head, checks = headline(problems)
    L += head
    L += [
        "",
        "## Auto check",
        "",
        "`Auto().decide(field, y0, ts, args, solver=...)` per problem (for the "
        "vmapped controls: one member's). `Auto()` decides at trace time, so its "
        "gradient IS the picked method's computation; two timings of one "
        "computation differ by up to ~1.7× on this loaded machine. The verdict "
        "uses the choice ratio = min(Auto's median, the picked method's "
        "median) ÷ the fastest jaxsens method's median (PASS ≤ 1.5); Auto's "
        "own ratio is shown too.",
        "",
        "| problem | Auto's rule | Auto's pick | Auto warm | fastest jaxsens | "
        "its warm | Auto ÷ fastest | choice ÷ fastest | result |",
        "| --- | --- | --- | ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for name, res, st, aw, best, bw, ratio, cr in checks:
        auto = res.get("auto", {})
        L.append(
            f"| {name} | {auto.get('rule') or auto.get('error', '')} "
            f"| {auto.get('method')} | {ms(aw)} | {best} | {ms(bw)} "
            f"| {'—' if ratio is None else f'{ratio:.2f}'} "
            f"| {'—' if cr is None else f'{cr:.2f}'} | **{st}** |"
        )
    npass = sum(c[2] == "PASS" for c in checks)
    L += ["", f"{npass} of {len(checks)} problems PASS."]
    if xo:
        L += [""] + crossover_section(xo)
    L += [FINDINGS]
    L += [
        "## Failures and inaccurate gradients",
        "",
        "Generated from the per-problem tables: every method that raised, and "
        "every gradient more than 10 % off its problem's reference.",
        "",
    ]
    for name, res in problems.items():
        for m, r in res.get("rows", {}).items():
            if "error" in r:
                L.append(f"- {name}, {m}: raised `{r['error'][:200]}`")
            elif r.get("rel_err", 0) > 0.1:
                L.append(f"- {name}, {m}: relative error {r['rel_err']:.2g}")
    L += [""]
    L += [
        "## Per-problem tables",
        "",
        "Compile = `jax.jit(grad).lower(...).compile()` in the problem's fresh "
        "subprocess (methods compiled one after another: later ones may reuse "
        "Python-side trace caches); first run = the first call of the compiled "
        "gradient; XLA temp = `memory_analysis().temp_size_in_bytes` of the "
        "compiled gradient (what it allocates, including buffers preallocated "
        "from `max_steps`). Skipped rows say why (hopeless, inapplicable or not "
        "ported); failed rows quote the error.",
        "",
        "![suite](results/suite.png)",
        "",
    ]
    for name, res in problems.items():
        L += problem_table(name, res)
    L += ["## Per-topic results (earlier issues)", ""]
    for f, what in TOPIC_FILES:
        if os.path.exists(os.path.join(RESULTS_DIR, f)):
            L.append(f"- [results/{f}](results/{f}): {what}")
    if out != os.path.join(HERE, "RESULTS.md"):  # results/quick.md: fix relative links
        L = [
            x.replace("](results/", "](").replace(
                "(results/suite.png)", f"({os.path.basename(png)})"
            )
            for x in L
        ]
    with open(out, "w") as fh:
        fh.write("\n".join(L) + "\n")
    plot(problems, png)
