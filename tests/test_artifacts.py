"""The model registry entries of dvc.yaml: a registered version of each model is fetched by name.

A throw-away git + DVC repository holds the project's `artifacts:` (and the `vars` their paths name);
its model folders are small stand-ins tracked with `dvc add` (the real ones are the train and export
stages' outputs, which would need the whole pipeline), pushed to a DVC remote in a local folder.
"""

import shutil

import pytest
from conftest import commit_files, git_dvc_repo, run
from test_plots import project_dvc_yaml

MODELS = {
    "finsent-classifier": {"models/adapter_model.safetensors": "adapter", "models/base/config.json": "{}"},
    "finsent-classifier-onnx": {"exported/model_int8.onnx": "int8", "exported/tokenizer.json": "{}"},
}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """The repository with a version of each model registered (a git tag, as `gto register` makes)."""
    tmp_path = tmp_path_factory.mktemp("registry")
    repo = git_dvc_repo(tmp_path / "registry")
    run(["dvc", "remote", "add", "--default", "shared", str(tmp_path / "dvc-remote")], cwd=repo)
    for model in MODELS.values():
        for path, content in model.items():
            (repo / path).parent.mkdir(parents=True, exist_ok=True)
            (repo / path).write_text(content)
    run(["dvc", "add", "-q", "models", "exported"], cwd=repo)
    commit_files(repo, {"dvc.yaml": project_dvc_yaml("artifacts")}, "models tracked by DVC")
    run(["dvc", "push", "-q"], cwd=repo)
    shutil.rmtree(repo / ".dvc/cache")  # what is fetched can only come from the remote
    for name in MODELS:
        run(["gto", "register", name, "--version", "v1.0.0"], cwd=repo)
    with pytest.MonkeyPatch.context() as env:
        env.delenv("DVC_STUDIO_TOKEN", raising=False)  # with a token, DVC would ask Studio first
        yield repo


def test_artifacts_are_models_with_a_description_and_labels(registry):
    from dvc.repo import Repo

    with Repo(str(registry)) as repo:
        artifacts = repo.artifacts.read()["dvc.yaml"]
    assert {name: artifact.path for name, artifact in artifacts.items()} == {
        "finsent-classifier": "models",
        "finsent-classifier-onnx": "exported",
    }
    for artifact, (label, word) in zip(
        artifacts.values(), [("pytorch", "LoRA"), ("onnx", "ONNX")], strict=True
    ):
        assert artifact.type == "model"
        assert word in artifact.desc
        assert {"sentiment", "finance", "text-classification", label} <= set(artifact.labels)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_registered_version_is_fetched_by_name_from_the_remote(registry, tmp_path, name):
    out = tmp_path / "fetched"
    result = run(
        ["dvc", "artifacts", "get", str(registry), name, "--rev", "v1.0.0", "-o", str(out)], cwd=tmp_path
    )
    assert result.stdout.strip() == f"Downloaded {len(MODELS[name])} file(s) to '{out}'"
    for path, content in MODELS[name].items():
        assert (out / path.split("/", 1)[1]).read_text() == content
