"""Scan lifting: a `lax.scan` on the differentiated path becomes nodes stacked over its
iterations, predicted for all iterations at once, and FPA stays exact."""

import time

import jax
import jax.numpy as jnp
import pytest
from helpers import RTOL, assert_grads_close, normal

import pcgraph
from pcgraph._algorithms import Options
from pcgraph._trace import trace_flat

#: One node per primitive: the carry chain and the head stay separate nodes.
PRIMITIVES = pcgraph.Primitives()

#: float32 in the quick run; float64 (another compilation of each program) with the slow tests.
DTYPES = pytest.mark.parametrize(
    "dtype",
    [
        pytest.param(jnp.float32, id="float32"),
        pytest.param(jnp.float64, id="float64", marks=pytest.mark.slow),
    ],
    indirect=True,
)


def _rnn_params(key, dtype, hidden=4, d_in=3, d_out=2):
    k = jax.random.split(key, 3)
    return {
        "w": normal(k[0], (hidden, hidden), dtype, 0.5),
        "u": normal(k[1], (d_in, hidden), dtype, 0.7),
        "head": normal(k[2], (hidden, d_out), dtype, 0.5),
    }


def _sequence(key, dtype, length=5, batch=2, d_in=3, d_out=2):
    kx, ky = jax.random.split(key)
    return normal(kx, (length, batch, d_in), dtype), normal(ky, (batch, d_out), dtype)


def rnn_many_to_one(params, xs, y):
    def step(h, x):
        h = jnp.tanh(h @ params["w"] + x @ params["u"])
        return h, None

    h0 = jnp.zeros((xs.shape[1], params["w"].shape[0]), xs.dtype)
    h, _ = jax.lax.scan(step, h0, xs)
    return jnp.mean((h @ params["head"] - y) ** 2)


def rnn_many_to_many(params, xs, y, reverse=False):
    def step(h, x):
        h = jnp.tanh(h @ params["w"] + x @ params["u"])
        return h, jnp.sin(h) @ params["head"]

    h0 = jnp.ones((xs.shape[1], params["w"].shape[0]), xs.dtype)
    _, outs = jax.lax.scan(step, h0, xs, reverse=reverse)
    weights = jnp.arange(1, xs.shape[0] + 1, dtype=xs.dtype)[:, None, None]
    return jnp.mean(weights * (outs - y) ** 2)


def _check(fn, args, dtype, argnums=0):
    pc = jax.jit(pcgraph.grad(fn, argnums))(*args)
    assert_grads_close(pc, jax.grad(fn, argnums)(*args), RTOL[dtype])


@pytest.mark.slow
@DTYPES
def test_rnn_fpa_matches_jax_grad(dtype):
    params = _rnn_params(jax.random.PRNGKey(0), dtype)
    xs, y = _sequence(jax.random.PRNGKey(1), dtype)
    _check(rnn_many_to_one, (params, xs, y), dtype)
    _check(rnn_many_to_many, (params, xs, y), dtype)
    _check(lambda p, xs, y: rnn_many_to_many(p, xs, y, reverse=True), (params, xs, y), dtype)


def test_stacked_nodes_and_summary():
    params = _rnn_params(jax.random.PRNGKey(0), jnp.float32)
    xs, y = _sequence(jax.random.PRNGKey(1), jnp.float32, length=7)
    graph = pcgraph.trace(rnn_many_to_many, params, xs, y)
    stacked = [info for info in graph.nodes if info.iterations is not None]
    # The hidden-state carry, and the ys computed in the body (sin, then the head's matmul).
    assert [(info.op, info.shape, info.iterations) for info in stacked] == [
        ("scan", (7, 2, 4), 7),
        ("scan", (7, 2, 2), 7),
    ]
    carry = stacked[0]
    assert carry.parents == ("['u']", "['w']", carry.name)  # it reads its previous slice
    assert all(info.iterations is None for info in graph.nodes if info.op != "scan")
    text = graph.summary()
    assert "(2 stacked over scan iterations)" in text.splitlines()[0]
    assert "7 x float32[2, 4]" in text and "7 x float32[2, 2]" in text


