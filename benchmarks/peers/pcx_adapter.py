"""pcx's run of the peer benchmark (pcx 0.6.3, in the `jax04` environment: pcx pins JAX < 0.5).

The task's network is written as a pcx model, the way pcx's own tutorials write a PCN: a
`pxc.EnergyModule` holding `pxnn.Linear` / `pxnn.Conv2d` layers and one `pxc.Vode` per value node
(default squared-error energy `1/2 ||h - u||^2`), whose `__call__` runs one example
(`x = vode(act(layer(x)))`); the last vode's `h` is frozen and set to the one-hot label, so its
energy is the shared output energy `1/2 ||y - f_L(z_{L-1})||^2`. Training follows pcx's
`train_on_batch` pattern: `pxf.jit` around the whole update; a `pxf.vmap`-ed forward pass under
`pxu.step(model, pxc.STATUS.INIT)` that initialises every vode at its feedforward value; an
unrolled Python loop of `INFERENCE_STEPS` steps of `pxf.value_and_grad` (on the non-frozen
`VodeParam`s) of the vmapped energy `jax.lax.psum(model.energy(), "batch")` followed by
`optim_h.step`, with `optim_h = pxu.Optim(lambda: optax.sgd(INFERENCE_STEP_SIZE))` (pcx 0.6
takes an optimiser factory) re-initialised each batch; then one `pxf.value_and_grad` on the
`pxnn.LayerParam`s and `optim_w.step` with the optimiser the benchmark passes. The logits are
pcx's own feedforward pass (the `STATUS.INIT` forward, returning the output vode's prediction
`u`).

Mapping onto the shared algorithm, and the deviations from pcx's examples:

- Energy: pcx's tutorials `psum` the per-example vode energies over the batch, so the energy is
  the batch sum and `sgd(0.1)` on the vodes is exactly each example's Euler step
  `z <- z - 0.1 dF/dz`. (pcx's older two-moons tutorial `pmean`s and multiplies the vode step by
  the batch size instead; same step.)
- Weights: pcx's AlexNet tutorial calls `optim_w.step(..., scale_by=1/batch)`, i.e. averages the
  weight gradient; here `scale_by` is left out so the optimiser gets dF/dtheta of the summed
  energy exactly as every other library (Adam's epsilon makes the scale matter where gradient
  entries are tiny, as in the residual network's deep layers).
- Layout: pcx's layers are equinox's (`Linear` weight `(out, in)`, `Conv2d` channel-first
  `OIHW` kernels on `CHW` examples, bias `(C, 1, 1)`): the shared weights are transposed on the
  way in and back in `weights()`. The CNN model transposes each `HWC` example to `CHW` on entry
  and its last feature map back to `HWC` before flattening, so the dense layer sees the shared
  flattening order. Convolutions use equinox's `padding="SAME"` (the second, stride 2, pads
  (0, 1) like `lax`'s 'SAME').
- Residual network: the muPC multipliers are plain constants in `__call__` and the skip
  connections add the previous vode's value, so pcx expresses it exactly with 31 hidden vodes
  (bias-free `pxnn.Linear`).
- Setup: as pcx's two-moons tutorial does, one `STATUS.INIT` forward pass at the training batch
  shape in the constructor creates the vodes' values, so `train_on_batch` compiles once (without
  it, it traces once with empty vodes and again with filled ones). `logits` runs on a copy of the
  model with its vodes cleared first, since the test set is one larger batch.
"""

import common
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pcx as px
import pcx.functional as pxf
import pcx.nn as pxnn
import pcx.predictive_coding as pxc
import pcx.utils as pxu

NAME = "pcx"


def unsupported(task):
    return None  # all three networks are pcx layers, vodes and plain JAX in between


# -- the networks as pcx models -------------------------------------------------------------------


class _PCN(pxc.EnergyModule):
    """One value node per hidden layer plus the clamped output vode; subclasses define `body`,
    the hidden layers of one example, returning the output layer's prediction."""

    def __init__(self, num_vodes):
        super().__init__()
        self.vodes = [pxc.Vode() for _ in range(num_vodes)]
        self.vodes[-1].h.frozen = True  # the label: not updated by inference

    def __call__(self, x, y):
        self.vodes[-1](self.body(x))
        if y is not None:
            self.vodes[-1].set("h", y)
        return self.vodes[-1].get("u")


