"""Model constructors whose hidden states are predictive-coding value nodes."""

from ._bidirectional import Bidirectional as Bidirectional
from ._residual import (
    AbstractParameterisation as AbstractParameterisation,
    MuPC as MuPC,
    NeuralTangent as NeuralTangent,
    ResidualMLP as ResidualMLP,
    Standard as Standard,
)

__all__ = [
    "AbstractParameterisation",
    "Bidirectional",
    "MuPC",
    "NeuralTangent",
    "ResidualMLP",
    "Standard",
]
