"""What a predictive-coding algorithm spends on a graph, next to backprop (the accounting of
Zahid, Guo & Fountas 2023): sequential steps, local forward evaluations and local VJPs."""

import equinox as eqx

from ._algorithms import EPC, FPA, IL, IPC, ZIL, AbstractAlgorithm, Wavefront
from ._graph import Graph
from ._relax import RelaxationStats
from ._schedule import delays
from ._steppers import DiffraxStepper


class CostReport(eqx.Module):
    """The work of one gradient (or, for [`pcgraph.IPC`][], one training step), counted in
    local evaluations: one *forward* is one node's prediction `mu_i` (or the loss) computed
    from its inputs, one *VJP* is one node's local vector-Jacobian product. A whole pass over
    the graph is `len(graph.nodes) + 1` of each.

    **Attributes:**

    - `algorithm`: the algorithm's name and schedule.
    - `steps`: sequential steps: relaxation steps, each evaluating every node at once (for
        backprop: the levels of its backward pass, `graph.depth`; no PC algorithm can
        propagate the loss's error to every node in fewer). A step of [`pcgraph.EPC`][]
        backpropagates through the forward pass level by level, so it counts `graph.depth`
        (the levels of its backward sweep, as backprop's are counted).
    - `forward`, `vjps`: local forward evaluations and local VJPs.
    - `backprop_steps`, `backprop_forward`, `backprop_vjps`: the same for `jax.grad`, which
        evaluates every node once forward and once backward.
    - `relative_work`: `(forward + 2 vjps) / (backprop_forward + 2 backprop_vjps)`, counting a
        VJP as two forwards (a dense layer's VJP is two matrix products to its forward's one).
    """

    algorithm: str
    steps: int
    forward: int
    vjps: int
    backprop_steps: int
    backprop_forward: int
    backprop_vjps: int

    @property
    def relative_work(self) -> float:
        return (self.forward + 2 * self.vjps) / (self.backprop_forward + 2 * self.backprop_vjps)

    def __str__(self) -> str:
        rows = [
            ("", "steps", "forward", "VJPs", "work"),
            ("backprop", self.backprop_steps, self.backprop_forward, self.backprop_vjps, "1"),
            (
                self.algorithm,
                self.steps,
                self.forward,
                self.vjps,
                f"{self.relative_work:.3g}",
            ),
        ]
        widths = [max(len(str(row[c])) for row in rows) for c in range(len(rows[0]))]
        return "\n".join(
            "  ".join(
                str(cell).rjust(w) if c else str(cell).ljust(w)
                for c, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
            for row in rows
        )


def cost(
    graph: Graph, algorithm: AbstractAlgorithm, stats: RelaxationStats | None = None
) -> CostReport:
    """Count the local evaluations `algorithm` spends on `graph`, next to backprop's.

    **Arguments:**

    - `graph`: from [`pcgraph.trace`][].
    - `algorithm`: [`pcgraph.IL`][], [`pcgraph.EPC`][], [`pcgraph.FPA`][], [`pcgraph.ZIL`][]
        or [`pcgraph.IPC`][].
    - `stats`: the [`pcgraph.RelaxationStats`][] of a run (e.g. `pcgraph.relax(...).stats`),
        to count the steps it actually took; otherwise the algorithm's step budget is used
        (`max_steps`, or `graph.depth` where that is the default).

    **Returns:**

    A [`pcgraph.CostReport`][]; print it for a table.

    !!! example

        ```python
        graph = pcgraph.trace(loss, params, x, y)
        print(pcgraph.cost(graph, pcgraph.IL(max_steps=20)))
        ```
    """
    n = len(graph.nodes) + 1
    depth = graph.depth
    # Every algorithm starts from one feedforward pass.
    feedforward = n

    def steps_taken(budget: int) -> int:
        return budget if stats is None else int(stats.num_steps)

    stepper = getattr(algorithm, "stepper", None)
    if isinstance(stepper, DiffraxStepper):
        raise ValueError(
            "pcgraph.cost counts one force evaluation per relaxation step, but a "
            "DiffraxStepper's solver evaluates the force a solver-dependent number of times "
            "per step (and rejects steps). Count with pcgraph.Euler or pcgraph.OptaxStepper."
        )
    if isinstance(algorithm, FPA | ZIL) and isinstance(algorithm.schedule, Wavefront):
        # The feedforward pass, each level linearised once (under jit XLA may merge the two
        # forward passes), and every node's VJP once.
        name = f"{type(algorithm).__name__} (wavefront)"
        steps, forward, vjps = depth, feedforward + n, n
    elif isinstance(algorithm, IL):
        # One force (predictions and their VJP) before the first step and after each, and
        # one VJP of the predictions for the read-out.
        steps = steps_taken(algorithm.max_steps)
        name, forward, vjps = "IL", feedforward + (steps + 2) * n, (steps + 2) * n
    elif isinstance(algorithm, EPC):
        # Each force is a forward pass from the errors and its VJP, the same work as IL's
        # force, but swept level by level; then the values' forward pass and the read-out.
        relaxation_steps = steps_taken(algorithm.max_steps)
        steps = relaxation_steps * depth
        forward = feedforward + (relaxation_steps + 3) * n
        name, vjps = "EPC", (relaxation_steps + 2) * n
    elif isinstance(algorithm, FPA):
        # One linearisation, then one transposed VJP per force and one for the read-out.
        steps = steps_taken(depth if algorithm.max_steps is None else algorithm.max_steps)
        name, forward, vjps = "FPA", feedforward + n, (steps + 2) * n
    elif isinstance(algorithm, ZIL):
        # Every step re-evaluates the equalised graph (nodes and identity delays) and pulls
        # back twice: the force, and the timed parameter read.
        steps = steps_taken(depth if algorithm.max_steps is None else algorithm.max_steps)
        size = n + sum(delays(graph))
        name = "ZIL (relaxation)"
        forward, vjps = feedforward + (steps + 1) * size, 2 * (steps + 1) * size
    elif isinstance(algorithm, IPC):
        steps = steps_taken(algorithm.num_steps)
        name, forward, vjps = "IPC", feedforward + (steps + 1) * n, (steps + 1) * n
    else:
        raise TypeError(
            f"pcgraph.cost counts pcgraph.IL, EPC, FPA, ZIL and IPC; got "
            f"{type(algorithm).__name__}."
        )
    return CostReport(
        algorithm=name,
        steps=steps,
        forward=forward,
        vjps=vjps,
        backprop_steps=depth,
        backprop_forward=n,
        backprop_vjps=n,
    )
