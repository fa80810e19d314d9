"""The pull-request report, written in a throw-away git + DVC repository with a main and a branch."""

import json
import shutil
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest
from conftest import PROJECT, SOURCE_ENV, commit_files, git_dvc_repo, noisy_pair, run, run_here
from PIL import Image
from ruamel.yaml import YAML
from test_plots import cells_by_revision, groups, plot_templates, project_dvc_yaml, texts

from finsent.config import LABELS
from finsent.experiments.compare import compare_predictions
from finsent.experiments.plots import draw_png, draw_svg, dvc_plots
from finsent.experiments.report import (
    REPORT_FILE,
    VERDICT_RULE,
    WORST_ROWS,
    audit_markdown,
    params_markdown,
    verdict,
)
from finsent.experiments.report import cli as finsent_pr_report

# The project's own plot definitions and templates, and the metrics files the report compares.
METRICS_FILES = ["metrics/train/metrics.json", "metrics/validation.json", "metrics/export.json"]
DVC_YAML = project_dvc_yaml("plots", metrics=METRICS_FILES)
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
    "Reliability (validation, 15 confidence bins)": "reliability-validation-15-confidence-bins.png",
    "Label noise estimated by the audit (train; share of each true class carrying each label)": (
        "label-noise-estimated-by-the-audit-train-share-of-each-true-class-carrying-each-label.png"
    ),
}
COUNTS, _, CURVES, DEV_F1, _, _, _ = PLOTS
LEAD_LINES = 25


def revision_files(predictions, learning_rate: str, dev_f1: float, int8_agreement: float) -> dict[str, str]:
    validation_f1 = round(dev_f1 - 0.01, 2)
    points = [(1.0, 0.2), (0.5, validation_f1), (0.0, 1.0)]  # (recall, precision)
    curves = "class,recall,precision,average_precision\n" + "".join(
        f"{name},{recall},{precision},{validation_f1}\n" for name in LABELS for recall, precision in points
    )
    train = {"loss": 0.4, "runtime_s": 900 / dev_f1, "samples_per_second": 9 * dev_f1}
    int8 = {"agreement_with_pytorch": int8_agreement, "macro_f1": validation_f1 - 0.002}
    return {
        "params.yaml": f"train:\n  learning_rate: {learning_rate}\n  epochs: 3\n",
        "metrics/train/metrics.json": json.dumps({"train": train, "dev": {"macro_f1": dev_f1}}),
        "metrics/validation.json": json.dumps({"macro_f1": validation_f1}),
        "metrics/export.json": json.dumps({"onnx_int8": {"batch_1": int8, "file_mb": 56.65}}),
        "metrics/train/plots/metrics/dev/macro_f1.tsv": f"step\tmacro_f1\n0\t0.5\n1\t{dev_f1}\n",
        "metrics/train/plots/metrics/train/loss.tsv": "step\tloss\n0\t0.9\n1\t0.7\n",
        "metrics/train/plots/metrics/dev/log_loss.tsv": "step\tlog_loss\n0\t0.8\n1\t0.75\n",
        "plots/predictions.csv": predictions.to_csv(index=False),
        "plots/precision_recall.csv": curves,
        "plots/reliability.csv": f"bin,confidence,accuracy,count\n12,0.78,{validation_f1},300\n",
        "data/audit/noise_matrix.csv": "true_label,given_label,share,rows\n"
        + "".join(f"{true},{given},{float(true == given)},10\n" for true in LABELS for given in LABELS),
    }


@pytest.fixture(scope="module")
def predictions():
    return noisy_pair(rows=300, seed=6)


@pytest.fixture(scope="module")
def pull_request_made(tmp_path_factory, predictions) -> Path:
    """main, and a branch `change` checked out whose params, metrics and predictions differ."""
    repo = git_dvc_repo(tmp_path_factory.mktemp("pull-request") / "repo")
    main = {"dvc.yaml": DVC_YAML, **plot_templates(), **revision_files(predictions[0], "0.001", 0.61, 0.9925)}
    commit_files(repo, main, "main")
    run(["git", "checkout", "-qb", "change"], cwd=repo)
    commit_files(repo, revision_files(predictions[1], "0.0003", 0.72, 0.995), "change")
    return repo


@pytest.fixture
def pull_request(pull_request_made, tmp_path) -> Path:
    """This test's own copy of `pull_request_made`."""
    repo = tmp_path / "repo"
    shutil.copytree(pull_request_made, repo, symlinks=True)
    return repo


