"""FabricPC's run of the peer benchmark: each task built as a FabricPC graph and trained by the
library's own jitted train step (the one `fabricpc.train` runs), with its "pc" algorithm.

How the shared algorithm maps onto FabricPC 0.6.0:

- The network is a `fabricpc.graph_assembly.graph` of nodes joined by `Edge`s into their "in"
  slots. The input is a parameter-free `IdentityNode` named "x" (a source node, clamped to the
  batch), every hidden layer is one value node, and the output node "y" is clamped to the one-hot
  label (`TaskMap(x=..., y=...)`). Every node keeps FabricPC's default `GaussianEnergy()`
  (precision 1: `1/2 ||z - mu||^2` per example), so the graph's energy is the shared one.
- MLP: `Linear` nodes (tanh hidden, identity output, with biases). CNN: two `ConvNode`s (3x3,
  'SAME', strides 1 and 2, tanh) and a `Linear(flatten_input=True)` head, which flattens the
  NHWC feature map in (H, W, C) order as `common.py` does.
- Residual network: FabricPC's `Linear`/`LinearResidual` nodes apply the activation after the
  matrix product, and its muPC option (`MuPCConfig`) derives other multipliers (an activation
  gain of sqrt(2) for ReLU, a depth that counts merge nodes rather than weight matrices), so
  neither expresses `z + a relu(z) W`. The adapter therefore defines one custom node through
  FabricPC's documented extension point (`NodeBase` with `get_slots`, `initialize_params` and
  `predict`; FabricPC's own jpc comparison example does the same): `(a * act(x)) @ W`, plus the
  input `x` itself for the residual blocks, bias-free, with the multipliers of
  `common.residual_scalings` fixed in the node's configuration. No `MuPCConfig` is passed, so
  FabricPC applies no scaling of its own and the energy is exactly the shared one.
- Inference: `InferenceSGD(eta_infer=0.1, infer_steps=20)`, FabricPC's plain gradient descent
  on the latents inside a `lax.fori_loop`, from `FeedforwardStateInit` (the graph's default:
  hidden latents start at the feedforward pass). FabricPC differentiates the batch-summed
  energy with respect to the latents, so each example takes its own step of 0.1 * dF/dz.
- Learning: FabricPC's local weight gradients at the relaxed latents (each node differentiates
  its own batch-summed energy), which `pc_weight_gradients` divides by the number of clamped
  predictions (`grad_denominator`: the batch size here) before the optax update. The adapter
  chains `optax.scale(common.BATCH_SIZE)` in front of the optimizer passed in, so the optimizer
  receives dF/dtheta of the batch-summed energy, as the shared algorithm states. This is not
  cosmetic: Adam is scale-invariant only for gradients well above its epsilon (1e-8), and the
  deep layers of the residual network have gradients of that size after 20 inference steps;
  with FabricPC's mean gradient (`UNDO_BATCH_MEAN = False`) the residual network's accuracy
  differs from pcgraph's, with the sum it is identical. The scaling runs inside FabricPC's
  jitted step, as part of the optimizer's update.
- `Trainer.step` calls the step FabricPC's own training loop `fabricpc.train` dispatches per
  batch: `fabricpc.training.trainer._make_step(structure, optimizer, algorithm="pc",
  with_state=False, donate=True)`, one `jax.jit` of the whole update (state initialisation,
  the inference loop, the weight gradients, the optax update) that donates the parameter and
  optimizer buffers, compiled once for the fixed batch shape. `train` itself runs whole epochs
  over a loader, so the adapter calls its step directly. The public `make_train_step` builds the
  same function with `with_state=True, donate=False` (it also returns the relaxed `GraphState`
  and keeps its inputs alive); on a shared 2-core CPU that variant took about 1.2x as long per
  step (MLP and residual network; both the state output and the missing donation cost time).
  The PRNG key the step takes only seeds FabricPC's latent initialisation, which the
  feedforward pass and the clamps overwrite, so one fixed key is passed.
- `Trainer.logits` runs `common.forward` on the weights (the same feedforward network, as the
  pcgraph adapter does), so test accuracy and the memory of the evaluation pass are measured the
  same way for every library.
"""

