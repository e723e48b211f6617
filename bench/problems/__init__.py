"""Problem definitions shared by the benchmarks, one module per topic.

`bench.problems.suite` (the named problems of `python -m bench suite`, see
`registry()`), `bench.problems.crossover` (the n, p sweep), `bench.problems.core`
(Lotka–Volterra, the long-horizon memory case, the adjoints' dense field),
`bench.problems.linear` (the linear rate system and its UDE, heat),
`bench.problems.controls` (the controlled MLP). Each module exposes plain
functions returning arrays, fields and losses, so every script builds the same
problem the same way.
"""


def registry():
    """The suite's named problems (`python -m bench`): name -> builder(quick)."""
    from .suite import REGISTRY

    return REGISTRY