def report(repo, *args):
    command = ["python", "-m", "finsent.experiments.report", "report", *args]
    return run(command, cwd=repo, env=SOURCE_ENV)


def report_here(repo, *args, check=True):
    """`finsent-pr-report report ARGS` in `repo`, run in this process (`run_here`): the first test
    runs the command as a real process."""
    result = run_here(finsent_pr_report, ["finsent-pr-report", "report", *args], repo)
    assert result.returncode == 0 or not check, result.stderr
    return result


def test_report_leads_with_the_verdict_the_headline_figures_and_the_params_changed(pull_request, predictions):
    repo = pull_request
    report(repo, "--resamples", "2000", "--image-url", "https://example.invalid/pr-1/")
    text = (repo / "report/report.md").read_text()
    lines = text.splitlines()
    lead = "\n".join(lines[:LEAD_LINES])

    c = compare_predictions(*predictions, names=("main", "workspace"), resamples=2000, seed=0)
    accuracy, f1 = c.metrics
    assert (c.rows, c.mcnemar_p < 0.05, f1.ci_low > 0) == (300, True, True)  # a clear change
    assert lines[2] == (
        f"**Better**: macro-F1 {f1.difference:+.3f} [{f1.ci_low:+.3f}, {f1.ci_high:+.3f}], "
        f"McNemar p = {c.mcnemar_p:.2g}"
    )
    headline = [
        "| validation (300 rows) | main | workspace | difference [95% interval] |",
        "|---|---|---|---|",
        f"| macro-F1 | {f1.baseline:.3f} | {f1.candidate:.3f} "
        f"| {f1.difference:+.3f} [{f1.ci_low:+.3f}, {f1.ci_high:+.3f}] |",
        f"| accuracy | {accuracy.baseline:.3f} | {accuracy.candidate:.3f} "
        f"| {accuracy.difference:+.3f} [{accuracy.ci_low:+.3f}, {accuracy.ci_high:+.3f}] |",
        "| int8 ONNX gives PyTorch's label | 99.25% | 99.50% | |",
    ]
    assert "\n".join(headline) in lead
    assert (
        f"McNemar's exact test (accuracy): {c.baseline_only_correct} rows right only in main, "
        f"{c.candidate_only_correct} right only in workspace; p = {c.mcnemar_p:.4g}." in lead
    )
    params = (
        "| param changed | main | workspace |\n|---|---|---|\n| `train.learning_rate` | 0.001 | 0.0003 |\n\n"
    )
    assert params in lead  # unchanged params (train.epochs) are left out
    assert VERDICT_RULE in lead
    assert "300 rows paired by id; paired bootstrap of 2000 resamples (seed 0)" in lead

    # Every metric of both revisions, changed or not, in a collapsed section; no timing anywhere.
    details = text.split("<details><summary>")[1].split("</details>")[0]
    assert "<details><summary>Every metric of both revisions</summary>" in lines
    assert "<details open" not in text  # collapsed
    rows = {" ".join(line.split()) for line in details.splitlines() if line.startswith("| metrics/")}
    assert rows == {
        "| metrics/train/metrics.json | dev.macro_f1 | 0.61 | 0.72 | 0.11 |",
        "| metrics/train/metrics.json | train.loss | 0.4 | 0.4 | 0.0 |",
        "| metrics/validation.json | macro_f1 | 0.6 | 0.71 | 0.11 |",
        "| metrics/export.json | onnx_int8.batch_1.agreement_with_pytorch | 0.9925 | 0.995 | 0.0025 |",
        "| metrics/export.json | onnx_int8.batch_1.macro_f1 | 0.598 | 0.708 | 0.11 |",
        "| metrics/export.json | onnx_int8.file_mb | 56.65 | 56.65 | 0.0 |",
    }
    assert "runtime_s" not in text and "samples_per_second" not in text

    images = sorted((repo / "report").glob("*.png"))
    assert [image.name for image in images] == sorted(PLOTS.values())
    assert [line[4:] for line in lines if line.startswith("### ")] == list(PLOTS)
    assert "No data" not in text
    for image in images:
        assert f"(https://example.invalid/pr-1/{image.name})" in text
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(image) as png:
            png.load()  # decodes every pixel: fails on a truncated or corrupt file
            assert png.width > 300 and png.height > 200


