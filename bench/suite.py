"""Every named problem × every jaxsens method × peers: the suite behind RESULTS.md.

    python -m bench suite                      # full suite, then RESULTS.md
    python -m bench suite --quick              # small sizes, fewer methods
                                               # -> results/suite_quick.json, quick.md
    python -m bench suite --only robertson,heat2d --repeats 9
    python -m bench --xla-default suite        # XLA:CPU's default small-loop limit
                                               # -> results/suite_xla_default.json

Problems: `bench.problems.registry()` (the linear rate system and its UDE, the
controlled MLP with 1 and 100 controls, Lotka–Volterra, Robertson (Kvaerno5), 2-D
heat (n = 10^4), the long-horizon memory case). Each problem runs in a FRESH
subprocess (`OPENBLAS_NUM_THREADS=1`) holding all its methods, jaxsens's
(`_common.OURS`) and the peers' (`_common.PEERS`: diffrax
`RecursiveCheckpointAdjoint` and `BacksolveAdjoint`, `jax.experimental.ode.odeint`,
torchdiffeq `odeint` and `odeint_adjoint` where ported). Per method: compile time
(`jit(...).lower().compile()`, in that process: methods share no XLA executable, but
Python-side trace caches may make later methods a little cheaper), the first run,
then warm calls round-robin over all methods in a shuffled order each round
(`--repeats` rounds; in each round a method is called until `ROUND_S` is spent, at
most 50 times, and it stops once it has used `BUDGET_S`), reported as median and min
of all warm calls; the XLA temp buffers of the compiled gradient; the relative error
of the gradient against a reference (exact `LinearExpm`, `KrylovExpm(tol=1e-12)`, or
float64 `Discrete` at rtol = atol = 1e-10). `Forward` is skipped when predicted
hopeless (≈ 0.1–0.4 · p × Discrete's time with an implicit solver, 0.1 · min(n, p) ·
max(1, n·p/10⁴) × with an explicit one, > `FORWARD_CAP_S`; 1 s with `--quick`).
`Auto().decide(...)` is recorded per problem.

Writes `bench/results/suite.json` (merged: `--only` keeps the other problems'
last results, each with its own command, date and commit), `bench/results/suite.png`
and regenerates `bench/RESULTS.md` (`python -m bench report`).
"""

import argparse
import dataclasses
import json
import os
import random
import statistics
import time

from bench._common import (
    OURS,
    PEERS,
    QUICK_METHODS,
    RESULTS_DIR,
    RESULTS_MD,
    command,
    meta_info,
    method as named_method,
    xla_default,
)
from bench._timing import timed


SUITE_JSON = os.path.join(RESULTS_DIR, "suite.json")
XLA_DEFAULT_JSON = os.path.join(RESULTS_DIR, "suite_xla_default.json")
# --quick runs (CI, development) never overwrite the full results.
QUICK_JSON = os.path.join(RESULTS_DIR, "suite_quick.json")

BUDGET_S = 8.0  # warm-call budget per method (full); quick: 2 s
ROUND_S = 0.03  # per method and round: repeat calls until this is spent (≤ 50)
FORWARD_CAP_S = 20.0  # predicted Forward time above which it is skipped (quick: 3 s)


# --- child: one problem ---------------------------------------------------------


