import diffrax as dfx
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from .base import AbstractSensitivity, discrete_solve


# Store every step when the stored states, `max_steps` of them, take at most this
# many bytes (see `checkpoints`).
STORE_ALL_MAX_BYTES = 2**18


def default_checkpoints(y0, max_steps: int) -> int | None:
    """`Discrete`'s checkpoint count when none is given: one per step (`max_steps`)
    when `max_steps` states of `y0` fit in `STORE_ALL_MAX_BYTES`, else `None`
    (diffrax's recursive checkpointing)."""
    leaves = jtu.tree_leaves(y0)
    nbytes = sum(int(np.size(x)) * jnp.dtype(jnp.result_type(x)).itemsize
                 for x in leaves)
    return max_steps if nbytes * max_steps <= STORE_ALL_MAX_BYTES else None


class Discrete(AbstractSensitivity):
    """Reverse-mode AD through the solver's own steps (a "discretise-then-optimise"
    gradient): exactly the gradient of the computed solution, with memory bounded
    by diffrax's recursive checkpointing. The fastest reverse-mode method on CPU
    for non-linear problems in `bench/RESULTS.md`, and `Auto`'s choice above the
    forward-mode threshold.

    Caveat: the gradient of the computed solution is only as good as the solution
    is a smooth function of the parameters. With an explicit solver at its
    stability limit (a stiff problem run with `Tsit5`) the step-size controller's
    decisions make the discrete solution a rough function of the parameters and
    the gradient can be wrong by orders of magnitude (the heat equation in
    `bench/RESULTS.md`); use an implicit solver (`diffrax.Kvaerno5()`) there, and
    check with `jaxsens.check_gradient` when in doubt.

    JAX cannot give one function different custom rules for forward and reverse
    mode, so the mode is a setting:

    - `forward_mode=False` (default): diffrax's `RecursiveCheckpointAdjoint` —
        the fastest reverse-mode gradient; `jax.grad`/`jax.vjp` and `vmap` of them.
    - `forward_mode=True`: diffrax's `DirectAdjoint` — also supports `jax.jvp`,
        `jax.jacfwd` and `jax.hessian`, at a few times the reverse-mode cost.

    **Arguments:**

    - `checkpoints`: number of checkpoints for the recursive checkpointing.
        Default: one per step (`max_steps` of them: nothing is recomputed) when
        `max_steps` copies of the state take at most `STORE_ALL_MAX_BYTES` =
        256 KiB (float64: `n ≤ 8` at the default `max_steps = 4096`), else
        diffrax's choice, O(log max_steps) memory with recomputation. The store
        is sized by `max_steps`, not by the steps taken, so above that size it
        costs more than the recomputation it saves; storing every step is faster
        for small states and compiles sooner, recomputation is faster for larger
        states taking few steps (figures: `bench/RESULTS.md`, "Design
        measurements"). A solve that uses most of a tight budget gains from the
        store at any size: there pass `checkpoints=max_steps`.
        `vmap` over solves multiplies the store by the batch size, which the
        rule cannot see: pass `checkpoints=` to override.
    - `forward_mode`: see above.

    Cites: Griewank & Walther 2000 (binomial checkpointing, "revolve"); Kidger 2021
    §5.1.

    **Example:**

    ```python
    import jax, jax.numpy as jnp, jaxsens
    ts = jnp.linspace(0.0, 1.0, 5)
    f = lambda t, y, k: -k * y
    loss = lambda k: jnp.sum(jaxsens.solve(f, jnp.array([1.0]), ts, k,
                                           sensitivity=jaxsens.Discrete()).ys)
    jax.grad(loss)(2.0)
    hess = jax.hessian(lambda k: jnp.sum(jaxsens.solve(
        f, jnp.array([1.0]), ts, k, sensitivity=jaxsens.Discrete(forward_mode=True)).ys))
    hess(2.0)
    ```
    """

    checkpoints: int | None = None
    forward_mode: bool = False

    def __check_init__(self):
        if self.checkpoints is not None and (
            not isinstance(self.checkpoints, int) or self.checkpoints < 1
        ):
            raise ValueError(
                "`Discrete(checkpoints=...)` must be a positive int or None, got "
                f"{self.checkpoints!r}."
            )
        if self.forward_mode and self.checkpoints is not None:
            raise ValueError(
                "`Discrete(forward_mode=True)` does not take `checkpoints`: it "
                "differentiates through diffrax's `DirectAdjoint`."
            )

    def diffrax_adjoint(self, y0, max_steps: int) -> dfx.AbstractAdjoint:
        """The diffrax adjoint this method differentiates through."""
        if self.forward_mode:
            return dfx.DirectAdjoint()
        checkpoints = self.checkpoints
        if checkpoints is None:
            checkpoints = default_checkpoints(y0, max_steps)
        return dfx.RecursiveCheckpointAdjoint(checkpoints=checkpoints)

    def solve(self, field, y0, ts, args, options):
        adjoint = self.diffrax_adjoint(y0, options.max_steps)
        ys, stats, result, _ = discrete_solve(field, y0, ts, args, options, adjoint)
        return ys, stats, result

    def solve_dense(self, field, y0, ts, args, options):
        """`(ys, stats, result, interpolation)`: the solve with diffrax's dense
        output (`solve(..., dense=True)`), both differentiated through diffrax."""
        adjoint = self.diffrax_adjoint(y0, options.max_steps)
        return discrete_solve(field, y0, ts, args, options, adjoint, dense=True)


