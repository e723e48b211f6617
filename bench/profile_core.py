"""Why the continuous adjoints are slow: measurements behind bench/results/core.md.

    /work/venv/bin/python bench/profile_core.py

1. The backward loop's step counts and warm times, as shipped and with two
   one-line changes applied to a COPY of `jaxsens._sensitivity._loop` in this
   process (jaxsens itself is not edited):
   - "fsal": `made_jump` stays set until a step is accepted. As shipped it is reset
     after a rejected step, so a retried step after a save-time jump of λ reuses
     the FSAL derivative from before the jump: its error estimate is wrong, and the
     step is rejected until it is tiny.
   - "clip": the vector field is evaluated at `s` clipped to the integration span.
     diffrax's initial-step selection probes `s0 + h0` beyond `s_end`, where the
     forward dense output returns NaN (out of range): the first step size is NaN
     and every step is rejected.
2. The cost of one backward step's pieces (µs per call, in a `lax.scan`): a dense
   output lookup, the field's vjp w.r.t. (y, θ), w.r.t. y only, w.r.t. θ only.
3. The seminorm's effect on backward steps.

Writes `bench/results/core_profile.md`.
"""

import importlib
import os
import sys
import types


if __name__ == "__main__" and __package__ in (None, ""):
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax


jax.config.update("jax_enable_x64", True)

import diffrax as dfx  # noqa: E402
import equinox as eqx  # noqa: E402
import jax.lax as lax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import jaxsens  # noqa: E402
from bench import bench_core as bc  # noqa: E402
from bench._timing import fmt_s, time_fn  # noqa: E402
from jaxsens._sensitivity import _common  # noqa: E402
from jaxsens._sensitivity._common import (  # noqa: E402
    vjp_params,
    vjp_y,
    vjp_y_and_params,
)
from jaxsens._sensitivity.base import SolveOptions, as_problem  # noqa: E402


ADJOINT_MODULES = ("interpolating", "backsolve", "quadrature", "gauss")

FSAL_OLD = "            hit,\n            extra,\n"
FSAL_NEW = "            hit | (made_jump & ~keep),\n            extra,\n"
CLIP_OLD = "    term = dfx.ODETerm(lambda s, z, _: vf(s, z))\n"
CLIP_NEW = (
    "    term = dfx.ODETerm(\n        lambda s, z, _: vf(jnp.clip(s, s0, s_end), z))\n"
)


def patched_loop(fixes):
    """A copy of jaxsens's `backward_loop` with the named fixes applied."""
    src_mod = importlib.import_module("jaxsens._sensitivity._loop")
    with open(src_mod.__file__) as fh:
        src = fh.read()
    if "fsal" in fixes and "made_jump & ~keep" not in src:  # else: already fixed
        if FSAL_OLD not in src:
            raise RuntimeError("`_loop.py` changed: the fsal patch no longer applies")
        src = src.replace(FSAL_OLD, FSAL_NEW)
    if "clip" in fixes:
        if CLIP_OLD not in src:
            raise RuntimeError("`_loop.py` changed: the clip patch no longer applies")
        src = src.replace(CLIP_OLD, CLIP_NEW)
    mod = types.ModuleType("jaxsens._sensitivity._loop_patched")
    mod.__package__ = "jaxsens._sensitivity"
    exec(compile(src, src_mod.__file__ + " (patched)", "exec"), mod.__dict__)  # noqa: S102
    return mod.backward_loop


def install(loop):
    for name in ADJOINT_MODULES:
        importlib.import_module(f"jaxsens._sensitivity.{name}").backward_loop = loop


def recording(loop):
    def rec(**kw):
        out = loop(**kw)
        jax.debug.callback(
            lambda a, b, r: bc._COUNTS.append((int(a), int(b), int(r))),
            out.num_steps,
            out.num_accepted,
            out.result._value,
        )
        return out

    return rec


def steps_and_time(problem, method, loop, ref, repeats):
    install(recording(loop))
    bc._COUNTS.clear()
    f, dyn = bc.grad_fn(problem, method)
    g = jax.block_until_ready(f(dyn))
    counts = list(bc._COUNTS)
    install(loop)
    f, dyn = bc.grad_fn(problem, method)
    _, warm, all_s = time_fn(f, dyn, repeats=repeats)
    import numpy as np

    err = float(np.linalg.norm(bc.flat_grad(g) - ref) / np.linalg.norm(ref))
    steps = sum(c[0] for c in counts)
    acc = sum(c[1] for c in counts)
    failed = any(c[2] != 0 for c in counts)
    return steps, acc, failed, (warm, min(all_s)), err


