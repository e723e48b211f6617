"""Seed 002: gradient of the 100-control neural-ODE loss w.r.t. the 282 MLP weights.

Every jaxsens method two ways — `jax.vmap` over the controls (each member its own
adaptive steps) and ONE batched state with a shared step size
(`jaxsens.batched_field`) — against diffrax's adjoints vmapped the same way
(`RecursiveCheckpointAdjoint`, `BacksolveAdjoint`, `ForwardMode` + `jax.jacfwd`,
and RCA on the batched state) and torchdiffeq (`odeint`, `odeint_adjoint`, batched
state) when torch is importable. float32, Tsit5, rtol = atol = 1e-6. Warm median
and compile time (first call minus warm) separately; forward step counts for the
cost model. Writes `bench/results/controls.md` and `bench/results/controls.png`.

    python -m bench.bench_controls            # Nc = 1, 10, 100, 1000
    python -m bench.bench_controls --quick    # Nc = 1, 100, fewer repeats
"""

import argparse
import datetime
import os
import platform
import sys
import time

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import jaxsens
from bench._timing import time_fn
from bench.problems import controls as P


RTOL = ATOL = 1e-6
JAXSENS = {
    "Discrete": jaxsens.Discrete(),
    "Forward": jaxsens.Forward(),
    "BacksolveAdjoint": jaxsens.BacksolveAdjoint(),
    "InterpolatingAdjoint": jaxsens.InterpolatingAdjoint(),
    "QuadratureAdjoint": jaxsens.QuadratureAdjoint(),
    "GaussAdjoint": jaxsens.GaussAdjoint(),
}
# Run at every Nc of the sweep (the plot); the rest only at Nc = 1 and 100.
SWEEP = {"jaxsens Discrete, shared", "jaxsens GaussAdjoint, shared",
         "jaxsens Discrete, vmap", "diffrax RCA, vmap", "diffrax RCA, shared",
         "torchdiffeq odeint, batched", "torchdiffeq odeint_adjoint, batched"}
# Forward on the batched state carries one tangent per input of the WHOLE batch,
# every control sample included (~20 000 at Nc = 100): minutes per gradient.
ONLY_NC1 = {"jaxsens Forward, shared"}
SKIP_ABOVE_S = 2.0  # a variant slower than this at one Nc is not run at larger Nc


def jax_variants(field, ts, y0):
    params, static = eqx.partition(field, eqx.is_inexact_array)

    def vmap_loss(method):
        def loss(p, controls):
            f = eqx.combine(p, static)
            ys = jax.vmap(lambda u: jaxsens.solve(f, y0, ts, u, rtol=RTOL, atol=ATOL,
                                                  sensitivity=method).ys)(controls)
            return jnp.sum(ys**2) / P.NT
        return loss

    def shared_loss(method):
        def loss(p, controls):
            f = jaxsens.batched_field(eqx.combine(p, static))
            n = controls.values.shape[0]
            ys = jaxsens.solve(f, jnp.zeros((n, P.STATE), y0.dtype), ts, controls,
                               rtol=RTOL, atol=ATOL, sensitivity=method).ys
            return jnp.sum(ys**2) / P.NT
        return loss

    def diffrax_loss(adjoint, shared):
        def one(f, y0_, u):
            return dfx.diffeqsolve(
                dfx.ODETerm(f), dfx.Tsit5(), ts[0], ts[-1], None, y0_, args=u,
                saveat=dfx.SaveAt(ts=ts),
                stepsize_controller=dfx.PIDController(rtol=RTOL, atol=ATOL),
                adjoint=adjoint, max_steps=4096).ys

        def loss(p, controls):
            f = eqx.combine(p, static)
            if shared:
                n = controls.values.shape[0]
                ys = one(jaxsens.batched_field(f), jnp.zeros((n, P.STATE), y0.dtype),
                         controls)
            else:
                ys = jax.vmap(lambda u: one(f, y0, u))(controls)
            return jnp.sum(ys**2) / P.NT
        return loss

    out = {}
    # First: the reference of the "rel. diff" column.
    out["diffrax RCA, vmap"] = jax.jit(jax.grad(
        diffrax_loss(dfx.RecursiveCheckpointAdjoint(), False)))
    for name, method in JAXSENS.items():
        out[f"jaxsens {name}, vmap"] = jax.jit(jax.grad(vmap_loss(method)))
        out[f"jaxsens {name}, shared"] = jax.jit(jax.grad(shared_loss(method)))
    out["diffrax RCA, shared"] = jax.jit(jax.grad(
        diffrax_loss(dfx.RecursiveCheckpointAdjoint(), True)))
    out["diffrax BacksolveAdjoint, vmap"] = jax.jit(jax.grad(
        diffrax_loss(dfx.BacksolveAdjoint(), False)))
    out["diffrax ForwardMode (jacfwd), vmap"] = jax.jit(jax.jacfwd(
        diffrax_loss(dfx.ForwardMode(), False)))
    return params, out


