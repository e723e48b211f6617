"""Where the continuous adjoints stand against discrete backprop.

    python -m bench adjoints                       # tables dense, controls, memory
    python -m bench adjoints --quick               # n = 16, 256; fewer rounds
    python -m bench adjoints dense --n 16 --repeats 3   # the smallest run

- `dense`: `y' = tanh(W y) − 0.1 y` (`bench/problems/core.py`, `W` n×n, p = n²),
  5 save times on [0, 1], loss Σ y², gradient w.r.t. `W`; float64, Tsit5,
  rtol = atol = 1e-6; n = 16, 64, 256, 1024. Peer: diffrax `BacksolveAdjoint`.
- `controls`: the controlled MLP, 100 controls (`bench/problems/controls.py`:
  n = 2, 282 parameters, float32, 100 save times), under `jax.vmap` over the
  controls and as one batched state (`solve(..., batch=(None, 0))`), stepping to
  the control knots (the default) or past them (`jump_ts=[]`). Peer: diffrax
  `RecursiveCheckpointAdjoint` (RCA) under `jax.vmap`. Reference: a float64
  gradient at rtol = atol = 1e-11, every knot stepped to.
- `events`: a falling ball `h' = v, v' = −g` stopped by `diffrax.Event(h)` (Newton
  root finder), gradient of the impact time w.r.t. `(g, v0, h0)`; float64, every
  method and `Forward`. Reference: the closed form `τ = (v0 + √(v0² + 2 g h0)) / g`.
  Peer: diffrax RCA with the same `Event`.
- `memory`: XLA's temporary bytes of the dense field's compiled gradient at
  n = 64, the field made faster (`20 W`) so the forward solve takes 10³–10⁵
  steps, at two `max_steps`.

Each row runs in a fresh subprocess (`bench/_child.py`) holding every method,
compiled one after the other (first call = trace + compile + one run), then
called round-robin for 3 untimed rounds and timed round-robin (`--repeats`
rounds); ratios are to `Discrete` in the same
row. Writes `bench/results/adjoints.md` and `adjoints.png` (dense: time ÷
Discrete against n).
"""

import argparse
import json
import os
import statistics

from bench import _child
from bench._common import ADJOINTS, RESULTS_DIR, command, meta_info, method, ms


OUT = os.path.join(RESULTS_DIR, "adjoints.md")
METHODS = ["Discrete", *ADJOINTS, "InterpolatingAdjoint(checkpoints=K)"]
CHECKPOINTS = 4
WARMUP_ROUNDS = 3
NS, QUICK_NS = (16, 64, 256, 1024), (16, 256)
CONTROLS = 100
CONTROL_ROWS = {"vmap": "`jax.vmap` over controls",
                "batch": "`solve(..., batch=(None, 0))`",
                "free": "`batch=(None, 0), jump_ts=[]`"}
# (t1, max_steps) of the memory table; t1 sets the forward solve's step count.
MEMORY = ((1.0, 4096), (1.0, 8192), (100.0, 16384), (1000.0, 131072))
TOL = dict(rtol=1e-6, atol=1e-6)
TABLES = ["dense", "controls", "events", "memory"]


# --- child: one row ---------------------------------------------------------------


def _dense_grads(pr, names):
    import diffrax as dfx
    import jax
    import jax.numpy as jnp

    import jaxsens

    def ours(name):
        sens = method(name, checkpoints=CHECKPOINTS)

        def loss(W):
            return pr.loss(jaxsens.solve(pr.field, pr.y0, pr.ts, W, **TOL,
                                         max_steps=pr.max_steps, sensitivity=sens).ys)
        return jax.grad(loss)

    def diffrax_backsolve(W):
        sol = dfx.diffeqsolve(
            dfx.ODETerm(pr.field), dfx.Tsit5(), pr.ts[0], pr.ts[-1], None, pr.y0,
            args=W, saveat=dfx.SaveAt(ts=pr.ts),
            stepsize_controller=dfx.PIDController(**TOL),
            adjoint=dfx.BacksolveAdjoint(), max_steps=pr.max_steps)
        return jnp.sum(sol.ys**2)

    fns = {name: ours(name) for name in names}
    fns["diffrax BacksolveAdjoint"] = jax.grad(diffrax_backsolve)
    return fns


