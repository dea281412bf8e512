"""The character-level transformer example: FPA trains exactly as backprop does, and the
`--quick` run's predictive coding lowers its training loss."""

import dataclasses
import importlib.util
import pathlib

import equinox as eqx
import jax
import numpy as np
import pytest

import pcgraph

EXAMPLE = pathlib.Path(__file__).parents[1] / "examples" / "char_transformer.py"
TEXT = pathlib.Path(__file__).parents[2] / "shared" / "datasets" / "tinyshakespeare" / "input.txt"


def _example():
    spec = importlib.util.spec_from_file_location("char_transformer", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _corpus() -> str:
    """Tiny Shakespeare's start when present, else a generated text of words."""
    if TEXT.is_file():
        return TEXT.read_text(encoding="utf-8")[:20_000]
    rng = np.random.default_rng(0)
    words = ["the", "king", "and", "queen", "of", "love", "is", "not", "so", "sweet"]
    return " ".join(rng.choice(words, 4000)) + "\n"


def test_full_size_model_matches_fabricpcs_parameter_count():
    example = _example()
    model = example.CharTransformer(65, example.Config(), key=jax.random.key(0))
    count = example.count_parameters(model)
    assert abs(count - example.FABRICPC_PARAMETERS) <= 0.1 * example.FABRICPC_PARAMETERS, count


@pytest.mark.slow
def test_fpa_trains_as_backprop_does():
    """Same seed, same batches, float32: the training losses of FPA and backprop agree to
    1e-4 relative at each of the first 100 steps."""
    example = _example()
    data = pcgraph.datasets.text_dataset(_corpus())
    config = dataclasses.replace(example.QUICK, width=16, heads=2, mlp=32, context=16)
    model = example.CharTransformer(data.vocab_size, config, key=jax.random.key(0))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    losses = {}
    for name, algorithm in (("backprop", None), ("fpa", pcgraph.FPA())):
        optimizer = example.make_optimizer(config, 100)
        step = example.make_step(name, algorithm, optimizer, static)
        p, state = params, optimizer.init(params)
        batches = pcgraph.datasets.windows(data.train, config.context, 8, seed=1)
        losses[name] = []
        for _ in range(100):
            p, state, loss = step(p, state, *next(batches))
            losses[name].append(float(loss))
    bp, fpa = np.asarray(losses["backprop"]), np.asarray(losses["fpa"])
    assert bp[-10:].mean() < bp[:10].mean() - 0.3  # it trains
    np.testing.assert_allclose(fpa, bp, rtol=1e-4)


@pytest.mark.slow
def test_quick_run_pc_loss_falls(tmp_path):
    if not TEXT.is_file():
        pytest.skip("Tiny Shakespeare is not in ../shared/datasets")
    example = _example()
    results = example.main(
        ["--quick", "--text", str(TEXT), "--algorithm", "backprop,epc,il", "--steps", "200",
         "--figure", str(tmp_path / "quick.png"), "--sample-length", "20"]
    )  # fmt: skip
    for name in ("epc", "il"):
        loss = np.asarray(results[name]["loss"])
        assert len(loss) == 200, name  # no relaxation diverged
        assert loss[-20:].mean() < loss[:20].mean() - 0.5, name
    # ePC's gradient is close to backprop's: the same perplexity to a few percent
    assert results["epc"]["test_ppl"] < results["backprop"]["test_ppl"] * 1.05
    assert (tmp_path / "quick.png").is_file()
