"""Sharing across machines: outputs and experiments pushed to a DVC remote by one clone, pulled by another."""

import pytest
from conftest import commit_files, repro, run, set_git_identity
from ruamel.yaml import YAML

pytestmark = pytest.mark.slow


def test_a_second_clone_pulls_the_outputs_and_reruns_nothing(pipeline_run, tmp_path):
    first = pipeline_run  # the pipeline run once, its dvc.lock committed
    remote = tmp_path / "dvc-remote"  # a folder here; s3://... or gs://... in real use, same commands
    origin = tmp_path / "origin.git"
    run(["dvc", "remote", "add", "--default", "shared", str(remote)], cwd=first)
    commit_files(first, {}, "remote configured")
    run(["git", "clone", "-q", "--bare", str(first), str(origin)], cwd=tmp_path)
    run(["git", "remote", "add", "origin", str(origin)], cwd=first)
    run(["dvc", "push"], cwd=first)
    committed_adapter = (first / "models" / "adapter_model.safetensors").read_bytes()
    # An experiment travels too: its git ref to the git remote, its outputs to the DVC remote.
    run(["dvc", "exp", "run", "--name", "lower-lr", "-S", "train.learning_rate=1e-4"], cwd=first)
    run(["dvc", "exp", "push", "origin", "lower-lr"], cwd=first)
    experiment_adapter = (first / "models" / "adapter_model.safetensors").read_bytes()
    assert experiment_adapter != committed_adapter

    second = tmp_path / "second"
    run(["git", "clone", "-q", str(origin), str(second)], cwd=tmp_path)
    set_git_identity(second)
    run(["dvc", "pull"], cwd=second)
    assert (second / "models" / "adapter_model.safetensors").read_bytes() == committed_adapter
    assert repro(second) == set()
    assert "up to date" in run(["dvc", "status"], cwd=second).stdout

    run(["dvc", "exp", "pull", "origin", "lower-lr"], cwd=second)
    assert "lower-lr" in run(["dvc", "exp", "list", "--name-only"], cwd=second).stdout
    run(["dvc", "exp", "apply", "lower-lr"], cwd=second)
    assert YAML(typ="safe").load(second / "params.yaml")["train"]["learning_rate"] == 1e-4
    assert (second / "models" / "adapter_model.safetensors").read_bytes() == experiment_adapter
    assert repro(second) == set()  # the experiment's outputs came from the remote