import math

import common
import jax
import jax.numpy as jnp
import numpy as np
import optax
from fabricpc.core.activations import (
    IdentityActivation,
    ReLUActivation,
    TanhActivation,
)
from fabricpc.core.energy import GaussianEnergy
from fabricpc.core.inference import InferenceSGD
from fabricpc.core.initializers import NormalInitializer, initialize
from fabricpc.core.topology import Edge
from fabricpc.core.types import GraphParams, NodeParams
from fabricpc.graph_assembly import TaskMap, graph
from fabricpc.graph_initialization import FeedforwardStateInit, initialize_params
from fabricpc.nodes import ConvNode, IdentityNode, Linear, NodeBase, SlotSpec
from fabricpc.training.trainer import _make_step

NAME = "fabricpc"

# FabricPC hands the optimizer the batch-mean gradient; the adapter multiplies it by the batch
# size (every batch of the benchmark has common.BATCH_SIZE examples) first, so the optimizer sees
# dF/dtheta of the batch-summed energy (see the docstring). With False the optimizer gets
# FabricPC's mean as it is.
UNDO_BATCH_MEAN = True


def unsupported(task):
    return None  # MLP and CNN from built-in nodes, the residual network from a custom node


class ScaledPreactivationDense(NodeBase):
    """A FabricPC node predicting `(scale * act(x)) @ W`, plus `x` when `residual` is set:
    one input edge, no bias, the activation applied to the input (jpc-style pre-activation)."""

    def __init__(self, shape, name, scale, residual=False, activation=None):
        super().__init__(
            shape=shape,
            name=name,
            activation=IdentityActivation() if activation is None else activation,
            energy=GaussianEnergy(),
            latent_init=NormalInitializer(),
            weight_init=NormalInitializer(std=1.0),
            scale=float(scale),
            residual=bool(residual),
        )

    @staticmethod
    def get_slots():
        return {"in": SlotSpec(name="in", is_multi_input=False)}

    @staticmethod
    def initialize_params(key, node_shape, input_shapes, weight_init, config):
        ((edge_key, in_shape),) = input_shapes.items()
        shape = (in_shape[-1], node_shape[-1])
        return NodeParams(weights={edge_key: initialize(key, shape, weight_init)}, biases={})

    @staticmethod
    def predict(params, inputs, state, node_info):
        ((edge_key, x),) = inputs.items()
        config = node_info.node_config
        activation = node_info.activation
        activated = type(activation).forward(x, activation.config)
        z_mu = (config["scale"] * activated) @ params.weights[edge_key]
        return (x + z_mu if config["residual"] else z_mu), None


