"""Timing helper shared by the benchmarks.

`time_fn(fn, *args, repeats=20)` calls `fn(*args)` once (compile + run, reported
as the compile time) and then `repeats` more times, each blocked on its result
with `jax.block_until_ready`, and returns `(compile_s, median_s, all_s)`.

Pass a jitted function (`jax.jit`/`eqx.filter_jit`); the first call then includes
tracing and XLA compilation. Timings on a shared machine are noisy: report
medians, and ratios of peers measured in the same process.
"""

import os
import statistics
import time

import jax


# Environment variables that change what a benchmark measures (jaxsens/_xla.py).
RECORDED_ENV = ("JAXSENS_SMALL_LOOP_BYTES",)


def pinned(cmd: str) -> str:
    """`cmd` as it was run: prefixed with `taskset -c …` when this process is
    pinned to fewer than all cores (on 2 shared cores warm times were bimodal,
    XLA's threads migrating between cores; pinned to one, they are not), and with
    any `RECORDED_ENV` variable that is set."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < (os.cpu_count() or 1):
        cmd = f"taskset -c {','.join(map(str, cpus))} {cmd}"
    for name in RECORDED_ENV:
        if os.environ.get(name) is not None:
            cmd = f"{name}={os.environ[name]} {cmd}"
    return cmd


def time_fn(fn, *args, repeats: int = 20, min_time: float | None = None):
    """Returns `(compile_s, median_s, all_s)` for `fn(*args)`.

    **Arguments:**

    - `fn`: a jitted function of `args`.
    - `repeats`: the number of warm calls (at least 1).
    - `min_time`: if given, stop after this many seconds of warm calls even if
        fewer than `repeats` were made (at least 3 are always made).

    **Returns:** the first call's wall time (compile + one run), the median of the
    warm calls, and the list of all warm-call times, in seconds.
    """
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - start
    all_s = []
    spent = 0.0
    for i in range(max(1, repeats)):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        dt = time.perf_counter() - start
        all_s.append(dt)
        spent += dt
        if min_time is not None and i >= 2 and spent > min_time:
            break
    return compile_s, statistics.median(all_s), all_s


def fmt_s(s: float) -> str:
    """Seconds as a short human string (µs/ms/s)."""
    if s != s:  # NaN
        return "—"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1.0:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"
