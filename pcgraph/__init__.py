"""pcgraph: predictive coding as a drop-in replacement for `jax.grad`."""

from ._algorithms import FPA as FPA, IL as IL, AbstractAlgorithm as AbstractAlgorithm
from ._check import (
    GradReport as GradReport,
    LeafComparison as LeafComparison,
    check_grad as check_grad,
)
from ._ebm import AbstractEnergy as AbstractEnergy, HopfieldEnergy as HopfieldEnergy
from ._eqprop import (
    CHL as CHL,
    ContrastiveStats as ContrastiveStats,
    EnergySolution as EnergySolution,
    EqProp as EqProp,
    ebm_grad as ebm_grad,
    ebm_relax as ebm_relax,
)
from ._grad import (
    Solution as Solution,
    grad as grad,
    relax as relax,
    value_and_grad as value_and_grad,
)
from ._graph import Graph as Graph, NodeInfo as NodeInfo, trace as trace
from ._node import node as node
from ._relax import (
    RESULTS as RESULTS,
    RelaxationError as RelaxationError,
    RelaxationStats as RelaxationStats,
)
from ._steppers import (
    AbstractStepper as AbstractStepper,
    DiffraxStepper as DiffraxStepper,
    Euler as Euler,
    OptaxStepper as OptaxStepper,
)

__version__ = "0.1.0"

__all__ = [
    "CHL",
    "AbstractEnergy",
    "ContrastiveStats",
    "EnergySolution",
    "EqProp",
    "HopfieldEnergy",
    "ebm_grad",
    "ebm_relax",
    "FPA",
    "IL",
    "RESULTS",
    "AbstractAlgorithm",
    "AbstractStepper",
    "DiffraxStepper",
    "Euler",
    "GradReport",
    "Graph",
    "LeafComparison",
    "NodeInfo",
    "OptaxStepper",
    "RelaxationError",
    "RelaxationStats",
    "Solution",
    "check_grad",
    "grad",
    "node",
    "relax",
    "trace",
    "value_and_grad",
]
