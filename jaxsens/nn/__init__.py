"""Neural vector fields and models as Equinox modules."""

from ._fields import (
    UDE as UDE,
    ControlledField as ControlledField,
    MLPField as MLPField,
)
from ._model import NeuralODE as NeuralODE