class MLP(_PCN):
    def __init__(self, task):
        sizes = [task.in_size] + [task.width] * task.hidden_layers + [common.NUM_CLASSES]
        super().__init__(len(sizes) - 1)
        self.layers = [pxnn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])]

    def body(self, x):
        for layer, vode in zip(self.layers[:-1], self.vodes[:-1]):
            x = vode(jnp.tanh(layer(x)))
        return self.layers[-1](x)

    def load(self, w):
        for i, layer in enumerate(self.layers):
            layer.nn.weight.set(jnp.asarray(w[f"w{i}"].T))
            layer.nn.bias.set(jnp.asarray(w[f"b{i}"]))

    def dump(self):
        out = {}
        for i, layer in enumerate(self.layers):
            out[f"w{i}"] = np.asarray(layer.nn.weight.get()).T
            out[f"b{i}"] = np.asarray(layer.nn.bias.get())
        return out


class CNN(_PCN):
    def __init__(self, task):
        super().__init__(3)
        c_in, (c1, c2) = task.image_shape[2], task.channels
        self.convs = [
            pxnn.Conv2d(c_in, c1, kernel_size=3, stride=1, padding="SAME"),
            pxnn.Conv2d(c1, c2, kernel_size=3, stride=2, padding="SAME"),
        ]
        self.dense = pxnn.Linear(int(np.prod(task.conv_output_shape())), common.NUM_CLASSES)

    def body(self, x):
        x = jnp.transpose(x, (2, 0, 1))  # HWC -> CHW, equinox's layout
        for conv, vode in zip(self.convs, self.vodes[:-1]):
            x = vode(jnp.tanh(conv(x)))
        return self.dense(jnp.transpose(x, (1, 2, 0)).reshape(-1))  # flatten in HWC order

    def load(self, w):
        for i, conv in enumerate(self.convs):
            conv.nn.weight.set(jnp.asarray(w[f"conv{i}_w"].transpose(3, 2, 0, 1)))  # HWIO->OIHW
            conv.nn.bias.set(jnp.asarray(w[f"conv{i}_b"].reshape(-1, 1, 1)))
        self.dense.nn.weight.set(jnp.asarray(w["dense_w"].T))
        self.dense.nn.bias.set(jnp.asarray(w["dense_b"]))

    def dump(self):
        out = {}
        for i, conv in enumerate(self.convs):
            out[f"conv{i}_w"] = np.asarray(conv.nn.weight.get()).transpose(2, 3, 1, 0)
            out[f"conv{i}_b"] = np.asarray(conv.nn.bias.get()).reshape(-1)
        out["dense_w"] = np.asarray(self.dense.nn.weight.get()).T
        out["dense_b"] = np.asarray(self.dense.nn.bias.get())
        return out


class ResNet(_PCN):
    """muPC's residual MLP: vodes z_1..z_31, `z_1 = a_1 W_0 x`,
    `z_l = z_{l-1} + a_l W_{l-1} relu(z_{l-1})`, output `a_L W_31 relu(z_31)`."""

    def __init__(self, task):
        super().__init__(task.depth)
        sizes = [task.in_size] + [task.width] * (task.depth - 1) + [common.NUM_CLASSES]
        self.layers = [pxnn.Linear(a, b, bias=False) for a, b in zip(sizes[:-1], sizes[1:])]
        self.scalings = px.static(tuple(common.residual_scalings(task)))

    def body(self, x):
        a = self.scalings.get()
        z = self.vodes[0](a[0] * self.layers[0](x))
        for i in range(1, len(self.layers) - 1):
            z = self.vodes[i](z + a[i] * self.layers[i](jax.nn.relu(z)))
        return a[-1] * self.layers[-1](jax.nn.relu(z))

    def load(self, w):
        for i, layer in enumerate(self.layers):
            layer.nn.weight.set(jnp.asarray(w[f"w{i}"].T))

    def dump(self):
        return {f"w{i}": np.asarray(layer.nn.weight.get()).T for i, layer in enumerate(self.layers)}


