"""Data-parallel predictive coding over several processes, with JAX's multi-process runtime.

Beyond one host, JAX runs one process per host, joined by `jax.distributed.initialize`; each
process drives its own devices, and a `jax.sharding.Mesh` over the global device list spans
them all. pcgraph needs nothing of its own there either (see `examples/data_parallel.py` for
one host): every process runs this same script, loads only its own rows of each global batch,
makes the global array from them with `jax.make_array_from_process_local_data`, and calls the
same `pcgraph.train_step` and `pcgraph.relax`. The relaxation stays element-wise in the batch,
so each process relaxes its own examples; the sums over the batch (the energy, the gradients)
are XLA's collectives across the processes.

The script trains a tanh MLP on scikit-learn's digits with IL (Whittington & Bogacz 2017;
`--algorithm fpa` for FPA) for 20 Adam steps on global batches of 64, evaluates it on held-out
digits, and relaxes one batch with `pcgraph.relax`. With `--out DIR`, process 0 alone writes
the checkpoint (`DIR/params.eqx`, with `equinox.tree_serialise_leaves`) and `DIR/results.npz`:
the trained parameters, the losses, and the relaxation's gradients and node errors (gathered
from every process). Two processes compute what one process with the same two devices
computes, to the bit; against one device, the batch sums' other order of addition leaves
6e-8 in FPA's parameters after the 20 steps and 5e-6 in IL's, whose training amplifies
round-off more (`tests/test_multiprocess.py` checks both).

On CPUs the processes talk through gloo (`jax_cpu_collectives_implementation`); on GPUs or
TPUs JAX uses the accelerators' own collectives, and the script is unchanged.

Run:  python examples/multi_process.py                     # one process: the reference
      python examples/multi_process.py --num-processes 2   # two processes on this machine
      python examples/multi_process.py --num-processes N --process-id I --coordinator HOST:PORT
                                                           # process I of N, one per host
"""

import argparse
import os
import pathlib
import socket
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import mlp_logits, mlp_loss, mlp_params
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from sklearn.datasets import load_digits

import pcgraph

SIZES = (64, 64, 64, 10)
GLOBAL_BATCH = 64  # split evenly over the processes
STEPS = 20
TEST_EXAMPLES = 512
LEARNING_RATE = 3e-3
ALGORITHMS = {"il": pcgraph.IL(max_steps=20), "fpa": pcgraph.FPA()}


@jax.jit
def accuracy(params, x, y):
    return jnp.mean(jnp.argmax(mlp_logits(params, x), -1) == y)


def local_rows(sharding, global_rows: int) -> slice:
    """The rows of a global batch that this process's devices hold: a contiguous block, as
    the mesh lists the devices process by process."""
    indices = sharding.addressable_devices_indices_map((global_rows,)).values()
    rows = [range(global_rows)[index[0]] for index in indices]
    return slice(min(r.start for r in rows), max(r.stop for r in rows))


class Loader:
    """Each process reads only its own rows of every global batch (here from one shuffled
    copy of the digits that every process holds; on a cluster, from its own files)."""

    def __init__(self, sharding, seed: int):
        images, labels = load_digits(return_X_y=True)
        order = np.random.default_rng(seed).permutation(len(labels))
        self.images, self.labels = (images[order] / 16.0).astype(np.float32), labels[order]
        self.sharding = sharding

    def batch(self, start: int, size: int):
        """Rows `start` to `start + size` of the shuffled digits, as global arrays split over
        the batch axis of the mesh; this process reads only the rows it holds."""
        mine = local_rows(self.sharding, size)
        rows = slice(start + mine.start, start + mine.stop)
        return tuple(
            jax.make_array_from_process_local_data(self.sharding, local, (size, *local.shape[1:]))
            for local in (self.images[rows], self.labels[rows])
        )


