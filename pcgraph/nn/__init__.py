"""Model constructors whose hidden states are predictive-coding value nodes."""

from ._residual import ResidualMLP as ResidualMLP

__all__ = ["ResidualMLP"]
