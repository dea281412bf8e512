"""Predictive-coding algorithms, one per file over their shared base: how the relaxation runs and
where the parameters read the errors."""

from ._base import (
    AbstractAlgorithm as AbstractAlgorithm,
    Equilibrium as Equilibrium,
    Options as Options,
    Start as Start,
)
from ._epc import EPC as EPC
from ._fpa import FPA as FPA
from ._il import IL as IL
from ._ipc import IPC as IPC
from ._schedules import (
    AbstractSchedule as AbstractSchedule,
    Relaxation as Relaxation,
    Wavefront as Wavefront,
)
from ._zil import (
    ZIL as ZIL,
    AbstractInit as AbstractInit,
    FeedforwardInit as FeedforwardInit,
    RandomInit as RandomInit,
)
