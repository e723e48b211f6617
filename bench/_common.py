"""What the benchmarks share: paths, method tables, run metadata, formatting."""

import json
import os
import platform
import subprocess
import time


HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS_DIR = os.path.join(HERE, "results")
RESULTS_MD = os.path.join(HERE, "RESULTS.md")

# jaxsens's methods as the suite names them, then the peers.
OURS = [
    "Discrete",
    "Forward",
    "BacksolveAdjoint",
    "InterpolatingAdjoint",
    "InterpolatingAdjoint(checkpoints=K)",
    "QuadratureAdjoint",
    "GaussAdjoint",
    "LinearExpm",
    "KrylovExpm",
    "Auto()",
]
PEERS = [
    "diffrax RCA",
    "diffrax BacksolveAdjoint",
    "jax odeint",
    "torchdiffeq odeint",
    "torchdiffeq odeint_adjoint",
]
ADJOINTS = ["BacksolveAdjoint", "InterpolatingAdjoint", "QuadratureAdjoint",
            "GaussAdjoint"]
# `--quick` suite runs: the methods that are fastest somewhere, Auto, diffrax's default.
QUICK_METHODS = {"Discrete", "Forward", "GaussAdjoint", "LinearExpm", "KrylovExpm",
                 "Auto()", "diffrax RCA"}
# The crossover grid's methods (a memory variant of InterpolatingAdjoint left out).
CROSSOVER_METHODS = ["Discrete", "Forward", *ADJOINTS]
# Auto passes its check when its choice is within this factor of the fastest.
AUTO_TOLERANCE = 1.5

# Set by `python -m bench --xla-default`: leave XLA:CPU's small-loop limit at its
# default instead of calling `jaxsens.compile_small_loops_whole()`.
XLA_DEFAULT_ENV = "BENCH_XLA_DEFAULT"


def method(name: str, *, checkpoints=None, adjoint_max_steps=None):
    """The jaxsens sensitivity method a table names (`OURS`)."""
    import jaxsens

    if name == "Auto()":
        return jaxsens.Auto()
    kw = {}
    if name == "InterpolatingAdjoint(checkpoints=K)":
        name, kw = "InterpolatingAdjoint", {"checkpoints": checkpoints}
    cls = getattr(jaxsens, name)
    if adjoint_max_steps and issubclass(cls, jaxsens.AbstractAdjoint):
        kw["max_steps"] = adjoint_max_steps
    return cls(**kw)


def xla_default() -> bool:
    return os.environ.get(XLA_DEFAULT_ENV) == "1"


def command(question: str, argv) -> str:
    """The command line that reproduces this run, as run (pinning included)."""
    cmd = "python -m bench" + (" --xla-default" if xla_default() else "")
    cmd += f" {question}" + "".join(f" {x}" for x in argv)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < (os.cpu_count() or 1):
        cmd = f"taskset -c {','.join(map(str, cpus))} {cmd}"
    return cmd


def meta_info(cmd: str) -> dict:
    """Command, date, machine, versions, commit and load of a run."""
    import diffrax as dfx
    import equinox as eqx
    import jax

    from jaxsens import _xla

    def git(*a):
        return subprocess.run(["git", *a], capture_output=True, text=True,
                              cwd=ROOT).stdout.strip()

    rev = git("rev-parse", "--short", "HEAD") or "?"
    if git("status", "--porcelain", "--", "jaxsens"):
        rev += " + uncommitted jaxsens/ changes"
    try:
        import torch

        tv = f", torch {torch.__version__}"
    except ImportError:
        tv = ""
    return {
        "cmd": cmd,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}",
        "versions": f"jax {jax.__version__}, diffrax {dfx.__version__}, "
        f"equinox {eqx.__version__}{tv}",
        "jaxsens": rev,
        "load": round(os.getloadavg()[0], 1),
        "xla": (f"raised to {_xla.BYTES} bytes" if _xla.in_effect()
                else f"XLA's default ({_xla.XLA_DEFAULT_BYTES} bytes)"),
    }


def load_json(path):
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def ms(s):
    """Seconds as µs / ms / s; "—" for none."""
    if s is None or s != s:
        return "—"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1.0:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.2f} s"


def secs(s):
    return "—" if s is None or s != s else f"{s:.1f} s"
