"""Property-based tests: on randomly generated pure JAX programs, FPA equals `jax.grad`.

The strategy `programs()` draws a small DAG of JAX operations -- matmuls (plain, transposed,
einsum), elementwise nonlinearities, sums and products of two earlier branches (with
broadcasting), bias/scale parameters, slices (basic indexing and `lax.slice`, with strides),
concatenation, reductions broadcast back, reused parameters -- over random shapes and a random
parameter pytree, and renders it as Python source. The source is what runs (it is `exec`-ed),
and it is what a failing example prints, so every failure is a self-contained reproduction.

The number of examples is read from the environment: `PCGRAPH_HYPOTHESIS_EXAMPLES` (default
200) for the main property, a sixth of it (at least 10) for the others. Examples are drawn
deterministically (`derandomize=True`); set `PCGRAPH_HYPOTHESIS_RANDOM=1` to draw fresh ones.
"""

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, note, settings, strategies as st

import pcgraph

NUM_EXAMPLES = int(os.environ.get("PCGRAPH_HYPOTHESIS_EXAMPLES", "200"))
NUM_SECONDARY_EXAMPLES = max(10, NUM_EXAMPLES // 6)
RANDOM = os.environ.get("PCGRAPH_HYPOTHESIS_RANDOM", "") not in ("", "0")

MAX_OPS = 8
MAX_WIDTH = 6
#: Concatenation may widen a value up to this.
MAX_CONCAT_WIDTH = 8
RTOL = 1e-9
#: The finest graph: the most nodes, and the most paths of unequal length to the loss.
PRIMITIVES = pcgraph.Primitives()


def _settings(max_examples: int):
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=not RANDOM,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# -- programs --------------------------------------------------------------------------------


class _Leaf:
    """Shows a parameter leaf in `Program.__repr__` as its shape."""

    def __init__(self, shape):
        self.shape = shape

    def __repr__(self):
        return f"f64{list(self.shape)}"


@dataclasses.dataclass(frozen=True, repr=False)
class Program:
    """A random pure JAX program `loss(params, x)`, as source code.

    - `batch`, `width_in`: the shape of `x`.
    - `param_tree`: the parameter pytree with leaf `k` stored as the int `k`.
    - `param_shapes`: the shape of leaf `k`.
    - `body`: the lines of the function body; `{p3}` stands for the access path of leaf 3.
    - `argnums`: 0, or (0, 1) to differentiate with respect to `x` too.
    - `seed`: the seed of the parameter values and input.
    - `marked`: names of the values wrapped in `pcgraph.node`.

    Its repr (what a failing example prints) is the source of `loss`, with the parameter tree's
    shapes, the input's shape and how the values are drawn from `seed`.
    """

    batch: int
    width_in: int
    param_tree: Any
    param_shapes: tuple[tuple[int, ...], ...]
    body: tuple[str, ...]
    argnums: int | tuple[int, ...]
    seed: int
    marked: tuple[str, ...]

    def paths(self) -> dict[str, str]:
        """`{"p3": "params['b'][0]", ...}`: how the function reads each parameter leaf."""
        return {
            f"p{leaf}": "params" + jax.tree_util.keystr(path)
            for path, leaf in jax.tree_util.tree_flatten_with_path(self.param_tree)[0]
        }

    def source(self) -> str:
        paths = self.paths()
        lines = ["def loss(params, x):", *("    " + line.format(**paths) for line in self.body)]
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle):
        # How Hypothesis prints a falsifying example.
        printer.text(repr(self))

    def __repr__(self) -> str:
        shapes = jax.tree.map(lambda k: _Leaf(self.param_shapes[k]), self.param_tree)
        return (
            f"\n# Program(seed={self.seed}, argnums={self.argnums})\n"
            f"# params = {shapes!r}\n"
            f"# x: f64[{self.batch}, {self.width_in}]\n"
            "# values: rng = np.random.default_rng(seed); each params leaf, in jax.tree.leaves\n"
            "# order, is 0.5 * rng.standard_normal(shape); then x = rng.standard_normal(shape)\n"
            f"{self.source()}\n"
        )

    def build(self):
        namespace = {"jax": jax, "jnp": jnp, "lax": jax.lax, "pcgraph": pcgraph}
        exec(compile(self.source(), "<generated program>", "exec"), namespace)
        return namespace["loss"]

    def arguments(self):
        """Parameter values and input (float64; call under `jax.enable_x64`): from
        `rng = np.random.default_rng(seed)`, each parameter leaf in `jax.tree.leaves` order is
        `0.5 * rng.standard_normal(shape)`, then `x = rng.standard_normal(x.shape)`."""
        rng = np.random.default_rng(self.seed)
        params = jax.tree.map(
            lambda k: jnp.asarray(0.5 * rng.standard_normal(self.param_shapes[k])),
            self.param_tree,
        )
        x = jnp.asarray(rng.standard_normal((self.batch, self.width_in)))
        return params, x


