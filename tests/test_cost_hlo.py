"""`pcgraph.cost` is an analytic model; these tests hold it against the program each algorithm
really runs: the matrix products (`dot_general` and `convolution`) in the lowered StableHLO of
`jax.jit(pcgraph.grad(...))`, per iteration of the relaxation loop and in total.

On the MLP and the CNN below every prediction (each node's and the loss's) holds exactly one
product, and a local VJP costs one product per node input plus one per parameter read: so a
relaxation step costs `Δforward + Δvjps - k` products, where `Δ` is what `pcgraph.cost` adds
per step and `k` the predictions that read no node (the first layer, whose input is data, needs
no VJP during relaxation); the model counts a VJP as two products, the weight's and the input's,
which is exact for backprop and the wavefront except for those `k` first layers."""

import re

import jax
import jax.numpy as jnp
import pytest
from helpers import normal

import pcgraph

_PRODUCT = re.compile(r"stablehlo\.(?:dot_general|convolution)\b")
_CALL = re.compile(r"(?<![\w])call @(\"[^\"]+\"|[\w.$-]+)")
_FUNC = re.compile(r"^\s*func\.func (?:public |private )?@(\"[^\"]+\"|[\w.$-]+)\(")


def _functions(text: str) -> dict[str, list[str]]:
    funcs, name, depth, body = {}, None, 0, []
    for line in text.splitlines():
        match = _FUNC.match(line)
        if match and name is None:
            name, depth, body = match.group(1).strip('"'), 0, []
        if name is not None:
            body.append(line)
            depth += line.count("{") - line.count("}")
            if depth == 0:
                funcs[name] = body
                name = None
    return funcs


def _region(lines: list[str], start: int) -> list[str]:
    depth, out = 0, []
    for line in lines[start:]:
        out.append(line)
        depth += line.count("{") - line.count("}")
        if depth == 0 and len(out) > 1:
            break
    return out


def products(text: str) -> tuple[list[int], int]:
    """The products in one iteration of each innermost `while` loop (a relaxation step), and
    in the whole program (each loop body counted once)."""
    funcs = _functions(text)
    memo: dict[str, int] = {}
    loops: dict[str, bool] = {}

    def callees(lines):
        return [c.strip('"') for line in lines for c in _CALL.findall(line)]

    def count(lines):
        return sum(len(_PRODUCT.findall(line)) for line in lines) + sum(
            function_count(c) for c in callees(lines) if c in funcs
        )

    def function_count(name):
        if name not in memo:
            memo[name] = 0
            memo[name] = count(funcs[name][1:])
        return memo[name]

    def has_loop(name):
        if name not in loops:
            loops[name] = False
            body = funcs[name][1:]
            loops[name] = any("stablehlo.while" in line for line in body) or any(
                has_loop(c) for c in callees(body) if c in funcs
            )
        return loops[name]

    per_step = []
    for body in funcs.values():
        for k, line in enumerate(body):
            if "stablehlo.while" in line:
                inner = _region(body, k)[1:]
                nested = any("stablehlo.while" in line for line in inner) or any(
                    has_loop(c) for c in callees(inner) if c in funcs
                )
                if not nested:
                    per_step.append(count(inner))
    return per_step, function_count("main")


def _mlp(params, x, y):
    h = x
    for w in params[:-1]:
        h = jnp.tanh(h @ w)
    return jnp.mean((h @ params[-1] - y) ** 2)


def _cnn(params, x, y):
    spec = ("NHWC", "HWIO", "NHWC")
    h = jnp.tanh(jax.lax.conv_general_dilated(x, params["c1"], (1, 1), "SAME",
                                              dimension_numbers=spec))  # fmt: skip
    h = jnp.tanh(jax.lax.conv_general_dilated(h, params["c2"], (1, 1), "SAME",
                                              dimension_numbers=spec))  # fmt: skip
    h = jnp.tanh(h.reshape(h.shape[0], -1) @ params["w1"])
    return jnp.mean((h @ params["w2"] - y) ** 2)