def _child(name, quick, rounds, exclude):
    import jax

    jax.config.update("jax_enable_x64", True)
    import diffrax as dfx
    import equinox as eqx
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental.ode import odeint
    from jax.flatten_util import ravel_pytree

    import jaxsens
    from bench import _child as child_mod, _torch_peers
    from bench._child import say
    from bench.problems import registry
    from bench.problems.suite import cast64

    pr = registry()[name](quick)
    budget = 2.0 if quick else BUDGET_S
    fwd_cap = 1.0 if quick else FORWARD_CAP_S

    def sensitivity(m, prob):
        return named_method(m, checkpoints=prob.checkpoints,
                            adjoint_max_steps=prob.adjoint_max_steps)

    def solve_ys(prob, field, args, method, **over):
        o = dict(rtol=prob.rtol, atol=prob.atol, max_steps=prob.max_steps)
        o.update(over)
        if method in PEERS[:2]:
            adjoint = (
                dfx.RecursiveCheckpointAdjoint()
                if method == "diffrax RCA"
                else dfx.BacksolveAdjoint()
            )
            t0 = prob.ts[0] if prob.t0 is None else prob.t0
            return dfx.diffeqsolve(
                dfx.ODETerm(field), prob.solver, t0, prob.ts[-1], None, prob.y0,
                args=args, saveat=dfx.SaveAt(ts=prob.ts),
                stepsize_controller=dfx.PIDController(rtol=o["rtol"], atol=o["atol"]),
                max_steps=o["max_steps"], adjoint=adjoint).ys
        if method == "jax odeint":
            dyn, static = eqx.partition((field, args), eqx.is_array)
            ts = prob.ts
            prepend = prob.t0 is not None and prob.t0 != float(np.asarray(prob.ts)[0])
            if prepend:
                ts = jnp.concatenate([jnp.asarray([prob.t0], ts.dtype), ts])

            def f(y, t, d):
                fld, a = eqx.combine(d, static)
                return fld(t, y, a)

            ys = odeint(f, prob.y0, ts, dyn, rtol=o["rtol"], atol=o["atol"],
                        mxstep=o["max_steps"])
            return ys[1:] if prepend else ys
        sens = (method if isinstance(method, jaxsens.AbstractSensitivity)
                else sensitivity(method, prob))
        return jaxsens.solve(field, prob.y0, prob.ts, args, t0=prob.t0,
                             solver=prob.solver, sensitivity=sens, **o).ys

    def loss_fn(prob, method, **over):
        def loss(params):
            field, args = prob.split(params)
            if prob.batched:
                ys = jax.vmap(lambda a: solve_ys(prob, field, a, method, **over))(args)
            else:
                ys = solve_ys(prob, field, args, method, **over)
            return prob.loss(ys)

        return loss

    def compiled_grad(prob, method, **over):
        dyn, static = eqx.partition(prob.params, eqx.is_array)
        g = jax.jit(
            lambda d: eqx.filter(
                eqx.filter_grad(lambda p: loss_fn(prob, method, **over)(p))(
                    eqx.combine(d, static)
                ),
                eqx.is_inexact_array,
            )
        )
        start = time.perf_counter()
        c = g.lower(dyn).compile()  # compile only: no call to block on
        return c, dyn, time.perf_counter() - start

    def flat(g):
        return np.asarray(
            ravel_pytree(eqx.filter(g, eqx.is_inexact_array))[0], np.float64
        )

    # Auto's decision.
    field, _ = pr.split(pr.params)
    auto = jaxsens.Auto()
    try:
        d = auto.decide(field, pr.y0, pr.ts, pr.member_args(), solver=pr.solver)
        decision = {"method": type(d.method).__name__, "repr": repr(d.method),
                    "rule": d.rule, "reasons": list(d.reasons)}
    except Exception as e:  # noqa: BLE001
        decision = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
    say(auto=decision)

    methods = [
        m
        for m in OURS + PEERS
        if not (m in ("LinearExpm", "KrylovExpm") and not pr.linear)
    ]
    if quick:
        methods = [m for m in methods if m in QUICK_METHODS]
    torch_fns, torch_version = {}, None
    if any(m.startswith("torch") for m in methods):
        try:
            torch_fns, torch_version = _torch_peers.build(name, pr)
        except Exception as e:  # noqa: BLE001 - a broken port is reported
            torch_fns = {"_why": f"port failed: {child_mod.error_text(e)}"}

    rows, calls = {}, {}
    for m in methods:
        if m in exclude:
            rows[m] = {"skipped": exclude[m]}
            continue
        if m in pr.skip:
            rows[m] = {"skipped": pr.skip[m]}
            continue
        if m.startswith("torch") and m not in torch_fns:
            rows[m] = {
                "skipped": torch_fns.get("_why", "not ported to torch")
                if torch_version or "_why" in torch_fns
                else "torch not installed"
            }
            continue
        if m == "Forward" and "warm0" in rows.get("Discrete", {}):
            # Forward ÷ Discrete (crossover.json): implicit solvers, ~0.1 per
            # differentiated input for p ≲ 300, up to ~0.4–0.6 at p ≈ 10^4;
            # explicit ones (the sensitivity equations), ~0.1 per Jacobian row
            # or column, min(n, p) of them, times n·p / 10^4 once the n × p
            # sensitivity matrix outgrows the cache (1500× at n = 1024, p = 2049).
            if isinstance(pr.solver, dfx.AbstractImplicitSolver):
                factor = (0.1 if pr.p < 300 else 0.4) * pr.p
                how = f"0.1–0.4 · p × Discrete, p = {pr.p}"
            else:
                from bench.crossover import (
                    EXPLICIT_FORWARD_K,
                    FORWARD_PER_INPUT,
                    explicit_forward_k,
                )

                factor = FORWARD_PER_INPUT * explicit_forward_k(pr.n, pr.p)
                how = (f"{FORWARD_PER_INPUT}·{EXPLICIT_FORWARD_K} × Discrete, "
                       f"n = {pr.n}, p = {pr.p}")
            est = factor * rows["Discrete"]["warm0"]
            if est > fwd_cap:
                rows[m] = {
                    "skipped": f"hopeless: predicted ≈ {est:.0f} s per gradient "
                    f"(≈ {how}); cap {fwd_cap:.0f} s"
                }
                continue
        say(start=m)
        row = {}
        try:
            if m.startswith("torch"):
                call = torch_fns[m]
                row["first"], g = timed(call)
            else:
                c, dyn, row["compile"] = compiled_grad(pr, m)
                ma = c.memory_analysis()
                if ma is not None:
                    row["temp_mb"] = ma.temp_size_in_bytes / 2**20
                row["first"], g = timed(c, dyn)
                call = lambda c=c, dyn=dyn: c(dyn)
            w = timed(call)[0]
            row["times"] = [w]
            row["warm0"] = w
            row["grad"] = flat(g) if not m.startswith("torch") else np.asarray(g)
            calls[m] = call
            say(done=m, compile=row.get("compile"), first=row["first"], warm=w)
        except Exception as e:  # noqa: BLE001 - a failing method is reported
            row = {"error": child_mod.error_text(e)}
            say(failed=m, error=row["error"])
        rows[m] = row

    say(timing=True)
    # Round-robin in a different order each round: the call right after a long
    # one (torchdiffeq, Forward) is systematically slower on this machine (thread
    # pools waking up), and a fixed order would always charge the same method.
    rng = random.Random(0)
    for _ in range(max(0, rounds - 1)):
        order = list(calls.items())
        rng.shuffle(order)
        for m, call in order:
            # Sub-millisecond methods get several calls per round (until
            # ROUND_S is spent), so their median rests on hundreds of calls.
            spent, n = 0.0, 0
            while n < 50 and (n == 0 or spent < ROUND_S):
                if sum(rows[m]["times"]) > budget:
                    break
                dt = timed(call)[0]
                rows[m]["times"].append(dt)
                spent, n = spent + dt, n + 1

    # Reference gradient.
    ref, ref_name = None, None
    try:
        if pr.reference == "linear" and "grad" in rows.get("LinearExpm", {}):
            ref, ref_name = rows["LinearExpm"]["grad"], "LinearExpm (exact)"
        elif pr.reference in ("linear", "krylov"):
            c, dyn, _ = compiled_grad(pr, jaxsens.KrylovExpm(tol=1e-12))
            ref, ref_name = flat(c(dyn)), "KrylovExpm(tol=1e-12)"
        else:
            p64 = dataclasses.replace(
                pr,
                y0=cast64(pr.y0),
                ts=cast64(pr.ts),
                params=cast64(pr.params),
                field=cast64(pr.field),
                args=cast64(pr.args),
            )
            # (A large max_steps makes Discrete's checkpointing allocate for it,
            # vmapped over the controls too: keep the budget near what is needed.)
            tight = dict(
                rtol=1e-10,
                atol=1e-10 if pr.atol >= 1e-10 else pr.atol * 1e-4,
                max_steps=16_384,
            )
            if pr.name == "long_horizon":
                tight = dict(rtol=1e-9, atol=1e-9, max_steps=20 * pr.max_steps)
            c, dyn, _ = compiled_grad(p64, jaxsens.Discrete(), **tight)
            ref = flat(c(dyn))
            ref_name = (
                f"Discrete, float64, rtol = {tight['rtol']:g}, atol = {tight['atol']:g}"
            )
    except Exception as e:  # noqa: BLE001
        ref_name = f"reference failed: {type(e).__name__}: {str(e)[:200]}"
    for r in rows.values():
        if "times" in r:
            r["warm"] = statistics.median(r["times"])
            r["min"] = min(r["times"])
            r["n_warm"] = len(r["times"])
            g = r.pop("grad")
            if ref is not None and g.shape == ref.shape:
                r["rel_err"] = float(np.linalg.norm(g - ref) / np.linalg.norm(ref))
            del r["times"], r["warm0"]
    say(
        result={
            "problem": name,
            "description": pr.description,
            "n": pr.n,
            "p": pr.p,
            "solver": type(pr.solver).__name__,
            "rtol": pr.rtol,
            "atol": pr.atol,
            "quick": quick,
            "auto": decision,
            "reference": ref_name,
            "torch": torch_version,
            "rows": rows,
        }
    )


