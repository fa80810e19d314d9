"""The README's results are the committed metrics': `finsent-results --check` on the project itself."""

import json
import shutil

import pytest
from conftest import PROJECT, run

from finsent.errors import FinsentError
from finsent.experiments.results import BEGIN, END, replace_block, results_markdown


def test_readme_results_match_the_committed_metrics():
    result = run(["finsent-results", "--check"], cwd=PROJECT, check=False)
    assert result.returncode == 0, result.stderr


def test_a_stale_readme_is_caught(tmp_path):
    block = results_markdown(PROJECT)
    stale = block.replace("| **0.", "| **1.", 1)
    assert stale != block
    (tmp_path / "README.md").write_text(f"intro\n\n{stale}\n\nrest\n")
    result = run(
        ["finsent-results", "--check", "--readme", str(tmp_path / "README.md")], cwd=PROJECT, check=False
    )
    assert result.returncode == 1
    assert (
        result.stderr
        == f"error: {tmp_path / 'README.md'}: results differ from metrics/ (run `finsent-results --write`)\n"
    )
    run(["finsent-results", "--write", "--readme", str(tmp_path / "README.md")], cwd=PROJECT)
    assert (tmp_path / "README.md").read_text() == f"intro\n\n{block}\n\nrest\n"


def test_a_readme_without_the_markers_is_named():
    with pytest.raises(FinsentError, match=r"README\.md: no results block"):
        replace_block("no markers here", f"{BEGIN}\n{END}", "README.md")


def test_the_teacher_row_names_an_ensemble_and_one_run(tmp_path):
    shutil.copytree(PROJECT / "metrics", tmp_path / "metrics")
    shutil.copy(PROJECT / "params.yaml", tmp_path / "params.yaml")
    teacher = json.loads((tmp_path / "metrics/teacher.json").read_text())
    runs = list(teacher["runs"].values())  # the committed teacher: an ensemble, each run under `runs`

    def teacher_row() -> str:
        return next(line for line in results_markdown(tmp_path).splitlines() if line.startswith("| teacher"))

    assert f", ensemble of {len(runs)} runs |" in teacher_row()
    assert teacher_row().endswith(f"| {runs[0]['train']['trainable_parameters']:,} |")
    # One run: its summary is the file itself.
    one_run = {key: runs[0][key] for key in ("dev", "validation", "best_epoch", "train")}
    (tmp_path / "metrics/teacher.json").write_text(json.dumps(one_run))
    assert "ensemble" not in teacher_row()
    assert f"| {one_run['validation']['macro_f1']:.3f} |" in teacher_row()
