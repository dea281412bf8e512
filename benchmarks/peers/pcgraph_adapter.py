"""pcgraph's run of the peer benchmark: the task's plain-JAX network with its hidden outputs
marked as value nodes, trained by `pcgraph.train_step` with inference learning (IL).

The step runs with `throw=False`: no other library checks its relaxation, and pcgraph's check
of a top-level call (`throw=True`, the default) checks the inputs and waits for each step's
result before returning, which made an MLP step 1.5-1.7x longer on a CPU. It does not donate
its buffers: on this benchmark's CPU runs donation saved no time on the MLP and the CNN and made
the residual network's step up to 1.8x slower (docs/peers.md). `time_steps.py` times the
defaults too (`pcgraph (defaults)`: `throw=True`)."""

import common

import pcgraph

NAME = "pcgraph"


def unsupported(task):
    return None  # pcgraph traces any JAX network


def make_loss(task):
    """The task's network with its hidden outputs marked; the clamped output's energy is the
    loss, so pcgraph's energy is exactly the shared one."""
    layers = common.layers(task)

    def loss(params, x, y):
        z = x
        for i, layer in enumerate(layers[:-1], start=1):
            z = pcgraph.node(layer(params, z), name=f"z{i}")
        return common.output_energy(layers[-1](params, z), y)

    return loss


class Trainer(common.DictTrainer):
    def __init__(self, task, weights, optimizer, *, defaults=False):
        super().__init__(task, weights, optimizer)
        algorithm = pcgraph.IL(
            stepper=pcgraph.Euler(common.INFERENCE_STEP_SIZE),
            max_steps=common.INFERENCE_STEPS,
            throw=defaults,
        )
        self._step = pcgraph.train_step(make_loss(task), optimizer, algorithm=algorithm)


def make_trainer(task, weights, optimizer, *, defaults=False):
    """The benchmark's trainer; `defaults=True`: `train_step`'s defaults (`throw=True`)."""
    return Trainer(task, weights, optimizer, defaults=defaults)


if __name__ == "__main__":
    common.main(__import__(__name__))
