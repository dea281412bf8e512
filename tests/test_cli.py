"""The `pcgraph` command line: `check`, `demo`, `--version`, exit codes and usage errors."""

import importlib.metadata
import os
import pathlib
import re
import subprocess
import sys
import tomllib

import pytest

import pcgraph
from pcgraph._cli import main

PROBLEMS = """
import jax
import jax.numpy as jnp
import pcgraph

W = jnp.array([[0.3, -0.2, 0.5], [0.1, 0.4, -0.3]])
X = jnp.array([[1.0, 2.0], [0.5, -1.0], [0.2, 0.3]])


def loss(w, x):
    h = pcgraph.node(jnp.tanh(x @ w), name="hidden")
    return jnp.sum(jnp.sin(h @ w.T) ** 2)


def problem():
    return loss, (W, X)


def both_arguments():
    return loss, [W, X], {"argnums": (0, 1)}


def with_aux():
    def loss_and_aux(w, x):
        value = loss(w, x)
        return value, {"value": value}

    return loss_and_aux, (W, X), {"has_aux": True}


def short_il():
    return loss, (W, X), {"algorithm": pcgraph.IL(max_steps=2)}


def float64():
    assert jax.config.jax_enable_x64, "run with --x64"
    return loss, (W.astype(jnp.float64), X.astype(jnp.float64))


def not_a_tuple():
    return loss


def four_things():
    return loss, (W, X), {}, None


def args_not_a_tuple():
    return loss, W


def not_callable():
    return "loss", (W, X)


def unknown_kwargs():
    return loss, (W, X), {"learning_rate": 0.1}


def bad_algorithm():
    return loss, (W, X), {"algorithm": "IL"}


def raises():
    raise RuntimeError("no data today")


def vector_loss():
    return (lambda w, x: x @ w), (W, X)


NOT_A_FUNCTION = 42
"""


