"""pcgraph: predictive coding as a drop-in replacement for `jax.grad`."""

from . import datasets as datasets, nn as nn, theory as theory
from ._algorithms import (
    EPC as EPC,
    FPA as FPA,
    IL as IL,
    IPC as IPC,
    ZIL as ZIL,
    AbstractAlgorithm as AbstractAlgorithm,
    AbstractInit as AbstractInit,
    AbstractSchedule as AbstractSchedule,
    FeedforwardInit as FeedforwardInit,
    RandomInit as RandomInit,
    Relaxation as Relaxation,
    Wavefront as Wavefront,
)
from ._check import (
    GradReport as GradReport,
    LeafComparison as LeafComparison,
    check_grad as check_grad,
)
from ._cost import CostReport as CostReport, cost as cost
from ._ebm import AbstractEnergy as AbstractEnergy, HopfieldEnergy as HopfieldEnergy
from ._eqprop import (
    CHL as CHL,
    ContrastiveStats as ContrastiveStats,
    EnergySolution as EnergySolution,
    EqProp as EqProp,
    ebm_grad as ebm_grad,
    ebm_relax as ebm_relax,
)
from ._filter import filter_grad as filter_grad, filter_value_and_grad as filter_value_and_grad
from ._grad import (
    NonFiniteError as NonFiniteError,
    Solution as Solution,
    TrainInfo as TrainInfo,
    grad as grad,
    relax as relax,
    train_step as train_step,
    value_and_grad as value_and_grad,
)
from ._graph import Graph as Graph, NodeInfo as NodeInfo
from ._latents import Observed as Observed
from ._node import node as node
from ._node_energy import (
    AbstractNodeEnergy as AbstractNodeEnergy,
    Bernoulli as Bernoulli,
    Categorical as Categorical,
    Gaussian as Gaussian,
)
from ._placement import (
    AbstractPlacement as AbstractPlacement,
    Layers as Layers,
    Marks as Marks,
    Primitives as Primitives,
)
from ._relax import (
    RESULTS as RESULTS,
    NodeTrajectory as NodeTrajectory,
    RelaxationError as RelaxationError,
    RelaxationStats as RelaxationStats,
    SaveAt as SaveAt,
)
from ._steppers import (
    AbstractStepper as AbstractStepper,
    DiffraxStepper as DiffraxStepper,
    Euler as Euler,
    Langevin as Langevin,
    Momentum as Momentum,
    OptaxStepper as OptaxStepper,
)
from ._trace import trace as trace

__version__ = "0.1.0"

__all__ = [
    "AbstractNodeEnergy",
    "AbstractInit",
    "AbstractSchedule",
    "FeedforwardInit",
    "RandomInit",
    "Relaxation",
    "Wavefront",
    "Bernoulli",
    "Categorical",
    "Gaussian",
    "NodeTrajectory",
    "Observed",
    "SaveAt",
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
    "EPC",
    "IPC",
    "ZIL",
    "TrainInfo",
    "CostReport",
    "cost",
    "train_step",
    "RESULTS",
    "AbstractAlgorithm",
    "AbstractPlacement",
    "Layers",
    "Marks",
    "Primitives",
    "AbstractStepper",
    "DiffraxStepper",
    "Euler",
    "Langevin",
    "Momentum",
    "GradReport",
    "Graph",
    "LeafComparison",
    "NonFiniteError",
    "NodeInfo",
    "OptaxStepper",
    "RelaxationError",
    "RelaxationStats",
    "Solution",
    "check_grad",
    "filter_grad",
    "filter_value_and_grad",
    "grad",
    "node",
    "relax",
    "trace",
    "value_and_grad",
]