_UNARY = {
    "tanh": "jnp.tanh({a})",
    "sin": "jnp.sin({a})",
    "exp_tanh": "jnp.exp(jnp.tanh({a}))",
    "exp_clip": "jnp.exp(jnp.clip({a}, -3.0, 3.0))",
    "relu": "jax.nn.relu({a})",
    "softplus": "jax.nn.softplus({a})",
    "sigmoid": "jax.nn.sigmoid({a})",
    "square": "{a} ** 2",
}

_LOSSES = (
    "jnp.sum({o} ** 2) / 2",
    "jnp.mean(jnp.tanh({o}))",
    "jnp.sum(jnp.sin({o}))",
    "jnp.mean(({o} - 0.5) ** 2)",
)

_KEYS = ("w", "b", "a", "z", "m", "c", "y", "d")


class _Builder:
    """Draws operations one by one, tracking every value's shape and the parameter leaves."""

    def __init__(self, draw, batch, width_in, x_is_param, marks):
        self.draw = draw
        self.batch = batch
        self.marks = marks
        self.shapes = [(batch, width_in)]
        self.depends = [x_is_param]
        self.ancestors: list[frozenset[int]] = [frozenset()]
        self.param_shapes: list[tuple[int, ...]] = []
        self.body = [f"v0 = x  # {list(self.shapes[0])}"]
        self.marked: list[str] = []

    def width(self, i):
        return self.shapes[i][1]

    def pick(self, candidates):
        """One of `candidates` (value indices); shrinks towards the most recent."""
        candidates = sorted(candidates)
        return candidates[-1 - self.draw(st.integers(0, len(candidates) - 1))]

    def param(self, shape):
        """The placeholder of a parameter leaf of `shape`: a new one, or (sometimes) one that
        other ops read too."""
        options = [k for k, s in enumerate(self.param_shapes) if s == shape]
        if options and self.draw(st.booleans()):
            return f"{{p{self.draw(st.sampled_from(options))}}}"
        return self.new_param(shape)

    def new_param(self, shape):
        self.param_shapes.append(shape)
        return f"{{p{len(self.param_shapes) - 1}}}"

    def emit(self, expr, shape, inputs, uses_param):
        i = len(self.shapes)
        name = f"v{i}"
        if self.marks and self.draw(st.booleans()):
            expr = f'pcgraph.node({expr}, name="{name}")'
            self.marked.append(name)
        self.body.append(f"{name} = {expr}  # {list(shape)}")
        self.shapes.append(tuple(shape))
        self.depends.append(uses_param or any(self.depends[j] for j in inputs))
        self.ancestors.append(frozenset(inputs).union(*(self.ancestors[j] for j in inputs)))
        return i

    # -- the operations ------------------------------------------------------------------------

    def matmul(self, a=None):
        draw = self.draw
        a = self.pick(range(len(self.shapes))) if a is None else a
        wa = self.width(a)
        # Sometimes a matrix another op reads too, as it is or transposed.
        matrices = [(k, s) for k, s in enumerate(self.param_shapes) if len(s) == 2]
        options = [(k, s[1], False) for k, s in matrices if s[0] == wa]
        options += [(k, s[0], True) for k, s in matrices if s[1] == wa]
        if options and draw(st.booleans()):
            k, width, transposed = draw(st.sampled_from(options))
            p = f"{{p{k}}}"
        else:
            width, transposed = draw(st.integers(1, MAX_WIDTH)), False
            p = self.new_param((wa, width))
        if transposed:
            style = draw(st.sampled_from(["T", "einsum"]))
            expr = f"v{a} @ {p}.T" if style == "T" else f"jnp.einsum('bi,oi->bo', v{a}, {p})"
        else:
            style = draw(st.sampled_from(["@", "dot"]))
            expr = f"v{a} @ {p}" if style == "@" else f"jnp.dot(v{a}, {p})"
        return self.emit(expr, (self.batch, width), [a], True)

    def unary(self):
        a = self.pick(range(len(self.shapes)))
        fn = self.draw(st.sampled_from(list(_UNARY)))
        return self.emit(_UNARY[fn].format(a=f"v{a}"), self.shapes[a], [a], False)

    def binary(self):
        a = self.pick(range(len(self.shapes)))
        wa = self.width(a)
        b = self.pick(j for j, s in enumerate(self.shapes) if s[1] == wa or s[1] == 1 or wa == 1)
        op = self.draw(st.sampled_from(["+", "*", "-"]))
        shape = np.broadcast_shapes(self.shapes[a], self.shapes[b])
        return self.emit(f"v{a} {op} v{b}", shape, [a, b], False)

    def affine(self, a=None):
        """A bias or scale parameter, broadcast: (n,), a scalar, or a (batch, 1) column."""
        a = self.pick(range(len(self.shapes))) if a is None else a
        wa = self.width(a)
        form = self.draw(st.sampled_from(["bias", "scale", "scalar", "column"]))
        shape = {"bias": (wa,), "scale": (wa,), "scalar": (), "column": (self.batch, 1)}[form]
        p = self.param(shape)
        expr = f"v{a} + {p}" if form in ("bias", "column") else f"v{a} * {p}"
        return self.emit(expr, self.shapes[a], [a], True)

    def slice(self):
        draw = self.draw
        a = self.pick(range(len(self.shapes)))
        wa = self.width(a)
        start = draw(st.integers(0, wa - 1))
        stop = draw(st.integers(start + 1, wa))
        step = draw(st.integers(1, 2))
        width = len(range(start, stop, step))
        if draw(st.booleans()):
            expr = f"lax.slice(v{a}, (0, {start}), ({self.batch}, {stop}), (1, {step}))"
        else:
            expr = f"v{a}[:, {start}:{stop}" + (f":{step}]" if step > 1 else "]")
        return self.emit(expr, (self.batch, width), [a], False)

    def concat(self):
        a = self.pick(range(len(self.shapes)))
        wa = self.width(a)
        candidates = [j for j in range(len(self.shapes)) if wa + self.width(j) <= MAX_CONCAT_WIDTH]
        if not candidates:
            return self.unary()
        b = self.pick(candidates)
        expr = f"jnp.concatenate([v{a}, v{b}], axis=1)"
        return self.emit(expr, (self.batch, wa + self.width(b)), [a, b], False)

    def reduce(self, a=None, b=None, axis=None):
        """`a (op) reduce(b, axis, keepdims=True)`: a reduction broadcast back."""
        draw = self.draw
        a = self.pick(range(len(self.shapes))) if a is None else a
        wa = self.width(a)
        axis = draw(st.integers(0, 1)) if axis is None else axis
        if b is None:
            b = self.pick(
                j for j, s in enumerate(self.shapes) if axis == 1 or s[1] in (wa, 1) or wa == 1
            )
        kind = draw(st.sampled_from(["sum", "mean"]))
        op = draw(st.sampled_from(["-", "*", "+"]))
        reduced = (self.batch, 1) if axis == 1 else (1, self.width(b))
        shape = np.broadcast_shapes(self.shapes[a], reduced)
        expr = f"v{a} {op} jnp.{kind}(v{b}, axis={axis}, keepdims=True)"
        return self.emit(expr, shape, [a, b], False)

    def skip(self):
        """Join the latest value with one of its own param-dependent ancestors: a skip
        connection, so the two paths from that ancestor to the loss have unequal lengths."""
        last = len(self.shapes) - 1
        # Computed values only: x is an input (a leaf), never a value node.
        ancestors = [j for j in self.ancestors[last] if j > 0 and self.depends[j]]
        if not ancestors:
            return last
        b = self.pick(ancestors)
        wa, wb = self.width(last), self.width(b)
        if wa == wb or wa == 1 or wb == 1:
            op = self.draw(st.sampled_from(["+", "*"]))
            shape = np.broadcast_shapes(self.shapes[last], self.shapes[b])
            return self.emit(f"v{last} {op} v{b}", shape, [last, b], False)
        return self.reduce(a=last, b=b, axis=1)


