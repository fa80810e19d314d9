"""dvc.yaml's deps match the code: each stage lists exactly the package modules its script imports.

A module missing from a stage's deps lets DVC skip the stage after that module changed; a module listed
but never imported reruns it for nothing. Imports are followed through the package, function-level
(lazy) imports included.
"""

from pathlib import Path

import pytest
from ruamel.yaml import YAML

from finsent import provenance

PROJECT = Path(__file__).resolve().parents[1]
SOURCE = PROJECT / "src"
STAGES = YAML(typ="safe").load((PROJECT / "dvc.yaml").read_text())["stages"]


def package_closure(script: Path) -> set[str]:
    """Every package file that running `script` may import, as paths relative to the project."""
    return {file.relative_to(PROJECT).as_posix() for file in provenance.package_closure(script, SOURCE)}


OWN_MODULES = {"teacher": {"src/finsent/augmentation.py"}, "audit": {"src/finsent/audit.py"}}
"""The teacher and the audit are versioned artefacts (dvc.yaml): of the package, each depends only on the
modules no other stage uses."""
PIPELINE = ("download", "tokenize_splits", "train", "evaluate", "export")
"""The scripts of the stages that run on every change: those whose deps are every module they import."""


@pytest.mark.parametrize("stage", sorted(set(STAGES) - set(OWN_MODULES)))
def test_stage_deps_are_its_scripts_package_imports(stage):
    deps = STAGES[stage]["deps"]
    scripts = [dep for dep in deps if dep.startswith("stages/")]
    assert len(scripts) == 1, f"{stage}: one stage script among its deps"
    listed = {dep for dep in deps if dep.startswith("src/")}
    assert listed == package_closure(PROJECT / scripts[0])


@pytest.mark.parametrize("stage", sorted(OWN_MODULES))
def test_an_artefact_stage_depends_on_the_package_modules_no_other_stage_imports(stage):
    others = set().union(
        *(
            package_closure(PROJECT / f"stages/{name}.py")
            for name in PIPELINE + tuple(set(OWN_MODULES) - {stage})
        )
    )
    imports = package_closure(PROJECT / "stages" / f"{stage}.py")
    assert imports - others == OWN_MODULES[stage]
    assert {dep for dep in STAGES[stage]["deps"] if dep.startswith("src/")} == OWN_MODULES[stage]
    assert STAGES[stage]["params"] == [stage]


def test_closure_follows_lazy_imports_inside_functions():
    # predictors imports modeling inside TorchPredictor.from_dir: the evaluate stage needs it listed.
    assert "src/finsent/modeling.py" in package_closure(PROJECT / "stages" / "evaluate.py")
