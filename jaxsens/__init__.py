"""jaxsens: gradients of ODE solutions in JAX, with the method chosen and explained."""

from ._sensitivity.auto import Auto as Auto, AutoDecision as AutoDecision
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

from ._linear_field import LinearField as LinearField
from ._sensitivity.krylov import KrylovExpm as KrylovExpm
from ._sensitivity.linear import LinearExpm as LinearExpm

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

from . import collocation as collocation, shooting as shooting
from ._steady import steady_state as steady_state, SteadyState as SteadyState
from ._steady_adjoint import SteadyStateAdjoint as SteadyStateAdjoint
from ._steady_methods import (
    AbstractSteadyStateMethod as AbstractSteadyStateMethod,
    Integrate as Integrate,
    Newton as Newton,
)

from ._check import GradientCheck as GradientCheck, check_gradient as check_gradient
from ._explain import Explanation as Explanation, explain as explain
from ._xla import compile_small_loops_whole as compile_small_loops_whole


__version__ = "0.1.0"
