"""Data-parallel predictive coding on JAX's own sharding.

A batch of scikit-learn's digits is split over a 4-device mesh (`jax.sharding.Mesh` with a
`NamedSharding` over the batch axis) and the parameters are replicated. `pcgraph.grad`,
under `jax.jit`, then relaxes each device's examples on that device; the only communication
is the sum over the batch (the energy and the gradients). The script prints the per-device
batch shapes, checks the sharded gradients against the single-device ones, and trains for a
few epochs both ways from the same initialisation.

The four devices are CPU devices faked by XLA (set up below, before JAX starts); on a machine
with several GPUs, drop the two environment lines and the same code uses them.

Run:  pip install -e ".[examples]" && python examples/data_parallel.py [--epochs 3]
"""

import os

# JAX fixes its device count when it starts: fake 4 CPU devices before importing it.
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from _common import mlp_logits, mlp_loss, mlp_params  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import pcgraph  # noqa: E402

SIZES = (64, 64, 64, 10)
BATCH = 128  # 32 examples per device


def max_difference(a, b) -> float:
    return max(
        float(jnp.max(jnp.abs(u - v))) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="training epochs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    mesh = Mesh(np.array(jax.devices()), ("batch",))
    on_batch = NamedSharding(mesh, P("batch"))  # split axis 0 over the devices
    replicated = NamedSharding(mesh, P())  # every device holds all of it
    print(f"mesh: {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} devices")

    images, labels = load_digits(return_X_y=True)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(labels))
    x_all = jnp.asarray(images[order] / 16.0, jnp.float32)
    y_all = jnp.asarray(labels[order])
    split = len(labels) * 4 // 5
    x_train, y_train, x_test, y_test = x_all[:split], y_all[:split], x_all[split:], y_all[split:]

    params = mlp_params(jax.random.key(args.seed), SIZES)
    x, y = x_train[:BATCH], y_train[:BATCH]
    x_sharded, y_sharded = jax.device_put(x, on_batch), jax.device_put(y, on_batch)
    params_replicated = jax.device_put(params, replicated)
    print(f"global batch x{list(x_sharded.shape)}; per device:")
    for shard in x_sharded.addressable_shards:
        rows = shard.index[0]
        print(f"  {shard.device}: x{list(shard.data.shape)}, rows {rows.start}-{rows.stop - 1}")

    # The same gradient function on one device and on the mesh.
    for algorithm in (pcgraph.FPA(), pcgraph.IL(rtol=None)):
        grad_fn = jax.jit(pcgraph.grad(mlp_loss, algorithm=algorithm))
        single = grad_fn(params, x, y)
        sharded = grad_fn(params_replicated, x_sharded, y_sharded)
        specs = {str(leaf.sharding.spec) for leaf in jax.tree.leaves(sharded)}
        print(
            f"{type(algorithm).__name__:>3}: max |g(4 devices) - g(1 device)| = "
            f"{max_difference(sharded, single):.2e}; gradient shardings: {sorted(specs)}"
        )
    backprop = jax.grad(mlp_loss)(params, x, y)
    sharded_fpa = jax.jit(pcgraph.grad(mlp_loss))(params_replicated, x_sharded, y_sharded)
    print(f"FPA on 4 devices vs jax.grad on 1: {max_difference(sharded_fpa, backprop):.2e}")

    # Data-parallel training with FPA: the step is compiled once for the sharded layout.
    optimizer = optax.adam(3e-3)

    @jax.jit
    def train_step(params, opt_state, x, y):
        grads = pcgraph.grad(mlp_loss)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    trained = {}
    for where, put_params, put_batch in (
        ("1 device", lambda t: t, lambda t: t),
        (
            "4 devices",
            lambda t: jax.device_put(t, replicated),
            lambda t: jax.device_put(t, on_batch),
        ),
    ):
        p = put_params(params)
        opt_state = optimizer.init(p)
        for _ in range(args.epochs):
            for start in range(0, split - BATCH + 1, BATCH):
                batch = slice(start, start + BATCH)
                p, opt_state = train_step(
                    p, opt_state, put_batch(x_train[batch]), put_batch(y_train[batch])
                )
        accuracy = jnp.mean(jnp.argmax(mlp_logits(p, x_test), -1) == y_test)
        trained[where] = p
        print(f"trained on {where}: test accuracy {float(accuracy):.2%}")
    print(
        "max |params(4 devices) - params(1 device)| after training: "
        f"{max_difference(trained['4 devices'], trained['1 device']):.2e}"
    )


if __name__ == "__main__":
    main()