@pytest.fixture(scope="module")
def problems(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("cli") / "problems.py"
    path.write_text(PROBLEMS)
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_check_passes_for_fpa(problems, capsys):
    code, out, err = run(capsys, "check", f"{problems}:problem")
    assert code == 0, err
    assert out.startswith("PC (FPA) vs jax.grad")
    assert "PASS: all 1 leaves satisfy |g_pc - g_jax| <= 1e-06 + 1e-05 * |g_jax|" in out
    assert err == ""


def test_check_fails_with_exit_code_1_beyond_tolerance(problems, capsys):
    # Two IL steps are far from equilibrium: the gradient is off by much more than 1e-5.
    code, out, _ = run(capsys, "check", f"{problems}:short_il", "--rtol", "1e-5", "--atol", "1e-6")
    assert code == 1
    assert out.startswith("PC (IL) vs jax.grad")
    assert "FAIL: 1 of 1 leaves exceed |g_pc - g_jax| <= 1e-06 + 1e-05 * |g_jax|: <root>" in out
    relative_error = float(re.search(r"<root>\s+\(2, 3\)\s+\S+\s+(\S+)", out)[1])
    assert relative_error > 1e-3
    # A tolerance looser than the measured error passes the same check.
    loose = f"{2 * relative_error:g}"
    code, out, _ = run(capsys, "check", f"{problems}:short_il", "--rtol", loose, "--atol", "1")
    assert code == 0 and "PASS" in out


def test_algorithm_option_overrides_the_factory(problems, capsys):
    code, out, _ = run(capsys, "check", f"{problems}:short_il", "--algorithm", "fpa")
    assert code == 0 and out.startswith("PC (FPA) vs jax.grad")
    # IL and EPC are approximate: by default each leaf's cosine with jax.grad is checked.
    code, out, _ = run(capsys, "check", f"{problems}:problem", "--algorithm", "il")
    assert out.startswith("PC (IL) vs jax.grad") and code == 0, out
    assert "PASS: all 1 leaves satisfy cosine >= 0.9 with jax.grad (IL is approximate" in out
    code, out, _ = run(capsys, "check", f"{problems}:problem", "--algorithm", "epc")
    assert out.startswith("PC (EPC) vs jax.grad") and code == 0, out
    # An elementwise tolerance still applies when asked for.
    code, out, _ = run(capsys, "check", f"{problems}:problem", "--algorithm", "il",
                       "--rtol", "1e-5")  # fmt: skip
    assert code == 1 and "exceed |g_pc - g_jax| <= 1e-06 + 1e-05 * |g_jax|" in out
    code, out, _ = run(capsys, "check", f"{problems}:problem", "--algorithm", "il",
                       "--min-cosine", "0.9999")  # fmt: skip
    assert code == 1 and "miss cosine >= 0.9999" in out


def test_argnums_from_the_factory_and_the_command_line(problems, capsys):
    code, out, _ = run(capsys, "check", f"{problems}:both_arguments")
    assert code == 0
    assert re.search(r"^\[0\]\s+\(2, 3\)", out, re.M) and re.search(r"^\[1\]\s+\(3, 2\)", out, re.M)
    code, out, _ = run(capsys, "check", f"{problems}:both_arguments", "--argnums", "1")
    assert code == 0
    assert re.search(r"^<root>\s+\(3, 2\)", out, re.M) and "PASS: all 1 leaves" in out


def test_has_aux_from_the_factory(problems, capsys):
    code, out, _ = run(capsys, "check", f"{problems}:with_aux")
    assert code == 0 and "PASS: all 1 leaves" in out


USAGE_ERRORS = {
    "no-colon": ("{dir}/problems.py", r"expected FILE\.py:FACTORY"),
    "no-file": ("{dir}/missing.py:problem", r"no such file: '.*missing\.py'"),
    "no-factory": (
        "{path}:make_problem",
        r"has no attribute 'make_problem'\. Define `def make_problem\(\): return fn, args` "
        r"there\. Callables it defines: .*both_arguments.*problem",
    ),
    "not-callable": ("{path}:NOT_A_FUNCTION", r"NOT_A_FUNCTION is a int, not a function"),
    "raises": ("{path}:raises", r"calling .*:raises\(\) failed: RuntimeError: no data today"),
    "not-a-tuple": ("{path}:not_a_tuple", r"must return a tuple \(fn, args\) or \(fn, args, "),
    "four-things": ("{path}:four_things", r"but it returned a tuple of length 4"),
    "args": ("{path}:args_not_a_tuple", r"returned a ArrayImpl as args; it must be a tuple"),
    "fn": ("{path}:not_callable", r"returned a str as fn; it must be callable"),
    "kwargs": ("{path}:unknown_kwargs", r"unknown keys \['learning_rate'\]; allowed are"),
    "algorithm": ("{path}:bad_algorithm", r"kwargs\['algorithm'\] is a str; it must be a"),
    "vector-loss": ("{path}:vector_loss", r"cannot check .*: pcgraph.grad needs .* scalar loss"),
    "no-module": ("no_such_module_xyz:problem", r"cannot import module 'no_such_module_xyz'"),
}


@pytest.mark.parametrize("case", list(USAGE_ERRORS))
def test_usage_errors_exit_2_with_a_message(problems, capsys, case):
    target, message = USAGE_ERRORS[case]
    target = target.format(dir=problems.parent, path=problems)
    code, out, err = run(capsys, "check", target)
    assert code == 2
    assert out == ""
    assert err.startswith("pcgraph check: error: ")
    assert re.search(message, err), err


def test_import_error_in_the_file_is_a_usage_error(tmp_path, capsys):
    path = tmp_path / "broken.py"
    path.write_text("import numpy\nraise ValueError('half-written file')\n")
    code, _, err = run(capsys, "check", f"{path}:problem")
    assert code == 2
    assert "importing" in err and "failed: ValueError: half-written file" in err


def test_argparse_errors_and_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["check"])
    assert exit_info.value.code == 2
    assert "the following arguments are required: FILE.py:FACTORY" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["check", "x.py:f", "--algorithm", "zil"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'zil'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"pcgraph {pcgraph.__version__}\n"


def _console_script() -> str:
    script = pathlib.Path(sys.executable).parent / "pcgraph"
    assert script.is_file(), f"{script} missing: install pcgraph (`pip install -e .`)"
    return str(script)


@pytest.mark.slow
def test_console_script_entry_point(problems):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    version = subprocess.run(
        [_console_script(), "--version"], capture_output=True, text=True, env=env, check=False
    )
    assert version.returncode == 0 and version.stdout == f"pcgraph {pcgraph.__version__}\n"
    # In float64, FPA equals jax.grad to round-off: a 1e-12 tolerance passes.
    checked = subprocess.run(
        [_console_script(), "check", f"{problems}:float64", "--x64", "--rtol", "1e-12"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=problems.parent,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "PASS: all 1 leaves satisfy |g_pc - g_jax| <= 1e-06 + 1e-12 * |g_jax|" in checked.stdout
    failing = subprocess.run(
        [_console_script(), "check", f"{problems}:short_il", "--rtol", "1e-5"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert failing.returncode == 1 and "FAIL" in failing.stdout


@pytest.mark.slow
def test_demo_trains_on_digits(capsys):
    code, out, _ = run(capsys, "demo", "--epochs", "1")
    assert code == 0
    accuracies = {
        m[1]: float(m[2])
        for m in re.finditer(r"^(backprop|PC \(IL\)|PC \(FPA\))\s+([\d.]+)%", out, re.M)
    }
    assert set(accuracies) == {"backprop", "PC (IL)", "PC (FPA)"}
    # One epoch of Adam already beats chance (10%) by far with every gradient.
    assert min(accuracies.values()) > 50
    assert "PC (FPA) vs jax.grad" in out and "Graph: 2 value nodes, depth 2" in out


def test_version_is_single_sourced_and_in_the_changelog():
    root = pathlib.Path(__file__).parents[1]
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"]
    assert pyproject["project"]["dynamic"] == ["version"]
    assert pyproject["tool"]["hatch"]["version"]["path"] == "pcgraph/__init__.py"
    assert pyproject["project"]["scripts"]["pcgraph"] == "pcgraph._cli:main"
    # The installed metadata was built from __version__ (reinstall after bumping it).
    assert importlib.metadata.version("pcgraph") == pcgraph.__version__
    changelog = (root / "CHANGELOG.md").read_text()
    assert re.search(rf"^## {re.escape(pcgraph.__version__)} - \d{{4}}-\d\d-\d\d$", changelog, re.M)
