"""jaxsens's test suite."""

import os


# The suite checks results, not speed, and most of its time is XLA:CPU compiling
# hundreds of small programs. Cheaper code generation (no LLVM optimisation, the
# older loop emitters) cuts compile time by about a third; results are unchanged up
# to rounding. conftest.py adds it to `XLA_FLAGS`, and the processes the tests start
# (the demo, notebook kernels, the sharding script) get it through `child_env`. The
# bench and the README's commands use XLA's defaults.
CHEAP_CODEGEN = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child Python that sets up XLA itself:
    `XLA_FLAGS` holds only `CHEAP_CODEGEN` (no device count, no loop threshold)."""
    return {**os.environ, "XLA_FLAGS": CHEAP_CODEGEN, **extra}