def _draw_tree(draw, leaves: list[int], depth: int = 0):
    """A random container (dict, list or tuple, sometimes nested, sometimes holding a None)
    whose leaves are `leaves`."""
    kind = draw(st.sampled_from(["dict", "list", "tuple"]))
    children: list[Any] = []
    rest = list(leaves)
    while rest:
        size = draw(st.integers(1, len(rest))) if depth < 2 else 1
        group, rest = rest[:size], rest[size:]
        if size == 1 and (depth >= 2 or not draw(st.booleans())):
            children.append(group[0])
        else:
            children.append(_draw_tree(draw, group, depth + 1))
    if draw(st.integers(0, 7)) == 7:
        children.insert(draw(st.integers(0, len(children))), None)
    if kind == "dict":
        # Not in sorted order, so flattening reorders the leaves.
        return dict(zip(_KEYS, children, strict=False))
    return children if kind == "list" else tuple(children)


@st.composite
def programs(draw, *, min_ops=2, max_ops=MAX_OPS, marks=False, skip=False):
    """A random `Program`. With `skip=True` the program starts with a matmul and always ends
    with a skip connection (unequal branch lengths), otherwise sometimes; with `marks=True`
    random values are wrapped in `pcgraph.node`."""
    batch = draw(st.integers(1, 4))
    width_in = draw(st.integers(1, MAX_WIDTH))
    argnums = draw(st.sampled_from([0, (0, 1)]))
    builder = _Builder(draw, batch, width_in, x_is_param=argnums != 0, marks=marks)
    kinds = ["matmul", "unary", "binary", "affine", "slice", "concat", "reduce"]
    num_ops = draw(st.integers(min_ops, max_ops))
    # The first op reads a parameter, so (almost) every program has some.
    if skip or draw(st.booleans()):
        builder.matmul(a=0)
    else:
        builder.affine(a=0)
    for _ in range(num_ops - 1):
        getattr(builder, draw(st.sampled_from(kinds)))()
    if skip or draw(st.booleans()):
        builder.skip()
    out = len(builder.shapes) - 1
    loss = draw(st.sampled_from(_LOSSES)).format(o=f"v{out}")
    if draw(st.booleans()):
        # A second term: the loss reads another (earlier) value too.
        other = builder.pick(range(len(builder.shapes)))
        loss += f" + jnp.mean(jnp.tanh(v{other}))"
    builder.body.append(f"return {loss}")
    leaves = list(range(len(builder.param_shapes)))
    if len(leaves) == 1 and draw(st.booleans()):
        tree: Any = 0  # The parameters are a single array.
    else:
        tree = _draw_tree(draw, leaves)
    return Program(
        batch=batch,
        width_in=width_in,
        param_tree=tree,
        param_shapes=tuple(builder.param_shapes),
        body=tuple(builder.body),
        argnums=argnums,
        seed=draw(st.integers(0, 2**32 - 1)),
        marked=tuple(builder.marked),
    )


