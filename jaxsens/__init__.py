"""jaxsens: gradients of ODE solutions in JAX, with the method chosen and explained.

Importing jaxsens raises XLA:CPU's small-loop limit (`XLA_FLAGS`, before JAX starts
its backend) so that whole ODE solves compile as single functions: 2–10× faster
gradients of small problems. Opt out with `JAXSENS_SMALL_LOOP_BYTES=0`; see `jaxsens._xla`.
"""

# First, before anything can start JAX's backend.
from . import _xla

_xla.configure()

# --- core (issue 2): solve and the sensitivity methods
from ._sensitivity.auto import Auto as Auto
from ._sensitivity.backsolve import BacksolveAdjoint as BacksolveAdjoint
from ._sensitivity.base import (
    AbstractAdjoint as AbstractAdjoint,
    AbstractSensitivity as AbstractSensitivity,
)
from ._sensitivity.discrete import Discrete as Discrete
from ._sensitivity.forward import Forward as Forward
from ._sensitivity.gauss import GaussAdjoint as GaussAdjoint
from ._sensitivity.interpolating import InterpolatingAdjoint as InterpolatingAdjoint
from ._sensitivity.quadrature import QuadratureAdjoint as QuadratureAdjoint
from ._solution import RESULTS as RESULTS, Solution as Solution
from ._solve import solve as solve

# --- linear systems (issue 3)
from ._linear_field import LinearField as LinearField
from ._sensitivity.krylov import KrylovExpm as KrylovExpm
from ._sensitivity.linear import LinearExpm as LinearExpm

# --- models, controls, training (issue 4)
from . import nn as nn
from ._batch import BatchedField as BatchedField, batched_field as batched_field
from ._control import Control as Control
from ._fit import (
    FitResult as FitResult,
    fit as fit,
    load_model as load_model,
    save_model as save_model,
)
from ._shard import sharded as sharded

# --- steady states, shooting, collocation (issue 5)
from . import collocation as collocation, shooting as shooting
from ._steady import (
    AbstractSteadyStateMethod as AbstractSteadyStateMethod,
    Integrate as Integrate,
    Newton as Newton,
    STEADY_RESULTS as STEADY_RESULTS,
    steady_state as steady_state,
    SteadyState as SteadyState,
    SteadyStateAdjoint as SteadyStateAdjoint,
)

# --- choosing and checking (issue 6)
from ._check import GradientCheck as GradientCheck, check_gradient as check_gradient
from ._explain import Explanation as Explanation, explain as explain


__version__ = "0.1.0"
