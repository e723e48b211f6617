"""`jaxsens.compile_small_loops_whole`: let XLA:CPU compile an ODE solve's loops as
single functions."""

import functools
import os


KEY = "xla_cpu_small_while_loop_byte_threshold"
BYTES = 1 << 20
XLA_DEFAULT_BYTES = 1024
_EXTRA = "--xla_backend_extra_options="
# In a compiled program's text (`jax.jit(f).lower(...).compile().as_text()`):
# present when XLA:CPU compiled a loop whole.
WHOLE_LOOP_MARKER = "xla_cpu_small_call"

# The `XLA_FLAGS` value `compile_small_loops_whole` wrote, once it has.
_written: str | None = None


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


def compile_small_loops_whole() -> None:
    """Let XLA:CPU compile small `while` loops — an ODE solve's step, stage and
    save-time loops — as single functions. Call it first thing in a program,
    before JAX runs or compiles anything.

    XLA:CPU runs a compiled program op by op, at a fixed cost of a fraction of a
    microsecond per op, except for `while` loops whose body touches fewer than
    `xla_cpu_small_while_loop_byte_threshold` bytes per iteration (1024 by
    default): those become one function with no per-op cost. An ODE solve is
    loops of many tiny ops, so with the default even a 2-state solve runs op by
    op. This call raises the limit to 1 MiB by adding it to the `XLA_FLAGS`
    environment variable, which JAX reads once, when it starts its backend.
    Gradients of small problems get several times faster and compile sooner
    (figures in the README's performance section); results are unchanged up to
    rounding. Loops that call a library routine (the LAPACK solves of implicit
    solvers) are never compiled whole. Other backends ignore the option.

    The setting applies to the whole process — every library's loops, and the
    child processes it starts, which inherit `XLA_FLAGS`. If your `XLA_FLAGS`
    already sets `xla_cpu_small_while_loop_byte_threshold`, it is left as it is.
    Calling this again is harmless.

    **Raises:**

    `RuntimeError` when JAX's backend started before the call (anything that ran,
    compiled or listed devices), so the limit can no longer change. `XLA_FLAGS` is
    then left as it was. Restart Python and call this before any JAX computation,
    or start Python with `XLA_FLAGS` set as the message says. Whether the limit
    took effect is checked by compiling a small loop on the CPU and looking for
    the whole-loop function in the compiled program: JAX has no
    public query for "has the backend started".

    **Example:**

    ```python
    import jaxsens

    jaxsens.compile_small_loops_whole()   # before JAX runs anything

    import jax.numpy as jnp

    sol = jaxsens.solve(lambda t, y, k: -k * y, jnp.ones(2), jnp.linspace(0.0, 1.0, 5),
                        jnp.array(0.5))
    ```
    """
    global _written
    flags = os.environ.get("XLA_FLAGS", "")
    if KEY in flags:  # ours from an earlier call, or the user's own setting
        return
    new = with_threshold(flags, BYTES)
    os.environ["XLA_FLAGS"] = new
    try:
        on = in_effect()
    except RuntimeError:  # no CPU backend in this process (`JAX_PLATFORMS`)
        on = True  # nothing to compile whole; the option only concerns XLA:CPU
    if not on:
        if flags:
            os.environ["XLA_FLAGS"] = flags
        else:
            del os.environ["XLA_FLAGS"]
        raise RuntimeError(
            "`jaxsens.compile_small_loops_whole()` came too late: JAX's backend has "
            "already started in this process (something ran, compiled or listed "
            "devices), so XLA:CPU's small-loop limit can no longer change. Restart "
            "Python and call it first, before any JAX computation, or start Python "
            f"with XLA_FLAGS='{new}'."
        )
    _written = new


@functools.cache
def in_effect() -> bool:
    """Whether XLA:CPU compiles a loop of ~4 KiB of operands whole: compiles a tiny
    loop for the CPU and looks (this starts JAX's backend)."""
    import jax
    import jax.numpy as jnp

    def loop(x, n):
        # A traced trip count: XLA cannot unroll the loop away.
        return jax.lax.fori_loop(0, n, lambda i, c: jnp.sin(c), x)

    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    x = jax.ShapeDtypeStruct((1000,), jnp.float32, sharding=cpu)
    n = jax.ShapeDtypeStruct((), jnp.int32, sharding=cpu)
    text = jax.jit(loop).lower(x, n).compile().as_text()
    return WHOLE_LOOP_MARKER in text


def status() -> str:
    """One sentence for `explain` and the demo: are small loops compiled whole?"""
    flags = os.environ.get("XLA_FLAGS", "")
    if in_effect():
        how = (
            "`jaxsens.compile_small_loops_whole()`"
            if _written is not None and flags == _written
            else "your XLA_FLAGS"
        )
        return f"XLA:CPU compiles this process's small loops whole (set by {how})."
    if KEY in flags:
        return (
            "XLA:CPU runs small loops op by op: your XLA_FLAGS sets "
            f"{KEY} below what a solve's loops need."
        )
    return (
        "XLA:CPU runs this solve's loops op by op (its default small-loop limit, "
        f"{XLA_DEFAULT_BYTES} bytes). Call `jaxsens.compile_small_loops_whole()` "
        "first thing in the program (before JAX runs anything) for faster "
        "gradients of small problems."
    )