def step_counts(field, ts, y0, controls):
    """Forward steps: per member under vmap (mean, max) and of the shared state."""
    def member(u):
        return jaxsens.solve(field, y0, ts, u, rtol=RTOL, atol=ATOL,
                             sensitivity=jaxsens.Discrete()).stats["num_steps"]

    n = controls.values.shape[0]
    per = eqx.filter_jit(jax.vmap(member))(controls)
    shared = eqx.filter_jit(lambda f, c: jaxsens.solve(
        jaxsens.batched_field(f), jnp.zeros((n, P.STATE), y0.dtype), ts, c,
        rtol=RTOL, atol=ATOL, sensitivity=jaxsens.Discrete()).stats["num_steps"])(
        field, controls)
    return float(jnp.mean(per)), int(jnp.max(per)), int(shared)


def torch_variants(field, ts, values):
    try:
        import torch
        import torchdiffeq
    except ImportError:
        return {}, None
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    layers = field.mlp.layers

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.ModuleList()
            for layer in layers:
                lin = torch.nn.Linear(layer.in_features, layer.out_features)
                with torch.no_grad():
                    lin.weight.copy_(torch.tensor(np.asarray(layer.weight)))
                    lin.bias.copy_(torch.tensor(np.asarray(layer.bias)))
                self.lin.append(lin)
            self.ts = torch.tensor(np.asarray(ts))
            self.u = None

        def forward(self, t, y):
            # Linear interpolation of every control at t (torch.searchsorted).
            i = torch.clamp(torch.searchsorted(self.ts, t.reshape(1)) - 1, 0,
                            len(self.ts) - 2)[0]
            w = (t - self.ts[i]) / (self.ts[i + 1] - self.ts[i])
            u = self.u[:, i] * (1 - w) + self.u[:, i + 1] * w
            h = torch.cat([y, u[:, None]], dim=1)
            for lin in self.lin[:-1]:
                h = torch.nn.functional.selu(lin(h))
            return self.lin[-1](h)

    net = Net()

    def make(fn, **kw):
        def grad(u):
            net.u = torch.tensor(np.asarray(u))
            net.zero_grad()
            y0 = torch.zeros(u.shape[0], P.STATE)
            ys = fn(net, y0, net.ts, rtol=RTOL, atol=ATOL, method="dopri5", **kw)
            loss = (ys**2).sum() / P.NT
            loss.backward()
            return [p.grad.clone() for p in net.parameters()]
        return grad

    variants = {
        "torchdiffeq odeint, batched": make(torchdiffeq.odeint),
        "torchdiffeq odeint_adjoint, batched": make(
            torchdiffeq.odeint_adjoint, adjoint_params=tuple(net.parameters())),
    }
    return variants, torch.__version__


def time_torch(fn, arg, repeats):
    start = time.perf_counter()
    fn(arg)
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - start)
    return first, float(np.median(times))


REFERENCE = """
import sys, numpy as np, jax, jax.numpy as jnp, equinox as eqx
jax.config.update("jax_enable_x64", True)
import jaxsens
from bench.problems import controls as P
nc, path = int(sys.argv[1]), sys.argv[2]
to64 = lambda t: jax.tree_util.tree_map(
    lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, t)
field, controls = to64(P.field()), to64(P.controls(nc))
ts, y0 = P.times(jnp.float64), P.y0(jnp.float64)
params, static = eqx.partition(field, eqx.is_inexact_array)
def loss(p, cs):
    f = eqx.combine(p, static)
    ys = jax.vmap(lambda u: jaxsens.solve(f, y0, ts, u, rtol=1e-10, atol=1e-10,
        max_steps=16**4, sensitivity=jaxsens.Discrete()).ys)(cs)
    return jnp.sum(ys**2) / P.NT
g = jax.jit(jax.grad(loss))(params, controls)
np.save(path, np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(g)]))
"""


def reference64(nc):
    """The gradient in float64 at rtol = atol = 1e-10 (Discrete, vmapped), from a
    subprocess with x64 on: what the rel. error column measures against."""
    import subprocess
    import tempfile

    path = os.path.join(tempfile.mkdtemp(), "ref.npy")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", REFERENCE, str(nc), path], check=True,
                   cwd=root)
    return np.load(path)


