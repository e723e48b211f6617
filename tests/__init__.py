"""jaxsens's test suite."""

import os


# The suite checks results, not speed, and most of its time is XLA:CPU compiling
# hundreds of small programs, which its older loop emitters do about a quarter
# faster. conftest.py adds this to `XLA_FLAGS`; the processes the tests start (the
# demo, notebook kernels, the sharding script) get it through `child_env`. The
# bench and the README's commands use XLA's defaults. Not
# `--xla_backend_optimization_level=0`, which saves more but changes results: on a
# Kvaerno5 solve that blows up, diffrax's accepted and rejected step counts came
# out swapped.
CHEAP_CODEGEN = "--xla_cpu_use_fusion_emitters=false"


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child Python that sets up XLA itself:
    `XLA_FLAGS` holds only `CHEAP_CODEGEN` (no device count, no loop threshold)."""
    return {**os.environ, "XLA_FLAGS": CHEAP_CODEGEN, **extra}