def build_graph(task):
    """The task as a FabricPC graph, and where each canonical weight lives in its parameters:
    `{canonical name: (node, "weights" or "biases", key)}`."""
    if task.kind == "cnn":
        x = IdentityNode(shape=task.image_shape, name="x")
    else:
        x = IdentityNode(shape=(task.in_size,), name="x")
    nodes, edges, where = [x], [], {}

    def connect(source, target, weight, bias=None):
        nodes.append(target)
        edges.append(Edge(source=source, target=target.slot("in")))
        where[weight] = (target.name, "weights", f"{source.name}->{target.name}:in")
        if bias is not None:
            where[bias] = (target.name, "biases", "b")
        return target

    z = x
    if task.kind == "mlp":
        for i in range(task.hidden_layers):
            hidden = Linear(shape=(task.width,), name=f"h{i + 1}", activation=TanhActivation())
            z = connect(z, hidden, f"w{i}", f"b{i}")
        last = task.hidden_layers
        y = connect(z, Linear(shape=(common.NUM_CLASSES,), name="y"), f"w{last}", f"b{last}")
    elif task.kind == "cnn":
        height, width, _ = task.image_shape
        shapes = [(height, width, task.channels[0]), task.conv_output_shape()]
        for i, (shape, stride) in enumerate(zip(shapes, (1, 2))):
            conv = ConvNode(
                shape=shape,
                name=f"c{i + 1}",
                kernel_size=(3, 3),
                stride=(stride, stride),
                padding="SAME",
                activation=TanhActivation(),
            )
            z = connect(z, conv, f"conv{i}_w", f"conv{i}_b")
        head = Linear(shape=(common.NUM_CLASSES,), name="y", flatten_input=True)
        y = connect(z, head, "dense_w", "dense_b")
    else:
        scalings = common.residual_scalings(task)
        last = task.depth - 1
        z = connect(z, ScaledPreactivationDense((task.width,), "h1", scalings[0]), "w0")
        for i in range(1, last):
            block = ScaledPreactivationDense(
                (task.width,), f"h{i + 1}", scalings[i], residual=True, activation=ReLUActivation()
            )
            z = connect(z, block, f"w{i}")
        readout = ScaledPreactivationDense(
            (common.NUM_CLASSES,), "y", scalings[last], activation=ReLUActivation()
        )
        y = connect(z, readout, f"w{last}")
    structure = graph(
        nodes=nodes,
        edges=edges,
        task_map=TaskMap(x=x, y=y),
        inference=InferenceSGD(
            eta_infer=common.INFERENCE_STEP_SIZE, infer_steps=common.INFERENCE_STEPS
        ),
        graph_state_initializer=FeedforwardStateInit(),
    )
    return structure, where


def to_graph_params(structure, where, weights):
    """FabricPC's parameters of `structure` holding the canonical `weights` (biases take
    FabricPC's broadcasting shape `(1, ..., 1, C)`)."""
    template = initialize_params(structure, jax.random.PRNGKey(0))
    nodes = {
        name: NodeParams(dict(p.weights), dict(p.biases)) for name, p in template.nodes.items()
    }
    for canonical, (node, field, key) in where.items():
        slot = getattr(nodes[node], field)
        value = np.asarray(weights[canonical])
        if math.prod(slot[key].shape) != value.size:
            raise ValueError(f"{canonical}: shape {value.shape} does not fit {slot[key].shape}")
        slot[key] = jnp.array(value.reshape(slot[key].shape))  # a copy: the step donates it
    return GraphParams(nodes=nodes)


class Trainer:
    def __init__(self, task, weights, optimizer):
        self.structure, self._where = build_graph(task)
        self._shapes = {k: np.shape(v) for k, v in weights.items()}
        self.params = to_graph_params(self.structure, self._where, weights)
        if UNDO_BATCH_MEAN:
            optimizer = optax.chain(optax.scale(common.BATCH_SIZE), optimizer)
        self.opt_state = optimizer.init(self.params)
        # FabricPC's training step as `fabricpc.train` builds it (see the module docstring).
        self._step = _make_step(
            self.structure, optimizer, algorithm="pc", with_state=False, donate=True
        )
        self._key = jax.random.PRNGKey(0)
        self._logits = jax.jit(lambda params, x: common.forward(task, self._canonical(params), x))

    def _canonical(self, params):
        return {
            name: getattr(params.nodes[node], field)[key].reshape(self._shapes[name])
            for name, (node, field, key) in self._where.items()
        }

    def step(self, x, y):
        self.params, self.opt_state, _ = self._step(
            self.params, self.opt_state, {"x": x, "y": y}, self._key
        )

    def sync(self):
        jax.block_until_ready(self.params)

    def logits(self, x):
        return np.asarray(self._logits(self.params, x))

    def weights(self):
        return {k: np.asarray(v) for k, v in self._canonical(self.params).items()}


def make_trainer(task, weights, optimizer):
    return Trainer(task, weights, optimizer)


if __name__ == "__main__":
    common.main(__import__(__name__))