# -- checks ----------------------------------------------------------------------------------


def _assert_close(actual, desired, where, scale_floor=1.0):
    """Elementwise within `RTOL`, and an absolute `1e-12 * max(scale_floor, max |desired|)`."""
    actual, desired = np.asarray(actual), np.asarray(desired)
    assert actual.shape == desired.shape, (where, actual.shape, desired.shape)
    assert actual.dtype == desired.dtype, (where, actual.dtype, desired.dtype)
    scale = max(scale_floor, float(np.max(np.abs(desired), initial=0.0)))
    np.testing.assert_allclose(actual, desired, rtol=RTOL, atol=1e-12 * scale, err_msg=where)


def _assert_same_grads(pc, reference):
    assert jax.tree.structure(pc) == jax.tree.structure(reference)
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(pc), jax.tree.leaves(reference), strict=True
    ):
        _assert_close(a, b, jax.tree_util.keystr(path))


#: Each example compiles a new program, and XLA's compilation dominates the run time. These
#: options cut compilation of the CPU programs here about fivefold (the generated programs are
#: tiny, so the optimisations they skip buy nothing); both gradients are compiled together, with
#: the same options. `_compile` falls back to the defaults where XLA does not know them.
_FAST_COMPILE = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
    "xla_cpu_enable_concurrency_optimized_scheduler": False,
    "xla_cpu_parallel_codegen_split_count": 1,
}
_compile_options: list[dict] = []


def _compile(lowered):
    if not _compile_options:
        try:
            compiled = lowered.compile(_FAST_COMPILE)
        except Exception as error:  # An XLA without these options: use its defaults.
            if "compile option" not in str(error):
                raise
            _compile_options.append({})
        else:
            _compile_options.append(_FAST_COMPILE)
            return compiled
    return lowered.compile(_compile_options[0])


