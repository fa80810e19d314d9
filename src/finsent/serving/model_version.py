"""Which trained model a server runs: the md5 that `dvc.lock` records for its folder."""

from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML, YAMLError

from finsent.errors import FinsentError


@dataclass(frozen=True)
class LockedOutput:
    md5: str
    size: int
    nfiles: int


def model_version(folder: Path, lock_file: Path = Path("dvc.lock")) -> str | None:
    """The md5 that `dvc.lock` records for the output `folder`, if the folder on disk still matches it.

    None when the folder is no output in dvc.lock, or when its file count or total size differ from the
    recorded ones (trained or exported outside `dvc repro`): a version is never claimed for other files.
    """
    locked = _locked_output(Path(folder), Path(lock_file))
    if locked is None:
        return None
    files = [path for path in Path(folder).rglob("*") if path.is_file()]
    if len(files) != locked.nfiles or sum(path.stat().st_size for path in files) != locked.size:
        return None
    return locked.md5.removesuffix(".dir")


def _locked_output(folder: Path, lock_file: Path) -> LockedOutput | None:
    try:
        lock = YAML(typ="safe").load(lock_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except YAMLError as error:
        raise FinsentError(f"{lock_file}: not valid YAML ({error.__class__.__name__})") from None
    try:
        relative = folder.resolve().relative_to(lock_file.resolve().parent).as_posix()
    except ValueError:  # the folder is outside the project
        return None
    for stage in (lock or {}).get("stages", {}).values():
        for out in stage.get("outs", []):
            if out.get("path") == relative and {"md5", "size", "nfiles"} <= out.keys():
                return LockedOutput(md5=out["md5"], size=out["size"], nfiles=out["nfiles"])
    return None
