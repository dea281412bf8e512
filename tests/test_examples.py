"""The unchanged-model example: an unmarked equinox CNN trained with IL's defaults reaches
backprop's held-out accuracy on digits."""

import pathlib
import re
import subprocess
import sys

import pytest

EXAMPLE = pathlib.Path(__file__).parents[1] / "examples" / "unchanged_models.py"


@pytest.mark.slow  # about 75 s on 2 cores
def test_unchanged_cnn_trains_with_il_defaults_like_backprop():
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout.replace("\r", "\n")
    assert "placement: layers" in output
    cosine = float(re.search(r"IL vs jax.grad at initialisation: cosine ([0-9.]+)", output)[1])
    assert cosine >= 0.99
    found = re.search(r"backprop ([0-9.]+), PC \(IL\) ([0-9.]+)", output)
    backprop, il = float(found[1]), float(found[2])
    assert backprop > 0.85
    assert abs(backprop - il) <= 0.02