def _controls_grads(nc):
    import diffrax as dfx
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import jaxsens
    from bench.problems import controls as P

    ts, y0 = P.times(), P.y0()
    params, static = eqx.partition(P.field(), eqx.is_inexact_array)

    def loss_of(name, kind):
        def loss(p, c):
            f, sens = eqx.combine(p, static), method(name, checkpoints=CHECKPOINTS)
            if kind == "vmap":
                ys = jax.vmap(lambda u: jaxsens.solve(f, y0, ts, u, **TOL,
                                                      sensitivity=sens).ys)(c)
            else:  # one batched state; "free": past the control knots
                knots = {"jump_ts": []} if kind == "free" else {}
                ys = jaxsens.solve(f, y0, ts, c, batch=(None, 0), **TOL, **knots,
                                   sensitivity=sens).ys
            return jnp.sum(ys**2) / P.NT
        return jax.grad(loss)

    def reference(p, c):  # float64, tight tolerances, every knot stepped to
        def loss(p, c):
            f = eqx.combine(p, static)
            wide = jnp.float64
            ys = jax.vmap(lambda u: jaxsens.solve(
                f, y0.astype(wide), ts.astype(wide), u, rtol=1e-11, atol=1e-11,
                max_steps=16**4,
                sensitivity=jaxsens.Discrete()).ys)(c)
            return jnp.sum(ys**2) / P.NT
        wide = jax.tree.map(lambda x: x.astype(jnp.float64), (p, c))
        return jax.jit(jax.grad(loss))(*wide)

    def rca_loss(p, c):
        def one(u):
            return dfx.diffeqsolve(
                dfx.ODETerm(eqx.combine(p, static)), dfx.Tsit5(), ts[0], ts[-1], None,
                y0, args=u, saveat=dfx.SaveAt(ts=ts),
                stepsize_controller=dfx.PIDController(**TOL), max_steps=4096).ys
        return jnp.sum(jax.vmap(one)(c) ** 2) / P.NT

    fns = {"diffrax RCA, vmap": jax.grad(rca_loss)}
    for kind in CONTROL_ROWS:
        for name in METHODS:
            fns[f"{name}, {kind}"] = loss_of(name, kind)
    args = (params, P.controls(nc))
    return fns, args, reference(*args)


def _events_grads():
    import diffrax as dfx
    import jax
    import jax.numpy as jnp
    import optimistix as optx

    import jaxsens

    def ball(t, y, g):
        return jnp.stack([y[1], -g])

    ev = dfx.Event(lambda t, y, args, **kw: y[0],
                   root_finder=optx.Newton(rtol=1e-12, atol=1e-12))

    def tau(name):  # p = (g, v0, h0)
        sens = method(name, checkpoints=CHECKPOINTS)
        return jax.grad(lambda p: jaxsens.solve(
            ball, jnp.stack([p[2], p[1]]), jnp.array([0.0, 5.0]), p[0], event=ev, **TOL,
            sensitivity=sens).event_time)

    def rca(p):
        return dfx.diffeqsolve(
            dfx.ODETerm(ball), dfx.Tsit5(), 0.0, 5.0, None, jnp.stack([p[2], p[1]]),
            args=p[0], saveat=dfx.SaveAt(t1=True),
            stepsize_controller=dfx.PIDController(**TOL), event=ev).ts[-1]

    def closed(p):
        return (p[1] + jnp.sqrt(p[1] ** 2 + 2 * p[0] * p[2])) / p[0]

    p = jnp.array([9.81, 1.0, 2.0])
    fns = {name: tau(name) for name in ["Discrete", "Forward", *METHODS[1:]]}
    fns["diffrax RCA + Event"] = jax.grad(rca)
    return fns, (p,), jax.grad(closed)(p)


def _memory_row(i):
    import jax

    import jaxsens
    from bench.problems.core import dense_tanh

    t1, max_steps = MEMORY[i]
    pr = dense_tanh(64, t1=t1, scale=20.0, max_steps=max_steps)
    sol = jaxsens.solve(pr.field, pr.y0, pr.ts, pr.args, **TOL, max_steps=max_steps)
    row = {"t1": t1, "max_steps": max_steps, "steps": int(sol.stats["num_steps"])}
    for name, fn in _dense_grads(pr, METHODS[1:]).items():
        if "Backsolve" not in name:  # no forward store: nothing to size
            compiled = jax.jit(fn).lower(pr.args).compile()
            row[name] = compiled.memory_analysis().temp_size_in_bytes
    return row