@pytest.mark.slow
def test_carry_chain_sets_depth_and_wavefront(x64):
    """With step size 1 the error needs one step per iteration to travel back along the carry:
    after s steps exactly the last s - 1 slices of the hidden state are non-zero, and the
    gradient is exact after `graph.depth` steps, not before."""
    length = 6
    params = _rnn_params(jax.random.PRNGKey(2), jnp.float64)
    xs, y = _sequence(jax.random.PRNGKey(3), jnp.float64, length=length)
    graph = pcgraph.trace(rnn_many_to_one, params, xs, y, placement=PRIMITIVES)
    (carry,) = [info for info in graph.nodes if info.iterations is not None]
    # loss <- ... head matmul at distance d_head; the last slice at d_head + 1, the first at
    # d_head + length.
    head = next(info for info in graph.nodes if info != carry and carry.name in info.parents)
    assert (carry.distance, carry.final_step) == (head.distance + 1, head.distance + length)
    assert graph.depth == carry.final_step
    reference = jax.grad(rnn_many_to_one)(params, xs, y)
    for steps in (head.distance + 1, head.distance + 3, graph.depth - 1):
        solution = pcgraph.relax(
            rnn_many_to_one,
            params,
            xs,
            y,
            algorithm=pcgraph.FPA(max_steps=steps),
            placement=PRIMITIVES,
        )
        error = solution.errors[carry.name]
        nonzero = [bool(jnp.any(error[t] != 0)) for t in range(length)]
        arrived = max(0, steps - head.distance)  # slices reached, counted from the last
        assert nonzero == [t >= length - arrived for t in range(length)], (steps, nonzero)
        worst = max(
            float(jnp.max(jnp.abs(a - b)))
            for a, b in zip(jax.tree.leaves(solution.grads), jax.tree.leaves(reference))
        )
        assert worst > 1e-6, f"already exact after {steps} < depth={graph.depth} steps"
    assert_grads_close(pcgraph.grad(rnn_many_to_one)(params, xs, y), reference, 1e-10)


def test_reverse_scan_wavefront_runs_from_the_first_slice(x64):
    """A reverse scan's last iteration is slice 0: the error enters there."""
    params = _rnn_params(jax.random.PRNGKey(4), jnp.float64)
    xs, y = _sequence(jax.random.PRNGKey(5), jnp.float64, length=4)

    def fn(params, xs, y):
        def step(h, x):
            return jnp.tanh(h @ params["w"] + x @ params["u"]), None

        h, _ = jax.lax.scan(step, jnp.zeros((2, 4)), xs, reverse=True)
        return jnp.sum((h @ params["head"] - y) ** 2)

    graph = pcgraph.trace(fn, params, xs, y)
    (carry,) = [info for info in graph.nodes if info.iterations is not None]
    solution = pcgraph.relax(fn, params, xs, y, algorithm=pcgraph.FPA(max_steps=carry.distance))
    error = solution.errors[carry.name]
    assert [bool(jnp.any(error[t] != 0)) for t in range(4)] == [True, False, False, False]
    assert_grads_close(pcgraph.grad(fn)(params, xs, y), jax.grad(fn)(params, xs, y), 1e-10)


def lstm_like(params, xs):
    """Two carries that feed each other, an int counter carry, and ys read by the loss."""

    def step(carry, x):
        h, c, i = carry
        gate = jax.nn.sigmoid(h @ params["w"] + x @ params["u"])
        c = gate * c + (1 - gate) * jnp.tanh(x @ params["u"])
        h = jnp.tanh(c) * (1.0 + i.astype(x.dtype) / 10)
        return (h, c, i + 1), h

    init = (jnp.zeros((2, 4), xs.dtype), jnp.ones((2, 4), xs.dtype), jnp.int32(0))
    (h, c, _), hs = jax.lax.scan(step, init, xs)
    return jnp.sum(h**2) + jnp.mean(c) + jnp.mean(hs[::2])


def loss_in_carry(params, xs):
    def step(carry, x):
        h, total = carry
        h = jnp.tanh(h @ params["w"] + x @ params["u"])
        return (h, total + jnp.sum(h**2)), None

    (_, total), _ = jax.lax.scan(step, (jnp.zeros((2, 4), xs.dtype), 0.0), xs)
    return total


def nested_scans(params, xs):
    def step(h, x):
        def inner(g, _):
            return jnp.tanh(g @ params["w"]), None

        g, _ = jax.lax.scan(inner, h + x @ params["u"], None, length=3)
        return g, jnp.sum(g)

    h, ys = jax.lax.scan(step, jnp.zeros((2, 4), xs.dtype), xs)
    return jnp.sum(h**2) + jnp.sum(jnp.cos(ys))


def scanned_layers(params, xs):
    """A deep network as a scan over stacked layer weights (the weights are the xs)."""

    def layer(h, w):
        return jnp.tanh(h @ w), None

    weights = jnp.stack([params["w"] * (1 + 0.1 * k) for k in range(5)])
    h, _ = jax.lax.scan(layer, xs[0] @ params["u"], weights)
    return jnp.sum(h**2)


def fori_and_map(params, xs):
    h = jax.lax.fori_loop(0, 3, lambda i, h: jnp.tanh(h @ params["w"] + i), xs[0] @ params["u"])
    mapped = jax.lax.map(lambda x: jnp.sin(x @ params["u"]) * h, xs)
    return jnp.sum(mapped**2)


