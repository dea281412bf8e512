"""The `pcgraph` command line: `pcgraph check`, `pcgraph demo` and `pcgraph --version`.

`pcgraph check FILE.py:FACTORY` imports the file, calls `FACTORY()` and compares the
predictive-coding gradient of the function it returns with `jax.grad`. The factory protocol:

    def FACTORY():
        return fn, args                # check jax.grad(fn)(*args)
        return fn, args, kwargs        # kwargs: any of argnums, has_aux, algorithm

`fn` is the loss, `args` a tuple (or list) of example positional arguments, and `kwargs` a
dict of keyword arguments of [`pcgraph.check_grad`][] (`argnums`, `has_aux`, `algorithm`).
Options given on the command line override the factory's `kwargs`.

Exit codes: 0 when every gradient element is within `atol + rtol * |jax.grad|`, 1 when one is
not (or the relaxation fails), 2 on a usage error (bad path, missing or misbehaving factory).
IL and EPC are approximate (exact only as `beta -> 0`): for them, unless `--rtol` or `--atol`
is given, the check is instead that every leaf was reached and its gradient's cosine with
`jax.grad`'s is at least `--min-cosine` (default 0.9).
"""

import argparse
import importlib
import importlib.util
import pathlib
import sys
import time
from collections.abc import Sequence

import numpy as np

PROG = "pcgraph"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
CHECK_KWARGS = ("argnums", "has_aux", "algorithm")


class UsageError(Exception):
    """A problem with what the user asked for; reported with exit code 2."""


# -- pcgraph check ------------------------------------------------------------------------------