def _models():
    k = jax.random.split(jax.random.key(0), 6)
    mlp = (
        [normal(k[0], (8, 32), jnp.float32, 0.35), normal(k[1], (32, 32), jnp.float32, 0.18),
         normal(k[2], (32, 32), jnp.float32, 0.18), normal(k[3], (32, 4), jnp.float32, 0.18)],
        normal(k[4], (16, 8), jnp.float32), normal(k[5], (16, 4), jnp.float32),
    )  # fmt: skip
    cnn = (
        {"c1": normal(k[0], (3, 3, 1, 4), jnp.float32, 0.3),
         "c2": normal(k[1], (3, 3, 4, 4), jnp.float32, 0.2),
         "w1": normal(k[2], (144, 16), jnp.float32, 0.1),
         "w2": normal(k[3], (16, 3), jnp.float32, 0.2)},
        normal(k[4], (5, 6, 6, 1), jnp.float32), normal(k[5], (5, 3), jnp.float32),
    )  # fmt: skip
    return {"mlp": (_mlp, mlp), "cnn": (_cnn, cnn)}


MODELS = _models()


def _lowered(fn, args, algorithm) -> str:
    return jax.jit(lambda *a: pcgraph.grad(fn, algorithm=algorithm)(*a)).lower(*args).as_text()


def _data_only_predictions(graph) -> int:
    """Predictions (nodes and the loss) that read no node: their VJP is never needed during
    relaxation."""
    names = set(graph.node_names)
    return sum(1 for info in graph.nodes if not names.intersection(info.parents))


RELAXATIONS = {
    "il": lambda t: pcgraph.IL(rtol=None, max_steps=t),
    "fpa": lambda t: pcgraph.FPA(max_steps=t),
    "epc": lambda t: pcgraph.EPC(rtol=None, max_steps=t),
}


@pytest.mark.parametrize("model", MODELS, ids=list(MODELS))
@pytest.mark.parametrize("algorithm", RELAXATIONS, ids=list(RELAXATIONS))
def test_products_per_relaxation_step_match_the_cost_model(model, algorithm):
    fn, args = MODELS[model]
    graph = pcgraph.trace(fn, *args)
    make = RELAXATIONS[algorithm]
    before, after = pcgraph.cost(graph, make(5)), pcgraph.cost(graph, make(6))
    forward, vjps = after.forward - before.forward, after.vjps - before.vjps
    assert vjps == len(graph.nodes) + 1  # every prediction's VJP, per step
    per_step, _ = products(_lowered(fn, args, make(5)))
    assert per_step, "no relaxation loop found"
    k = _data_only_predictions(graph)
    assert k == 1  # the first layer reads the data
    # Each forward is one product; each VJP one product per node input, none for the first
    # layer (the model counts it).
    assert set(per_step) == {forward + vjps - k}, (per_step, forward, vjps)


@pytest.mark.parametrize("model", MODELS, ids=list(MODELS))
@pytest.mark.parametrize(
    "algorithm", [pcgraph.ZIL(), pcgraph.FPA(schedule=pcgraph.Wavefront())],
    ids=["zil", "fpa-wavefront"],
)  # fmt: skip
def test_products_of_the_wavefront_and_backprop_match_the_cost_model(model, algorithm):
    fn, args = MODELS[model]
    graph = pcgraph.trace(fn, *args)
    report = pcgraph.cost(graph, algorithm)
    per_step, total = products(_lowered(fn, args, algorithm))
    assert per_step == []  # no relaxation loop: each VJP evaluated once
    k = _data_only_predictions(graph)
    # A VJP is two products (the weight's and the input's) except the first layer's.
    assert total == report.forward + 2 * report.vjps - k
    _, backprop = products(jax.jit(jax.grad(fn)).lower(*args).as_text())
    assert backprop == report.backprop_forward + 2 * report.backprop_vjps - k
