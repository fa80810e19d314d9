"""The README's results are the committed metrics': `finsent-results --check` on the project itself."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import PROJECT, run

from finsent.audit_files import AUDIT_SCRIPT
from finsent.distillation import CODE_KEY, TEACHER_SCRIPT, teacher_code_sha256
from finsent.errors import FinsentError
from finsent.experiments.results import BEGIN, END, replace_block, results_markdown
from finsent.experiments.speed_tables import speed_table


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
        result.stderr == f"error: {tmp_path / 'README.md'}: tables differ from metrics/ and benchmarks/ "
        "(run `finsent-results --write`)\n"
    )
    run(["finsent-results", "--write", "--readme", str(tmp_path / "README.md")], cwd=PROJECT)
    assert (tmp_path / "README.md").read_text() == f"intro\n\n{block}\n\nrest\n"


def test_a_readme_without_the_markers_is_named():
    with pytest.raises(FinsentError, match=r"README\.md: no results block"):
        replace_block("no markers here", f"{BEGIN}\n{END}", "README.md")


def results_tree(parent: Path) -> Path:
    """What `finsent-results` reads, copied into a folder of `parent`: the metrics, params.yaml and the
    teacher's and the audit's code."""
    folder = parent / "tree"
    shutil.copytree(PROJECT / "metrics", folder / "metrics")
    shutil.copy(PROJECT / "params.yaml", folder / "params.yaml")
    shutil.copytree(PROJECT / "src", folder / "src", ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "stages").mkdir()
    for script in (TEACHER_SCRIPT, AUDIT_SCRIPT):
        shutil.copy(PROJECT / script, folder / script)
    return folder


def test_the_audit_row_says_when_the_code_it_ran_has_changed(tmp_path):
    root = results_tree(tmp_path)
    audit_row = next(line for line in results_markdown(root).splitlines() if line.startswith("| label audit"))
    assert audit_row.startswith("| label audit (`make audit`): doubtful rows |")
    audit = root / "src/finsent/audit.py"
    audit.write_text(audit.read_text() + "\n# an edit of the audit's code\n")
    audit_row = next(line for line in results_markdown(root).splitlines() if line.startswith("| label audit"))
    assert "(its code has changed since it was made: `make audit` reruns it)" in audit_row


def teacher_row(root: Path) -> str:
    return next(line for line in results_markdown(root).splitlines() if line.startswith("| teacher"))


def test_the_teacher_row_names_an_ensemble_and_one_run(tmp_path):
    root = results_tree(tmp_path)
    teacher = json.loads((root / "metrics/teacher.json").read_text())
    runs = list(teacher["runs"].values())  # the committed teacher: an ensemble, each run under `runs`

    assert f", ensemble of {len(runs)} runs" in teacher_row(root)
    assert teacher_row(root).endswith(f"| {runs[0]['train']['trainable_parameters']:,} |")
    # One run: its summary is the file itself.
    one_run = {key: runs[0][key] for key in ("dev", "validation", "best_epoch", "train")}
    (root / "metrics/teacher.json").write_text(json.dumps(one_run))
    assert "ensemble" not in teacher_row(root)
    assert f"| {one_run['validation']['macro_f1']:.3f} |" in teacher_row(root)


def test_the_teacher_row_says_when_the_code_it_ran_has_changed(tmp_path):
    root = results_tree(tmp_path)
    metrics_file = root / "metrics/teacher.json"
    teacher = json.loads(metrics_file.read_text())
    teacher.pop(CODE_KEY, None)
    metrics_file.write_text(json.dumps(teacher))
    assert teacher_row(root).startswith(
        "| teacher: all-mpnet-base-v2, LoRA, 2 epochs, ensemble of 3 runs (the code "
    )
    assert "(the code that made it is not recorded) |" in teacher_row(root)

    # As the teacher stage records it: made by this code, nothing to say.
    metrics_file.write_text(json.dumps(teacher | {CODE_KEY: teacher_code_sha256(root)}))
    assert teacher_row(root).startswith("| teacher: all-mpnet-base-v2, LoRA, 2 epochs, ensemble of 3 runs | ")
    changed = "(its code has changed since it was made: `make teacher` retrains it) |"
    # A module the teacher imports and lists nowhere in its deps (the shared training code), its script,
    # and a module it newly imports each change what made it; a module it never imports does not.
    for file, edit in [
        ("src/finsent/training.py", "\n# a fix of the shared training code\n"),
        (str(TEACHER_SCRIPT), "\n# an edit of the script\n"),
        ("src/finsent/tokenization.py", "\nimport finsent.new_module  # noqa\n"),
    ]:
        before = (root / file).read_text()
        if "new_module" in edit:
            (root / "src/finsent/new_module.py").write_text("")
            assert "changed since" not in teacher_row(root)  # not imported yet: not its code
        (root / file).write_text(before + edit)
        assert changed in teacher_row(root), file
        (root / file).write_text(before)
        assert "changed since" not in teacher_row(root)
    (root / "src/finsent/export.py").write_text("# not the teacher's code\n")
    assert "changed since" not in teacher_row(root)
    # The same code in another folder: the same hash.
    assert teacher_code_sha256(shutil.copytree(root, tmp_path / "moved")) == teacher_code_sha256(root)


def test_records_not_written_yet_are_said_and_written_ones_are_used(tmp_path):
    root = results_tree(tmp_path)  # no benchmarks/: the README names no machine, speed.md no figure
    assert "The committed run" not in results_markdown(root)
    assert speed_table("tests", root) == "No record yet: the command above writes benchmarks/tests.json."
    (root / "benchmarks").mkdir()
    machine = {"model": "Some CPU", "architecture": "x86_64", "cores": 2, "flags": ["avx2"]}
    record = {"command": "c", "commit": "0" * 40, "date": "2026-01-01T00:00:00+00:00", "machine": machine}
    pipeline = record | {"results": {"seconds": {"train": 600.0}, "total_seconds": 1200.0}}
    (root / "benchmarks/pipeline.json").write_text(json.dumps(pipeline))
    assert "made on a 2-core Some CPU (avx2): its stages took 20 min there (" in results_markdown(root)
    tests = record | {
        "results": {"`make test`'s pytest": {"seconds": 540.0, "exit_status": 0, "summary": "ok"}}
    }
    (root / "benchmarks/tests.json").write_text(json.dumps(tests))
    assert "took 20 min there, and the tests 9 min (`make test`'s pytest) (" in results_markdown(root)
    # A tests record from another machine names its machine.
    other = tests | {"machine": machine | {"model": "Other CPU", "cores": 4}}
    (root / "benchmarks/tests.json").write_text(json.dumps(other))
    assert "and the tests 9 min (`make test`'s pytest) on a 4-core Other CPU (" in results_markdown(root)
