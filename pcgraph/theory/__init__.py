"""Theory tools: closed-form equilibria of deep linear networks and the inference landscape."""

from ._landscape import ActivityHessian as ActivityHessian, activity_hessian as activity_hessian
from ._linear import (
    LinearEquilibrium as LinearEquilibrium,
    linear_equilibrium as linear_equilibrium,
)

__all__ = ["ActivityHessian", "LinearEquilibrium", "activity_hessian", "linear_equilibrium"]