def _run(program: Program, solve):
    """Build `program` and return `solve(loss, params, x)`, run in float64 and jit-compiled:
    one compilation for everything it computes."""
    note(repr(program))
    with jax.enable_x64(True):
        loss = program.build()
        params, x = program.arguments()
        lowered = jax.jit(lambda params, x: solve(loss, params, x)).trace(params, x).lower()
        return _compile(lowered)(params, x)


@pytest.mark.slow
@_settings(NUM_EXAMPLES)
@given(programs())
def test_fpa_equals_jax_grad_on_random_programs(program):
    """With the default placement: one node per layer."""

    def solve(loss, params, x):
        pc = pcgraph.grad(loss, program.argnums)(params, x)
        return pc, jax.grad(loss, program.argnums)(params, x)

    pc, reference = _run(program, solve)
    _assert_same_grads(pc, reference)


@pytest.mark.slow
@_settings(NUM_SECONDARY_EXAMPLES)
@given(programs())
def test_fpa_equals_jax_grad_on_random_programs_per_primitive(program):
    def solve(loss, params, x):
        pc = pcgraph.grad(loss, program.argnums, placement=pcgraph.Primitives())(params, x)
        return pc, jax.grad(loss, program.argnums)(params, x)

    pc, reference = _run(program, solve)
    _assert_same_grads(pc, reference)


@pytest.mark.slow
@_settings(NUM_SECONDARY_EXAMPLES)
@given(programs(skip=True), st.data())
def test_fpa_is_exact_after_depth_steps_on_unequal_branches(program, data):
    """FPA with step size 1 on a DAG whose paths to the loss have unequal lengths: a node's
    error is exactly zero before step `distance` and final from step `final_step` on, and the
    gradient is exact after `graph.depth` steps and stays exact."""
    with jax.enable_x64(True):
        loss, (params, x) = program.build(), program.arguments()
        graph = pcgraph.trace(loss, params, x, argnums=program.argnums, placement=PRIMITIVES)
    note(graph.summary())
    assume(any(info.distance < info.final_step for info in graph.nodes))
    depth = graph.depth
    early = data.draw(st.integers(0, depth - 1), label="early steps")
    late = depth + data.draw(st.integers(1, 3), label="extra steps")

    def solve(loss, params, x):
        return [
            pcgraph.relax(
                loss,
                params,
                x,
                argnums=program.argnums,
                algorithm=pcgraph.FPA(max_steps=k),
                placement=PRIMITIVES,
            )
            for k in (early, depth, late)
        ] + [jax.grad(loss, program.argnums)(params, x)]

    at_early, at_depth, at_late, reference = _run(program, solve)
    assert int(at_depth.stats.num_steps) == depth
    assert int(at_late.stats.num_steps) == late
    _assert_same_grads(at_depth.grads, reference)
    _assert_same_grads(at_late.grads, reference)
    for info in graph.nodes:
        # Past its final step a node's error changes by round-off only: a step computes
        # `e + (-(e + b))`, which is `-b` in exact arithmetic.
        final = at_depth.errors[info.name]
        _assert_close(at_late.errors[info.name], final, info.name, scale_floor=0.0)
        if early < info.distance:
            assert not np.any(np.asarray(at_early.errors[info.name])), (info.name, early)
        if early >= info.final_step:
            _assert_close(at_early.errors[info.name], final, info.name, scale_floor=0.0)


@pytest.mark.slow
@_settings(NUM_SECONDARY_EXAMPLES)
@given(programs(marks=True))
def test_fpa_equals_jax_grad_with_random_node_marks(program):
    """Coarse nodes: marking random intermediates with `pcgraph.node` folds everything between
    marks into one prediction; FPA stays exact, after `graph.depth` steps."""
    with jax.enable_x64(True):
        loss, (params, x) = program.build(), program.arguments()
        graph = pcgraph.trace(loss, params, x, argnums=program.argnums)
    note(graph.summary())
    names = {info.name for info in graph.nodes}
    if names & set(program.marked):
        # Some mark is live (depends on a parameter and reaches the loss): the marks are the
        # only nodes. Otherwise every primitive is a node, as without marks.
        assert names <= set(program.marked)
        assert {info.op for info in graph.nodes} == {"node"}

    def solve(loss, params, x):
        solution = pcgraph.relax(loss, params, x, argnums=program.argnums)
        return solution, jax.grad(loss, program.argnums)(params, x)

    solution, reference = _run(program, solve)
    assert int(solution.stats.num_steps) == graph.depth
    _assert_same_grads(solution.grads, reference)
