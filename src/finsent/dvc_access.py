"""The project's one way into DVC: its Python API (`dvc.api`) and the `--json` output of its commands.

Every tool that reads files, params, metrics, experiments, plots or the data's status from DVC comes
through here, and every failure of DVC's leaves as one FinsentError line (`dvc_failure`): the tools
never see DVC's exceptions or its stderr. DVC is imported inside the functions: it takes a second to
import, and the stage scripts that import `finsent.cli` need it only when a stage fails.
"""

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from finsent.config import parse_yaml
from finsent.errors import FinsentError

LOCK_FILE = "dvc.lock"


def dvc_failure(subject: str, message: str) -> FinsentError:
    """DVC's message (an exception's text, or a command's stderr) as one line about `subject`.

    A command's stderr can hold warnings and DVC's help lines around its error: the first
    `ERROR:` line is the one that says what failed.
    """
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    errors = [line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR:")]
    return FinsentError(f"{subject}: {(errors or lines or ['failed, saying nothing'])[0]}")


_DVC_PACKAGES = ("dvc", "dvc_data", "dvc_objects", "scmrepo")
"""DVC and the packages it is made of. Their exceptions are their own classes, of which only DVC's
derive from a public base (`dvc.exceptions.DvcException`): dvc_data's, such as a folder output whose
listing is in no storage, do not. An exception is DVC's by the package that defines its class."""


@contextmanager
def _api_errors(subject: str) -> Iterator[None]:
    """Exceptions of DVC's packages inside as `dvc_failure`; any other goes on as it is."""
    try:
        yield
    except Exception as error:
        if type(error).__module__.split(".")[0] not in _DVC_PACKAGES:
            raise
        raise dvc_failure(subject, str(error)) from None


class NotAtRevision(FinsentError):
    """A path that a revision does not hold."""


def _missing(path: str, rev: str) -> NotAtRevision:
    return NotAtRevision(f"{rev}:{path}: no such file at revision {rev}")


def dvc_json(*args: str, cwd: Path | None = None):
    """The parsed output of `dvc ARGS --json`, run as `python -m dvc`: the DVC this Python imports."""
    command = ["dvc", *args, "--json"]
    result = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, cwd=cwd)
    if result.returncode != 0:
        raise dvc_failure(" ".join(command), result.stderr or f"exit status {result.returncode}")
    return json.loads(result.stdout)


@contextmanager
def _files_at(path: str, rev: str) -> Iterator:
    """DVC's file system of revision `rev` (git's files and DVC's outputs), to read `path` from."""
    import dvc.api

    if not rev:  # DVC would read the workspace
        raise FinsentError(f"{rev}:{path}: no revision given (REV:PATH)")
    with _api_errors(f"{rev}:{path}"):
        filesystem = dvc.api.DVCFileSystem(rev=rev)
        try:
            yield filesystem
        except IsADirectoryError:
            raise FinsentError(f"{rev}:{path}: a folder at revision {rev}, not a file") from None
        except FileNotFoundError:
            if not filesystem.exists(path):
                raise _missing(path, rev) from None
            raise FinsentError(
                f"{rev}:{path}: an output of that revision whose data is neither in this DVC cache "
                "nor in a remote (`dvc pull`, or `dvc exp pull` for an experiment)"
            ) from None


def read_bytes(path: str, rev: str) -> bytes:
    """The file `path` as revision `rev` holds it: in git, or in the DVC cache (or remote) for an output."""
    with _files_at(path, rev) as filesystem:
        return filesystem.read_bytes(path)


def download(path: str, rev: str, out: Path) -> Path:
    """Copy the file or folder `path` of revision `rev` (from git, the DVC cache or remote) to `out`."""
    with _files_at(path, rev) as filesystem:
        filesystem.get(path, str(out), recursive=True)
    return out


def yaml_at(path: str, rev: str, missing_ok: bool = False) -> dict | None:
    """A YAML (or JSON) file of `rev`, read as YAML 1.2 (as DVC reads params): `1e-4` is a number.

    A file that `rev` lacks fails, or with `missing_ok` reads as None. (Not `dvc.api.params_show`:
    with a `rev` it reads the workspace's copy too, and fails where the workspace lacks the file.)
    """
    try:
        content = read_bytes(path, rev)
    except NotAtRevision:
        if missing_ok:
            return None
        raise
    return parse_yaml(content, f"{rev}:{path}")


def params_diff(base: str) -> dict:
    """`dvc params diff BASE`: {params file: {key: {old, new}}} for the params that changed."""
    return dvc_json("params", "diff", base)


def metrics_diff(base: str) -> dict:
    """`dvc metrics diff BASE --all`: {metrics file: {key: {old, new[, diff]}}}, changed or not."""
    return dvc_json("metrics", "diff", base, "--all")


def experiments(revs: list[str], num: int) -> list[dict]:
    """`dvc exp show` of the commits `revs` and the `num` - 1 before each: their runs and experiments."""
    return dvc_json("exp", "show", "--no-fetch", "--num", str(num), *(f"--rev={rev}" for rev in revs))


def plots(revisions: list[str]) -> dict:
    """dvc.yaml's plots filled with data: the workspace's (none given), else `dvc plots diff REVISIONS`."""
    # One call fills every plot (`--show-vega` takes one target a call, treeverse/dvc#7445).
    return dvc_json(*(("plots", "diff", *revisions) if revisions else ("plots", "show")))


def locked_outputs(stage: str, root: Path) -> list[str]:
    """The outputs dvc.lock records for `stage` (its last run here); none if it never ran."""
    from ruamel.yaml import YAML

    try:
        lock = YAML(typ="safe").load((root / LOCK_FILE).read_text(encoding="utf-8"))
        return [out["path"] for out in lock["stages"][stage].get("outs", [])]
    except (OSError, KeyError, TypeError, AttributeError):
        return []


def cached_outputs(paths: list[str], root: Path) -> set[str]:
    """Those of the outputs `paths`, gone from the workspace, whose data the DVC cache holds.

    From `dvc data status`, which, unlike `dvc status`, runs while `dvc repro` holds the repository.
    Outputs kept in git (`cache: false`) are never among them.
    """
    status = dvc_json("data", "status", *paths, cwd=root)
    deleted = {path.rstrip("/") for path in status.get("uncommitted", {}).get("deleted", [])}
    return deleted - {path.rstrip("/") for path in status.get("not_in_cache", [])}
