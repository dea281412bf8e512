"""Time one PC train step of the MLP task for several libraries in one process (interleaved
rounds, so that load from elsewhere hits them alike), together with the backprop reference of
the same environment and, for the MLP, the step's two floors: its matrix products alone
(`common.MatmulFloor`) and its inference steps' elementwise work alone
(`common.ElementwiseFloor`). Prints `{library: seconds per step}` as JSON; `run.py` calls it
once per environment, alternating."""

import argparse
import importlib
import json

import common
import optax


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="the .npz file run.py wrote")
    parser.add_argument("--libraries", nargs="+", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--task", default="mlp", choices=common.TASK_NAMES)
    args = parser.parse_args()
    data = common.load_data(args.data)
    task = common.make_task(args.task, data.image_shape)
    weights = common.init_weights(task, 0)
    optimizer = optax.adam(common.LEARNING_RATE)
    trainers = {}
    for library in args.libraries:
        adapter = importlib.import_module(f"{library}_adapter")
        if adapter.unsupported(task) is None:
            trainers[library] = adapter.make_trainer(task, weights, optimizer)
        if library == "pcgraph":
            defaults = adapter.make_trainer(task, weights, optimizer, defaults=True)
            trainers["pcgraph (defaults)"] = defaults
    trainers["backprop"] = common.BackpropTrainer(task, weights, optimizer)
    if task.kind == "mlp":
        trainers[common.MatmulFloor.NAME] = common.MatmulFloor(task, weights)
        trainers[common.ElementwiseFloor.NAME] = common.ElementwiseFloor(task, weights)
    print(json.dumps(common.time_steps(trainers, task, data, args.rounds)))


if __name__ == "__main__":
    main()