def test_plots_draw_the_base_first_whatever_its_name(pull_request, monkeypatch):
    # A base that sorts after "workspace": first because it is the base, not by the alphabet.
    run(["git", "tag", "x-base", "main"], cwd=pull_request)
    report_here(pull_request, "--base", "x-base", "--resamples", "200")
    assert "## Plots: `x-base` first (left, first colour), then the workspace" in (
        (pull_request / "report/report.md").read_text()
    )

    monkeypatch.chdir(pull_request)
    plots = {plot.title: plot for plot in dvc_plots(["x-base"])}
    for title, image in PLOTS.items():  # the report's images are these plots, drawn
        assert (pull_request / "report" / image).read_bytes() == draw_png(plots[title])
    svgs = {title: ET.fromstring(draw_svg(plot)) for title, plot in plots.items()}
    assert list(cells_by_revision(svgs[COUNTS])) == ["x-base", "workspace"]  # left, then right
    legends = [texts(legend) for legend in groups(svgs[CURVES], "role-legend")]
    assert legends == [["x-base: AP 0.600", "workspace: AP 0.710"]] * len(LABELS)
    (legend,) = groups(svgs[DEV_F1], "role-legend")
    assert texts(legend) == ["x-base", "workspace", "rev"]


def test_verdict_follows_the_interval_of_the_macro_f1_difference():
    clear = noisy_pair(rows=300, seed=6)
    for word, pair in [("Better", clear), ("Worse", clear[::-1])]:
        c = compare_predictions(*pair, resamples=2000)
        f1 = c.metrics[1]
        assert verdict(c) == (
            f"**{word}**: macro-F1 {f1.difference:+.3f} [{f1.ci_low:+.3f}, {f1.ci_high:+.3f}], "
            f"McNemar p = {c.mcnemar_p:.2g}"
        )
    # McNemar finds a change of accuracy, macro-F1's interval holds 0: the verdict follows macro-F1.
    c = compare_predictions(*noisy_pair(rows=300, seed=0), resamples=2000)
    accuracy, f1 = c.metrics
    assert c.mcnemar_p < 0.05 and accuracy.ci_low > 0 and f1.ci_low < 0 < f1.ci_high
    assert verdict(c).startswith("**No significant difference**: macro-F1 ")


def test_a_param_value_stays_in_its_cell():
    # A multi-line string or a bar in a value (a YAML block, a note) would otherwise end the row.
    changed = {"params.yaml": {"note": {"old": None, "new": "a | b\nc"}, "lr": {"old": 1e-3, "new": 0.0005}}}
    assert params_markdown(changed, "main").splitlines()[2:] == [
        "| `lr` | 0.001 | 0.0005 |",
        "| `note` | - | a \\| b c |",
    ]
    assert params_markdown({}, "main") == "No param changed.\n"


def test_identical_predictions_make_no_significant_difference():
    frame = noisy_pair(rows=100, seed=1)[0]
    c = compare_predictions(frame, frame.copy(), resamples=50)
    assert verdict(c) == "**No significant difference**: macro-F1 +0.000 [+0.000, +0.000], McNemar p = 1"


def test_plot_data_missing_at_the_base_is_noted_and_the_workspace_drawn(pull_request):
    # The first pull request after a plot was added: its data file is new, the base has none.
    run(["git", "checkout", "-q", "main"], cwd=pull_request)
    run(["git", "rm", "-q", "plots/precision_recall.csv"], cwd=pull_request)
    run(["git", "commit", "-qm", "no precision-recall table yet"], cwd=pull_request)
    run(["git", "checkout", "-q", "change"], cwd=pull_request)
    report_here(pull_request, "--resamples", "200")
    text = (pull_request / "report/report.md").read_text()
    section = text.split(f"### {CURVES}\n")[1].split("###")[0]
    image = PLOTS[CURVES]
    assert section == f"\nNo data: `plots/precision_recall.csv` at main.\n\n![{CURVES}]({image})\n\n"
    assert (pull_request / "report" / image).is_file()


def test_bad_base_revision_is_named(pull_request):
    result = report_here(pull_request, "--base", "nope", check=False)
    assert (result.returncode, result.stderr.strip()) == (
        1,
        "error: dvc metrics diff nope --all --json: unknown Git revision 'nope'",
    )
    assert not (pull_request / "report").exists()