MODELS = {"mlp": MLP, "cnn": CNN, "resnet": ResNet}


# -- pcx's training pattern -----------------------------------------------------------------------

_BATCHED = pxu.M(pxc.VodeParam | pxc.VodeParam.Cache).to((None, 0))  # vode state per example


@pxf.vmap(_BATCHED, in_axes=(0, 0), out_axes=0)
def forward(x, y, *, model):
    return model(x, y)


@pxf.vmap(_BATCHED, in_axes=(0,), out_axes=(None, 0), axis_name="batch")
def energy(x, *, model):
    prediction = model(x, None)
    return jax.lax.psum(model.energy(), "batch"), prediction  # summed over the batch


@pxf.jit(static_argnums=0)
def train_on_batch(steps, x, y, *, model, optim_w, optim_h):
    model.train()

    # Forward initialisation: every vode's h <- its prediction u; the output vode's h <- y.
    with pxu.step(model, pxc.STATUS.INIT, clear_params=pxc.VodeParam.Cache):
        forward(x, y, model=model)

    # Inference: Euler (plain SGD) steps on the free vodes, unrolled at trace time.
    optim_h.init(pxu.M_hasnot(pxc.VodeParam, frozen=True)(model))
    for _ in range(steps):
        with pxu.step(model, clear_params=pxc.VodeParam.Cache):
            _, grads = pxf.value_and_grad(
                pxu.M_hasnot(pxc.VodeParam, frozen=True).to([False, True]), has_aux=True
            )(energy)(x, model=model)
        optim_h.step(model, grads["model"])
    optim_h.clear()

    # Learning: one step of the weight optimiser on dF/dtheta at the relaxed vodes.
    with pxu.step(model, clear_params=pxc.VodeParam.Cache):
        _, grads = pxf.value_and_grad(pxu.M(pxnn.LayerParam).to([False, True]), has_aux=True)(
            energy
        )(x, model=model)
    optim_w.step(model, grads["model"])


@pxf.jit()
def predict(x, *, model):
    model.eval()
    # The vodes hold the training batch's values: clear them first, as the test batch is larger.
    with pxu.step(model, pxc.STATUS.INIT, clear_params=(pxc.VodeParam, pxc.VodeParam.Cache)):
        logits = forward(x, None, model=model)
    return logits


class Trainer:
    def __init__(self, task, weights, optimizer):
        px.RKG.seed(0)  # pcx's global key (only used to draw the initial weights, replaced below)
        self.model = MODELS[task.kind](task)
        self.model.load(weights)
        # pcx's tutorials create the vodes' values with one forward pass at the batch shape
        # before training; without it the first `train_on_batch` traces with empty vodes and
        # the second compiles again.
        shape = task.image_shape if task.kind == "cnn" else (task.in_size,)
        with pxu.step(self.model, pxc.STATUS.INIT, clear_params=pxc.VodeParam.Cache):
            forward(jnp.zeros((common.BATCH_SIZE, *shape)), None, model=self.model)
        self.optim_h = pxu.Optim(lambda: optax.sgd(common.INFERENCE_STEP_SIZE))
        self.optim_w = pxu.Optim(lambda: optimizer, pxu.M(pxnn.LayerParam)(self.model))

    def step(self, x, y):
        train_on_batch(
            common.INFERENCE_STEPS,
            jnp.asarray(x),
            jnp.asarray(y),
            model=self.model,
            optim_w=self.optim_w,
            optim_h=self.optim_h,
        )

    def sync(self):
        jax.block_until_ready(jax.tree_util.tree_leaves(pxu.M(pxnn.LayerParam)(self.model)))

    def logits(self, x):
        # On a copy of the model (pcx modules are pytrees), so that the vodes of the training
        # model keep the training batch's shape and `step` does not recompile afterwards.
        model = jax.tree_util.tree_map(lambda v: v, self.model)
        return np.asarray(predict(jnp.asarray(x), model=model))

    def weights(self):
        return self.model.dump()


def make_trainer(task, weights, optimizer):
    return Trainer(task, weights, optimizer)


if __name__ == "__main__":
    common.main(__import__(__name__))
