"""The pull-request report, written in a throw-away git + DVC repository with a main and a branch."""

import json
import tomllib

import pytest
from conftest import PROJECT, SOURCE_ENV, commit_files, git_dvc_repo, noisy_pair, run
from PIL import Image
from ruamel.yaml import YAML
from test_plots import plot_templates, project_dvc_yaml

from finsent.config import LABELS
from finsent.experiments.compare import compare_predictions, comparison_markdown
from finsent.experiments.report import REPORT_FILE

# The project's own plot definitions and templates, and the metrics files the report compares.
DVC_YAML = project_dvc_yaml("plots", metrics=["metrics/train/metrics.json", "metrics/validation.json"])
PLOTS = {  # title: image
    "Confusion matrix (validation)": "confusion-matrix-validation.png",
    "Confusion matrix, share of each actual class (validation; recall on the diagonal)": (
        "confusion-matrix-share-of-each-actual-class-validation-recall-on-the-diagonal.png"
    ),
    "Precision-recall, one panel per class (validation, one vs rest)": (
        "precision-recall-one-panel-per-class-validation-one-vs-rest.png"
    ),
    "Dev macro-F1 by epoch": "dev-macro-f1-by-epoch.png",
    "Loss by epoch (train and dev)": "loss-by-epoch-train-and-dev.png",
}
CURVES = "Precision-recall, one panel per class (validation, one vs rest)"


def revision_files(predictions, learning_rate: str, dev_f1: float, validation_f1: float) -> dict[str, str]:
    points = [(1.0, 0.2), (0.5, validation_f1), (0.0, 1.0)]  # (recall, precision)
    curves = "class,recall,precision,average_precision\n" + "".join(
        f"{name},{recall},{precision},{validation_f1}\n" for name in LABELS for recall, precision in points
    )
    return {
        "params.yaml": f"train:\n  learning_rate: {learning_rate}\n  epochs: 3\n",
        "metrics/train/metrics.json": json.dumps({"dev": {"macro_f1": dev_f1}}),
        "metrics/validation.json": json.dumps({"macro_f1": validation_f1}),
        "metrics/train/plots/metrics/dev/macro_f1.tsv": f"step\tmacro_f1\n0\t0.5\n1\t{dev_f1}\n",
        "metrics/train/plots/metrics/train/loss.tsv": "step\tloss\n0\t0.9\n1\t0.7\n",
        "metrics/train/plots/metrics/dev/log_loss.tsv": "step\tlog_loss\n0\t0.8\n1\t0.75\n",
        "plots/predictions.csv": predictions.to_csv(index=False),
        "plots/precision_recall.csv": curves,
    }


@pytest.fixture(scope="module")
def predictions():
    return noisy_pair(rows=300, seed=6)


@pytest.fixture
def pull_request(tmp_path, predictions):
    """main, and a branch `change` checked out whose params, metrics and predictions differ."""
    repo = git_dvc_repo(tmp_path / "repo")
    main = {"dvc.yaml": DVC_YAML, **plot_templates(), **revision_files(predictions[0], "0.001", 0.61, 0.6)}
    commit_files(repo, main, "main")
    run(["git", "checkout", "-qb", "change"], cwd=repo)
    commit_files(repo, revision_files(predictions[1], "0.0003", 0.72, 0.7), "change")
    return repo


def report(repo, *args, check=True):
    command = ["python", "-m", "finsent.experiments.report", "report", *args]
    return run(command, cwd=repo, env=SOURCE_ENV, check=check)


def test_report_has_the_diffs_the_significance_and_both_revisions_plots(pull_request, predictions):
    repo = pull_request
    report(repo, "--resamples", "2000", "--image-url", "https://example.invalid/pr-1/")
    text = (repo / "report/report.md").read_text()

    params = text.split("## Params")[1].split("##")[0]
    assert "train.learning_rate" in params and "0.001" in params and "0.0003" in params
    assert "epochs" not in params  # unchanged params are left out
    metrics = " ".join(text.split("## Metrics")[1].split("##")[0].split())  # DVC pads its columns
    assert "| metrics/train/metrics.json | dev.macro_f1 | 0.61 | 0.72 | 0.11 |" in metrics
    assert "| metrics/validation.json | macro_f1 | 0.6 | 0.7 | 0.1 |" in metrics
    expected = compare_predictions(*predictions, names=("main", "workspace"), resamples=2000, seed=0)
    assert comparison_markdown(expected) in text

    images = sorted((repo / "report").glob("*.png"))
    assert [image.name for image in images] == sorted(PLOTS.values())
    assert [line[4:] for line in text.splitlines() if line.startswith("### ")] == list(PLOTS)
    assert "No data" not in text
    for image in images:
        assert f"(https://example.invalid/pr-1/{image.name})" in text
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(image) as png:
            png.load()  # decodes every pixel: fails on a truncated or corrupt file
            assert png.width > 300 and png.height > 200


def test_plot_data_missing_at_the_base_is_noted_and_the_workspace_drawn(pull_request):
    # The first pull request after a plot was added: its data file is new, the base has none.
    run(["git", "checkout", "-q", "main"], cwd=pull_request)
    run(["git", "rm", "-q", "plots/precision_recall.csv"], cwd=pull_request)
    run(["git", "commit", "-qm", "no precision-recall table yet"], cwd=pull_request)
    run(["git", "checkout", "-q", "change"], cwd=pull_request)
    report(pull_request, "--resamples", "200")
    text = (pull_request / "report/report.md").read_text()
    section = text.split(f"### {CURVES}\n")[1].split("###")[0]
    image = PLOTS[CURVES]
    assert section == f"\nNo data: `plots/precision_recall.csv` at main.\n\n![{CURVES}]({image})\n\n"
    assert (pull_request / "report" / image).is_file()


def test_bad_base_revision_is_named(pull_request):
    result = report(pull_request, "--base", "nope", check=False)
    assert (result.returncode, result.stderr.strip()) == (1, "error: revision 'nope' does not exist")
    assert not (pull_request / "report").exists()


def test_metrics_missing_on_main_are_named(pull_request):
    run(["git", "checkout", "-q", "main"], cwd=pull_request)
    run(["git", "rm", "-q", "metrics/validation.json"], cwd=pull_request)
    run(["git", "commit", "-qm", "no validation metrics"], cwd=pull_request)
    run(["git", "checkout", "-q", "change"], cwd=pull_request)
    result = report(pull_request, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: metrics/validation.json: missing at revision 'main'"
    assert not (pull_request / "report").exists()


def test_workflow_runs_the_checks_and_posts_the_report_of_this_package():
    workflow = YAML(typ="safe").load((PROJECT / ".github/workflows/pr-report.yml").read_text())
    scripts = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["finsent-pr-report"] == "finsent.experiments.report:cli"
    assert "pull_request" in workflow["on"]
    # The pull request's code runs `make test`: no write token may be left in .git/config for it.
    checkout = next(
        step for step in workflow["jobs"]["report"]["steps"] if "checkout" in step.get("uses", "")
    )
    assert checkout["with"]["persist-credentials"] is False
    steps = workflow["jobs"]["report"]["steps"]
    commands = "\n".join(step.get("run", "") for step in steps)
    assert "make test" in commands
    assert ".venv/bin/finsent-pr-report pr-report " in commands
    posting = next(step for step in steps if "github-script" in step.get("uses", ""))
    assert f'"pr-report/{REPORT_FILE}"' in posting["with"]["script"]
    assert "updateComment" in posting["with"]["script"]
