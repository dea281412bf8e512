"""jpc's run of the peer benchmark (jpc: Innocenti et al., the muPC authors' JAX library).

A jpc network is a list of callable equinox layers, one per PC layer, each applied to one
example (jpc vmaps it over the batch); every layer's output but the last is a value node. The
shared tasks map onto it as follows:

- `mlp`: `[Sequential([Linear, Lambda(tanh)])] * 3 + [Linear]`, the layer list jpc's
  discriminative-PC example builds by hand. (`jpc.make_mlp` puts the activation *before* the
  linear map, so its value nodes would be pre-activations: another energy than the shared one.)
- `cnn`: `Sequential([Lambda(HWC -> CHW), Conv2d(stride 1, 'SAME'), Lambda(tanh)])`,
  `Sequential([Conv2d(stride 2, 'SAME'), Lambda(tanh)])`, `Sequential([Lambda(flatten in
  (H, W, C) order), Linear])`. The value nodes are channel-first (equinox's layout); the
  energy, a sum over all elements, does not depend on the layout.
- `resnet`: jpc's own muPC network, `jpc.make_mlp(..., act_fn="relu", use_bias=False,
  param_type="mupc")` with `jpc.make_skip_model(depth)`: layer 0 `a_1 W_0 x`, layers
  1..L-2 `z + a_l W_l relu(z)` (identity skips), layer L-1 `a_L W_{L-1} relu(z)`, with jpc's
  multipliers `1/sqrt(D)`, `1/sqrt(N L)`, `1/N` (N = width, L = 32 weight matrices). This is
  exactly `common.layers`' residual network.

Weights come from `common.init_weights`: dense `(fan_in, fan_out)` is transposed to equinox's
`(out, in)`, conv kernels HWIO to OIHW and conv biases get equinox's `(C, 1, 1)` shape.

One training update is one call of `jpc.make_pc_step` (jpc's high-level step, itself one
`equinox.filter_jit`: feedforward initialisation, inference, weight gradient and the optax
update in one compiled function). Inference is jpc's diffrax ODE solve of `dz/dt = -dF/dz`,
run here with `diffrax.Euler()` and `diffrax.ConstantStepSize()`.

Deviations from the shared algorithm, all of scale only:

- jpc's energy (`jpc.pc_energy_fn`) is the shared one divided by the batch size B. Its
  activity gradient is therefore `dF_example/dz / B`, so the Euler step is `dt = 0.1 * B`
  (t1 = 20 * dt, hence exactly 20 steps) to give each example the shared step `0.1 dF/dz`.
- Its weight gradient is the batch mean, 1/B of the shared (summed) one. The adapter scales it
  by B before the benchmark's optimiser (`optax.chain(optax.scale(B), optimizer)`), so the
  update is the shared one. Adam alone would not make up for the factor: its epsilon (1e-8) is
  comparable to B-times-smaller gradient entries in the residual network's layers at the edge
  of what 20 inference steps reach, where unscaled Adam steps come out smaller.
- In the residual network jpc subtracts the skip separately, `(z_l - a_l W relu(z_{l-1})) -
  z_{l-1}`, so at the feedforward initialisation its hidden errors are float32 rounding residue
  (~1e-7 per element) instead of exactly zero: layers that 20 inference steps never reach get
  updates of that (negligible) size instead of none.
- Besides the update, `make_pc_step` evaluates the output loss and layer energies (returned,
  unused here), and its diffrax solve checks a steady-state event after every step (it stops
  when the activities' RMS norm falls below ~1e-3, which does not happen in these tasks).
"""

import math

import common
import jax
import jax.numpy as jnp
import numpy as np
import optax

NAME = "jpc"

try:
    import diffrax
    import equinox as eqx
    import jpc
except ImportError:
    jpc = None

NOT_INSTALLED = (
    "jpc is not installed (it is not on PyPI: pip install a local copy into the jax04 environment)"
)


def unsupported(task):
    if jpc is None:
        return NOT_INSTALLED
    return None  # a jpc network is any list of callable layers


# -- canonical weights <-> the equinox modules ----------------------------------------------------


def _dense(w):
    return w.T  # (fan_in, fan_out) <-> equinox Linear's (out, in), both directions


def _kernel_to_eqx(w):
    return w.transpose(3, 2, 0, 1)  # HWIO -> OIHW


def _kernel_from_eqx(w):
    return w.transpose(2, 3, 1, 0)  # OIHW -> HWIO


def _conv_bias_to_eqx(b):
    return b.reshape(-1, 1, 1)


def _conv_bias_from_eqx(b):
    return b.reshape(-1)


def _identity(a):
    return a


def _hwc_to_chw(x):
    return jnp.transpose(x, (2, 0, 1))


def _flatten_hwc(z):
    return jnp.transpose(z, (1, 2, 0)).reshape(-1)  # CHW value node, flattened in (H, W, C) order