def flat(g):
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(g)])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    ncs = [1, 100] if args.quick else [1, 10, 100, 1000]
    repeats = args.repeats or (3 if args.quick else 5)
    command = "python -m bench.bench_controls" + (" --quick" if args.quick else "")

    field, ts, y0 = P.field(), P.times(), P.y0()
    params, variants = jax_variants(field, ts, y0)
    torch_vs, torch_version = torch_variants(field, ts, None)
    results = {}  # (name, nc) -> (compile_s, warm_s, rel_err)
    slow = set()
    for nc in ncs:
        controls = P.controls(nc)
        values = np.asarray(controls.values)
        ref = reference64(nc) if nc in (1, 100) else None
        for name, fn in list(variants.items()) + list(torch_vs.items()):
            if nc not in (1, 100) and name not in SWEEP:
                continue
            if name in slow or (nc > 1 and name in ONLY_NC1):
                continue
            if name.startswith("torchdiffeq"):
                first, warm = time_torch(fn, values, max(1, repeats // 2))
                grads = fn(values)
                g = np.concatenate([x.numpy().ravel() for x in grads])
                # torch Linear weights are (out, in) like equinox's: same order.
                err = (float(np.linalg.norm(g - ref) / np.linalg.norm(ref))
                       if ref is not None else float("nan"))
            else:
                first, warm, _ = time_fn(fn, params, controls, repeats=repeats,
                                         min_time=20.0)
                g = np.asarray(flat(fn(params, controls)), np.float64)
                err = (float(np.linalg.norm(g - ref) / np.linalg.norm(ref))
                       if ref is not None else float("nan"))
            results[(name, nc)] = (max(first - warm, 0.0), warm, err)
            print(f"Nc={nc:<5} {name:<40} warm {warm * 1e3:9.1f} ms  compile "
                  f"{max(first - warm, 0.0):6.1f} s  rel. error {err:.1e}", flush=True)
            if warm > SKIP_ABOVE_S:
                slow.add(name)
    steps = step_counts(field, ts, y0, P.controls(100))
    print(f"forward steps at Nc=100: per member under vmap mean {steps[0]:.1f}, "
          f"max {steps[1]}; shared batched state {steps[2]}")
    write_results(results, ncs, steps, command, torch_version)


def write_results(results, ncs, steps, command, torch_version):
    here = os.path.join(os.path.dirname(__file__), "results")
    os.makedirs(here, exist_ok=True)
    names = sorted({n for n, _ in results}, key=lambda n: (
        not n.startswith("jaxsens"), n))
    lines = [
        "# Seed 002: gradient of the controlled neural ODE (282 parameters)",
        "",
        f"Made by `{command}` on {datetime.date.today()} — shared 2-core CPU "
        "machine (other jobs running, so absolute times are noisy; compare rows "
        f"of one run). jax {jax.__version__}, diffrax {dfx.__version__}, "
        f"equinox {eqx.__version__}, python {platform.python_version()}"
        + (f", torch {torch_version}" if torch_version else ", torch not installed")
        + ". float32, Tsit5 (torchdiffeq: dopri5), rtol = atol = 1e-6, t ∈ [0, 10], "
        "100 save times, linear-interpolated standard-normal controls, loss = "
        "Σ sum(pred²)/100. `vmap`: `jax.vmap` over controls, each member its own "
        "adaptive steps; `shared`/`batched`: one batched state, one step size "
        "(`jaxsens.batched_field`). Warm = median; compile = first call − warm. "
        "rel. error = ‖g − g_ref‖/‖g_ref‖ against the float64 gradient at rtol = atol "
        "= 1e-10 (same weights and controls): at rtol = atol = 1e-6 the states are "
        "only ~3e-4 in size, so every method resolves this gradient to about 1–30 % "
        "— a property of the tolerances, not of a method.",
        "",
        f"Forward steps at Nc = 100: per member under `vmap` mean {steps[0]:.1f}, "
        f"max {steps[1]} (a vmapped loop runs max-many iterations for every member); "
        f"shared batched state: {steps[2]}.",
        "",
        "| method | " + " | ".join(f"Nc={n} warm (ms)" for n in ncs)
        + " | compile Nc=100 (s) | rel. error Nc=100 |",
        "| --- | " + " | ".join("---:" for _ in ncs) + " | ---: | ---: |",
    ]
    for name in names:
        cells = []
        for n in ncs:
            r = results.get((name, n))
            cells.append("—" if r is None else f"{r[1] * 1e3:.1f}")
        r100 = results.get((name, 100))
        comp = "—" if r100 is None else f"{r100[0]:.1f}"
        err = "—" if r100 is None else f"{r100[2]:.1e}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {comp} | {err} |")
    lines += ["", "— = not run: too slow at a smaller Nc, not part of the Nc = 10 / "
              "1000 sweep, or (`Forward, shared`) one tangent per sample of every "
              "control in the batch.", ""]
    with open(os.path.join(here, "controls.md"), "w") as fh:
        fh.write("\n".join(lines))
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name in names:
        pts = [(n, results[(name, n)][1]) for n in ncs if (name, n) in results]
        if len(pts) < 2:
            continue
        x, y = zip(*pts, strict=True)
        style = "-" if name.startswith("jaxsens") else "--"
        ax.loglog(x, np.array(y) * 1e3, style, marker="o", label=name)
    ax.set(xlabel="number of controls Nc", ylabel="time per gradient (ms, warm)",
           title="seed 002: gradient w.r.t. 282 MLP weights (2-core CPU, shared)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(here, "controls.png"), dpi=110)


if __name__ == "__main__":
    sys.exit(main())