def run(args):
    if args.num_processes > 1:
        # CPU processes exchange their collectives through gloo; accelerators use their own.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    me = jax.process_index()

    def log(message: str):  # every process logs what is its own, tagged with its index
        # One write per line: the processes may share the terminal (or a pipe).
        sys.stdout.write(f"[process {me}] {message}\n")
        sys.stdout.flush()

    mesh = Mesh(np.array(jax.devices()), ("batch",))
    on_batch = NamedSharding(mesh, P("batch"))
    replicated = NamedSharding(mesh, P())
    mine = local_rows(on_batch, GLOBAL_BATCH)
    log(
        f"{jax.local_device_count()} of {jax.device_count()} devices "
        f"({jax.process_count()} process(es)); rows {mine.start}-{mine.stop - 1} of every "
        f"global batch of {GLOBAL_BATCH}"
    )

    loader = Loader(on_batch, args.seed)
    # Every process draws the same initial parameters from the same key; device_put then
    # places them, replicated, on every device of the mesh.
    params = jax.device_put(mlp_params(jax.random.key(args.seed), SIZES), replicated)
    optimizer = optax.adam(LEARNING_RATE)
    opt_state = optimizer.init(params)
    algorithm = ALGORITHMS[args.algorithm]
    step = pcgraph.train_step(mlp_loss, optimizer, algorithm=algorithm)

    losses = []
    for t in range(STEPS):
        x, y = loader.batch(t * GLOBAL_BATCH, GLOBAL_BATCH)
        params, opt_state, info = step(params, opt_state, x, y)
        losses.append(float(info.loss))  # a replicated scalar: every process can read it
        if me == 0 and (t == 0 or (t + 1) % 5 == 0):
            log(f"step {t + 1:>2}: loss {losses[-1]:.6f}")

    # Every computation on global arrays runs in every process (each runs its part of it),
    # even when only one process prints the result.
    x_test, y_test = loader.batch(len(loader.labels) - TEST_EXAMPLES, TEST_EXAMPLES)
    test_accuracy = float(accuracy(params, x_test, y_test))
    if me == 0:
        log(f"held-out accuracy after {STEPS} steps: {test_accuracy:.4f}")

    # One relaxation of the first batch at the trained parameters: the node errors stay split
    # over the processes, the gradients come back replicated.
    x, y = loader.batch(0, GLOBAL_BATCH)
    solution = pcgraph.relax(mlp_loss, params, x, y, algorithm=algorithm)
    error = solution.errors["hidden1"]
    held = [list(shard.data.shape) for shard in error.addressable_shards]
    log(f"relax: node error hidden1 {list(error.shape)}, held by this process: {held}")

    if args.out is not None:
        # Gathering is collective: every process takes part, and each gets the whole arrays.
        errors = multihost_utils.process_allgather(solution.errors, tiled=True)
        if me == 0:  # the parameters are replicated: one process writes them for all
            out = pathlib.Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            eqx.tree_serialise_leaves(out / "params.eqx", params)
            results = {"losses": np.asarray(losses)}
            for prefix, tree in (("params", params), ("grads", solution.grads)):
                for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
                    results[prefix + jax.tree_util.keystr(path)] = np.asarray(leaf)
            results.update({f"errors[{name!r}]": value for name, value in errors.items()})
            np.savez(out / "results.npz", **results)
            log(f"wrote {out / 'params.eqx'} and {out / 'results.npz'}")
        # No process goes on (or exits) before the checkpoint is written.
        multihost_utils.sync_global_devices("checkpoint written")


def launch(args):
    """Start `--num-processes` copies of this script on this machine, coordinated on a free
    local port, and wait for them all."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    command = [sys.executable, __file__, "--num-processes", str(args.num_processes)]
    command += ["--coordinator", f"localhost:{port}", "--seed", str(args.seed)]
    command += ["--algorithm", args.algorithm]
    command += [] if args.out is None else ["--out", args.out]
    processes = [
        subprocess.Popen([*command, "--process-id", str(i)], env=os.environ)
        for i in range(args.num_processes)
    ]
    return max(process.wait() for process in processes)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--num-processes", type=int, default=1, help="processes in all")
    parser.add_argument(
        "--process-id", type=int, help="this process's index; without it, start them all here"
    )
    parser.add_argument("--coordinator", help="HOST:PORT of process 0, the same for every process")
    parser.add_argument("--seed", type=int, default=0, help="seed for the data order and init")
    parser.add_argument("--algorithm", choices=sorted(ALGORITHMS), default="il")
    parser.add_argument("--out", help="folder for process 0's checkpoint and results")
    args = parser.parse_args()
    if args.num_processes > 1 and args.process_id is None:
        sys.exit(launch(args))
    run(args)


if __name__ == "__main__":
    main()