def build_model(task, weights):
    """The jpc network (list of layers), its skip model, its param_type and the canonical
    weights' places in it: `{name: (where, to_lib, from_lib)}`."""
    key = jax.random.PRNGKey(0)  # every weight is overwritten by the shared initial weights
    nn = eqx.nn
    places = {}
    skip_model = None
    param_type = "sp"
    if task.kind == "mlp":
        sizes = [task.in_size] + [task.width] * task.hidden_layers + [common.NUM_CLASSES]
        model = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            linear = nn.Linear(fan_in, fan_out, key=key)
            if i < task.hidden_layers:
                model.append(nn.Sequential([linear, nn.Lambda(jnp.tanh)]))
                places[f"w{i}"] = (lambda m, i=i: m[i][0].weight, _dense, _dense)
                places[f"b{i}"] = (lambda m, i=i: m[i][0].bias, _identity, _identity)
            else:
                model.append(linear)
                places[f"w{i}"] = (lambda m, i=i: m[i].weight, _dense, _dense)
                places[f"b{i}"] = (lambda m, i=i: m[i].bias, _identity, _identity)
    elif task.kind == "cnn":
        in_channels = task.image_shape[2]
        c1, c2 = task.channels
        conv0 = nn.Conv2d(in_channels, c1, 3, stride=1, padding="SAME", key=key)
        conv1 = nn.Conv2d(c1, c2, 3, stride=2, padding="SAME", key=key)
        head = nn.Linear(math.prod(task.conv_output_shape()), common.NUM_CLASSES, key=key)
        model = [
            nn.Sequential([nn.Lambda(_hwc_to_chw), conv0, nn.Lambda(jnp.tanh)]),
            nn.Sequential([conv1, nn.Lambda(jnp.tanh)]),
            nn.Sequential([nn.Lambda(_flatten_hwc), head]),
        ]
        for i, index in ((0, 1), (1, 0)):
            conv = lambda m, i=i, index=index: m[i][index]  # noqa: E731
            places[f"conv{i}_w"] = (
                lambda m, conv=conv: conv(m).weight,
                _kernel_to_eqx,
                _kernel_from_eqx,
            )
            places[f"conv{i}_b"] = (
                lambda m, conv=conv: conv(m).bias,
                _conv_bias_to_eqx,
                _conv_bias_from_eqx,
            )
        places["dense_w"] = (lambda m: m[2][1].weight, _dense, _dense)
        places["dense_b"] = (lambda m: m[2][1].bias, _identity, _identity)
    else:
        model = jpc.make_mlp(
            key,
            input_dim=task.in_size,
            width=task.width,
            depth=task.depth,
            output_dim=common.NUM_CLASSES,
            act_fn="relu",
            use_bias=False,
            param_type="mupc",
        )
        skip_model = jpc.make_skip_model(task.depth)
        param_type = "mupc"
        for i in range(task.depth):
            places[f"w{i}"] = (lambda m, i=i: m[i][1].weight, _dense, _dense)
    for name, (where, to_lib, _) in places.items():
        model = eqx.tree_at(where, model, jnp.asarray(to_lib(weights[name])))
    return model, skip_model, param_type, places


class Trainer:
    def __init__(self, task, weights, optimizer):
        self.task = task
        self.model, self.skip_model, self.param_type, self.places = build_model(task, weights)
        # jpc averages its gradient over the batch; the shared update uses the sum
        self.optimizer = optax.chain(optax.scale(common.BATCH_SIZE), optimizer)
        # jpc's examples initialise the optimiser on (array leaves of the model, skip model)
        self.opt_state = self.optimizer.init(
            (eqx.filter(self.model, eqx.is_array), self.skip_model)
        )
        self.solver = diffrax.Euler()
        self.controller = diffrax.ConstantStepSize()

    def step(self, x, y):
        # jpc's energy is averaged over the batch: scale dt so each example steps 0.1 dF/dz
        dt = common.INFERENCE_STEP_SIZE * x.shape[0]
        result = jpc.make_pc_step(
            model=self.model,
            optim=self.optimizer,
            opt_state=self.opt_state,
            output=y,
            input=x,
            param_type=self.param_type,
            ode_solver=self.solver,
            max_t1=common.INFERENCE_STEPS * dt,
            dt=dt,
            stepsize_controller=self.controller,
            skip_model=self.skip_model,
        )
        self.model, self.skip_model = result["model"], result["skip_model"]
        self.opt_state = result["opt_state"]

    def sync(self):
        jax.block_until_ready(eqx.filter(self.model, eqx.is_array))

    def logits(self, x):
        activities = jpc.init_activities_with_ffwd(
            model=self.model, input=x, skip_model=self.skip_model, param_type=self.param_type
        )
        return np.asarray(activities[-1])

    def weights(self):
        return {
            name: np.asarray(from_lib(where(self.model)))
            for name, (where, _, from_lib) in self.places.items()
        }


def make_trainer(task, weights, optimizer):
    return Trainer(task, weights, optimizer)


if __name__ == "__main__":
    common.main(__import__(__name__))
