"""The benchmarks' one timing helper.

`timed(fn, *args)` is one call blocked on its result (`jax.block_until_ready`);
`time_fn(fn, *args, repeats=20)` calls `fn(*args)` once (compile + run, reported
as the compile time) and then `repeats` more times, and returns
`(compile_s, median_s, all_s)`.

Pass a jitted function (`jax.jit`/`eqx.filter_jit`); the first call then includes
tracing and XLA compilation. Timings on a shared machine are noisy: report
medians, and ratios of peers measured in the same process.
"""

import statistics
import time

import jax


def timed(fn, *args):
    """`(seconds, result)` of one call `fn(*args)`, blocked on its result."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return time.perf_counter() - start, out


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
    compile_s, _ = timed(fn, *args)
    all_s = []
    for i in range(max(1, repeats)):
        all_s.append(timed(fn, *args)[0])
        if min_time is not None and i >= 2 and sum(all_s) > min_time:
            break
    return compile_s, statistics.median(all_s), all_s