def data_only_scan(params, xs):
    features, _ = jax.lax.scan(lambda c, x: (c + jnp.sin(x), None), jnp.zeros_like(xs[0]), xs)
    return jnp.sum(jnp.tanh(features @ params["u"]) ** 2)


PROGRAMS = {
    "lstm_like": lstm_like,
    "loss_in_carry": loss_in_carry,
    "nested_scans": nested_scans,
    "scanned_layers": scanned_layers,
    "fori_and_map": fori_and_map,
    "data_only_scan": data_only_scan,
}


@DTYPES
@pytest.mark.parametrize("name", list(PROGRAMS))
def test_scan_programs_match_jax_grad(name, dtype):
    params = _rnn_params(jax.random.PRNGKey(6), dtype)
    xs, _ = _sequence(jax.random.PRNGKey(7), dtype)
    # With respect to the parameters (consts, init and, for scanned_layers, xs of the lifted
    # scans) and to the sequence itself (their xs).
    _check(PROGRAMS[name], (params, xs), dtype, argnums=(0, 1))


def test_which_scans_are_lifted():
    params = _rnn_params(jax.random.PRNGKey(8), jnp.float32)
    xs, _ = _sequence(jax.random.PRNGKey(9), jnp.float32)

    def stacked(fn, **kwargs):
        graph = pcgraph.trace(fn, params, xs, placement=PRIMITIVES, **kwargs)
        return [(info.shape, info.iterations) for info in graph.nodes if info.op == "scan"]

    # lstm_like: h and c (the int counter carry is not a node; hs is h, read off its carry).
    assert stacked(lstm_like) == [((5, 2, 4), 5), ((5, 2, 4), 5)]
    # The inner scan stays inside the outer body; the outer ys (a reduce_sum) is stacked.
    assert stacked(nested_scans) == [((5, 2, 4), 5), ((5,), 5)]
    # One slice per layer.
    assert stacked(scanned_layers) == [((5, 2, 4), 5)]
    # A scan off the differentiated path stays one ordinary (non-node) computation.
    assert stacked(data_only_scan) == []
    # lift_scans=False: each scan output is one opaque node without an iteration axis.
    assert stacked(lstm_like, lift_scans=False) == [
        ((2, 4), None),
        ((2, 4), None),
        ((5, 2, 4), None),
    ]


@pytest.mark.parametrize("name", ["lstm_like", "nested_scans"])
def test_unlifted_scans_give_the_same_gradients(name, x64):
    """`lift_scans=False` keeps each scan one opaque node; FPA is exact on that graph too."""
    params = _rnn_params(jax.random.PRNGKey(10), jnp.float64)
    xs, _ = _sequence(jax.random.PRNGKey(11), jnp.float64)
    fn = PROGRAMS[name]
    reference = jax.grad(fn)(params, xs)
    for lift in (True, False):

        @jax.jit
        def fpa_grad(params, xs, lift=lift):
            traced = trace_flat(fn, (params, xs), 0, False, lift_scans=lift)
            feedforward = traced.graph.feedforward(traced.params, traced.data)
            # FPA starts at the feedforward pass: it reads no start.
            solved = pcgraph.FPA().solve(
                traced.graph, traced.params, traced.data, feedforward, None, Options()
            )
            return traced.unflatten_grads(solved.grads)

        assert_grads_close(fpa_grad(params, xs), reference, 1e-10)
    depth = {lift: pcgraph.trace(fn, params, xs, lift_scans=lift).depth for lift in (True, False)}
    assert depth[False] < depth[True]  # the lifted carry chain is as long as the scan


def test_marked_scan_body(x64):
    """With marks, a scan whose body holds one is lifted and its marked carry keeps the mark's
    name and precision; an unmarked scan folds into the marked node reading it."""
    params = _rnn_params(jax.random.PRNGKey(12), jnp.float64)
    xs, y = _sequence(jax.random.PRNGKey(13), jnp.float64)

    def marked(params, xs, y):
        def step(h, x):
            h = pcgraph.node(jnp.tanh(h @ params["w"] + x @ params["u"]), name="h", precision=2.0)
            return h, None

        h, _ = jax.lax.scan(step, jnp.zeros((2, 4)), xs)
        out = pcgraph.node(h @ params["head"], name="out")
        return jnp.sum((out - y) ** 2)

    def unmarked_scan(params, xs, y):
        h0 = pcgraph.node(jnp.tanh(xs[0] @ params["u"]), name="h0")
        h, _ = jax.lax.scan(
            lambda h, x: (jnp.tanh(h @ params["w"] + x @ params["u"]), None), h0, xs
        )
        return jnp.sum((h @ params["head"] - y) ** 2)

    graph = pcgraph.trace(marked, params, xs, y)
    assert graph.node_names == ("h", "out")
    assert (graph.nodes[0].shape, graph.nodes[0].precision) == ((5, 2, 4), 2.0)
    assert graph.depth == 1 + 5
    assert pcgraph.trace(unmarked_scan, params, xs, y).node_names == ("h0",)
    for fn in (marked, unmarked_scan):
        assert_grads_close(pcgraph.grad(fn)(params, xs, y), jax.grad(fn)(params, xs, y), 1e-10)


