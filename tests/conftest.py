import jax

import jaxsens


# As the README tells users: before JAX runs anything. The suite's timings (and a
# test that reads a compiled program's text) assume small loops compiled whole.
jaxsens.compile_small_loops_whole()
jax.config.update("jax_enable_x64", True)