def per_call_costs(problem, n=700):
    """µs per call of the backward step's pieces, each in a scan of `n` calls."""
    opts = SolveOptions(
        problem.ts[0],
        dfx.Tsit5(),
        problem.rtol,
        problem.atol,
        None,
        problem.max_steps,
        True,
    )
    field, args = problem.split(problem.params)
    prob = as_problem(field, problem.y0, problem.ts, args, opts)
    sol = dfx.diffeqsolve(
        dfx.ODETerm(field),
        dfx.Tsit5(),
        problem.ts[0],
        problem.ts[-1],
        None,
        problem.y0,
        args=args,
        saveat=dfx.SaveAt(ts=problem.ts, dense=True),
        stepsize_controller=dfx.PIDController(rtol=problem.rtol, atol=problem.atol),
        max_steps=problem.max_steps,
    )
    interp = sol.interpolation
    t0, t1 = problem.ts[0], problem.ts[-1]
    times = jnp.linspace(t1, t0, n).astype(problem.ts.dtype)
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

    lookup = getattr(_common, "dense_evaluate", None)
    if lookup is None:  # jaxsens before af05e77
        lookup = lambda i, t: i.evaluate(t)
    pieces = [
        (
            "dense-output lookup (`dense_evaluate`)",
            lambda p, i, t, la, y_: lookup(i, t),
        ),
        (
            "vjp of field w.r.t. (y, θ) (one Backsolve/Interpolating stage, no lookup)",
            lambda p, i, t, la, y_: vjp_y_and_params(p, t, y_, la)[1:],
        ),
        (
            "lookup + vjp w.r.t. (y, θ) (one InterpolatingAdjoint stage)",
            lambda p, i, t, la, y_: vjp_y_and_params(p, t, lookup(i, t), la)[1:],
        ),
        (
            "vjp w.r.t. y only (one Gauss/Quadrature stage, no lookup)",
            lambda p, i, t, la, y_: vjp_y(p, t, y_, la),
        ),
        (
            "vjp w.r.t. θ only (one Gauss–Legendre node)",
            lambda p, i, t, la, y_: vjp_params(p, t, y_, la),
        ),
        (
            "field evaluation f(t, y) (one forward stage)",
            lambda p, i, t, la, y_: p.f(t, y_),
        ),
    ]
    out = {}
    for name, body in pieces:
        fn = scan_of(body)
        _, warm, _ = time_fn(fn, prob, interp, lam, y, repeats=15)
        out[name] = warm / n * 1e6
    return out


def main():
    lines = [
        "# Core benchmark: profile of the continuous adjoints",
        "",
        "Command: `/work/venv/bin/python bench/profile_core.py` — shared 2-core "
        "machine, times are medians, compare within a table. jaxsens under test: "
        f"{os.environ.get('JAXSENS_REV', jaxsens.__file__)}.",
        "",
        "## 1. Backward steps and warm time: as shipped vs two one-line loop fixes",
        "",
        "Patched in a copy of `_loop.py` inside this process (jaxsens untouched). "
        "`fsal`: keep `made_jump` set until a step is accepted (`hit | (made_jump & "
        "~keep)`); `clip`: evaluate the backward field at `s` clipped to the span "
        "(diffrax's initial-step probe otherwise reads the dense output out of range "
        "→ NaN step size).",
        "",
        "| problem | method | loop | backward steps (accepted) | failed? | warm "
        "(median) | min | rel. error vs ref |",
        "| --- | --- | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    orig = importlib.import_module("jaxsens._sensitivity._loop").backward_loop
    with open(importlib.import_module("jaxsens._sensitivity._loop").__file__) as fh:
        fsal_shipped = "made_jump & ~keep" in fh.read()
    if fsal_shipped:  # jaxsens d48013f and later ship the fsal fix
        loops = {"as shipped (has fsal)": orig, "+clip": patched_loop({"clip"})}
    else:
        loops = {
            "as shipped": orig,
            "fsal": patched_loop({"fsal"}),
            "fsal+clip": patched_loop({"fsal", "clip"}),
        }
    methods = {
        "BacksolveAdjoint": jaxsens.BacksolveAdjoint(),
        "InterpolatingAdjoint": jaxsens.InterpolatingAdjoint(),
        "InterpolatingAdjoint(seminorm=False)": jaxsens.InterpolatingAdjoint(
            seminorm=False
        ),
        "BacksolveAdjoint(seminorm=False)": jaxsens.BacksolveAdjoint(seminorm=False),
        "InterpolatingAdjoint(checkpoints=8)": jaxsens.InterpolatingAdjoint(
            checkpoints=8
        ),
        "QuadratureAdjoint": jaxsens.QuadratureAdjoint(),
        "GaussAdjoint": jaxsens.GaussAdjoint(),
    }
    for key in ("lv64", "node"):
        problem = bc.PROBLEMS[key]()
        ref = bc.reference_grad(problem)
        acc, rej = bc.forward_steps(problem)
        f, dyn = bc.grad_fn(problem, "diffrax RCA")
        _, rca, rca_all = time_fn(f, dyn, repeats=20)
        lines.append(
            f"| {problem.name} | diffrax RCA (forward steps {acc + rej} = {acc} acc. "
            f"+ {rej} rej.) | | | | {fmt_s(rca)} | {fmt_s(min(rca_all))} | |"
        )
        for mname, m in methods.items():
            for lname, loop in loops.items():
                try:
                    st, ac, failed, warm, err = steps_and_time(
                        problem, m, loop, ref, 15
                    )
                except Exception as e:  # noqa: BLE001
                    lines.append(
                        f"| {problem.name} | {mname} | {lname} | error: "
                        f"{str(e).splitlines()[0][:120]} | | | | |"
                    )
                    continue
                row = (
                    f"| {problem.name} | {mname} | {lname} | {st} ({ac}) | "
                    f"{'**yes**' if failed else 'no'} | {fmt_s(warm[0])} "
                    f"| {fmt_s(warm[1])} "
                    f"| {err:.1e} |"
                )
                lines.append(row)
                print(row, flush=True)
        install(orig)
    lines += [
        "",
        "## 2. Cost of a backward step's pieces (µs per call, median, in a scan of "
        "700 calls)",
        "",
        "| piece | LV float64 | seed-002 NODE (float32) | long solve (64 states, "
        "10,336 params) |",
        "| --- | ---: | ---: | ---: |",
    ]
    costs = {k: per_call_costs(bc.PROBLEMS[k]()) for k in ("lv64", "node")}
    costs["long"] = per_call_costs(bc.problems.long_solve(1000))
    for name in costs["lv64"]:
        lines.append(
            f"| {name} | {costs['lv64'][name]:.1f} | {costs['node'][name]:.1f} "
            f"| {costs['long'][name]:.1f} |"
        )
    out = os.path.join(bc.RESULTS_DIR, "core_profile.md")
    with open(out, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
