import os

from tests import CHEAP_CODEGEN


# Before JAX starts its backend: see `CHEAP_CODEGEN`.
os.environ["XLA_FLAGS"] = f"{CHEAP_CODEGEN} {os.environ.get('XLA_FLAGS', '')}".strip()

import jax  # noqa: E402

import jaxsens  # noqa: E402


# As the README tells users: before JAX runs anything. The suite's timings (and a
# test that reads a compiled program's text) assume small loops compiled whole.
jaxsens.compile_small_loops_whole()
jax.config.update("jax_enable_x64", True)