def child(table, key, rounds, exclude):
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np
    from jax.flatten_util import ravel_pytree

    from bench._timing import timed
    from bench.problems.core import dense_tanh

    if table == "memory":
        _child.say(result=_memory_row(key))
        return 0
    if table == "dense":
        pr = dense_tanh(key)
        fns, args, ref_name = _dense_grads(pr, METHODS), (pr.args,), "Discrete"
        ref = None
    elif table == "events":
        fns, args, ref = _events_grads()
        ref, ref_name = np.asarray(ref, np.float64), None
    else:
        fns, args, ref = _controls_grads(key)
        ref, ref_name = np.asarray(ravel_pytree(ref)[0], np.float64), None
    rows, grads, jitted = {}, {}, {}
    for name, fn in fns.items():
        if name in exclude:
            rows[name] = {"skipped": exclude[name]}
            continue
        _child.say(start=name)
        jitted[name] = jax.jit(fn)
        try:
            first, g = timed(jitted[name], *args)
        except Exception as e:  # noqa: BLE001 - reported in the row, not fatal
            rows[name] = {"error": _child.error_text(e)}
            _child.say(failed=name)
            continue
        rows[name] = {"first": first, "times": []}
        grads[name] = np.asarray(ravel_pytree(g)[0], np.float64)
        _child.say(done=name)
    _child.say(timing=True)
    # Untimed rounds first: the first calls after compiling every method run
    # slower (at n = 16 a 9-round median kept some of them).
    for _ in range(WARMUP_ROUNDS):
        for name in grads:
            timed(jitted[name], *args)
    for _ in range(rounds):
        for name in grads:
            rows[name]["times"].append(timed(jitted[name], *args)[0])
    ref = grads.get(ref_name, ref)
    for name in grads:
        times = rows[name].pop("times")
        rows[name]["warm"] = statistics.median(times)
        if ref is not None:
            err = np.linalg.norm(grads[name] - ref) / np.linalg.norm(ref)
            rows[name]["rel"] = float(err)
    result = {"table": table, "key": key, "rows": rows}
    if table == "dense" and "GaussAdjoint" in grads:
        from jaxsens._sensitivity._backward import backward_stats

        result["gauss"] = backward_stats(fns["GaussAdjoint"], *args)
    _child.say(result=result)
    return 0


# --- parent: tables ---------------------------------------------------------------


def _cell(row, ref):
    if "warm" not in row:
        return row.get("skipped") or row.get("error", "—")[:60]
    cell = f"{ms(row['warm'])} ({row['warm'] / ref:.2f}×) · {row['first']:.1f} s"
    return cell + (f" · {row['rel']:.0e}" if "rel" in row else "")


def _ref(rows, name):  # a method's warm median, NaN where it did not run
    return rows.get(name, {}).get("warm", float("nan"))


def dense_md(results):
    names = list(results[0]["rows"])
    out = ["| n | " + " | ".join(names) + " |", "| ---: |" + " ---: |" * len(names)]
    for r in results:
        d = _ref(r["rows"], "Discrete")
        cells = " | ".join(_cell(r["rows"][k], d) for k in names)
        out.append(f"| {r['key']} | {cells} |")
    out += ["", "GaussAdjoint's backward pass: " + "; ".join(
        f"n = {r['key']}: {r.get('gauss')}" for r in results)]
    return out


def controls_md(res):
    rows = res["rows"]
    out = ["| | diffrax RCA (vmapped) | " + " | ".join(METHODS) + " |",
           "| --- |" + " ---: |" * (len(METHODS) + 1)]
    for kind, label in CONTROL_ROWS.items():
        d = _ref(rows, f"Discrete, {kind}")
        cells = [_cell(rows["diffrax RCA, vmap"], d)]
        cells += [_cell(rows[f"{m}, {kind}"], d) for m in METHODS]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return out