# --- parent ---------------------------------------------------------------------


def main(argv):
    ap = argparse.ArgumentParser(prog="python -m bench suite",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default=None, help="comma-separated problem names")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=None)
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--child", nargs=2, metavar=("PROBLEM", "QUICK"))
    ap.add_argument("--exclude", default="{}")
    a = ap.parse_args(argv)
    if a.child:
        return _child(
            a.child[0], a.child[1] == "1", a.repeats or 9, json.loads(a.exclude)
        )

    from bench import _child as child_mod, report
    from bench.problems import registry

    log = lambda s: print(s, flush=True)  # noqa: E731
    if a.list:
        for k in registry():
            log(k)
        return
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = QUICK_JSON if a.quick else XLA_DEFAULT_JSON if xla_default() else SUITE_JSON
    data = {"problems": {}}
    if os.path.exists(path):
        with open(path) as fh:
            data = json.load(fh)
    names = a.only.split(",") if a.only else list(registry())
    unknown = [n for n in names if n not in registry()]
    if unknown:
        ap.error(f"unknown problem(s) {unknown}; known: {list(registry())}")
    cmd = command("suite", argv)
    rounds = a.repeats or (5 if a.quick else 9)
    timeout = a.timeout or (300 if a.quick else 600)
    for name in names:
        meta = meta_info(cmd)
        log(f"== {name} (load {meta['load']})")
        res = child_mod.run("suite", [name, int(a.quick)], rounds=rounds,
                            timeout=timeout, log=log)
        res["meta"] = meta
        data["problems"][name] = res
        if "rows" in res:
            for m, r in res["rows"].items():
                val = (
                    f"warm {r['warm'] * 1e3:.3g} ms (min {r['min'] * 1e3:.3g}), "
                    f"compile {r.get('compile', float('nan')):.1f} s, "
                    f"relerr {r.get('rel_err', float('nan')):.1e}"
                    if "warm" in r
                    else r.get("skipped") or r.get("error")
                )
                log(f"  {m:38s} {val}")
            st, aw, best, bw, ratio, cr = report.auto_check(res)
            log(
                f"  Auto -> {res['auto'].get('method')}: {st} (Auto ×"
                f"{ratio if ratio is None else round(ratio, 2)}, choice ×"
                f"{cr if cr is None else round(cr, 2)} of {best})"
            )
        with open(path, "w") as fh:
            json.dump(data, fh, indent=1)
    if a.quick:
        out = os.path.join(RESULTS_DIR, "quick.md")
        report.write_quick(QUICK_JSON, out)
        log(f"wrote {out}")
    elif path == SUITE_JSON:
        report.write()
        log(f"wrote {RESULTS_MD}")
