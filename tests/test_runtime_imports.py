"""The package, the stages and the scripts import only what `make install` (requirements.txt) installs,
or what pyproject.toml declares (not the `dev` extra: tests and linters); and every pin of the
requirements files is a requirement of pyproject.toml, so that the two agree."""

import ast
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions

from conftest import PROJECT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

CODE = [*PROJECT.glob("src/finsent/**/*.py"), *PROJECT.glob("stages/*.py"), *PROJECT.glob("scripts/*.py")]
# The project's own modules: the package; the scripts, which import each other from scripts/; the tests'
# helpers (tests/support), with which the scripts start a server and count what it costs.
OWN_MODULES = {"finsent", "tests", *(path.stem for path in PROJECT.glob("scripts/*.py"))}


def installed_by(requirements: list[str]) -> set[str]:
    """The distributions that `requirements` and everything they depend on bring, as installed here."""
    # Each requirement with the extra its dependent asked for: a marker may name it (`extra == "http"`).
    pending = [(Requirement(line), "") for line in requirements]
    seen = set()
    while pending:
        requirement, extra = pending.pop()
        name = canonicalize_name(requirement.name)
        wanted = (name, frozenset(requirement.extras))
        if wanted in seen or (requirement.marker and not requirement.marker.evaluate({"extra": extra})):
            continue
        seen.add(wanted)
        try:
            dependencies = distribution(name).requires or []
        except PackageNotFoundError:  # an optional extra's package, not installed here
            dependencies = []
        pending += [
            (Requirement(line), extra) for line in dependencies for extra in {"", *requirement.extras}
        ]
    return {name for name, _ in seen}


def pinned(file) -> list[str]:
    """The requirements of a pip requirements file, following its `-r` includes."""
    requirements = []
    for line in (PROJECT / file).read_text().splitlines():
        if line.startswith("-r "):
            requirements += pinned(line.removeprefix("-r ").strip())
        elif line.strip() and not line.startswith(("#", "-")):
            requirements.append(line)
    return requirements


def allowed_requirements() -> list[str]:
    """requirements.txt's pins, pyproject.toml's dependencies and its extras but `dev`."""
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [
        *pinned("requirements.txt"),
        *project["dependencies"],
        *(
            requirement
            for name, requirements in extras.items()
            if name != "dev"
            for requirement in requirements
        ),
    ]


def imported_modules(file) -> set[str]:
    """The top-level names of the modules a Python file imports anywhere in it, not counting its own."""
    modules = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    return modules


def test_every_import_is_installed_by_requirements_txt_or_an_optional_extra():
    runtime = installed_by(allowed_requirements())
    providers = packages_distributions()
    missing = {
        f"{file.relative_to(PROJECT)}: {module}"
        for file in CODE
        for module in imported_modules(file) - set(sys.stdlib_module_names) - OWN_MODULES
        if not {canonicalize_name(name) for name in providers.get(module, [])} & runtime
    }
    assert not missing, (
        "imported but installed neither by requirements.txt nor by an optional extra: "
        + ", ".join(sorted(missing))
    )


def test_the_serving_pins_are_the_core_and_the_serve_extra():
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    declared = {
        canonicalize_name(Requirement(line).name)
        for line in [*project["dependencies"], *project["optional-dependencies"]["serve"]]
    }
    assert {
        canonicalize_name(Requirement(line).name) for line in pinned("requirements-serve.txt")
    } == declared