def events_md(res):
    rows = res["rows"]
    return ["| " + " | ".join(rows) + " |", "|" + " ---: |" * len(rows),
            "| " + " | ".join(_cell(r, _ref(rows, "Discrete")) for r in rows.values())
            + " |"]


def memory_md(results):
    names = [k for k in results[0] if k not in ("t1", "max_steps", "steps", "wall_s")]
    out = ["| forward steps | max_steps | " + " | ".join(names) + " |",
           "| ---: | ---: |" + " ---: |" * len(names)]
    for r in results:
        out.append(f"| {r['steps']} | {r['max_steps']} | "
                   + " | ".join(f"{r[k] / 1e6:.1f}" for k in names) + " |")
    return out


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ns = [r["key"] for r in results]
    for name in results[0]["rows"]:
        if name != "Discrete":
            ratios = [_ref(r["rows"], name) / _ref(r["rows"], "Discrete")
                      for r in results]
            ax.plot(ns, ratios, "o-", label=name)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="n (p = n²)", ylabel="time ÷ Discrete",
           title="dense field tanh(W y) − 0.1 y, 5 save times")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv):
    ap = argparse.ArgumentParser(prog="python -m bench adjoints", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tables", nargs="*", default=TABLES, metavar="TABLE",
                    help=", ".join(TABLES) + " (default: all)")
    ap.add_argument("--quick", action="store_true", help="n = 16, 256; 5 rounds")
    ap.add_argument("--n", type=int, nargs="+", help="the dense table's state sizes")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--child", nargs=2)
    ap.add_argument("--exclude", default="{}")
    a = ap.parse_args(argv)
    if unknown := set(a.tables) - set(TABLES):
        ap.error(f"unknown tables {sorted(unknown)}; known: {', '.join(TABLES)}")
    if a.child:
        table, key = a.child
        return child(table, int(key), a.repeats or 15, json.loads(a.exclude))
    meta = meta_info(command("adjoints", argv))
    rounds = a.repeats or (5 if a.quick else 15)

    failed = []

    def rows(table, keys):
        res = [_child.run("adjoints", [table, k], rounds=rounds, timeout=a.timeout,
                          log=print) for k in keys]
        failed.extend(f"- {table} {k}: {r['error']}"
                      for k, r in zip(keys, res, strict=True) if "error" in r)
        return [r for r in res if "error" not in r]

    parts = [
        "# Continuous adjoints against `Discrete`", "",
        f"Made by `{meta['cmd']}` on {meta['date']} (load average {meta['load']} at "
        f"start); jaxsens {meta['jaxsens']}; {meta['machine']}; {meta['versions']}; "
        f"XLA:CPU small-loop limit: {meta['xla']}. Problems, methods and timing: the "
        f"docstring of `bench/adjoints.py`; K = {CHECKPOINTS}. A cell is warm median "
        "(× `Discrete` of the row) · first call (trace + compile + run) · relative "
        "difference of the gradient from the row's reference.", ""]
    ns = a.n or (QUICK_NS if a.quick else NS)
    if "dense" in a.tables and (res := rows("dense", ns)):
        parts += ["## Dense field (reference: `Discrete`)", "", *dense_md(res), "",
                  "![time ÷ Discrete](adjoints.png)", ""]
        plot(res, os.path.splitext(a.out)[0] + ".png")
    if "controls" in a.tables and (res := rows("controls", [CONTROLS])):
        parts += [f"## Controlled MLP, {CONTROLS} controls, float32 (reference: "
                  "float64, rtol = atol = 1e-11)", "", *controls_md(res[0]), ""]
    if "events" in a.tables and (res := rows("events", [0])):
        parts += ["## Event time of a falling ball (reference: the closed form)", "",
                  *events_md(res[0]), ""]
    if "memory" in a.tables and (res := rows("memory", range(len(MEMORY)))):
        parts += ["## Memory: XLA temporaries of the compiled gradient (MB), "
                  "n = 64", "", *memory_md(res), ""]
    if failed:
        parts += ["## Rows that failed", "", *failed, ""]
    with open(a.out, "w") as fh:
        fh.write("\n".join(parts))
    print("\n".join(parts))
    return 1 if failed else 0
