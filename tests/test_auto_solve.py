"""`Auto.solve` makes the choice itself, from `solve`'s own arguments: the method
it delegates to is the one `Auto.chosen` names (what `Solution.sensitivity`
reports), and whether `y0` was traced comes from `SolveOptions.y0_traced`."""

import diffrax
import jax
import jax.numpy as jnp

import jaxsens
from jaxsens._sensitivity._options import SolveOptions


TS = jnp.linspace(0.0, 1.0, 3)
Y0 = jnp.linspace(0.5, 1.0, 8)


def field(t, y, theta):
    return -theta[0] * y + theta[1] * jnp.tanh(jnp.roll(y, 1))


def _options(y0_traced):
    return SolveOptions(TS[0], diffrax.Tsit5(), 1e-8, 1e-8, None, 4096, True, None,
                        y0_traced)


def test_auto_solve_chooses_with_y0_traced_and_matches_the_chosen_method():
    chosen = {}

    def loss(theta, y0_traced):
        auto = jaxsens.Auto()
        options = _options(y0_traced)
        chosen[y0_traced] = auto.chosen(field, Y0, TS, theta, options)
        ys, _, _ = auto.solve(field, Y0, TS, theta, options)
        return jnp.sum(ys**2)

    theta = jnp.array([0.5, 0.3])
    g_const = jax.jit(jax.grad(lambda th: loss(th, False)))(theta)
    assert bool(jnp.all(jnp.isfinite(g_const)))
    jax.eval_shape(jax.grad(lambda th: loss(th, True)), theta)  # the choice only
    # p = 2 traced parameters: a constant y0 leaves Forward by columns; a traced
    # one adds its 8 entries (n + p = 10 > 8), and reverse mode wins.
    assert chosen == {False: jaxsens.Forward(), True: jaxsens.Discrete()}

    def solve_loss(th):
        sol = jaxsens.solve(field, Y0, TS, th, sensitivity=jaxsens.Auto(),
                            rtol=1e-8, atol=1e-8)
        chosen["solve"] = sol.sensitivity
        return jnp.sum(sol.ys**2)

    jax.eval_shape(jax.grad(solve_loss), theta)
    assert chosen["solve"] == chosen[False]
