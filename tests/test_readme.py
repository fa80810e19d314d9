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


def test_an_ensemble_teacher_is_named_as_one(tmp_path):
    shutil.copytree(PROJECT / "metrics", tmp_path / "metrics")
    shutil.copy(PROJECT / "params.yaml", tmp_path / "params.yaml")
    teacher = json.loads((tmp_path / "metrics/teacher.json").read_text())
    run_summary = {key: teacher.pop(key) for key in ("best_epoch", "train")} | {"dev": teacher["dev"]}
    teacher["runs"] = {f"seed_{seed}": run_summary for seed in (42, 43, 44)}
    (tmp_path / "metrics/teacher.json").write_text(json.dumps(teacher))
    row = next(line for line in results_markdown(tmp_path).splitlines() if line.startswith("| teacher"))
    assert ", ensemble of 3 runs |" in row
    assert row.endswith(f"| {run_summary['train']['trainable_parameters']:,} |")
