"""XLA:CPU compiles small `while` loops whole: jaxsens raises its size limit on import.

XLA:CPU runs a compiled program as a sequence of "thunks", one per fused op, at a
fixed cost of roughly 0.1–1 µs each. A `while` loop whose body accesses fewer than
`xla_cpu_small_while_loop_byte_threshold` bytes per iteration (default 1024) is
instead compiled into ONE function, with no per-op cost. An ODE solve is loops in
loops (steps; Runge–Kutta stages; the save times of a step), whose bodies are many
tiny ops: with the default limit even the step loop of a 2-state problem runs op by
op (a Lotka–Volterra solve, float64: 115 µs, against 25 µs with the limit raised). Raised to 1 MiB, whole solves and adjoint
passes compile as single functions: 2–10× faster warm gradients of small problems
and shorter compile times (bench/results/core.md against core_xla_default.md), no
slowdown measured on any suite problem (bench/results/small_loops.md). Loops that
call a library (the LAPACK solves of implicit solvers) are never compiled whole.

The limit is an XLA option read once, when JAX starts its CPU backend, from the
`XLA_FLAGS` environment variable. `configure()` (run by `import jaxsens`) adds it
there unless:

- `JAXSENS_SMALL_LOOP_BYTES=0` is set (leave XLA's default), or another value is
  given (that many bytes);
- `XLA_FLAGS` sets `xla_cpu_small_while_loop_byte_threshold` already (yours wins);
- JAX's backend was started before `jaxsens` was imported (too late: the option
  cannot change any more). `jaxsens.explain` then says so, with the fix.

The option only concerns XLA:CPU's code generation; other backends ignore it, and
results are unchanged up to rounding.
"""

import functools
import os


KEY = "xla_cpu_small_while_loop_byte_threshold"
ENV = "JAXSENS_SMALL_LOOP_BYTES"
DEFAULT_BYTES = 1 << 20
XLA_DEFAULT_BYTES = 1024
_EXTRA = "--xla_backend_extra_options="
# In a compiled program's text (`jax.jit(f).lower(...).compile().as_text()`):
# present when XLA:CPU compiled a loop whole.
WHOLE_LOOP_MARKER = "xla_cpu_small_call"

# What `configure` did, for `explain`: one sentence.
status = "not configured: `jaxsens._xla.configure()` has not run"


def with_threshold(flags: str, nbytes: int) -> str:
    """`flags` (an `XLA_FLAGS` value) with `KEY=nbytes` among its backend extra
    options; unchanged if `KEY` is set already."""
    if KEY in flags:
        return flags
    tokens = flags.split()
    for i in reversed(range(len(tokens))):
        if tokens[i].startswith(_EXTRA):
            value = tokens[i][len(_EXTRA) :]
            tokens[i] = _EXTRA + (value + "," if value else "") + f"{KEY}={nbytes}"
            return " ".join(tokens)
    return " ".join([*tokens, f"{_EXTRA}{KEY}={nbytes}"])


def requested_bytes() -> int:
    """The limit asked for through `JAXSENS_SMALL_LOOP_BYTES` (0: leave XLA's)."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return DEFAULT_BYTES
    try:
        nbytes = int(raw)
    except ValueError:
        nbytes = -1
    if nbytes < 0:
        raise ValueError(
            f"`{ENV}` must be a whole number of bytes (0 keeps XLA's default of "
            f"{XLA_DEFAULT_BYTES}), got {raw!r}. Unset it for jaxsens's default, "
            f"{DEFAULT_BYTES}."
        )
    return nbytes


def _backend_started() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except Exception:  # a JAX without this (private) query: assume not started
        return False


def configure() -> str:
    """Raise XLA:CPU's small-loop limit through `XLA_FLAGS` if that can still take
    effect; returns (and keeps in `status`) a sentence saying what was done."""
    global status
    nbytes = requested_bytes()
    flags = os.environ.get("XLA_FLAGS", "")
    if nbytes == 0:
        status = f"left at XLA's default ({XLA_DEFAULT_BYTES} bytes): {ENV}=0"
    elif KEY in flags:
        status = f"set by your XLA_FLAGS ({flags!r}); jaxsens left it"
    elif _backend_started():
        status = (
            "not raised: JAX's backend was started before jaxsens was imported, "
            f"so XLA's default ({XLA_DEFAULT_BYTES} bytes) applies. Import jaxsens "
            "before running any JAX computation, or start Python with "
            f"XLA_FLAGS='{with_threshold(flags, nbytes)}', for 2–10× faster "
            "gradients of small problems on CPU"
        )
    else:
        os.environ["XLA_FLAGS"] = with_threshold(flags, nbytes)
        status = f"raised to {nbytes} bytes by jaxsens (opt out: {ENV}=0)"
    return status


@functools.cache
def in_effect() -> bool:
    """Whether the default backend (call this on CPU) compiles a loop of ~4 KiB of
    operands whole: compiles a tiny loop and looks (about 50 ms)."""
    import jax
    import jax.numpy as jnp

    def loop(x, n):
        # A traced trip count: XLA cannot unroll the loop away.
        return jax.lax.fori_loop(0, n, lambda i, c: jnp.sin(c), x)

    x = jax.ShapeDtypeStruct((1000,), jnp.float32)
    n = jax.ShapeDtypeStruct((), jnp.int32)
    text = jax.jit(loop).lower(x, n).compile().as_text()
    return WHOLE_LOOP_MARKER in text


def note() -> str | None:
    """For `explain`: a sentence when running on CPU without the raised limit."""
    import jax

    if jax.default_backend() != "cpu" or in_effect():
        return None
    return (
        "XLA:CPU runs this solve's loops op by op (~0.1–1 µs per op), not compiled "
        f"whole: its small-loop limit was {status}."
    )