def _load_factory(spec: str):
    """Import `FILE.py:FACTORY` (or `package.module:FACTORY`) and return the factory."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise UsageError(
            f"expected FILE.py:FACTORY (or module:FACTORY), got {spec!r}; for example "
            "`pcgraph check model.py:make_problem`."
        )
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = pathlib.Path(where)
        if not path.is_file():
            raise UsageError(f"no such file: {where!r} (from {spec!r}).")
        # A unique module name, so that checking two files named alike does not mix them up.
        module_name = f"_pcgraph_check_{abs(hash(path.resolve()))}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        # Let the file import its siblings, as `python FILE.py` would.
        sys.path.insert(0, str(path.resolve().parent))
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:
            raise UsageError(f"importing {where!r} failed: {type(e).__name__}: {e}") from e
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise UsageError(f"cannot import module {where!r}: {e}") from e
    if not hasattr(module, name):
        public = sorted(n for n, v in vars(module).items() if callable(v) and n[0] != "_")
        raise UsageError(
            f"{where!r} has no attribute {name!r}. Define `def {name}(): return fn, args` "
            f"there. Callables it defines: {', '.join(public) or 'none'}."
        )
    factory = getattr(module, name)
    if not callable(factory):
        raise UsageError(
            f"{where}:{name} is a {type(factory).__name__}, not a function; it should be a "
            "function taking no arguments that returns (fn, args) or (fn, args, kwargs)."
        )
    return factory


def _call_factory(spec: str, factory):
    """Call the factory and validate what it returns: `(fn, args, kwargs)`."""
    try:
        problem = factory()
    except Exception as e:
        raise UsageError(f"calling {spec}() failed: {type(e).__name__}: {e}") from e
    if not isinstance(problem, tuple) or len(problem) not in (2, 3):
        raise UsageError(
            f"{spec}() must return a tuple (fn, args) or (fn, args, kwargs), but it returned "
            f"{_describe(problem)}."
        )
    fn, args, kwargs = problem if len(problem) == 3 else (*problem, {})
    if not callable(fn):
        raise UsageError(f"{spec}() returned a {type(fn).__name__} as fn; it must be callable.")
    if not isinstance(args, tuple | list):
        raise UsageError(
            f"{spec}() returned a {type(args).__name__} as args; it must be a tuple (or list) "
            "of fn's positional arguments, e.g. `(params, x, y)` (a single argument is "
            "`(params,)`)."
        )
    if not isinstance(kwargs, dict):
        raise UsageError(f"{spec}() returned a {type(kwargs).__name__} as kwargs; use a dict.")
    unknown = sorted(set(kwargs) - set(CHECK_KWARGS))
    if unknown:
        raise UsageError(
            f"{spec}() returned kwargs with unknown keys {unknown}; allowed are "
            f"{list(CHECK_KWARGS)}."
        )
    return fn, tuple(args), kwargs


def _describe(value) -> str:
    if isinstance(value, tuple):
        return f"a tuple of length {len(value)}"
    return f"a {type(value).__name__}"


def _algorithm(name: str | None, kwargs: dict):
    import pcgraph

    if name is None:
        algorithm = kwargs.get("algorithm")
        if algorithm is not None and not isinstance(algorithm, pcgraph.AbstractAlgorithm):
            raise UsageError(
                f"kwargs['algorithm'] is a {type(algorithm).__name__}; it must be a pcgraph "
                "algorithm instance such as pcgraph.IL(beta=0.1)."
            )
        return algorithm
    return {"fpa": pcgraph.FPA, "il": pcgraph.IL, "epc": pcgraph.EPC}[name]()


def _failing_leaves(report, rtol: float, atol: float) -> list[str]:
    return [
        leaf.name
        for leaf in report.leaves
        if not np.allclose(leaf.pc, leaf.reference, rtol=rtol, atol=atol)
    ]


def _check(options) -> int:
    import jax

    import pcgraph

    if options.x64:
        jax.config.update("jax_enable_x64", True)
    fn, args, kwargs = _call_factory(options.target, _load_factory(options.target))
    if options.argnums is not None:
        kwargs["argnums"] = options.argnums[0] if len(options.argnums) == 1 else options.argnums
    if options.has_aux:
        kwargs["has_aux"] = True
    kwargs["algorithm"] = _algorithm(options.algorithm, kwargs)
    try:
        report = pcgraph.check_grad(fn, *args, **kwargs)
    except pcgraph.RelaxationError as e:
        print(f"FAIL: the relaxation failed: {e}")
        return EXIT_FAILED
    except (TypeError, ValueError) as e:
        raise UsageError(f"pcgraph cannot check {options.target}: {e}") from e
    print(report)
    if report.not_reached:
        print(
            f"FAIL: {len(report.not_reached)} of {len(report.leaves)} leaves not reached (their "
            "PC gradient is round-off: the error has not travelled back to them; raise "
            f"max_steps): {', '.join(report.not_reached)}"
        )
        return EXIT_FAILED
    approximate = isinstance(kwargs["algorithm"], pcgraph.IL | pcgraph.EPC)
    if approximate and options.rtol is None and options.atol is None:
        min_cosine = 0.9 if options.min_cosine is None else options.min_cosine
        failing = [leaf.name for leaf in report.leaves if not leaf.cosine >= min_cosine]
        bound = (
            f"cosine >= {min_cosine:g} with jax.grad ({report.algorithm} is approximate; give "
            "--rtol/--atol for an elementwise check)"
        )
        if failing:
            print(f"FAIL: {len(failing)} of {len(report.leaves)} leaves miss {bound}: ", end="")
            print(", ".join(failing))
            return EXIT_FAILED
        print(f"PASS: all {len(report.leaves)} leaves satisfy {bound}")
        return EXIT_OK
    rtol = 1e-5 if options.rtol is None else options.rtol
    atol = 1e-6 if options.atol is None else options.atol
    failing = _failing_leaves(report, rtol, atol)
    if options.min_cosine is not None:
        failing += [
            leaf.name
            for leaf in report.leaves
            if not leaf.cosine >= options.min_cosine and leaf.name not in failing
        ]
    bound = f"|g_pc - g_jax| <= {atol:g} + {rtol:g} * |g_jax|"
    if options.min_cosine is not None:
        bound += f" and cosine >= {options.min_cosine:g}"
    if failing:
        print(f"FAIL: {len(failing)} of {len(report.leaves)} leaves exceed {bound}: ", end="")
        print(", ".join(failing))
        return EXIT_FAILED
    print(f"PASS: all {len(report.leaves)} leaves satisfy {bound} elementwise")
    return EXIT_OK


# -- pcgraph demo -------------------------------------------------------------------------------


def _demo(options) -> int:
    """Train a small marked MLP on scikit-learn's digits with backprop, IL and FPA."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise UsageError(
            "`pcgraph demo` trains on scikit-learn's bundled digits data set; install it with "
            "`pip install 'pcgraph[examples]'` (or `pip install scikit-learn`)."
        ) from e
    import jax
    import jax.numpy as jnp
    import optax

    import pcgraph

    images, labels = load_digits(return_X_y=True)
    rng = np.random.default_rng(options.seed)
    order = rng.permutation(len(labels))
    split = len(labels) * 4 // 5
    x = jnp.asarray(images[order] / 16.0, jnp.float32)
    y = jnp.asarray(labels[order])
    x_train, y_train, x_test, y_test = x[:split], y[:split], x[split:], y[split:]

    def logits_fn(params, x):
        h = x
        for i, layer in enumerate(params[:-1]):
            h = pcgraph.node(jnp.tanh(h @ layer["w"] + layer["b"]), name=f"hidden{i + 1}")
        return h @ params[-1]["w"] + params[-1]["b"]

    def loss(params, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(logits_fn(params, x), y).mean()

    sizes = (64, 64, 64, 10)
    keys = jax.random.split(jax.random.key(options.seed), len(sizes) - 1)
    init = [
        {"w": jax.random.normal(k, (m, n)) / np.sqrt(m), "b": jnp.zeros(n)}
        for k, m, n in zip(keys, sizes[:-1], sizes[1:])
    ]
    batch = 64
    print(
        f"pcgraph demo: a {'-'.join(map(str, sizes))} tanh MLP on scikit-learn's digits "
        f"({split} train / {len(labels) - split} test), {options.epochs} epochs of Adam, "
        f"batch {batch}"
    )
    print(pcgraph.trace(loss, init, x_train[:batch], y_train[:batch]))
    methods = {
        "backprop": jax.grad(loss),
        "PC (IL)": pcgraph.grad(loss, algorithm=pcgraph.IL(rtol=None)),
        "PC (FPA)": pcgraph.grad(loss, algorithm=pcgraph.FPA()),
    }
    optimizer = optax.adam(3e-3)
    batches = [
        rng.permutation(split)[: split // batch * batch].reshape(-1, batch)
        for _ in range(options.epochs)
    ]
    print(f"\n{'method':<10}  {'test acc':>8}  {'train loss':>10}  {'time (s)':>8}")
    for name, grad_fn in methods.items():

        @jax.jit
        def step(params, opt_state, idx, grad_fn=grad_fn):
            grads = grad_fn(params, x_train[idx], y_train[idx])
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        params, opt_state = init, optimizer.init(init)
        start = time.perf_counter()
        for epoch in batches:
            for idx in epoch:
                params, opt_state = step(params, opt_state, idx)
        jax.block_until_ready(params)
        elapsed = time.perf_counter() - start
        accuracy = jnp.mean(jnp.argmax(logits_fn(params, x_test), axis=-1) == y_test)
        train_loss = loss(params, x_train, y_train)
        print(f"{name:<10}  {float(accuracy):>8.2%}  {float(train_loss):>10.4f}  {elapsed:>8.2f}")
    print("(time includes compilation)\n")
    print(pcgraph.check_grad(loss, init, x_test[:batch], y_test[:batch]))
    return EXIT_OK


# -- entry point --------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Predictive coding as a drop-in replacement for jax.grad.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    check = commands.add_parser(
        "check",
        help="compare a function's PC gradient with jax.grad, leaf by leaf",
        description=(
            "Import FILE.py, call FACTORY() and compare pcgraph's gradient of the function it "
            "returns with jax.grad. FACTORY takes no arguments and returns (fn, args) or "
            "(fn, args, kwargs), kwargs holding any of argnums, has_aux, algorithm. Exit "
            "code 0: within tolerance; 1: not; 2: usage error."
        ),
    )
    check.add_argument("target", metavar="FILE.py:FACTORY", help="the file and factory")
    check.add_argument(
        "--algorithm",
        choices=("fpa", "il", "epc"),
        help="FPA (exact), IL or EPC (approximate) with default settings; overrides the "
        "factory's "
        "kwargs['algorithm'] (default: the factory's, else FPA)",
    )
    check.add_argument(
        "--rtol",
        type=float,
        help="relative tolerance of the elementwise check (default: 1e-5; for IL and EPC, "
        "which are approximate, the default check is --min-cosine instead)",
    )
    check.add_argument(
        "--atol",
        type=float,
        help="absolute tolerance of the elementwise check (default: 1e-6; see --rtol)",
    )
    check.add_argument(
        "--min-cosine",
        type=float,
        help="the smallest cosine with jax.grad each leaf's gradient may have (default: 0.9 "
        "for IL and EPC without --rtol/--atol, else not checked)",
    )
    check.add_argument(
        "--argnums",
        type=int,
        nargs="+",
        metavar="N",
        help="which positional arguments to differentiate (default: the factory's, else 0)",
    )
    check.add_argument("--has-aux", action="store_true", help="fn returns (loss, aux)")
    check.add_argument("--x64", action="store_true", help="enable float64 before the factory")
    check.set_defaults(run=_check)

    demo = commands.add_parser(
        "demo",
        help="train an MLP on digits with backprop, IL and FPA",
        description=(
            "Train a small tanh MLP (two marked hidden layers) on scikit-learn's digits with "
            "jax.grad, pcgraph IL and pcgraph FPA from the same initialisation, and print "
            "test accuracy and the per-leaf gradient check. Needs scikit-learn."
        ),
    )
    demo.add_argument("--epochs", type=int, default=5, help="training epochs (default: 5)")
    demo.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `pcgraph` command line with `argv` (default: `sys.argv[1:]`).

    **Returns:**

    The exit code: 0 on success, 1 when a gradient check fails, 2 on a usage error (bad
    command-line arguments, which argparse reports, exit through `SystemExit(2)`).
    """
    parser = _parser()
    options = parser.parse_args(argv)
    try:
        return options.run(options)
    except UsageError as e:
        print(f"{PROG} {options.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
