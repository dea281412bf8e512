"""The real-data benchmark scripts (`benchmarks/pc_benchmark/`): `--quick` of every script on
small generated MNIST-format IDX files, the refusal to run without data, and the renderer."""

import json
import pathlib
import struct
import subprocess
import sys

import numpy as np
import pytest

SCRIPTS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "pc_benchmark"


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture(scope="module")
def idx_folder(tmp_path_factory):
    """A small MNIST-format folder: 1200 training and 200 test images whose class is a bright
    square at a class-dependent place, so a few steps of training beat chance."""
    path = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    for split, n in (("train", 1200), ("t10k", 200)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, 28, 28))
        for i, label in enumerate(labels):
            row, col = divmod(int(label), 5)
            images[i, 4 + 10 * row : 12 + 10 * row, 1 + 5 * col : 5 + 5 * col] = 250
        (path / f"{split}-images-idx3-ubyte").write_bytes(_idx(images))
        (path / f"{split}-labels-idx1-ubyte").write_bytes(_idx(labels))
    return path


def _run(script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / script), *args],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _runs(path: pathlib.Path) -> list[dict]:
    return list(json.loads(path.read_text())["runs"].values())


@pytest.mark.slow
def test_pcx_protocol_quick(idx_folder, tmp_path):
    _run("pcx_protocol.py", "--dataset", "mnist", "--data-dir", str(idx_folder), "--quick",
         "--out", str(tmp_path))  # fmt: skip
    for config in ("pc_se", "pc_ce", "ipc_se", "bp_se", "bp_ce"):
        (run,) = _runs(tmp_path / f"pcx_mnist_{config}_quick.json")
        assert len(run["test_acc"]) == 1 and run["epochs"] == 1
        assert np.isfinite(run["test_acc"][0]) and run["test_acc"][0] > 10, (config, run)


@pytest.mark.slow
def test_jpc_anchors_quick(idx_folder, tmp_path):
    _run("jpc_anchors.py", "--data-dir", str(idx_folder), "--quick", "--out", str(tmp_path))
    for name in ("pcn", "epc", "mupc", "bpc"):
        (run,) = _runs(tmp_path / f"jpc_mnist_{name}_quick.json")
        assert run["iterations"] == 5 and np.isfinite(run["test_acc"])


@pytest.mark.slow
def test_mupc_depth_quick(idx_folder, tmp_path):
    _run("mupc_depth.py", "--data-dir", str(idx_folder), "--quick", "--algorithms", "epc", "bp",
         "--out", str(tmp_path))  # fmt: skip
    for algorithm in ("epc", "bp"):
        (run,) = _runs(tmp_path / f"mupc8_mnist_{algorithm}_quick.json")
        assert run["depth"] == 8 and len(run["test_acc"]) == 1
        assert np.isfinite(run["test_acc"][0])


@pytest.mark.slow
@pytest.mark.parametrize("script", ["pcx_protocol.py", "jpc_anchors.py", "mupc_depth.py"])
def test_scripts_refuse_to_run_without_data(script, tmp_path):
    result = _run(script, "--dataset", "mnist", "--quick", "--out", str(tmp_path), check=False)
    assert result.returncode != 0 and "--data-dir is required" in result.stderr
    result = _run(script, "--dataset", "mnist", "--data-dir", str(tmp_path), "--quick",
                  "--out", str(tmp_path), check=False)  # fmt: skip
    assert result.returncode != 0 and "does not hold the mnist IDX files" in result.stderr
    assert not list(tmp_path.glob("*.json"))


@pytest.mark.slow
def test_render_writes_tables_and_figures(idx_folder, tmp_path):
    results = tmp_path / "results"
    _run("pcx_protocol.py", "--dataset", "mnist", "--data-dir", str(idx_folder), "--epochs", "2",
         "--configs", "pc_se", "bp_se", "--seeds", "0", "1", "--out", str(results))  # fmt: skip
    doc = tmp_path / "page.md"
    doc.write_text(
        "intro\n<!-- BEGIN pcx -->\nold\n<!-- END pcx -->\n<!-- BEGIN jpc -->\n<!-- END jpc -->\n"
        "<!-- BEGIN mupc -->\n<!-- END mupc -->\nend\n"
    )
    _run("render.py", "--results", str(results), "--doc", str(doc), "--figures", str(tmp_path))
    text = doc.read_text()
    assert "old" not in text and text.startswith("intro\n") and text.endswith("end\n")
    pc_se = next(line for line in text.splitlines() if line.startswith("| MNIST | PC-SE |"))
    assert "| 2 | 2 |" in pc_se and "±" in pc_se and "98.42" in pc_se
    assert "| MNIST | iPC-SE | – | – | not run" in text
    assert "| mupc |" in text and "not run" in text
    assert (tmp_path / "pc_benchmark_pcx.png").stat().st_size > 0
    assert (tmp_path / "pc_benchmark_anchors.png").stat().st_size > 0