def test_unrolled_loop_matches_scan(x64):
    """A Python loop unrolls into one node per step; it gives the same gradient as the scan."""
    params = _rnn_params(jax.random.PRNGKey(14), jnp.float64)
    xs, y = _sequence(jax.random.PRNGKey(15), jnp.float64)

    def unrolled(params, xs, y):
        h = jnp.zeros((2, 4))
        for x in xs:
            h = jnp.tanh(h @ params["w"] + x @ params["u"])
        return jnp.mean((h @ params["head"] - y) ** 2)

    assert_grads_close(
        pcgraph.grad(unrolled)(params, xs, y),
        pcgraph.grad(rnn_many_to_one)(params, xs, y),
        1e-10,
    )
    assert_grads_close(
        pcgraph.grad(unrolled)(params, xs, y), jax.grad(unrolled)(params, xs, y), 1e-10
    )


def test_il_on_a_lifted_scan_approaches_jax_grad(x64):
    """IL relaxes every slice of the marked hidden state; its bias vanishes with beta, as on
    any graph."""
    params = _rnn_params(jax.random.PRNGKey(16), jnp.float64)
    xs, y = _sequence(jax.random.PRNGKey(17), jnp.float64, length=4)

    def marked(params, xs, y):
        def step(h, x):
            return pcgraph.node(jnp.tanh(h @ params["w"] + x @ params["u"]), name="h"), None

        h, _ = jax.lax.scan(step, jnp.zeros((2, 4)), xs)
        return jnp.mean((h @ params["head"] - y) ** 2)

    reference = jax.grad(marked)(params, xs, y)
    errors = []
    for beta in (0.1, 0.01):
        algorithm = pcgraph.IL(beta=beta, max_steps=100, stepper=pcgraph.Euler(0.3))
        grads = pcgraph.grad(marked, algorithm=algorithm)(params, xs, y)
        errors.append(
            max(
                float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
                for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(reference))
            )
        )
    # Measured: 0.25 and 0.029.
    assert errors[1] < 0.2 * errors[0] and errors[1] < 0.05, errors


def test_vmap_and_aux_through_a_lifted_scan(x64):
    params = _rnn_params(jax.random.PRNGKey(18), jnp.float64)
    xs, y = _sequence(jax.random.PRNGKey(19), jnp.float64)

    def with_aux(params, xs, y):
        def step(h, x):
            h = jnp.tanh(h @ params["w"] + x @ params["u"])
            return h, h

        h, hs = jax.lax.scan(step, jnp.zeros(4), xs)
        return jnp.sum((h @ params["head"] - y) ** 2), hs

    batched = (jnp.moveaxis(xs, 1, 0), y)  # two independent sequences without a batch axis
    pc, hs = jax.vmap(pcgraph.grad(with_aux, has_aux=True), (None, 0, 0))(params, *batched)
    ref, ref_hs = jax.vmap(jax.grad(with_aux, has_aux=True), (None, 0, 0))(params, *batched)
    assert_grads_close(pc, ref, 1e-10)
    assert jnp.allclose(hs, ref_hs, rtol=1e-12)


def _rnn_compile_seconds(length: int) -> float:
    hidden, batch = 16, 4
    params = _rnn_params(jax.random.PRNGKey(20), jnp.float32, hidden=hidden, d_in=8, d_out=1)
    xs, y = _sequence(jax.random.PRNGKey(21), jnp.float32, length, batch, d_in=8, d_out=1)
    # A fresh function, so nothing is cached between measurements.
    fn = jax.jit(pcgraph.grad(lambda *args: rnn_many_to_one(*args)))
    start = time.perf_counter()
    fn.lower(params, xs, y).compile()
    seconds = time.perf_counter() - start
    assert_grads_close(fn(params, xs, y), jax.grad(rnn_many_to_one)(params, xs, y), 1e-5)
    return seconds


@pytest.mark.slow
def test_compile_time_does_not_grow_with_length():
    """Trace + compile of a length-256 scanned RNN within 2x of length 16 (best of two, so a
    busy machine does not fail it); unrolled, it would grow about 16-fold."""
    short = min(_rnn_compile_seconds(16) for _ in range(2))
    long = min(_rnn_compile_seconds(256) for _ in range(2))
    assert long < 2 * short, (short, long)