def test_metrics_missing_on_main_are_named(pull_request):
    run(["git", "checkout", "-q", "main"], cwd=pull_request)
    run(["git", "rm", "-q", "metrics/validation.json"], cwd=pull_request)
    run(["git", "commit", "-qm", "no validation metrics"], cwd=pull_request)
    run(["git", "checkout", "-q", "change"], cwd=pull_request)
    result = report_here(pull_request, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: main:metrics/validation.json: no metrics at revision main (missing, unreadable, or not in "
        "its dvc.yaml)"
    )
    assert not (pull_request / "report").exists()


def test_workflow_runs_the_checks_read_only_and_publishes_the_report_in_a_job_of_its_own():
    workflow = YAML(typ="safe").load((PROJECT / ".github/workflows/pr-report.yml").read_text())
    scripts = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["finsent-pr-report"] == "finsent.experiments.report:cli"
    assert "pull_request" in workflow["on"]
    assert workflow["permissions"] == {"contents": "read"}
    checks, publish = workflow["jobs"]["checks"], workflow["jobs"]["publish"]
    # The pull request's code (make test, the report) runs with a read-only token, not left in .git/config.
    assert checks["permissions"] == {"contents": "read"}
    checkout = next(step for step in checks["steps"] if "checkout" in step.get("uses", ""))
    assert checkout["with"]["persist-credentials"] is False
    commands = "\n".join(step.get("run", "") for step in checks["steps"])
    assert "make test" in commands
    assert ".venv/bin/finsent-pr-report pr-report " in commands
    upload = next(step for step in checks["steps"] if "upload-artifact" in step.get("uses", ""))
    assert (upload["with"]["name"], upload["with"]["path"]) == ("pr-report", "pr-report/")
    # The job with the write token runs none of it: no checkout, only the artifact.
    assert publish["needs"] == "checks"
    assert publish["permissions"] == {"contents": "write", "pull-requests": "write", "issues": "write"}
    assert not any("checkout" in step.get("uses", "") for step in publish["steps"])
    publish_commands = "\n".join(step.get("run", "") for step in publish["steps"])
    assert not {"make", "pip", "python", ".venv"} & set(publish_commands.replace("/", " ").split())
    download = next(step for step in publish["steps"] if "download-artifact" in step.get("uses", ""))
    assert download["with"] == {"name": "pr-report", "path": "pr-report"}
    posting = next(step for step in publish["steps"] if "github-script" in step.get("uses", ""))
    assert f'"pr-report/{REPORT_FILE}"' in posting["with"]["script"]
    assert "updateComment" in posting["with"]["script"]


def doubtful_rows(ids: list[int]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": ids,
            "text": [f"tweet {i} | $AAPL" for i in ids],
            "label": "Bullish",
            "suggested": "Neutral",
            "quality": [0.01 * (rank + 1) for rank in range(len(ids))],
        }
    )


def test_the_audit_section_shows_the_worst_doubtful_rows_only_where_they_changed():
    same = {"train": doubtful_rows([4, 2]), "validation": doubtful_rows([9])}
    assert audit_markdown(same, same, "main") == ""

    changed = {"train": doubtful_rows([2, 7, *range(100, 120)]), "validation": doubtful_rows([9])}
    section = audit_markdown(same, changed, "main")
    assert section.startswith("## Label audit: doubtful rows changed (`data/audit/`)\n")
    assert "**train**: 2 at `main`, 22 now (21 added, 1 removed)." in section
    assert "**validation**: 1 at `main`, 1 now (0 added, 0 removed)." in section
    train_table = section.split("**train**")[1].split("**validation**")[0]
    rows = [line for line in train_table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == WORST_ROWS
    assert rows[0] == "| 2 | Bullish | Neutral | 0.010 | tweet 2 \\| $AAPL |"  # the bar stays in its cell

    first_audit = audit_markdown({}, changed, "main")
    assert "**train**: - at `main`, 22 now." in first_audit


def test_a_metrics_file_the_change_adds_is_reported_without_a_base_value(pull_request):
    yaml = YAML()
    pipeline = yaml.load(pull_request / "dvc.yaml")
    pipeline["metrics"].append("metrics/audit.json")
    yaml.dump(pipeline, pull_request / "dvc.yaml")
    commit_files(pull_request, {"metrics/audit.json": json.dumps({"train": {"doubtful": 759}})}, "audit")
    report(pull_request)
    assert (
        "| metrics/audit.json | train.doubtful | - | 759 | - |"
        in (pull_request / "report/report.md").read_text()
    )
