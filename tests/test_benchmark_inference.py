"""scripts/benchmark_inference.py's arguments: a bad combination is refused before any work."""

import sys

import pytest
from conftest import PROJECT, run
from support import SOURCE_ENV


@pytest.mark.parametrize(
    "args",
    [["--layers", "6"], ["--pretrained", "sentence-transformers/all-mpnet-base-v2", "--layers", "0"]],
    ids=["without-pretrained", "zero"],
)
def test_layers_needs_a_pretrained_model_and_a_positive_count(args):
    script = PROJECT / "scripts/benchmark_inference.py"
    env = {"PYTHONPATH": f"{SOURCE_ENV['PYTHONPATH']}:{PROJECT}"}  # as its docstring runs it
    result = run([sys.executable, str(script), *args], cwd=PROJECT, env=env, check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].endswith("--layers: a number of layers above 0, with --pretrained")
